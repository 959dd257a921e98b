import time

import numpy as np
import PIL.Image
import pytest

from instantportrait.errors import ModelNotAvailableError
from instantportrait.methods import Editor, EditSettings, get_editor, list_methods
from instantportrait.methods.base import working_size

CORE = ["ipnet", "ipnet-2step", "idenet", "instructpix2pix", "magicbrush"]


def make(name, tiny_ipnet, tiny_ip2p, **kw):
    model = tiny_ipnet if name.startswith("ipnet") else tiny_ip2p
    return get_editor(name, model=str(model), resolution=32, **kw)


def test_registry_lists_core_editors():
    names = list_methods()
    assert names[: len(CORE)] == CORE
    for name in names:
        editor = get_editor(name)
        assert isinstance(editor, Editor) and editor.name == name and editor.label
        assert not editor.is_loaded, "construction must not load weights"


def test_unknown_method_names_the_choices():
    with pytest.raises(KeyError, match="ipnet"):
        get_editor("nope")


@pytest.mark.parametrize("name", CORE)
def test_each_editor_edits_with_tiny_weights(name, tiny_ipnet, tiny_ip2p, portrait):
    editor = make(name, tiny_ipnet, tiny_ip2p)
    settings = EditSettings(num_inference_steps=2)
    other = portrait.resize((40, 56))
    out = editor.edit([portrait, other], ["add a hat", "add glasses"], seed=0, settings=settings)
    assert [o.size for o in out] == [portrait.size, other.size]
    assert all(o.mode == "RGB" for o in out)
    again = editor.edit([other], ["add glasses"], seed=0, settings=settings)[0]
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(again), "same seed, same image, any batch")
    assert editor.is_loaded and editor.num_parameters() > 1000
    editor.unload()
    assert not editor.is_loaded


def test_nfe():
    assert get_editor("ipnet").nfe() == 1
    assert get_editor("ipnet-2step").nfe() == 2
    assert get_editor("instructpix2pix").nfe() == 300  # 100 steps x 3-way CFG
    assert get_editor("idenet").nfe(EditSettings(num_inference_steps=10)) == 30
    assert get_editor("magicbrush").nfe(EditSettings(num_inference_steps=10, guidance_scale=1.0)) == 10


def test_progress_is_reported(tiny_ipnet, tiny_ip2p, portrait):
    seen = []
    make("idenet", tiny_ipnet, tiny_ip2p).edit([portrait], ["hat"], settings=EditSettings(num_inference_steps=3),
                                               progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize(
    ("images", "instructions", "match"),
    [([], [], "no image"), (["x"], ["hat"], "PIL image"), ([None], ["hat"], "PIL image"),
     ("img", ["hat"], "list"), (["img"], ["hat", "x"], "one instruction per image"), (["img"], [" "], "empty")],
)
def test_bad_edit_inputs(images, instructions, match, portrait):
    images = [portrait if i == "img" else i for i in images] if isinstance(images, list) else portrait
    with pytest.raises(ValueError, match=match):
        get_editor("ipnet").edit(images, instructions)


@pytest.mark.parametrize("name", CORE)
def test_missing_model_offline_fails_fast_with_a_useful_message(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    editor = get_editor(name)
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as info:
        editor.check_available()
    with pytest.raises(ModelNotAvailableError):
        editor.load()
    assert time.perf_counter() - t0 < 10
    msg = str(info.value)
    assert editor.spec().repo_id in msg and "download" in msg and editor.spec().env_var in msg


def test_env_override_points_an_editor_at_a_local_folder(monkeypatch, tiny_ipnet, portrait):
    monkeypatch.setenv("INSTANTPORTRAIT_IPNET", str(tiny_ipnet))
    editor = get_editor("ipnet", resolution=32)
    editor.check_available()
    assert editor.describe()["model"] == str(tiny_ipnet)
    assert editor.edit([portrait], ["hat"])[0].size == portrait.size


def test_working_size():
    assert working_size((1024, 512), 512) == (512, 256)
    assert working_size((100, 37), None) == (96, 32)
    assert working_size((3, 3), None) == (8, 8)


def test_edit_accepts_any_pil_mode(tiny_ipnet, tiny_ip2p, portrait):
    editor = make("ipnet", tiny_ipnet, tiny_ip2p)
    for mode in ("L", "RGBA", "P"):
        out = editor.edit([portrait.convert(mode)], ["hat"])[0]
        assert out.mode == "RGB" and out.size == portrait.size
    assert isinstance(out, PIL.Image.Image)


class _SharedWeights(Editor):
    """Two modules that share one weight tensor (like tied embeddings), plus a buffer of their own."""

    name = "shared-weights-test"
    label = "Shared weights"

    def _load(self):
        import torch

        a = torch.nn.Linear(10, 10, bias=False)  # 100 float32 = 400 bytes
        b = torch.nn.Linear(10, 10, bias=False)
        b.weight = a.weight  # the same tensor in both modules
        b.register_buffer("scale", torch.ones(5, dtype=torch.float16))  # 10 bytes
        return {"a": a, "b": b}

    def _modules(self, loaded):
        return [loaded["a"], loaded["b"]]

    def nfe(self, settings=None):
        return 1

    def _edit(self, loaded, images, instructions, seed, settings, progress):
        return images


def test_weight_bytes_counts_a_shared_tensor_once():
    editor = _SharedWeights()
    assert editor.weight_bytes() == 0 and editor.loaded is None and editor.tokenizer is None  # nothing loaded yet
    editor.load()
    assert editor.loaded is not None
    assert editor.weight_bytes() == 400 + 10
    assert editor.num_parameters() == 200  # parameters() of each module (what num_parameters always counted)


def test_ipnet_method_for_steps():
    from instantportrait.methods.registry import ipnet_method

    assert ipnet_method(1) == "ipnet" and ipnet_method(2) == "ipnet-2step"
    with pytest.raises(ValueError, match="1 or 2"):
        ipnet_method(3)


def test_every_source_kind_has_a_badge_and_keeps_its_string():
    from instantportrait.methods.sources import Kind, ModelSource

    assert [k.value for k in Kind] == ["real", "demo", "tiny", "random-weights", "override", "missing"]
    for kind in Kind:
        source = ModelSource("ipnet", kind.value)
        assert source.kind is kind and isinstance(source.badge, str) and source.kind == kind.value
        assert f"{source.kind}" == kind.value and json_roundtrip(source.kind) == kind.value
    assert not ModelSource("ipnet", "missing").available and ModelSource("ipnet", "override").available


def json_roundtrip(value):
    import json

    return json.loads(json.dumps(value))
