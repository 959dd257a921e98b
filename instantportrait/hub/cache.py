"""The local Hugging Face cache: where it is, what a snapshot holds, whether it is complete and sane, and fetching a
Hub model into it (no torch; the network only in :func:`fetch_snapshot` and :func:`cached_snapshot`'s local lookup).
"""

from __future__ import annotations

import os
from pathlib import Path

from instantportrait.config import ModelSpec
from instantportrait.errors import ModelNotAvailableError

_COMMIT_HASH_LEN = 40
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def hub_endpoint() -> str:
    """The Hub's base URL (``$HF_ENDPOINT``, read now), for downloads, probes and messages."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


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
