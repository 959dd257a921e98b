"""Models on disk and on the Hugging Face Hub: finding them (:mod:`.locating`), the local cache and downloads
(:mod:`.cache`), model cards (:mod:`.cards`) and publishing checkpoints (:mod:`.publish`).

The public names are re-exported here so that ``from instantportrait import hub; hub.locate(spec)`` reads well. These
are *copies* of the names: to replace a function in a test, patch the module that calls it, e.g.
``instantportrait.hub.locating.hub_reachable`` (what ``locate`` and ``ClipScorer`` look up) or
``instantportrait.hub.publish.publish_checkpoint`` (what ``train.common`` looks up).
"""

from __future__ import annotations

from instantportrait.hub.cache import (
    cached_snapshot,
    fetch_snapshot,
    find_snapshot,
    folder_size,
    hub_cache_dir,
    hub_endpoint,
    missing_files,
    repo_cache_folder,
    safetensors_header,
    verify_file,
    verify_snapshot,
)
from instantportrait.hub.cards import INSIGHTFACE_NOTE, KINDS, CardKind, card_sections, model_card
from instantportrait.hub.locating import PROBE_TIMEOUT_S, how_to_get, hub_reachable, locate, offline_requested
from instantportrait.hub.publish import (
    IDENET_CLASS,
    IPNET_CLASS,
    PUBLISH_IGNORE,
    PUBLISHED_MARK,
    TRAINING_CONFIG_FILES,
    checkpoint_card_info,
    checkpoint_kind,
    load_metrics,
    publish_checkpoint,
    published_card,
    read_training_config,
)

__all__ = [
    "INSIGHTFACE_NOTE", "IDENET_CLASS", "IPNET_CLASS", "KINDS", "PROBE_TIMEOUT_S", "PUBLISHED_MARK", "PUBLISH_IGNORE",
    "TRAINING_CONFIG_FILES", "CardKind", "cached_snapshot", "card_sections", "checkpoint_card_info", "checkpoint_kind",
    "fetch_snapshot", "find_snapshot", "folder_size", "how_to_get", "hub_cache_dir", "hub_endpoint", "hub_reachable",
    "load_metrics", "locate", "missing_files", "model_card", "offline_requested", "publish_checkpoint",
    "published_card", "read_training_config", "repo_cache_folder", "safetensors_header", "verify_file",
    "verify_snapshot",
]
