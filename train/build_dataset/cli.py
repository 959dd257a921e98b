"""python -m train.build_dataset --sources PORTRAITS_DIR --out data/pairs [--generator instructpix2pix] [--limit N]

Builds the paired portrait-edit set IDE-Net trains on (README "Training", step 1):

    source portraits (a folder, or a Hub dataset id when ``datasets`` is installed)
      x instructions (templates over the poster's categories, train/instructions.py, or ``--instructions FILE``)
      -> a target from a slow generator of the method registry (``--generator``, default instructpix2pix)
      -> filters: identity similarity source vs target (dlib by default, ``--face-pack``, ``--min-identity``) and
         CLIP-T of the target
         against the instruction's target caption (ClipScorer, ``--min-clip-t``), both thresholds recorded
      -> ``OUT/manifest.jsonl`` + ``OUT/images/{src,tgt}/`` + ``OUT/dataset.json`` (format "instantportrait-pairs/1";
         trainers read the rows with ``"passed": true``).

Every (source, instruction) pair gets a row, rejected ones included, with ``reject_reason`` one of
``unreadable_source``, ``no_face_in_source``, ``generation_failed``, ``no_face_in_target``, ``low_identity``,
``low_clip_t`` (the first filter it failed), so nothing is silently dropped.

Examples::

    # one process (merges at the end)
    python -m train.build_dataset --sources portraits/ --out data/pairs --instructions-per-source 8
    # several GPUs: each process takes rows i, i+N, i+2N, ...; the last to finish writes the manifest
    accelerate launch --num_processes 8 -m train.build_dataset --sources portraits/ --out data/pairs
    # or by hand, e.g. on several machines sharing OUT, then merge
    python -m train.build_dataset --sources portraits/ --out data/pairs --num-shards 4 --shard-index 2
    python -m train.build_dataset --out data/pairs --merge
    # a tiny offline run
    python -m train.build_dataset --sources faces/ --out /tmp/pairs --generator-model tiny-ip2p/ --steps 2 \\
        --resolution 64 --face-pack tiny_pack/ --clip tiny_clip.pt --limit 20

The design (plan, crash safety, shards): :mod:`train.build_dataset.plan`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from instantportrait.config import DTYPE_NAMES
from train.build_dataset.build import load_components, resolve_sources, run_shard
from train.build_dataset.export import (
    check_same_config,
    collect_rows,
    format_summary,
    merge,
    write_build_json,
)
from train.build_dataset.plan import (
    ARCFACE_MIN_IDENTITY,
    BUILD_JSON,
    DEFAULT_FILTER_FACE,
    DLIB_MIN_IDENTITY,
    BuildConfig,
    BuildError,
    Locations,
    PlannedRow,
    RunOptions,
    plan_rows,
    shard_rows,
)
from train.instructions import CATEGORIES, load_instructions, template_instructions

logger = logging.getLogger(__name__)  # a child of "train.build_dataset"

# ------------------------------------------------------------------------------------------------ CLI
_DTYPES = DTYPE_NAMES


# (world size, rank, local rank) variables of the launchers: torchrun / `accelerate launch` (GPUs), and the MPI
# launchers `accelerate launch` uses for several CPU processes (the same variables accelerate's PartialState reads).
_LAUNCHER_VARS = (("WORLD_SIZE", "RANK", "LOCAL_RANK"),
                  ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
                  ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),
                  ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_RANK"))


def shard_from_environment(env: dict[str, str] | None = None) -> tuple[int, int, str | None]:
    """(num_shards, shard_index, device or None) of a multi-process launch, read from the launcher's environment.

    ``accelerate launch`` and ``torchrun`` set ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``; accelerate's multi-CPU
    (MPI) launch sets the Open MPI / MPICH / MVAPICH equivalents. With a local rank and CUDA, the device is
    ``cuda:<local rank>``. No process group is opened: shards never talk to each other. A plain run is
    ``(1, 0, None)``.
    """
    env = dict(os.environ) if env is None else env
    for size_var, rank_var, local_var in _LAUNCHER_VARS:
        world = int(env.get(size_var) or 1)
        if world <= 1:
            continue
        rank = int(env.get(rank_var) or 0)
        if not 0 <= rank < world:
            raise BuildError(f"{rank_var}={rank} is outside {size_var}={world}")
        local = env.get(local_var)
        return world, rank, (f"cuda:{int(local)}" if local is not None and _cuda_available() else None)
    return 1, 0, None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.build_dataset", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io_ = p.add_argument_group("input / output")
    io_.add_argument("--sources", help="folder of source portraits (searched recursively), or a Hub dataset id")
    io_.add_argument("--out", required=True, type=Path, help="dataset folder (created; resumed if it exists)")
    io_.add_argument("--split", default="train", help="Hub dataset split (default: train)")
    io_.add_argument("--image-column", default="image", help="Hub dataset image column (default: image)")
    io_.add_argument("--max-sources", type=int, help="use only the first N sources (sorted by path)")
    io_.add_argument("--limit", type=int, help="build at most N rows (the first N of the plan)")
    io_.add_argument("--resolution", type=int, default=512, help="long side of sources and targets (default: 512)")
    ins = p.add_argument_group("instructions")
    ins.add_argument("--instructions", type=Path, help="JSONL/JSON/YAML of {instruction, target_caption, category} "
                     "records, instead of the templates")
    ins.add_argument("--instructions-per-source", type=int, default=0,
                     help="instructions drawn per source (seeded); 0 = every instruction (default)")
    ins.add_argument("--paraphrases", type=int, default=3, help="template paraphrases per concept (default: 3)")
    ins.add_argument("--combos", type=int, default=12, help="template multi-edit instructions (default: 12)")
    ins.add_argument("--categories", default=",".join(CATEGORIES),
                     help=f"template categories, comma-separated (default: all: {','.join(CATEGORIES)})")
    ins.add_argument("--seed", type=int, default=0, help="global seed: instructions, sampling, per-row seeds")
    gen = p.add_argument_group("generator")
    gen.add_argument("--generator", default="instructpix2pix", help="method registry name (default: instructpix2pix)")
    gen.add_argument("--generator-model", help="the generator's model: a local folder or Hub id[@revision]")
    gen.add_argument("--steps", type=int, help="inference steps (default: the generator's)")
    gen.add_argument("--guidance-scale", type=float, help="text guidance (default: the generator's)")
    gen.add_argument("--image-guidance-scale", type=float, help="image guidance (default: the generator's)")
    gen.add_argument("--device", help="torch device (default: cuda:<local rank> under a launcher, cuda, else cpu)")
    gen.add_argument("--dtype", choices=sorted(_DTYPES), help="default: float16 on CUDA, else float32")
    gen.add_argument("--batch-size", type=int, default=1, help="rows generated per call (default: 1)")
    flt = p.add_argument_group("filters")
    flt.add_argument("--face-pack", default=None,
                     help="face model of the identity filter: dlib (default: not the benchmark's evaluation model, "
                          "buffalo_l, so the data is not picked by its own judge), or an insightface pack name/folder")
    flt.add_argument("--det-size", type=int, default=640, help="face detector input size (default: 640)")
    flt.add_argument("--det-thresh", type=float, default=0.5, help="face detector threshold (default: 0.5)")
    flt.add_argument("--min-identity", type=float, default=None,
                     help=f"minimum face cosine source vs target (default: {DLIB_MIN_IDENTITY} with dlib, on its "
                          f"compressed scale; {ARCFACE_MIN_IDENTITY} with an ArcFace pack)")
    flt.add_argument("--no-face-filter", action="store_true", help="no face detection / identity filter")
    flt.add_argument("--clip", help="CLIP variant (e.g. ViT-L/14) or weights file (default: the config's clip)")
    flt.add_argument("--min-clip-t", type=float, default=0.2, help="minimum CLIP-T of target vs caption "
                     "(default: 0.2)")
    flt.add_argument("--no-clip-filter", action="store_true", help="no CLIP-T filter")
    sh = p.add_argument_group("sharding")
    sh.add_argument("--num-shards", type=int,
                    help="number of processes (default: the launcher's WORLD_SIZE, else 1)")
    sh.add_argument("--shard-index", type=int, help="this process's shard, 0-based (default: its rank)")
    sh.add_argument("--merge", action="store_true", help="only merge the part files of --out into the manifest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def min_identity(args: argparse.Namespace) -> float:
    """``--min-identity``, or the default of the filter's face model (cosines of dlib and ArcFace differ in scale)."""
    if args.min_identity is not None:
        return args.min_identity
    return DLIB_MIN_IDENTITY if (args.face_pack or DEFAULT_FILTER_FACE) == "dlib" else ARCFACE_MIN_IDENTITY


def _config_from_args(args: argparse.Namespace, files: list[str], dtype: str) -> BuildConfig:
    if args.instructions is not None:
        try:
            instructions = load_instructions(args.instructions)
        except ValueError as exc:
            raise BuildError(str(exc)) from exc
    else:
        cats = tuple(c.strip() for c in args.categories.split(",") if c.strip())
        try:
            instructions = template_instructions(args.seed, paraphrases=args.paraphrases, combos=args.combos,
                                                 categories=cats)
        except ValueError as exc:
            raise BuildError(str(exc)) from exc
    return BuildConfig(
        source_files=files, instructions=[i.to_dict() for i in instructions],
        instructions_from="file" if args.instructions is not None else "templates",
        instructions_per_source=args.instructions_per_source, seed=args.seed, limit=args.limit,
        max_sources=args.max_sources, resolution=args.resolution, generator=args.generator,
        num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
        image_guidance_scale=args.image_guidance_scale, dtype=dtype,
        face_filter=not args.no_face_filter, min_identity=None if args.no_face_filter else min_identity(args),
        det_size=args.det_size, det_thresh=args.det_thresh,
        clip_filter=not args.no_clip_filter, min_clip_t=None if args.no_clip_filter else args.min_clip_t)


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.merge:
        return
    if not args.sources:
        p.error("--sources is required (unless --merge)")
    for name in ("limit", "max_sources", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.resolution < 8 or args.resolution % 8:
        p.error(f"--resolution must be a positive multiple of 8, got {args.resolution}")
    if args.det_size < 32 or args.det_size % 32:
        p.error(f"--det-size must be a positive multiple of 32, got {args.det_size}")
    if not 0.0 < args.det_thresh < 1.0:
        p.error(f"--det-thresh must be in (0, 1), got {args.det_thresh}")
    if args.instructions_per_source < 0:
        p.error(f"--instructions-per-source must be >= 0, got {args.instructions_per_source}")
    for name in ("min_identity", "min_clip_t"):
        if getattr(args, name) is not None and not -1.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} is a cosine: it must be in [-1, 1], got {getattr(args, name)}")
    if (args.num_shards is None) != (args.shard_index is None):
        p.error("--num-shards and --shard-index go together")
    if args.num_shards is not None and not 0 <= args.shard_index < args.num_shards:
        p.error(f"--shard-index must be in [0, {args.num_shards}), got {args.shard_index}")


def _finish(out: Path, plan: Sequence[PlannedRow], num_shards: int, shard_index: int) -> int:
    """After a shard: merge if every row of every shard exists (so the last shard to finish merges), else say so."""
    if collect_rows(out, plan)[1]:
        print(f"shard {shard_index}/{num_shards} done; other shards are still missing rows. The last shard to "
              f"finish writes the manifest, or run: python -m train.build_dataset --out {out} --merge")
    else:
        print(format_summary(out, merge(out, plan=plan)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the builder; 0 on success (also when other shards still run), 1 on an error, 2 on bad usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from instantportrait.errors import InstantPortraitError

    out: Path = args.out
    try:
        if args.merge:
            info = merge(out)
            print(format_summary(out, info))
            return 0
        if args.num_shards is not None:
            num_shards, shard_index, env_device = args.num_shards, args.shard_index, None
        else:
            num_shards, shard_index, env_device = shard_from_environment()
        device = args.device or env_device or ("cuda" if _cuda_available() else "cpu")
        dtype = _DTYPES[args.dtype] if args.dtype else ("float16" if device.startswith("cuda") else "float32")
        root, files = resolve_sources(args.sources, out, split=args.split, image_column=args.image_column,
                                      max_sources=args.max_sources)
        config = _config_from_args(args, files, dtype)
        check_same_config(out, config)  # before loading any model
        plan = plan_rows(config)
        if (out / BUILD_JSON).is_file() and not collect_rows(out, shard_rows(plan, num_shards, shard_index))[1]:
            logger.info("shard %d/%d: every row is already built; nothing to generate", shard_index, num_shards)
            return _finish(out, plan, num_shards, shard_index)
        locations = Locations(sources=str(args.sources), source_root=str(root),
                              instructions_file=str(args.instructions) if args.instructions else None,
                              generator_model=args.generator_model, face_pack=args.face_pack or DEFAULT_FILTER_FACE,
                              clip=args.clip)
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # the row bar is the one progress bar
        t0 = time.perf_counter()
        components = load_components(config, locations, device)
        out.mkdir(parents=True, exist_ok=True)
        write_build_json(out, config, locations, components.descriptions)
        opts = RunOptions(out=out, device=device, batch_size=args.batch_size, num_shards=num_shards,
                          shard_index=shard_index, progress=not args.no_progress)
        written, total = run_shard(config, components, opts, root, plan)
        logger.info("shard %d/%d: %d rows built now, %d rows in this shard (%.1f s)", shard_index, num_shards,
                    written, total, time.perf_counter() - t0)
        return _finish(out, plan, num_shards, shard_index)
    except (BuildError, InstantPortraitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


