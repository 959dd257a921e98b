"""When to score with the shipped toy demo scorers instead of the default ones (shared by the app and the benchmark).

Face pack: by what the image is, never by what is installed. The demo face pack
(:data:`~instantportrait.config.DEMO_FACE_PACK`) was trained on the synthetic demo-world portraits and means nothing
on a photo, so it replaces the default pack (``buffalo_l``) only for demo-world images, and only when the caller did
not name a pack; on photos a missing default is reported (the benchmark) or replaced by dlib (the app), see
:mod:`instantportrait.eval.scorer`.

CLIP: the default (``ViT-L/14``) is often not on an offline machine; if the caller did not name one and the default
cannot be used here, the demo CLIP (:data:`~instantportrait.config.DEMO_CLIP`) takes its place and the caller labels
its numbers as coming from a toy scorer. An explicitly named scorer is never replaced. The checks are cheap: a file
test and (for a CLIP that may be downloaded) a reachability probe.
"""

from __future__ import annotations

from pathlib import Path

from instantportrait.config import DEMO_CLIP, DEMO_FACE_PACK, MODELS
from instantportrait.errors import ModelNotAvailableError

DEFAULT_FACE_PACK = "buffalo_l"
DEFAULT_CLIP = MODELS["clip"].repo_id  # "ViT-L/14"


def demo_face_pack_for(pack: str | Path | None, *, demo_world: bool) -> Path | None:
    """The demo face pack folder if ``pack`` is the default pack, the images are ``demo_world`` portraits and the
    demo pack is shipped; else ``None`` (use ``pack`` as it is)."""
    if not demo_world or pack is None or str(pack) != DEFAULT_FACE_PACK:
        return None
    return DEMO_FACE_PACK if (DEMO_FACE_PACK / "README.md").is_file() else None


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
