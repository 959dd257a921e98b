"""The reader of the paired-edit dataset (format ``instantportrait-pairs/1``, written by ``train/build_dataset.py``).

    ds = PairedEditDataset("data/pairs", resolution=512)
    item = ds[0]  # {"id", "index", "source", "target", "instruction", "target_caption", "source_kps", "has_face",
                  #  "source_bbox"}

A dataset is a folder with ``dataset.json`` (format tag and provenance), ``manifest.jsonl`` (one row per
(source, instruction) pair) and ``images/``. Only rows with ``"passed": true`` are read (the builder's identity and
CLIP filters). Each item is the pair at a square training resolution: the source is scaled so its short side is
``resolution`` and centre-cropped, the target gets exactly the same geometry (after being brought to the source's
size if the generator returned another size), and the source's landmarks and box are mapped through the same
transform, so ``losses.arcface_align`` can crop the face on a prediction of that size.

Augmentation (optional, deterministic): a horizontal flip decided by ``(seed, key)``, where ``key`` is the second
element of an index tuple ``ds[(row, key)]`` (the trainers pass the position of the sample in their data stream, so
a resumed run flips exactly what an uninterrupted run flips). A plain integer index ``ds[row]`` is never augmented
(validation and evaluation see the canonical pair).

The tests' ``fixtures.pairs.write_synthetic_pairs`` writes a toy dataset in this format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset

from instantportrait.jsonl import jsonl_records

FORMAT = "instantportrait-pairs/1"
DATASET_FILE = "dataset.json"
MANIFEST_FILE = "manifest.jsonl"
# insightface's 5 points are (left eye, right eye, nose, left mouth corner, right mouth corner) as seen in the image;
# a mirror image swaps the two eyes and the two mouth corners.
FLIP_KPS_ORDER = (1, 0, 2, 4, 3)


@dataclass(frozen=True)
class PairRow:
    """One passed manifest row, paths resolved against the dataset folder."""

    id: str
    source: Path
    target: Path
    instruction: str
    target_caption: str
    category: str
    source_kps: np.ndarray | None  # (5, 2) float32, pixels of the stored source image
    source_bbox: np.ndarray | None  # (4,) float32 x1, y1, x2, y2
    identity_sim: float | None
    clip_t: float | None


def _mix(*values: int | str) -> int:
    """A stable 63-bit integer from any ints/strings (for per-sample seeds)."""
    digest = hashlib.sha256("/".join(str(v) for v in values).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _points(value: Any, shape: tuple[int, ...], what: str, row_id: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape != shape or not np.isfinite(arr).all():
        raise ValueError(f"row {row_id!r}: {what} must be {list(shape)} finite numbers or null, got {value!r}")
    return arr


def read_dataset(root: str | Path) -> tuple[dict[str, Any], list[PairRow]]:
    """``(dataset.json contents, passed rows)`` of a dataset folder; one clear error per problem.

    Raises ``FileNotFoundError`` for a missing folder, ``dataset.json``, ``manifest.jsonl`` or image file, and
    ``ValueError`` for another format, a malformed manifest line, a passed row without a target, or no passed row.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist (build one with train/build_dataset.py)")
    info_path, manifest_path = root / DATASET_FILE, root / MANIFEST_FILE
    for path in (info_path, manifest_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {root} is not a paired-edit dataset ({FORMAT})")
    info = json.loads(info_path.read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{info_path} has format {info.get('format')!r}; this reader reads {FORMAT!r}")
    rows: list[PairRow] = []
    with manifest_path.open() as fh:
        for lineno, rec in jsonl_records(fh, manifest_path):
            if not rec.get("passed"):
                continue
            row_id = str(rec.get("id", f"line-{lineno}"))
            if not rec.get("target"):
                raise ValueError(f"{manifest_path}:{lineno} (row {row_id!r}) passed but has no target image")
            if not isinstance(rec.get("instruction"), str) or not rec["instruction"].strip():
                raise ValueError(f"{manifest_path}:{lineno} (row {row_id!r}) has no instruction")
            src, tgt = root / rec["source"], root / rec["target"]
            for path in (src, tgt):
                if not path.is_file():
                    raise FileNotFoundError(f"{manifest_path}:{lineno} (row {row_id!r}) names {path}, which is missing")
            rows.append(PairRow(
                id=row_id, source=src, target=tgt, instruction=rec["instruction"],
                target_caption=str(rec.get("target_caption") or ""), category=str(rec.get("category") or ""),
                source_kps=_points(rec.get("source_kps"), (5, 2), "source_kps", row_id),
                source_bbox=_points(rec.get("source_bbox"), (4,), "source_bbox", row_id),
                identity_sim=rec.get("identity_sim"), clip_t=rec.get("clip_t"),
            ))
    if not rows:
        raise ValueError(f"{manifest_path} has no row with \"passed\": true: nothing to train on")
    return info, rows


def _square_geometry(width: int, height: int, resolution: int) -> tuple[float, int, int, tuple[int, int]]:
    """Short side -> ``resolution``, centre crop: (scale, left, top, scaled size (w, h))."""
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    return scale, (size[0] - resolution) // 2, (size[1] - resolution) // 2, size


def _to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3) in [-1, 1]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, H, W)


class PairedEditDataset(Dataset):
    """Passed (source, instruction, target) pairs at a square training resolution, pixels in [-1, 1].

    Args:
        root: the dataset folder.
        resolution: side of the square training image (short side scaled to it, centre crop).
        hflip: mirror the pair (and its landmarks) with probability 1/2, deterministically per ``(seed, key)``, for
            items indexed ``ds[(row, key)]``.
        seed: seed of the flip decisions.

    Items are dicts: ``id`` (str), ``index`` (int, row number), ``source`` / ``target`` (3, R, R) float32 in
    [-1, 1], ``instruction`` / ``target_caption`` (str), ``source_kps`` (5, 2) float32 pixel coordinates of the
    resized image (NaN when the source has no face), ``has_face`` (bool: landmarks known and all inside the crop),
    ``source_bbox`` (4,) float32 (NaN when unknown). The default collate batches them.
    """

    def __init__(self, root: str | Path, resolution: int = 512, *, hflip: bool = False, seed: int = 0):
        if isinstance(resolution, bool) or int(resolution) <= 0:
            raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
        self.root = Path(root).expanduser()
        self.resolution = int(resolution)
        self.hflip = bool(hflip)
        self.seed = int(seed)
        self.info, self.rows = read_dataset(self.root)

    def __len__(self) -> int:
        return len(self.rows)

    def flipped(self, row: int, key: int) -> bool:
        """Whether the sample drawn as ``(row, key)`` is mirrored."""
        return self.hflip and _mix(self.seed, "hflip", row, key) % 2 == 1

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        augment = isinstance(index, tuple)
        row_idx, key = (int(index[0]), int(index[1])) if augment else (int(index), 0)
        if not 0 <= row_idx < len(self.rows):
            raise IndexError(f"row {row_idx} out of range for {len(self.rows)} rows")
        row = self.rows[row_idx]
        res = self.resolution
        with PIL.Image.open(row.source) as im:
            source = im.convert("RGB")
        with PIL.Image.open(row.target) as im:
            target = im.convert("RGB")
        if target.size != source.size:  # the generator may work at another size: same frame as the source
            target = target.resize(source.size, PIL.Image.Resampling.LANCZOS)
        scale, left, top, size = _square_geometry(*source.size, res)
        box = (left, top, left + res, top + res)
        source = source.resize(size, PIL.Image.Resampling.LANCZOS).crop(box)
        target = target.resize(size, PIL.Image.Resampling.LANCZOS).crop(box)

        kps = np.full((5, 2), np.nan, dtype=np.float32)
        if row.source_kps is not None:  # pixel centres at integers: u = (x + 0.5) * scale - 0.5
            kps = (row.source_kps + 0.5) * scale - 0.5 - np.array([left, top], dtype=np.float32)
        bbox = np.full(4, np.nan, dtype=np.float32)
        if row.source_bbox is not None:  # box edges scale without the half-pixel shift
            bbox = row.source_bbox * scale - np.array([left, top, left, top], dtype=np.float32)
        if augment and self.flipped(row_idx, key):
            source = source.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
            target = target.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
            kps = kps[list(FLIP_KPS_ORDER)].copy()
            kps[:, 0] = res - 1 - kps[:, 0]
            bbox = np.array([res - bbox[2], bbox[1], res - bbox[0], bbox[3]], dtype=np.float32)
        has_face = bool(np.isfinite(kps).all() and (kps >= -0.5).all() and (kps <= res - 0.5).all())
        return {
            "id": row.id,
            "index": row_idx,
            "source": _to_tensor(source),  # (3, R, R)
            "target": _to_tensor(target),  # (3, R, R)
            "instruction": row.instruction,
            "target_caption": row.target_caption,
            "source_kps": torch.from_numpy(kps.astype(np.float32)),  # (5, 2)
            "has_face": has_face,
            "source_bbox": torch.from_numpy(bbox.astype(np.float32)),  # (4,)
        }


def kps_to_bbox(kps: torch.Tensor, *, expand: float = 1.0) -> torch.Tensor:
    """A face box (B, 4) around 5-point landmarks (B, 5, 2): the landmarks' extent, grown to a face-sized square
    (the eye-mouth span is about half a face), times ``expand``."""
    lo, hi = kps.min(dim=1).values, kps.max(dim=1).values  # (B, 2)
    centre = (lo + hi) / 2  # (B, 2)
    half = (hi - lo).max(dim=1, keepdim=True).values.clamp_min(1.0) * expand  # (B, 1)
    return torch.cat([centre - half, centre + half], dim=1)  # (B, 4)


def face_boxes(batch_bbox: torch.Tensor, batch_kps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-sample face boxes (B, 4): the dataset box, else one around the landmarks, else the whole image."""
    h, w = size
    full = torch.tensor([0.0, 0.0, float(w), float(h)], device=batch_bbox.device).expand_as(batch_bbox)
    from_kps = kps_to_bbox(torch.nan_to_num(batch_kps, nan=0.0))  # (B, 4)
    has_box = torch.isfinite(batch_bbox).all(dim=1, keepdim=True)  # (B, 1)
    has_kps = torch.isfinite(batch_kps).flatten(1).all(dim=1, keepdim=True)  # (B, 1)
    out = torch.where(has_kps, from_kps, full)
    return torch.where(has_box, torch.nan_to_num(batch_bbox), out)  # (B, 4)


__all__ = ["DATASET_FILE", "FORMAT", "MANIFEST_FILE", "PairRow", "PairedEditDataset", "face_boxes", "kps_to_bbox",
           "read_dataset"]
