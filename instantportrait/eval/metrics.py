"""Edit scores as pure functions of embeddings (numpy only: no torch, no models), shared by the one
:class:`~instantportrait.eval.scorer.Scorer`, the face encoder and the benchmark's tables.

* ``id_sim`` = cos(source face embedding, output face embedding) of the largest face of each;
* ``clip_t`` = cos(E_I(output), E_T(target caption)); ``clip_i`` = cos(E_I(source), E_I(output));
  ``clip_dir`` = cos(E_I(output) - E_I(source), E_T(target caption) - E_T(source caption)), 0 where either
  difference has norm below ``eps`` (as :meth:`instantportrait.eval.clip_score.ClipScorer.directional`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

DIRECTIONAL_EPS = 1e-4


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (not assumed normalised), clipped to [-1, 1]; 0 if either is zero."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"vectors of different sizes: {a.shape} vs {b.shape}")
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def identity_scores(source: np.ndarray | None, output: np.ndarray | None, suffix: str = "") -> dict[str, Any]:
    """Row fields for one face model from the source's and output's embeddings (``None`` = no face found).

    Returns ``id_sim{suffix}``, ``no_face_source{suffix}``, ``no_face_output{suffix}``. The output's face is
    reported even when the source has none.
    """
    return {
        f"id_sim{suffix}": None if source is None or output is None else cosine(source, output),
        f"no_face_source{suffix}": source is None,
        f"no_face_output{suffix}": output is None,
    }


def directional(src_image: np.ndarray, out_image: np.ndarray, src_text: np.ndarray, tgt_text: np.ndarray,
                eps: float = DIRECTIONAL_EPS) -> float:
    """cos(out - src, tgt - src_text) of (normalised) CLIP embeddings; 0 if either difference is below ``eps``."""
    d_img = np.asarray(out_image, np.float64) - np.asarray(src_image, np.float64)  # (D,)
    d_txt = np.asarray(tgt_text, np.float64) - np.asarray(src_text, np.float64)  # (D,)
    if np.linalg.norm(d_img) < eps or np.linalg.norm(d_txt) < eps:
        return 0.0
    return cosine(d_img, d_txt)


def clip_scores(src_image: np.ndarray, out_image: np.ndarray, src_text: np.ndarray, tgt_text: np.ndarray,
                eps: float = DIRECTIONAL_EPS) -> dict[str, float]:
    """``clip_t``, ``clip_i``, ``clip_dir`` of one edit from CLIP embeddings (image and text, same space)."""
    return {
        "clip_t": cosine(out_image, tgt_text),
        "clip_i": cosine(src_image, out_image),
        "clip_dir": directional(src_image, out_image, src_text, tgt_text, eps),
    }
