"""``python -m instantportrait models`` (what the project can use, and what is here) and ``download`` (fetch it).

    python -m instantportrait models [--json] [--cache-dir DIR] [-v]
    python -m instantportrait download instructpix2pix magicbrush [--cache-dir DIR] [--revision REV]
    python -m instantportrait download --all
    python -m instantportrait download taesd          # the real-time path's tiny VAE (pipe.use_tiny_vae("taesd"))
    python -m instantportrait download antelopev2 --from-zip ~/Downloads/antelopev2.zip
    python -m instantportrait download buffalo_l --insightface-mirror <user>/<repo>

``models`` reads only the local disk (the Hugging Face cache, the insightface root, the CLIP folder, the bundled demo
models): it works offline and answers in well under a second once Python is up. ``download`` fetches Hub models with
``huggingface_hub.snapshot_download`` restricted to each model's ``allow_patterns`` (configs, tokenizers and
safetensors weights, fp16 variants where the loader uses them), resumes interrupted downloads (huggingface_hub keeps
partial files), verifies what arrived (every expected file present, sizes as listed by the Hub, safetensors headers
parse, JSON parses, insightface ONNX files route to a detector and a recogniser) and prints what to set to run
offline. Offline (``HF_HUB_OFFLINE=1``) or with the Hub unreachable it fails within seconds, one message per missing
model. Exit codes as the ``edit`` command: 0 all requested models present, 2 bad usage, 3 some model not available.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

from instantportrait.config import _DIFFUSERS_PATTERNS, DEMO_ROOT, MODELS, ModelSpec, parse_location, resolve_model
from instantportrait.errors import EXIT_INPUT, EXIT_MODEL, EXIT_OK, ModelNotAvailableError
from instantportrait.hub import (
    find_snapshot,
    folder_size,
    hub_cache_dir,
    hub_endpoint,
    hub_reachable,
    missing_files,
    offline_requested,
)

DEMO_MODELS_DIR = DEMO_ROOT
DEFAULT_CLIP_ROOT = "~/.cache/clip"  # where clip.load / ClipScorer keep variant files
GB = 1e9


@dataclass
class ModelStatus:
    """One row of ``python -m instantportrait models``.

    ``state``: ``cached`` (Hub model complete in the cache), ``present`` (insightface pack or CLIP file in place),
    ``local`` (an override points at a local folder that is complete), ``bundled`` (a demo model shipped in the
    repository), ``incomplete`` (some files missing, listed in ``missing``), ``missing``.
    """

    key: str
    kind: str
    source: str
    revision: str
    pinned: bool
    licence: str
    size_gb: float
    state: str
    location: str | None = None
    missing: list[str] = field(default_factory=list)
    note: str = ""
    description: str = ""

    @property
    def available(self) -> bool:
        return self.state in ("cached", "present", "local", "bundled")


# --------------------------------------------------------------------------------------------------------- CLIP files


def _clip_urls() -> dict[str, str]:
    """clip-anytorch's variant -> URL table, read from its source without importing it (``import clip`` pulls in
    torch and torchvision, seconds); falls back to importing it."""
    try:
        found = importlib.util.find_spec("clip")
        if found is None or not found.submodule_search_locations:
            raise LookupError("clip is not installed")
        source = Path(next(iter(found.submodule_search_locations))) / "clip.py"
        for node in ast.parse(source.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_MODELS" for t in node.targets):
                table = ast.literal_eval(node.value)
                if isinstance(table, dict) and table:
                    return dict(table)
        raise LookupError("no _MODELS table in clip.py")
    except (LookupError, OSError, SyntaxError, ValueError):
        from instantportrait.eval.clip_score import clip_variants

        return clip_variants()


def clip_weights_path(name: str, root: str | Path | None = None) -> tuple[Path, str | None]:
    """``(file, url)`` for a CLIP variant name (``ViT-L/14``) under ``root``, or ``(file, None)`` for a local file.

    Matches :func:`instantportrait.eval.clip_score.expected_clip_file`. KeyError for a name that is neither.
    """
    urls = _clip_urls()
    if name in urls:
        folder = Path(root or DEFAULT_CLIP_ROOT).expanduser()
        return folder / os.path.basename(urlparse(urls[name]).path), urls[name]
    as_file = Path(name).expanduser()
    if as_file.exists() or as_file.suffix in (".pt", ".pth", ".safetensors", ".bin"):
        return as_file, None
    raise KeyError(f"{name!r} is neither a CLIP variant ({', '.join(urls)}) nor a weights file")


def _clip_name(spec: ModelSpec) -> str:
    """The variant name back from a spec (``resolve_model`` may split ``ViT-L/14@336px`` at the ``@``)."""
    return spec.repo_id if spec.revision in ("", "main") else f"{spec.repo_id}@{spec.revision}"


# ----------------------------------------------------------------------------------------------------- status checks


def _row(spec: ModelSpec, state: str, **kw) -> ModelStatus:
    return ModelStatus(key=spec.key, kind=spec.kind, source=spec.repo_id, revision=spec.revision, pinned=spec.pinned,
                       licence=spec.licence, size_gb=spec.size_gb, state=state, description=spec.description, **kw)


def model_status(spec: ModelSpec, *, cache_dir: str | Path | None = None, insightface_root: str | Path | None = None,
                 clip_root: str | Path | None = None) -> ModelStatus:
    """Whether ``spec`` is usable from this machine's disk now. No network, no parsing of weights."""
    if spec.kind == "insightface":
        from instantportrait.face.encoder import check_pack_folder, resolve_pack

        _, folder = resolve_pack(spec.key if spec.key in MODELS else spec.repo_id, insightface_root)
        try:
            files = {p.name for p in check_pack_folder(spec, folder)}
        except ModelNotAvailableError:
            nested = folder.is_dir() and any(p.is_file() for g in ("*/*.onnx", "*/*/*.onnx") for p in folder.glob(g))
            note = f"the .onnx files are in a nested folder: `download {spec.key}` moves them up" if nested else ""
            return _row(spec, "incomplete" if nested else "missing", location=str(folder),
                        missing=[f"{folder}/*.onnx"], note=note)
        absent = [f for f in spec.required_files if f not in files]
        return _row(spec, "incomplete" if absent else "present", location=str(folder), missing=absent)
    if spec.kind == "clip":
        name = _clip_name(spec)
        try:
            path, _ = clip_weights_path(name, clip_root)
        except KeyError as exc:
            return _row(spec, "missing", note=str(exc.args[0]))
        state = "present" if path.is_file() and path.stat().st_size > 0 else "missing"
        return _row(replace(spec, repo_id=name, revision="-"), state, location=str(path))
    local = Path(spec.repo_id).expanduser()
    if local.exists():
        gaps = missing_files(spec, local) if local.is_dir() else []
        return _row(spec, "incomplete" if gaps else "local", location=str(local), missing=gaps,
                    note=f"local folder (set by {spec.env_var} or an override)")
    snapshot = find_snapshot(spec, cache_dir)
    note = "" if spec.published else "not published on the Hub yet (see README, Training)"
    if snapshot is None:
        return _row(spec, "missing", note=note)
    gaps = missing_files(spec, snapshot)
    return _row(spec, "incomplete" if gaps else "cached", location=str(snapshot), missing=gaps, note=note)


def _demo_licence(folder: Path) -> str:
    card = folder / "instantportrait_card.json"
    if card.is_file():
        try:
            licence = json.loads(card.read_text()).get("licence")
            if licence:
                return str(licence)
        except ValueError:
            pass
    readme = folder / "README.md"
    if readme.is_file():
        for line in readme.read_text().splitlines()[:20]:
            if line.startswith("license:"):
                return line.split(":", 1)[1].strip()
    return "see the model card"


def demo_model_statuses(folder: Path = DEMO_MODELS_DIR) -> list[ModelStatus]:
    """The offline demo models shipped in the repository (``instantportrait/demo/models/<name>/``), if any."""
    if not folder.is_dir():
        return []
    rows = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        spec = ModelSpec(f"demo/{sub.name}", str(sub), revision="-", kind="demo", licence=_demo_licence(sub),
                         size_gb=round(folder_size(sub) / GB, 3), description="offline demo model (toy, synthetic)")
        gaps = missing_files(replace(spec, kind="diffusers"), sub) if (sub / "model_index.json").is_file() else []
        rows.append(_row(spec, "incomplete" if gaps else "bundled", location=str(sub), missing=gaps))
    return rows


def list_models(*, cache_dir: str | Path | None = None, insightface_root: str | Path | None = None,
                clip_root: str | Path | None = None) -> list[ModelStatus]:
    """Every model in :data:`instantportrait.config.MODELS` (with environment overrides applied) and every demo
    model, with where it stands on this machine."""
    rows = [model_status(resolve_model(key), cache_dir=cache_dir, insightface_root=insightface_root,
                         clip_root=clip_root) for key in MODELS]
    return rows + demo_model_statuses()


# ------------------------------------------------------------------------------------------------------- `models`


def _short_rev(row: ModelStatus) -> str:
    if row.revision in ("-", ""):
        return "-"
    rev = row.revision[:8] if len(row.revision) == 40 else row.revision
    return f"{rev} (pinned)" if row.pinned else f"{rev} (unpinned)"


def _size(gb: float) -> str:
    return f"{gb * 1000:.0f} MB" if gb < 1 else f"{gb:.1f} GB"


def format_table(rows: list[ModelStatus], *, verbose: bool = False) -> str:
    """The human-readable listing: one line per model, then notes (missing files, locations with ``verbose``)."""
    head = ("MODEL", "STATUS", "SIZE", "REVISION", "SOURCE", "LICENCE")
    cells = [(r.key, r.state, _size(r.size_gb), _short_rev(r), r.source, r.licence) for r in rows]
    widths = [max(len(str(c[i])) for c in [head, *cells]) for i in range(5)]
    lines = ["  ".join(str(c[i]).ljust(widths[i]) for i in range(5)) + "  " + str(c[5]) for c in [head, *cells]]
    notes = []
    for r in rows:
        if r.missing:
            notes.append(f"  {r.key}: missing {', '.join(r.missing[:6])}{' ...' if len(r.missing) > 6 else ''}")
        if r.note:
            notes.append(f"  {r.key}: {r.note}")
        if verbose and r.location:
            notes.append(f"  {r.key}: {r.location}")
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    rows = list_models(cache_dir=args.cache_dir, insightface_root=args.insightface_root, clip_root=args.clip_root)
    from instantportrait.face.encoder import default_root

    where = {"hf_cache": str(hub_cache_dir(args.cache_dir)),
             "insightface_root": str(Path(args.insightface_root).expanduser() if args.insightface_root
                                     else default_root()),
             "clip_root": str(Path(args.clip_root or DEFAULT_CLIP_ROOT).expanduser())}
    if args.json:
        print(json.dumps({**where, "models": [{**asdict(r), "available": r.available} for r in rows]}, indent=2))
        return EXIT_OK
    print(format_table(rows, verbose=args.verbose))
    have = sum(r.available for r in rows)
    print(f"\n{have} of {len(rows)} available. Hugging Face cache: {where['hf_cache']}; insightface packs: "
          f"{where['insightface_root']}/models; CLIP: {where['clip_root']}.")
    if have < len(rows):
        print("Fetch with `python -m instantportrait download NAME ...` or `--all` (on a machine with network).")
    return EXIT_OK


def _add_location_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="Hugging Face cache folder (default: $HF_HUB_CACHE, $HF_HOME/hub, "
                                       "~/.cache/huggingface/hub)")
    p.add_argument("--insightface-root", help="insightface root; packs live in <root>/models/<pack> (default: "
                                              "$INSIGHTFACE_ROOT or ~/.insightface)")
    p.add_argument("--clip-root", help=f"folder for CLIP weight files (default: {DEFAULT_CLIP_ROOT})")


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list every model the project uses and whether it is on this machine",
                       description="python -m instantportrait models [--json]: every model with its pinned "
                                   "revision, licence, size and local status (no network)")
    _add_location_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="store_true", help="also print where each present model is")
    p.set_defaults(func=cmd_models)


# ----------------------------------------------------------------------------------------------------- `download`


@dataclass
class _Target:
    spec: ModelSpec
    explicit_revision: bool = False


class _UsageError(ValueError):
    pass


def _resolve_targets(args: argparse.Namespace) -> list[_Target]:
    """The models ``download`` should fetch, from names / ``--all`` / ``--from-zip``; _UsageError on bad usage."""
    names: list[str] = list(args.names)
    if args.all and names:
        raise _UsageError("pass model names or --all, not both")
    if args.all:
        return [_Target(resolve_model(k)) for k, s in MODELS.items() if s.published]
    if not names and args.from_zip:
        stem = Path(args.from_zip).name.removesuffix(".zip")
        if stem in MODELS and MODELS[stem].kind == "insightface":
            names = [stem]
        else:
            raise _UsageError(f"cannot tell which pack {args.from_zip} holds: name it, e.g. "
                              f"`download antelopev2 --from-zip {args.from_zip}`")
    if not names:
        raise _UsageError(f"name the models to download, or pass --all; known: {', '.join(MODELS)}")
    targets = []
    for name in names:
        key, _, rev = name.partition("@") if name.split("@", 1)[0] in MODELS else (name, "", "")
        if key in MODELS:
            spec = resolve_model(key)
            if rev:
                if spec.kind != "diffusers":
                    raise _UsageError(f"{key} is a {spec.kind} model: it has no Hub revision")
                spec = replace(spec, revision=rev, pinned=rev == MODELS[key].revision and MODELS[key].pinned)
            targets.append(_Target(spec, bool(rev)))
        elif "/" in name and not Path(name).expanduser().exists():
            repo, rev = parse_location(name)
            targets.append(_Target(ModelSpec(repo, repo, revision=rev or "main", allow_patterns=_DIFFUSERS_PATTERNS,
                                             description="Hub repository named on the command line"), bool(rev)))
        else:
            raise _UsageError(f"unknown model {name!r}; known: {', '.join(MODELS)} (or a Hub repo id 'user/name')")
    if args.revision:
        hub = [t for t in targets if t.spec.kind == "diffusers"]
        if len(targets) != 1 or len(hub) != 1:
            raise _UsageError("--revision applies to exactly one Hub model; for several use NAME@REVISION")
        spec = hub[0].spec
        hub[0].spec = replace(spec, revision=args.revision, pinned=args.revision == spec.revision and spec.pinned)
        hub[0].explicit_revision = True
    packs = [t for t in targets if t.spec.kind == "insightface"]
    if args.from_zip and len(packs) != 1:
        raise _UsageError("--from-zip needs exactly one insightface pack name (buffalo_l or antelopev2)")
    return targets


def _drop_damaged(snapshot: Path, problems: list[str]) -> list[str]:
    """Delete cached files whose check failed (the symlink and its blob) so that the next fetch downloads them again.
    Returns the files dropped."""
    dropped = []
    for line in problems:
        rel, _, why = line.partition(": ")
        path = snapshot / rel
        if why == "missing" or not path.exists():
            continue
        blob = path.resolve()
        path.unlink()
        if blob != path and blob.is_file():
            blob.unlink()
        dropped.append(rel)
    return dropped


class _Network:
    """Asks once per command whether the Hub and the CLIP host can be reached (3 s probes), and why not."""

    def __init__(self) -> None:
        self._answers: dict[str, str | None] = {}

    def blocked(self, endpoint: str) -> str | None:
        """None if ``endpoint`` can be used now, else the reason it cannot."""
        if endpoint not in self._answers:
            if offline_requested():
                self._answers[endpoint] = ("offline mode is set (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / "
                                           "INSTANTPORTRAIT_OFFLINE)")
            elif not hub_reachable(endpoint):
                self._answers[endpoint] = f"{endpoint} cannot be reached (3 s connection probe)"
            else:
                self._answers[endpoint] = None
        return self._answers[endpoint]


def _say(message: str) -> None:
    print(message, flush=True)


def _fetch_hub(target: _Target, args: argparse.Namespace, net: _Network) -> tuple[bool, str]:
    from instantportrait.hub import fetch_snapshot, verify_snapshot

    spec = target.spec
    local = Path(spec.repo_id).expanduser()
    if local.exists():  # an override points at a folder: nothing to download
        gaps = missing_files(spec, local) if local.is_dir() else []
        if gaps:
            return False, f"the local folder {local} (set by {spec.env_var}) lacks {', '.join(gaps)}"
        return True, f"local folder {local} (set by {spec.env_var}), complete"
    snapshot = find_snapshot(spec, args.cache_dir)
    if snapshot is not None and not args.force:
        problems = verify_snapshot(spec, snapshot)
        if not problems:
            return True, f"already in the cache, verified: {snapshot}"
        dropped = _drop_damaged(snapshot, problems)
        if dropped:
            _say(f"  damaged cached files removed, fetching them again: {', '.join(dropped)}")
    why = net.blocked(hub_endpoint())
    if why:
        return False, (f"not in the local cache ({hub_cache_dir(args.cache_dir)}) and {why}. Run this command on a "
                       f"machine with network and copy the cache folder, or point {spec.env_var} at a local copy")
    rev = spec.revision[:8] if len(spec.revision) == 40 else spec.revision
    _say(f"  fetching {spec.repo_id}@{rev} (about {_size(spec.size_gb)}; only: {', '.join(spec.allow_patterns)})")
    try:
        path = fetch_snapshot(spec, args.cache_dir, force=args.force)
    except ModelNotAvailableError as exc:
        return False, str(exc)
    problems = verify_snapshot(spec, path)
    if problems:
        return False, f"downloaded to {path} but verification failed: {'; '.join(problems[:8])}"
    n = sum(1 for p in path.rglob("*") if p.is_file())
    return True, f"verified {n} files, {_size(folder_size(path) / GB)}, in {path}"


def _fetch_pack(target: _Target, args: argparse.Namespace, net: _Network) -> tuple[bool, str]:
    from instantportrait.face import packs

    key = target.spec.key
    root = args.insightface_root
    if args.from_zip:
        report = packs.place_pack_from_zip(args.from_zip, key, root, force=args.force)
    else:
        try:
            report = packs.verify_pack(key, root)
            if not args.force:
                return True, f"already in place, verified: {report.summary()}"
        except ModelNotAvailableError:
            report = packs.repair_nested(key, root)
            if report is not None:
                return True, f"moved the .onnx files out of a nested folder: {report.summary()}"
        mirror = args.insightface_mirror or packs.mirror_from_env()[0]
        if not mirror:
            from instantportrait.face.encoder import resolve_pack

            _, folder = resolve_pack(key, root)
            from instantportrait.face.encoder import DEAD_DOWNLOAD_LINKS

            why = ("insightface's own download link for it is dead (404)" if key in DEAD_DOWNLOAD_LINKS
                   else "insightface's own downloader has no timeout and no verification")
            return False, (f"not in {folder}, and {why}, so this command does not guess a source: pass --from-zip "
                           f"PATH (the pack's zip, e.g. {key}.zip, downloaded by hand) or --insightface-mirror "
                           f"USER/REPO (a Hugging Face mirror whose {args.insightface_path.format(pack=key)}/ holds "
                           f"the .onnx files; or set {packs.MIRROR_ENV})")
        why = net.blocked(hub_endpoint())
        if why:
            return False, f"cannot fetch from mirror {mirror}: {why}"
        _say(f"  fetching {args.insightface_path.format(pack=key)} from {mirror}")
        report = packs.fetch_pack_from_mirror(key, mirror, path=args.insightface_path, root=root,
                                              cache_dir=args.cache_dir, force=args.force)
    verb = {"kept": "a working pack was already in place (kept; --force replaces it)", "placed": "placed and verified"}
    return True, f"{verb.get(report.action, report.action)}: {report.summary()}"


def _fetch_clip(target: _Target, args: argparse.Namespace, net: _Network) -> tuple[bool, str]:
    name = _clip_name(target.spec)
    try:
        path, url = clip_weights_path(name, args.clip_root)
    except KeyError as exc:
        return False, str(exc.args[0])
    from instantportrait.eval.clip_score import _expected_sha256, download_clip_weights, sha256_file

    if path.is_file() and not args.force:
        expected = _expected_sha256(url) if url else None
        if expected is None or sha256_file(path) == expected:
            return True, f"already in place, verified: {path}"
        _say(f"  {path} is damaged (sha256 mismatch): downloading it again")
    if url is None:
        return False, f"the weights file {path} does not exist (INSTANTPORTRAIT_CLIP names a local file)"
    endpoint = f"{urlparse(url).scheme}://{urlparse(url).netloc}"
    why = net.blocked(endpoint)
    if why:
        return False, f"{path} does not exist and {why}; copy {url} there from a machine with network"
    _say(f"  fetching {url}")
    got = download_clip_weights(url, path.parent)  # sha256-checked, written atomically
    return True, f"verified (sha256) {got}"


def _offline_advice(args: argparse.Namespace, targets: list[_Target]) -> list[str]:
    lines = ["To run without network from now on:", "  export HF_HUB_OFFLINE=1"]
    if args.cache_dir:
        lines.append(f"  export HF_HUB_CACHE={Path(args.cache_dir).expanduser()}")
    if args.insightface_root:
        lines.append(f"  export INSIGHTFACE_ROOT={Path(args.insightface_root).expanduser()}")
    if args.clip_root:
        lines.append(f"  # CLIP weights are in {Path(args.clip_root).expanduser()}: pass "
                     "ClipScorer(download_root=...) that folder")
    for t in targets:
        if t.explicit_revision and t.spec.key in MODELS:
            lines.append(f"  export {t.spec.env_var}={t.spec.repo_id}@{t.spec.revision}   # the revision you fetched")
    return lines


def cmd_download(args: argparse.Namespace) -> int:
    try:
        targets = _resolve_targets(args)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    net = _Network()
    failures: list[str] = []
    handlers = {"insightface": _fetch_pack, "clip": _fetch_clip}
    for i, target in enumerate(targets, 1):
        spec = target.spec
        _say(f"[{i}/{len(targets)}] {spec.key} ({spec.kind}, {spec.licence})")
        try:
            ok, message = handlers.get(spec.kind, _fetch_hub)(target, args, net)
        except ModelNotAvailableError as exc:
            ok, message = False, str(exc)
        except OSError as exc:  # disk full, permissions while unpacking or writing
            ok, message = False, f"{type(exc).__name__}: {exc}"
        if ok:
            _say(f"  ok: {message}")
        else:
            failures.append(spec.key)
            print(f"error: {spec.key}: {message}", file=sys.stderr, flush=True)
    if failures:
        print(f"\n{len(failures)} of {len(targets)} not available: {', '.join(failures)}.", file=sys.stderr)
        return EXIT_MODEL
    _say("\nAll requested models are in place.")
    for line in _offline_advice(args, targets):
        _say(line)
    if any(t.spec.kind == "insightface" for t in targets):
        _say("insightface packs are for non-commercial research only (insightface's licence).")
    return EXIT_OK


def add_download_parser(sub: argparse._SubParsersAction) -> None:
    from instantportrait.face.packs import DEFAULT_MIRROR_PATH, MIRROR_ENV, MIRROR_PATH_ENV

    p = sub.add_parser("download", help="fetch models into the local caches, verified (resumable)",
                       description="python -m instantportrait download [NAMES | --all]: fetch models from the "
                                   "Hugging Face Hub (only the files the project loads), place insightface packs, "
                                   "verify, and print what to set for offline use")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"models to fetch ({', '.join(MODELS)}), NAME@REVISION, or a Hub repo id user/name[@rev]")
    p.add_argument("--all", action="store_true", help="every published model (the project's own ipnet/idenet "
                                                      "repos are skipped until they are published)")
    p.add_argument("--revision", help="Hub branch, tag or commit for the one Hub model named (default: the pinned "
                                      "revision in instantportrait/config.py)")
    _add_location_args(p)
    p.add_argument("--from-zip", metavar="PATH", help="place an insightface pack from a local zip (any nesting)")
    p.add_argument("--insightface-mirror", metavar="USER/REPO[@REV]", default=None,
                   help=f"a Hugging Face repo that mirrors insightface packs (default: ${MIRROR_ENV}; none is "
                        "built in: mirrors are third-party copies)")
    p.add_argument("--insightface-path", default=os.environ.get(MIRROR_PATH_ENV, "").strip() or DEFAULT_MIRROR_PATH,
                   help=f"where the pack is inside the mirror: a folder of .onnx files or a .zip; {{pack}} is the "
                        f"pack name (default: ${MIRROR_PATH_ENV} or {DEFAULT_MIRROR_PATH})")
    p.add_argument("--force", action="store_true", help="download again / replace a working pack")
    p.set_defaults(func=cmd_download)
