"""A tiny, random-weight OpenAI-CLIP checkpoint for offline tests (no download).

It is a real ``clip.model.CLIP`` (a small ViT image tower and a small text transformer) with the real vocabulary size
(49408) and context length (77), so ``clip.tokenize`` and every code path of :class:`~instantportrait.eval.clip_score.
ClipScorer` run unchanged. Its weights are random: the scores it gives mean nothing.

Two constraints come from ``clip.model.build_model`` (which re-creates the model from a state dict): it derives the
number of attention heads as ``width // 64`` for both towers, so neither width can be below 64; and the 49408 x 64
token embedding alone is 12.6 MB in float32, so the state dict is saved in float16 (as OpenAI's own checkpoints are;
``build_model`` casts the linear/conv/attention weights to float16 anyway) to stay under 10 MB (about 6.8 MB).
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_CLIP_EMBED_DIM = 32
TINY_CLIP_WIDTH = 64  # minimum width: build_model uses heads = width // 64
CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT_LENGTH = 77


def build_tiny_clip(path: str | Path, seed: int = 0, image_resolution: int = 32, *, patch_size: int = 8,
                    embed_dim: int = TINY_CLIP_EMBED_DIM, layers: int = 2) -> Path:
    """Build a random tiny CLIP, save its float16 state dict to ``path`` (``torch.save``) and return the path.

    The same ``seed`` gives the same weights (the global RNG is left untouched). ``image_resolution`` must be a
    multiple of ``patch_size``. ``ClipScorer(weights=path)`` and ``clip.load(str(path), jit=False)`` both load it.
    """
    from instantportrait.eval.clip_score import _clip_module

    CLIP = _clip_module().model.CLIP
    if image_resolution <= 0 or image_resolution % patch_size:
        raise ValueError(f"image_resolution ({image_resolution}) must be a positive multiple of patch_size "
                         f"({patch_size})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(
            embed_dim=embed_dim,
            image_resolution=image_resolution,
            vision_layers=layers,  # an int selects the VisionTransformer tower
            vision_width=TINY_CLIP_WIDTH,
            vision_patch_size=patch_size,
            context_length=CLIP_CONTEXT_LENGTH,
            vocab_size=CLIP_VOCAB_SIZE,
            transformer_width=TINY_CLIP_WIDTH,
            transformer_heads=TINY_CLIP_WIDTH // 64,
            transformer_layers=layers,
        )
    state_dict = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    torch.save(state_dict, path)
    return path
