"""The teacher's multi-step output for ``L_distill``: DDIM inversion of the source, then DDIM sampling.

    z_t = ddim_invert(teacher, scheduler, x0, image_latents, empty_embeds, num_steps=10, t_end=600)  # reconstruct
    x0_teacher = ddim_sample(teacher, scheduler, z_t, 600, image_latents, prompt_embeds, uncond_embeds,
                             num_steps=10, text_guidance=7.5, image_guidance=1.5)

Conventions (as ``pipeline.py`` and InstructPix2Pix):

* ``x0`` / ``z`` are *scaled* latents (``vae_latent * scaling_factor``), the space the UNet denoises in;
* ``image_latents`` are the *unscaled* source latents (``vae.encode(pixels).latent_dist.mode()``), concatenated on
  the channel axis: the UNet sees ``[z ‖ image_latents]`` (8 channels for SD1.5);
* variance preserving: ``z_t = √ᾱ_t x0 + √(1-ᾱ_t) ε``; the clean end of every trajectory is ``ᾱ = 1``.

Both DDIM directions walk the same timestep grid ``t_k = round(k * t_end / num_steps)``, k = 1..N (see
``ddim_timesteps``), so inverting then sampling with the same number of steps and the same conditioning retraces the
trajectory up to DDIM's usual one-step lag (the inversion evaluates the UNet at the *target* timestep on the current
latent, as diffusers' ``DDIMInverseScheduler`` does). Sampling is deterministic DDIM (eta = 0).

Classifier-free guidance uses InstructPix2Pix's 3-way batch exactly as diffusers'
``StableDiffusionInstructPix2PixPipeline``: text ``[c, ∅, ∅]``, image ``[img, img, 0]``, and
``ε̂ = ε_∅∅ + s_T (ε_c,img − ε_∅,img) + s_I (ε_∅,img − ε_∅∅)`` (``guided_model_output``). All functions here run
under ``torch.no_grad()``: they produce targets, never gradients.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from instantportrait.pipelines.ipnet import predicted_x0

TEACHER_TARGET_MODES = ("ddim-inversion", "stochastic")
DDIM_PREDICTION_TYPES = ("epsilon", "v_prediction")


# ---------------------------------------------------------------------------------------------------- schedule
def resolve_alphas_cumprod(schedule: Any) -> torch.Tensor:
    """ᾱ_t for t = 0..T-1, (T,) float32, from a tensor, a scheduler, or a scheduler config (dict / FrozenDict).

    A config is turned into its schedule by diffusers' ``DDPMScheduler.from_config`` (same ``beta_schedule`` maths
    as every diffusers scheduler), so no SD1.5 constant lives here.
    """
    if isinstance(schedule, torch.Tensor):
        if schedule.ndim != 1:
            raise ValueError(f"alphas_cumprod must be 1-D (T,), got shape {tuple(schedule.shape)}")
        return schedule.float()
    if hasattr(schedule, "alphas_cumprod"):
        return torch.as_tensor(schedule.alphas_cumprod).float()
    if isinstance(schedule, dict) or hasattr(schedule, "keys"):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(dict(schedule)).alphas_cumprod.float()
    raise TypeError(f"expected a (T,) tensor, a scheduler or a scheduler config, got {type(schedule).__name__}")


def ddim_timesteps(t_end: int, num_steps: int) -> list[int]:
    """The ascending DDIM grid ``[t_1, ..., t_N]`` with ``t_k = round(k * t_end / N)`` and ``t_N = t_end``."""
    if isinstance(num_steps, bool) or int(num_steps) < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if int(t_end) < int(num_steps):
        raise ValueError(f"t_end ({t_end}) must be >= num_steps ({num_steps}) so every DDIM step moves")
    n = int(num_steps)
    return [round(k * int(t_end) / n) for k in range(1, n + 1)]


def _check_timestep(t: int, alphas_cumprod: torch.Tensor) -> None:
    if not 0 <= int(t) < alphas_cumprod.shape[0]:
        raise ValueError(f"timestep must be in [0, {alphas_cumprod.shape[0]}), got {t}")


def split_prediction(model_output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor | float,
                     prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from a UNet output for ``sample`` at noise level ``alpha_bar`` (epsilon or v prediction)."""
    if prediction_type not in DDIM_PREDICTION_TYPES:
        raise ValueError(f"DDIM here supports prediction_type in {DDIM_PREDICTION_TYPES}, got {prediction_type!r}")
    a = torch.as_tensor(alpha_bar, dtype=torch.float32, device=sample.device)
    x0 = predicted_x0(model_output, sample, a, prediction_type)  # (B, 4, h, w)
    eps = model_output if prediction_type == "epsilon" else a.sqrt() * model_output + (1 - a).sqrt() * sample
    return x0, eps


# ---------------------------------------------------------------------------------------------------- guidance
def uses_guidance(text_guidance: float, image_guidance: float) -> bool:
    """Whether the 3-way CFG batch is needed: any scale other than 1 (both 1 reduce exactly to the conditional)."""
    return not (float(text_guidance) == 1.0 and float(image_guidance) == 1.0)


def guided_model_output(unet: Any, latents: torch.Tensor, timestep: int | torch.Tensor, image_latents: torch.Tensor,
                        prompt_embeds: torch.Tensor, uncond_prompt_embeds: torch.Tensor | None = None, *,
                        text_guidance: float = 1.0, image_guidance: float = 1.0) -> torch.Tensor:
    """The (guided) UNet output for ``latents`` at ``timestep``, float32 (B, C, h, w). Differentiable in ``latents``.

    Without guidance (both scales 1): one pass on ``[latents ‖ image_latents]`` with ``prompt_embeds``.
    With guidance: diffusers' InstructPix2Pix 3-way batch, text ``[prompt, uncond, uncond]`` and image latents
    ``[image, image, zeros]``, chunked as (text, image, uncond) and combined as
    ``uncond + text_guidance * (text - image) + image_guidance * (image - uncond)``. Unlike the pipeline, guidance is
    not silently switched off when ``text_guidance <= 1``: the formula is applied for any scales other than (1, 1).
    ``uncond_prompt_embeds`` may have batch 1 (broadcast).
    """
    b = latents.shape[0]
    dtype = unet.dtype
    t = torch.as_tensor(timestep, device=latents.device)
    t = (t.expand(b) if t.ndim == 0 else t).to(torch.long)  # (B,)
    if not uses_guidance(text_guidance, image_guidance):
        model_in = torch.cat([latents, image_latents.to(latents.dtype)], dim=1).to(dtype)  # (B, 2C, h, w)
        return unet(model_in, t, encoder_hidden_states=prompt_embeds.to(dtype)).sample.float()  # (B, C, h, w)
    if uncond_prompt_embeds is None:
        raise ValueError("classifier-free guidance needs `uncond_prompt_embeds` (the empty instruction's embeddings)")
    uncond = uncond_prompt_embeds.expand(b, -1, -1) if uncond_prompt_embeds.shape[0] == 1 else uncond_prompt_embeds
    text = torch.cat([prompt_embeds, uncond, uncond]).to(dtype)  # (3B, L, D)
    zeros = torch.zeros_like(image_latents)
    image = torch.cat([image_latents, image_latents, zeros]).to(latents.dtype)  # (3B, C, h, w)
    model_in = torch.cat([torch.cat([latents] * 3), image], dim=1).to(dtype)  # (3B, 2C, h, w)
    out = unet(model_in, t.repeat(3), encoder_hidden_states=text).sample.float()  # (3B, C, h, w)
    out_text, out_image, out_uncond = out.chunk(3)
    return out_uncond + text_guidance * (out_text - out_image) + image_guidance * (out_image - out_uncond)


# ---------------------------------------------------------------------------------------------------- DDIM
@torch.no_grad()
def ddim_invert(unet: Any, schedule: Any, x0: torch.Tensor, image_latents: torch.Tensor,
                prompt_embeds: torch.Tensor, *, num_steps: int, t_end: int,
                uncond_prompt_embeds: torch.Tensor | None = None, text_guidance: float = 1.0,
                image_guidance: float = 1.0, prediction_type: str = "epsilon") -> torch.Tensor:
    """Deterministic DDIM inversion of clean scaled latents ``x0`` (B, C, h, w) up to ``t_end``: returns z_{t_end}.

    Step k moves the latent from level ᾱ_{t_{k-1}} (ᾱ = 1 at the start) to ᾱ_{t_k}, with ε̂ from the UNet evaluated
    on the current latent at the target timestep t_k (diffusers' ``DDIMInverseScheduler`` convention). Guidance is
    off by default: inversion normally runs on the conditional branch only.
    """
    alphas = resolve_alphas_cumprod(schedule).to(x0.device)
    _check_timestep(t_end, alphas)
    z = x0.float()  # (B, C, h, w)
    a_prev = torch.tensor(1.0, device=x0.device)
    for t in ddim_timesteps(t_end, num_steps):
        a_t = alphas[t]
        out = guided_model_output(unet, z, t, image_latents, prompt_embeds, uncond_prompt_embeds,
                                  text_guidance=text_guidance, image_guidance=image_guidance)  # (B, C, h, w)
        x0_hat, eps = split_prediction(out, z, a_prev, prediction_type)
        z = a_t.sqrt() * x0_hat + (1 - a_t).sqrt() * eps  # (B, C, h, w)
        a_prev = a_t
    return z


@torch.no_grad()
def ddim_sample(unet: Any, schedule: Any, z_t: torch.Tensor, t_start: int, image_latents: torch.Tensor,
                prompt_embeds: torch.Tensor, uncond_prompt_embeds: torch.Tensor | None = None, *, num_steps: int,
                text_guidance: float = 1.0, image_guidance: float = 1.0,
                prediction_type: str = "epsilon") -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from ``z_t`` at ``t_start`` down to the clean scaled latent x0, (B, C, h, w).

    Walks ``ddim_timesteps(t_start, num_steps)`` downwards; the last step goes to ᾱ = 1 and returns x̂0.
    """
    alphas = resolve_alphas_cumprod(schedule).to(z_t.device)
    _check_timestep(t_start, alphas)
    ts = ddim_timesteps(t_start, num_steps)[::-1]
    z = z_t.float()  # (B, C, h, w)
    for i, t in enumerate(ts):
        a_t = alphas[t]
        a_next = alphas[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=z.device)
        out = guided_model_output(unet, z, t, image_latents, prompt_embeds, uncond_prompt_embeds,
                                  text_guidance=text_guidance, image_guidance=image_guidance)  # (B, C, h, w)
        x0_hat, eps = split_prediction(out, z, a_t, prediction_type)
        z = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps  # (B, C, h, w)
    return z


def stochastic_start(schedule: Any, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward diffusion ``z_t = √ᾱ_t x0 + √(1-ᾱ_t) ε`` (the ablation's start), (B, C, h, w). ``t``: int or (B,)."""
    alphas = resolve_alphas_cumprod(schedule).to(x0.device)
    t = torch.as_tensor(t, device=x0.device, dtype=torch.long)
    a = alphas[t].reshape(-1, *([1] * (x0.ndim - 1)))  # (B or 1, 1, 1, 1)
    return a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()


def normality_stats(latents: torch.Tensor) -> dict[str, float]:
    """How far start latents (e.g. DDIM-inverted z_t) are from N(0, I), as floats to log or report.

    ``mean`` / ``std`` over every element (0 / 1 for N(0, I)); ``channel_mean_abs_max`` and ``channel_std_min`` /
    ``channel_std_max``, the worst channel (a per-channel offset or scale is what the student would notice first);
    ``neighbour_corr``, the correlation of horizontally adjacent elements (0 for white noise; DDIM inversion keeps
    some of the image's layout, which shows up here). Why: the student sees the pipeline's start at inference, and
    these numbers say how much a DDIM-inverted start differs from pure noise.
    """
    z = latents.detach().float()  # (B, C, h, w)
    per_channel = z.transpose(0, 1).flatten(1)  # (C, B*h*w)
    left, right = z[..., :-1].flatten(), z[..., 1:].flatten()  # (B*C*h*(w-1),) each
    corr = torch.corrcoef(torch.stack([left, right]))[0, 1] if left.numel() > 1 else torch.tensor(float("nan"))
    return {"mean": float(z.mean()), "std": float(z.std()),
            "channel_mean_abs_max": float(per_channel.mean(1).abs().max()),
            "channel_std_min": float(per_channel.std(1).min()), "channel_std_max": float(per_channel.std(1).max()),
            "neighbour_corr": float(corr)}


class TeacherTarget(NamedTuple):
    """The teacher's clean output ``latents`` (scaled, (B, C, h, w)) and the start latent ``start`` it came from."""

    latents: torch.Tensor
    start: torch.Tensor


@torch.no_grad()
def teacher_target(mode: str, unet: Any, schedule: Any, x0: torch.Tensor, image_latents: torch.Tensor,
                   prompt_embeds: torch.Tensor, uncond_prompt_embeds: torch.Tensor | None = None, *, t_start: int,
                   num_steps: int, text_guidance: float = 7.5, image_guidance: float = 1.5,
                   inversion_steps: int | None = None, inversion_prompt_embeds: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   prediction_type: str = "epsilon", start: torch.Tensor | None = None) -> TeacherTarget:
    """The teacher's multi-step edit of the source ``x0`` (scaled source latents), the target of ``L_distill``.

    ``mode="ddim-inversion"`` (default of the method): z_{t_start} = DDIM inversion of ``x0`` without guidance,
    conditioned on ``inversion_prompt_embeds`` and the source image, over ``inversion_steps`` (default ``num_steps``)
    steps. Pass the *empty* instruction's embeddings there (InstructPix2Pix's reconstruct condition, what the IPNet
    trainer passes by default), so the inverted z_t encodes the source and only the sampling pass asks for the edit;
    left ``None`` the inversion is conditioned on the edit ``prompt_embeds`` (the trainer's ``inversion_prompt:
    instruction`` ablation). ``mode="stochastic"`` (ablation): z = √ᾱ x0 + √(1-ᾱ) ε with ``noise`` (or drawn from
    ``generator``). ``start``: a z_{t_start} the caller already has (the student's own start under shared pairing):
    used as is, nothing inverted or drawn. Then ``num_steps`` of guided DDIM sampling with the edit prompt.
    """
    if mode not in TEACHER_TARGET_MODES:
        raise ValueError(f"mode must be one of {TEACHER_TARGET_MODES}, got {mode!r}")
    if start is not None:
        start = start.float()  # (B, C, h, w)
    elif mode == "ddim-inversion":
        start = ddim_invert(unet, schedule, x0, image_latents,
                            prompt_embeds if inversion_prompt_embeds is None else inversion_prompt_embeds,
                            num_steps=inversion_steps or num_steps, t_end=t_start, prediction_type=prediction_type)
    else:
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32,
                                device=generator.device if generator is not None else x0.device).to(x0.device)
        start = stochastic_start(schedule, x0, t_start, noise)  # (B, C, h, w)
    latents = ddim_sample(unet, schedule, start, t_start, image_latents, prompt_embeds, uncond_prompt_embeds,
                          num_steps=num_steps, text_guidance=text_guidance, image_guidance=image_guidance,
                          prediction_type=prediction_type)  # (B, C, h, w)
    return TeacherTarget(latents=latents, start=start)
