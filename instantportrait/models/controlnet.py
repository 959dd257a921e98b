"""Random-weight ControlNet pieces shared by the SDXL (InstantID) and SD1.5 (IP-Control) builders: a ControlNet
whose zero-initialised parts get signal-preserving weights, and one seeded build context for a set of networks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def unzero_controlnet(controlnet: nn.Module) -> nn.Module:
    """Random, signal-preserving weights for a fresh ControlNet's zero-initialised parts, so that a random (or tiny)
    ControlNet's condition image and context influence the UNet as a trained one's do (with the zeros a fresh
    ControlNet starts from, both would be ignored). For random-weights builds only; released weights replace them.

    The condition embedding (a stack of small convolutions) gets He-normal weights and zero biases: with PyTorch's
    default initialisation its output would shrink by orders of magnitude and the condition image would barely
    matter. The residual output convolutions get the default initialisation."""
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        conv.reset_parameters()
    return controlnet


def unet_with_controlnet(unet_config: dict[str, Any],
                         conditioning_channels: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """A random UNet and a ControlNet copied from it (:func:`unzero_controlnet`), in that order (the RNG order the
    tiny releases were written with)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel(**unet_config)
    controlnet = unzero_controlnet(ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=conditioning_channels))
    return unet, controlnet


def seeded_networks(build: Callable[[], dict[str, nn.Module]], device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, nn.Module]:
    """``build()`` run on ``device`` (modules are created there, not moved) under ``torch.manual_seed(seed)``, then
    cast to ``dtype`` in eval mode. The caller's global RNG is left as it was."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)
        nets = build()
    return {k: module.to(dtype=dtype).eval() for k, module in nets.items()}
