"""IP-Control-XL (IP-Adapter FaceID SDXL + an SDXL ControlNet): registry, released key layout on a tiny SDXL release,
fast failure without the weights, and its random-weights latency row."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import PIL.Image
import pytest
import torch

from benchmark.cli import main as benchmark_main
from instantportrait.config import MODELS
from instantportrait.errors import ModelNotAvailableError, NoFaceError
from instantportrait.methods import EditSettings, get_editor, list_methods
from instantportrait.methods.face_conditioned.ip_adapter import read_ip_adapter
from instantportrait.methods.ipcontrol import CONTROL_MODELS
from instantportrait.methods.ipcontrol_xl import CONTROL_MODELS_XL, IPControlXLConfig, IPControlXLEditor
from instantportrait.models.sdxl import build_sdxl_networks, sdxl_ipcontrol_architecture
from instantportrait.tiny.face_conditioned import save_tiny_ipcontrol

TWO_STEPS = EditSettings(num_inference_steps=2)


@pytest.fixture(scope="module")
def xl_release(tmp_path_factory):
    return save_tiny_ipcontrol(tmp_path_factory.mktemp("ipcontrol-xl"), embedding_dim=128, sdxl=True)


@pytest.fixture(scope="module")
def xl_editor(xl_release, tiny_face_pack):
    base, control, release, _ = xl_release
    ed = get_editor("ipcontrol-xl", model=str(release), base_model=str(base), controlnet=str(control),
                    resolution=128, config=IPControlXLConfig(face_pack=str(tiny_face_pack)))
    ed.load()
    return ed


def test_registered_with_models_listed():
    assert "ipcontrol-xl" in list_methods()
    ed = get_editor("ipcontrol-xl")
    assert ed.resolution == 1024 and ed.base_spec().key == "sdxl-base" and not ed.is_loaded
    assert set(CONTROL_MODELS_XL) == set(CONTROL_MODELS)  # the same control choice as the SD1.5 variant
    assert ed.controlnet_spec().repo_id == "thibaud/controlnet-openpose-sdxl-1.0"
    canny = IPControlXLEditor(config=IPControlXLConfig(control="canny"))
    assert canny.controlnet_spec().repo_id == "diffusers/controlnet-canny-sdxl-1.0"
    for key in ("ip-adapter-faceid-sdxl", *CONTROL_MODELS_XL.values()):
        spec = MODELS[key]
        assert spec.licence and spec.size_gb > 0 and spec.revision == "main" and not spec.pinned
    assert "non-commercial" in MODELS["ip-adapter-faceid-sdxl"].licence
    assert MODELS["ip-adapter-faceid-sdxl"].allow_patterns == ("ip-adapter-faceid_sdxl.bin",)


def test_missing_weights_fail_fast_with_the_download_command(tiny_face_pack, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    ed = IPControlXLEditor(config=IPControlXLConfig(face_pack=str(tiny_face_pack)))
    t0 = time.perf_counter()
    for attempt in (ed.check_available, ed.load):
        with pytest.raises(ModelNotAvailableError, match="python -m instantportrait download ip-adapter-faceid-sdxl"):
            attempt()
    assert time.perf_counter() - t0 < 10


def test_real_sdxl_faceid_sizes_and_numbering():
    """The real architecture on the meta device: SDXL's 140 attentions (LoRA keys 0..139, IP keys on the odd 70),
    FaceID's 512 -> 1024 -> 4 x 2048 projection, and a ControlNet copied from the UNet."""
    nets = build_sdxl_networks(sdxl_ipcontrol_architecture(), "meta")
    names = list(nets["unet"].attn_processors)
    assert len(names) == 140
    assert [n for n, name in enumerate(names) if name.endswith("attn2.processor")] == list(range(1, 140, 2))
    assert {k: tuple(v.shape) for k, v in nets["projection"].state_dict().items()} == {
        "proj.0.weight": (1024, 512), "proj.0.bias": (1024,), "proj.2.weight": (8192, 1024), "proj.2.bias": (8192,),
        "norm.weight": (2048,), "norm.bias": (2048,)}
    millions = {k: round(sum(p.numel() for p in nets[k].parameters()) / 1e6) for k in ("unet", "controlnet")}
    assert millions == {"unet": 2567, "controlnet": 1251}  # SDXL UNet; a full-size SDXL ControlNet


def test_tiny_release_loads_in_the_released_layout_and_edits(xl_release, xl_editor, astronaut_image):
    from diffusers import UNet2DConditionModel

    base, _, release, _ = xl_release
    proj, ip = read_ip_adapter(release / "ip-adapter-faceid_sdxl.bin")
    assert set(proj) == {"proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias"}
    loaded = xl_editor.loaded
    assert loaded.text_encoder_2 is not None and loaded.tokenizer_2 is not None
    plain = UNet2DConditionModel.from_pretrained(base, subfolder="unet", variant="fp16", dtype=torch.float32)
    n = len(plain.attn_processors) - 1  # the last attention: the released numbering runs over all of them
    name = list(plain.attn_processors)[n].removesuffix(".processor")
    merged = plain.get_submodule(name).to_q.weight + ip[f"{n}.to_q_lora.up.weight"] @ ip[f"{n}.to_q_lora.down.weight"]
    torch.testing.assert_close(loaded.unet.get_submodule(name).to_q.weight, merged)

    image = astronaut_image.resize((128, 128))
    out = xl_editor.edit([image], ["wearing a crown"], seed=1, settings=TWO_STEPS)
    again = xl_editor.edit([image], ["wearing a crown"], seed=1, settings=TWO_STEPS)
    assert out[0].size == image.size
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(again[0]))
    no_ip = xl_editor.edit([image], ["wearing a crown"], seed=1,
                           settings=EditSettings(num_inference_steps=2, extra={"ip_adapter_scale": 0.0}))
    assert np.abs(np.asarray(out[0], dtype=int) - np.asarray(no_ip[0], dtype=int)).mean() > 0  # the face tokens act
    info = xl_editor.describe()
    assert info["base_model"] == str(base) and info["control"] == "openpose" and info["nfe"] == 60
    with pytest.raises(NoFaceError, match="IP-Control needs a face"):
        xl_editor.edit([PIL.Image.new("RGB", (128, 128), (200, 200, 200))], ["wearing a hat"], settings=TWO_STEPS)


def test_latency_only_random_weights_row(tmp_path, capsys):
    out = tmp_path / "lat"
    code = benchmark_main(["--latency-only", "--random-weights", "--random-arch", "tiny", "--methods", "ipcontrol-xl",
                           "--steps", "ipcontrol-xl=2", "--device", "cpu", "--resolution", "64", "--warmup", "1",
                           "--repeats", "2", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    row = pd.read_csv(out / "latency.csv").set_index("method").loc["ipcontrol-xl"]
    assert row["status"] == "ok" and row["nfe"] == 4 and row["p50_ms"] > 0 and row["params"] > 100_000
