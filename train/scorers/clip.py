"""The demo CLIP: a small ``clip.model.CLIP`` trained contrastively on the pool, saved as float16 safetensors,
and its CLIP-T evaluation through ``ClipScorer``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from instantportrait.demo import Sample, caption, describe_edits
from train.loops import StepResult, one_cycle_loop
from train.scorers.data import (
    CLIP_MEAN,
    CLIP_STD,
    TAG_CLIP,
    Pool,
    ScorerConfig,
)


# ============================================================================================== CLIP
def make_clip(cfg: ScorerConfig) -> nn.Module:
    """A small ``clip.model.CLIP`` with the real vocabulary and context length (so ``clip.tokenize`` works)."""
    from instantportrait.eval.clip_score import _clip_module

    clip = _clip_module()
    return clip.model.CLIP(
        embed_dim=cfg.clip_embed_dim, image_resolution=cfg.clip_resolution, vision_layers=cfg.clip_layers,
        vision_width=64, vision_patch_size=cfg.clip_patch, context_length=77, vocab_size=49408,
        transformer_width=64, transformer_heads=1, transformer_layers=cfg.clip_layers,
    )


def clip_pixels(images: Sequence[Image.Image] | np.ndarray, resolution: int) -> torch.Tensor:
    """CLIP's preprocessing (bicubic resize of the short side, centre crop, normalise) -> ``(N, 3, R, R)``."""
    out = []
    for im in images:
        pil = im if isinstance(im, Image.Image) else Image.fromarray(im)
        w, h = pil.size
        s = resolution / min(w, h)
        pil = pil.convert("RGB").resize((max(resolution, round(w * s)), max(resolution, round(h * s))),
                                        Image.Resampling.BICUBIC)
        w, h = pil.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        arr = np.asarray(pil.crop((left, top, left + resolution, top + resolution)), np.float32) / 255.0
        out.append(((arr - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def train_clip(pool: Pool, cfg: ScorerConfig, log: Any) -> nn.Module:
    """Contrastive training (symmetric InfoNCE, identical texts count as positives). Each batch holds whole
    (unedited, edited) pairs, so a picture and its one-edit-apart twin are always each other's hard negatives."""
    from instantportrait.eval.clip_score import _clip_module

    tokenize = _clip_module().tokenize
    torch.manual_seed(cfg.seed + 2)
    model = make_clip(cfg).float()
    texts = sorted(set(pool.captions) | set(pool.short_captions) | set(pool.edit_texts))
    text_id = {t: i for i, t in enumerate(texts)}
    tokens = tokenize(texts, context_length=77, truncate=True)  # (T, 77)
    variants = [np.array([text_id[t] for t in col]) for col in (pool.captions, pool.short_captions, pool.edit_texts)]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=cfg.clip.lr, betas=(0.9, 0.98))
    model.train()
    n_pairs = len(pool) // 2

    def step_fn(step: int) -> StepResult:
        rng = np.random.default_rng([cfg.seed, TAG_CLIP, step])
        pairs = rng.choice(n_pairs, size=cfg.clip.batch // 2, replace=False)
        rows = np.stack([2 * pairs, 2 * pairs + 1], 1).reshape(-1)  # (B,)
        which = rng.choice(3, size=len(rows), p=[0.5, 0.3, 0.2])
        tid = np.array([variants[w][r] for w, r in zip(which, rows)])  # (B,)
        x = clip_pixels(pool.images[rows], cfg.clip_resolution)  # (B, 3, r, r)
        if rng.random() < 0.5:
            x = x.flip(3)
        img = F.normalize(model.encode_image(x), dim=1)  # (B, D)
        batch_tokens = tokens[tid]  # (B, 77)
        # The text tower is causal and reads the end-of-text position, so padding after the longest text in the
        # batch changes nothing: drop it (clip's encode_text slices its mask and positions to the given length).
        batch_tokens = batch_tokens[:, : int((batch_tokens != 0).sum(1).max())]  # (B, L)
        txt = F.normalize(model.encode_text(batch_tokens), dim=1)  # (B, D)
        logits = model.logit_scale.exp().clamp(max=100.0) * img @ txt.T  # (B, B)
        same = torch.from_numpy(tid[:, None] == tid[None, :]).float()  # (B, B) identical texts are positives
        loss = 0.5 * (-(same / same.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
                      - (same / same.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean())
        return loss, lambda: (f"  clip step {step:4d}/{cfg.clip.steps}  loss {loss.item():.3f}  scale "
                              f"{model.logit_scale.exp().item():.1f}")

    one_cycle_loop(opt, cfg.clip.lr, cfg.clip.steps, 0.1, step_fn, log)
    return model.eval()


def save_clip(model: nn.Module, path: Path) -> Path:
    """Save the CLIP state dict as float16 safetensors (``build_model`` casts to float16 anyway)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})  # one key: several would be written in random order
    return path



def evaluate_clip(path: str | Path, samples: Sequence[Sample]) -> dict[str, Any]:
    """CLIP-T ranking on world ``samples``: how often the edited target scores a higher CLIP-T with the target's
    description than the unedited source does (full caption, identity-free caption, 'a photo of a person' + edit)."""
    from instantportrait.eval.clip_score import ClipScorer

    scorer = ClipScorer(weights=path).load()
    src = scorer.image_features([s.source for s in samples])  # (n, D)
    tgt = scorer.image_features([s.target for s in samples])
    out: dict[str, Any] = {"split": samples[0].split, "samples": len(samples)}
    texts = {
        "caption": [s.target_caption for s in samples],
        "short_caption": [caption(s.identity, s.scene, s.edits, with_identity=False) for s in samples],
        "edit_text": [f"a photo of a person {describe_edits(s.edits)}" for s in samples],
    }
    for name, items in texts.items():
        t = scorer.text_features(items)  # (n, D)
        s_src, s_tgt = (src * t).sum(1), (tgt * t).sum(1)
        out[f"target_above_source_{name}"] = round(float((s_tgt > s_src).float().mean()), 4)
        out[f"clip_t_target_{name}"] = round(float(s_tgt.mean()), 4)
        out[f"clip_t_source_{name}"] = round(float(s_src.mean()), 4)
    # retrieval: each edited target against all n target captions
    t = scorer.text_features(texts["caption"])
    out["caption_retrieval_top1"] = round(float(((tgt @ t.T).argmax(1) == torch.arange(len(samples))).float()
                                                .mean()), 4)
    return out


