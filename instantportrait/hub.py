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

from instantportrait.config import ModelSpec
from instantportrait.errors import ModelNotAvailableError

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


def _card_head(info: dict, default_name: str, tags: list[str], toy_note: str) -> list[str]:
    """YAML header, title and (for toy models) the toy warning: the start every model card shares."""
    import yaml

    header = {"library_name": "diffusers", "pipeline_tag": "image-to-image",
              "license": info.get("licence", "openrail"), "tags": tags}
    if info.get("base_model"):
        header["base_model"] = info["base_model"]
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "", f"# {info.get('name', default_name)}",
             ""]
    if info.get("toy"):
        lines += [f"> **Toy model.** {toy_note}", ""]
    return lines


def _card_recipe(info: dict) -> list[str]:
    """The training config, data description and metrics sections every model card shares."""
    import yaml

    training = info.get("training")
    lines = ["## Training recipe"]
    lines += ["```yaml", yaml.safe_dump(training, sort_keys=True).strip(), "```"] if training else ["Not recorded."]
    lines += ["", "## Data", info.get("data", "Not recorded."), ""]
    metrics = info.get("metrics")
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines += [""]
    return lines


def model_card(info: dict) -> str:
    """A Hub model card (YAML header + Markdown) from a dict of facts about the checkpoint.

    Known keys (all optional): ``name``, ``base_model``, ``licence``, ``training`` (a config dict), ``data``
    (description), ``metrics`` (a dict of name -> value), ``toy`` (bool: a demo model on synthetic data),
    ``timestep``, ``start``, ``notes``.
    """

    lines = _card_head(info, "IPNet", ["instantportrait", "ipnet", "instruction-based-editing", "portrait",
                                       "one-step"],
                       "Trained on a small synthetic portrait world by this project's trainers, to make the offline "
                       "demo and tests honest. It edits the synthetic portraits it was trained on; it does not edit "
                       "real photographs.")
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
    ]
    lines += _card_recipe(info)
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


# ---------------------------------------------------------------------------------------------------------------------
# The local Hugging Face cache: where it is, what a snapshot holds, whether it is complete (no network, no torch)

_COMMIT_HASH_LEN = 40
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The Hub cache folder, read from the environment *now* (huggingface_hub reads it once, at import).

    ``cache_dir`` if given, else ``$HF_HUB_CACHE``, else the legacy ``$HUGGINGFACE_HUB_CACHE``, else
    ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(var, "").strip()
        if value:
            return Path(os.path.expandvars(value)).expanduser()
    home = os.environ.get("HF_HOME", "").strip()
    if home:
        return Path(os.path.expandvars(home)).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _is_commit_hash(revision: str) -> bool:
    return len(revision) == _COMMIT_HASH_LEN and all(c in "0123456789abcdef" for c in revision)


def repo_cache_folder(repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """``<cache>/models--org--name``: where the Hub cache keeps one model repository."""
    return hub_cache_dir(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def find_snapshot(spec: ModelSpec, cache_dir: str | Path | None = None) -> Path | None:
    """The snapshot folder for ``spec.revision`` if the cache has one (complete or not), else None. File reads only.

    A commit hash names ``snapshots/<hash>`` directly; a branch or tag goes through ``refs/<name>``, as in
    huggingface_hub.
    """
    storage = repo_cache_folder(spec.repo_id, cache_dir)
    revision = spec.revision or "main"
    commit = revision if _is_commit_hash(revision) else None
    if commit is None:
        ref = storage / "refs" / revision
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
    folder = storage / "snapshots" / commit
    return folder if folder.is_dir() else None


def _files_under(folder: Path) -> list[str]:
    """Repo-relative posix paths of the files (followed symlinks that resolve) under ``folder``."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _matches(path: str, patterns: tuple[str, ...] | list[str]) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(path, pat) for pat in patterns)


def _expected_from_tree_cache(spec: ModelSpec, snapshot: Path) -> list[str] | None:
    """The files ``download`` fetched for ``spec`` per huggingface_hub's cached tree listing, or None if unknown."""
    try:
        from huggingface_hub import get_cached_repo_tree
    except ImportError:  # older huggingface_hub: no tree cache
        return None
    try:
        tree = get_cached_repo_tree(spec.repo_id, revision=snapshot.name, cache_dir=snapshot.parent.parent.parent)
    except Exception:  # CachedRepoTreeNotFoundError: a cache filled by hand or by an older client
        return None
    paths = [f.path for f in tree]
    return [p for p in paths if not spec.allow_patterns or _matches(p, spec.allow_patterns)]


def missing_files(spec: ModelSpec, folder: Path) -> list[str]:
    """What ``folder`` (a snapshot or a local model folder) lacks for ``spec`` to load; empty when complete.

    Checked, in order: ``spec.required_files`` (glob patterns that must each match a file); the files the Hub
    listing (huggingface_hub's cached tree, written by ``download``) says the allow-patterns select; for a repository
    that is not a pipeline (no ``model_index.json`` among the allow-patterns), every literal allow-pattern; and for a
    diffusers pipeline, every component in ``model_index.json`` that the allow-patterns cover must have its config
    and, for models, a weight file (of ``spec.variant`` when set). Directory listings and one small JSON read only.
    """
    import json

    present = _files_under(folder)
    present_set = set(present)
    missing: list[str] = []
    for pattern in spec.required_files:
        if not any(_matches(p, (pattern,)) for p in present):
            missing.append(pattern)
    expected = _expected_from_tree_cache(spec, folder) if folder.parent.name == "snapshots" else None
    if expected is not None:
        missing += [p for p in expected if p not in present_set and p not in missing]
    if spec.kind != "diffusers" or spec.required_files:
        return missing
    if spec.allow_patterns and not _matches("model_index.json", spec.allow_patterns):
        # A single model or loose files (a ControlNet, an adapter .bin): every literal pattern names a needed file.
        literal = [p for p in spec.allow_patterns if not any(c in p for c in "*?[")]
        missing += [p for p in literal if p not in present_set and p not in missing]
        return missing if present else [*missing, "(no files)"]
    index = folder / "model_index.json"
    if not index.is_file():
        return missing if "model_index.json" in missing else [*missing, "model_index.json"]
    try:
        components = json.loads(index.read_text())
    except ValueError:
        return [*missing, "model_index.json (not valid JSON)"]
    patterns = spec.allow_patterns or ("**",)
    for name, entry in components.items():
        if name.startswith("_") or not isinstance(entry, list) or None in entry:
            continue
        if any(m.startswith(name + "/") for m in missing):
            continue  # already reported file by file
        probes = (f"{name}/config.json", f"{name}/scheduler_config.json", f"{name}/vocab.json",
                  f"{name}/diffusion_pytorch_model.safetensors", f"{name}/model.safetensors")
        if not any(_matches(p, patterns) for p in probes):
            continue  # not fetched on purpose (e.g. the safety checker)
        files = [p[len(name) + 1:] for p in present if p.startswith(name + "/")]
        if not files:
            missing.append(f"{name}/")
            continue
        if "config.json" in files:  # a model: needs weights too
            weights = [f for f in files if f.endswith(_WEIGHT_SUFFIXES)]
            if spec.variant:
                weights = [f for f in weights if f".{spec.variant}." in f]
            if not weights:
                kind = f"{spec.variant} " if spec.variant else ""
                missing.append(f"{name}/ ({kind}weights)")
    return missing


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (symlinks followed, so a cache snapshot counts its blobs)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------------------------------
# Verifying what arrived


def safetensors_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file, checked against the file size; ValueError if it does not parse."""
    import json
    import struct

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path.name}: {size} bytes, too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or n > min(size - 8, 100_000_000):
            raise ValueError(f"{path.name}: header length {n} does not fit the file ({size} bytes): truncated or "
                             "not a safetensors file")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise ValueError(f"{path.name}: the safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}: the safetensors header is not a JSON object")
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ValueError(f"{path.name}: the header describes {8 + n + end} bytes but the file has {size}: truncated")
    return header


def verify_file(path: str | Path, expected_size: int | None = None) -> str | None:
    """Why ``path`` is not a usable model file (missing, empty, wrong size, unparsable), or None if it looks right.

    Cheap checks only: ``.safetensors`` headers, ``.json`` syntax, ``.bin``/``.pt`` zip structure (torch's format).
    """
    import json
    import zipfile

    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    if expected_size is not None and size != expected_size:
        return f"{size} bytes, expected {expected_size} (incomplete download)"
    try:
        if path.suffix == ".safetensors":
            safetensors_header(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".bin", ".pt", ".pth") and not zipfile.is_zipfile(path):
            return "not a torch zip archive (truncated or a legacy pickle)"
    except (ValueError, UnicodeDecodeError) as exc:
        return str(exc)
    return None


def verify_snapshot(spec: ModelSpec, folder: Path) -> list[str]:
    """Problems with a downloaded snapshot, one line per file (``path: reason``); empty when it is complete and sane."""
    sizes: dict[str, int] = {}
    if folder.parent.name == "snapshots":
        try:
            from huggingface_hub import get_cached_repo_tree

            sizes = {f.path: f.size for f in get_cached_repo_tree(spec.repo_id, revision=folder.name,
                                                                  cache_dir=folder.parent.parent.parent)}
        except Exception:
            sizes = {}
    problems = [f"{m}: missing" for m in missing_files(spec, folder)]
    for rel in _files_under(folder):
        why = verify_file(folder / rel, sizes.get(rel))
        if why:
            problems.append(f"{rel}: {why}")
    return problems


# ---------------------------------------------------------------------------------------------------------------------
# Fetching a Hub model into the cache


def _http_cause(exc: BaseException) -> tuple[int, str] | None:
    """``(status, url)`` of the HTTP error at the root of ``exc``'s chain, if there is one."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status, str(getattr(getattr(response, "request", None), "url", "") or "")
        e = e.__cause__ or e.__context__
    return None


def _download_error_reason(exc: Exception, spec: ModelSpec, cache: Path) -> str:
    """A one-line reason for a failed download, with what to do about it."""
    import errno
    from urllib.parse import unquote

    name = type(exc).__name__
    if name == "GatedRepoError":
        return (f"the repository is gated: accept its terms on {hub_endpoint()}/{spec.repo_id} and log in "
                "(`hf auth login` or HF_TOKEN)")
    if name == "RepositoryNotFoundError":
        hint = " (this project's checkpoint is not published yet)" if not spec.published else ""
        return (f"repository {spec.repo_id} not found on {hub_endpoint()}{hint}, or it is private and you are not "
                "logged in (`hf auth login` or HF_TOKEN)")
    if name == "RevisionNotFoundError":
        return f"revision {spec.revision!r} does not exist in {spec.repo_id}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the device holding {cache} (about {spec.size_gb:g} GB needed)"
    http = _http_cause(exc)
    if http is not None:
        status, url = http
        marker = "/resolve/"
        file = unquote(url.split(marker, 1)[1].split("/", 1)[1].split("?")[0]) if marker in url else url
        return f"the Hub answered HTTP {status} for {file or spec.repo_id} ({name})"
    return f"{name}: {exc}"


def fetch_snapshot(spec: ModelSpec, cache_dir: str | Path | None = None, *, force: bool = False,
                   token: str | None = None) -> Path:
    """Download ``spec`` (only its ``allow_patterns``) into the Hub cache and return the snapshot folder.

    huggingface_hub resumes interrupted downloads (partial ``.incomplete`` blobs are kept), so re-running after a
    failure continues where it stopped. Raises :class:`ModelNotAvailableError` naming the files still missing and the
    reason. Does not probe the network first: callers check :func:`offline_requested` / :func:`hub_reachable`.
    """
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir(cache_dir)
    try:
        path = Path(snapshot_download(spec.repo_id, revision=spec.revision, cache_dir=cache,
                                      allow_patterns=list(spec.allow_patterns) or None, force_download=force,
                                      token=token, endpoint=hub_endpoint()))
    except Exception as exc:
        reason = _download_error_reason(exc, spec, cache)
        snapshot = find_snapshot(spec, cache)
        still = missing_files(spec, snapshot) if snapshot is not None else []
        which = f"; files not downloaded: {', '.join(still[:6])}{' ...' if len(still) > 6 else ''}" if still else ""
        http = _http_cause(exc)
        permanent = type(exc).__name__ in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError") or (
            http is not None and 400 <= http[0] < 500 and http[0] != 429)
        retry = "" if permanent else " Run the same command again to resume (partial files are kept)."
        raise ModelNotAvailableError(f"Downloading {spec.describe()} failed: {reason}{which}.{retry}") from exc
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Publishing trained checkpoints

TRAINING_CONFIG_FILES = ("training_config.yaml", "training_config.yml", "training_config.json", "train_config.yaml",
                         "train_config.json", "config.yaml", "args.json")
# Never uploaded: trainer state (accelerate's checkpoint-*/, optimizer, lr-scheduler and RNG states), logs, partial
# files, caches. fnmatch semantics as in huggingface_hub: `*` also matches `/`.
PUBLISH_IGNORE = ("checkpoint-*", "checkpoints/*", "logs/*", "*optimizer*", "scheduler.bin", "*random_states*",
                  "*.pkl", "*.part", "*.incomplete", ".git/*", "*__pycache__*", ".cache/*", "*.DS_Store")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SECRET_WORDS = ("token", "password", "secret", "api_key", "apikey", "credential")
IPNET_CLASS = "InstantPortraitPipeline"
IDENET_CLASS = "StableDiffusionInstructPix2PixPipeline"


def read_training_config(folder: str | Path, *, redact: bool = True) -> tuple[dict, Path | None]:
    """The training configuration a trainer saved next to its checkpoint (first of :data:`TRAINING_CONFIG_FILES`),
    with secrets (values of keys naming tokens, passwords, ...) redacted; ``({}, None)`` when there is none."""
    import json

    import yaml

    folder = Path(folder)
    for name in TRAINING_CONFIG_FILES:
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text()
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ValueError(f"the training config {path} does not parse ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"the training config {path} is not a mapping of settings")
        return (_redact(data) if redact else data), path
    return {}, None


def _redact(value):
    if isinstance(value, dict):
        return {k: ("<redacted>" if any(w in str(k).lower() for w in _SECRET_WORDS) and v else _redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def load_metrics(path: str | Path, max_entries: int = 60) -> dict[str, float | int | str]:
    """Metrics for a model card from a benchmark summary JSON.

    Accepted shapes: ``{"metrics": {...}}``; a flat ``{name: value}``; nested ``{group: {name: value}}`` (flattened
    to ``group/name``); a list of rows (``[{"method": "ipnet", "clip_t": 0.3, ...}, ...]``, flattened to
    ``method/name``). Only numbers and short strings are kept, at most ``max_entries``.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"metrics file {path} is not valid JSON ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("metrics"), (dict, list)):
        data = data["metrics"]
    out: dict[str, float | int | str] = {}

    def keep(key: str, value) -> None:
        if len(out) >= max_entries or isinstance(value, bool):
            return
        if isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= 40):
            out[key] = value

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        else:
            keep(prefix, value)

    if isinstance(data, list):
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                continue
            label = str(row.get("method", row.get("name", i)))
            for k, v in row.items():
                if k not in ("method", "name"):
                    walk(f"{label}/{k}", v)
    elif isinstance(data, dict):
        walk("", data)
    else:
        raise ValueError(f"metrics file {path} holds a {type(data).__name__}, expected an object or a list of rows")
    if not out:
        raise ValueError(f"metrics file {path} holds no numeric metrics")
    return out


def _data_description(training: dict) -> str | None:
    """A sentence about the training data from the config's data-related settings, if any."""
    if isinstance(training.get("data"), str):
        return training["data"]
    items = {k: v for k, v in training.items() if "data" in str(k).lower() and not isinstance(v, dict)}
    if isinstance(training.get("data"), dict):
        items.update({f"data.{k}": v for k, v in training["data"].items() if not isinstance(v, dict)})
    if not items:
        return None
    return "Training data settings: " + "; ".join(f"`{k}` = `{v}`" for k, v in items.items()) + "."


def idenet_model_card(info: dict) -> str:
    """A Hub model card for an IDE-Net (teacher) checkpoint, saved in InstructPix2Pix's format.

    Same keys as :func:`model_card` (``name``, ``repo_id``, ``base_model``, ``licence``, ``training``, ``data``,
    ``metrics``, ``toy``, ``notes``).
    """
    lines = _card_head(info, "IDE-Net", ["instantportrait", "idenet", "instruct-pix2pix", "instruction-based-editing",
                                         "portrait"],
                       "Trained on a small synthetic portrait world by this project's trainers; it does not edit real "
                       "photographs.")
    lines += [
        "IDE-Net, the identity-enhanced multi-step teacher of the InstantPortrait project (our open implementation of "
        "*InstantPortrait: One-Step Portrait Editing via Diffusion Multi-Objective Distillation*, ICLR 2025): "
        "InstructPix2Pix fine-tuned on paired portrait edits with an identity loss. IPNet is distilled from it.",
        "",
        "## Use",
        "```python",
        "import torch",
        "from diffusers import StableDiffusionInstructPix2PixPipeline",
        f"pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained({info.get('repo_id', 'PATH_OR_REPO')!r},",
        "                                                          safety_checker=None)",
        "out = pipe(\"wearing hipster glasses\", image=image, num_inference_steps=50, image_guidance_scale=1.5,",
        "           guidance_scale=7.5, generator=torch.Generator().manual_seed(0)).images[0]",
        "```",
        "",
    ]
    lines += _card_recipe(info)
    lines += ["## Intended use",
              "Research, and as the teacher for IPNet distillation. Not for deceptive impersonation, non-consensual "
              "edits of real people, or identity verification.", "",
              "## Licence notes", INSIGHTFACE_NOTE, ""]
    if info.get("notes"):
        lines += ["## Notes", str(info["notes"]), ""]
    return "\n".join(lines)


def checkpoint_kind(folder: str | Path) -> str:
    """``"ipnet"`` for an InstantPortraitPipeline folder, ``"idenet"`` for an InstructPix2Pix-format folder."""
    import json

    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{folder} is not a diffusers checkpoint folder (no model_index.json): pass the folder "
                         "the trainer saved its final pipeline to")
    cls = json.loads(index.read_text()).get("_class_name")
    if cls == IPNET_CLASS:
        return "ipnet"
    if cls == IDENET_CLASS:
        return "idenet"
    raise ValueError(f"{folder} holds a {cls} checkpoint; publish_checkpoint publishes {IPNET_CLASS} (IPNet) or "
                     f"{IDENET_CLASS} (IDE-Net) folders")


def checkpoint_card_info(folder: str | Path, repo_id: str | None = None, card_info: dict | None = None,
                         metrics_file: str | Path | None = None) -> dict:
    """Everything known about a checkpoint for its card: the folder's saved card facts, the training config the
    trainer saved there, the benchmark metrics, then ``card_info`` (explicit values win)."""
    import json

    folder = Path(folder)
    info: dict = {}
    saved = folder / "instantportrait_card.json"
    if saved.is_file():
        info.update(json.loads(saved.read_text()))
    training, _ = read_training_config(folder)
    if training:
        info["training"] = training
        data = _data_description(training)
        if data:
            info["data"] = data
    if metrics_file is not None:
        info["metrics"] = load_metrics(metrics_file)
    info.update(card_info or {})
    if repo_id:
        info["repo_id"] = repo_id
        info.setdefault("name", repo_id.rsplit("/", 1)[-1])
    return info


def publish_checkpoint(folder: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
                       card_info: dict | None = None, metrics_file: str | Path | None = None,
                       token: str | None = None, api=None) -> str:
    """Upload a trained checkpoint folder to the Hub with a regenerated model card; returns the commit URL.

    ``folder`` is an IPNet pipeline folder (``InstantPortraitPipeline.save_pretrained``) or an IDE-Net folder in
    InstructPix2Pix format. The card (``README.md``, rewritten in ``folder``) is built from the folder's
    ``instantportrait_card.json``, the training config saved there (:data:`TRAINING_CONFIG_FILES`, secrets
    redacted), the benchmark summary ``metrics_file`` and ``card_info`` (wins). Weights must be safetensors (pickled
    ``.bin``/``.pt`` files are refused) and every safetensors header must parse. Trainer state (``checkpoint-*/``,
    optimizer, logs) is not uploaded. ``revision`` uploads to that branch (created if needed). ``api`` defaults to
    ``huggingface_hub.HfApi(token=token)``; pass a stand-in to test without network.

    Load it back with ``InstantPortraitPipeline.from_pretrained(repo_id, revision=...)`` (IPNet) or
    ``StableDiffusionInstructPix2PixPipeline.from_pretrained(repo_id, revision=...)`` (IDE-Net).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'user/name', got {repo_id!r}")
    kind = checkpoint_kind(folder)
    ignore = list(PUBLISH_IGNORE)
    raw_config, config_path = read_training_config(folder, redact=False)
    if config_path is not None and _redact(raw_config) != raw_config:
        ignore.append(config_path.name)  # it holds secrets: the card carries the redacted copy instead
    files = [p for p in _files_under(folder) if not _matches(p, ignore)]
    pickles = [p for p in files if p.endswith(_PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(f"{folder} holds pickled weights ({', '.join(pickles[:5])}); publish safetensors only "
                         "(save with safe_serialization=True) or move them out")
    bad = [f"{p}: {why}" for p in files if p.endswith(".safetensors") and (why := verify_file(folder / p))]
    if bad:
        raise ValueError(f"{folder} has unreadable weights: {'; '.join(bad)}")
    info = checkpoint_card_info(folder, repo_id, card_info, metrics_file)
    card = model_card(info) if kind == "ipnet" else idenet_model_card(info)
    (folder / "README.md").write_text(card)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                               commit_message=f"Upload {'IPNet' if kind == 'ipnet' else 'IDE-Net'} checkpoint",
                               ignore_patterns=ignore)
    return str(getattr(commit, "commit_url", commit))
