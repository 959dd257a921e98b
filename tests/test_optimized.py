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
