"""Keypoint images: the control inputs the face ControlNets were trained on, drawn from insightface's 5 landmarks.

Written once here and shared by every editor that needs one (InstantID's ``draw_kps`` is copied into five files of
its own repository; we keep one).

* :func:`draw_face_keypoints` draws the image InstantID's IdentityNet expects: on black, four limbs from the eyes and
  mouth corners to the nose tip (filled ellipses 2 * ``stick_width`` px thick in the colour of their outer point, then
  the whole limb layer dimmed to 60 %), then a filled disc of ``radius`` px at each of the 5 points in full colour:
  left eye red, right eye green, nose blue, left mouth corner yellow, right mouth corner magenta (RGB). Sizes are in
  pixels of the generated image, as in the release (radius 10, stick width 4 at 1024-class resolution).
* :func:`draw_openpose_head` draws the head part of an OpenPose (COCO-18) skeleton: nose, both eyes and the two
  nose-eye limbs, in OpenPose's colours, for SD1.5 OpenPose ControlNets (the IP-Control baseline).

Landmark order is insightface's: (left eye, right eye, nose tip, left mouth corner, right mouth corner), "left"
meaning the image's left. All functions take ``kps`` as a ``(5, 2)`` array of ``(x, y)`` pixel coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import PIL.Image

Color = tuple[int, int, int]

# insightface ``utils/face_align.py`` ``arcface_dst``: where the 5 landmarks sit in the 112x112 ArcFace crop. The one
# home of this template: the identity loss's differentiable warp, the demo world's crops and the toy pack's trainer
# all align to it.
ARCFACE_SIZE = 112
ARCFACE_TEMPLATE_112: tuple[tuple[float, float], ...] = (
    (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041),
)

# InstantID's keypoint colours (RGB), one per landmark in insightface order.
FACE_KPS_COLORS: tuple[Color, ...] = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
# Limbs as (outer landmark, nose); a limb takes its outer landmark's colour.
FACE_KPS_LIMBS: tuple[tuple[int, int], ...] = ((0, 2), (1, 2), (3, 2), (4, 2))
LIMB_DIM = 0.6  # limbs are drawn at 60 % intensity under full-intensity points (InstantID and OpenPose 1.1 alike)

# OpenPose COCO-18 colours (RGB) used by the ControlNet 1.1 annotator, indexed by body part / by limb.
OPENPOSE_COLORS: tuple[Color, ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
OPENPOSE_NOSE, OPENPOSE_RIGHT_EYE, OPENPOSE_LEFT_EYE = 0, 14, 15
# Limb indices in OpenPose's limb list (they pick the limb colour): nose-right eye is limb 13, nose-left eye limb 15.
OPENPOSE_LIMB_NOSE_RIGHT_EYE, OPENPOSE_LIMB_NOSE_LEFT_EYE = 13, 15


def _check_kps(kps: np.ndarray | Sequence[Sequence[float]], size: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(kps, dtype=np.float64)
    if arr.shape != (5, 2):
        raise ValueError(f"expected 5 keypoints as a (5, 2) array of (x, y) pixels, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("keypoints contain NaN or infinite values")
    w, h = size
    if w < 1 or h < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return arr


def _draw_skeleton(size: tuple[int, int], points: np.ndarray, point_colors: Sequence[Color],
                   limbs: Sequence[tuple[int, int]], limb_colors: Sequence[Color], *, radius: int,
                   stick_width: int) -> PIL.Image.Image:
    """Limbs as filled ellipses (dimmed to ``LIMB_DIM``), then points as filled discs, on black."""
    import cv2

    w, h = size
    canvas = np.zeros((h, w, 3), dtype=np.float64)  # (H, W, 3) RGB
    for (a, b), color in zip(limbs, limb_colors):
        (xa, ya), (xb, yb) = points[a], points[b]
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        centre = (int((xa + xb) / 2), int((ya + yb) / 2))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), stick_width), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, tuple(float(c) for c in color))
    canvas = (canvas * LIMB_DIM).astype(np.uint8)  # (H, W, 3)
    for (x, y), color in zip(points, point_colors):
        cv2.circle(canvas, (int(x), int(y)), radius, tuple(int(c) for c in color), -1)
    return PIL.Image.fromarray(canvas)


def draw_face_keypoints(size: tuple[int, int], kps: np.ndarray | Sequence[Sequence[float]], *, radius: int = 10,
                        stick_width: int = 4) -> PIL.Image.Image:
    """InstantID's IdentityNet condition: an RGB image of ``size`` = (width, height) with the 5 landmarks drawn."""
    points = _check_kps(kps, size)
    limb_colors = [FACE_KPS_COLORS[a] for a, _ in FACE_KPS_LIMBS]
    return _draw_skeleton(size, points, FACE_KPS_COLORS, FACE_KPS_LIMBS, limb_colors, radius=radius,
                          stick_width=stick_width)


def draw_openpose_head(size: tuple[int, int], kps: np.ndarray | Sequence[Sequence[float]], *, radius: int = 4,
                       stick_width: int = 4) -> PIL.Image.Image:
    """The head of an OpenPose COCO-18 skeleton (nose, eyes, nose-eye limbs) from insightface's 5 landmarks.

    OpenPose names sides from the subject's point of view, so insightface's image-left eye (landmark 0) is OpenPose's
    right eye for a frontal face. Mouth corners have no OpenPose body point and are not drawn; ears and neck are not
    guessed.
    """
    points5 = _check_kps(kps, size)
    points = np.stack([points5[2], points5[0], points5[1]])  # nose, right eye, left eye  (3, 2)
    point_colors = [OPENPOSE_COLORS[i] for i in (OPENPOSE_NOSE, OPENPOSE_RIGHT_EYE, OPENPOSE_LEFT_EYE)]
    limbs = ((0, 1), (0, 2))
    limb_colors = [OPENPOSE_COLORS[OPENPOSE_LIMB_NOSE_RIGHT_EYE], OPENPOSE_COLORS[OPENPOSE_LIMB_NOSE_LEFT_EYE]]
    return _draw_skeleton(size, points, point_colors, limbs, limb_colors, radius=radius, stick_width=stick_width)


def canny_edges(image: PIL.Image.Image, low: int = 100, high: int = 200) -> PIL.Image.Image:
    """Canny edges of ``image`` as a white-on-black RGB image (the SD1.5 Canny ControlNet's condition)."""
    import cv2

    if not 0 <= low < high:
        raise ValueError(f"canny thresholds must satisfy 0 <= low < high, got {low}, {high}")
    gray = np.asarray(image.convert("L"))  # (H, W) uint8
    edges = cv2.Canny(gray, low, high)  # (H, W) uint8 in {0, 255}
    return PIL.Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


def scale_keypoints(kps: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Keypoints of an image of ``from_size`` mapped onto the same image resized to ``to_size`` (both (w, h))."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return np.asarray(kps, dtype=np.float32) * np.array([sx, sy], dtype=np.float32)  # (5, 2)


def template_keypoints(size: tuple[int, int]) -> np.ndarray:
    """A frontal face's 5 landmarks centred in an image of ``size`` (for latency runs without a face model)."""
    w, h = size
    side = 0.4 * min(w, h)
    x0, y0 = (w - side) / 2, (h - side) / 2
    frac = np.array([(0.32, 0.42), (0.68, 0.42), (0.50, 0.60), (0.36, 0.77), (0.64, 0.77)], dtype=np.float32)
    return (np.array([x0, y0], dtype=np.float32) + frac * side).astype(np.float32)  # (5, 2)
