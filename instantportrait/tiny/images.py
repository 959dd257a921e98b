"""Smooth synthetic images with no face in them, for timing runs and harness checks that need no data."""

from __future__ import annotations


def portrait_like_image(size: int = 64, seed: int = 0):
    """A deterministic RGB test image (PIL) with smooth structure, no face detector needed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([xx, yy, 1 - xx * yy], axis=-1)
    blob = np.exp(-(((xx - 0.5) ** 2 + (yy - 0.45) ** 2) / 0.04))[..., None] * rng.uniform(0.3, 0.9, size=3)
    img = np.clip(0.5 * base + blob, 0, 1)
    return Image.fromarray((img * 255).astype("uint8"))
