"""The demo editors (``python -m train.demo``): the quick run end to end.

No demo IPNet / IDE-Net is shipped yet: the first full run did not clear the learned-something bar (see
``train/demo.py`` and issue #4). When one is shipped, it gets a test that its edits move toward the rendered
targets on test identities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from train import demo

SHIPPED = Path(__file__).resolve().parents[1] / "instantportrait" / "demo_models"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _l1(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean() / 255.0)


def test_world_words_are_alphabetic_and_sorted(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"instruction": "Make it a 90s yearbook photo",
                                    "paraphrases": ["add a red hat"]}) + "\n")
    assert demo.world_words(manifest) == ("a", "add", "hat", "it", "make", "photo", "red", "s", "yearbook")


def test_quick_run_end_to_end_writes_loadable_fp16_folders(tmp_path):
    from safetensors.torch import load_file

    from instantportrait.methods import get_editor
    from instantportrait.synthetic import World

    out = tmp_path / "demo_models"
    res = demo.main(["--out", str(out), "--quick", "--force-ship", "--work", str(tmp_path / "work"),
                     "--eval-pairs", "4"])
    assert res["shipped"] and set(res["methods"]) == {"ipnet", "ipnet-2step"}
    for name in ("ipnet", "idenet"):
        folder = out / name
        assert "TOY demo model" in (folder / "README.md").read_text()
        weights = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
        assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
        assert not list(folder.glob("checkpoint-*"))
    editor = get_editor("ipnet", model=str(out / "ipnet"), resolution=64, dtype=torch.float32)
    editor.load()
    assert next(editor._loaded.unet.parameters()).dtype == torch.float32  # fp16 files upcast on load
    sample = World(0, 12, size=64).sample("test", 0)
    img = editor.edit([sample.source], [sample.instruction], seed=0)[0]
    assert img.size == sample.source.size
    again = editor.edit([sample.source], [sample.instruction], seed=0)[0]
    assert np.array_equal(np.asarray(img), np.asarray(again))
    ide = get_editor("idenet", model=str(out / "idenet"), resolution=64, dtype=torch.float32)
    from instantportrait.methods.base import EditSettings
    assert ide.edit([sample.source], [sample.instruction], seed=0,
                    settings=EditSettings(num_inference_steps=2))[0].size == sample.source.size
