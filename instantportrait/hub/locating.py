"""Finding models on disk or on the Hub and failing fast offline: the offline flag, the reachability probe, what to
tell a user who lacks a model, and ``locate``.

``locate(spec)`` is the single door every loader goes through: a local folder is used as is; a Hub repo is looked up
in the local cache first; only when it is missing do we try the network, and only after a 3-second reachability
probe, so that an offline machine gets a clear :class:`ModelNotAvailableError` in well under 10 seconds instead of a
retry loop. Callers that tests patch (``hub_reachable``, ``offline_requested``) look them up in this module.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from instantportrait.config import ModelSpec
from instantportrait.errors import ModelNotAvailableError
from instantportrait.hub import cache
from instantportrait.hub.cache import hub_endpoint

PROBE_TIMEOUT_S = 3.0


def offline_requested() -> bool:
    return any(os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "INSTANTPORTRAIT_OFFLINE"))


def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A TCP connect to the Hub endpoint within ``timeout`` seconds (DNS included). Never raises."""
    if offline_requested():
        return False
    url = urlparse(endpoint or hub_endpoint())
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores socket timeouts, so the probe runs in a daemon thread we stop waiting for.
    import threading

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(result and result[0])


def how_to_get(spec: ModelSpec) -> str:
    if spec.kind == "insightface":
        return (f"put the pack's .onnx files in ~/.insightface/models/{spec.repo_id}/ (or pass a folder), e.g. with "
                f"`python -m instantportrait download {spec.key} --from-zip {spec.repo_id}.zip` (a zip you "
                f"downloaded) or `python -m instantportrait download {spec.key} --insightface-mirror <user>/<repo>` "
                "(a Hugging Face mirror of the pack) on a machine with network")
    if spec.kind == "clip":
        return (f"run `python -m instantportrait download {spec.key}` on a machine with network, or pass a local "
                f"weights file via {spec.env_var}=/path/to/model.pt")
    return (f"run `python -m instantportrait download {spec.key}` (or `hf download {spec.repo_id}"
            f" --revision {spec.revision}`) on a machine with network and copy the cache, or point "
            f"{spec.env_var} at a local folder")


def _not_available(spec: ModelSpec, why: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(f"Model {spec.describe()} is not available: {why}. To get it, {how_to_get(spec)}.")



def locate(spec: ModelSpec, *, cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """A local folder holding ``spec``; downloads it when allowed and reachable, else raises fast."""
    local = Path(spec.repo_id).expanduser()
    if local.exists():
        return local
    if spec.kind != "diffusers":
        raise _not_available(spec, f"{spec.kind} models are located by their own loader")
    cached = cache.cached_snapshot(spec, cache_dir)
    if cached is not None:
        return cached
    if not download:
        raise _not_available(spec, "it is not in the local Hugging Face cache")
    if offline_requested():
        raise _not_available(spec, "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    if not hub_reachable():
        raise _not_available(spec, f"it is not in the local Hugging Face cache and {hub_endpoint()} cannot be "
                                   "reached")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec.repo_id, revision=spec.revision, cache_dir=cache_dir,
                                      allow_patterns=list(spec.allow_patterns) or None))
    except Exception as exc:  # repository not found, gated, disk full...
        raise _not_available(spec, f"download failed ({type(exc).__name__}: {exc})") from exc

