"""DDIM inversion / sampling on the tiny InstructPix2Pix UNet: determinism, reconstruction, guidance formula."""

from __future__ import annotations

import warnings

import pytest
import torch

from instantportrait.tiny.diffusion import tiny_scheduler, tiny_unet
from instantportrait.training.inversion import (
    ddim_invert,
    ddim_sample,
    ddim_timesteps,
    guided_model_output,
    normality_stats,
    resolve_alphas_cumprod,
    split_prediction,
    stochastic_start,
    teacher_target,
)

T_END, STEPS = 400, 5


def _scheduler():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy-2 copy= warning inside diffusers' Euler scheduler
        return tiny_scheduler()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet().requires_grad_(False)


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x0": torch.randn(2, 4, 8, 8, generator=g), "image": torch.randn(2, 4, 8, 8, generator=g),
            "text": torch.randn(2, 77, 32, generator=g), "uncond": torch.randn(1, 77, 32, generator=g),
            "noise": torch.randn(2, 4, 8, 8, generator=g)}


def test_schedule_helpers():
    sched = _scheduler()
    a = resolve_alphas_cumprod(sched)
    assert a.shape == (1000,) and a.dtype == torch.float32 and torch.all(a[1:] < a[:-1])
    torch.testing.assert_close(resolve_alphas_cumprod(sched.config), a)
    torch.testing.assert_close(resolve_alphas_cumprod(a.double()), a)
    assert ddim_timesteps(400, 5) == [80, 160, 240, 320, 400]
    assert ddim_timesteps(999, 3) == [333, 666, 999]
    with pytest.raises(ValueError):
        ddim_timesteps(3, 5)
    # v-prediction conversion recovers (x0, ε) exactly
    g = torch.Generator().manual_seed(1)
    x0, eps, alpha = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g), a[300]
    z = alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps
    v = alpha.sqrt() * eps - (1 - alpha).sqrt() * x0
    x0_hat, eps_hat = split_prediction(v, z, alpha, "v_prediction")
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=1e-5)


def test_inversion_is_deterministic_and_reconstructs(unet, inputs):
    sched = _scheduler()
    x0, image, text = inputs["x0"], inputs["image"], inputs["text"]
    z1 = ddim_invert(unet, sched, x0, image, text, num_steps=STEPS, t_end=T_END)
    z2 = ddim_invert(unet, sched, x0, image, text, num_steps=STEPS, t_end=T_END)
    assert z1.shape == x0.shape and z1.dtype == torch.float32
    assert torch.equal(z1, z2)
    rec_inv = ddim_sample(unet, sched, z1, T_END, image, text, num_steps=STEPS)
    z_sto = stochastic_start(sched, x0, T_END, inputs["noise"])
    rec_sto = ddim_sample(unet, sched, z_sto, T_END, image, text, num_steps=STEPS)
    mse_inv = (rec_inv - x0).pow(2).mean().item()
    mse_sto = (rec_sto - x0).pow(2).mean().item()
    assert rec_inv.shape == x0.shape
    assert mse_inv < 0.02, mse_inv
    assert mse_inv * 20 < mse_sto, (mse_inv, mse_sto)


def test_stochastic_start_is_forward_diffusion(inputs):
    a = resolve_alphas_cumprod(_scheduler())
    z = stochastic_start(a, inputs["x0"], torch.tensor([0, 999]), inputs["noise"])
    torch.testing.assert_close(z[0], a[0].sqrt() * inputs["x0"][0] + (1 - a[0]).sqrt() * inputs["noise"][0])
    torch.testing.assert_close(z[1], a[999].sqrt() * inputs["x0"][1] + (1 - a[999]).sqrt() * inputs["noise"][1])


def test_guided_model_output_is_diffusers_ip2p_cfg(unet, inputs):
    z, image, text, uncond = inputs["x0"], inputs["image"], inputs["text"], inputs["uncond"]
    t = torch.tensor([250, 250])
    with torch.no_grad():
        e_text = unet(torch.cat([z, image], 1), t, encoder_hidden_states=text).sample
        e_image = unet(torch.cat([z, image], 1), t, encoder_hidden_states=uncond.expand(2, -1, -1)).sample
        e_uncond = unet(torch.cat([z, torch.zeros_like(image)], 1), t,
                        encoder_hidden_states=uncond.expand(2, -1, -1)).sample
        guided = guided_model_output(unet, z, 250, image, text, uncond, text_guidance=7.5, image_guidance=1.5)
        plain = guided_model_output(unet, z, 250, image, text)
    torch.testing.assert_close(guided, e_uncond + 7.5 * (e_text - e_image) + 1.5 * (e_image - e_uncond),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(plain, e_text, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="uncond_prompt_embeds"):
        guided_model_output(unet, z, 250, image, text, text_guidance=2.0)


def test_teacher_target_modes(unet, inputs):
    sched = _scheduler()
    kw = {"t_start": T_END, "num_steps": 2, "text_guidance": 3.0, "image_guidance": 1.5}
    args = (unet, sched, inputs["x0"], inputs["image"], inputs["text"], inputs["uncond"])
    inv = teacher_target("ddim-inversion", *args, **kw)
    assert inv.latents.shape == inv.start.shape == inputs["x0"].shape
    torch.testing.assert_close(inv.start, ddim_invert(unet, sched, inputs["x0"], inputs["image"], inputs["text"],
                                                      num_steps=2, t_end=T_END))
    sto = teacher_target("stochastic", *args, noise=inputs["noise"], **kw)
    torch.testing.assert_close(sto.start, stochastic_start(sched, inputs["x0"], T_END, inputs["noise"]))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(teacher_target("stochastic", *args, generator=g1, **kw).latents,
                               teacher_target("stochastic", *args, generator=g2, **kw).latents)
    with pytest.raises(ValueError, match="mode"):
        teacher_target("ddpm", *args, **kw)


def test_inversion_prompt_and_given_start(unet, inputs):
    """Empty vs edit instruction give different inverted z_t; a given start is used as is (shared pairing)."""
    sched = _scheduler()
    kw = {"t_start": T_END, "num_steps": 2, "text_guidance": 3.0, "image_guidance": 1.5}
    args = (unet, sched, inputs["x0"], inputs["image"], inputs["text"], inputs["uncond"])
    empty = inputs["uncond"].expand_as(inputs["text"])
    by_instruction = teacher_target("ddim-inversion", *args, **kw)
    by_empty = teacher_target("ddim-inversion", *args, inversion_prompt_embeds=empty, **kw)
    torch.testing.assert_close(by_empty.start, ddim_invert(unet, sched, inputs["x0"], inputs["image"], empty,
                                                           num_steps=2, t_end=T_END))
    assert not torch.allclose(by_empty.start, by_instruction.start, atol=1e-4)
    given = teacher_target("stochastic", *args, start=inputs["noise"], **kw)
    assert torch.equal(given.start, inputs["noise"])
    torch.testing.assert_close(given.latents, ddim_sample(unet, sched, inputs["noise"], T_END, inputs["image"],
                                                          inputs["text"], inputs["uncond"], num_steps=2,
                                                          text_guidance=3.0, image_guidance=1.5))


def test_normality_stats():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 4, 16, 16, generator=g)
    stats = normality_stats(noise)
    assert abs(stats["mean"]) < 0.05 and abs(stats["std"] - 1) < 0.05 and abs(stats["neighbour_corr"]) < 0.05
    smooth = normality_stats(2 * noise.cumsum(-1) / 16 + 0.5)  # offset, scaled, spatially correlated
    assert smooth["mean"] > 0.4 and smooth["neighbour_corr"] > 0.5 and smooth["channel_mean_abs_max"] > 0.4
