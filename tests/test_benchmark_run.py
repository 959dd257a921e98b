"""End-to-end benchmark runs offline on tiny models: every output file, unavailable/broken methods, resume after a
SIGKILL mid-write, sharded processes merged by rank 0, and scoring deferred out of the timed loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.faces import drawn_face
from PIL import Image

from benchmark import store
from benchmark.cli import main
from benchmark.config import BenchmarkConfig
from benchmark.env import Dist
from benchmark.loop import run_benchmark
from instantportrait.eval.scorer import ScoringConfig
from instantportrait.methods import Editor, registry


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory, astronaut_image) -> Path:
    folder = tmp_path_factory.mktemp("portraits")
    astronaut_image.resize((128, 128)).save(folder / "astronaut.png")
    drawn_face(128).save(folder / "drawn.png")
    Image.new("RGB", (64, 64), (128, 128, 128)).save(folder / "blank.png")
    (folder / "notes.png").write_bytes(b"not an image")  # skipped and recorded, not fatal
    return folder


@pytest.fixture(scope="module")
def instructions_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("instructions") / "two.jsonl"
    path.write_text(
        json.dumps({"id": "glasses", "instruction": "wearing glasses", "target_caption": "a person wearing glasses",
                    "category": "accessories"}) + "\n"
        + json.dumps({"id": "oil", "instruction": "as an oil painting", "target_caption": "an oil painting of a "
                      "person", "category": "art-style"}) + "\n")
    return path


class CopyEditor(Editor):
    """Returns its input: identity similarity and CLIP-I must come out as 1."""

    name = "copy-test"
    label = "Copy (test)"

    def _load(self):
        return "loaded"

    def _modules(self, loaded):
        return []

    def nfe(self, settings=None):
        return 0

    def _edit(self, loaded, images, instructions, seed, settings, progress):
        return [im.copy() for im in images]


class FlakyEditor(CopyEditor):
    """Fails on one instruction: that row is recorded as an error and the run goes on."""

    name = "flaky-test"
    label = "Flaky (test)"

    def _edit(self, loaded, images, instructions, seed, settings, progress):
        if "oil" in instructions[0]:
            raise RuntimeError("simulated out of memory")
        return super()._edit(loaded, images, instructions, seed, settings, progress)


class BrokenEditor(CopyEditor):
    name = "broken-test"
    label = "Broken (test)"

    def _load(self):
        raise OSError("unreadable checkpoint")


@pytest.fixture()
def test_editors(monkeypatch):
    for cls in (CopyEditor, FlakyEditor, BrokenEditor):
        monkeypatch.setitem(registry._EDITORS, cls.name, cls)


def common_args(images_dir, instructions_file, tiny_face_pack, tiny_clip_file, out) -> list[str]:
    return ["--images", str(images_dir), "--instructions", str(instructions_file), "--out", str(out),
            "--device", "cpu", "--resolution", "64", "--face-pack", str(tiny_face_pack), "--clip",
            str(tiny_clip_file), "--det-size", "256", "--warmup", "1", "--quiet"]


def test_full_offline_run_writes_every_output(tmp_path, test_editors, images_dir, instructions_file, tiny_ipnet,
                                              tiny_ip2p, tiny_face_pack, tiny_clip_file, capsys):
    out = tmp_path / "results"
    code = main(["--methods", "ipnet,instructpix2pix,magicbrush,copy-test,flaky-test,broken-test",
                 "--model-override", f"ipnet={tiny_ipnet}", "--model-override", f"instructpix2pix={tiny_ip2p}",
                 "--steps", "instructpix2pix=2",
                 *common_args(images_dir, instructions_file, tiny_face_pack, tiny_clip_file, out)])
    assert code == 0, capsys.readouterr().err
    for name in ("run.json", "rows.jsonl", "methods.jsonl", "summary.md", "summary.csv", "summary.tex",
                 "summary.json", "summary_by_category.csv", "samples.csv", "identity_vs_fidelity.png",
                 "edit_latency.png", "grid.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name

    rows = store.read_jsonl(out / "rows.jsonl")
    keys = [store.row_key(r) for r in rows]
    assert len(keys) == len(set(keys)) == 5 * 3 * 2  # 4 methods and no-edit ran x 3 readable images x 2 instructions
    assert {r["method"] for r in rows} == {"ipnet", "instructpix2pix", "copy-test", "flaky-test", "no-edit"}
    for r in rows:
        if r["status"] == "ok":
            assert (out / r["output"]).is_file() and r["edit_ms"] > 0 and r["harness_ms"] >= 0
    by = {(r["method"], r["image"], r["instruction_id"]): r for r in rows}
    for image in ("astronaut", "drawn"):  # a copy keeps the identity exactly
        r = by[("copy-test", image, "glasses")]
        assert r["no_face_source"] is False and r["no_face_output"] is False
        assert r["id_sim"] == pytest.approx(1.0, abs=1e-5) and r["clip_i"] == pytest.approx(1.0, abs=1e-5)
    blank = by[("copy-test", "blank", "glasses")]
    assert blank["no_face_source"] is True and blank["id_sim"] is None
    assert by[("flaky-test", "drawn", "oil")]["status"] == "error"
    assert "simulated out of memory" in by[("flaky-test", "drawn", "oil")]["error"]
    assert by[("instructpix2pix", "drawn", "oil")]["nfe"] == 6 and by[("ipnet", "drawn", "oil")]["nfe"] == 1

    summary = {m["method"]: m for m in json.loads((out / "summary.json").read_text())["methods"]}
    assert summary["magicbrush"]["status"] == "unavailable" and "not available" in summary["magicbrush"]["message"]
    assert summary["broken-test"]["status"] == "load failed" and "unreadable" in summary["broken-test"]["message"]
    assert summary["ipnet"]["ipnet_speedup"] == pytest.approx(1.0)
    assert summary["copy-test"]["id_sim_mean"] == pytest.approx(1.0, abs=1e-5)
    assert summary["copy-test"]["no_face_source_rate"] == pytest.approx(1 / 3)
    assert summary["flaky-test"]["error_rate"] == pytest.approx(0.5)
    assert summary["instructpix2pix"]["nfe"] == 6

    run = json.loads((out / "run.json").read_text())
    assert run["scoring"]["models"]["face_model"]["recognition_model"] == "w_tiny.onnx"
    assert run["scoring"]["models"]["clip"]["weights"] == tiny_clip_file.name
    assert run["resolution"] == 64 and run["thresholds"]["det_thresh"] == 0.5
    assert run["environment"]["device_name"].startswith("CPU")
    assert run["environment"]["versions"]["torch"] and run["environment"]["versions"]["diffusers"]
    assert "commit" in run["environment"]["git"]
    assert run["images"]["skipped"][0]["origin"].endswith("notes.png")

    grid = (out / "grid.html").read_text()
    assert "src='images/ipnet/astronaut__glasses__s0.png'" in grid and "src='sources/astronaut.png'" in grid
    assert "/tmp" not in grid.split("<h1>")[1]  # relative paths only
    assert "MagicBrush" in (out / "summary.md").read_text() and r"\toprule" in (out / "summary.tex").read_text()
    check_reference_and_statistics(out, rows, summary)


def check_reference_and_statistics(out: Path, rows: list[dict], summary: dict[str, dict]) -> None:
    """The no-edit row (added by default) is the source pixel for pixel, labelled a reference, scored, with no
    speed-up; summary.md says how every interval was computed and which captions were scored against."""
    for r in (r for r in rows if r["method"] == "no-edit"):
        with Image.open(out / r["output"]) as edited, Image.open(out / r["source"]) as source:
            assert edited.tobytes() == source.tobytes()
        if r["image"] != "blank":
            assert r["id_sim"] == pytest.approx(1.0, abs=1e-5) and r["clip_dir"] == 0.0
    ref = summary["no-edit"]
    assert ref["is_reference"] is True and ref["label"].startswith("No edit (reference") and ref["nfe"] == 0
    assert ref["ipnet_speedup"] is None and ref["clip_i_mean"] == pytest.approx(1.0, abs=1e-5)
    assert summary["copy-test"]["diff_clip_t_n"] == 6 and summary["copy-test"]["diff_clip_t_images"] == 3
    md = (out / "summary.md").read_text()
    assert "| No edit (reference: the source itself) | ok |" in md
    assert "Reference row, not a method: the source is the output" in md  # the method's own description
    assert "## Paired differences to IPNet" in md and "| Δ CLIP-T ↑ |" in md
    assert "95% percentile bootstrap over images (2000 resamples, numpy seed 0" in md
    assert "This run has 3 images" in md and "same image × instruction × seed" in md
    assert 'CLIP-dir source caption: "a photo of a person"' in md
    assert "| glasses | accessories | wearing glasses | a person wearing glasses |" in md
    tex = (out / "summary.tex").read_text()
    assert "\\Delta" in tex and "tab:benchmark-paired" in tex
    stats = json.loads((out / "summary.json").read_text())["statistics"]
    assert stats["resamples"] == 2000 and stats["seed"] == 0 and stats["paired_to"] == "ipnet"
    assert stats["pair_keys"] == ["image", "instruction_id", "seed"] and stats["images"] == 3


def test_unknown_method_lists_registered_ones(tmp_path, capsys):
    code = main(["--methods", "ipnet,pix3pix", "--images", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown method pix3pix; registered: ipnet, ipnet-2step" in err
    code = main(["--methods", "ipnet", "--images", str(tmp_path), "--out", str(tmp_path / "r"),
                 "--steps", "idenet=3"])
    assert code == 2 and "--steps names idenet" in capsys.readouterr().err


def test_missing_face_pack_fails_before_any_edit(tmp_path, images_dir, tiny_ipnet, capsys):
    code = main(["--methods", "ipnet", "--model-override", f"ipnet={tiny_ipnet}", "--images", str(images_dir),
                 "--out", str(tmp_path / "r"), "--device", "cpu", "--face-pack", str(tmp_path / "nope"),
                 "--clip", "none", "--quiet"])
    assert code == 3 and "not available" in capsys.readouterr().err
    assert not (tmp_path / "r" / "rows.jsonl").exists()


def _expected_keys(method: str, images: list[str], instructions: list[str], seeds: list[int]) -> set:
    return {(method, im, ins, s) for im in images for ins in instructions for s in seeds}


_CHILD = """
import sys

from benchmark.cli import main
from fixtures.crash import kill_after_rows
from instantportrait.methods import registry
from tests.test_benchmark_run import CopyEditor

registry._EDITORS[CopyEditor.name] = CopyEditor
kill_after_rows(int(sys.argv[1]))
sys.exit(main(sys.argv[2:]))
"""


def test_killed_run_resumes_with_exactly_one_row_per_key(tmp_path, test_editors, images_dir, instructions_file):
    out = tmp_path / "results"
    args = ["--methods", "copy-test", "--images", str(images_dir), "--instructions", str(instructions_file),
            "--out", str(out), "--seeds", "0,1", "--device", "cpu", "--resolution", "64", "--face-pack", "none",
            "--clip", "none", "--no-reference", "--warmup", "0", "--quiet"]
    # A separate process runs the benchmark and is SIGKILLed (fixtures.crash) halfway through writing its 4th row,
    # as an OOM kill or a power cut would. (A fresh interpreter, not a fork: forking a process that already runs
    # threads, as pytest's does after other tests, can deadlock the child on a lock held at fork time.)
    here = Path(__file__).resolve()
    path = os.pathsep.join(str(p) for p in (here.parents[1], here.parent))  # the checkout and tests/ (fixtures)
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", _CHILD, "3", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    raw = (out / "rows.jsonl").read_text()
    assert raw.count("\n") == 3 and not raw.endswith("\n")  # three rows and half a line
    first = store.read_jsonl(out / "rows.jsonl")

    assert main(args) == 0
    rows = store.read_jsonl(out / "rows.jsonl")
    keys = [store.row_key(r) for r in rows]
    assert len(keys) == len(set(keys))
    assert set(keys) == _expected_keys("copy-test", ["astronaut", "blank", "drawn"], ["glasses", "oil"], [0, 1])
    assert rows[:3] == first  # the rows written before the kill are kept as they were
    assert (out / "rows.jsonl.partial").exists()
    assert len(json.loads((out / "run.json").read_text())["sessions"]) == 2
    assert main(args) == 0  # a third run has nothing left to do
    assert len(store.read_jsonl(out / "rows.jsonl")) == 12
    # Other settings would mix incomparable rows: refused.
    assert main([*args[:-1], "--resolution", "128", "--quiet"]) == 2


def test_sharded_processes_are_merged_by_rank0(tmp_path, test_editors, images_dir, instructions_file):
    out = tmp_path / "results"
    cfg = BenchmarkConfig(methods=["copy-test"], out=out, images=str(images_dir),
                          instructions=str(instructions_file), seeds=[0, 1], resolution=64, warmup=0,
                          scoring=ScoringConfig(face_pack=None, clip=None), progress=False, reference=False)
    run_benchmark(cfg, Dist(rank=1, world=2))  # rank 1 finishes first: a part file and a done marker
    assert store.part_files(out, "rows") and not (out / "summary.md").exists()
    run_benchmark(cfg, Dist(rank=0, world=2))  # rank 0 does its share, waits for the marker, merges, reports
    rows = store.read_jsonl(out / "rows.jsonl")
    keys = [store.row_key(r) for r in rows]
    assert len(keys) == len(set(keys)) == 12
    assert set(keys) == _expected_keys("copy-test", ["astronaut", "blank", "drawn"], ["glasses", "oil"], [0, 1])
    assert {r["rank"] for r in rows} == {0, 1}
    assert store.part_files(out, "rows") == [] and (out / "summary.md").exists()


def test_score_later_and_rescore(tmp_path, test_editors, images_dir, instructions_file, tiny_face_pack,
                                 tiny_clip_file):
    out = tmp_path / "results"
    args = ["--methods", "copy-test", "--score-later", "--second-face-pack", str(tiny_face_pack),
            *common_args(images_dir, instructions_file, tiny_face_pack, tiny_clip_file, out)]
    assert main(args) == 0
    rows = store.read_jsonl(out / "rows.jsonl")
    assert rows and all(r["scored"] is False and "id_sim" not in r for r in rows)  # nothing scored in the loop
    scores = store.read_jsonl(out / "scores.jsonl")
    assert len(scores) == len(rows)
    summary = {m["method"]: m for m in json.loads((out / "summary.json").read_text())["methods"]}
    assert summary["copy-test"]["id_sim_mean"] == pytest.approx(1.0, abs=1e-5)
    assert summary["copy-test"]["clip_i_mean"] == pytest.approx(1.0, abs=1e-5)
    assert summary["copy-test"]["id_sim_2_mean"] == pytest.approx(1.0, abs=1e-5)  # second face model column
    assert "ID sim (2nd)" in (out / "summary.md").read_text()

    assert main(["score", str(out), "--quiet", "--device", "cpu"]) == 0  # nothing pending
    assert len(store.read_jsonl(out / "scores.jsonl")) == len(rows)
    assert main(["score", str(out), "--rescore", "--clip", "none", "--quiet", "--device", "cpu"]) == 0
    rescored = store.read_jsonl(out / "scores.jsonl")
    assert len(rescored) == len(rows) and all("clip_t" not in s and "id_sim_2" in s for s in rescored)
    run = json.loads((out / "run.json").read_text())
    assert run["scoring"]["config"]["clip"] is None


def test_a_photo_gets_a_real_identity_column_and_every_backend_is_named(tmp_path, test_editors, instructions_file,
                                                                       astronaut_image, tiny_clip_file, monkeypatch,
                                                                       capsys):
    """No buffalo_l here: on a photo, id_sim (ArcFace) is recorded as unavailable, never filled by the toy pack, and
    dlib's id_sim_dlib is the real column; rows, run.json and summary.json name the backends, scored now or later."""
    monkeypatch.setenv("INSIGHTFACE_ROOT", str(tmp_path / "no-insightface"))
    folder = tmp_path / "photos"
    folder.mkdir()
    astronaut_image.save(folder / "astronaut.png")
    for later in (False, True):
        out = tmp_path / f"results-{later}"
        args = ["--methods", "copy-test", "--images", str(folder), "--instructions", str(instructions_file),
                "--out", str(out), "--device", "cpu", "--resolution", "320", "--clip", str(tiny_clip_file),
                "--no-reference", "--warmup", "0", "--quiet", *(["--score-later"] if later else [])]
        assert main(args) == 0
        assert "id_sim is recorded as unavailable" in capsys.readouterr().err
        scores = store.read_jsonl(out / ("scores.jsonl" if later else "rows.jsonl"))
        assert len([r for r in scores if r["method"] == "copy-test"]) == 2
        for r in scores:
            assert r["id_backend"] == "unavailable" and "id_sim" not in r
            assert r["id_backend_dlib"] == "dlib" and r["id_sim_dlib"] == pytest.approx(1.0, abs=1e-5)
        identity = json.loads((out / "run.json").read_text())["scoring"]["identity"]
        assert identity["id_sim"].startswith("unavailable") and "buffalo_l" in identity["id_sim"]
        assert identity["id_sim_dlib"] == "dlib"
        assert json.loads((out / "summary.json").read_text())["run"]["scoring"]["identity"] == identity
