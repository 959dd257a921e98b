"""The demo face pack: a detector exported in SCRFD's output layout and a CosFace identity encoder on the ArcFace
crop, their training, the ONNX export insightface loads, and their evaluation through ``FaceEncoder``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instantportrait.demo import Sample
from instantportrait.demo.world import similarity_matrix
from instantportrait.face.keypoints import ARCFACE_SIZE
from train.loops import StepResult, one_cycle_loop
from train.scorers.data import (
    ARC_MEAN,
    ARC_STD,
    ARCFACE_TEMPLATE,
    DET_FILE,
    DET_SIZES,
    DET_STRIDE,
    FLIP_KPS,
    OPSET,
    REC_FILE,
    SCRFD_MEAN,
    SCRFD_STD,
    SCRFD_STRIDES,
    TAG_DET,
    TAG_EVAL,
    TAG_REC,
    Pool,
    ScorerConfig,
    photometric,
)


# ============================================================================================== detector
def _cbr(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DetectorNet(nn.Module):
    """The learned part of the detector: ``(B, 3, R, R)`` SCRFD blob -> per cell of the ``R/8`` grid a face logit
    ``(B, 2, g, g)`` (presence: "this cell lies in the middle of a face"; centrality: "... and it is the cell nearest
    the face centre"), box distances ``(B, 4, g, g)`` (left, top, right, bottom) and landmark offsets
    ``(B, 10, g, g)`` (x, y per point), both from the cell centre in units of the 8-pixel cell.

    The exported score is ``presence * (0.5 + 0.5 * centrality)`` (:meth:`score`): a face's cells all clear
    insightface's 0.5 threshold when presence is confident, and the most central one, whose box and landmarks are
    the most accurate, wins insightface's NMS."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(_cbr(3, w // 2, 2), _cbr(w // 2, w, 2))  # R/4
        self.c8 = _cbr(w, w, 2)  # R/8
        self.c16 = nn.Sequential(_cbr(w, 2 * w, 2), _cbr(2 * w, 2 * w))  # R/16
        self.c32 = nn.Sequential(_cbr(2 * w, 2 * w, 2), _cbr(2 * w, 2 * w))  # R/32
        self.lat16 = nn.Conv2d(2 * w, 2 * w, 1)
        self.top16 = _cbr(2 * w, w)
        self.lat8 = nn.Conv2d(w, w, 1)
        self.top8 = nn.Sequential(_cbr(w, w), _cbr(w, w))
        self.head = nn.Conv2d(w, 16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f8 = self.c8(self.stem(x))  # (B, w, R/8, R/8)
        f16 = self.c16(f8)  # (B, 2w, R/16, R/16)
        f32 = self.c32(f16)  # (B, 2w, R/32, R/32)
        p16 = self.top16(self.lat16(f16) + F.interpolate(f32, scale_factor=2.0, mode="nearest"))  # (B, w, R/16,..)
        p8 = self.top8(self.lat8(f8) + F.interpolate(p16, scale_factor=2.0, mode="nearest"))  # (B, w, R/8, R/8)
        out = self.head(p8)  # (B, 16, g, g)
        return out[:, :2], out[:, 2:6], out[:, 6:]

    @staticmethod
    def score(logits: torch.Tensor) -> torch.Tensor:
        """``(B, 2, g, g)`` presence and centrality logits -> ``(B, 1, g, g)`` face score in [0, 1]."""
        p = torch.sigmoid(logits)  # (B, 2, g, g)
        return p[:, :1] * (0.5 + 0.5 * p[:, 1:2])  # (B, 1, g, g)


class SCRFDLayout(nn.Module):
    """Wraps :class:`DetectorNet` into the graph insightface's ``SCRFD`` runs: ``(1, 3, H, W)`` blob (H, W multiples
    of 32) -> 9 outputs: scores ``(N_s, 1)``, box distances ``(N_s, 4)`` and keypoint offsets ``(N_s, 10)`` for
    strides 8, 16, 32 (``N_s = H/s * W/s * 2``, rows location-major, anchor-minor, distances in units of the stride
    from the anchor point ``(col * s, row * s)``). Detections go to stride 8, anchor 0; everything else scores 0."""

    def __init__(self, net: DetectorNet, resolution: int) -> None:
        super().__init__()
        self.net = net
        self.resolution = resolution
        g = resolution // DET_STRIDE
        centres = (torch.arange(g, dtype=torch.float32) + 0.5) * DET_STRIDE - 0.5  # (g,) internal pixel coords
        self.register_buffer("cx", centres.view(1, 1, 1, g), persistent=False)
        self.register_buffer("cy", centres.view(1, 1, g, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        r = self.resolution
        small = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)  # (1, 3, R, R)
        logits, box, kps = self.net(small)  # (1, 2, g, g), (1, 4, g, g), (1, 10, g, g)
        s = float(DET_STRIDE)
        xs = torch.cat([self.cx - box[:, 0:1] * s, self.cx + box[:, 2:3] * s, self.cx + kps[:, 0::2] * s], 1)
        ys = torch.cat([self.cy - box[:, 1:2] * s, self.cy + box[:, 3:4] * s, self.cy + kps[:, 1::2] * s], 1)
        # internal pixel p -> fraction of the image (p + 0.5) / R; (1, 7, g, g) each: x1, x2, kx0..4 / y1, y2, ky0..4
        u, v = (xs + 0.5) / r, (ys + 0.5) / r
        ref = F.avg_pool2d(x[:, :1], DET_STRIDE)  # (1, 1, H/8, W/8): the output grid
        maps = F.interpolate(torch.cat([self.net.score(logits), u, v], 1), size=ref.shape[-2:], mode="nearest")
        ones = torch.ones_like(ref)  # (1, 1, H/8, W/8)
        cols = ones.sum(3, keepdim=True)  # (1, 1, H/8, 1): W/8
        rows = ones.sum(2, keepdim=True)  # (1, 1, 1, W/8): H/8
        ax = ones.cumsum(3) - 1.0  # (1, 1, H/8, W/8) anchor column = x / 8
        ay = ones.cumsum(2) - 1.0
        # image pixel X = u * W - 0.5, in stride units X / 8 = u * W/8 - 1/16
        px = maps[:, 1:8] * cols - 0.5 / s  # (1, 7, H/8, W/8)
        py = maps[:, 8:15] * rows - 0.5 / s
        dist = torch.cat([ax - px[:, 0:1], ay - py[:, 0:1], px[:, 1:2] - ax, py[:, 1:2] - ay], 1)  # (1, 4, ...)
        kp = torch.stack([px[:, 2:] - ax, py[:, 2:] - ay], 2).flatten(1, 2)  # (1, 10, H/8, W/8): x0, y0, x1, ...
        zero = torch.zeros_like(ref)
        score8 = torch.cat([maps[:, 0:1], zero], 1)  # (1, 2, H/8, W/8): anchor 0, anchor 1
        bbox8 = torch.cat([dist, torch.zeros_like(dist)], 1)  # (1, 8, ...)
        kps8 = torch.cat([kp, torch.zeros_like(kp)], 1)  # (1, 20, ...)
        ref16 = F.avg_pool2d(ref, 2)  # (1, 1, H/16, W/16)
        ref32 = F.avg_pool2d(ref16, 2)  # (1, 1, H/32, W/32)

        def rows_of(t: torch.Tensor, width: int) -> torch.Tensor:
            return t.permute(0, 2, 3, 1).reshape(-1, width)  # (H/s * W/s * 2, width)

        scores = [rows_of(score8, 1)] + [rows_of(torch.zeros_like(r_).repeat(1, 2, 1, 1), 1) for r_ in (ref16, ref32)]
        boxes = [rows_of(bbox8, 4)] + [rows_of(torch.zeros_like(r_).repeat(1, 8, 1, 1), 4) for r_ in (ref16, ref32)]
        kpss = [rows_of(kps8, 10)] + [rows_of(torch.zeros_like(r_).repeat(1, 20, 1, 1), 10) for r_ in (ref16, ref32)]
        return (*scores, *boxes, *kpss)


def _det_targets(bbox: np.ndarray, kps: np.ndarray, res: int) -> tuple[np.ndarray, ...]:
    """Targets on the ``res/8`` grid for one face (internal pixels): presence ``(g, g)`` (1 inside the central
    ellipse of the face, radius 0.22 of the box, and in the cell holding the centre), centrality ``(g, g)``
    (``exp(-2 r^2)`` of the normalised distance r from the centre; 1 in the centre cell), box distances
    ``(4, g, g)`` and landmark offsets ``(10, g, g)`` from each cell centre in cell units."""
    g = res // DET_STRIDE
    c = (np.arange(g, dtype=np.float32) + 0.5) * DET_STRIDE - 0.5
    cx, cy = np.meshgrid(c, c)  # (g, g)
    x1, y1, x2, y2 = bbox
    mx, my = (x1 + x2) / 2, (y1 + y2) / 2
    rx, ry = max(0.22 * (x2 - x1), 0.6 * DET_STRIDE), max(0.22 * (y2 - y1), 0.6 * DET_STRIDE)
    r2 = ((cx - mx) / rx) ** 2 + ((cy - my) / ry) ** 2  # (g, g)
    presence = (r2 <= 1.0).astype(np.float32)
    central = np.exp(-2.0 * r2).astype(np.float32)
    i = int(np.clip(np.floor((my + 0.5) / DET_STRIDE), 0, g - 1))
    j = int(np.clip(np.floor((mx + 0.5) / DET_STRIDE), 0, g - 1))
    presence[i, j] = central[i, j] = 1.0
    box = np.stack([cx - x1, cy - y1, x2 - cx, y2 - cy]) / DET_STRIDE  # (4, g, g)
    kp = np.stack([v for k in range(5) for v in (kps[k, 0] - cx, kps[k, 1] - cy)]) / DET_STRIDE  # (10, g, g)
    return presence, central, box.astype(np.float32), kp.astype(np.float32)


def _negative_image(pool: Pool, rng: np.random.Generator, size: int) -> np.ndarray:
    """An image without a face: flat colour, gradient, smooth or pixel noise, or a face-free part of a photo."""
    kind = int(rng.integers(5))
    if kind == 0:
        return np.broadcast_to(rng.uniform(0, 255, 3).astype(np.float32), (size, size, 3)).copy()
    if kind == 1:
        t = np.linspace(0, 1, size, dtype=np.float32)
        ramp = t[None, :, None] if rng.random() < 0.5 else t[:, None, None]
        a, b = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
        return np.broadcast_to(a + (b - a) * ramp, (size, size, 3)).copy()
    if kind == 2:
        cells = int(rng.integers(2, 9))
        small = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
        return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 255)
    if kind == 3:
        return rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    k = int(rng.integers(len(pool)))
    img, (x1, _, x2, y2) = pool.images[k].astype(np.float32), pool.bboxes[k]
    n = img.shape[0]
    # a strip beside or below the face (shirt, backdrop), stretched to the full image
    choices = [(0, 0, max(2, int(x1) - 1), n), (min(n - 2, int(x2) + 1), 0, n, n), (0, min(n - 2, int(y2) + 2), n, n)]
    a, b, c, d = choices[int(rng.integers(len(choices)))]
    return cv2.resize(np.ascontiguousarray(img[b:d, a:c]), (size, size), interpolation=cv2.INTER_LINEAR)


def det_example(pool: Pool, k: int | None, rng: np.random.Generator, res: int) -> tuple[np.ndarray, ...]:
    """One detector training example as insightface would present it: ``(3, res, res)`` blob and its targets
    (presence, centrality, box, landmarks; see :func:`_det_targets`).

    ``k=None`` gives a negative. A positive photo is zoomed, shifted, rotated and maybe flipped, sometimes cropped
    to another aspect ratio and letterboxed (as insightface pads into ``det_size``), photometrically jittered, then
    resized to a random ``det_size`` and down to ``res`` with bilinear interpolation (what the exported graph does).
    """
    n = pool.images.shape[1]
    g = res // DET_STRIDE
    if k is None:
        img = _negative_image(pool, rng, n)
        bbox = kps = None
    else:
        img = pool.images[k].astype(np.float32)
        bbox, kps = pool.bboxes[k].copy(), pool.kps[k].copy()
        if rng.random() < 0.5:
            img = img[:, ::-1].copy()
            kps = kps[list(FLIP_KPS)]
            kps[:, 0] = n - 1 - kps[:, 0]
            bbox = np.array([n - 1 - bbox[2], bbox[1], n - 1 - bbox[0], bbox[3]], np.float32)
        zoom = math.exp(rng.uniform(math.log(0.5), math.log(1.5)))
        angle = rng.uniform(-8, 8)
        cxf, cyf = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
        m = cv2.getRotationMatrix2D((float(cxf), float(cyf)), angle, zoom)
        half = zoom * max(bbox[2] - bbox[0], bbox[3] - bbox[1]) / 2
        lo, hi = min(half * 0.6, n / 2), max(n - half * 0.6, n / 2)  # keep most of the face inside
        m[:, 2] += np.array([rng.uniform(lo, hi), rng.uniform(lo, hi)]) - np.array([cxf, cyf])
        border = (cv2.BORDER_REPLICATE, cv2.BORDER_REFLECT_101, cv2.BORDER_CONSTANT)[int(rng.integers(3))]
        img = cv2.warpAffine(img, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=border,
                             borderValue=tuple(float(v) for v in rng.uniform(0, 255, 3)))
        kps = kps @ m[:, :2].T + m[:, 2]
        corners = np.array([[bbox[0], bbox[1]], [bbox[2], bbox[1]], [bbox[0], bbox[3]], [bbox[2], bbox[3]]])
        cc = corners @ m[:, :2].T + m[:, 2]
        shrink = (cc.max(0) - cc.min(0)) * (1 - 1 / (abs(math.cos(math.radians(angle))) + abs(
            math.sin(math.radians(angle))))) / 2  # rotated corners overshoot the face outline's box
        bbox = np.concatenate([cc.min(0) + shrink, cc.max(0) - shrink]).astype(np.float32)
    img = photometric(img, rng)
    if rng.random() < 0.2:  # another aspect ratio, letterboxed into the square canvas (top-left, black pad)
        keep = int(n * rng.uniform(0.6, 0.95))
        canvas = np.zeros_like(img)
        if rng.random() < 0.5:
            canvas[:, :keep] = cv2.resize(img, (keep, n), interpolation=cv2.INTER_LINEAR)
            sx, sy = keep / n, 1.0
        else:
            canvas[:keep] = cv2.resize(img, (n, keep), interpolation=cv2.INTER_LINEAR)
            sx, sy = 1.0, keep / n
        img = canvas
        if bbox is not None:
            scale = np.array([sx, sy], np.float32)
            kps = (kps + 0.5) * scale - 0.5
            bbox = ((bbox.reshape(2, 2) + 0.5) * scale - 0.5).reshape(4)
    d = int(DET_SIZES[int(rng.integers(len(DET_SIZES)))])
    big = cv2.resize(np.round(img).astype(np.uint8), (d, d), interpolation=cv2.INTER_LINEAR)  # insightface: uint8
    small = cv2.resize(big, (res, res), interpolation=cv2.INTER_LINEAR).astype(np.float32)  # the graph's resize
    blob = ((small - SCRFD_MEAN) / SCRFD_STD).transpose(2, 0, 1).astype(np.float32)  # (3, R, R)
    if bbox is None:
        zeros = np.zeros((g, g), np.float32)
        return blob, zeros, zeros, np.zeros((4, g, g), np.float32), np.zeros((10, g, g), np.float32)
    f = res / n  # image pixel p -> internal (p + 0.5) * f - 0.5
    return (blob, *_det_targets((bbox + 0.5) * f - 0.5, (kps + 0.5) * f - 0.5, res))


def train_detector(pool: Pool, cfg: ScorerConfig, log: Any) -> DetectorNet:
    """Train :class:`DetectorNet`: focal-style BCE on presence, BCE on centrality (inside faces), smooth L1 on boxes
    and landmarks of the face cells (weighted toward the centre)."""
    torch.manual_seed(cfg.seed)
    net = DetectorNet(cfg.det_width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.det.lr, weight_decay=1e-4)
    net.train()

    def step_fn(step: int) -> StepResult:
        rng = np.random.default_rng([cfg.seed, TAG_DET, step])
        items = [det_example(pool, None if rng.random() < cfg.det_negative_prob else int(rng.integers(len(pool))),
                             rng, cfg.det_resolution) for _ in range(cfg.det.batch)]
        blob = torch.from_numpy(np.stack([it[0] for it in items]))  # (B, 3, R, R)
        pos = torch.from_numpy(np.stack([it[1] for it in items]))[:, None]  # (B, 1, g, g) presence
        cen = torch.from_numpy(np.stack([it[2] for it in items]))[:, None]  # (B, 1, g, g) centrality
        box_t = torch.from_numpy(np.stack([it[3] for it in items]))  # (B, 4, g, g)
        kp_t = torch.from_numpy(np.stack([it[4] for it in items]))  # (B, 10, g, g)
        logits, box, kp = net(blob)  # (B, 2, g, g), (B, 4, g, g), (B, 10, g, g)
        p = torch.sigmoid(logits[:, :1])
        bce = F.binary_cross_entropy_with_logits(logits[:, :1], pos, reduction="none")  # (B, 1, g, g)
        npos = pos.sum().clamp_min(1.0)
        focal = (bce * (pos - p).abs().pow(1.5)).sum() / npos
        l_cen = (F.binary_cross_entropy_with_logits(logits[:, 1:], cen, reduction="none") * pos).sum() / npos
        w = pos * (0.25 + cen)  # regression weight: every positive cell, the central ones most
        l_box = (F.smooth_l1_loss(box, box_t, reduction="none", beta=0.1) * w).sum() / (4 * w.sum().clamp_min(1.0))
        l_kp = (F.smooth_l1_loss(kp, kp_t, reduction="none", beta=0.1) * w).sum() / (10 * w.sum().clamp_min(1.0))
        return focal + 0.5 * l_cen + l_box + 2.0 * l_kp, lambda: (
            f"  detector step {step:4d}/{cfg.det.steps}  presence {focal.item():.4f}  centre {l_cen.item():.4f}  "
            f"box {l_box.item():.4f}  kps {l_kp.item():.4f}")

    one_cycle_loop(opt, cfg.det.lr, cfg.det.steps, 0.15, step_fn, log)
    return net.eval()


# ============================================================================================== identity encoder
class IdentityNet(nn.Module):
    """A compact CNN on the 112x112 ArcFace crop (RGB ``(x - 127.5) / 127.5``) -> ``(B, dim)`` embedding.

    The crop is average-pooled to 56x56 first (the demo world's faces are ~50 px wide, so the aligned crop holds no
    finer detail), then strided conv stages down to 7x7, a 1x1 squeeze and a linear layer with BatchNorm, as ArcFace
    heads have.
    """

    def __init__(self, dim: int = 128, width: int = 32) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.AvgPool2d(2), _cbr(3, w, 2),  # 28
            _cbr(w, 2 * w, 2), _cbr(2 * w, 2 * w),  # 14
            _cbr(2 * w, 4 * w, 2),  # 7
            _cbr(4 * w, w, 1, 1),
        )
        self.fc = nn.Linear(w * 49, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x).flatten(1)  # (B, w * 49)
        return self.bn(self.fc(h))  # (B, dim)


def arcface_crop(image: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """The ``(112, 112, 3)`` ArcFace crop insightface's ``face_align.norm_crop`` makes (same fit, same warp)."""
    m = similarity_matrix(np.asarray(kps, np.float64), ARCFACE_TEMPLATE)
    return cv2.warpAffine(image, m, (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0.0)


def rec_example(pool: Pool, k: int, rng: np.random.Generator) -> np.ndarray:
    """One augmented crop ``(3, 112, 112)``: landmarks jittered like a detector's errors, flips, photometric noise."""
    img = pool.images[k].astype(np.float32)
    kps = pool.kps[k].copy()
    eye = np.linalg.norm(kps[1] - kps[0])
    kps = kps + rng.normal(0, 0.05 * eye, (5, 2)) + rng.normal(0, 0.06 * eye, (1, 2))
    crop = arcface_crop(img, kps)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = photometric(np.ascontiguousarray(crop), rng, colour=False)
    return ((crop - ARC_MEAN) / ARC_STD).transpose(2, 0, 1).astype(np.float32)


def train_identity(pool: Pool, cfg: ScorerConfig, log: Any) -> IdentityNet:
    """Train :class:`IdentityNet` with a CosFace margin loss over the pool's identities."""
    torch.manual_seed(cfg.seed + 1)
    net = IdentityNet(cfg.rec_dim, cfg.rec_width)
    centres = nn.Parameter(F.normalize(torch.randn(pool.num_classes, cfg.rec_dim), dim=1))
    params = [*net.parameters(), centres]
    opt = torch.optim.AdamW(params, lr=cfg.rec.lr, weight_decay=5e-4)
    net.train()

    def step_fn(step: int) -> StepResult:
        rng = np.random.default_rng([cfg.seed, TAG_REC, step])
        ks = rng.integers(len(pool), size=cfg.rec.batch)
        x = torch.from_numpy(np.stack([rec_example(pool, int(k), rng) for k in ks]))  # (B, 3, 112, 112)
        y = torch.from_numpy(pool.labels[ks])  # (B,)
        emb = F.normalize(net(x), dim=1)  # (B, D)
        cos = emb @ F.normalize(centres, dim=1).T  # (B, C)
        margin = cfg.rec_margin * min(1.0, 2.0 * step / cfg.rec.steps + 0.2)  # margin warm-up
        logits = cfg.rec_scale * (cos - margin * F.one_hot(y, pool.num_classes))
        loss = F.cross_entropy(logits, y)
        return loss, lambda: (f"  identity step {step:4d}/{cfg.rec.steps}  loss {loss.item():.3f}  train acc "
                              f"{(cos.argmax(1) == y).float().mean().item():.2f}")

    one_cycle_loop(opt, cfg.rec.lr, cfg.rec.steps, 0.1, step_fn, log)
    return net.eval()


# ============================================================================================== export
def export_face_pack(det: DetectorNet, rec: IdentityNet, folder: Path, resolution: int) -> Path:
    """Write the two ONNX files insightface routes to ``SCRFD`` and ``ArcFaceONNX`` (opset 17, ``dynamo=False``)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in SCRFD_STRIDES]
    dynamic = {"input.1": {2: "height", 3: "width"}, **{n: {0: f"n_{n}"} for n in names}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo=False deprecation and tracer notes
        torch.onnx.export(SCRFDLayout(det.eval(), resolution).eval(), (torch.zeros(1, 3, 640, 640),),
                          str(folder / DET_FILE), input_names=["input.1"], output_names=names,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        torch.onnx.export(rec.eval(), (torch.zeros(1, 3, ARCFACE_SIZE, ARCFACE_SIZE),), str(folder / REC_FILE),
                          input_names=["input.1"], output_names=["embedding"],
                          dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)
    return folder



# ============================================================================================== evaluation
def _iou(a: np.ndarray, b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9))


def blank_images(n: int, seed: int) -> list[np.ndarray]:
    """Face-free test images: flat colours, gradients, noise at 128 and 512 px."""
    rng = np.random.default_rng([seed, TAG_EVAL])
    out = []
    for i in range(n):
        size = 128 if i % 2 == 0 else 512
        kind = i % 4
        if kind == 0:
            img = np.broadcast_to(rng.integers(0, 256, 3), (size, size, 3))
        elif kind == 1:
            t = np.linspace(0, 1, size)[None, :, None]
            img = rng.integers(0, 256, 3) * (1 - t) + rng.integers(0, 256, 3) * t
        elif kind == 2:
            img = rng.integers(0, 256, (size, size, 3))
        else:
            img = np.full((size, size, 3), 255 * (i % 8 == 3))
        out.append(np.ascontiguousarray(img, dtype=np.uint8))
    return out


def evaluate_face_pack(folder: str | Path, samples: Sequence[Sample], *, n_blank: int = 24, det_size: int = 640
                       ) -> dict[str, Any]:
    """Detection and identity numbers of a pack on world ``samples`` (held-out people), through ``FaceEncoder``.

    * ``detection_rate``: sources and edited targets whose largest face overlaps the true box (IoU >= 0.5);
    * ``kps_error_px``: mean landmark error of those, in image pixels;
    * ``same_edit``: cosine of a source and its own edited target (same scene) — what an edit benchmark measures;
    * ``same_photo``: cosine of two different photos (scenes, edits) of one person;
    * ``different``: cosine of sources of different people; ``blank_detections``: faces found on face-free images.
    """
    from instantportrait.face.encoder import FaceEncoder

    enc = FaceEncoder(folder, det_size=(det_size, det_size)).load()
    found, errors, results = 0, [], []
    for s in samples:
        pair = []
        for img in (s.source, s.target):
            faces = enc.detect(img)
            face = faces[0] if faces else None
            if face is not None and _iou(face.bbox, s.bbox) >= 0.5:
                found += 1
                errors.append(float(np.linalg.norm(face.kps - np.asarray(s.kps), axis=1).mean()))
            pair.append(face)
        results.append(pair)
    same_edit = [enc.cosine(a, b) for a, b in results if a is not None and b is not None]
    by_person: dict[str, list[Any]] = {}
    for s, (a, b) in zip(samples, results):
        by_person.setdefault(s.identity_id, []).append((a, b))
    same_photo, different = [], []
    people = list(by_person)
    for pid in people:  # consecutive photos of one person: source of one, edited target of the next
        photos = by_person[pid]
        for (a, _), (_, b) in zip(photos, photos[1:]):
            if a is not None and b is not None:
                same_photo.append(enc.cosine(a, b))
    sources = [(s.identity_id, a) for s, (a, _) in zip(samples, results) if a is not None]
    for i, (pa, a) in enumerate(sources):
        for pb, b in sources[i + 1:]:
            if pa != pb:
                different.append(enc.cosine(a, b))
    blanks = blank_images(n_blank, 0)
    blank_hits = sum(1 for img in blanks if enc.detect(img))

    def mean(v: list[float]) -> float | None:
        return round(float(np.mean(v)), 4) if v else None

    return {
        "split": samples[0].split, "samples": len(samples), "images": 2 * len(samples), "det_size": det_size,
        "detection_rate": round(found / (2 * len(samples)), 4),
        "kps_error_px": mean(errors),
        "same_edit_mean": mean(same_edit), "same_photo_mean": mean(same_photo), "different_mean": mean(different),
        "different_p95": round(float(np.percentile(different, 95)), 4) if different else None,
        "pairs": {"same_edit": len(same_edit), "same_photo": len(same_photo), "different": len(different)},
        "blank_images": len(blanks), "blank_detections": blank_hits,
    }


