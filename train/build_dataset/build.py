"""Generating a shard's rows: sources (a folder, or a Hub dataset exported to one), the generator and
filters, and the resumable loop that appends finished batches to the shard's part file."""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instantportrait.imageio import IMAGE_SUFFIXES
from train.build_dataset.export import (
    PartFile,
    atomic_write_bytes,
    fsync_dir,
    read_part_rows,
    save_png_atomic,
)
from train.build_dataset.plan import (
    COORD_DECIMALS,
    EVALUATION_FACE,
    GENERATION_FAILED,
    HUB_SOURCES_DIR,
    LOW_CLIP_T,
    LOW_IDENTITY,
    MAX_CONSECUTIVE_GENERATION_FAILURES,
    NO_FACE_IN_SOURCE,
    NO_FACE_IN_TARGET,
    PARTS_DIR,
    SCORE_DECIMALS,
    SRC_DIR,
    TGT_DIR,
    UNREADABLE_SOURCE,
    BuildConfig,
    BuildError,
    Components,
    Locations,
    PlannedRow,
    RunOptions,
    find_sources,
    part_path,
    plan_rows,
    shard_rows,
)

if TYPE_CHECKING:
    import PIL.Image

    from instantportrait.face.encoder import FaceResult

logger = logging.getLogger(__name__)  # a child of "train.build_dataset"


# ------------------------------------------------------------------------------------------------ building
@dataclass
class _Source:
    png: str | None  # relative path of the stored copy
    image: PIL.Image.Image | None
    face: FaceResult | None
    error: str | None = None


class RowBuilder:
    """Turns planned rows into manifest rows (source copy, generation, target image, scores)."""

    def __init__(self, config: BuildConfig, components: Components, out: Path, source_root: Path) -> None:
        self.config = config
        self.c = components
        self.out = out
        self.source_root = source_root
        self._sources: OrderedDict[str, _Source] = OrderedDict()  # small LRU: a shard's rows come source by source
        self._consecutive_failures = 0

    def source(self, rel: str, key: str) -> _Source:
        if rel in self._sources:
            self._sources.move_to_end(rel)
            return self._sources[rel]
        info = self._load_source(rel, key)
        self._sources[rel] = info
        if len(self._sources) > 16:
            self._sources.popitem(last=False)
        return info

    def _load_source(self, rel: str, key: str) -> _Source:
        import PIL.Image

        from instantportrait.imageio import load_image
        from instantportrait.methods.base import working_size

        path = self.source_root / rel
        try:
            image = load_image(path).image  # RGB, upright
        except Exception as exc:  # corrupt, truncated, not an image, unreadable: recorded, never fatal
            logger.warning("skipping unreadable source %s: %s", rel, exc)
            return _Source(None, None, None, f"{type(exc).__name__}: {exc}")
        size = working_size(image.size, self.config.resolution)  # long side = resolution, multiples of 8
        if image.size != size:
            image = image.resize(size, PIL.Image.Resampling.LANCZOS)
        png = f"{SRC_DIR}/{key}.png"
        if not (self.out / png).is_file():
            save_png_atomic(image, self.out / png)
        face = None
        if self.c.face is not None:
            faces = self.c.face.detect(image)
            face = faces[0] if faces else None
        return _Source(png, image, face)

    def _row(self, pr: PlannedRow, src: _Source, **values: Any) -> dict[str, Any]:
        face = src.face
        row = {
            "id": pr.id, "source": src.png, "target": None, "instruction": pr.instruction.instruction,
            "target_caption": pr.instruction.target_caption, "category": pr.instruction.category,
            "identity_sim": None, "clip_t": None, "passed": False, "reject_reason": None,
            "source_bbox": None if face is None else [round(float(v), COORD_DECIMALS) for v in face.bbox],
            "source_kps": None if face is None else [[round(float(x), COORD_DECIMALS), round(float(y), COORD_DECIMALS)]
                                                     for x, y in face.kps],
            "width": None if src.image is None else src.image.width,
            "height": None if src.image is None else src.image.height,
        }
        row.update(values)
        return row

    def _generate(self, rows: list[PlannedRow], images: list[PIL.Image.Image]) -> list[PIL.Image.Image | None]:
        """Targets for ``rows`` in one batched call; on an error, row by row (a failing row gives ``None``)."""
        texts = [r.instruction.instruction for r in rows]
        seeds = [r.seed for r in rows]
        try:
            out = self.c.editor.edit(images, texts, seed=seeds, settings=self.c.settings)
            self._consecutive_failures = 0
            return list(out)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise
            if len(rows) == 1:
                self._consecutive_failures += 1
                logger.warning("generation failed for %s: %s: %s", rows[0].id, type(exc).__name__, exc)
                if self._consecutive_failures >= MAX_CONSECUTIVE_GENERATION_FAILURES:
                    raise BuildError(f"the generator failed on {self._consecutive_failures} rows in a row (last: "
                                     f"{type(exc).__name__}: {exc}); fix it and rerun the same command to "
                                     "resume") from exc
                return [None]
            logger.warning("batch generation failed (%s: %s); retrying row by row", type(exc).__name__, exc)
        return [self._generate([r], [img])[0] for r, img in zip(rows, images)]

    def build(self, chunk: Sequence[PlannedRow]) -> list[dict[str, Any]]:
        """Manifest rows for ``chunk`` (in order): one generation batch, then per-row scoring."""
        cfg, face, clip = self.config, self.c.face, self.c.clip
        rows: list[dict[str, Any] | None] = [None] * len(chunk)
        todo: list[int] = []
        for j, pr in enumerate(chunk):
            src = self.source(pr.source_file, pr.source_key)
            if src.error is not None:
                rows[j] = self._row(pr, src, reject_reason=UNREADABLE_SOURCE)
            elif face is not None and src.face is None:
                rows[j] = self._row(pr, src, reject_reason=NO_FACE_IN_SOURCE)
            else:
                todo.append(j)
        if todo:
            sources = [self.source(chunk[j].source_file, chunk[j].source_key) for j in todo]
            targets = self._generate([chunk[j] for j in todo], [s.image for s in sources])  # type: ignore[misc]
            for j, src, target in zip(todo, sources, targets):
                pr = chunk[j]
                if target is None:
                    rows[j] = self._row(pr, src, reject_reason=GENERATION_FAILED)
                    continue
                tgt = f"{TGT_DIR}/{pr.id}.png"
                save_png_atomic(target, self.out / tgt)
                identity = clip_t = None
                reason = None
                if face is not None:
                    found = face.detect(target)
                    if found:
                        identity = round(face.cosine(src.face, found[0]), SCORE_DECIMALS)  # type: ignore[arg-type]
                if clip is not None:  # one image per call: scores do not depend on batch composition
                    clip_t = round(float(clip.clip_t([target], [pr.instruction.target_caption])[0]), SCORE_DECIMALS)
                if face is not None and identity is None:
                    reason = NO_FACE_IN_TARGET
                elif face is not None and identity < cfg.min_identity:  # type: ignore[operator]
                    reason = LOW_IDENTITY
                elif clip is not None and clip_t < cfg.min_clip_t:  # type: ignore[operator]
                    reason = LOW_CLIP_T
                rows[j] = self._row(pr, src, target=tgt, identity_sim=identity, clip_t=clip_t,
                                    passed=reason is None, reject_reason=reason)
            fsync_dir(self.out / TGT_DIR)
        fsync_dir(self.out / SRC_DIR)
        return rows  # type: ignore[return-value]


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


def run_shard(config: BuildConfig, components: Components, opts: RunOptions, source_root: Path,
              plan: Sequence[PlannedRow] | None = None) -> tuple[int, int]:
    """Build this shard's missing rows; returns (rows written now, rows of this shard)."""
    plan = plan if plan is not None else plan_rows(config)
    mine = shard_rows(plan, opts.num_shards, opts.shard_index)
    part = PartFile(part_path(opts.out, opts.num_shards, opts.shard_index))
    own = part.open()
    try:
        done = {r["id"] for r in own}
        for path in sorted((opts.out / PARTS_DIR).glob("part-*.jsonl")):  # rows another sharding already built
            if path != part.path:
                done.update(r["id"] for r in read_part_rows(path))
        builder = RowBuilder(config, components, opts.out, source_root)
        written = 0
        from tqdm import tqdm

        already = sum(r.id in done for r in mine)
        bar = tqdm(total=len(mine), initial=already, unit="row", disable=not opts.progress, dynamic_ncols=True,
                   desc=f"shard {opts.shard_index}/{opts.num_shards}" if opts.num_shards > 1 else "pairs")
        with bar:
            # Fixed batch boundaries over the shard's rows: a redone batch has the same companions as before.
            for start in range(0, len(mine), opts.batch_size):
                chunk = mine[start:start + opts.batch_size]
                if all(r.id in done for r in chunk):
                    continue
                new = [row for row in builder.build(chunk) if row["id"] not in done]
                part.append(new)
                done.update(row["id"] for row in new)
                written += len(new)
                bar.update(len(new))
    finally:
        part.close()
    return written, len(mine)


# ------------------------------------------------------------------------------------------------ sources
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def export_hub_dataset(dataset_id: str, folder: Path, *, split: str = "train", image_column: str = "image",
                       max_sources: int | None = None) -> Path:
    """Save a Hub dataset's images as ``folder/000000.png``, ... (once; resumable) and return ``folder``.

    An image that cannot be decoded becomes an empty ``.png`` file, so that its rows are recorded as
    ``unreadable_source`` like any corrupt file.
    """
    try:
        import datasets
    except ImportError:
        raise BuildError(
            f"--sources {dataset_id!r} is not an existing folder. If it is a Hugging Face dataset id, reading it needs "
            f"the `datasets` package (pip install datasets), or download the dataset's images into a folder (e.g. "
            f"`huggingface-cli download --repo-type dataset {dataset_id} --local-dir DIR`) and pass --sources DIR"
        ) from None
    import PIL.Image

    marker = folder / ".complete.json"
    if marker.is_file():
        return folder
    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # offline, no such dataset, no such split, ...
        raise BuildError(f"cannot load the dataset {dataset_id!r} (split {split!r}): {type(exc).__name__}: {exc}. "
                         "If you meant a local folder: it does not exist") from exc
    if image_column not in ds.column_names:
        raise BuildError(f"dataset {dataset_id!r} (split {split!r}) has no column {image_column!r}; its columns: "
                         f"{', '.join(ds.column_names)} (choose one with --image-column)")
    n = len(ds) if max_sources is None else min(len(ds), max_sources)
    for i in range(n):
        dst = folder / f"{i:06d}.png"
        if dst.is_file():
            continue
        try:
            image = ds[i][image_column]
            if isinstance(image, dict):  # undecoded {"bytes", "path"}
                import io

                image = PIL.Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") else PIL.Image.open(
                    image["path"])
            if not isinstance(image, PIL.Image.Image):
                raise TypeError(f"column {image_column!r} holds {type(image).__name__}, not an image")
            save_png_atomic(image.convert("RGB"), dst)
        except Exception as exc:
            logger.warning("dataset row %d: cannot decode its image (%s); recorded as unreadable", i, exc)
            atomic_write_bytes(dst, b"")
    atomic_write_bytes(marker, json.dumps({"dataset": dataset_id, "split": split, "rows": n}).encode("utf-8"))
    return folder


def resolve_sources(sources: str, out: Path, *, split: str, image_column: str,
                    max_sources: int | None) -> tuple[Path, list[str]]:
    """The source folder and its sorted image files (a Hub id is exported under ``out`` first)."""
    path = Path(sources).expanduser()
    if path.is_dir():
        root = path.resolve()
    elif path.exists():
        raise BuildError(f"--sources {sources} is a file; pass the folder that holds the portraits")
    elif _HUB_ID.match(sources):
        root = export_hub_dataset(sources, out / HUB_SOURCES_DIR, split=split, image_column=image_column,
                                  max_sources=max_sources).resolve()
    else:
        raise BuildError(f"--sources {sources}: no such folder (pass a folder of portraits or a Hub dataset id)")
    out_dir = out.expanduser().resolve()
    files = find_sources(root, exclude=None if root.is_relative_to(out_dir) else out_dir)  # never our own images
    if not files:
        raise BuildError(f"no images found in {root} (looked for {', '.join(IMAGE_SUFFIXES)}, in subfolders too)")
    if max_sources is not None:
        files = files[:max_sources]
    return root, files


def _filter_record(face: Any) -> dict[str, Any]:
    """The identity filter's model for ``dataset.json``, with how it relates to the evaluation's model."""
    same = face.backend == EVALUATION_FACE
    return {**face.describe(), "evaluation_backend": EVALUATION_FACE, "same_as_evaluation": same,
            "choice": ("the benchmark's own evaluation model: pairs are selected by the judge that scores the result"
                       if same else "a different model from the benchmark's evaluation model (independent filter)")}


def load_components(config: BuildConfig, locations: Locations, device: str) -> Components:
    """Build (and load) the generator and the enabled scorers; ModelNotAvailableError fast when one is missing."""
    import torch

    from instantportrait.methods import get_editor
    from instantportrait.methods.base import EditSettings

    dtype = getattr(torch, config.dtype)
    try:
        editor = get_editor(config.generator, device=device, dtype=dtype, model=locations.generator_model,
                            resolution=config.resolution)
    except KeyError as exc:
        raise BuildError(f"--generator: {exc.args[0]}") from None
    editor.check_available()
    settings = EditSettings(num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                            image_guidance_scale=config.image_guidance_scale)
    face = clip = None
    if config.face_filter:
        from instantportrait.eval.scorer import face_encoder

        pack: str | Path = Path(locations.face_pack) if Path(locations.face_pack).expanduser().is_dir() \
            else locations.face_pack
        face = face_encoder(pack, device=device, det_size=config.det_size, det_thresh=config.det_thresh).load()
    if config.clip_filter:
        from instantportrait.eval.clip_score import ClipScorer

        clip_dtype = dtype if torch.device(device).type == "cuda" else torch.float32
        if locations.clip is not None and Path(locations.clip).expanduser().is_file():
            clip = ClipScorer(weights=locations.clip, device=device, dtype=clip_dtype)
        else:
            clip = ClipScorer(locations.clip, device=device, dtype=clip_dtype)
        clip.load()
    editor.load()
    generator = {**editor.describe(), "nfe": editor.nfe(settings),  # per target, with these settings
                 "settings": {"num_inference_steps": config.num_inference_steps,
                              "guidance_scale": config.guidance_scale,
                              "image_guidance_scale": config.image_guidance_scale}}
    return Components(editor, settings, face, clip, {
        "generator": generator,
        "face_model": _filter_record(face) if face is not None else None,
        "clip": clip.describe() if clip is not None else None,
    })


