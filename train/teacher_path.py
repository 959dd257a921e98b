"""python -m train.teacher_path --model instantportrait/demo/models/idenet [--n 200] [--variant NAME:KEY=V,KEY=V ...]

How good is a teacher *as a teacher*? Its own samples through exactly the path the IPNet trainer uses for the
distillation target (``IPNetWrapper.starts`` + ``_targets``: the start pairing, DDIM inversion with the configured
instruction or a stochastic start, guided DDIM sampling), scored on held-out people of the demo world next to:

* ``source (no edit)``: the unchanged source, the floor every editor must beat;
* ``rendered target``: the ground truth;
* ``VAE-reconstructed target``: the ground truth through the VAE (encode, decode), the best any latent model using
  this VAE can score: the ceiling.

A student distilled from this path cannot beat it at what it is asked for (DESIGN: "a student cannot beat its
teacher"), so measure it before training any student. Each ``--variant`` overrides the trainer's teacher settings
(``teacher_start``, ``teacher_steps``, ``teacher_text_guidance``, ``teacher_image_guidance``, ``inversion_prompt``,
``inversion_steps``, ``teacher_t_start``) on top of ``--config`` (default: the demo IPNet's). Writes a JSON file and
prints a table: L1 to the rendered target, identity cosine (demo face pack), share of edits present (demo CLIP), per
category L1. Scores use the shipped demo scorers; only meaningful on the demo world.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instantportrait.config import DEMO_WORLD
from train.config import IPNetConfig, load_config
from train.demo import CONFIG_DIR, DemoScorers, _summarise

TEACHER_KEYS = ("teacher_start", "teacher_steps", "teacher_text_guidance", "teacher_image_guidance",
                "inversion_prompt", "inversion_steps", "teacher_t_start")
CHUNK = 25


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value,key=value"`` -> ``(name, {key: value})``; values parsed as YAML scalars."""
    import yaml

    name, _, body = text.partition(":")
    settings: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in TEACHER_KEYS:
            raise ValueError(f"--variant {text!r}: expected name:key=value,... with keys from "
                             f"{', '.join(TEACHER_KEYS)}")
        settings[key.strip()] = yaml.safe_load(value)
    return name.strip() or "default", settings


def _tensor(images: list[Any], device: torch.device) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for im in images])  # (B, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).to(device)  # (B, 3, H, W) in [-1, 1]


def _images(pixels: torch.Tensor) -> list[Any]:
    from PIL import Image

    arr = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return [Image.fromarray(a) for a in arr]


@torch.no_grad()
def teacher_outputs(wrapper: Any, samples: list[Any], seed: int) -> tuple[list[Any], list[Any]]:
    """(teacher path images, VAE-reconstructed targets) for ``samples``, in chunks, seeded per chunk."""
    device = next(wrapper.student_unet.parameters()).device
    outs, recon = [], []
    for i in range(0, len(samples), CHUNK):
        chunk = samples[i:i + CHUNK]
        batch = {"source": _tensor([s.source for s in chunk], device),
                 "target": _tensor([s.target for s in chunk], device), "instruction": [s.instruction for s in chunk]}
        generator = torch.Generator(device).manual_seed(seed * 1_000_003 + i)
        enc = wrapper.encode(batch)
        ctx = wrapper._targets(batch, enc, generator, wrapper.starts(enc, generator))
        outs += _images(wrapper.decode(ctx["teacher_latents"]))
        recon += _images(wrapper.decode(enc["tgt_latents"]))
    return outs, recon


def measure(model: str, config: str | Path, variants: list[tuple[str, dict[str, Any]]], *, n: int = 200,
            seed: int = 0, scorers: DemoScorers | None = None) -> dict[str, Any]:
    from instantportrait.demo import World
    from train.train_ipnet import build_wrapper

    cfg = load_config(IPNetConfig, config, {"model": model, "student_init": None, "weights.distill": 1.0,
                                            "weights.adv": 0.0, "weights.triplet": 0.0, "weights.identity": 0.0,
                                            "weights.sds": 0.0, "weights.pair": 0.0})
    wrapper, _, _ = build_wrapper(cfg, torch.device("cpu"))
    scorers = scorers or DemoScorers.load()
    world = World(**DEMO_WORLD, size=cfg.resolution)
    samples = list(world.samples("test", n))
    rows: dict[str, Any] = {"source (no edit)": _summarise([s.source for s in samples], samples, scorers),
                            "rendered target": _summarise([s.target for s in samples], samples, scorers)}
    base = wrapper.settings
    recon = None
    for name, overrides in variants:
        wrapper.settings = dataclasses.replace(base, **overrides)
        start = time.perf_counter()
        outs, recon = teacher_outputs(wrapper, samples, seed)
        rows[f"teacher: {name}"] = {**_summarise(outs, samples, scorers), "settings": {
            k: getattr(wrapper.settings, k) for k in TEACHER_KEYS}, "seconds": round(time.perf_counter() - start, 1)}
    if recon is not None:
        rows["VAE-reconstructed target (ceiling)"] = _summarise(recon, samples, scorers)
    return {"model": model, "config": str(config), "n": n, "seed": seed, "size": cfg.resolution, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    cats = sorted(next(iter(result["rows"].values()))["l1_to_target"])
    cats.remove("all")
    head = "| row | L1 to target | identity | edits present | " + " | ".join(f"L1 {c}" for c in cats) + " |"
    lines = [head, "|" + "---|" * (4 + len(cats))]
    for name, r in result["rows"].items():
        l1 = r["l1_to_target"]
        lines.append(f"| {name} | {l1['all']:.4f} | {r.get('identity', float('nan')):.3f} | "
                     f"{100 * r.get('edit_present', float('nan')):.1f} % | "
                     + " | ".join(f"{l1[c]:.4f}" for c in cats) + " |")
    return "\n".join(lines)


def format_categories(result: dict[str, Any]) -> str:
    """Edits present / identity cosine per category, one row per table row (needs the demo scorers)."""
    rows = {k: r for k, r in result["rows"].items() if "edit_present_by_category" in r}
    if not rows:
        return ""
    cats = sorted(next(iter(rows.values()))["edit_present_by_category"])
    lines = ["| row (edits present / identity) | " + " | ".join(cats) + " |", "|" + "---|" * (1 + len(cats))]
    for name, r in rows.items():
        e, i = r["edit_present_by_category"], r["identity_by_category"]
        lines.append(f"| {name} | " + " | ".join(f"{100 * e[c]:.0f} % / {i[c]:.2f}" for c in cats) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="the teacher (an InstructPix2Pix-format IDE-Net folder)")
    p.add_argument("--config", default=str(CONFIG_DIR / "demo_ipnet.yaml"), help="IPNet config whose teacher path "
                   "is measured (default: the demo IPNet's)")
    p.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,... (repeatable); default: the "
                   "config's own teacher settings")
    p.add_argument("--n", type=int, default=200, help="held-out test pairs of the demo world")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    args = p.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in args.variant] or [("config", {})]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    result = measure(args.model, args.config, variants, n=args.n, seed=args.seed)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print()
    print(format_categories(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
