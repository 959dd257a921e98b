"""Architecture latency mode (random weights in the real architecture) and the architectures it builds."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from PIL import Image

from benchmark.cli import main
from instantportrait.methods import Editor, EditSettings, get_editor, registry
from instantportrait.models import architectures
from instantportrait.models.architectures import resolve_architecture


class NoBuilderEditor(Editor):
    name = "nobuilder-test"
    label = "No builder (test)"

    def _load(self):
        raise AssertionError("latency mode with --random-weights must not load real weights")

    def nfe(self, settings=None):
        return 1

    def _edit(self, loaded, images, instructions, seed, settings, progress):
        raise AssertionError("never called")


def test_latency_only_random_weights_writes_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(registry._EDITORS, NoBuilderEditor.name, NoBuilderEditor)
    out = tmp_path / "lat"
    code = main(["--latency-only", "--random-weights", "--random-arch", "tiny", "--methods",
                 "ipnet,ipnet-2step,instructpix2pix,nobuilder-test", "--steps", "instructpix2pix=2",
                 "--device", "cpu", "--resolution", "64", "--warmup", "1", "--repeats", "3", "--out", str(out),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    for name in ("latency.md", "latency.csv", "latency.json", "latency.png", "run.json"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "latency.csv").set_index("method")
    assert table.loc["ipnet", "status"] == "ok" and table.loc["ipnet", "ratio_to_ipnet"] == pytest.approx(1.0)
    assert table.loc["ipnet", "n"] == 3 and table.loc["ipnet", "p95_ms"] >= table.loc["ipnet", "p50_ms"] > 0
    assert table.loc["instructpix2pix", "ratio_to_ipnet"] == pytest.approx(
        table.loc["instructpix2pix", "p50_ms"] / table.loc["ipnet", "p50_ms"])
    assert list(table["nfe"][:3]) == [1, 2, 6]  # 2 steps x 3-way CFG
    tiny = architectures.ARCHITECTURES["tiny"]
    parts = architectures.build_random_components(tiny)
    expected = sum(p.numel() for m in parts.values() if isinstance(m, torch.nn.Module) for p in m.parameters())
    assert table.loc["ipnet", "params"] == expected
    assert table.loc["nobuilder-test", "status"] == "no random-weights builder"
    md = (out / "latency.md").read_text()
    assert "random weights" in md and "nobuilder-test" not in md.split("\n")[0]
    assert "× IPNet" in md and "CPU" in md
    meta = json.loads((out / "latency.json").read_text())["meta"]
    assert meta["resolution"] == 64 and meta["random_arch"] == "tiny"


def test_real_sd15_architecture_sizes():
    """The configs as code give the released models' parameter counts (built on the meta device: no memory)."""
    arch = resolve_architecture("sd15-ip2p")
    with torch.device("meta"):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        unet = UNet2DConditionModel(**arch.unet)
        vae = AutoencoderKL(**arch.vae)
        text = CLIPTextModel(CLIPTextConfig(**arch.text_encoder))
    millions = [round(sum(p.numel() for p in m.parameters()) / 1e6, 1) for m in (unet, vae, text)]
    assert millions == [859.5, 83.7, 123.1]  # SD1.5 UNet (8-ch conv_in), SD VAE, CLIP ViT-L/14 text tower
    assert unet.config.in_channels == 8 and unet.config.cross_attention_dim == 768
    assert arch.vae_scale_factor == 8


def test_random_weights_tokenizer_uses_the_real_special_ids():
    tok = architectures.random_weights_tokenizer(49408)
    assert len(tok) == 49408
    assert tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    ids = tok(["wearing glasses"], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert len(ids) == 77 and ids[0] == 49406 and max(ids) < 49408


def test_architecture_choice(monkeypatch):
    assert resolve_architecture().name == "sd15-ip2p"
    monkeypatch.setenv("INSTANTPORTRAIT_RANDOM_ARCH", "tiny")
    assert resolve_architecture().name == "tiny"
    with pytest.raises(KeyError, match="known: sd15-ip2p, tiny"):
        resolve_architecture("sdxl-huge")
    editor = get_editor("instructpix2pix", resolution=32)
    editor.load_random_weights()  # tiny, from the environment
    assert editor.num_parameters() < 2_000_000
    out = editor.edit([Image.new("RGB", (40, 32))], ["x"], settings=EditSettings(num_inference_steps=1))
    assert out[0].size == (40, 32)


@pytest.mark.gpu
def test_cuda_latency_and_timed_loop(tmp_path):
    """On the GPU machine: CUDA timing/memory paths of both modes (tiny random-weights architecture)."""
    lat = tmp_path / "lat"
    assert main(["--latency-only", "--random-weights", "--random-arch", "tiny", "--methods", "ipnet,instructpix2pix",
                 "--steps", "instructpix2pix=2", "--device", "cuda", "--resolution", "64", "--repeats", "3",
                 "--out", str(lat), "--quiet"]) == 0
    table = pd.read_csv(lat / "latency.csv").set_index("method")
    assert (table["status"] == "ok").all() and (table["mem_mb"] > 0).all()
    assert json.loads((lat / "latency.json").read_text())["meta"]["dtype"] == "float16"
    run = tmp_path / "run"
    assert main(["--random-weights", "--random-arch", "tiny", "--methods", "ipnet", "--images", "synthetic:8:64",
                 "--device", "cuda", "--resolution", "64", "--score-later", "--face-pack", "none", "--clip", "none",
                 "--warmup", "2", "--limit", "40", "--out", str(run), "--quiet"]) == 0
    rows = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(r["mem_kind"] == "cuda_max_allocated" and r["mem_peak_mb"] > 0 for r in rows)
    summary = {m["method"]: m for m in json.loads((run / "summary.json").read_text())["methods"]}
    assert 0 <= summary["ipnet"]["loop_overhead_share"] < 1
