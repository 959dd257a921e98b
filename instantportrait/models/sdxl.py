"""SDXL + InstantID and SDXL + IP-Adapter FaceID (IP-Control-XL) architectures as code: the released sizes
(random-weights latency runs) and test-size copies (tiny releases, ``random_architecture="tiny"``), and a builder of
every network with random weights. The two share everything but the face projection."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from instantportrait.models.controlnet import seeded_networks, unet_with_controlnet

if TYPE_CHECKING:
    from instantportrait.methods.face_conditioned.resampler import FaceIDProjectionConfig, ResamplerConfig


@dataclass(frozen=True)
class SDXLArchitecture:
    """Configs of every network InstantID (or IP-Control-XL) runs. :func:`sdxl_instantid_architecture` /
    :func:`sdxl_ipcontrol_architecture` give the released sizes."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]  # CLIPTextConfig kwargs (CLIP ViT-L/14 text tower)
    text_encoder_2: dict[str, Any]  # CLIPTextConfig kwargs (OpenCLIP ViT-bigG/14 text tower, with projection)
    resampler: ResamplerConfig | FaceIDProjectionConfig  # the face projection: InstantID's or FaceID's MLP
    scheduler: dict[str, Any]
    controlnet_conditioning_channels: tuple[int, ...] = (16, 32, 96, 256)


SDXL_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "timestep_spacing": "leading",
                  "steps_offset": 1, "interpolation_type": "linear", "use_karras_sigmas": False}


def sdxl_instantid_architecture() -> SDXLArchitecture:
    """SDXL base 1.0 (UNet 2.6B, two CLIP text encoders, VAE) + InstantID's IdentityNet and resampler sizes."""
    from instantportrait.methods.face_conditioned.resampler import ResamplerConfig

    return SDXLArchitecture(
        unet=dict(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, norm_num_groups=32,
        ),
        vae=dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
        ),
        text_encoder=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                          layer_norm_eps=1e-5, projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        text_encoder_2=dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                            num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
                            layer_norm_eps=1e-5, projection_dim=1280, bos_token_id=0, eos_token_id=2,
                            pad_token_id=1),
        resampler=ResamplerConfig(),
        scheduler=dict(SDXL_SCHEDULER),
    )


def tiny_sdxl_instantid_architecture(embedding_dim: int = 128) -> SDXLArchitecture:
    """The same architecture at a few hundred thousand parameters (tests): two UNet levels with 1 and 2 transformer
    blocks, two text encoders (16 + 16 = 32-d context), an 8x VAE, a 2-layer resampler with 2 heads of 16."""
    from instantportrait.methods.face_conditioned.resampler import ResamplerConfig

    return SDXLArchitecture(
        unet=dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), cross_attention_dim=32,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 16, norm_num_groups=8,
        ),
        vae=dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.13025, force_upcast=True,
        ),
        text_encoder=dict(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                          projection_dim=16, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        text_encoder_2=dict(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
                            projection_dim=16, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        resampler=ResamplerConfig(dim=32, depth=2, dim_head=16, heads=2, num_queries=4, embedding_dim=embedding_dim,
                                  output_dim=32, ff_mult=2),
        scheduler=dict(SDXL_SCHEDULER),
        controlnet_conditioning_channels=(8, 8, 8, 16),
    )


def build_sdxl_networks(arch: SDXLArchitecture, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, nn.Module]:
    """Every InstantID (or IP-Control-XL) network with random weights, built directly on ``device``; the face
    projection is ``"resampler"`` (a :class:`ResamplerConfig`) or ``"projection"`` (FaceID's MLP)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from instantportrait.methods.face_conditioned.resampler import FaceIDProjection, Resampler, ResamplerConfig

    def build() -> dict[str, nn.Module]:
        unet, controlnet = unet_with_controlnet(arch.unet, arch.controlnet_conditioning_channels)
        nets = {"unet": unet, "controlnet": controlnet, "vae": AutoencoderKL(**arch.vae),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**arch.text_encoder)),
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**arch.text_encoder_2))}
        if isinstance(arch.resampler, ResamplerConfig):
            return {**nets, "resampler": Resampler(arch.resampler)}
        return {**nets, "projection": FaceIDProjection(arch.resampler)}

    return seeded_networks(build, device, dtype, seed)


def sdxl_ipcontrol_architecture() -> SDXLArchitecture:
    """SDXL base 1.0 + an SDXL ControlNet (a copy of the UNet's encoder, as ``diffusers/controlnet-canny-sdxl-1.0``
    and ``thibaud/controlnet-openpose-sdxl-1.0`` are) + IP-Adapter FaceID's SDXL projection
    (512 -> 1024 -> 4 x 2048)."""
    from instantportrait.methods.face_conditioned.resampler import FaceIDProjectionConfig

    return replace(sdxl_instantid_architecture(), resampler=FaceIDProjectionConfig(cross_attention_dim=2048))


def tiny_sdxl_ipcontrol_architecture(embedding_dim: int = 128) -> SDXLArchitecture:
    """The same at test size: :func:`tiny_sdxl_instantid_architecture` with FaceID's MLP (4 tokens of 32)."""
    from instantportrait.methods.face_conditioned.resampler import FaceIDProjectionConfig

    return replace(tiny_sdxl_instantid_architecture(embedding_dim),
                   resampler=FaceIDProjectionConfig(embedding_dim, 2 * embedding_dim, 32, 4))
