"""Train the offline demo scorers on the synthetic portrait world: an insightface-layout face pack and a small CLIP.

    python -m train.train_scorers --out instantportrait/demo/models/ [--seed 0] [--quick]

Writes into ``--out``:

* ``face_pack/det_demo.onnx`` — a small learned face detector exported in SCRFD's output layout (9 outputs: scores,
  box distances and 5 keypoints for strides 8/16/32 with 2 anchors), so insightface routes it to its ``SCRFD`` class;
* ``face_pack/w_demo.onnx`` — a small CNN identity encoder on the 112x112 ArcFace-aligned crop (insightface's
  ``ArcFaceONNX``: RGB ``(x - 127.5) / 127.5``), trained with a CosFace margin loss;
* ``clip/demo_clip.safetensors`` — a small ``clip.model.CLIP`` (2-layer ViT at 128 px with 16-px patches, 2-layer
  text transformer of width 64, the real 49408-token vocabulary and 77-token context) trained contrastively on
  (image, caption) pairs, float16;
* a model card ``README.md`` in each folder with the measured numbers.

``FaceEncoder("<out>/face_pack")`` and ``ClipScorer(weights="<out>/clip/demo_clip.safetensors")`` load them, so the
benchmark and the app score the demo world through the same code paths as with the real models.

Data: one pool of renders shared by the three models. Its people are the *train* split of the demo world
``World(world_seed, num_identities)`` plus ``aux_identities`` people of a second world
(``World(AUX_WORLD_SEED_OFFSET + world_seed)``, different random draws): more identities make the encoder generalise
to people it never saw. Each person is photographed in ``views`` random scenes, each rendered without and with random
edits, so every edit is an augmentation the identity encoder learns to ignore, a hard negative for CLIP (same
picture, one edit apart) and a detector example. Validation and test people of the demo world are never used for
training; the numbers printed at the end are measured on its test split through ``FaceEncoder`` / ``ClipScorer``.

How the detector works: the exported graph resizes whatever insightface feeds it (the image letterboxed into
``det_size``, e.g. 640x640) to ``det_resolution`` x ``det_resolution`` (default 96), runs a small conv net with a
feature pyramid, and predicts per cell of an 8-pixel grid whether it lies in the middle of a face and how central
it is, the box and the 5 landmarks (CenterNet-like, regressed relative to the cell). Boxes and landmarks are turned
into absolute image positions inside the graph and laid out on the stride-8 SCRFD grid of the actual input
(anchor 0; anchor 1 and strides 16/32 score 0), where insightface's own NMS merges the copies. So it finds faces
whose size is a sizeable fraction of the image (about 12-70 % of its width), at any ``det_size``; small faces in
large photos are out of its reach.

Deterministic given ``--seed`` (and the thread count): renders are pure functions of their seeds, every random draw
comes from a seeded generator and torch runs with deterministic algorithms. Default settings take about 9 minutes
on one thread of a shared 2-core CPU (one thread: two threads fighting other processes for the cores are several
times slower); ``--quick`` is a seconds-long smoke run whose models are useless.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from instantportrait.demo import World
from train.scorers import clip, data, face
from train.scorers.cards import clip_card, face_card
from train.scorers.clip import clip_pixels
from train.scorers.data import CLIP_DIR, CLIP_FILE, DET_FILE, FACE_PACK_DIR, REC_FILE, Schedule, ScorerConfig
from train.scorers.face import DetectorNet, IdentityNet, SCRFDLayout, arcface_crop, blank_images, export_face_pack

# What the tests and train.demo use from here (the rest: train.scorers.data / face / clip / cards).
__all__ = [
    "CLIP_DIR", "CLIP_FILE", "DET_FILE", "FACE_PACK_DIR", "REC_FILE", "DetectorNet", "IdentityNet", "SCRFDLayout",
    "Schedule", "ScorerConfig", "arcface_crop", "blank_images", "clip_pixels", "export_face_pack", "main",
    "train_scorers",
]


# ============================================================================================== main
def train_scorers(out: str | Path, cfg: ScorerConfig, *, log: Any = print) -> dict[str, Any]:
    """Train, export and evaluate both scorers into ``out``; returns the measured numbers."""
    out = Path(out)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    timings: dict[str, float] = {}
    log(f"rendering the pool: the demo world's train people + {cfg.aux_identities} others, {cfg.views} scenes x 2 ...")
    pool = data.build_pool(cfg)
    timings["render_s"] = time.time() - t0
    log(f"  {len(pool)} images of {pool.num_classes} people ({timings['render_s']:.0f} s)")

    t = time.time()
    log("training the detector ...")
    det = face.train_detector(pool, cfg, log)
    timings["detector_s"] = time.time() - t
    t = time.time()
    log("training the identity encoder ...")
    rec = face.train_identity(pool, cfg, log)
    timings["identity_s"] = time.time() - t
    pack = export_face_pack(det, rec, out / FACE_PACK_DIR, cfg.det_resolution)

    t = time.time()
    log("training CLIP ...")
    clip_model = clip.train_clip(pool, cfg, log)
    timings["clip_s"] = time.time() - t
    clip_path = clip.save_clip(clip_model, out / CLIP_DIR / CLIP_FILE)
    train_seconds = time.time() - t0

    t = time.time()
    log("evaluating on the demo world's test split ...")
    world = World(cfg.world_seed, cfg.num_identities, size=cfg.image_size)
    samples = list(world.samples("test", cfg.eval_samples))
    face_metrics = face.evaluate_face_pack(pack, samples, n_blank=cfg.eval_blank)
    clip_metrics = clip.evaluate_clip(clip_path, samples)
    timings["eval_s"] = time.time() - t
    size_mb = clip_path.stat().st_size / 1e6
    (pack / "README.md").write_text(face_card(cfg, face_metrics, train_seconds), encoding="utf-8")
    (clip_path.parent / "README.md").write_text(clip_card(cfg, clip_metrics, train_seconds, size_mb),
                                                encoding="utf-8")
    sizes = {p.relative_to(out).as_posix(): round(p.stat().st_size / 1e6, 3)
             for p in [pack / DET_FILE, pack / REC_FILE, clip_path]}
    result = {"face": face_metrics, "clip": clip_metrics, "timings_s": {k: round(v, 1) for k, v in timings.items()},
              "sizes_mb": sizes, "config": cfg.to_dict()}
    log(json.dumps(result, indent=2))
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m train.train_scorers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write face_pack/ and clip/ into")
    parser.add_argument("--seed", type=int, default=0, help="training seed (data order, init, augmentation)")
    parser.add_argument("--world-seed", type=int, default=0, help="the demo world (its test split is held out)")
    parser.add_argument("--num-identities", type=int, default=200, help="the demo world's number of people")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (useless models)")
    args = parser.parse_args(argv)
    cfg = ScorerConfig(seed=args.seed, world_seed=args.world_seed, num_identities=args.num_identities,
                       threads=args.threads)
    if args.quick:
        cfg = cfg.quick()
    return train_scorers(args.out, cfg)


if __name__ == "__main__":
    main()

