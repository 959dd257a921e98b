"""The Gradio app: request logic (inputs, instructions, faces, failing methods), the LRU model manager, model sources,
settings, ZeroGPU wrapping; then the real app served on a loopback port and driven with ``gradio_client``
(two methods, bad inputs, 8 concurrent requests). Tiny random-weight models, tiny face pack and tiny CLIP only."""

from __future__ import annotations

import socket
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from instantportrait.app import (
    TINY_LABEL,
    AppSettings,
    EditRequest,
    EditService,
    InputError,
    ModelManager,
    ModelSource,
    Scorers,
    TinyModels,
    demo_model_dir,
    editor_nbytes,
    prepare_input,
    resolve_source,
    settings_from_args,
    zero_gpu,
)
from instantportrait.app.logic import TokenCounter, fit_instruction
from instantportrait.demo.examples import (
    POSTER_INSTRUCTIONS,
    astronaut_portrait,
    blank_image,
    drawn_portrait,
    two_faces,
    write_examples,
)
from instantportrait.methods import Editor, list_methods


# ---------------------------------------------------------------------------------------------------------- helpers
class FakeEditor(Editor):
    """A registry-style editor with ``n_params`` float32 parameters (its size) that returns its inputs unchanged (or
    fails). It counts how many edits run at once."""

    name = "fake"
    label = "Fake"

    def __init__(self, n_params: int = 250, fail: Exception | None = None, delay: float = 0.0, **kw):
        super().__init__(resolution=None, **kw)
        self.n_params, self.fail, self.delay = n_params, fail, delay
        self.active = 0
        self.max_active = 0
        self.edits = 0
        self.loads = 0
        self._count_lock = threading.Lock()

    def _load(self):
        self.loads += 1
        return torch.nn.Linear(self.n_params, 1, bias=False)

    def _modules(self, loaded):
        return [loaded]

    def nfe(self, settings=None):
        return 1

    def _edit(self, loaded, images, instructions, seed, settings, progress):
        with self._count_lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            assert self.is_loaded, "edited with an unloaded model"
            if self.fail is not None:
                raise self.fail
            time.sleep(self.delay)
            if progress:
                progress(1, 1)
            self.edits += 1
            return [img.copy() for img in images]
        finally:
            with self._count_lock:
                self.active -= 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_settings(tmp: Path, face_pack: Path, clip_file: Path, **kw) -> AppSettings:
    """Tiny random-weight models only (the real/demo sources are switched off so the tests never depend on them)."""
    return AppSettings(sources=("tiny",), face_pack=str(face_pack), clip=str(clip_file), resolution=64,
                       max_side=512, work_dir=tmp, demo_root=tmp / "no-demo-models", port=free_port(),
                       max_concurrency=4, device="cpu", dtype="float32", **kw)


def fake_service(tmp: Path, face_pack: Path, clip_file: Path, editors: dict[str, Editor],
                 missing: dict[str, str] | None = None) -> EditService:
    """A service over hand-made editors (registered method names) and missing methods with their reasons."""
    settings = tiny_settings(tmp, face_pack, clip_file)
    manager = ModelManager(None)
    sources = {}
    for name, editor in editors.items():
        manager.add(name, editor)
        sources[name] = ModelSource(name, "real", "fake", description="fake test editor")
    for name, reason in (missing or {}).items():
        sources[name] = ModelSource(name, "missing", reason=reason)
    return EditService(settings, sources, manager, Scorers(str(face_pack), str(clip_file)), tmp)


@pytest.fixture(scope="module")
def service_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="module")
def astronaut_file(service_dir) -> Path:
    path = service_dir / "astronaut.png"
    astronaut_portrait().save(path)
    return path


# ---------------------------------------------------------------------------------------------------------- inputs
def _rgb_image() -> PIL.Image.Image:
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = 200, 100, 50
    return PIL.Image.fromarray(arr)


@pytest.mark.parametrize("mode, expected, note", [
    ("RGBA", (255, 255, 255), "transparency onto white"),  # fully transparent -> white background
    ("LA", (255, 255, 255), "transparency onto white"),
    ("L", (124, 124, 124), "converted L"),
    ("P", (204, 102, 51), "converted P"),
    ("CMYK", (200, 100, 50), "converted CMYK"),
    ("I;16", (255, 255, 255), "high bit depth"),  # 65535 -> 255
    ("1", (0, 0, 0), "converted 1"),
])
@pytest.mark.parametrize("as_file", [False, True])
def test_every_image_mode_becomes_rgb(mode, expected, note, as_file, tmp_path):
    if mode == "I;16":
        image = PIL.Image.fromarray(np.full((32, 48), 65535, np.uint16))
    else:
        image = _rgb_image().convert(mode)
        if mode in ("RGBA", "LA"):
            image.putalpha(0)
    if as_file:
        path = tmp_path / ("in.tif" if mode in ("CMYK", "I;16") else "in.png")
        image.save(path)
        loaded = prepare_input(str(path), max_side=512)
    else:
        loaded = prepare_input(image, max_side=512)
    assert loaded.image.mode == "RGB" and loaded.image.size == (48, 32)
    np.testing.assert_allclose(np.asarray(loaded.image)[5, 5], expected, atol=2)
    assert any(note in n for n in loaded.notes), loaded.notes


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)  # stored left half red
    arr[:, 40:] = (0, 0, 255)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left column becomes the top row
    path = tmp_path / "rotated.jpg"
    PIL.Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    loaded = prepare_input(str(path), max_side=512)
    out = np.asarray(loaded.image).astype(int)
    assert loaded.image.size == (40, 80)
    assert out[5, 20, 0] > 200 and out[5, 20, 2] < 50  # top is red
    assert out[-5, 20, 2] > 200 and out[-5, 20, 0] < 50  # bottom is blue
    assert "applied EXIF orientation" in loaded.notes


def test_large_image_is_downscaled_and_the_size_stated(tmp_path, tiny_face_pack, tiny_clip_file):
    service = fake_service(tmp_path, tiny_face_pack, tiny_clip_file, {"ipnet": FakeEditor()})
    big = PIL.Image.new("RGB", (2000, 1000), (90, 120, 160))
    result = service.run(EditRequest(big, "wearing a hat", ("ipnet",)))
    assert result.error is None and result.image.size == (512, 256)
    assert result.results[0].image.size == (512, 256)
    assert "downscaled from 2000x1000 to 512x256" in result.status_markdown()


def test_non_image_and_missing_uploads_give_a_message_without_server_paths(tmp_path):
    path = tmp_path / "secret_dir" / "notes.txt"
    path.parent.mkdir()
    path.write_text("not an image")
    with pytest.raises(InputError, match="cannot be used as a portrait") as info:
        prepare_input(str(path), max_side=512)
    assert "notes.txt" in str(info.value) and "secret_dir" not in str(info.value)
    truncated = tmp_path / "half.png"
    truncated.write_bytes(_png_bytes()[:60])
    with pytest.raises(InputError, match="half.png"):
        prepare_input(str(truncated), max_side=512)
    with pytest.raises(InputError, match="Please upload a portrait"):
        prepare_input(None, max_side=512)


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    astronaut_portrait(64).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------ instructions
def test_instruction_token_counting_and_truncation():
    counter = TokenCounter()
    assert counter.count("a photo") == 4  # 2 word tokens + start + end
    long = " ".join(POSTER_INSTRUCTIONS)
    assert counter.count(long) > 77

    def count(t: str) -> int:
        return counter.count(t)

    fitted, total = fit_instruction(long, count, 77)
    assert total == counter.count(long)
    assert count(fitted) <= 77 and long.startswith(fitted)
    next_word_end = long.find(" ", len(fitted) + 1)
    assert count(long[:next_word_end]) > 77  # the longest prefix that fits, cut at a word boundary
    assert fit_instruction("wearing a hat", count, 77) == ("wearing a hat", 5)
    huge, _ = fit_instruction("x" * 2000, count, 77)
    assert 0 < count(huge) <= 77


def test_request_level_messages(tmp_path, tiny_face_pack, tiny_clip_file, astronaut_file):
    service = fake_service(tmp_path, tiny_face_pack, tiny_clip_file, {"ipnet": FakeEditor()})
    empty = service.run(EditRequest(str(astronaut_file), "   ", ("ipnet",)))
    assert empty.error and "Please type an instruction" in empty.error and not empty.results
    none_selected = service.run(EditRequest(str(astronaut_file), "a hat", ()))
    assert "select at least one method" in none_selected.error
    bad_seed = service.run(EditRequest(str(astronaut_file), "a hat", ("ipnet",), seed=-1))
    assert "seed" in bad_seed.error
    long = " ".join(POSTER_INSTRUCTIONS)
    result = service.run(EditRequest(str(astronaut_file), long, ("ipnet",)))
    assert result.error is None and result.results[0].ok
    assert any("truncated" in w for w in result.warnings)
    assert long.startswith(result.instruction) and len(result.instruction) < len(long)
    assert TokenCounter().count(result.instruction) <= 77


# ---------------------------------------------------------------------------------------------------------- faces
def test_face_messages_and_identity_similarity(tmp_path, tiny_face_pack, tiny_clip_file):
    service = fake_service(tmp_path, tiny_face_pack, tiny_clip_file, {"ipnet": FakeEditor()})
    # The fake editor returns its input: same face, identity similarity 1.
    one = service.run(EditRequest(astronaut_portrait(), "wearing a hat", ("ipnet",)))
    assert not one.warnings
    assert one.results[0].id_sim == pytest.approx(1.0, abs=1e-4)
    assert isinstance(one.results[0].clip_t, float) and -1 <= one.results[0].clip_t <= 1
    # No face: editing still happens, identity is n/a with the reason.
    blank = service.run(EditRequest(blank_image(), "wearing a hat", ("ipnet",)))
    assert blank.results[0].ok and blank.results[0].id_sim is None
    assert any("No face was detected" in w for w in blank.warnings)
    assert "ID-sim n/a" in blank.results[0].caption()
    # Several faces: the largest one (the left portrait, 256 px tall) is used and the message says so.
    several = service.run(EditRequest(two_faces(), "wearing a hat", ("ipnet",)))
    message = next(w for w in several.warnings if "faces were detected" in w)
    assert "uses the largest" in message
    x1 = int(message.split("box ")[1].split(",")[0])
    assert x1 < 256
    assert several.results[0].id_sim == pytest.approx(1.0, abs=1e-4)


def test_missing_scorers_show_n_a_with_the_reason(tmp_path, astronaut_file):
    settings = AppSettings(sources=("tiny",), face_pack=str(tmp_path / "no_pack"), clip=str(tmp_path / "no.pt"),
                           work_dir=tmp_path, demo_root=tmp_path / "none", device="cpu")
    manager = ModelManager(None)
    manager.add("ipnet", FakeEditor())
    service = EditService(settings, {"ipnet": ModelSource("ipnet", "real", "fake")}, manager,
                          Scorers(settings.face_pack, settings.clip), tmp_path)
    result = service.run(EditRequest(str(astronaut_file), "wearing a hat", ("ipnet",)))
    r = result.results[0]
    assert r.ok and r.id_sim is None and r.clip_t is None
    assert "no_pack" in r.id_note and "no.pt" in r.clip_note
    row = result.table().iloc[0]
    assert row["ID-sim"] == "n/a" and row["CLIP-T"] == "n/a"


# ---------------------------------------------------------------------------------------------------------- methods
def test_a_failing_method_shows_its_reason_while_the_others_run(tmp_path, tiny_face_pack, tiny_clip_file,
                                                               astronaut_file):
    service = fake_service(
        tmp_path, tiny_face_pack, tiny_clip_file,
        {"ipnet": FakeEditor(), "idenet": FakeEditor(fail=RuntimeError("CUDA kernel exploded")),
         "instructpix2pix": FakeEditor(fail=torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))},
        missing={"magicbrush": "Model magicbrush is not available: not in the local cache"})
    steps: list[tuple[float, str]] = []
    methods = ("magicbrush", "idenet", "ipnet", "instructpix2pix")
    result = service.run(EditRequest(str(astronaut_file), "wearing a hat", methods),
                         progress=lambda f, d: steps.append((f, d)))
    by = {r.method: r for r in result.results}
    assert [r.method for r in result.results] == list(methods)
    # Out of memory: the idle models are unloaded and the tile says so.
    assert "out of memory" in by["instructpix2pix"].caption() and "ipnet" in by["instructpix2pix"].error
    assert not service.manager.editor("ipnet").is_loaded
    assert by["ipnet"].ok and by["ipnet"].latency_ms > 0 and by["ipnet"].nfe == 1
    assert by["magicbrush"].image is None and "not in the local cache" in by["magicbrush"].caption()
    assert by["idenet"].image is None and "CUDA kernel exploded" in by["idenet"].caption()
    assert "Cannot run here" in by["idenet"].caption()
    assert "Traceback" not in result.status_markdown() + "".join(r.caption() for r in result.results)
    table = result.table()
    assert table["status"][2] == "ok" and table["status"][0].startswith("cannot run")
    assert "1 of 4" in result.status_markdown()
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    before, after, label = result.slider()
    assert label.endswith("IPNet (1 step)") and after.size == before.size


def test_tiny_sources_are_labelled_in_every_tile(served, astronaut_file):
    service = served[0]  # EditService.create(tiny settings), as the served app uses it
    assert service.sources["ipnet"].kind == "tiny" and service.sources["magicbrush"].kind == "tiny"
    assert set(service.sources) == set(list_methods()) - {"no-edit"}  # every editing method gets a checkbox
    assert TINY_LABEL in service.banner_markdown()
    result = service.run(EditRequest(str(astronaut_file), "wearing a hat", ("ipnet", "instructpix2pix"), steps=2))
    assert all(r.ok and TINY_LABEL in r.caption() for r in result.results)
    assert [r.nfe for r in result.results] == [1, 6]  # 2 steps x 3-way guidance
    assert all(r.image.size == (320, 320) for r in result.results)


def test_without_any_weights_every_tile_says_why(tmp_path, astronaut_file):
    """The default sources (real, then demo) offline with no weights: nothing runs, nothing crashes, every tile and
    the banner carry the reason and the --tiny hint."""
    t0 = time.perf_counter()
    settings = AppSettings(face_pack=str(tmp_path / "no_pack"), clip=str(tmp_path / "no_clip.pt"), work_dir=tmp_path,
                           demo_root=tmp_path / "no-demo-models", device="cpu", auto_tiny=False)
    service = EditService.create(settings)
    assert time.perf_counter() - t0 < 20
    assert all(s.kind == "missing" for s in service.sources.values())
    assert service.default_methods() == ["ipnet"] and "not available" in service.banner_markdown()
    result = service.run(EditRequest(str(astronaut_file), "wearing a hat", ("ipnet", "magicbrush")))
    assert result.error is None and "0 of 2" in result.status_markdown()
    for r in result.results:
        assert r.image is None and "is not available" in r.caption() and "--tiny" in r.caption()
    assert "instantportrait/ipnet-sd15" in result.results[0].error


def test_without_any_weights_the_default_falls_back_to_labelled_tiny_models(tmp_path, astronaut_file):
    """A fresh offline machine: `python app.py` still serves something; every tile says it is tiny random weights."""
    settings = AppSettings(face_pack=str(tmp_path / "no_pack"), clip=str(tmp_path / "no_clip.pt"), work_dir=tmp_path,
                           demo_root=tmp_path / "no-demo-models", device="cpu", resolution=64)
    service = EditService.create(settings)
    assert service.sources["ipnet"].kind == "tiny" and service.sources["magicbrush"].kind == "tiny"
    assert TINY_LABEL in service.banner_markdown()
    result = service.run(EditRequest(str(astronaut_file), "wearing a hat", ("ipnet",)))
    assert result.results[0].image is not None and TINY_LABEL in result.results[0].caption()


# ---------------------------------------------------------------------------------------------------------- sources
def test_model_source_order_demo_tiny_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    demo_root = tmp_path / "demo_models"
    (demo_root / "ipnet").mkdir(parents=True)
    (demo_root / "ipnet" / "model_index.json").write_text("{}")
    assert demo_model_dir("ipnet-2step", demo_root) == demo_root / "ipnet"  # shares ipnet's model key
    assert demo_model_dir("magicbrush", demo_root) is None
    tiny = TinyModels(tmp_path / "tiny")
    src = resolve_source("ipnet-2step", sources=("real", "demo", "tiny"), demo_root=demo_root, tiny=tiny)
    assert src.kind == "demo" and src.location == str(demo_root / "ipnet")
    src = resolve_source("magicbrush", sources=("real", "demo", "tiny"), demo_root=demo_root, tiny=tiny)
    assert src.kind == "tiny" and Path(src.location, "model_index.json").is_file()
    missing = resolve_source("magicbrush", sources=("real", "demo"), demo_root=demo_root)
    assert missing.kind == "missing" and "not available" in missing.reason and "--tiny" in missing.reason
    # An explicit model location is final: no silent fallback to demo or tiny weights.
    explicit = resolve_source("ipnet", sources=("real", "demo", "tiny"), override=str(tmp_path / "nowhere"),
                              demo_root=demo_root, tiny=tiny)
    assert explicit.kind == "missing" and "nowhere" in explicit.reason
    monkeypatch.setenv("INSTANTPORTRAIT_MAGICBRUSH", str(tmp_path / "env-nowhere"))
    from_env = resolve_source("magicbrush", sources=("real", "demo", "tiny"), demo_root=demo_root, tiny=tiny)
    assert from_env.kind == "missing" and "env-nowhere" in from_env.reason
    assert resolve_source("magicbrush", sources=("tiny",), tiny=tiny).kind == "tiny"  # tiny only: env ignored


def test_settings_from_flags_and_environment(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)  # set on Spaces
    monkeypatch.setenv("INSTANTPORTRAIT_TINY", "1")
    monkeypatch.setenv("INSTANTPORTRAIT_MAX_CONCURRENCY", "3")
    s = settings_from_args(["--model", "ipnet=/data/ipnet", "--memory-budget-gb", "4", "--port", "7999"])
    assert s.sources == ("real", "demo", "tiny") and s.max_concurrency == 3
    assert s.models == {"ipnet": "/data/ipnet"} and s.budget_bytes() == 4_000_000_000 and s.port == 7999
    assert s.host == "127.0.0.1" and s.share is False
    monkeypatch.delenv("INSTANTPORTRAIT_TINY")
    assert settings_from_args([]).sources == ("real", "demo")
    with pytest.raises(SystemExit):
        settings_from_args(["--model", "no-equals-sign"])
    with pytest.raises(SystemExit):
        settings_from_args(["--max-concurrency", "0"])


def test_zero_gpu_wraps_only_when_spaces_is_importable(monkeypatch):
    def fn(x):
        return x + 1

    monkeypatch.setitem(sys.modules, "spaces", None)  # import fails
    assert zero_gpu(fn) is fn
    calls = []
    fake = types.ModuleType("spaces")

    def gpu(duration=60):
        def wrap(f):
            def wrapped(*a, **k):
                calls.append(duration)
                return f(*a, **k)
            return wrapped
        return wrap

    fake.GPU = gpu
    monkeypatch.setitem(sys.modules, "spaces", fake)
    wrapped = zero_gpu(fn, duration=90)
    assert wrapped is not fn and wrapped(1) == 2 and calls == [90]


def test_examples_are_written_once_with_the_poster_instructions(tmp_path):
    rows = write_examples(tmp_path)
    assert [t for _, t in rows] == list(POSTER_INSTRUCTIONS)
    assert all(p.is_file() for p, _ in rows) and rows[0][0].name == "astronaut.png"
    mtime = rows[0][0].stat().st_mtime_ns
    write_examples(tmp_path)
    assert rows[0][0].stat().st_mtime_ns == mtime
    assert sum(p.stat().st_size for p in set(p for p, _ in rows)) < 400_000
    assert drawn_portrait("drawn-b").size == (256, 256)


def test_demo_world_examples_are_held_out_people_in_the_worlds_words(tmp_path):
    from instantportrait.demo import World
    from instantportrait.demo.examples import write_demo_world_examples
    from instantportrait.demo.language import parse_instruction

    rows = write_demo_world_examples(tmp_path, n=6)
    world = World(0, 120, size=128)
    samples = [world.sample("test", int(p.stem.rsplit("-", 1)[1])) for p, _ in rows]
    assert [s.instruction for s in samples] == [t for _, t in rows]  # each row is that test person's own edit
    assert len({s.category for s in samples}) == 6  # one of each category first
    assert all(parse_instruction(t) for _, t in rows)  # in the world's words
    assert all(PIL.Image.open(p).size == (128, 128) for p, _ in rows)
    mtime = rows[0][0].stat().st_mtime_ns
    assert write_demo_world_examples(tmp_path, n=6) == rows and rows[0][0].stat().st_mtime_ns == mtime


# ---------------------------------------------------------------------------------------------------------- LRU manager
def test_manager_loads_lazily_and_evicts_least_recently_used():
    editors = {n: FakeEditor(250) for n in "abcd"}  # 1000 bytes each
    manager = ModelManager(budget_bytes=3000)
    for n, e in editors.items():
        manager.add(n, e)
    assert manager.loaded() == [] and editor_nbytes(editors["a"]) == 0
    for n in "abc":
        with manager.use(n) as lease:
            assert lease.editor is editors[n] and lease.load_seconds >= 0
    assert manager.loaded() == ["a", "b", "c"] and manager.used_bytes() == 3000
    with manager.use("a") as lease:
        assert lease.load_seconds == 0.0  # already loaded
    with manager.use("d"):
        pass
    assert manager.evictions == ["b"] and manager.loaded() == ["c", "a", "d"]
    assert not editors["b"].is_loaded and editors["a"].loads == 1
    with manager.use("b"):  # reloaded on demand, evicting the now least recently used "c"
        pass
    assert manager.evictions == ["b", "c"] and editors["b"].loads == 2


def test_manager_never_evicts_a_model_in_use():
    editors = {n: FakeEditor(250) for n in "abc"}
    manager = ModelManager(budget_bytes=1500)
    for n, e in editors.items():
        manager.add(n, e)
    with manager.use("a"):
        with manager.use("b"):  # over budget, but "a" is in use: both stay loaded
            assert editors["a"].is_loaded and editors["b"].is_loaded
            assert manager.used_bytes() == 2000 and manager.in_use() == ["a", "b"]
        # "b" became idle while over budget: trimmed; "a" (still in use) stays
        assert manager.loaded() == ["a"] and manager.evictions == ["b"]
    with manager.use("c"):
        pass
    assert manager.loaded() == ["c"] and manager.evictions == ["b", "a"]


def test_manager_under_concurrent_requests():
    editors = {n: FakeEditor(250, delay=0.002) for n in "abc"}
    manager = ModelManager(budget_bytes=2000)
    for n, e in editors.items():
        manager.add(n, e)
    errors: list[BaseException] = []
    image = PIL.Image.new("RGB", (8, 8))

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(15):
                name = "abc"[int(rng.integers(3))]
                with manager.use(name) as lease:
                    lease.editor.edit([image], ["x"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sum(e.edits for e in editors.values()) == 8 * 15
    assert all(e.max_active == 1 for e in editors.values())  # one edit at a time per editor, none on unloaded
    assert manager.used_bytes() <= 2000 and manager.in_use() == []


def test_manager_rejects_bad_budgets_and_names():
    with pytest.raises(ValueError, match="positive"):
        ModelManager(budget_bytes=0)
    manager = ModelManager(None)
    manager.add("a", FakeEditor())
    with pytest.raises(ValueError, match="already"):
        manager.add("a", FakeEditor())
    with pytest.raises(KeyError, match="no editor named 'zzz'"):
        with manager.use("zzz"):
            pass


# ---------------------------------------------------------------------------------------------------- the served app
@pytest.fixture(scope="module")
def served(service_dir, tiny_face_pack, tiny_clip_file):
    """The real app (app.py) on a free loopback port, tiny models, tiny face pack, tiny CLIP."""
    import app as app_module

    demo, service, url = app_module.serve(tiny_settings(service_dir / "served", tiny_face_pack, tiny_clip_file))
    yield service, url
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[1], verbose=False)


def _value(x):
    return x["value"] if isinstance(x, dict) and x.get("__type__") == "update" else x


def _call(client, image, text, methods, seed=0, steps=2):
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)), text, list(methods), seed, steps, 7.5, 1.5, api_name="/edit")


def _tile(out, service, method):
    i = list(service.sources).index(method)
    return out[3 + 2 * i], out[4 + 2 * i]


def test_app_edits_with_two_methods(served, client, astronaut_file):
    service, _ = served
    out = _call(client, astronaut_file, "90s gamer yearbook photo, with headset", ["ipnet", "idenet"], seed=1)
    status, slider, table = _value(out[0]), out[1], _value(out[2])
    assert "90s gamer yearbook photo, with headset" in status and "2 of 2" in status
    for method, nfe in (("ipnet", 1), ("idenet", 6)):
        image, caption = _tile(out, service, method)
        assert image["visible"] and PIL.Image.open(_value(image)).size == (320, 320)
        assert f"{nfe} network evaluation" in _value(caption) and TINY_LABEL in _value(caption)
    hidden, _ = _tile(out, service, "magicbrush")
    assert hidden["visible"] is False
    rows = {r[0]: dict(zip(table["headers"], r)) for r in table["data"]}
    assert set(rows) == {"IPNet (1 step)", "IDE-Net (teacher)"}
    assert rows["IPNet (1 step)"]["network evaluations"] == 1 and rows["IDE-Net (teacher)"]["network evaluations"] == 6
    assert all(r["latency (ms)"] > 0 and -1 <= r["CLIP-T"] <= 1 for r in rows.values())
    before, after = _value(slider)
    assert np.array_equal(np.asarray(PIL.Image.open(before)), np.asarray(astronaut_portrait()))
    assert PIL.Image.open(after).size == (320, 320)


def test_app_bad_inputs_give_messages(served, client, service_dir, astronaut_file):
    service, _ = served
    text_file = service_dir / "notes.txt"
    text_file.write_text("hello")
    out = _call(client, text_file, "wearing a hat", ["ipnet"])
    assert "cannot be used as a portrait" in _value(out[0]) and "notes.txt" in _value(out[0])
    assert _tile(out, service, "ipnet")[0]["visible"] is False
    out = _call(client, astronaut_file, "", ["ipnet"])
    assert "Please type an instruction" in _value(out[0])
    out = _call(client, astronaut_file, "a hat", [])
    assert "select at least one method" in _value(out[0])
    blank = service_dir / "blank.png"
    blank_image().save(blank)
    out = _call(client, blank, "a hat", ["ipnet"])
    assert "No face was detected" in _value(out[0]) and _tile(out, service, "ipnet")[0]["visible"]
    # A method with no model here shows why in its tile while the other one runs.
    if not service.sources.get("instantid", ModelSource("x", "tiny")).available:
        out = _call(client, astronaut_file, "a hat", ["ipnet", "instantid"])
        image, caption = _tile(out, service, "instantid")
        assert "Cannot run here" in _value(caption) and _value(image) is None
        assert _tile(out, service, "ipnet")[0]["visible"]


def test_eight_concurrent_requests_each_get_their_own_results(served, client, service_dir):
    from gradio_client import handle_file

    service, _ = served
    pictures = [astronaut_portrait(), *[drawn_portrait(s) for s in ("drawn-a", "drawn-b", "drawn-c", "drawn-d")],
                astronaut_portrait().transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT), two_faces(128),
                astronaut_portrait(200)]
    inputs = []
    for i, picture in enumerate(pictures):
        path = service_dir / f"concurrent_{i}.png"
        picture.save(path)
        inputs.append((path, f"{POSTER_INSTRUCTIONS[i]} #{i}", 100 + i))
    jobs = [client.submit(handle_file(str(p)), text, ["ipnet"], seed, 0, 7.5, 1.5, api_name="/edit")
            for p, text, seed in inputs]
    outputs = [job.result(timeout=120) for job in jobs]
    idx = list(service.sources).index("ipnet")
    got = [np.asarray(PIL.Image.open(_value(out[3 + 2 * idx])).convert("RGB")).astype(np.float32) for out in outputs]
    for (_path, text, _seed), out in zip(inputs, outputs):
        status = _value(out[0])
        assert text in status and "1 of 1" in status, status
    # The same edits one by one with the same editor: each concurrent answer is its own request's result.
    editor = service.manager.editor("ipnet")
    refs = [np.asarray(editor.edit([prepare_input(str(p), 512).image], [text], seed=seed)[0]).astype(np.float32)
            for p, text, seed in inputs]
    for i, ref in enumerate(refs):
        assert got[i].shape == ref.shape
        errors = [np.abs(got[i] - r).mean() if r.shape == got[i].shape else np.inf for r in refs]
        assert errors[i] < 0.5 and int(np.argmin(errors)) == i, f"request {i} got another request's image: {errors}"


def test_missing_default_scorers_fall_back_to_the_shipped_demo_scorers(tmp_path, monkeypatch):
    """No buffalo_l and no ViT-L/14 on disk: the app scores with the demo face pack and demo CLIP, labelled as toys.
    An explicitly named pack that is missing stays missing (an explicit choice is final)."""
    from instantportrait.app.scoring import Scorers
    from instantportrait.demo import World

    monkeypatch.setenv("INSIGHTFACE_ROOT", str(tmp_path / "no-insightface"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip either
    scorers = Scorers(device="cpu")
    assert "demo pack" in scorers.face_label and "demo model" in scorers.clip_label
    sample = World(seed=0, num_identities=20).sample("test", 0)
    faces = scorers.source_faces(sample.source, demo_world=True)  # the toy pack only for demo-world portraits
    assert faces.face is not None and faces.count == 1 and faces.backend == "toy:demo_face_pack"
    assert scorers.source_faces(astronaut_portrait()).backend == "dlib"  # a photo: a real model, never the toy
    explicit = Scorers(face_pack=str(tmp_path / "my_pack"), clip=str(tmp_path / "my_clip.pt"), device="cpu")
    assert explicit.face_error and explicit.clip_error


def test_identity_backend_follows_the_image_and_every_tile_names_it(tmp_path, monkeypatch, tiny_clip_file):
    """Default face pack, no buffalo_l: the app's demo-world example is scored with the toy pack, the astronaut (and
    any upload) with dlib; the tile caption and the table row say which."""
    from instantportrait.demo.examples import write_demo_world_examples

    monkeypatch.setenv("INSIGHTFACE_ROOT", str(tmp_path / "no-insightface"))
    settings = AppSettings(sources=("tiny",), clip=str(tiny_clip_file), work_dir=tmp_path, demo_root=tmp_path / "none",
                           device="cpu")
    manager = ModelManager(None)
    manager.add("ipnet", FakeEditor())
    service = EditService(settings, {"ipnet": ModelSource("ipnet", "real", "fake")}, manager,
                          Scorers(settings.face_pack, settings.clip), tmp_path)
    world_example = write_demo_world_examples(tmp_path / "elsewhere")[0][0]  # a copy, as gradio serves it
    for image, backend in ((str(world_example), "toy:demo_face_pack"), (astronaut_portrait(), "dlib")):
        r = service.run(EditRequest(image, "wearing a hat", ("ipnet",))).results[0]
        assert r.ok and r.id_backend == backend and r.id_sim == pytest.approx(1.0, abs=1e-4)
        assert f"({backend})" in r.caption()
        assert service.run(EditRequest(image, "wearing a hat", ("ipnet",))).table().iloc[0]["ID model"] == backend
