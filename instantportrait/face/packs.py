"""Putting insightface model packs where insightface looks for them, and checking them.

    python -m instantportrait download antelopev2 --from-zip ~/Downloads/antelopev2.zip
    python -m instantportrait download buffalo_l --insightface-mirror <user>/<repo>

insightface loads a pack ``name`` from ``<root>/models/<name>/*.onnx`` (``root`` = ``$INSIGHTFACE_ROOT`` or
``~/.insightface``, see :func:`instantportrait.face.encoder.default_root`). Its own downloader has no timeout and the
official
``antelopev2`` link is dead, so packs come from a zip you have or from a Hugging Face mirror, and land here:

* the ``.onnx`` files go *directly* into ``<root>/models/<pack>/``, whatever folder nesting the zip had (the classic
  mistake is ``antelopev2/antelopev2/*.onnx``, which insightface reports as ``assert 'detection' in self.models``);
* every file is parsed with ``onnx`` and routed the way insightface routes it (>= 5 outputs: detector; a square input
  of at least 112 px: recogniser; 192 px: landmarks; 96 px: gender/age), and the pack must have a detector and a
  recogniser, before anything replaces an existing folder (files are unpacked into a hidden staging folder first);
* a working pack is never overwritten unless ``force=True``; a broken one is moved aside to ``<pack>.replaced-<n>``.

insightface's pretrained packs are released for non-commercial research only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from instantportrait.errors import ModelNotAvailableError
from instantportrait.face.encoder import check_pack_folder, resolve_pack

MIRROR_ENV = "INSTANTPORTRAIT_INSIGHTFACE_MIRROR"
MIRROR_PATH_ENV = "INSTANTPORTRAIT_INSIGHTFACE_PATH"
# Where a pack sits inside a mirror repository: a folder of .onnx files, or a zip if the path ends with ".zip".
DEFAULT_MIRROR_PATH = "models/{pack}"
MIN_RECOGNITION_SIZE = 112


@dataclass
class PackReport:
    """A pack folder and what each of its ``.onnx`` files is (``detection``, ``recognition``, ``landmark``,
    ``attribute``, ``swapper`` or ``unknown``)."""

    pack: str
    folder: Path
    roles: dict[str, str] = field(default_factory=dict)
    action: str = "checked"  # checked | placed | kept | repaired

    @property
    def detection(self) -> list[str]:
        return sorted(f for f, r in self.roles.items() if r == "detection")

    @property
    def recognition(self) -> list[str]:
        return sorted(f for f, r in self.roles.items() if r == "recognition")

    def summary(self) -> str:
        files = ", ".join(f"{f} ({r})" for f, r in sorted(self.roles.items()))
        return f"{self.pack}: {self.folder} [{files}]"


def onnx_role(path: str | Path) -> str:
    """How insightface 2.x would route this ONNX file (see its ``model_zoo.ModelRouter``); ValueError if unreadable."""
    import onnx

    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path.name} is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, truncated protobuf...
        raise ValueError(f"{path.name} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(graph.output) >= 5:
        return "detection"
    if not inputs:
        return "unknown"
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        return "unknown"
    h, w = dims[2], dims[3]
    if h == w == 192:
        return "landmark"
    if h == w == 96:
        return "attribute"
    if len(inputs) == 2 and h == w == 128:
        return "swapper"
    if h is not None and h == w and h >= MIN_RECOGNITION_SIZE and h % 16 == 0:
        return "recognition"
    return "unknown"


def verify_pack(pack: str, root: str | Path | None = None, folder: str | Path | None = None) -> PackReport:
    """Check a placed pack: the layout (fast, no parsing), the files the config expects, then each ONNX file's role.

    Raises :class:`ModelNotAvailableError` naming the file and the reason.
    """
    spec, default_folder = resolve_pack(pack, root)
    folder = Path(folder) if folder is not None else default_folder
    files = check_pack_folder(spec, folder)
    names = {p.name for p in files}
    absent = [f for f in spec.required_files if f not in names]
    if absent:
        raise ModelNotAvailableError(f"insightface pack {spec.key!r} in {folder} lacks {', '.join(absent)} (has "
                                     f"{', '.join(sorted(names))}): a different or incomplete pack")
    report = PackReport(spec.key, folder)
    for path in files:
        try:
            report.roles[path.name] = onnx_role(path)
        except ValueError as exc:
            raise ModelNotAvailableError(f"insightface pack {spec.key!r}: {folder / path.name}: {exc}; download the "
                                         "pack again") from exc
    if not report.detection or not report.recognition:
        raise ModelNotAvailableError(
            f"insightface pack {spec.key!r} in {folder} has no {'detector' if not report.detection else 'recogniser'}"
            f" (files: {', '.join(f'{f} = {r}' for f, r in sorted(report.roles.items()))})")
    return report


def _onnx_members(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The zip's .onnx files, without macOS resource forks and folders."""
    out = []
    for info in zf.infolist():
        parts = PurePosixPath(info.filename).parts
        if info.is_dir() or not info.filename.lower().endswith(".onnx"):
            continue
        if "__MACOSX" in parts or parts[-1].startswith("._"):
            continue
        out.append(info)
    return out


def _pick_group(groups: dict[str, list], pack: str, source: str) -> list:
    """The one folder of .onnx files to take, when the source has several (e.g. a zip with every pack)."""
    if len(groups) == 1:
        return next(iter(groups.values()))
    named = [k for k in groups if PurePosixPath(k).name == pack]
    if len(named) == 1:
        return groups[named[0]]
    listing = "; ".join(f"{k or '.'}/ ({len(v)} files)" for k, v in sorted(groups.items()))
    raise ModelNotAvailableError(f"{source} holds .onnx files in several folders ({listing}) and none is named "
                                 f"{pack!r}: unpack the right one by hand into the pack folder")


def _move_aside(folder: Path) -> Path:
    n = 1
    while (aside := folder.with_name(f"{folder.name}.replaced-{n}")).exists():
        n += 1
    folder.rename(aside)
    return aside


def _install(staging: Path, pack: str, target: Path, force: bool) -> PackReport:
    """Verify ``staging`` and move it to ``target``; an existing working pack is kept unless ``force``."""
    report = verify_pack(pack, folder=staging)  # raises before anything is touched
    if target.exists():
        try:
            existing = verify_pack(pack, folder=target)
        except ModelNotAvailableError:
            existing = None
        if existing is not None and not force:
            shutil.rmtree(staging)
            existing.action = "kept"
            return existing
        _move_aside(target)
    os.replace(staging, target)
    report.folder, report.action = target, "placed"
    return report


def _staging_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))


def place_pack_from_zip(zip_path: str | Path, pack: str, root: str | Path | None = None, *,
                        force: bool = False) -> PackReport:
    """Unpack a pack zip into ``<root>/models/<pack>/`` (flat, whatever the zip's nesting), verified.

    Only ``.onnx`` files are extracted, each under its own base name (no path from the zip is ever used, so a
    malicious ``../`` entry cannot escape). Raises :class:`ModelNotAvailableError` (not a zip, no ``.onnx``, an
    unreadable model, no detector or recogniser) without touching an existing pack.
    """
    zip_path = Path(zip_path).expanduser()
    if not zip_path.is_file():
        raise ModelNotAvailableError(f"{zip_path} does not exist")
    if not zipfile.is_zipfile(zip_path):
        raise ModelNotAvailableError(f"{zip_path} is not a zip file (truncated download, or an HTML error page?)")
    spec, target = resolve_pack(pack, root)
    with zipfile.ZipFile(zip_path) as zf:
        members = _onnx_members(zf)
        if not members:
            names = ", ".join(i.filename for i in zf.infolist()[:8])
            raise ModelNotAvailableError(f"{zip_path} holds no .onnx files (contents: {names or 'nothing'})")
        groups: dict[str, list[zipfile.ZipInfo]] = {}
        for info in members:
            groups.setdefault(str(PurePosixPath(info.filename).parent).strip("."), []).append(info)
        chosen = _pick_group(groups, spec.key, str(zip_path))
        staging = _staging_dir(target)
        try:
            for info in chosen:
                with zf.open(info) as src, open(staging / PurePosixPath(info.filename).name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            return _install(staging, spec.key, target, force)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def place_pack_from_folder(source: str | Path, pack: str, root: str | Path | None = None, *,
                           force: bool = False) -> PackReport:
    """Copy a folder's ``.onnx`` files (found at its top level or one or two levels down) into the pack folder."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise ModelNotAvailableError(f"{source} is not a folder")
    spec, target = resolve_pack(pack, root)
    found = [p for pattern in ("*.onnx", "*/*.onnx", "*/*/*.onnx") for p in source.glob(pattern) if p.is_file()]
    if not found:
        raise ModelNotAvailableError(f"{source} holds no .onnx files")
    groups: dict[str, list[Path]] = {}
    for p in found:
        groups.setdefault(p.parent.relative_to(source).as_posix().strip("."), []).append(p)
    chosen = _pick_group(groups, spec.key, str(source))
    staging = _staging_dir(target)
    try:
        for p in chosen:
            shutil.copyfile(p, staging / p.name)
        return _install(staging, spec.key, target, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def repair_nested(pack: str, root: str | Path | None = None) -> PackReport | None:
    """Fix the nested-folder mistake in place: ``<pack>/<sub>/*.onnx`` (no ``.onnx`` at the top) has its files moved
    up into ``<pack>/``. Returns the verified pack, or None if the folder is not in that state."""
    _, target = resolve_pack(pack, root)
    if not target.is_dir() or any(target.glob("*.onnx")):
        return None
    subs = sorted({p.parent for p in target.glob("*/*.onnx")} | {p.parent for p in target.glob("*/*/*.onnx")})
    if len(subs) != 1:
        return None
    for p in subs[0].glob("*.onnx"):
        os.replace(p, target / p.name)
    for folder in (subs[0], *subs[0].parents):  # drop the now-empty nested folders
        if folder == target or not folder.is_relative_to(target):
            break
        try:
            folder.rmdir()
        except OSError:  # not empty: other files stay where they were
            break
    report = verify_pack(pack, root)
    report.action = "repaired"
    return report


def mirror_from_env() -> tuple[str | None, str]:
    """``($INSTANTPORTRAIT_INSIGHTFACE_MIRROR or None, $INSTANTPORTRAIT_INSIGHTFACE_PATH or the default path)``."""
    mirror = os.environ.get(MIRROR_ENV, "").strip() or None
    path = os.environ.get(MIRROR_PATH_ENV, "").strip() or DEFAULT_MIRROR_PATH
    return mirror, path


def fetch_pack_from_mirror(pack: str, mirror: str, *, path: str = DEFAULT_MIRROR_PATH, root: str | Path | None = None,
                           cache_dir: str | Path | None = None, force: bool = False,
                           token: str | None = None) -> PackReport:
    """Download a pack from a Hugging Face mirror repository (``user/repo`` or ``user/repo@revision``) and place it.

    ``path`` (``{pack}`` is replaced by the pack name) is either a folder in the repository holding the ``.onnx``
    files (default ``models/{pack}``, the layout of the common mirrors) or a ``.zip`` file. Mirrors are third-party
    copies: check who publishes one, and insightface's non-commercial licence, before use.
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    from instantportrait.config import parse_location
    from instantportrait.hub.cache import _download_error_reason, hub_cache_dir, hub_endpoint

    repo, revision = parse_location(mirror)
    spec, _ = resolve_pack(pack, root)
    inner = path.format(pack=spec.key).strip("/")
    cache = hub_cache_dir(cache_dir)
    try:
        if inner.lower().endswith(".zip"):
            local = hf_hub_download(repo, inner, revision=revision, cache_dir=cache, token=token,
                                    endpoint=hub_endpoint())
            return place_pack_from_zip(local, spec.key, root, force=force)
        folder = snapshot_download(repo, revision=revision, cache_dir=cache, token=token, endpoint=hub_endpoint(),
                                   allow_patterns=[f"{inner}/*.onnx" if inner else "*.onnx"])
    except ModelNotAvailableError:
        raise
    except Exception as exc:
        from dataclasses import replace

        why = _download_error_reason(exc, replace(spec, repo_id=repo, revision=revision or "main"), cache)
        raise ModelNotAvailableError(f"fetching insightface pack {spec.key!r} ({inner}) from mirror {mirror} failed: "
                                     f"{why}.") from exc
    source = Path(folder) / inner if inner else Path(folder)
    if not source.is_dir() or not any(source.glob("*.onnx")):
        raise ModelNotAvailableError(f"mirror {mirror} has no .onnx files under {inner or 'its root'}/: pass "
                                     "--insightface-path with the folder (or .zip) that holds the pack")
    return place_pack_from_folder(source, spec.key, root, force=force)
