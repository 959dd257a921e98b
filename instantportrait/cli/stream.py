"""Video streaming: ``python -m instantportrait stream INPUT "instruction" -o OUT.mp4``.

INPUT is a video file, a folder of frames, or a webcam index (``0``). Every frame of the stream is edited with the
same instruction and the same seed: the instruction's text embedding is computed once (the pipeline's prompt cache)
and a fixed noise per frame keeps the edit temporally stable. Frames are edited in batches (``--batch``); the
output is a video file (``.mp4``/``.avi``) or a folder of PNGs. Frames per second (steady state, the first batch
excluded as warm-up) are printed at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import PIL.Image

from instantportrait.imageio import IMAGE_SUFFIXES


def read_frames(source: str, max_frames: int | None = None) -> Iterator[PIL.Image.Image]:
    """RGB frames from a video file, a folder of images (sorted by name) or a webcam index."""
    path = Path(source)
    count = 0
    if path.is_dir():
        for f in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            if max_frames is not None and count >= max_frames:
                return
            with PIL.Image.open(f) as im:
                yield im.convert("RGB")
            count += 1
        return
    import cv2

    if source.isdigit():
        cap = cv2.VideoCapture(int(source))
    elif path.exists():
        cap = cv2.VideoCapture(str(path))
    else:
        raise FileNotFoundError(f"{source}: no such video, folder or webcam index")
    if not cap.isOpened():
        raise ValueError(f"{source}: cannot be opened as a video")
    try:
        while max_frames is None or count < max_frames:
            ok, frame = cap.read()
            if not ok:
                return
            yield PIL.Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            count += 1
    finally:
        cap.release()


class FrameWriter:
    """Writes RGB frames to a video file (OpenCV) or numbered PNGs in a folder."""

    def __init__(self, out: Path, fps: float = 25.0):
        self.out, self.fps, self.count, self._video = out, fps, 0, None
        if out.suffix.lower() not in (".mp4", ".avi"):
            out.mkdir(parents=True, exist_ok=True)

    def write(self, frame: PIL.Image.Image) -> None:
        if self.out.suffix.lower() in (".mp4", ".avi"):
            import cv2

            if self._video is None:
                self.out.parent.mkdir(parents=True, exist_ok=True)
                fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.out.suffix.lower() == ".mp4" else "MJPG"))
                self._video = cv2.VideoWriter(str(self.out), fourcc, self.fps, frame.size)
            self._video.write(cv2.cvtColor(np.asarray(frame), cv2.COLOR_RGB2BGR))
        else:
            frame.save(self.out / f"frame_{self.count:06d}.png")
        self.count += 1

    def close(self) -> None:
        if self._video is not None:
            self._video.release()


def cmd_stream(args: argparse.Namespace) -> int:
    import torch

    from instantportrait.errors import ModelNotAvailableError
    from instantportrait.methods.registry import ipnet_method
    from instantportrait.methods.sources import cli_policy, demo_notice, open_editor

    if not args.instruction.strip():
        print("error: the instruction is empty", file=sys.stderr)
        return 2
    method = ipnet_method(args.steps)
    try:
        editor, source = open_editor(method, cli_policy(method, model=args.model, no_demo=args.no_demo,
                                                        device=args.device, dtype=getattr(torch, args.dtype),
                                                        resolution=args.resolution))
        if source.kind == "demo":
            print(demo_notice(source), file=sys.stderr)
        pipe = editor.pipeline
        if args.tiny_decoder:
            pipe.use_tiny_decoder(args.tiny_decoder)
        pipe.optimize(channels_last=args.channels_last, fuse_qkv=args.fuse_qkv, compile=args.compile)
    except ModelNotAvailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    writer = FrameWriter(Path(args.output), fps=args.fps)
    batch: list[PIL.Image.Image] = []
    timed_frames, timed_s, first = 0, 0.0, True

    def flush() -> None:
        nonlocal timed_frames, timed_s, first
        if not batch:
            return
        if editor.device.type == "cuda":
            torch.cuda.synchronize(editor.device)
        t0 = time.perf_counter()
        edited = editor.edit(batch, [args.instruction] * len(batch), seed=args.seed)
        if editor.device.type == "cuda":
            torch.cuda.synchronize(editor.device)
        dt = time.perf_counter() - t0
        if not first:  # the first batch includes warm-up (and compilation)
            timed_frames += len(batch)
            timed_s += dt
        first = False
        for frame in edited:
            writer.write(frame)
        batch.clear()

    try:
        for frame in read_frames(args.input, args.max_frames):
            batch.append(frame)
            if len(batch) == args.batch:
                flush()
        flush()
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        writer.close()
    fps = timed_frames / timed_s if timed_s > 0 else float("nan")
    print(f"{writer.count} frames -> {args.output}; steady state {fps:.1f} frames/s on {editor.device} "
          f"(batch {args.batch}, first batch excluded)", file=sys.stderr)
    return 0


def add_stream_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream", help="edit every frame of a video / webcam / frame folder with IPNet")
    p.add_argument("input", help="video file, folder of frames, or webcam index (0)")
    p.add_argument("instruction")
    p.add_argument("-o", "--output", required=True, help="output .mp4/.avi or a folder for PNG frames")
    p.add_argument("--model", help="IPNet model id, id@revision or folder")
    p.add_argument("--steps", type=int, choices=(1, 2), default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--resolution", type=int, default=None, help="default 512, or a demo model's own size (64)")
    p.add_argument("--no-demo", action="store_true", help="fail instead of using the toy demo model")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of a written video")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile UNet and decoder (CUDA graphs on GPU; the first batch compiles, and a last "
                        "partial batch compiles once more)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--fuse-qkv", action="store_true", help="fuse attention q/k/v projections")
    p.add_argument("--tiny-decoder", default=None, metavar="FOLDER",
                   help="decode with a distilled tiny decoder (train/train_tiny_decoder.py)")
    p.add_argument("--max-frames", type=int, default=None)
    p.set_defaults(func=cmd_stream)
