"""InstantID editor with tiny SDXL-shaped components in the released on-disk layouts (no network)."""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import PIL.Image
import pytest
import torch

from instantportrait.errors import ModelNotAvailableError, NoFaceError
from instantportrait.face.keypoints import FACE_KPS_COLORS, draw_face_keypoints, draw_openpose_head
from instantportrait.methods import EditSettings, get_editor
from instantportrait.methods.face_conditioned.ip_adapter import (
    group_ip_adapter_layers,
    install_ip_adapter,
    random_ip_adapter_state,
    read_ip_adapter,
)
from instantportrait.methods.face_conditioned.resampler import Resampler, ResamplerConfig
from instantportrait.methods.instantid import InstantIDConfig, InstantIDEditor
from instantportrait.models.sdxl import sdxl_instantid_architecture, tiny_sdxl_instantid_architecture
from instantportrait.tiny.face_conditioned import save_tiny_instantid

STEPS = EditSettings(num_inference_steps=2)


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    return save_tiny_instantid(tmp_path_factory.mktemp("instantid"), embedding_dim=128)


@pytest.fixture(scope="module")
def editor(tiny_release, tiny_face_pack):
    base, release, _ = tiny_release
    config = InstantIDConfig(face_pack=str(tiny_face_pack), resampler_dim_head=16)
    ed = get_editor("instantid", model=str(release), base_model=str(base), resolution=128, config=config)
    ed.load()
    return ed


class MovedFace:
    """A face encoder that reports the same identity with the keypoints moved (another head position)."""

    def __init__(self, real):
        self.real = real

    def encode(self, image, *, what="image"):
        face = self.real.encode(image, what=what)
        return dataclasses.replace(face, kps=face.kps + np.array([20.0, 10.0], dtype=np.float32))


class OtherIdentity:
    """A face encoder that finds the same faces (same keypoints) but reports another identity."""

    def __init__(self, real):
        self.real = real

    def encode(self, image, *, what="image"):
        face = self.real.encode(image, what=what)
        return dataclasses.replace(face, embedding=np.roll(face.embedding, 7).copy())


# ----------------------------------------------------------------------------------------------- released layouts
def released_resampler_shapes(depth=4, dim=1280, emb=512, out=2048, queries=16, ff=5120):
    """The key layout of InstantID's ``image_proj`` (perceiver resampler), written out independently."""
    shapes = {"latents": (1, queries, dim), "proj_in.weight": (dim, emb), "proj_in.bias": (dim,),
              "proj_out.weight": (out, dim), "proj_out.bias": (out,), "norm_out.weight": (out,),
              "norm_out.bias": (out,)}
    for i in range(depth):
        p = f"layers.{i}."
        shapes |= {p + "0.norm1.weight": (dim,), p + "0.norm1.bias": (dim,), p + "0.norm2.weight": (dim,),
                   p + "0.norm2.bias": (dim,), p + "0.to_q.weight": (dim, dim), p + "0.to_kv.weight": (2 * dim, dim),
                   p + "0.to_out.weight": (dim, dim), p + "1.0.weight": (dim,), p + "1.0.bias": (dim,),
                   p + "1.1.weight": (ff, dim), p + "1.3.weight": (dim, ff)}
    return shapes


def test_resampler_has_the_released_key_layout_at_real_size():
    with torch.device("meta"):
        model = Resampler(ResamplerConfig())
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == released_resampler_shapes()
    # and the sizes read back off such a state dict are InstantID's (20 heads of 64)
    assert ResamplerConfig.from_state_dict(model.state_dict(), dim_head=64) == ResamplerConfig()


def test_tiny_release_loads_strictly_in_the_released_layout(tiny_release):
    _, release, arch = tiny_release
    raw = torch.load(release / "ip-adapter.bin", map_location="cpu", weights_only=True)
    assert set(raw) == {"image_proj", "ip_adapter"}  # a nested dict of tensors, as released
    proj, ip = read_ip_adapter(release / "ip-adapter.bin")
    c = arch.resampler
    assert {k: tuple(v.shape) for k, v in proj.items()} == released_resampler_shapes(
        depth=c.depth, dim=c.dim, emb=c.embedding_dim, out=c.output_dim, queries=c.num_queries,
        ff=c.dim * c.ff_mult)
    model = Resampler(ResamplerConfig.from_state_dict(proj, dim_head=16))
    model.load_state_dict(proj, strict=True)
    assert model.config.heads == 2 and model(torch.randn(3, 128)).shape == (3, c.num_queries, c.output_dim)
    assert all(k.split(".", 1)[1] in ("to_k_ip.weight", "to_v_ip.weight") for k in ip)


def test_flat_safetensors_layout_reads_the_same(tiny_release, tmp_path):
    from safetensors.torch import save_file

    proj, ip = read_ip_adapter(tiny_release[1] / "ip-adapter.bin")
    flat = {f"image_proj.{k}": v.contiguous() for k, v in proj.items()} | {f"ip_adapter.{k}": v for k, v in ip.items()}
    save_file(flat, tmp_path / "ip-adapter.safetensors")
    proj2, ip2 = read_ip_adapter(tmp_path / "ip-adapter.safetensors")
    assert proj2.keys() == proj.keys() and ip2.keys() == ip.keys()
    assert all(torch.equal(proj[k], proj2[k]) for k in proj)
    torch.save({"something": torch.zeros(1)}, tmp_path / "bad.bin")
    with pytest.raises(ValueError, match="image_proj"):
        read_ip_adapter(tmp_path / "bad.bin")


def test_real_sdxl_cross_attentions_are_the_odd_released_numbers():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sdxl_instantid_architecture().unet)
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684  # SDXL base UNet
    names = list(unet.attn_processors)
    cross = [n for n, name in enumerate(names) if name.endswith("attn2.processor")]
    assert len(names) == 140 and cross == list(range(1, 140, 2))  # ip_adapter.1 ... ip_adapter.139


def test_ip_adapter_numbering_is_strict():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**tiny_sdxl_instantid_architecture().unet)
    state = random_ip_adapter_state(unet)
    groups = group_ip_adapter_layers(unet, state)
    names = list(unet.attn_processors)
    for n, name in enumerate(names):
        assert bool(groups[name]) == name.endswith("attn2.processor")
        if groups[name]:
            assert torch.equal(groups[name]["to_k_ip.weight"], state[f"{n}.to_k_ip.weight"])
    shifted = {f"{int(k.split('.')[0]) - 1}.{k.split('.', 1)[1]}": v for k, v in state.items()}  # onto attn1
    with pytest.raises(ValueError, match="self-attention"):
        install_ip_adapter(unet, group_ip_adapter_layers(unet, shifted))
    with pytest.raises(ValueError, match="different base model"):
        group_ip_adapter_layers(unet, {f"{len(names)}.to_k_ip.weight": torch.zeros(1)})
    missing = dict(state)
    missing.pop("1.to_v_ip.weight")
    with pytest.raises(ValueError, match="to_v_ip"):
        install_ip_adapter(unet, group_ip_adapter_layers(unet, missing))


def test_ip_processors_match_diffusers_ip_adapter():
    """Our processors + numbering give the same UNet output as diffusers' own IP-Adapter loader on the same weights."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    torch.manual_seed(0)
    arch = tiny_sdxl_instantid_architecture()
    ours = UNet2DConditionModel(**arch.unet).eval()
    ref = copy.deepcopy(ours)
    state = random_ip_adapter_state(ours, seed=3)
    install_ip_adapter(ours, group_ip_adapter_layers(ours, state))
    procs = ref._convert_ip_adapter_attn_to_diffusers(
        [{"image_proj": {"latents": torch.zeros(1, 4, 32)}, "ip_adapter": state}], low_cpu_mem_usage=False)
    for proc in procs.values():
        if isinstance(proc, IPAdapterAttnProcessor2_0):
            proc.scale = [0.8]
    ref.set_attn_processor(procs)
    x, t, text, tokens = torch.randn(2, 4, 8, 8), torch.tensor(500), torch.randn(2, 10, 32), torch.randn(2, 4, 32)
    added = {"text_embeds": torch.randn(2, 16), "time_ids": torch.randn(2, 6)}
    with torch.no_grad():
        a = ours(x, t, text, added_cond_kwargs=added,
                 cross_attention_kwargs={"ip_hidden_states": tokens, "ip_scale": 0.8}).sample
        b = ref(x, t, (text, [tokens]), added_cond_kwargs=added).sample
        c = ours(x, t, text, added_cond_kwargs=added,
                 cross_attention_kwargs={"ip_hidden_states": tokens, "ip_scale": 0.0}).sample
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - c).abs().max() > 1e-3  # the face tokens matter


# ----------------------------------------------------------------------------------------------- keypoint images
def test_keypoint_image_colours_and_geometry():
    kps = np.array([[40, 50], [88, 50], [64, 70], [48, 95], [80, 95]], dtype=np.float32)
    img = draw_face_keypoints((128, 112), kps)
    arr = np.asarray(img)
    assert img.size == (128, 112) and img.mode == "RGB"
    for (x, y), color in zip(kps.astype(int), FACE_KPS_COLORS):
        assert tuple(arr[y, x]) == color  # full-colour discs at the landmarks
        assert tuple(arr[y + 9, x]) == color and tuple(arr[y + 12, x]) != color  # radius 10
    assert tuple(arr[60, 52]) == (153, 0, 0)  # left-eye -> nose limb, dimmed to 60 %
    assert tuple(arr[5, 5]) == (0, 0, 0) and tuple(arr[105, 120]) == (0, 0, 0)
    with pytest.raises(ValueError, match="5 keypoints"):
        draw_face_keypoints((64, 64), kps[:4])

    head = np.asarray(draw_openpose_head((128, 112), kps))
    assert tuple(head[70, 64]) == (255, 0, 0)  # nose
    assert tuple(head[50, 40]) == (170, 0, 255) and tuple(head[50, 88]) == (255, 0, 255)  # OpenPose right, left eye
    assert tuple(head[95, 48]) == (0, 0, 0)  # no mouth corners in OpenPose's body skeleton


# ----------------------------------------------------------------------------------------------- the editor
def test_edits_keep_sizes_and_are_seeded(editor, astronaut_image):
    small = astronaut_image.resize((128, 128))
    tall = astronaut_image.crop((0, 0, 384, 512)).resize((96, 128))
    out = editor.edit([small, tall], ["wearing hipster glasses", "as a 1920s flapper"], seed=1, settings=STEPS)
    assert [o.size for o in out] == [small.size, tall.size] and all(o.mode == "RGB" for o in out)
    again = editor.edit([tall], ["as a 1920s flapper"], seed=1, settings=STEPS)[0]
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(again))
    other_seed = editor.edit([tall], ["as a 1920s flapper"], seed=2, settings=STEPS)[0]
    assert np.abs(np.asarray(other_seed, dtype=int) - np.asarray(again, dtype=int)).max() > 0
    assert editor.nfe(STEPS) == 4 and editor.nfe() == 60  # 30 steps x CFG
    assert editor.nfe(EditSettings(guidance_scale=1.0)) == 30
    info = editor.describe()
    assert info["controlnet_evaluations"] == 60 and info["face_embedding"] == "raw"
    assert editor.num_parameters() > 100_000


@pytest.fixture()
def sampled_latents(monkeypatch):
    """The final latents of every edit (what the VAE decodes): a far finer probe than 8-bit pixels."""
    import instantportrait.methods.face_conditioned.sampling as module

    seen: list[torch.Tensor] = []
    decode = module.decode_latents

    def spy(vae, latents):
        seen.append(latents.detach().clone())
        return decode(vae, latents)

    monkeypatch.setattr(module, "decode_latents", spy)
    return seen


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Same inputs give bit-identical latents (asserted below), so any clear difference is a real dependence.
    return bool((a - b).abs().max() > 1e-4)


def test_face_embedding_drives_the_output_through_both_paths(editor, astronaut_image, sampled_latents):
    image = astronaut_image.resize((128, 128))

    def run(face=None, **extra):
        real = editor.loaded.face
        editor.loaded.face = face(real) if face else real
        try:
            editor.edit([image], ["wearing a crown"], seed=0, settings=EditSettings(num_inference_steps=2, extra=extra))
        finally:
            editor.loaded.face = real
        return sampled_latents[-1]

    no_ip, no_paths = {"ip_adapter_scale": 0.0}, {"ip_adapter_scale": 0.0, "controlnet_conditioning_scale": 0.0}
    assert differs(run(), run(OtherIdentity))  # another face, another image
    assert differs(run(**no_ip), run(OtherIdentity, **no_ip))  # the IdentityNet attends to the face tokens
    assert torch.equal(run(**no_paths), run(OtherIdentity, **no_paths))  # ... and those are the only two paths
    assert differs(run(**no_ip), run(MovedFace, **no_ip))  # the keypoint image conditions the IdentityNet
    assert torch.equal(run(**no_paths), run(MovedFace, **no_paths))
    assert torch.equal(run(), run())  # deterministic


def test_no_face_raises_a_clear_error(editor):
    with pytest.raises(NoFaceError, match="InstantID needs a face"):
        editor.edit([PIL.Image.new("RGB", (128, 128), (90, 90, 90))], ["wearing a hat"], settings=STEPS)


def test_prompt_from_instruction():
    assert InstantIDConfig().prompt_for(" wearing hipster glasses. ").startswith(
        "a portrait photo of a person, wearing hipster glasses,")


def test_missing_weights_fail_fast_offline(tiny_face_pack, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    ed = InstantIDEditor(config=InstantIDConfig(face_pack=str(tiny_face_pack)))
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="InstantX/InstantID"):
        ed.check_available()
    with pytest.raises(ModelNotAvailableError, match="InstantX/InstantID"):
        ed.load()
    assert time.perf_counter() - t0 < 10
    no_pack = InstantIDEditor(config=InstantIDConfig(face_pack=str(tmp_path / "antelopev2")))
    with pytest.raises(ModelNotAvailableError, match="antelopev2"):
        no_pack.check_available()


def test_random_weights_build_on_a_tiny_architecture(astronaut_image):
    ed = InstantIDEditor(resolution=64, config=InstantIDConfig(architecture=tiny_sdxl_instantid_architecture(512)))
    ed.load_random_weights()
    out = ed.edit([astronaut_image.resize((64, 48))], ["wearing a hat"], seed=0, settings=STEPS)
    assert out[0].size == (64, 48)
    info = ed.describe()
    assert info["random_weights"] and "skipped" in info["face_analysis"] and info["random_architecture"] == "custom"
    assert ed.loaded.resampler.config.embedding_dim == 512 and ed.num_parameters() > 100_000

    runner_style = get_editor("instantid", resolution=64)  # the benchmark runner sets this on every editor
    runner_style.random_architecture = "tiny"
    runner_style.load_random_weights()
    assert runner_style.describe()["random_architecture"] == "tiny"
    assert runner_style.num_parameters() == ed.num_parameters()


def test_half_precision_load_puts_the_ip_layers_in_the_model_dtype(tiny_release, tiny_face_pack, astronaut_image):
    base, release, _ = tiny_release
    config = InstantIDConfig(face_pack=str(tiny_face_pack), resampler_dim_head=16)
    ed = InstantIDEditor(model=str(release), base_model=str(base), resolution=64, dtype=torch.bfloat16, config=config)
    out = ed.edit([astronaut_image.resize((64, 64))], ["wearing a hat"], settings=STEPS)
    assert out[0].size == (64, 64)
    assert {p.dtype for p in ed.loaded.unet.parameters()} == {torch.bfloat16}  # IP projections included
