"""`python -m instantportrait models` / `download` against temporary caches laid out like the real ones (offline)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from instantportrait.cli import main as cli
from instantportrait.cli import models as models_cli
from instantportrait.config import MODELS
from instantportrait.errors import ModelNotAvailableError
from instantportrait.face.packs import onnx_role, place_pack_from_zip, verify_pack
from instantportrait.hub import cache as hub

IP2P = MODELS["instructpix2pix"]
MAGICBRUSH = MODELS["magicbrush"]
OTHER_COMMIT = "0123456789abcdef0123456789abcdef01234567"
ANTELOPE_FILES = MODELS["antelopev2"].required_files  # (detector, recogniser) names the config expects
BUFFALO_FILES = MODELS["buffalo_l"].required_files


def put_in_hub_cache(cache: Path, repo_id: str, source: Path, commit: str, ref: str | None = "main",
                     skip: tuple[str, ...] = ()) -> Path:
    """Copy ``source`` into ``cache`` the way huggingface_hub stores a download: content-addressed blobs, a snapshot
    of relative symlinks, and ``refs/<ref>`` naming the commit."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source).as_posix()
        if not path.is_file() or rel in skip:
            continue
        blob = storage / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (rel.count("/") + 2)) / "blobs" / blob.name)
    if ref:
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return snapshot


def place_files(folder: Path, pack: Path, names: tuple[str, str]) -> Path:
    """The tiny pack's detector and recogniser, under the file names a real pack uses."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pack / "det_tiny.onnx", folder / names[0])
    shutil.copyfile(pack / "w_tiny.onnx", folder / names[1])
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def world(tmp_path, tiny_ip2p, tiny_face_pack, tiny_clip_file):
    """A Hub cache with InstructPix2Pix complete at its pinned commit and MagicBrush without UNet weights (refs/main),
    an insightface root with buffalo_l in place and antelopev2 unpacked into a nested folder, and CLIP weights."""
    cache, root, clip_root = tmp_path / "hub", tmp_path / "insightface", tmp_path / "clip"
    put_in_hub_cache(cache, IP2P.repo_id, tiny_ip2p, IP2P.revision, ref=None)
    put_in_hub_cache(cache, MAGICBRUSH.repo_id, tiny_ip2p, OTHER_COMMIT,
                     skip=("unet/diffusion_pytorch_model.safetensors",))
    place_files(root / "models" / "buffalo_l", tiny_face_pack, BUFFALO_FILES)
    place_files(root / "models" / "antelopev2" / "antelopev2", tiny_face_pack, ANTELOPE_FILES)
    clip_root.mkdir()
    shutil.copyfile(tiny_clip_file, clip_root / "ViT-L-14.pt")
    return cache, root, clip_root


def test_models_reports_cached_incomplete_and_missing(world, capsys):
    cache, root, clip_root = world
    t0 = time.perf_counter()
    code, out, _ = run(capsys, "models", "--json", "--cache-dir", str(cache), "--insightface-root", str(root),
                       "--clip-root", str(clip_root))
    assert time.perf_counter() - t0 < 3
    assert code == 0
    data = json.loads(out)
    rows = {r["key"]: r for r in data["models"]}
    assert set(MODELS) <= set(rows)
    assert rows["instructpix2pix"]["state"] == "cached"
    assert rows["instructpix2pix"]["location"].endswith(IP2P.revision)
    assert rows["instructpix2pix"]["pinned"] and rows["instructpix2pix"]["revision"] == IP2P.revision
    assert rows["magicbrush"]["state"] == "incomplete" and rows["magicbrush"]["missing"] == ["unet/ (weights)"]
    for key in ("sdxl-base", "instantid", "ipnet", "idenet"):
        assert rows[key]["state"] == "missing", key
    assert "not published" in rows["ipnet"]["note"]
    assert rows["buffalo_l"]["state"] == "present"
    assert rows["antelopev2"]["state"] == "incomplete" and "nested" in rows["antelopev2"]["note"]
    assert rows["clip"]["state"] == "present" and rows["clip"]["location"] == str(clip_root / "ViT-L-14.pt")
    assert "non-commercial" in rows["buffalo_l"]["licence"]
    assert all(r["size_gb"] > 0 for k, r in rows.items() if k in MODELS)

    code, out, _ = run(capsys, "models", "--cache-dir", str(cache), "--insightface-root", str(root),
                       "--clip-root", str(clip_root))
    line = next(ln for ln in out.splitlines() if ln.startswith("instructpix2pix"))
    assert "cached" in line and "31519b5c (pinned)" in line and "4.3 GB" in line
    assert "magicbrush: missing unet/ (weights)" in out


def test_models_honours_hf_cache_environment(world, monkeypatch, capsys):
    cache, root, _ = world
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    rows = {r.key: r for r in models_cli.list_models(insightface_root=root)}
    assert rows["instructpix2pix"].state == "cached"
    monkeypatch.delenv("HF_HUB_CACHE")
    hf_home = cache.parent / "hf_home"
    hf_home.mkdir()
    (hf_home / "hub").symlink_to(cache)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    assert {r.key: r.state for r in models_cli.list_models()}["instructpix2pix"] == "cached"
    monkeypatch.setenv("HF_HOME", str(cache.parent / "empty_home"))
    assert {r.key: r.state for r in models_cli.list_models()}["instructpix2pix"] == "missing"


def test_tree_listing_marks_a_partial_download_incomplete(tmp_path, tiny_ip2p):
    """After a real download huggingface_hub records the file list; a file that never arrived makes it incomplete."""
    tree_cache = pytest.importorskip("huggingface_hub._tree_cache")
    cache = tmp_path / "hub"
    snapshot = put_in_hub_cache(cache, IP2P.repo_id, tiny_ip2p, IP2P.revision, ref=None)
    assert models_cli.model_status(IP2P, cache_dir=cache).state == "cached"
    entries = {rel: tree_cache.TreeCacheEntry(size=(snapshot / rel).stat().st_size, blob_id="0" * 40)
               for rel in hub._files_under(snapshot)}
    entries["tokenizer/special_tokens_map.json"] = tree_cache.TreeCacheEntry(size=10, blob_id="1" * 40)
    entries["safety_checker/model.safetensors"] = tree_cache.TreeCacheEntry(size=10, blob_id="2" * 40)  # not wanted
    tree_cache.write_tree_cache(str(snapshot.parent.parent), IP2P.revision, entries)
    status = models_cli.model_status(IP2P, cache_dir=cache)
    assert status.state == "incomplete" and status.missing == ["tokenizer/special_tokens_map.json"]
    assert hub.cached_snapshot(IP2P, cache) is None  # the editors' check agrees


def test_single_model_repo_needs_every_file_it_names(tmp_path, tiny_ip2p):
    """A repository that is not a pipeline (a ControlNet: config + weights) is complete when every named file is."""
    from instantportrait.config import ModelSpec

    spec = ModelSpec("cn", "me/controlnet", revision=OTHER_COMMIT,
                     allow_patterns=("config.json", "diffusion_pytorch_model.safetensors"))
    cache = tmp_path / "hub"
    assert models_cli.model_status(spec, cache_dir=cache).state == "missing"
    put_in_hub_cache(cache, spec.repo_id, tiny_ip2p / "unet", OTHER_COMMIT, ref=None)
    assert models_cli.model_status(spec, cache_dir=cache).state == "cached"
    (hub.find_snapshot(spec, cache) / "diffusion_pytorch_model.safetensors").unlink()
    status = models_cli.model_status(spec, cache_dir=cache)
    assert status.state == "incomplete" and status.missing == ["diffusion_pytorch_model.safetensors"]


def test_download_offline_fails_fast_one_message_per_model(tmp_path, capsys):
    t0 = time.perf_counter()
    code, out, err = run(capsys, "download", "instructpix2pix", "magicbrush", "clip", "antelopev2",
                         "--cache-dir", str(tmp_path / "hub"), "--insightface-root", str(tmp_path / "if"),
                         "--clip-root", str(tmp_path / "clip"))
    assert time.perf_counter() - t0 < 10
    assert code == models_cli.EXIT_MODEL == cli.EXIT_MODEL
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert [e.split(":")[1].strip() for e in errors] == ["instructpix2pix", "magicbrush", "clip", "antelopev2"]
    assert "offline mode is set" in errors[0] and "INSTANTPORTRAIT_INSTRUCTPIX2PIX" in errors[0]
    assert "ViT-L-14.pt" in errors[2]
    assert "--from-zip" in errors[3] and "dead" in errors[3]
    assert not (tmp_path / "hub").exists() or not any((tmp_path / "hub").rglob("*.safetensors"))


def test_download_unreachable_hub_fails_fast(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://192.0.2.1:9")  # the conftest socket guard refuses it
    t0 = time.perf_counter()
    code, _, err = run(capsys, "download", "sdxl-base", "instantid", "--cache-dir", str(tmp_path))
    assert time.perf_counter() - t0 < 10
    assert code == 3 and err.count("cannot be reached") == 2


def test_download_offline_succeeds_when_everything_is_cached(world, capsys):
    cache, root, clip_root = world
    code, out, err = run(capsys, "download", "instructpix2pix", "buffalo_l", "--cache-dir", str(cache),
                         "--insightface-root", str(root), "--clip-root", str(clip_root))
    assert code == 0, err
    assert "already in the cache, verified" in out and "HF_HUB_OFFLINE=1" in out
    assert f"HF_HUB_CACHE={cache}" in out and f"INSIGHTFACE_ROOT={root}" in out
    # The nested antelopev2 folder is repaired in place: its files move up.
    code, out, err = run(capsys, "download", "antelopev2", "--insightface-root", str(root))
    assert code == 0, err
    assert sorted(p.name for p in (root / "models" / "antelopev2").iterdir()) == sorted(ANTELOPE_FILES)


def test_download_drops_damaged_cached_weights(world, capsys):
    cache, _, _ = world
    weights = hub.find_snapshot(IP2P, cache) / "vae" / "diffusion_pytorch_model.safetensors"
    blob = weights.resolve()
    blob.write_bytes(blob.read_bytes()[:1000])  # truncated
    assert "truncated" in hub.verify_file(weights)
    code, out, err = run(capsys, "download", "instructpix2pix", "--cache-dir", str(cache))
    assert code == 3  # offline: it cannot fetch the file again...
    assert "damaged cached files removed, fetching them again: vae/diffusion_pytorch_model.safetensors" in out
    assert not blob.exists() and not weights.exists()  # ...but the bad copy is gone, so the next online run fixes it
    assert models_cli.model_status(IP2P, cache_dir=cache).state == "incomplete"


@pytest.mark.parametrize("argv, message", [
    ([], "name the models"),
    (["--all", "clip"], "not both"),
    (["nonsense"], "unknown model"),
    (["instructpix2pix", "magicbrush", "--revision", "abc"], "exactly one Hub model"),
    (["clip@v2"], "no Hub revision"),
    (["instructpix2pix", "--from-zip", "x.zip"], "exactly one insightface pack"),
    (["--from-zip", "mystery.zip"], "cannot tell which pack"),
])
def test_download_usage_errors(argv, message, capsys):
    code, _, err = run(capsys, "download", *argv)
    assert code == 2 and message in err


def test_download_revision_flag_and_adhoc_repo(tmp_path, tiny_ipnet, capsys):
    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "someone/ipnet", tiny_ipnet, OTHER_COMMIT, ref=None)
    code, out, err = run(capsys, "download", f"someone/ipnet@{OTHER_COMMIT}", "--cache-dir", str(cache))
    assert code == 0, err
    code, out, err = run(capsys, "download", "someone/ipnet", "--revision", OTHER_COMMIT, "--cache-dir", str(cache))
    assert code == 0 and OTHER_COMMIT in out
    code, _, err = run(capsys, "download", "someone/ipnet", "--cache-dir", str(cache))  # main is not cached
    assert code == 3 and "offline mode" in err
    code, out, err = run(capsys, "download", f"instructpix2pix@{OTHER_COMMIT}", "--cache-dir", str(cache))
    assert code == 3 and "INSTANTPORTRAIT_INSTRUCTPIX2PIX" in err


# ----------------------------------------------------------------------------------------------- insightface packs


def make_zip(path: Path, members: dict[str, Path | bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content if isinstance(content, bytes) else content.read_bytes())
    return path


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_pack_from_zip_loads_in_face_encoder(layout, tmp_path, tiny_face_pack, astronaut_image, capsys):
    from instantportrait.face.encoder import FaceEncoder

    prefix = "antelopev2/" if layout == "nested" else ""
    det, rec = tiny_face_pack / "det_tiny.onnx", tiny_face_pack / "w_tiny.onnx"
    members = {f"{prefix}{ANTELOPE_FILES[0]}": det, f"{prefix}{ANTELOPE_FILES[1]}": rec,
               f"__MACOSX/{prefix}._{ANTELOPE_FILES[0]}": b"resource fork", "readme.txt": b"hi"}
    archive = make_zip(tmp_path / "antelopev2.zip", members)
    root = tmp_path / "root"
    code, out, err = run(capsys, "download", "--from-zip", str(archive), "--insightface-root", str(root))
    assert code == 0, err
    folder = root / "models" / "antelopev2"
    assert sorted(p.name for p in folder.iterdir()) == sorted(ANTELOPE_FILES)  # flat, nothing else
    assert "placed and verified" in out and "non-commercial" in out
    face = FaceEncoder("antelopev2", root=root, det_size=(512, 512)).encode(astronaut_image)
    assert face.embedding.shape == (128,) and face.det_score > 0.5


def test_pack_placement_keeps_working_pack_and_rejects_bad_zips(tmp_path, tiny_face_pack):
    root = tmp_path / "root"
    det, rec = tiny_face_pack / "det_tiny.onnx", tiny_face_pack / "w_tiny.onnx"
    good = make_zip(tmp_path / "good.zip", {"a/b/" + ANTELOPE_FILES[0]: det, "a/b/" + ANTELOPE_FILES[1]: rec})
    report = place_pack_from_zip(good, "antelopev2", root)
    assert report.action == "placed" and report.detection == [ANTELOPE_FILES[0]]
    assert report.recognition == [ANTELOPE_FILES[1]]
    assert place_pack_from_zip(good, "antelopev2", root).action == "kept"
    assert place_pack_from_zip(good, "antelopev2", root, force=True).action == "placed"
    assert (root / "models" / "antelopev2.replaced-1").is_dir()  # the old one moved aside, not deleted

    only_detector = make_zip(tmp_path / "det.zip", {ANTELOPE_FILES[0]: det, ANTELOPE_FILES[1]: det})
    with pytest.raises(ModelNotAvailableError, match="no recogniser"):
        place_pack_from_zip(only_detector, "antelopev2", root, force=True)
    broken = make_zip(tmp_path / "broken.zip", {ANTELOPE_FILES[0]: det, ANTELOPE_FILES[1]: b"not an onnx model"})
    with pytest.raises(ModelNotAvailableError, match=f"{ANTELOPE_FILES[1]} is not a readable ONNX model"):
        place_pack_from_zip(broken, "antelopev2", root, force=True)
    with pytest.raises(ModelNotAvailableError, match="no .onnx files"):
        place_pack_from_zip(make_zip(tmp_path / "empty.zip", {"x.txt": b"x"}), "antelopev2", root)
    (tmp_path / "page.zip").write_text("<html>404</html>")
    with pytest.raises(ModelNotAvailableError, match="not a zip file"):
        place_pack_from_zip(tmp_path / "page.zip", "antelopev2", root)
    # Every failure left the working pack alone and no staging folders behind.
    assert verify_pack("antelopev2", root).action == "checked"
    assert not list((root / "models").glob(".*partial*"))


def test_pack_zip_paths_cannot_escape(tmp_path, tiny_face_pack):
    det, rec = tiny_face_pack / "det_tiny.onnx", tiny_face_pack / "w_tiny.onnx"
    evil = make_zip(tmp_path / "evil.zip", {"../../escape/det.onnx": det, "../../escape/rec.onnx": rec})
    report = place_pack_from_zip(evil, "tiny", tmp_path / "root")
    assert report.folder == tmp_path / "root" / "models" / "tiny" and sorted(report.roles) == ["det.onnx", "rec.onnx"]
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()


def test_onnx_roles_follow_insightface_routing(tiny_face_pack):
    assert onnx_role(tiny_face_pack / "det_tiny.onnx") == "detection"
    assert onnx_role(tiny_face_pack / "w_tiny.onnx") == "recognition"


def test_clip_file_lookup_matches_clip_score():
    from instantportrait.eval.clip_score import expected_clip_file

    for variant in ("ViT-L/14", "ViT-B/32", "ViT-L/14@336px"):
        assert models_cli.clip_weights_path(variant, "/x")[0] == expected_clip_file(variant, "/x")
    with pytest.raises(KeyError):
        models_cli.clip_weights_path("ViT-Q/99")


# ------------------------------------------------------------------------- the online path, against a loopback "Hub"


class FakeHub:
    """A minimal Hugging Face Hub on 127.0.0.1 (repo info, recursive tree, file resolve with HEAD/GET/Range) serving
    folders as repositories at fixed commits; ``fail`` maps a file path to an HTTP status to answer it with."""

    def __init__(self, repos: dict[str, tuple[str, Path]]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.repos, self.fail, self.requests = repos, {}, []
        hub_self = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _send(self, status: int, data: bytes, headers: dict | None = None, body: bool = True):
                self.send_response(status)
                for k, v in {"Content-Length": str(len(data)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _serve(self, body: bool):
                from urllib.parse import unquote, urlparse

                path = unquote(urlparse(self.path).path)
                hub_self.requests.append(path)
                for repo_id, (commit, folder) in hub_self.repos.items():
                    api = f"/api/models/{repo_id}/"
                    if path.startswith(api + "revision/"):
                        info = {"id": repo_id, "sha": commit, "siblings": []}
                        return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
                    if path.startswith(api + "tree/"):
                        files = [{"type": "file", "path": p.relative_to(folder).as_posix(), "size": p.stat().st_size,
                                  "oid": hashlib.sha1(p.read_bytes()).hexdigest()}
                                 for p in sorted(folder.rglob("*")) if p.is_file()]
                        return self._send(200, json.dumps(files).encode(), {"Content-Type": "application/json"}, body)
                    prefix = f"/{repo_id}/resolve/"
                    if path.startswith(prefix):
                        rel = path[len(prefix):].split("/", 1)[1]
                        if rel in hub_self.fail:
                            return self._send(hub_self.fail[rel], b"server error", body=body)
                        file = folder / rel
                        if not file.is_file():
                            return self._send(404, b"not found", {"X-Error-Code": "EntryNotFound"}, body)
                        data = file.read_bytes()
                        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": commit}
                        return self._send(200, data, headers, body)
                self._send(404, b"no such route", {"X-Error-Code": "RepoNotFound"}, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def fake_hub(tmp_path, tiny_ip2p, tiny_face_pack, monkeypatch):
    """InstructPix2Pix served at its pinned commit, with files the allow-patterns must leave behind, and a mirror
    of insightface packs (``me/packs``: ``models/antelopev2/*.onnx`` and ``antelopev2.zip``)."""
    import huggingface_hub.constants

    repo = tmp_path / "remote"
    shutil.copytree(tiny_ip2p, repo)
    (repo / "instruct-pix2pix-00-22000.ckpt").write_bytes(b"big single-file checkpoint")
    (repo / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickled duplicate")
    (repo / "safety_checker").mkdir()
    (repo / "safety_checker" / "model.safetensors").write_bytes(b"not wanted")
    mirror = tmp_path / "mirror"
    place_files(mirror / "models" / "antelopev2", tiny_face_pack, ANTELOPE_FILES)
    place_files(mirror / "models" / "buffalo_l", tiny_face_pack, BUFFALO_FILES)
    make_zip(mirror / "antelopev2.zip",
             {f"antelopev2/{n}": mirror / "models" / "antelopev2" / n for n in ANTELOPE_FILES})
    server = FakeHub({IP2P.repo_id: (IP2P.revision, repo), "me/packs": (OTHER_COMMIT, mirror)})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield server
    server.close()


def test_download_fetches_only_allowed_files_and_verifies(fake_hub, tmp_path, capsys):
    cache = tmp_path / "hub"
    code, out, err = run(capsys, "download", "instructpix2pix", "--cache-dir", str(cache))
    assert code == 0, err
    snapshot = hub.find_snapshot(IP2P, cache)
    got = set(hub._files_under(snapshot))
    assert "unet/diffusion_pytorch_model.safetensors" in got and "model_index.json" in got
    assert not {"instruct-pix2pix-00-22000.ckpt", "unet/diffusion_pytorch_model.bin",
                "safety_checker/model.safetensors"} & got
    assert f"verified {len(got)} files" in out and "HF_HUB_OFFLINE=1" in out
    assert models_cli.model_status(IP2P, cache_dir=cache).state == "cached"
    assert hub.cached_snapshot(IP2P, cache) == snapshot  # the editors find it too


def test_download_failure_names_the_file_and_resumes(fake_hub, tmp_path, capsys):
    cache = tmp_path / "hub"
    fake_hub.fail["unet/diffusion_pytorch_model.safetensors"] = 403  # no retries (5xx are retried with back-off)
    code, _, err = run(capsys, "download", "instructpix2pix", "--cache-dir", str(cache))
    assert code == 3
    assert "HTTP 403 for unet/diffusion_pytorch_model.safetensors" in err
    # Downloads run in parallel, so files still in flight when the failure stopped them are listed too.
    assert re.search(r"files not downloaded: [^;]*unet/diffusion_pytorch_model\.safetensors", err)
    assert models_cli.model_status(IP2P, cache_dir=cache).state == "incomplete"
    already = set(hub._files_under(hub.find_snapshot(IP2P, cache)))
    fake_hub.fail.clear()
    served = len(fake_hub.requests)
    code, _, err = run(capsys, "download", "instructpix2pix", "--cache-dir", str(cache))
    assert code == 0, err
    fetched_again = {r.split(IP2P.revision + "/", 1)[1] for r in fake_hub.requests[served:] if "/resolve/" in r}
    assert "unet/diffusion_pytorch_model.safetensors" in fetched_again
    assert not fetched_again & already  # files that had arrived are not fetched again


@pytest.mark.parametrize("path", [None, "{pack}.zip"])
def test_download_pack_from_a_hub_mirror(path, fake_hub, tmp_path, capsys):
    from instantportrait.face.encoder import FaceEncoder

    root = tmp_path / "root"
    extra = ["--insightface-path", path] if path else []
    code, out, err = run(capsys, "download", "antelopev2", "--insightface-mirror", "me/packs", *extra,
                         "--insightface-root", str(root), "--cache-dir", str(tmp_path / "hub"))
    assert code == 0, err
    assert sorted(p.name for p in (root / "models" / "antelopev2").iterdir()) == sorted(ANTELOPE_FILES)
    assert not (root / "models" / "buffalo_l").exists()  # only the pack asked for
    assert FaceEncoder("antelopev2", root=root).load().loaded


def test_demo_models_are_listed_as_bundled(tmp_path, tiny_ipnet):
    demo = tmp_path / "demo_models"
    shutil.copytree(tiny_ipnet, demo / "ipnet-toy")
    shutil.copytree(tiny_ipnet, demo / "broken", ignore=shutil.ignore_patterns("diffusion_pytorch_model*"))
    rows = {r.key: r for r in models_cli.demo_model_statuses(demo)}
    assert rows["demo/ipnet-toy"].state == "bundled" and rows["demo/ipnet-toy"].licence == "openrail"
    assert 0 < rows["demo/ipnet-toy"].size_gb < 0.01
    assert rows["demo/broken"].state == "incomplete" and "unet/ (weights)" in rows["demo/broken"].missing
    assert models_cli.demo_model_statuses(tmp_path / "absent") == []


def test_taesd_is_listed_and_found_in_the_cache(tmp_path, capsys):
    """The real-time path's tiny VAE (`pipe.use_tiny_vae("taesd")`): listed by `models` (MIT, ~10 MB), fetched by
    `download taesd` (offline: exit 3), counted as cached once its two files are in the Hub cache."""
    from diffusers import AutoencoderTiny

    spec = MODELS["taesd"]
    code, out, err = run(capsys, "models", "--json", "--cache-dir", str(tmp_path / "hub"))
    row = {r["key"]: r for r in json.loads(out)["models"]}["taesd"]
    assert code == 0 and row["state"] == "missing" and row["licence"] == "MIT" and 0 < row["size_gb"] < 0.1
    code, out, err = run(capsys, "download", "taesd", "--cache-dir", str(tmp_path / "hub"))
    assert code == 3 and "error: taesd" in err
    AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4).save_pretrained(
        tmp_path / "taesd")
    put_in_hub_cache(tmp_path / "hub", spec.repo_id, tmp_path / "taesd", OTHER_COMMIT)
    code, out, err = run(capsys, "models", "--json", "--cache-dir", str(tmp_path / "hub"))
    assert {r["key"]: r for r in json.loads(out)["models"]}["taesd"]["state"] == "cached"
