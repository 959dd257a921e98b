"""Command line: ``python -m instantportrait edit IMAGE [IMAGE ...] "instruction" -o OUT``.

Exit codes: 0 ok, 2 bad usage or bad input file, 3 model not available, 4 no face found (with ``--require-face``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from instantportrait.cli.identity import add_identity_parser
from instantportrait.cli.models import add_download_parser, add_models_parser
from instantportrait.config import DTYPE_NAMES, torch_dtype
from instantportrait.errors import EXIT_INPUT, EXIT_MODEL, EXIT_NO_FACE, EXIT_OK  # noqa: F401 (re-exported)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def output_paths(inputs: list[Path], out: Path | None, method: str) -> list[Path]:
    """One output per input: ``-o file.png`` for one image, ``-o folder/`` (or none) for several."""
    if out is not None and len(inputs) == 1 and out.suffix:
        return [out]
    folder = out if out is not None else Path(".")
    if out is not None and out.suffix and len(inputs) > 1:
        raise ValueError(f"-o {out} looks like a file but {len(inputs)} images were given: pass a folder")
    return [folder / f"{p.stem}_{method}.png" for p in inputs]


def cmd_edit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from instantportrait.errors import InvalidImageError, ModelNotAvailableError, NoFaceError
    from instantportrait.imageio import load_image
    from instantportrait.methods import EditSettings, editor_class
    from instantportrait.methods.sources import cli_policy, demo_notice, open_editor

    if not args.instruction.strip():
        return _fail("the instruction is empty: describe the edit, e.g. 'wearing hipster glasses'", EXIT_INPUT)
    inputs = [Path(p) for p in args.images]
    try:
        outs = output_paths(inputs, Path(args.output) if args.output else None, args.method)
        loaded = [load_image(p, max_side=args.max_side) for p in inputs]  # validate every file before any model
    except (InvalidImageError, ValueError) as exc:
        return _fail(str(exc), EXIT_INPUT)
    for p, li in zip(inputs, loaded):
        for note in li.notes:
            print(f"{p}: {note}", file=sys.stderr)

    if args.require_face:
        from instantportrait.face.backends import open_face_encoder

        # A named pack wins; otherwise --identity-backend (auto: buffalo_l if installed, else dlib; never the toy).
        backend = "insightface" if args.face_pack and args.identity_backend == "auto" else args.identity_backend
        try:
            encoder = open_face_encoder(backend, pack=args.face_pack or "buffalo_l", device=args.device)
            if not args.quiet:
                print(f"--require-face: faces checked with {encoder.backend}", file=sys.stderr)
            for p, li in zip(inputs, loaded):
                try:
                    encoder.encode(li.image)
                except NoFaceError as exc:
                    return _fail(f"{p}: {exc}", EXIT_NO_FACE)
        except ModelNotAvailableError as exc:
            return _fail(str(exc), EXIT_MODEL)

    if args.quiet or not sys.stderr.isatty():
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    dtype = torch_dtype(args.dtype)
    try:
        editor_class(args.method)
    except KeyError as exc:
        return _fail(str(exc.args[0]), EXIT_INPUT)
    try:
        editor, source = open_editor(args.method, cli_policy(args.method, model=args.model, no_demo=args.no_demo,
                                                             device=args.device, dtype=dtype,
                                                             resolution=args.resolution))
        if source.kind == "demo":
            print(demo_notice(source), file=sys.stderr)
        t0 = time.perf_counter()
        editor.load()
        load_s = time.perf_counter() - t0
    except ModelNotAvailableError as exc:
        return _fail(str(exc), EXIT_MODEL)
    settings = EditSettings(num_inference_steps=args.steps)
    bar = tqdm(total=len(inputs), unit="img", disable=len(inputs) < 2 or args.quiet)
    t0 = time.perf_counter()
    for li, out in zip(loaded, outs):
        image = editor.edit([li.image], [args.instruction], seed=args.seed, settings=settings)[0]
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out)
        bar.update(1)
        if not args.quiet:
            tqdm.write(str(out))
    bar.close()
    if not args.quiet:
        per = (time.perf_counter() - t0) / len(inputs)
        print(f"{editor.label}: {len(inputs)} image(s), {per * 1000:.0f} ms/image, model load {load_s:.1f} s, "
              f"{editor.nfe(settings)} network evaluations per edit", file=sys.stderr)
    return EXIT_OK


def add_edit_parser(sub: argparse._SubParsersAction) -> None:
    from instantportrait.face.backends import BACKENDS

    p = sub.add_parser("edit", help="edit one or more portraits with an instruction",
                       description="python -m instantportrait edit face.jpg 'wearing a red hat' -o out.png")
    p.add_argument("images", nargs="+", help="input image file(s)")
    p.add_argument("instruction", help="the editing instruction")
    p.add_argument("-o", "--output", help="output file (one image) or folder (several); default: ./<name>_<method>.png")
    p.add_argument("--method", default="ipnet",
                   help="editor: ipnet, ipnet-2step, idenet, instructpix2pix, magicbrush, ... (default: ipnet)")
    p.add_argument("--model", help="model id, id@revision, or local folder (overrides config and env)")
    p.add_argument("--steps", type=int, default=None,
                   help="IPNet: 1 or 2 (default: the method's own, 1 for ipnet); multi-step methods: sampling steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPE_NAMES))
    p.add_argument("--resolution", type=int, default=None,
                   help="long side the model works at (output keeps input size); default 512, or a demo model's own "
                        "training size (64)")
    p.add_argument("--no-demo", action="store_true",
                   help="fail instead of falling back to the toy demo model when the real one is missing")
    p.add_argument("--max-side", type=int, default=4096, help="inputs larger than this are downscaled first")
    p.add_argument("--require-face", action="store_true", help="refuse images where no face is detected (exit 4)")
    p.add_argument("--face-pack", default=None,
                   help="insightface pack name or folder for --require-face (default: --identity-backend's choice)")
    p.add_argument("--identity-backend", default="auto", choices=BACKENDS,
                   help="face model for --require-face: auto (buffalo_l if installed, else dlib; default), "
                        "insightface, dlib, or toy (the demo pack, synthetic portraits only)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_edit)


def add_stream_parser(sub: argparse._SubParsersAction) -> None:
    from instantportrait.cli.stream import add_stream_parser as add

    add(sub)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_edit_parser, add_stream_parser,
                                                                  add_models_parser, add_download_parser,
                                                                  add_identity_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m instantportrait",
                                     description="InstantPortrait: one-step instruction-based portrait editing")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "method", None) and args.method.startswith("ipnet") and args.steps is not None:
        from instantportrait.methods.registry import ipnet_method

        try:
            args.method = ipnet_method(args.steps)
        except ValueError as exc:
            return _fail(str(exc), EXIT_INPUT)
        args.steps = None
    return args.func(args)
