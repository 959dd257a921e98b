"""The model cards (``README.md``) written next to the demo face pack and the demo CLIP, with the measured numbers."""

from __future__ import annotations

from typing import Any

from train.scorers.data import (
    AUX_WORLD_SEED_OFFSET,
    CLIP_DIR,
    CLIP_FILE,
    DET_FILE,
    FACE_PACK_DIR,
    REC_FILE,
    ScorerConfig,
)


# ============================================================================================== model cards
def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def face_card(cfg: ScorerConfig, metrics: dict[str, Any], seconds: float) -> str:
    """The face pack's model card (front matter with the licence, what it is, how it was made, measured numbers)."""
    m = metrics
    files = _table(("file", "what", "insightface class"), [
        (f"`{DET_FILE}`", f"small conv net + feature pyramid; resizes its input to {cfg.det_resolution}x"
         f"{cfg.det_resolution} inside the graph and predicts per 8-px cell a face score, box and 5 landmarks, "
         "written in SCRFD's 9-output layout (stride 8, anchor 0)", "`SCRFD`"),
        (f"`{REC_FILE}`", f"compact CNN on the 112x112 ArcFace-aligned crop, RGB (x - 127.5) / 127.5, "
         f"{cfg.rec_dim}-d embedding, CosFace loss (m = {cfg.rec_margin}, s = {cfg.rec_scale})", "`ArcFaceONNX`"),
    ])
    numbers = _table(("metric", "value"), [
        ("faces found (sources and edited targets, IoU >= 0.5)", f"{m['detection_rate']:.1%} of {m['images']}"),
        ("mean landmark error", f"{m['kps_error_px']} px (128-px images)"),
        ("identity cosine, source vs its edited target", m["same_edit_mean"]),
        ("identity cosine, two photos of one person (other scene and edit)", m["same_photo_mean"]),
        ("identity cosine, different people (mean / 95th percentile)", f"{m['different_mean']} / "
         f"{m['different_p95']}"),
        (f"detections on {m['blank_images']} face-free images (flat, gradient, noise)", m["blank_detections"]),
    ])
    return f"""---
license: apache-2.0
tags: [toy-model, synthetic-data, insightface-layout, instantportrait-demo]
---
# Demo face pack (toy model, synthetic data)

**A toy.** A face detector and an identity encoder trained in minutes on a CPU on the *synthetic* portrait world of
`instantportrait.demo` (procedurally drawn faces). It exists so that the benchmark and the app can measure
identity similarity offline through the same `FaceEncoder` / insightface code path as with `buffalo_l`. It has
never seen a photograph; on real faces its outputs are meaningless. Do not use it to identify anyone.

Load: `FaceEncoder("instantportrait/demo/models/{FACE_PACK_DIR}")` (insightface 2.1 routes the files itself).

{files}

Training data: renders of the demo world `World(seed={cfg.world_seed}, num_identities={cfg.num_identities})`'s
train split plus {cfg.aux_identities} people of another world (seed {AUX_WORLD_SEED_OFFSET + cfg.world_seed}),
{cfg.views} scenes each, every scene without and with random edits (glasses, hats, beards, backgrounds, grayscale,
sepia, neon, ...), so edits are augmentations the encoder learns to ignore. Detector: {cfg.det.steps} steps of
{cfg.det.batch} (zoom 0.5-1.5x, flips, letterboxing, blur, noise, random det_size; {cfg.det_negative_prob:.0%}
face-free images). Encoder: {cfg.rec.steps} steps of {cfg.rec.batch} crops with jittered landmarks. Seed
{cfg.seed}; `python -m train.train_scorers --out instantportrait/demo/models/` ({seconds / 60:.1f} min on this
machine's CPU, face pack and CLIP together).

## Measured on the demo world's test split (people never seen in training; `FaceEncoder`, det_size {m['det_size']})

{numbers}

## What it can and cannot do
- Can: find the one large face in a demo-world portrait (also edited, blurred, grayscale, neon, letterboxed) at
  any `det_size`, give landmarks good enough for ArcFace alignment, and tell the demo world's people apart.
- Cannot: recognise real people, find small faces (under ~12 % of the image width) or many faces in a crowd, or
  handle strong head turns; it knows only what the renderer draws. Its scores are on its own scale: never compare
  them with `buffalo_l` numbers.
- Licence: Apache-2.0 (our code and our synthetic data; no insightface weights inside).
"""


def clip_card(cfg: ScorerConfig, metrics: dict[str, Any], seconds: float, size_mb: float) -> str:
    """The demo CLIP's model card."""
    m = metrics
    rows = []
    for key, label in (("caption", "full target caption"), ("short_caption", "caption without identity"),
                       ("edit_text", '"a photo of a person" + edit')):
        rows.append((label, f"{m['target_above_source_' + key]:.1%}",
                     f"{m['clip_t_target_' + key]} / {m['clip_t_source_' + key]}"))
    numbers = _table(("text scored", "target above source", "mean CLIP-T target / source"), rows)
    return f"""---
license: apache-2.0
tags: [toy-model, synthetic-data, clip, instantportrait-demo]
---
# Demo CLIP (toy model, synthetic data)

**A toy.** A small `clip.model.CLIP`: a ViT image tower at {cfg.clip_resolution} px with {cfg.clip_patch}-px
patches and {cfg.clip_layers} layers of width 64, a text transformer of {cfg.clip_layers} layers of width 64 over
the real 49408-token vocabulary and 77-token context, a {cfg.clip_embed_dim}-d joint space. Trained contrastively
for {cfg.clip.steps} steps of {cfg.clip.batch} on (image, description) pairs of the synthetic portrait world. It
knows this world's words only (glasses, sunglasses, headset, hats, mustache, beard, shirts, plaid, t-shirt, blue
drape, forest, underwater, grayscale yearbook, sepia, neon, skin tones, hair, eyes, backdrops) and has never seen
a photograph.

Load: `ClipScorer(weights="instantportrait/demo/models/{CLIP_DIR}/{CLIP_FILE}")` ({size_mb:.1f} MB, float16).
Trained with `python -m train.train_scorers --out instantportrait/demo/models/` (seed {cfg.seed};
{seconds / 60:.1f} min on this machine's CPU together with the face pack). Data: the same renders as the demo face
pack (demo world seed {cfg.world_seed} train split plus {cfg.aux_identities} people of another world, each scene
without and with edits, so every picture's one-edit-apart twin is in its batch as a hard negative); texts: the full
caption, the caption without identity attributes, or "a photo of a person" + the edit phrase.

## Measured on the demo world's test split (people never seen in training; {m['samples']} samples)

{numbers}

Caption retrieval among the {m['samples']} target captions (top-1): {m['caption_retrieval_top1']:.1%}.

## What it can and cannot do
- Can: tell whether a demo-world portrait shows an edit named in this world's words, so CLIP-T and directional
  CLIP rank edited above unedited pictures in the benchmark and the app.
- Cannot: understand other words or real photos (scores on them are noise); its CLIP-T values are on its own scale
  (never compare them with ViT-L/14 numbers); small accessories (a headset, a hat's colour) are its weakest edits.
- Licence: Apache-2.0 (our code and synthetic data; only clip-anytorch's architecture and tokenizer are used).
"""


