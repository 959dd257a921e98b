"""The denoising tail InstantID and IP-Control share: CLIP prompt encoding, seeded initial latents, the condition
image tensor, the ControlNet + IP-Adapter CFG loop, VAE decoding, and :func:`sample` which chains them.

Everything per request (tokens, scales, generators, progress) is an argument; nothing is stored on a module.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import nn

from instantportrait.methods.base import ProgressFn


def encode_clip_prompts(tokenizers: Sequence[Any], text_encoders: Sequence[nn.Module], prompts: list[str],
                        device: torch.device, *, penultimate: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenated per-token embeddings of each (tokenizer, encoder) and the last encoder's pooled projection.

    SDXL: ``penultimate=True`` (hidden_states[-2] of both encoders, pooled ``text_embeds`` of the second); SD1.5:
    one encoder, ``penultimate=False`` (last hidden state), no pooled output.
    """
    embeds, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)  # (B, 77)
        out = encoder(ids, output_hidden_states=penultimate)
        embeds.append(out.hidden_states[-2] if penultimate else out.last_hidden_state)  # (B, 77, D_i)
        pooled = getattr(out, "text_embeds", None)  # (B, P) for CLIPTextModelWithProjection
    return torch.cat(embeds, dim=-1), pooled  # (B, 77, sum D_i), (B, P) | None


def encode_sdxl_prompts(tokenizers: Sequence[Any], text_encoders: Sequence[nn.Module], prompts: list[str],
                        negative_prompt: str, size: tuple[int, int], cfg: bool,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """SDXL's text conditions, as its pipeline builds them: ``(text, negative text, added_cond)`` with both encoders'
    penultimate layers, the pooled embedding and the size ids ``(h, w, 0, 0, h, w)`` (original size = target size
    = ``size``, no crop) in ``added_cond``, already (uncond ‖ cond) under CFG. An empty negative prompt gives zeros
    (SDXL's ``force_zeros_for_empty_prompt``)."""
    n = len(prompts)
    text, pooled = encode_clip_prompts(tokenizers, text_encoders, prompts, device, penultimate=True)  # (B, 77, D)
    if negative_prompt:
        neg, neg_pooled = encode_clip_prompts(tokenizers, text_encoders, [negative_prompt] * n, device,
                                              penultimate=True)
    else:
        neg, neg_pooled = torch.zeros_like(text), torch.zeros_like(pooled)
    w, h = size
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32, device=device).repeat(n, 1)  # (B, 6)
    added = {"text_embeds": torch.cat([neg_pooled, pooled]) if cfg else pooled,  # (2B, P) | (B, P)
             "time_ids": torch.cat([time_ids, time_ids]) if cfg else time_ids}  # (2B, 6) | (B, 6)
    return text, neg, added



def initial_latents(generators: list[torch.Generator], shape: tuple[int, ...], sigma: float,
                    device: torch.device) -> torch.Tensor:
    """One noise sample per generator (CPU, float32), so a sample's noise depends only on its seed."""
    noise = [torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators]  # (1, C, h, w) each
    return torch.cat(noise).to(device) * sigma  # (B, C, h, w)



def control_tensor(images: list[PIL.Image.Image], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """RGB condition images -> (B, 3, H, W) in [0, 1], the range diffusers' ControlNets take."""
    arr = np.stack([np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in images])  # (B, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).to(device=device, dtype=dtype)  # (B, 3, H, W)



@dataclass
class DenoiseInputs:
    """Everything one batch needs; ``*_cond`` / ``*_uncond`` halves are stacked for CFG inside the loop."""

    text_cond: torch.Tensor  # (B, L, D) UNet text context
    text_uncond: torch.Tensor  # (B, L, D)
    ip_cond: torch.Tensor  # (B, T, D) IP tokens
    ip_uncond: torch.Tensor  # (B, T, D)
    control_context_cond: torch.Tensor  # (B, L', D) ControlNet cross-attention context
    control_context_uncond: torch.Tensor
    control_image: torch.Tensor  # (B, 3, H, W) in [0, 1]
    added_cond: dict[str, torch.Tensor] | None = None  # SDXL: text_embeds / time_ids, already (2B, ...) under CFG



def controlnet_ip_denoise(*, unet: nn.Module, controlnet: nn.Module, scheduler: Any, latents: torch.Tensor,
                          inputs: DenoiseInputs, steps: int, guidance_scale: float, control_scale: float,
                          ip_scale: float, generators: list[torch.Generator],
                          progress: ProgressFn | None) -> torch.Tensor:
    """The sampling loop shared by InstantID and IP-Control: per step one ControlNet and one UNet evaluation on the
    (uncond ‖ cond) batch under CFG (``guidance_scale > 1``), else on the cond batch. Returns final latents (float32).
    """
    cfg = guidance_scale > 1.0
    dtype = next(unet.parameters()).dtype

    def both(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        return (torch.cat([uncond, cond]) if cfg else cond).to(dtype)

    text = both(inputs.text_cond, inputs.text_uncond)  # (2B, L, D)
    ip_tokens = both(inputs.ip_cond, inputs.ip_uncond)  # (2B, T, D)
    control_context = both(inputs.control_context_cond, inputs.control_context_uncond)
    control_image = both(inputs.control_image, inputs.control_image)  # (2B, 3, H, W)
    added = ({k: v.to(dtype) for k, v in inputs.added_cond.items()} if inputs.added_cond is not None else None)
    attn_kwargs = {"ip_hidden_states": ip_tokens, "ip_scale": float(ip_scale)}
    step_kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}

    scheduler.set_timesteps(steps, device=latents.device)
    for i, t in enumerate(scheduler.timesteps):
        model_in = torch.cat([latents, latents]) if cfg else latents  # (2B, 4, h, w)
        model_in = scheduler.scale_model_input(model_in, t).to(dtype)
        down, mid = controlnet(model_in, t, encoder_hidden_states=control_context, controlnet_cond=control_image,
                               conditioning_scale=float(control_scale), added_cond_kwargs=added, return_dict=False)
        noise = unet(model_in, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                     mid_block_additional_residual=mid, added_cond_kwargs=added, cross_attention_kwargs=attn_kwargs,
                     return_dict=False)[0].float()  # (2B, 4, h, w)
        if cfg:
            uncond, cond = noise.chunk(2)
            noise = uncond + guidance_scale * (cond - uncond)  # (B, 4, h, w)
        latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        if progress:
            progress(i + 1, steps)
    return latents



def decode_latents(vae: nn.Module, latents: torch.Tensor) -> list[PIL.Image.Image]:
    """VAE decode (in the VAE's dtype) -> RGB PIL images."""
    cfg = vae.config
    vae_dtype = next(vae.parameters()).dtype
    if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        mean = torch.tensor(cfg.latents_mean, device=latents.device).view(1, -1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=latents.device).view(1, -1, 1, 1)
        latents = latents * std / cfg.scaling_factor + mean
    else:
        latents = latents / cfg.scaling_factor
    images = vae.decode(latents.to(vae_dtype), return_dict=False)[0]  # (B, 3, H, W) in [-1, 1]
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [PIL.Image.fromarray(a) for a in arr]



def snap_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """(w, h) rounded to the nearest multiple (at least one multiple)."""
    return tuple(max(multiple, int(round(s / multiple)) * multiple) for s in size)  # type: ignore[return-value]



def sample(loaded: Any, inputs: DenoiseInputs, scheduler: Any, generators: list[torch.Generator],
           size: tuple[int, int], s: dict[str, Any], progress: ProgressFn | None,
           work_size: tuple[int, int]) -> list[PIL.Image.Image]:
    """Noise -> ControlNet + IP-Adapter denoising -> decoded images at ``work_size`` (``size``: sampling w, h).

    ``loaded`` has ``unet``, ``controlnet`` and ``vae``; ``s`` is the editor's resolved settings (steps, guidance,
    ControlNet and IP scales); one generator per sample, so a sample's noise depends only on its seed."""
    w, h = size
    vae_factor = 2 ** (len(loaded.vae.config.block_out_channels) - 1)
    latents = initial_latents(generators, (loaded.unet.config.in_channels, h // vae_factor, w // vae_factor),
                              float(scheduler.init_noise_sigma), inputs.text_cond.device)
    latents = controlnet_ip_denoise(
        unet=loaded.unet, controlnet=loaded.controlnet, scheduler=scheduler, latents=latents, inputs=inputs,
        steps=s["steps"], guidance_scale=s["guidance_scale"], control_scale=s["control_scale"],
        ip_scale=s["ip_scale"], generators=generators, progress=progress)
    out = decode_latents(loaded.vae, latents)
    return [img.resize(work_size, PIL.Image.Resampling.LANCZOS) if img.size != work_size else img for img in out]
