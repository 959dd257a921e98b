"""The optimised inference path gives the plain path's images (issue 7)."""

import numpy as np
import pytest
import torch

from instantportrait import InstantPortraitPipeline


def gen():
    return torch.Generator().manual_seed(0)


def load(path, **kw):
    pipe = InstantPortraitPipeline.from_pretrained(path, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_channels_last_and_fused_qkv_match_plain(tiny_ipnet, portrait):
    plain = load(tiny_ipnet)(portrait, "add a hat", generator=gen(), output_type="np").images
    fast = load(tiny_ipnet).optimize(channels_last=True, fuse_qkv=True)
    out = fast(portrait, "add a hat", generator=gen(), output_type="np").images
    np.testing.assert_allclose(out, plain, atol=2e-4)


def test_bfloat16_matches_float32_within_half_precision(tiny_ipnet, portrait):
    plain = load(tiny_ipnet)(portrait, "add a hat", generator=gen(), output_type="np").images
    half = load(tiny_ipnet, dtype=torch.bfloat16)
    out = half(portrait, "add a hat", generator=gen(), output_type="np").images
    assert np.isfinite(out).all()
    assert np.abs(out - plain).mean() < 0.02  # bf16 has 8 mantissa bits: ~0.4% relative per op


def test_prompt_cache_is_exact_and_bounded(tiny_ipnet):
    pipe = load(tiny_ipnet)
    pipe.prompt_cache_size = 2
    a = pipe.encode_prompt(["hat", "glasses", "hat"])
    b = pipe.encode_prompt(["hat", "glasses", "hat"], use_cache=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a[0], a[2], rtol=0, atol=0)
    pipe.encode_prompt(["beard"])
    assert list(pipe._prompt_cache) == ["hat", "beard"]  # "glasses" was least recently used


@pytest.mark.gpu
def test_cuda_fp16_compiled_matches_fp32(tiny_ipnet, portrait):
    ref = load(tiny_ipnet).to("cuda")(portrait, "add a hat", generator=gen(), output_type="np").images
    fast = load(tiny_ipnet, dtype=torch.float16).to("cuda").optimize(channels_last=True, compile=True,
                                                                     upcast_vae=True)
    for _ in range(2):  # the second call replays the CUDA graph
        out = fast(portrait, "add a hat", generator=gen(), output_type="np").images
    assert np.abs(out - ref).max() < 2e-2


def to_tensor(image):
    """A PIL image -> (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def test_tensor_path_gives_the_pil_path_images(tiny_ipnet, portrait):
    pipe = load(tiny_ipnet)
    ref = pipe([portrait, portrait], "add a hat", generator=[gen(), gen()], output_type="np").images
    x = to_tensor(portrait).repeat(2, 1, 1, 1)  # (2, 3, 48, 48)
    out = pipe(x, "add a hat", generator=[gen(), gen()], output_type="pt").images
    assert out.shape == (2, 3, 48, 48) and out.dtype == torch.float32
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy(), ref, atol=1e-5)
    odd = pipe(to_tensor(portrait)[..., :45], "add a hat", generator=gen(), output_type="pt").images
    assert odd.shape == (1, 3, 48, 45)  # resized to the VAE's multiple and back, as PIL input is
    with pytest.raises(ValueError, match="non_blocking"):
        pipe(x, "add a hat", output_type="np", non_blocking=True)
    on_cpu = pipe(x, "add a hat", generator=[gen(), gen()], output_type="pt", non_blocking=True).images
    torch.testing.assert_close(on_cpu, out, rtol=0, atol=0)  # nothing to copy on the CPU


def test_placement_cache_follows_dtype_changes(tiny_ipnet, portrait):
    pipe = load(tiny_ipnet)
    assert pipe._placement().unet_dtype == torch.float32
    pipe.to(torch.bfloat16)
    assert pipe._placement().unet_dtype == torch.bfloat16 == pipe._placement().vae_dtype
    out = pipe(portrait, "add a hat", generator=gen(), output_type="np").images
    assert np.isfinite(out).all()


def test_editor_tensor_path_matches_edit(tiny_ipnet, portrait):
    from instantportrait.methods.diffusion import IPNetEditor

    editor = IPNetEditor(model=str(tiny_ipnet), resolution=None)
    pil = editor.edit([portrait], ["add a hat"], seed=3)[0]
    out = editor.edit_tensor(to_tensor(portrait), ["add a hat"], seed=3)
    assert out.shape == (1, 3, 48, 48)
    assert np.abs(out[0].permute(1, 2, 0).numpy() * 255 - np.asarray(pil, dtype=np.float32)).max() <= 1.0
    with pytest.raises(ValueError, match="one instruction per image"):
        editor.edit_tensor(to_tensor(portrait), ["a", "b"])


@pytest.mark.parametrize("steps", [1, 2])
def test_whole_path_compiled_matches_plain(tiny_ipnet, portrait, steps):
    from instantportrait.pipelines.tiny_vae import build_tiny_autoencoder

    x = to_tensor(portrait)
    pipe = load(tiny_ipnet)
    pipe.use_tiny_vae(build_tiny_autoencoder(pipe.vae, seed=0))
    plain = pipe(x, "add a hat", num_inference_steps=steps, generator=gen(), output_type="pt").images
    pipe.optimize(compile=True, compile_scope="path", compile_backend="eager")
    assert pipe._compiled_path is not None
    for _ in range(2):
        out = pipe(x, "add a hat", num_inference_steps=steps, generator=gen(), output_type="pt").images
        torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="compile_scope"):
        pipe.optimize(compile=True, compile_scope="everything")


@pytest.mark.gpu
def test_cuda_tensor_path_has_one_synchronisation(tiny_ipnet, portrait):
    """The hot path never waits for the device: sync debug mode raises on any synchronising call."""
    from instantportrait.pipelines.tiny_vae import build_tiny_autoencoder

    pipe = load(tiny_ipnet, dtype=torch.float16).to("cuda")
    pipe.use_tiny_vae(build_tiny_autoencoder(pipe.vae, seed=0))
    x = to_tensor(portrait).to("cuda")
    pipe(x, "add a hat", generator=gen(), output_type="pt")  # fills the prompt cache and the schedule's copy
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = pipe(x, "add a hat", generator=gen(), output_type="pt", non_blocking=True).images
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.current_stream().synchronize()  # the one synchronisation
    assert out.device.type == "cpu" and out.is_pinned() and torch.isfinite(out).all()


@pytest.mark.gpu
def test_cuda_whole_path_compiled_fp16_tiny_vae(tiny_ipnet, portrait):
    from instantportrait.pipelines.tiny_vae import build_tiny_autoencoder

    x = to_tensor(portrait).to("cuda")
    pipe = load(tiny_ipnet).to("cuda")
    pipe.use_tiny_vae(build_tiny_autoencoder(pipe.vae, seed=0))
    ref = pipe(x, "add a hat", generator=gen(), output_type="pt").images
    fast = load(tiny_ipnet, dtype=torch.float16).to("cuda")
    fast.use_tiny_vae(build_tiny_autoencoder(fast.vae, seed=0)).optimize(compile=True, compile_scope="path")
    for _ in range(3):  # compile, record the CUDA graph, replay it
        out = fast(x, "add a hat", generator=gen(), output_type="pt").images
    assert (out.float() - ref).abs().max() < 2e-2
