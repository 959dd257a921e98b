"""The scorers' shared settings and data: file names, normalisation constants, :class:`ScorerConfig`, and the
pool of demo-world renders all three models train on (see :mod:`train.train_scorers` for the whole recipe)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from instantportrait.demo import World, caption, describe_edits, random_scene
from instantportrait.face.keypoints import ARCFACE_TEMPLATE_112

AUX_WORLD_SEED_OFFSET = 10_000  # the auxiliary identities' world: far from any demo world seed
FACE_PACK_DIR = "face_pack"
DET_FILE = "det_demo.onnx"
REC_FILE = "w_demo.onnx"
CLIP_DIR = "clip"
CLIP_FILE = "demo_clip.safetensors"
OPSET = 17
ARCFACE_TEMPLATE = np.array(ARCFACE_TEMPLATE_112)  # (5, 2)
# SCRFD's blob: (rgb - 127.5) / 128; ArcFace's: (rgb - 127.5) / 127.5 (insightface model_zoo scrfd.py, arcface_onnx.py)
SCRFD_MEAN, SCRFD_STD = 127.5, 128.0
ARC_MEAN, ARC_STD = 127.5, 127.5
DET_STRIDE = 8  # the detector's internal grid step and the SCRFD level its detections are written to
SCRFD_STRIDES = (8, 16, 32)
DET_SIZES = (64, 128, 160, 256, 320, 384, 512, 640)  # det_size values simulated in training
FLIP_KPS = (1, 0, 2, 4, 3)  # landmark order after a horizontal flip (left/right eye and mouth corner swap)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
TAG_POOL, TAG_DET, TAG_REC, TAG_CLIP, TAG_EVAL = 101, 102, 103, 104, 105


# ============================================================================================== config
@dataclass(frozen=True)
class Schedule:
    """One scorer's training schedule: ``steps`` optimiser steps of ``batch`` examples, one-cycle learning rate
    peaking at ``lr`` (:func:`train.loops.one_cycle_loop`)."""

    steps: int
    batch: int
    lr: float

    def check(self, name: str) -> None:
        for key in ("steps", "batch"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}.{key} must be an int >= 1, got {value!r}")


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
    det: Schedule = Schedule(steps=800, batch=48, lr=4e-3)
    det_negative_prob: float = 0.25
    # identity encoder
    rec_dim: int = 128
    rec_width: int = 32
    rec: Schedule = Schedule(steps=1200, batch=64, lr=3e-3)
    rec_margin: float = 0.3  # CosFace margin
    rec_scale: float = 24.0
    # CLIP
    clip_resolution: int = 128
    clip_patch: int = 16
    clip_layers: int = 2
    clip_embed_dim: int = 64
    clip: Schedule = Schedule(steps=800, batch=64, lr=1e-3)
    # evaluation on the demo world's test split
    eval_samples: int = 100
    eval_blank: int = 24

    def __post_init__(self) -> None:
        for name in ("det", "rec", "clip"):
            getattr(self, name).check(name)
        for name in ("num_identities", "aux_identities", "views", "threads", "eval_samples"):
            value = getattr(self, name)
            least = 0 if name == "aux_identities" else 1
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if self.det_resolution % 32 or self.det_resolution < 32:
            raise ValueError(f"det_resolution must be a positive multiple of 32, got {self.det_resolution}")
        if self.clip_resolution % self.clip_patch:
            raise ValueError(f"clip_resolution ({self.clip_resolution}) must be a multiple of clip_patch "
                             f"({self.clip_patch})")
        if self.clip.batch % 2:
            raise ValueError(f"clip.batch must be even (source/target pairs), got {self.clip.batch}")

    def quick(self) -> ScorerConfig:
        """A seconds-long smoke run (tests): tiny data, a few steps, a small evaluation."""
        return dataclasses.replace(self, num_identities=30, aux_identities=6, views=1, det=Schedule(3, 8, self.det.lr),
                                   rec=Schedule(3, 16, self.rec.lr), clip=Schedule(3, 8, self.clip.lr),
                                   eval_samples=4, eval_blank=2)

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
            rng = np.random.default_rng([cfg.seed, TAG_POOL, label, view])
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


def photometric(img: np.ndarray, rng: np.random.Generator, *, colour: bool = True) -> np.ndarray:
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


