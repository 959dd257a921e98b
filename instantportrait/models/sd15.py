"""SD1.5 + IP-Adapter FaceID + ControlNet architectures as code (IP-Control): the released sizes (random-weights
latency runs), a test-size copy, and a builder of every network with random weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from instantportrait.models.controlnet import seeded_networks, unet_with_controlnet

if TYPE_CHECKING:
    from instantportrait.methods.face_conditioned.resampler import FaceIDProjectionConfig


@dataclass(frozen=True)
class SD15Architecture:
    """Configs of every network IP-Control runs; :func:`sd15_ipcontrol_architecture` gives the released sizes."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    projection: FaceIDProjectionConfig
    scheduler: dict[str, Any]
    controlnet_conditioning_channels: tuple[int, ...] = (16, 32, 96, 256)


SD15_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
                  "steps_offset": 1, "prediction_type": "epsilon"}


def sd15_ipcontrol_architecture() -> SD15Architecture:
    """SD1.5 (UNet 860M, CLIP ViT-L/14 text, VAE) + an SD1.5 ControlNet + FaceID's projection.

    The SD1.5 configs are the shared ones in :mod:`instantportrait.models.architectures` (its InstructPix2Pix UNet
    with the original 4-channel ``conv_in``)."""
    from instantportrait.methods.face_conditioned.resampler import FaceIDProjectionConfig
    from instantportrait.models.architectures import CLIP_VIT_L14_TEXT, SD15_IP2P_UNET, SD15_VAE

    return SD15Architecture(
        unet={**SD15_IP2P_UNET, "in_channels": 4},
        vae=dict(SD15_VAE),
        text_encoder=dict(CLIP_VIT_L14_TEXT),
        projection=FaceIDProjectionConfig(),
        scheduler=dict(SD15_SCHEDULER),
    )


def tiny_sd15_ipcontrol_architecture(embedding_dim: int = 128) -> SD15Architecture:
    """The same at test size (32-d context, two UNet levels, 8x VAE, 4 face tokens)."""
    from instantportrait.methods.face_conditioned.resampler import FaceIDProjectionConfig

    return SD15Architecture(
        unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                  attention_head_dim=8, norm_num_groups=8),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                 layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.18215),
        text_encoder=dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                          projection_dim=32, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        projection=FaceIDProjectionConfig(embedding_dim, 2 * embedding_dim, 32, 4),
        scheduler=dict(SD15_SCHEDULER),
        controlnet_conditioning_channels=(8, 8, 8, 16),
    )


def build_sd15_networks(arch: SD15Architecture, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, nn.Module]:
    """Every IP-Control network with random weights, built directly on ``device``."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from instantportrait.methods.face_conditioned.resampler import FaceIDProjection

    def build() -> dict[str, nn.Module]:
        unet, controlnet = unet_with_controlnet(arch.unet, arch.controlnet_conditioning_channels)
        return {"unet": unet, "controlnet": controlnet, "vae": AutoencoderKL(**arch.vae),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**arch.text_encoder)),
                "projection": FaceIDProjection(arch.projection)}

    return seeded_networks(build, device, dtype, seed)
