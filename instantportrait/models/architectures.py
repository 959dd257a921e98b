"""The real model architectures as code, for random-weights builds (architecture latency without any download).

``Editor.load_random_weights()`` calls an editor's ``_build_random``, which builds its pipeline from one of the
:data:`ARCHITECTURES` below with freshly initialised weights. The configurations are those of the released
checkpoints' ``config.json`` files, written out so that nothing is fetched:

* ``sd15-ip2p`` (default): InstructPix2Pix = SD1.5 UNet with an 8-channel ``conv_in`` (859.5M parameters),
  SD1.5's ``AutoencoderKL`` (83.7M), and the CLIP ViT-L/14 text encoder (123.1M) - the backbone of IPNet, IDE-Net,
  InstructPix2Pix and MagicBrush;
* ``tiny``: the test suite's tiny components (same classes, a few thousand parameters), so the latency mode can be
  tested on a CPU in seconds.

The architecture is picked by the editor attribute ``random_architecture`` when set, else by the environment
variable ``INSTANTPORTRAIT_RANDOM_ARCH``, else ``sd15-ip2p``.

Tokenizer: the CLIP BPE tables are data we do not ship, so a random-weights build gets a byte-level CLIP tokenizer
(written by :func:`instantportrait.tiny.diffusion.write_tiny_clip_tokenizer_files`) whose vocabulary is padded to the
text
encoder's size with the special tokens at the real ids (49406, 49407). Prompts are padded to 77 tokens either way,
so the text encoder does exactly the work it does with the real tokenizer; only the (sub-millisecond) tokenisation
itself differs. Images these builds produce are noise: they exist only to time the networks.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ARCH_ENV = "INSTANTPORTRAIT_RANDOM_ARCH"
DEFAULT_ARCH = "sd15-ip2p"
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


@dataclass(frozen=True)
class LatentEditorArchitecture:
    """Constructor arguments of an InstructPix2Pix-format latent diffusion editor's networks.

    ``unet``: ``UNet2DConditionModel`` kwargs (``in_channels`` = 2 x latent channels); ``vae``: ``AutoencoderKL``
    kwargs; ``text_encoder``: ``CLIPTextConfig`` kwargs; ``scheduler``: kwargs shared by the noise schedulers;
    ``native_resolution``: the image side the model was trained at.
    """

    name: str
    description: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon"))
    native_resolution: int = 512
    model_max_length: int = 77

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)


# timbrooks/instruct-pix2pix unet/config.json (the SD1.5 UNet, conv_in widened to 8 channels).
SD15_IP2P_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=8, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
# SD1.5 vae/config.json.
SD15_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
# openai/clip-vit-large-patch14 text tower as shipped in SD1.5's text_encoder/config.json.
CLIP_VIT_L14_TEXT: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)

# The test suite's tiny components (instantportrait.tiny.diffusion), as an architecture.
TINY_UNET: dict[str, Any] = dict(
    sample_size=4, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32, attention_head_dim=16, norm_num_groups=8,
)
TINY_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
    latent_channels=4, norm_num_groups=8, sample_size=32,
)
TINY_TEXT: dict[str, Any] = dict(
    vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    max_position_embeddings=77, projection_dim=32, bos_token_id=998, eos_token_id=999, pad_token_id=999,
)

ARCHITECTURES: dict[str, LatentEditorArchitecture] = {
    a.name: a for a in [
        LatentEditorArchitecture(
            "sd15-ip2p", "InstructPix2Pix / SD1.5: 8-channel UNet, SD1.5 VAE, CLIP ViT-L/14 text encoder",
            SD15_IP2P_UNET, SD15_VAE, CLIP_VIT_L14_TEXT),
        LatentEditorArchitecture(
            "tiny", "test-sized InstructPix2Pix-format components (instantportrait.tiny.diffusion)",
            TINY_UNET, TINY_VAE, TINY_TEXT, native_resolution=32),
    ]
}


def resolve_architecture(name: str | None = None) -> LatentEditorArchitecture:
    """``name``, else ``$INSTANTPORTRAIT_RANDOM_ARCH``, else ``sd15-ip2p``; one clear ``KeyError`` if unknown."""
    key = name or os.environ.get(ARCH_ENV, "").strip() or DEFAULT_ARCH
    try:
        return ARCHITECTURES[key]
    except KeyError:
        raise KeyError(f"unknown architecture {key!r} (from {'the argument' if name else ARCH_ENV}); known: "
                       f"{', '.join(ARCHITECTURES)}") from None


def random_weights_tokenizer(vocab_size: int, model_max_length: int = 77) -> Any:
    """A byte-level ``CLIPTokenizer`` with ``vocab_size`` entries and the special tokens at the last two ids."""
    from transformers import CLIPTokenizer

    from instantportrait.tiny.diffusion import write_tiny_clip_tokenizer_files

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_clip_tokenizer_files(Path(tmp))
        vocab: dict[str, int] = json.loads((folder / "vocab.json").read_text())
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in SPECIAL_TOKENS]
    if len(tokens) + len(SPECIAL_TOKENS) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the byte-level alphabet ({len(tokens) + 2})")
    # Unused filler entries (never produced: no merge leads to them) put the special tokens at the real ids.
    tokens += [f"<|unused{i}|>" for i in range(vocab_size - len(SPECIAL_TOKENS) - len(tokens))]
    tokens += list(SPECIAL_TOKENS)
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=model_max_length)


def build_random_components(arch: LatentEditorArchitecture, *, device: str | torch.device = "cpu",
                            dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, Any]:
    """``vae``, ``text_encoder``, ``tokenizer``, ``unet`` with random weights, built directly on ``device``.

    Parameters are initialised in float32 (as the constructors do), then cast to ``dtype``. The global RNG is left
    untouched (a forked RNG seeded with ``seed`` is used).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**arch.unet)
        vae = AutoencoderKL(**arch.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**arch.text_encoder))
    components = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    for module in components.values():
        if dtype != torch.float32:
            # nn.Module.to: diffusers' ModelMixin.to warns about fp32-only modules even when there are none.
            torch.nn.Module.to(module, dtype=dtype)
        module.eval().requires_grad_(False)
    components["tokenizer"] = random_weights_tokenizer(arch.text_encoder["vocab_size"], arch.model_max_length)
    return components


def build_random_ipnet(arch: LatentEditorArchitecture, *, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, timestep: int = 999, start: str = "noise",
                       seed: int = 0) -> Any:
    """An ``InstantPortraitPipeline`` (IPNet) of architecture ``arch`` with random weights, on ``device``."""
    from diffusers import DDPMScheduler

    from instantportrait.pipelines.ipnet import InstantPortraitPipeline

    parts = build_random_components(arch, device=device, dtype=dtype, seed=seed)
    pipe = InstantPortraitPipeline(**parts, scheduler=DDPMScheduler(**arch.scheduler), timestep=timestep,
                                   start=start)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_random_instruct_pix2pix(arch: LatentEditorArchitecture, *, device: str | torch.device = "cpu",
                                  dtype: torch.dtype = torch.float32, seed: int = 0) -> Any:
    """A ``StableDiffusionInstructPix2PixPipeline`` of architecture ``arch`` with random weights, on ``device``."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    parts = build_random_components(arch, device=device, dtype=dtype, seed=seed)
    pipe = StableDiffusionInstructPix2PixPipeline(
        **parts, scheduler=EulerAncestralDiscreteScheduler(**arch.scheduler), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
