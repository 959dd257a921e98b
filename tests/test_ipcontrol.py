"""IP-Control editor (IP-Adapter FaceID + SD1.5 ControlNet) with tiny components in the released layouts."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import PIL.Image
import pytest
import torch

from instantportrait.errors import ModelNotAvailableError, NoFaceError
from instantportrait.methods import EditSettings, get_editor
from instantportrait.methods.face_conditioned.ip_adapter import (
    group_ip_adapter_layers,
    merge_attention_lora,
    read_ip_adapter,
)
from instantportrait.methods.face_conditioned.resampler import FaceIDProjection, FaceIDProjectionConfig
from instantportrait.methods.ipcontrol import IPControlConfig, IPControlEditor
from instantportrait.models.sd15 import sd15_ipcontrol_architecture, tiny_sd15_ipcontrol_architecture
from instantportrait.tiny.face_conditioned import save_tiny_ipcontrol

STEPS = EditSettings(num_inference_steps=2)


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    return save_tiny_ipcontrol(tmp_path_factory.mktemp("ipcontrol"), embedding_dim=128)


def make_editor(tiny_release, face_pack, **config):
    base, control, release, _ = tiny_release
    return get_editor("ipcontrol", model=str(release), base_model=str(base), controlnet=str(control),
                      resolution=128, config=IPControlConfig(face_pack=str(face_pack), **config))


@pytest.fixture(scope="module")
def editor(tiny_release, tiny_face_pack):
    ed = make_editor(tiny_release, tiny_face_pack)
    ed.load()
    return ed


def test_faceid_projection_has_the_released_layout_at_real_size():
    with torch.device("meta"):
        model = FaceIDProjection(FaceIDProjectionConfig())
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        "proj.0.weight": (1024, 512), "proj.0.bias": (1024,), "proj.2.weight": (3072, 1024), "proj.2.bias": (3072,),
        "norm.weight": (768,), "norm.bias": (768,)}
    assert FaceIDProjection.from_state_dict(model.state_dict()).config == FaceIDProjectionConfig()


def test_real_sd15_attention_numbering():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd15_ipcontrol_architecture().unet)
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964  # SD1.5 UNet
    names = list(unet.attn_processors)
    assert len(names) == 32  # FaceID LoRA keys 0..31, IP keys on the odd ones
    assert [n for n, name in enumerate(names) if name.endswith("attn2.processor")] == list(range(1, 32, 2))


def test_lora_is_merged_into_the_attention_weights(tiny_release, editor):
    from diffusers import UNet2DConditionModel

    base, _, release, _ = tiny_release
    plain = UNet2DConditionModel.from_pretrained(base, subfolder="unet", variant="fp16", dtype=torch.float32)
    _, ip = read_ip_adapter(release / "ip-adapter-faceid_sd15.bin")
    name = list(plain.attn_processors)[5].removesuffix(".processor")
    before = plain.get_submodule(name).to_out[0].weight
    after = editor.loaded.unet.get_submodule(name).to_out[0].weight
    expected = before + ip["5.to_out_lora.up.weight"].float() @ ip["5.to_out_lora.down.weight"].float()
    torch.testing.assert_close(after, expected)
    broken = {k: v for k, v in ip.items() if k != "3.to_q_lora.up.weight"}
    with pytest.raises(ValueError, match="incomplete LoRA"):
        merge_attention_lora(plain, group_ip_adapter_layers(plain, broken))


def test_edits_keep_sizes_are_seeded_and_follow_the_face(editor, astronaut_image, monkeypatch):
    import instantportrait.methods.face_conditioned.sampling as module  # the sampler both editors share

    image = astronaut_image.resize((128, 128))
    tall = astronaut_image.crop((0, 0, 384, 512)).resize((96, 128))
    out = editor.edit([image, tall], ["wearing a crown", "wearing glasses"], seed=3, settings=STEPS)
    assert [o.size for o in out] == [image.size, tall.size]
    again = editor.edit([image], ["wearing a crown"], seed=3, settings=STEPS)[0]
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(again))
    assert editor.nfe() == 60 and editor.describe()["controlnet_evaluations"] == 60

    seen = []
    decode = module.decode_latents
    monkeypatch.setattr(module, "decode_latents", lambda vae, z: seen.append(z.clone()) or decode(vae, z))
    real = editor.loaded.face

    class OtherIdentity:
        def encode(self, img, *, what="image"):
            face = real.encode(img, what=what)
            return dataclasses.replace(face, embedding=np.roll(face.embedding, 5).copy())

    def run(face, **extra):
        editor.loaded.face = face
        try:
            editor.edit([image], ["wearing a crown"], seed=3, settings=EditSettings(num_inference_steps=2, extra=extra))
        finally:
            editor.loaded.face = real
        return seen[-1]

    a, b = run(real), run(OtherIdentity())
    assert (a - b).abs().max() > 1e-4 and torch.equal(a, run(real))  # another face, another image; deterministic
    assert torch.equal(run(real, ip_adapter_scale=0.0), run(OtherIdentity(), ip_adapter_scale=0.0))  # IP tokens only


def test_canny_control_is_a_different_condition(tiny_release, tiny_face_pack, editor, astronaut_image):
    image = astronaut_image.resize((128, 128))
    canny = make_editor(tiny_release, tiny_face_pack, control="canny")
    a = canny.edit([image], ["wearing a crown"], seed=0, settings=STEPS)[0]
    b = editor.edit([image], ["wearing a crown"], seed=0, settings=STEPS)[0]
    assert a.size == image.size and np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).mean() > 0.01
    with pytest.raises(ValueError, match="control must be one of"):
        IPControlConfig(control="depth")


def test_no_face_raises(editor):
    with pytest.raises(NoFaceError, match="IP-Control needs a face"):
        editor.edit([PIL.Image.new("RGB", (128, 128), (200, 200, 200))], ["wearing a hat"], settings=STEPS)


def test_missing_weights_fail_fast_offline(tiny_face_pack, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    ed = IPControlEditor(config=IPControlConfig(face_pack=str(tiny_face_pack)))
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="h94/IP-Adapter-FaceID"):
        ed.check_available()
    with pytest.raises(ModelNotAvailableError, match="h94/IP-Adapter-FaceID"):
        ed.load()
    assert time.perf_counter() - t0 < 10


def test_random_weights_build_on_a_tiny_architecture(astronaut_image, monkeypatch):
    ed = IPControlEditor(resolution=64, config=IPControlConfig(architecture=tiny_sd15_ipcontrol_architecture(512)))
    ed.load_random_weights()
    out = ed.edit([astronaut_image.resize((64, 64))], ["wearing a hat"], seed=0, settings=STEPS)
    assert out[0].size == (64, 64) and ed.describe()["random_weights"]
    monkeypatch.setenv("INSTANTPORTRAIT_RANDOM_ARCH", "tiny")
    from_env = IPControlEditor(resolution=64)
    from_env.load_random_weights()
    assert from_env.describe()["random_architecture"] == "tiny"
    assert from_env.num_parameters() == ed.num_parameters()
