"""The benchmark fully offline on the demo world: methods whose real model is missing run on their toy demo model (at
its own resolution, labelled as such, part of the resume fingerprint), missing default scorers fall back to the
shipped demo face pack and CLIP (an explicitly named scorer never does), and ``demo-world`` images and instructions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from benchmark import store
from benchmark.cli import main
from benchmark.config import BenchmarkConfig, check_fingerprint
from benchmark.data import demo_world_instructions, load_images, load_instructions, parse_demo_world
from benchmark.editors import DEMO_LABEL, make_editor, model_source
from instantportrait.config import DEMO_CLIP, DEMO_FACE_PACK
from instantportrait.demo import CATEGORIES, World, describe_edits, parse_instruction
from instantportrait.errors import ModelNotAvailableError
from instantportrait.eval.scorer import ScoringConfig
from instantportrait.methods import Editor, registry

SPY_RES = 48  # the spy's demo model works at 48 px, the demo-world sources are 64 px


class SpyEditor(Editor):
    """Has no real model here (only a demo folder); returns its working-size input and records that size."""

    name = "spy-test"
    label = "Spy (test)"
    seen: ClassVar[list[tuple[int, int]]] = []

    def check_available(self) -> None:
        if self.model_override is None:
            raise ModelNotAvailableError("spy-test: the real model is not available in tests")

    def _load(self):
        return self.model_override

    def _modules(self, loaded):
        return []

    def nfe(self, settings=None):
        return 1

    def _edit(self, loaded, images, instructions, seed, settings, progress):
        type(self).seen.extend(im.size for im in images)
        return [im.copy() for im in images]


@pytest.fixture()
def spy(monkeypatch):
    monkeypatch.setitem(registry._EDITORS, SpyEditor.name, SpyEditor)
    monkeypatch.setattr(SpyEditor, "seen", [])
    return SpyEditor


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory, tiny_ipnet) -> Path:
    """A demo-model folder: the tiny IPNet as ``ipnet/`` (trained at 64 px) and the spy's ``spy-test/`` (48 px)."""
    root = tmp_path_factory.mktemp("demo_models")
    shutil.copytree(tiny_ipnet, root / "ipnet")
    (root / "ipnet" / "train_config.yaml").write_text("resolution: 64\n")
    (root / "spy-test").mkdir()
    (root / "spy-test" / "train_config.yaml").write_text(f"resolution: {SPY_RES}\n")
    return root


@pytest.fixture()
def no_default_scorers(tmp_path, monkeypatch):
    """No buffalo_l and no ViT-L/14 on this machine (and HF_HUB_OFFLINE, so nothing can be downloaded)."""
    monkeypatch.setenv("INSIGHTFACE_ROOT", str(tmp_path / "no-insightface"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.cache/clip


def _records(out: Path) -> dict[str, dict]:
    return {r["method"]: r for r in store.read_jsonl(out / "methods.jsonl")}


# ---------------------------------------------------------------------------------------------- end to end
def test_offline_demo_world_run_uses_demo_models_and_demo_scorers(tmp_path, demo_root, spy, no_default_scorers,
                                                                 capsys):
    out = tmp_path / "results"
    args = ["--methods", "ipnet,spy-test,idenet", "--images", "demo-world:2", "--limit", "3", "--out", str(out),
            "--device", "cpu", "--resolution", "128", "--demo-root", str(demo_root), "--warmup", "0", "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "ipnet: the real model is not available here, so this runs the TOY demo model" in err
    assert "TOY demo face pack" in err and "TOY demo CLIP" in err

    rec = _records(out)
    assert rec["ipnet"]["status"] == "ok" and rec["ipnet"]["model_source"] == "demo"
    assert rec["ipnet"]["model_location"] == str(demo_root / "ipnet")
    assert rec["ipnet"]["resolution"] == 64  # its native size, not the run's 128
    assert rec["spy-test"]["model_source"] == "demo" and rec["spy-test"]["resolution"] == SPY_RES
    assert spy.seen and set(spy.seen) == {(SPY_RES, SPY_RES)}  # the edit really ran at the demo model's size
    assert rec["idenet"]["status"] == "unavailable" and rec["idenet"]["model_source"] == "real"
    assert "not available" in rec["idenet"]["message"]  # no demo IDE-Net in this demo root

    rows = store.read_jsonl(out / "rows.jsonl")
    ids = [im.id for im in load_images("demo-world:2")[0]]
    first = [ins.id for ins in demo_world_instructions()[:3]]
    for method in ("ipnet", "spy-test"):
        mine = [r for r in rows if r["method"] == method]
        assert sorted((r["image"], r["instruction_id"]) for r in mine) == sorted((ids[0], i) for i in first)
        for r in mine:
            assert r["status"] == "ok" and r["scored"] is True and r["width"] == r["height"] == 64
            assert r["no_face_source"] is False  # the demo face pack finds the synthetic person
            assert isinstance(r["clip_t"], float) and isinstance(r["clip_dir"], float)
            assert r["source_caption"] == "a photo of a person" and r["target_caption"].startswith("a photo of")
            with Image.open(out / r["output"]) as im:
                assert im.size == (64, 64)
    for r in (r for r in rows if r["method"] == "spy-test"):  # a (resized) copy keeps the person
        assert isinstance(r["id_sim"], float) and r["id_sim"] > 0.5

    run = json.loads((out / "run.json").read_text())
    assert run["fingerprint"]["demo_models"] == {"ipnet": str(demo_root / "ipnet"),
                                                 "spy-test": str(demo_root / "spy-test")}
    assert run["model_sources"]["ipnet"] == {"kind": "demo", "location": str(demo_root / "ipnet"), "resolution": 64}
    assert run["scoring"]["config"]["face_pack"] == str(DEMO_FACE_PACK)
    assert run["scoring"]["config"]["clip"] == str(DEMO_CLIP)
    assert len(run["scoring"]["demo_scorers"]) == 2
    # Both identity columns name their backend: the toy pack on the demo world, dlib as the second opinion.
    assert run["scoring"]["identity"] == {"id_sim": "toy:demo_face_pack", "id_sim_dlib": "dlib"}
    for r in (r for r in rows if r["status"] == "ok"):
        assert r["id_backend"] == "toy:demo_face_pack" and r["id_backend_dlib"] == "dlib"
        assert "id_sim_dlib" in r and "no_face_source_dlib" in r
    assert run["instructions"]["path"] == "demo-world" and run["instructions"]["count"] == 15

    summary_json = json.loads((out / "summary.json").read_text())
    assert summary_json["run"]["scoring"]["identity"]["id_sim"] == "toy:demo_face_pack"
    summary = {m["method"]: m for m in summary_json["methods"]}
    assert summary["ipnet"]["label"] == "IPNet (1 step)" + DEMO_LABEL
    assert summary["idenet"]["label"] == "IDE-Net (teacher)"
    md = (out / "summary.md").read_text()
    assert "| IPNet (1 step) [toy demo model] | ok |" in md
    assert "TOY DEMO MODELS" in md and md.count("TOY DEMO SCORER") == 2

    # A resume that would run these methods on their real models (or not at all) cannot mix the rows.
    assert main([*args, "--no-demo"]) == 2
    assert "demo_models" in capsys.readouterr().err


def test_no_demo_leaves_the_method_unavailable_with_the_reason(tmp_path, demo_root, capsys):
    out = tmp_path / "results"
    assert main(["--methods", "ipnet", "--images", "demo-world:1", "--limit", "1", "--out", str(out), "--device",
                 "cpu", "--demo-root", str(demo_root), "--no-demo", "--face-pack", "none", "--clip", "none",
                 "--warmup", "0", "--quiet"]) == 0
    rec = _records(out)["ipnet"]
    assert rec["status"] == "unavailable" and rec["model_source"] == "real" and rec["label"] == "IPNet (1 step)"
    assert "not available" in rec["message"]
    assert f"a toy demo model is shipped in {demo_root / 'ipnet'}" in rec["message"]
    assert not [r for r in store.read_jsonl(out / "rows.jsonl") if r["method"] == "ipnet"]
    assert "TOY demo model" not in capsys.readouterr().err


def test_an_explicitly_named_scorer_is_final(tmp_path, demo_root, no_default_scorers, capsys):
    common = ["--methods", "ipnet", "--images", "demo-world:1", "--device", "cpu", "--demo-root", str(demo_root),
              "--quiet"]
    assert main([*common, "--out", str(tmp_path / "a"), "--face-pack", "buffalo_l", "--clip", "none"]) == 3
    assert "buffalo_l" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "b"), "--face-pack", "none", "--clip", "ViT-L/14"]) == 3
    assert "ViT-L/14" in capsys.readouterr().err
    assert not (tmp_path / "a" / "rows.jsonl").exists() and not (tmp_path / "b" / "rows.jsonl").exists()


# ---------------------------------------------------------------------------------------------- pieces
def test_scoring_fallback_replaces_only_missing_defaults_that_may_fall_back(no_default_scorers, tiny_face_pack):
    # Demo-world images: the toy pack made for them. Any other image: buffalo_l stays, recorded as unavailable here
    # (never the toy pack on a photo); dlib's column is the real one.
    resolved, notes = ScoringConfig().with_demo_fallback(demo_world=True)
    assert (resolved.face_pack, resolved.clip) == (str(DEMO_FACE_PACK), str(DEMO_CLIP)) and len(notes) == 2
    assert resolved.unavailable == {}
    resolved, notes = ScoringConfig().with_demo_fallback()
    assert (resolved.face_pack, resolved.clip) == ("buffalo_l", str(DEMO_CLIP)) and len(notes) == 1
    assert list(resolved.unavailable) == ["id_sim"] and "buffalo_l" in resolved.unavailable["id_sim"]
    resolved, notes = ScoringConfig(demo_fallback=("clip",)).with_demo_fallback(demo_world=True)
    assert (resolved.face_pack, resolved.clip) == ("buffalo_l", str(DEMO_CLIP)) and len(notes) == 1
    named = ScoringConfig(face_pack=str(tiny_face_pack), clip=None)
    assert named.with_demo_fallback() == (named, [])
    with pytest.raises(ValueError, match="only"):
        ScoringConfig(demo_fallback=("det_size",))


def test_model_source_and_working_size(tmp_path, demo_root, tiny_ipnet):
    def cfg(**kw) -> BenchmarkConfig:
        return BenchmarkConfig(methods=["ipnet"], out=tmp_path, images="demo-world:1", resolution=128,
                               demo_root=demo_root, **kw)

    source = model_source(cfg(), "ipnet")
    assert (source.kind, source.location, source.resolution) == ("demo", str(demo_root / "ipnet"), 64)
    assert make_editor(cfg(), "ipnet", "cpu", source).resolution == 64
    assert make_editor(cfg(method_resolution={"ipnet": 32}), "ipnet", "cpu", source).resolution == 32
    assert make_editor(cfg(method_resolution={"ipnet": None}), "ipnet", "cpu", source).resolution == 64  # native
    assert model_source(cfg(demo=False), "ipnet").kind == "real"
    override = model_source(cfg(model_overrides={"ipnet": str(tiny_ipnet)}), "ipnet")
    assert (override.kind, override.location) == ("override", str(tiny_ipnet))
    editor = make_editor(cfg(model_overrides={"ipnet": str(tiny_ipnet)}), "ipnet", "cpu", override)
    assert editor.resolution == 128 and editor.model_override == str(tiny_ipnet)
    assert model_source(cfg(random_weights=True), "ipnet").kind == "random-weights"
    assert cfg().instructions == "demo-world"  # the demo world's own instructions by default
    assert cfg().fingerprint({"ipnet": source})["demo_models"] == {"ipnet": str(demo_root / "ipnet")}
    assert "demo_models" not in cfg().fingerprint({"ipnet": override})


def test_resume_refuses_to_mix_demo_and_real_rows_of_a_method(tmp_path):
    base = BenchmarkConfig(methods=["ipnet"], out=tmp_path, images="demo-world:1").fingerprint()
    previous = {"config": {"methods": ["ipnet"]}, "fingerprint": {**base, "demo_models": {"ipnet": "demo/ipnet"}}}
    # the same sources, plus a method new to the folder on its demo model: nothing to mix
    check_fingerprint(previous, {**base, "demo_models": {"ipnet": "demo/ipnet", "idenet": "demo/idenet"}}, tmp_path,
                      ["ipnet", "idenet"])
    check_fingerprint(previous, base, tmp_path, ["idenet"])  # ipnet not run this time
    with pytest.raises(ValueError, match="demo_models"):  # ipnet's real model turned up: its rows would mix
        check_fingerprint(previous, base, tmp_path, ["ipnet"])
    with pytest.raises(ValueError, match="demo_models"):  # and the other way round
        check_fingerprint({**previous, "fingerprint": base}, {**base, "demo_models": {"ipnet": "demo/ipnet"}},
                          tmp_path, ["ipnet"])


def test_demo_world_images_are_stable_test_split_sources():
    images, skipped = load_images("demo-world:3:48")
    again, _ = load_images("demo-world:3:48")
    assert not skipped and len(images) == 3 and [im.id for im in images] == [im.id for im in again]
    world = World(seed=0, num_identities=120, size=48)
    test_people = set(world.split_ids("test"))
    for im, sample in zip(images, world.samples("test", 3)):
        assert im.image.size == (48, 48) and im.id.endswith(sample.identity_id)
        assert sample.identity_id in test_people
        assert np.array_equal(np.asarray(im.image), np.asarray(sample.source))
    assert load_images("demo-world:2", max_side=32)[0][0].image.size == (32, 32)  # the run's max side applies
    assert parse_demo_world("demo-world:5") == (5, 64)


@pytest.mark.parametrize("spec", ["demo-world", "demo-world:", "demo-world:x", "demo-world:0", "demo-world:3:16",
                                  "demo-world:3:64:1", "demo-world:3:big"])
def test_bad_demo_world_specs_get_a_clear_error(spec, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"expected demo-world:N or demo-world:N:SIZE"):
        load_images(spec)
    assert main(["--methods", "ipnet", "--images", spec, "--out", str(tmp_path), "--face-pack", "none", "--clip",
                 "none", "--quiet"]) == 2
    assert "expected demo-world:N" in capsys.readouterr().err


def test_demo_world_instructions_speak_the_worlds_language():
    items = load_instructions("demo-world")
    assert [i.id for i in items] == [i.id for i in demo_world_instructions()] and len(items) == 15
    assert len({i.id for i in items}) == 15 and {i.category for i in items} == set(CATEGORIES)
    for ins in items:
        edits = parse_instruction(ins.instruction)  # the world's renderer understands every instruction
        assert len(edits) == 1
        assert ins.target_caption == f"a photo of a person {describe_edits(edits)}"
        assert ins.source_caption == "a photo of a person"
    by_id = {i.id: i for i in items}
    assert by_id["world-glasses"].instruction == "add hipster glasses"
    assert by_id["world-hat-red"].target_caption == "a photo of a person wearing a red hat"


def test_demo_clip_prefers_the_rendered_edit_under_its_target_caption():
    """The captions are in the demo CLIP's words: on test people, the rendered edit scores higher than the unedited
    source under the instruction's target caption for at least 80% of (person, instruction) pairs (40 of 45 when
    written)."""
    from instantportrait.eval.clip_score import ClipScorer

    items = demo_world_instructions()
    world = World(seed=0, num_identities=120, size=64)
    clip = ClipScorer(weights=DEMO_CLIP).load()
    captions = [ins.target_caption for ins in items]
    wins = 0
    for sample in world.samples("test", 3):
        targets = [world.render_target(sample, ins.instruction) for ins in items]
        edited = clip.clip_t(targets, captions)  # (15,)
        unedited = clip.clip_t([sample.source] * len(items), captions)  # (15,)
        wins += int((edited > unedited).sum())
    assert wins >= 36, wins
