"""Tiny, offline stand-ins for the real models, built from code (no download).

They have the real architectures' classes and interfaces (diffusers ``UNet2DConditionModel`` with an 8-channel
``conv_in``, ``AutoencoderKL``, transformers ``CLIPTextModel`` + ``CLIPTokenizer``) at a few thousand parameters,
so tests and CI exercise the same loading, saving and inference code as the real checkpoints. Their weights are
random: nothing built here is ever presented as a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_IMAGE_SIZE = 32
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode map (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tiny_clip_tokenizer_files(folder: str | Path, words: tuple[str, ...] = ()) -> Path:
    """A valid CLIP BPE vocabulary: every byte (alone and word-final), optional whole words, special tokens.

    ``words`` adds merges so that those words become single tokens (the demo world uses its own vocabulary).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab: list[str] = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    seen = set(vocab)
    for word in words:
        enc = "".join(_bytes_to_unicode()[b] for b in word.lower().encode("utf-8"))
        if len(enc) < 2:
            continue
        # Left-to-right merges: ((a b) c) d</w>
        pieces = list(enc[:-1]) + [enc[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            merged = current + nxt
            if merged not in seen:
                merges.append(f"{current} {nxt}")
                vocab.append(merged)
                seen.add(merged)
            current = merged
    vocab += list(SPECIAL_TOKENS)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""))
    return folder


def tiny_clip_tokenizer(folder: str | Path, words: tuple[str, ...] = ()):
    from transformers import CLIPTokenizer

    folder = write_tiny_clip_tokenizer_files(folder, words)
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text().splitlines()[1:] if line]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_text_encoder(vocab_size: int, hidden_size: int = 32, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden_size,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config).eval()


def tiny_vae(seed: int = 0, block_out_channels: tuple[int, ...] = (8, 16, 16, 16), latent_channels: int = 4):
    """``AutoencoderKL`` with ``2 ** (len(blocks) - 1)`` spatial downscaling (8 for the default, as SD's VAE, so a
    512² image gives a 64² latent and attention cost stays as in the real model)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=block_out_channels, layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=8, sample_size=TINY_IMAGE_SIZE,
    ).eval()


def tiny_unet(in_channels: int = 8, cross_attention_dim: int = 32, sample_size: int = 4, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=4, layers_per_block=1,
        # Attention only below full latent resolution keeps a 512² edit well under a second on 2 CPU cores.
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=16, norm_num_groups=8,
    ).eval()


def world_unet(sample_size: int, attention_levels: int = 1):
    """The demo world's UNet (``train.demo``): 32-64-96 channels, one layer per block, a 64-wide text context, and
    cross-attention at the ``attention_levels`` coarsest levels (1: the 8x8 level of a 32x32 latent only; 2: 16x16 as
    well, which is what let a teacher tie the instruction to the background in BENCHMARKS.md §5)."""
    from diffusers import UNet2DConditionModel

    if attention_levels not in (1, 2, 3):
        raise ValueError(f"attention_levels must be 1, 2 or 3, got {attention_levels}")
    attn = [level >= 3 - attention_levels for level in range(3)]  # finest level first
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 96),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        cross_attention_dim=64, attention_head_dim=16, norm_num_groups=16)


def tiny_scheduler(prediction_type: str = "epsilon"):
    from diffusers import EulerAncestralDiscreteScheduler

    # The scheduler InstructPix2Pix ships with (scaled-linear betas, epsilon prediction unless asked otherwise:
    # train.demo's DemoConfig.prediction_type).
    return EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type,
    )


def tiny_instruct_pix2pix_components(workdir: str | Path, seed: int = 0) -> dict:
    """Components of an InstructPix2Pix-format pipeline (8-channel UNet), ready for either pipeline class."""
    tokenizer = tiny_clip_tokenizer(Path(workdir) / "tokenizer_src")
    return {
        "vae": tiny_vae(seed),
        "text_encoder": tiny_text_encoder(len(tokenizer), seed=seed),
        "tokenizer": tokenizer,
        "unet": tiny_unet(seed=seed),
        "scheduler": tiny_scheduler(),
    }


def save_tiny_instruct_pix2pix(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny checkpoint in the exact on-disk format of ``timbrooks/instruct-pix2pix``."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    path = Path(path)
    pipe = StableDiffusionInstructPix2PixPipeline(
        **tiny_instruct_pix2pix_components(path.parent / f".{path.name}-work", seed),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path
