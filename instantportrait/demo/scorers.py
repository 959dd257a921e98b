"""When to score with the shipped toy demo scorers instead of the default ones (shared by the app and the benchmark).

The default face pack (``buffalo_l``) and CLIP (``ViT-L/14``) are often not on an offline machine. If the caller did
not name a scorer explicitly (it asked for the default) and the default cannot be used here, the demo face pack
(:data:`~instantportrait.config.DEMO_FACE_PACK`) and demo CLIP (:data:`~instantportrait.config.DEMO_CLIP`) take its
place, and the caller labels its numbers as coming from toy scorers. An explicitly named scorer is never replaced.
Both checks are cheap: a directory listing, a file test, and (for a CLIP that may be downloaded) a reachability probe.
"""

from __future__ import annotations

from pathlib import Path

from instantportrait.config import DEMO_CLIP, DEMO_FACE_PACK, MODELS
from instantportrait.errors import ModelNotAvailableError

DEFAULT_FACE_PACK = "buffalo_l"
DEFAULT_CLIP = MODELS["clip"].repo_id  # "ViT-L/14"


def demo_face_pack_for(pack: str | Path | None, root: str | Path | None = None) -> Path | None:
    """The demo face pack folder if ``pack`` is the default pack and that pack's folder is missing or incomplete
    here (and the demo pack is shipped); else ``None`` (use ``pack`` as it is)."""
    if pack is None or str(pack) != DEFAULT_FACE_PACK or not (DEMO_FACE_PACK / "README.md").is_file():
        return None
    from instantportrait.face.encoder import check_pack_folder, resolve_pack

    try:
        check_pack_folder(*resolve_pack(pack, root))
    except (ModelNotAvailableError, ValueError):
        return DEMO_FACE_PACK
    return None


def demo_clip_for(clip: str | Path | None, *, download: bool = False) -> Path | None:
    """The demo CLIP file if ``clip`` is the default (``None``: ``INSTANTPORTRAIT_CLIP`` or ViT-L/14; or the default
    variant's name) and its weights are not on disk here — with ``download``, and cannot be downloaded now either
    (offline mode requested, or the download host unreachable within ~3 s) — and the demo CLIP is shipped; else
    ``None`` (use ``clip`` as it is)."""
    if (clip is not None and str(clip) != DEFAULT_CLIP) or not DEMO_CLIP.is_file():
        return None
    from urllib.parse import urlparse

    from instantportrait.eval.clip_score import ClipScorer
    from instantportrait.hub import hub_reachable, offline_requested

    try:
        scorer = ClipScorer(None if clip is None else str(clip))
    except ModelNotAvailableError:  # INSTANTPORTRAIT_CLIP names a missing file: an explicit choice, reported as is
        return None
    if scorer.expected_path.is_file():
        return None
    if download and scorer.url and not offline_requested():
        url = urlparse(scorer.url)
        if hub_reachable(f"{url.scheme}://{url.netloc}"):
            return None
    return DEMO_CLIP
