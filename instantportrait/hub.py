"""Finding models on disk or on the Hub, failing fast offline, and model cards.

``locate(spec)`` is the single door every loader goes through: a local folder is used as is; a Hub repo is looked up
in the local cache first; only when it is missing do we try the network, and only after a 3-second reachability
probe, so that an offline machine gets a clear :class:`ModelNotAvailableError` in well under 10 seconds instead of a
retry loop.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from .config import ModelSpec
from .errors import ModelNotAvailableError

PROBE_TIMEOUT_S = 3.0


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


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
                f"`python -m instantportrait download {spec.key}` on a machine with network")
    if spec.kind == "clip":
        return (f"run `python -m instantportrait download {spec.key}` on a machine with network, or pass a local "
                f"weights file via {spec.env_var}=/path/to/model.pt")
    return (f"run `python -m instantportrait download {spec.key}` (or `hf download {spec.repo_id}"
            f" --revision {spec.revision}`) on a machine with network and copy the cache, or point "
            f"{spec.env_var} at a local folder")


def _not_available(spec: ModelSpec, why: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(f"Model {spec.describe()} is not available: {why}. To get it, {how_to_get(spec)}.")


def cached_snapshot(spec: ModelSpec, cache_dir: str | Path | None = None) -> Path | None:
    """The local snapshot folder of a Hub model if the cache holds it (no network), else None."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(spec.repo_id, revision=spec.revision, cache_dir=cache_dir, local_files_only=True,
                                 allow_patterns=list(spec.allow_patterns) or None)
    except Exception:  # LocalEntryNotFoundError, invalid repo id, ...: all mean "not cached"
        return None
    path = Path(path)
    return path if any(path.iterdir()) else None


def locate(spec: ModelSpec, *, cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """A local folder holding ``spec``; downloads it when allowed and reachable, else raises fast."""
    local = Path(spec.repo_id).expanduser()
    if local.exists():
        return local
    if spec.kind != "diffusers":
        raise _not_available(spec, f"{spec.kind} models are located by their own loader")
    cached = cached_snapshot(spec, cache_dir)
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


INSIGHTFACE_NOTE = (
    "The identity losses used in training (and the evaluation face model) rely on insightface-derived ArcFace "
    "weights, which insightface releases for **non-commercial research only**. Check those terms before any "
    "commercial use of this checkpoint or of models trained with it."
)


def model_card(info: dict) -> str:
    """A Hub model card (YAML header + Markdown) from a dict of facts about the checkpoint.

    Known keys (all optional): ``name``, ``base_model``, ``licence``, ``training`` (a config dict), ``data``
    (description), ``metrics`` (a dict of name -> value), ``toy`` (bool: a demo model on synthetic data),
    ``timestep``, ``start``, ``notes``.
    """
    import yaml

    name = info.get("name", "IPNet")
    base = info.get("base_model")
    header = {
        "library_name": "diffusers",
        "pipeline_tag": "image-to-image",
        "license": info.get("licence", "openrail"),
        "tags": ["instantportrait", "ipnet", "instruction-based-editing", "portrait", "one-step"],
    }
    if base:
        header["base_model"] = base
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    if info.get("toy"):
        lines += ["> **Toy model.** Trained on a small synthetic portrait world by this project's trainers, to make "
                  "the offline demo and tests honest. It edits the synthetic portraits it was trained on; it does "
                  "not edit real photographs.", ""]
    lines += [
        "One-step instruction-based portrait editor from the InstantPortrait project (our open implementation of "
        "*InstantPortrait: One-Step Portrait Editing via Diffusion Multi-Objective Distillation*, ICLR 2025).",
        "",
        "## Use",
        "```python",
        "import torch",
        "from instantportrait import InstantPortraitPipeline",
        f"pipe = InstantPortraitPipeline.from_pretrained({info.get('repo_id', 'PATH_OR_REPO')!r})",
        "out = pipe(image, \"wearing hipster glasses\", num_inference_steps=1,",
        "           generator=torch.Generator().manual_seed(0)).images[0]",
        "```",
        "",
        f"Fixed student timestep: {info.get('timestep', 'n/a')}; start latent: {info.get('start', 'n/a')}. "
        "`num_inference_steps=2` runs the style boost (the first output becomes the second step's source).",
        "",
        "## Training recipe",
    ]
    training = info.get("training")
    if training:
        lines += ["```yaml", yaml.safe_dump(training, sort_keys=True).strip(), "```"]
    else:
        lines += ["Not recorded."]
    lines += ["", "## Data", info.get("data", "Not recorded."), ""]
    metrics = info.get("metrics")
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines += [""]
    lines += [
        "## Intended use",
        "Research and demos of fast, identity-preserving portrait edits (filters, AR, video calls). Not for "
        "deceptive impersonation, non-consensual edits of real people, or identity verification.",
        "",
        "## Limitations",
        "Edits are limited to the instruction categories seen in training; identity preservation degrades on "
        "extreme poses, occlusions and several faces.",
        "",
        "## Licence notes",
        INSIGHTFACE_NOTE,
        "",
    ]
    if info.get("notes"):
        lines += ["## Notes", str(info["notes"]), ""]
    return "\n".join(lines)
