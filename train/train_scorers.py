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
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from instantportrait.demo import Sample, World, caption, describe_edits, random_scene
from instantportrait.demo.world import similarity_matrix

AUX_WORLD_SEED_OFFSET = 10_000  # the auxiliary identities' world: far from any demo world seed
FACE_PACK_DIR = "face_pack"
DET_FILE = "det_demo.onnx"
REC_FILE = "w_demo.onnx"
CLIP_DIR = "clip"
CLIP_FILE = "demo_clip.safetensors"
OPSET = 17
ARCFACE_SIZE = 112
# insightface's 112x112 ArcFace landmark template (utils/face_align.py ``arcface_dst``)
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]])
# SCRFD's blob: (rgb - 127.5) / 128; ArcFace's: (rgb - 127.5) / 127.5 (insightface model_zoo scrfd.py, arcface_onnx.py)
SCRFD_MEAN, SCRFD_STD = 127.5, 128.0
ARC_MEAN, ARC_STD = 127.5, 127.5
DET_STRIDE = 8  # the detector's internal grid step and the SCRFD level its detections are written to
SCRFD_STRIDES = (8, 16, 32)
DET_SIZES = (64, 128, 160, 256, 320, 384, 512, 640)  # det_size values simulated in training
FLIP_KPS = (1, 0, 2, 4, 3)  # landmark order after a horizontal flip (left/right eye and mouth corner swap)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
_TAG_POOL, _TAG_DET, _TAG_REC, _TAG_CLIP, _TAG_EVAL = 101, 102, 103, 104, 105


# ============================================================================================== config
@dataclass
class ScorerConfig:
    """Everything that defines a run (``--quick`` shrinks it with :meth:`quick`)."""

    seed: int = 0
    world_seed: int = 0  # the demo world whose train split we use and whose test split we measure on
    num_identities: int = 200  # the demo world's size (World's default)
    image_size: int = 128  # the demo world's image size
    aux_identities: int = 960  # extra people (another world) for the identity encoder and the detector
    views: int = 4  # scenes per person, each rendered without and with edits
    threads: int = 1  # on a shared CPU one thread is many times faster than two fighting for cores
    # detector
    det_resolution: int = 96  # internal resolution the exported graph resizes its input to (multiple of 32)
    det_width: int = 32
    det_steps: int = 800
    det_batch: int = 48
    det_lr: float = 4e-3
    det_negative_prob: float = 0.25
    # identity encoder
    rec_dim: int = 128
    rec_width: int = 32
    rec_steps: int = 1200
    rec_batch: int = 64
    rec_lr: float = 3e-3
    rec_margin: float = 0.3  # CosFace margin
    rec_scale: float = 24.0
    # CLIP
    clip_resolution: int = 128
    clip_patch: int = 16
    clip_layers: int = 2
    clip_embed_dim: int = 64
    clip_steps: int = 800
    clip_batch: int = 64
    clip_lr: float = 1e-3
    # evaluation on the demo world's test split
    eval_samples: int = 100
    eval_blank: int = 24

    def __post_init__(self) -> None:
        for name in ("num_identities", "aux_identities", "views", "threads", "det_steps", "det_batch", "rec_steps",
                     "rec_batch", "clip_steps", "clip_batch", "eval_samples"):
            value = getattr(self, name)
            least = 0 if name == "aux_identities" else 1
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if self.det_resolution % 32 or self.det_resolution < 32:
            raise ValueError(f"det_resolution must be a positive multiple of 32, got {self.det_resolution}")
        if self.clip_resolution % self.clip_patch:
            raise ValueError(f"clip_resolution ({self.clip_resolution}) must be a multiple of clip_patch "
                             f"({self.clip_patch})")
        if self.clip_batch % 2:
            raise ValueError(f"clip_batch must be even (source/target pairs), got {self.clip_batch}")

    def quick(self) -> ScorerConfig:
        """A seconds-long smoke run (tests): tiny data, a few steps, a small evaluation."""
        return dataclasses.replace(self, num_identities=30, aux_identities=6, views=1, det_steps=3, det_batch=8,
                                   rec_steps=3, rec_batch=16, clip_steps=3, clip_batch=8, eval_samples=4,
                                   eval_blank=2)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ============================================================================================== data
@dataclass
class Pool:
    """Rendered training photos: ``N`` images with exact face boxes, landmarks, identity labels and captions.

    Rows come in (unedited, edited) pairs of the same scene: rows ``2k`` and ``2k + 1``.
    """

    images: np.ndarray  # (N, S, S, 3) uint8 RGB
    bboxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 in pixels
    kps: np.ndarray  # (N, 5, 2) float32
    labels: np.ndarray  # (N,) int64 identity class
    captions: list[str]  # full descriptions (identity, clothing, backdrop, edits)
    short_captions: list[str]  # without identity attributes
    edit_texts: list[str]  # "a photo of a person" + the edits ("" edits -> "a photo of a person")
    num_classes: int

    def __len__(self) -> int:
        return len(self.images)


def build_pool(cfg: ScorerConfig) -> Pool:
    """Render the training photos (see the module docstring)."""
    world = World(cfg.world_seed, cfg.num_identities, size=cfg.image_size)
    people = [world.identity(i) for i in world.split_ids("train")]
    if cfg.aux_identities:
        aux = World(AUX_WORLD_SEED_OFFSET + cfg.world_seed, cfg.aux_identities, size=cfg.image_size)
        people += aux.identities
    images, bboxes, kps, labels, caps, shorts, edit_texts = [], [], [], [], [], [], []
    for label, person in enumerate(people):
        for view in range(cfg.views):
            rng = np.random.default_rng([cfg.seed, _TAG_POOL, label, view])
            scene = random_scene(rng, jitter=world.config.pose_jitter, lighting=world.config.lighting)
            edits = world.random_edits(rng)
            for e in ((), edits):
                out = world.render(person, scene, e)
                images.append(np.asarray(out.image, np.uint8))
                bboxes.append(out.bbox)
                kps.append(out.kps)
                labels.append(label)
                caps.append(caption(person, scene, e))
                shorts.append(caption(person, scene, e, with_identity=False))
                edit_texts.append(f"a photo of a person {describe_edits(e)}" if e else "a photo of a person")
    return Pool(np.stack(images), np.asarray(bboxes, np.float32), np.asarray(kps, np.float32),
                np.asarray(labels, np.int64), caps, shorts, edit_texts, len(people))


def _photometric(img: np.ndarray, rng: np.random.Generator, *, colour: bool = True) -> np.ndarray:
    """Random brightness/contrast, sometimes grayscale or swapped channels, blur and noise; float32 0-255 in/out."""
    img = img * rng.uniform(0.75, 1.2) + rng.uniform(-20, 20)
    if colour and rng.random() < 0.1:
        img = np.repeat(img.mean(2, keepdims=True), 3, axis=2)
    if colour and rng.random() < 0.1:
        img = img[:, :, rng.permutation(3)]
    if rng.random() < 0.3:
        sigma = rng.uniform(0.4, 1.6) * img.shape[0] / 128
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    if rng.random() < 0.3:
        img = img + rng.normal(0, rng.uniform(2, 10), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.float32)


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
    img = _photometric(img, rng)
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
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.det_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.det_lr, total_steps=cfg.det_steps, pct_start=0.15)
    net.train()
    t0 = time.time()
    for step in range(cfg.det_steps):
        rng = np.random.default_rng([cfg.seed, _TAG_DET, step])
        items = [det_example(pool, None if rng.random() < cfg.det_negative_prob else int(rng.integers(len(pool))),
                             rng, cfg.det_resolution) for _ in range(cfg.det_batch)]
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
        loss = focal + 0.5 * l_cen + l_box + 2.0 * l_kp
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.det_steps - 1:
            log(f"  detector step {step:4d}/{cfg.det_steps}  presence {focal.item():.4f}  centre {l_cen.item():.4f}  "
                f"box {l_box.item():.4f}  kps {l_kp.item():.4f}  ({time.time() - t0:.0f} s)")
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
    crop = _photometric(np.ascontiguousarray(crop), rng, colour=False)
    return ((crop - ARC_MEAN) / ARC_STD).transpose(2, 0, 1).astype(np.float32)


def train_identity(pool: Pool, cfg: ScorerConfig, log: Any) -> IdentityNet:
    """Train :class:`IdentityNet` with a CosFace margin loss over the pool's identities."""
    torch.manual_seed(cfg.seed + 1)
    net = IdentityNet(cfg.rec_dim, cfg.rec_width)
    centres = nn.Parameter(F.normalize(torch.randn(pool.num_classes, cfg.rec_dim), dim=1))
    params = [*net.parameters(), centres]
    opt = torch.optim.AdamW(params, lr=cfg.rec_lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.rec_lr, total_steps=cfg.rec_steps, pct_start=0.1)
    net.train()
    t0 = time.time()
    for step in range(cfg.rec_steps):
        rng = np.random.default_rng([cfg.seed, _TAG_REC, step])
        ks = rng.integers(len(pool), size=cfg.rec_batch)
        x = torch.from_numpy(np.stack([rec_example(pool, int(k), rng) for k in ks]))  # (B, 3, 112, 112)
        y = torch.from_numpy(pool.labels[ks])  # (B,)
        emb = F.normalize(net(x), dim=1)  # (B, D)
        cos = emb @ F.normalize(centres, dim=1).T  # (B, C)
        margin = cfg.rec_margin * min(1.0, 2.0 * step / cfg.rec_steps + 0.2)  # margin warm-up
        logits = cfg.rec_scale * (cos - margin * F.one_hot(y, pool.num_classes))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.rec_steps - 1:
            acc = (cos.argmax(1) == y).float().mean().item()
            log(f"  identity step {step:4d}/{cfg.rec_steps}  loss {loss.item():.3f}  train acc {acc:.2f}  "
                f"({time.time() - t0:.0f} s)")
    return net.eval()


# ============================================================================================== CLIP
def make_clip(cfg: ScorerConfig) -> nn.Module:
    """A small ``clip.model.CLIP`` with the real vocabulary and context length (so ``clip.tokenize`` works)."""
    from instantportrait.eval.clip_score import _clip_module

    clip = _clip_module()
    return clip.model.CLIP(
        embed_dim=cfg.clip_embed_dim, image_resolution=cfg.clip_resolution, vision_layers=cfg.clip_layers,
        vision_width=64, vision_patch_size=cfg.clip_patch, context_length=77, vocab_size=49408,
        transformer_width=64, transformer_heads=1, transformer_layers=cfg.clip_layers,
    )


def clip_pixels(images: Sequence[Image.Image] | np.ndarray, resolution: int) -> torch.Tensor:
    """CLIP's preprocessing (bicubic resize of the short side, centre crop, normalise) -> ``(N, 3, R, R)``."""
    out = []
    for im in images:
        pil = im if isinstance(im, Image.Image) else Image.fromarray(im)
        w, h = pil.size
        s = resolution / min(w, h)
        pil = pil.convert("RGB").resize((max(resolution, round(w * s)), max(resolution, round(h * s))),
                                        Image.Resampling.BICUBIC)
        w, h = pil.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        arr = np.asarray(pil.crop((left, top, left + resolution, top + resolution)), np.float32) / 255.0
        out.append(((arr - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def train_clip(pool: Pool, cfg: ScorerConfig, log: Any) -> nn.Module:
    """Contrastive training (symmetric InfoNCE, identical texts count as positives). Each batch holds whole
    (unedited, edited) pairs, so a picture and its one-edit-apart twin are always each other's hard negatives."""
    from instantportrait.eval.clip_score import _clip_module

    tokenize = _clip_module().tokenize
    torch.manual_seed(cfg.seed + 2)
    model = make_clip(cfg).float()
    texts = sorted(set(pool.captions) | set(pool.short_captions) | set(pool.edit_texts))
    text_id = {t: i for i, t in enumerate(texts)}
    tokens = tokenize(texts, context_length=77, truncate=True)  # (T, 77)
    variants = [np.array([text_id[t] for t in col]) for col in (pool.captions, pool.short_captions, pool.edit_texts)]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=cfg.clip_lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.clip_lr, total_steps=cfg.clip_steps, pct_start=0.1)
    model.train()
    n_pairs = len(pool) // 2
    t0 = time.time()
    for step in range(cfg.clip_steps):
        rng = np.random.default_rng([cfg.seed, _TAG_CLIP, step])
        pairs = rng.choice(n_pairs, size=cfg.clip_batch // 2, replace=False)
        rows = np.stack([2 * pairs, 2 * pairs + 1], 1).reshape(-1)  # (B,)
        which = rng.choice(3, size=len(rows), p=[0.5, 0.3, 0.2])
        tid = np.array([variants[w][r] for w, r in zip(which, rows)])  # (B,)
        x = clip_pixels(pool.images[rows], cfg.clip_resolution)  # (B, 3, r, r)
        if rng.random() < 0.5:
            x = x.flip(3)
        img = F.normalize(model.encode_image(x), dim=1)  # (B, D)
        batch_tokens = tokens[tid]  # (B, 77)
        # The text tower is causal and reads the end-of-text position, so padding after the longest text in the
        # batch changes nothing: drop it (clip's encode_text slices its mask and positions to the given length).
        batch_tokens = batch_tokens[:, : int((batch_tokens != 0).sum(1).max())]  # (B, L)
        txt = F.normalize(model.encode_text(batch_tokens), dim=1)  # (B, D)
        logits = model.logit_scale.exp().clamp(max=100.0) * img @ txt.T  # (B, B)
        same = torch.from_numpy(tid[:, None] == tid[None, :]).float()  # (B, B) identical texts are positives
        loss = 0.5 * (-(same / same.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
                      - (same / same.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.clip_steps - 1:
            log(f"  clip step {step:4d}/{cfg.clip_steps}  loss {loss.item():.3f}  scale "
                f"{model.logit_scale.exp().item():.1f}  ({time.time() - t0:.0f} s)")
    return model.eval()


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


def save_clip(model: nn.Module, path: Path) -> Path:
    """Save the CLIP state dict as float16 safetensors (``build_model`` casts to float16 anyway)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})  # one key: several would be written in random order
    return path


# ============================================================================================== evaluation
def _iou(a: np.ndarray, b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9))


def blank_images(n: int, seed: int) -> list[np.ndarray]:
    """Face-free test images: flat colours, gradients, noise at 128 and 512 px."""
    rng = np.random.default_rng([seed, _TAG_EVAL])
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


def evaluate_clip(path: str | Path, samples: Sequence[Sample]) -> dict[str, Any]:
    """CLIP-T ranking on world ``samples``: how often the edited target scores a higher CLIP-T with the target's
    description than the unedited source does (full caption, identity-free caption, 'a photo of a person' + edit)."""
    from instantportrait.eval.clip_score import ClipScorer

    scorer = ClipScorer(weights=path).load()
    src = scorer.image_features([s.source for s in samples])  # (n, D)
    tgt = scorer.image_features([s.target for s in samples])
    out: dict[str, Any] = {"split": samples[0].split, "samples": len(samples)}
    texts = {
        "caption": [s.target_caption for s in samples],
        "short_caption": [caption(s.identity, s.scene, s.edits, with_identity=False) for s in samples],
        "edit_text": [f"a photo of a person {describe_edits(s.edits)}" for s in samples],
    }
    for name, items in texts.items():
        t = scorer.text_features(items)  # (n, D)
        s_src, s_tgt = (src * t).sum(1), (tgt * t).sum(1)
        out[f"target_above_source_{name}"] = round(float((s_tgt > s_src).float().mean()), 4)
        out[f"clip_t_target_{name}"] = round(float(s_tgt.mean()), 4)
        out[f"clip_t_source_{name}"] = round(float(s_src.mean()), 4)
    # retrieval: each edited target against all n target captions
    t = scorer.text_features(texts["caption"])
    out["caption_retrieval_top1"] = round(float(((tgt @ t.T).argmax(1) == torch.arange(len(samples))).float()
                                                .mean()), 4)
    return out


# ============================================================================================== model cards
def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _face_card(cfg: ScorerConfig, metrics: dict[str, Any], seconds: float) -> str:
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
sepia, neon, ...), so edits are augmentations the encoder learns to ignore. Detector: {cfg.det_steps} steps of
{cfg.det_batch} (zoom 0.5-1.5x, flips, letterboxing, blur, noise, random det_size; {cfg.det_negative_prob:.0%}
face-free images). Encoder: {cfg.rec_steps} steps of {cfg.rec_batch} crops with jittered landmarks. Seed
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


def _clip_card(cfg: ScorerConfig, metrics: dict[str, Any], seconds: float, size_mb: float) -> str:
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
for {cfg.clip_steps} steps of {cfg.clip_batch} on (image, description) pairs of the synthetic portrait world. It
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
    pool = build_pool(cfg)
    timings["render_s"] = time.time() - t0
    log(f"  {len(pool)} images of {pool.num_classes} people ({timings['render_s']:.0f} s)")

    t = time.time()
    log("training the detector ...")
    det = train_detector(pool, cfg, log)
    timings["detector_s"] = time.time() - t
    t = time.time()
    log("training the identity encoder ...")
    rec = train_identity(pool, cfg, log)
    timings["identity_s"] = time.time() - t
    pack = export_face_pack(det, rec, out / FACE_PACK_DIR, cfg.det_resolution)

    t = time.time()
    log("training CLIP ...")
    clip_model = train_clip(pool, cfg, log)
    timings["clip_s"] = time.time() - t
    clip_path = save_clip(clip_model, out / CLIP_DIR / CLIP_FILE)
    train_seconds = time.time() - t0

    t = time.time()
    log("evaluating on the demo world's test split ...")
    world = World(cfg.world_seed, cfg.num_identities, size=cfg.image_size)
    samples = list(world.samples("test", cfg.eval_samples))
    face_metrics = evaluate_face_pack(pack, samples, n_blank=cfg.eval_blank)
    clip_metrics = evaluate_clip(clip_path, samples)
    timings["eval_s"] = time.time() - t
    size_mb = clip_path.stat().st_size / 1e6
    (pack / "README.md").write_text(_face_card(cfg, face_metrics, train_seconds), encoding="utf-8")
    (clip_path.parent / "README.md").write_text(_clip_card(cfg, clip_metrics, train_seconds, size_mb),
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
