"""python -m benchmark --methods ipnet,instructpix2pix --images portraits/ --out results/ [options]

Subcommands (the first word; ``run`` is the default):

* ``run``: edit, score, write rows and tables (resumable: run the same command again after an interruption);
* ``score RESULTS``: score rows that have no scores yet (after ``--score-later``), or all of them again with
  ``--rescore`` (e.g. with another ``--face-pack``), then rewrite the tables;
* ``report RESULTS``: rewrite the tables, plots and grid from the rows;
* ``list``: registered methods and the default instruction set.

Exit codes: 0 ok, 2 bad usage or input, 3 a scoring model (face pack, CLIP) is not available.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from instantportrait.errors import EXIT_INPUT, EXIT_MODEL, EXIT_OK

SUBCOMMANDS = ("run", "score", "report", "list")


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def parse_per_method(values: list[str] | None, cast: type, flag: str) -> dict[str, Any]:
    """``["20", "instructpix2pix=50,idenet=10"]`` -> ``{"*": 20, "instructpix2pix": 50, "idenet": 10}``."""
    out: dict[str, Any] = {}
    for value in values or []:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, raw = item.rpartition("=")
            key = name.strip() if sep else "*"
            try:
                out[key] = cast(raw.strip())
            except ValueError:
                raise ValueError(f"{flag} {item!r}: expected a {cast.__name__}, or METHOD={cast.__name__}") from None
    return out


def parse_resolution(values: list[str] | None) -> tuple[int, dict[str, int | None]]:
    """``["512", "instantid=1024", "ipcontrol=native"]`` -> ``(512, {"instantid": 1024, "ipcontrol": None})``."""
    common, per_method = 512, {}
    for value in values or []:
        for item in value.split(","):
            name, sep, raw = item.strip().rpartition("=")
            try:
                number = None if sep and raw.strip() == "native" else int(raw)
            except ValueError:
                raise ValueError(f"--resolution {item!r}: expected N, METHOD=N or METHOD=native") from None
            if sep:
                per_method[name.strip()] = number
            elif number is None:
                raise ValueError("--resolution native needs a method: METHOD=native")
            else:
                common = number
    return common, per_method


def parse_overrides(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--model-override {value!r}: expected NAME=PATH_OR_REPO (NAME: a method or model key)")
        out[name.strip()] = path.strip()
    return out


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1") from None


def _none_or(value: str | None) -> str | None:
    return None if value is None or value.strip().lower() in ("", "none", "off") else value


def add_scoring_args(p: argparse.ArgumentParser, defaults: bool) -> None:
    d = (lambda v: v) if defaults else (lambda v: None)
    p.add_argument("--face-pack", default=None,
                   help="face model for identity similarity (id_sim): buffalo_l (default: ArcFace on photos, "
                        "recorded as unavailable when not installed; the toy demo pack on demo-world images), "
                        "antelopev2, a pack folder, dlib, or none. A named model is final and scores every image")
    p.add_argument("--no-dlib", dest="dlib", action="store_false", default=None,
                   help="no second-opinion identity column from dlib (id_sim_dlib, on by default)")
    p.add_argument("--second-face-pack", default=None,
                   help="an independent second face model (e.g. antelopev2) for a second identity column")
    p.add_argument("--face-root", default=None, help="insightface root (packs in <root>/models/<pack>/)")
    p.add_argument("--det-size", type=int, default=d(640), help="face detector input size (multiple of 32)")
    p.add_argument("--det-thresh", type=float, default=d(0.5), help="face detection threshold")
    p.add_argument("--clip", default=None,
                   help="CLIP for CLIP-T/-I/-dir: a clip-anytorch variant (default ViT-L/14; when it is neither on "
                        "disk nor downloadable, the toy demo CLIP, labelled as such), a weights file, or none. A "
                        "named CLIP is final")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__.split("\n\nExit")[0],
                                     epilog="Options of a run: python -m benchmark run --help",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run (or resume) a benchmark")
    run.add_argument("--methods", required=True, help="comma-separated registered method names")
    run.add_argument("--images", help="a folder of portraits, one image, a Hub dataset owner/name[:split], or "
                                      "demo-world:N[:SIZE] (N test portraits of the synthetic demo world, SIZE px, "
                                      "default 64; fully offline with the demo models)")
    run.add_argument("--instructions", default=None,
                     help="JSONL (id, instruction, target_caption[, category, source_caption]), .txt, or demo-world "
                          "(the demo world's edits); default: benchmark/instructions.jsonl, or demo-world with "
                          "--images demo-world:...")
    run.add_argument("--out", required=True, help="results folder (created; an existing one is resumed)")
    run.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1")
    run.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if available)")
    run.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                     help="model dtype (auto: float16 on CUDA, float32 on the CPU)")
    run.add_argument("--resolution", action="append", metavar="[METHOD=]N",
                     help="long side of the images edited and scored (default 512); METHOD=N or METHOD=native sets "
                          "one editor's working size (e.g. instantid=1024), its output is scored at the common size")
    run.add_argument("--limit", type=int, default=None, help="at most N samples per method (quick runs)")
    run.add_argument("--warmup", type=int, default=1, help="untimed edits per method before timing")
    run.add_argument("--model-override", action="append", metavar="NAME=PATH",
                     help="weights for a method (or a model key such as ipnet, which ipnet-2step shares); repeatable")
    run.add_argument("--steps", action="append", metavar="[METHOD=]N", help="inference steps, all or per method")
    run.add_argument("--guidance", action="append", metavar="[METHOD=]X", help="text guidance scale")
    run.add_argument("--image-guidance", action="append", metavar="[METHOD=]X", help="image guidance scale")
    run.add_argument("--source-caption", default=None,
                     help="caption of the unedited portraits for CLIP-dir (default 'a photo of a person')")
    run.add_argument("--score-later", action="store_true",
                     help="no scoring inside the timed loop: the run only edits and saves, then scores at the end")
    run.add_argument("--no-images", action="store_true", help="do not save edited images (no grid, no later scoring)")
    run.add_argument("--latency-only", action="store_true",
                     help="time each method on synthetic portraits only (latency.md); no scoring")
    run.add_argument("--random-weights", action="store_true",
                     help="build each method's real architecture with random weights (no download); outputs are noise")
    run.add_argument("--random-arch", default=None,
                     help="architecture for --random-weights (default sd15-ip2p; 'tiny' for tests)")
    run.add_argument("--no-demo", action="store_true",
                     help="a method whose real model is missing is reported unavailable instead of running on its "
                          "toy demo model (instantportrait/demo/models/)")
    run.add_argument("--demo-root", default=None,
                     help="folder of the toy demo models, one subfolder per model key (default "
                          "instantportrait/demo/models)")
    run.add_argument("--offload", default="none", metavar="none|model|sequential",
                     help="keep weights in CPU memory, each network (model) or layer (sequential) moved to the GPU as "
                          "it runs (less GPU memory, slower; a no-op on the CPU). --latency-only takes a list, e.g. "
                          "none,model: each method timed under each mode in one run")
    run.add_argument("--no-reference", action="store_true",
                     help="leave out the 'no-edit' reference row (the source scored as its own output: the ceiling "
                          "of identity, the floor of CLIP-T), which every run's tables have by default")
    run.add_argument("--batch-size", type=int, default=1, help="latency-only: images per edit call")
    run.add_argument("--repeats", type=int, default=10, help="latency-only: timed edit calls per method")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    add_scoring_args(run, defaults=True)

    score = sub.add_parser("score", help="score rows without scores (after --score-later) and rewrite the tables")
    score.add_argument("results", help="results folder")
    score.add_argument("--rescore", action="store_true", help="score every row again (e.g. with another model)")
    score.add_argument("--device", default=None)
    score.add_argument("--quiet", action="store_true")
    add_scoring_args(score, defaults=False)

    report = sub.add_parser("report", help="rewrite tables, plots and grid from the rows")
    report.add_argument("results", help="results folder")

    sub.add_parser("list", help="registered methods and the default instruction set")
    return parser


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def config_from_args(args: argparse.Namespace) -> Any:
    from benchmark.config import BenchmarkConfig
    from instantportrait.eval.scorer import DEFAULT_CLIP, DEFAULT_FACE_PACK, DEFAULT_SOURCE_CAPTION, ScoringConfig

    device = args.device or default_device()
    resolution, method_resolution = parse_resolution(args.resolution)
    if args.score_later and args.no_images:
        raise ValueError("--score-later needs the edited images: drop --no-images")
    named = {"face_pack": args.face_pack, "clip": args.clip}  # None: not named, the default may fall back to demo
    scoring = ScoringConfig(face_pack=DEFAULT_FACE_PACK if args.face_pack is None else _none_or(args.face_pack),
                            second_face_pack=_none_or(args.second_face_pack), face_root=args.face_root,
                            clip=DEFAULT_CLIP if args.clip is None else _none_or(args.clip), device=device,
                            det_size=args.det_size, det_thresh=args.det_thresh, dlib=args.dlib is not False,
                            demo_fallback=tuple(k for k, v in named.items() if v is None))
    return BenchmarkConfig(
        methods=[m.strip() for m in args.methods.split(",") if m.strip()], out=Path(args.out), images=args.images,
        instructions=args.instructions, seeds=parse_seeds(args.seeds), device=device, dtype=args.dtype,
        resolution=resolution, method_resolution=method_resolution, limit=args.limit, warmup=args.warmup,
        model_overrides=parse_overrides(args.model_override), steps=parse_per_method(args.steps, int, "--steps"),
        guidance=parse_per_method(args.guidance, float, "--guidance"),
        image_guidance=parse_per_method(args.image_guidance, float, "--image-guidance"), scoring=scoring,
        source_caption=args.source_caption or DEFAULT_SOURCE_CAPTION, score_later=args.score_later,
        random_weights=args.random_weights, random_arch=args.random_arch, offload=args.offload, demo=not args.no_demo,
        demo_root=Path(args.demo_root) if args.demo_root else None, save_images=not args.no_images,
        progress=not args.quiet, latency_only=args.latency_only, batch_size=args.batch_size, repeats=args.repeats,
        reference=not args.no_reference,
    )


def check_names(cfg: Any) -> None:
    """Unknown methods, and overrides / per-method settings naming nothing in the run: one clear error each."""
    from benchmark.editors import check_methods
    from instantportrait.methods import editor_class

    check_methods(cfg.methods)
    model_keys = {editor_class(m).model_key for m in cfg.methods} - {None}
    bad = [k for k in cfg.model_overrides if k not in cfg.methods and k not in model_keys]
    if bad:
        raise ValueError(f"--model-override names {', '.join(bad)}, which is neither a method in --methods "
                         f"{','.join(cfg.methods)} nor one of their model keys ({', '.join(sorted(model_keys))})")
    for flag, d in (("--steps", cfg.steps), ("--guidance", cfg.guidance), ("--image-guidance", cfg.image_guidance),
                    ("--resolution", cfg.method_resolution)):
        bad = [k for k in d if k != "*" and k not in cfg.methods]
        if bad:
            raise ValueError(f"{flag} names {', '.join(bad)}, which is not in --methods {','.join(cfg.methods)}")


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.loop import run_benchmark
    from instantportrait.errors import ModelNotAvailableError

    try:
        cfg = config_from_args(args)
        check_names(cfg)
        out = run_benchmark(cfg)
    except ModelNotAvailableError as exc:
        return _fail(f"{exc}\n(scoring models are needed before any edit; pass --face-pack none / --clip none to "
                     "skip a metric, or --score-later to score afterwards)", EXIT_MODEL)
    except ValueError as exc:
        return _fail(str(exc), EXIT_INPUT)
    if os.environ.get("RANK", "0") == "0":  # under accelerate/torchrun only rank 0 writes the tables
        name = "latency.md" if cfg.latency_only else "summary.md"
        print(f"results in {out}/ (see {out / name})")
        if (out / name).exists():
            print((out / name).read_text())
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    from benchmark.loop import score_pending
    from benchmark.report import write_report
    from benchmark.results import read_run
    from instantportrait.errors import ModelNotAvailableError
    from instantportrait.eval.scorer import ScoringConfig

    out = Path(args.results)
    run = read_run(out)
    if run is None:
        return _fail(f"{out} holds no run.json: not a benchmark results folder", EXIT_INPUT)
    recorded = ((run.get("scoring") or {}).get("config") or (run.get("config") or {}).get("scoring") or {})
    cfg = ScoringConfig(**recorded) if recorded else ScoringConfig()
    for key in ("face_pack", "second_face_pack", "face_root", "clip", "det_size", "det_thresh"):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg, key, _none_or(value) if isinstance(value, str) and key != "face_root" else value)
    cfg.demo_fallback = tuple(k for k in cfg.demo_fallback if getattr(args, k) is None)  # a named one is final
    if args.dlib is False:
        cfg.dlib = False
    cfg.device = args.device or default_device()
    try:
        n = score_pending(out, cfg, rescore=args.rescore, progress=not args.quiet)
        write_report(out)
    except ModelNotAvailableError as exc:
        return _fail(str(exc), EXIT_MODEL)
    except ValueError as exc:
        return _fail(str(exc), EXIT_INPUT)
    print(f"scored {n} rows; tables in {out}/summary.md")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from benchmark.report import write_report
    from benchmark.results import read_run

    out = Path(args.results)
    if read_run(out) is None:
        return _fail(f"{out} holds no run.json: not a benchmark results folder", EXIT_INPUT)
    paths = write_report(out)
    print("\n".join(str(p) for p in paths.values()))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from benchmark.data import DEFAULT_INSTRUCTIONS, load_instructions
    from instantportrait.methods import Editor, editor_class, list_methods

    print("methods:")
    for name in list_methods():
        cls = editor_class(name)
        builder = "random-weights builder" if cls._build_random is not Editor._build_random else "no builder"
        print(f"  {name:16s} {cls.label} ({builder})")
    items = load_instructions(DEFAULT_INSTRUCTIONS)
    print(f"default instructions ({DEFAULT_INSTRUCTIONS}):")
    for ins in items:
        print(f"  {ins.id:24s} [{ins.category}] {ins.instruction}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return {"run": cmd_run, "score": cmd_score, "report": cmd_report, "list": cmd_list}[args.command](args)
