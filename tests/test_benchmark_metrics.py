"""Benchmark metrics, aggregation, crash-safe JSONL and instruction sets: known inputs, hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from fixtures.faces import drawn_face
from PIL import Image

from benchmark import metrics, store
from benchmark.cli import parse_overrides, parse_per_method, parse_resolution
from benchmark.data import DEFAULT_INSTRUCTIONS, load_instructions


def test_metrics_and_report_import_without_torch():
    """The metric and report code reads numbers and files only: importing it in a fresh interpreter must not load
    torch (a table can be rebuilt on a machine without it, and ``benchmark/__init__`` stays light)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, benchmark.metrics, benchmark.results, benchmark.report; "
            "print(sorted(m for m in ('torch', 'benchmark.loop', 'benchmark.config') if m in sys.modules))")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------------ row metrics
def test_cosine_known_values():
    assert metrics.cosine([1, 0], [1, 0]) == pytest.approx(1.0)
    assert metrics.cosine([1, 0], [0, 2]) == pytest.approx(0.0)
    assert metrics.cosine([1, 1], [-2, -2]) == pytest.approx(-1.0)
    assert metrics.cosine([3, 4], [4, 3]) == pytest.approx(24 / 25)
    assert metrics.cosine([0, 0], [1, 0]) == 0.0
    with pytest.raises(ValueError, match="different sizes"):
        metrics.cosine([1, 0], [1, 0, 0])


def test_identity_scores_record_missing_faces():
    e = np.array([0.6, 0.8], dtype=np.float32)
    assert metrics.identity_scores(e, e) == {"id_sim": pytest.approx(1.0), "no_face_source": False,
                                             "no_face_output": False}
    assert metrics.identity_scores(e, None) == {"id_sim": None, "no_face_source": False, "no_face_output": True}
    assert metrics.identity_scores(None, e, suffix="_2") == {"id_sim_2": None, "no_face_source_2": True,
                                                             "no_face_output_2": False}


def test_clip_scores_known_vectors():
    src, out = np.array([1.0, 0, 0]), np.array([0.6, 0.8, 0])
    src_t, tgt_t = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    s = metrics.clip_scores(src, out, src_t, tgt_t)
    assert s["clip_t"] == pytest.approx(0.8)
    assert s["clip_i"] == pytest.approx(0.6)
    # direction (-0.4, 0.8) vs (-1, 1): (0.4 + 0.8) / (sqrt(0.8) * sqrt(2))
    assert s["clip_dir"] == pytest.approx(1.2 / (math.sqrt(0.8) * math.sqrt(2)))
    assert metrics.clip_scores(src, src, src_t, tgt_t)["clip_dir"] == 0.0  # unchanged image: undefined -> 0


@pytest.fixture(scope="module")
def scorer(tiny_face_pack, tiny_clip_file):
    from instantportrait.eval.scorer import Scorer, ScoringConfig

    config = ScoringConfig(face_pack=str(tiny_face_pack), clip=str(tiny_clip_file), det_size=256)
    return Scorer.from_config(config).load()


def test_same_image_twice_gives_identity_one_and_clip_i_one(scorer, astronaut_image):
    img = astronaut_image.resize((128, 128))
    row = scorer.score("astro", img, img.copy(), "a photo of a person wearing glasses")
    assert row["scored"] is True
    assert row["no_face_source"] is False and row["no_face_output"] is False
    assert row["id_sim"] == pytest.approx(1.0, abs=1e-5)
    assert row["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert row["clip_dir"] == 0.0


def test_faceless_output_and_source_are_recorded(scorer, astronaut_image):
    blank = Image.new("RGB", (128, 128), (128, 128, 128))
    row = scorer.score("astro", astronaut_image.resize((128, 128)), blank, "x")
    assert row["id_sim"] is None and row["no_face_output"] is True and row["no_face_source"] is False
    row = scorer.score("blank", blank, drawn_face(128), "x")
    assert row["id_sim"] is None and row["no_face_source"] is True and row["no_face_output"] is False
    assert -1.0 <= row["clip_t"] <= 1.0


def test_directional_matches_clip_scorer(scorer, astronaut_image):
    a, b = astronaut_image.resize((64, 64)), drawn_face(64)
    expected = float(scorer.clip.directional([a], [b], "a photo of a person", "a drawing of a face")[0])
    row = scorer.score("a-dir", a, b, "a drawing of a face", "a photo of a person")
    assert row["clip_dir"] == pytest.approx(expected, abs=1e-5)
    assert row["clip_t"] == pytest.approx(float(scorer.clip.clip_t([b], ["a drawing of a face"])[0]), abs=1e-5)
    assert row["clip_i"] == pytest.approx(float(scorer.clip.clip_i([a], [b])[0]), abs=1e-5)


# ------------------------------------------------------------------------------------------------------ statistics
def test_mean_ci_hand_computed():
    values = [0.5, 0.7, 0.6, 0.9]
    ci = metrics.mean_ci(values + [None, float("nan")])
    s = pd.Series(values)
    t_975_df3 = 3.182446305284263  # Student t quantile, 97.5%, 3 degrees of freedom (tables)
    half = t_975_df3 * s.std(ddof=1) / math.sqrt(4)
    assert ci.n == 4
    assert ci.mean == pytest.approx(0.675)
    assert (ci.lo, ci.hi) == (pytest.approx(0.675 - half), pytest.approx(0.675 + half))
    assert s.std(ddof=1) == pytest.approx(0.170782512765993)  # the pandas value the interval is built on
    one = metrics.mean_ci([0.3])
    assert one.mean == 0.3 and math.isnan(one.lo) and math.isnan(one.hi)
    assert math.isnan(metrics.mean_ci([]).mean)
    with pytest.raises(ValueError):
        metrics.mean_ci(values, confidence=1.5)


def test_percentiles_and_rates():
    assert metrics.percentile([10, 20, 30, 40], 50) == pytest.approx(25.0)
    assert metrics.percentile([10, 20, 30, 40], 95) == pytest.approx(np.percentile([10, 20, 30, 40], 95))
    assert math.isnan(metrics.percentile([], 50))
    assert metrics.rate([True, False, None, True]) == pytest.approx(2 / 3)


def _rows() -> pd.DataFrame:
    def row(method, image, sim, no_out=False, no_src=False, ms=10.0, status="ok", **kw):
        return {"method": method, "image": image, "instruction_id": "i", "seed": 0, "status": status,
                "scored": status == "ok", "id_sim": sim, "no_face_output": no_out, "no_face_source": no_src,
                "clip_t": kw.get("clip_t", 0.25), "clip_dir": 0.1, "clip_i": 0.8, "edit_ms": ms,
                "harness_ms": 1.0, "mem_peak_mb": 5.0, "nfe": kw.get("nfe", 1)}

    return pd.DataFrame([
        row("ipnet", "a", 0.8, ms=20), row("ipnet", "b", 0.6, ms=40), row("ipnet", "c", None, no_out=True, ms=30),
        row("ipnet", "blank", None, no_out=True, no_src=True, ms=30),
        row("ip2p", "a", 0.5, ms=2000, nfe=300, clip_t=0.3), row("ip2p", "b", 0.7, ms=4000, nfe=300, clip_t=0.2),
        row("ip2p", "c", 0.6, ms=3000, nfe=300), row("ip2p", "d", None, status="error", ms=1.0),
    ])


def test_summarize_against_pandas():
    rows = _rows()
    facts = {"magicbrush": {"status": "unavailable", "message": "weights missing", "label": "MagicBrush"},
             "ipnet": {"label": "IPNet", "nfe": 1, "params": 2_000_000, "loop_overhead_share": 0.02}}
    table = metrics.summarize(rows, facts, order=["ipnet", "ip2p", "magicbrush"]).set_index("method")
    assert list(table.index) == ["ipnet", "ip2p", "magicbrush"]

    ok = rows[rows.status == "ok"]
    means = ok.groupby("method")["id_sim"].apply(lambda s: pd.to_numeric(s).mean())
    assert table.loc["ipnet", "id_sim_mean"] == pytest.approx(means["ipnet"]) == pytest.approx(0.7)
    assert table.loc["ip2p", "id_sim_mean"] == pytest.approx(0.6)
    # The old row-level interval, kept as _t_lo/_t_hi, by hand: t(0.975, 2) = 4.302652729911275
    half = 4.302652729911275 * pd.Series([0.5, 0.7, 0.6]).std(ddof=1) / math.sqrt(3)
    assert table.loc["ip2p", "id_sim_t_lo"] == pytest.approx(0.6 - half)
    assert table.loc["ip2p", "id_sim_t_hi"] == pytest.approx(0.6 + half)
    # The interval of the tables: a bootstrap over the 3 images, inside the range of their values.
    assert 0.5 <= table.loc["ip2p", "id_sim_lo"] < 0.6 < table.loc["ip2p", "id_sim_hi"] <= 0.7
    assert table.loc["ip2p", "id_sim_images"] == 3 and table.loc["ip2p", "id_sim_missing_rate"] == pytest.approx(0.25)
    # The face lost in ipnet's output "c" counts 0 in the strict mean; the faceless source is left out.
    assert table.loc["ipnet", "id_sim_strict_mean"] == pytest.approx((0.8 + 0.6 + 0.0) / 3)
    assert table.loc["ipnet", "no_face_output_rate"] == pytest.approx(1 / 3)
    assert table.loc["ipnet", "no_face_source_rate"] == pytest.approx(1 / 4)
    assert table.loc["ip2p", "error_rate"] == pytest.approx(1 / 4)
    # Latency from ok rows only; speed-up = p50 / IPNet p50.
    assert table.loc["ipnet", "latency_p50_ms"] == pytest.approx(ok[ok.method == "ipnet"].edit_ms.median())
    assert table.loc["ip2p", "latency_p50_ms"] == pytest.approx(3000.0)
    assert table.loc["ip2p", "latency_p95_ms"] == pytest.approx(np.percentile([2000, 4000, 3000], 95))
    assert table.loc["ip2p", "ipnet_speedup"] == pytest.approx(3000.0 / 30.0)
    assert table.loc["ipnet", "ipnet_speedup"] == pytest.approx(1.0)
    assert table.loc["ip2p", "nfe"] == 300 and table.loc["ipnet", "params_m"] == pytest.approx(2.0)
    assert table.loc["ipnet", "harness_share"] == pytest.approx(4.0 / (20 + 40 + 30 + 30))
    assert table.loc["ipnet", "loop_overhead_share"] == pytest.approx(0.02)
    assert table.loc["magicbrush", "status"] == "unavailable"
    assert table.loc["magicbrush", "message"] == "weights missing" and table.loc["magicbrush", "n_rows"] == 0
    assert math.isnan(table.loc["magicbrush", "id_sim_mean"])


def test_report_formats(tmp_path):
    from benchmark import report

    table = metrics.summarize(_rows(), {"ipnet": {"label": "IPNet_1 & co"}})
    disp = report.display_table(table)
    md = report.to_markdown(disp)
    assert md.splitlines()[0].startswith("| Method | Status | N | Images | ID sim ↑")
    assert "0.700 [0.600, 0.800] (50.0% missing)" in md and "100.0×" in md
    tex = report.to_latex(disp)
    assert r"IPNet\_1 \& co" in tex and r"\begin{tabular}" in tex and r"0.700 [0.600, 0.800] (50.0\% missing)" in tex


# ------------------------------------------------------------------------------------------------------ JSONL store
def test_truncated_last_line_is_repaired(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = [{"method": "m", "image": "a", "instruction_id": "i", "seed": s} for s in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"method": "m", "ima')
    assert store.read_jsonl(path) == good  # read-only: file untouched
    assert path.read_text().endswith('"ima')
    assert store.read_jsonl(path, repair=True) == good
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in good)
    assert (tmp_path / "rows.jsonl.partial").read_text().startswith('{"method": "m", "ima')
    # A torn last line that happens to end in a newline is also cut; an invalid line in the middle is skipped.
    path.write_text(json.dumps(good[0]) + "\nnot json\n" + json.dumps(good[1]) + "\n{broken\n")
    assert store.read_jsonl(path, repair=True) == good[:2]
    assert path.read_text().endswith(json.dumps(good[1]) + "\n")


def test_appender_and_merge_parts_deduplicate(tmp_path):
    app = store.JsonlAppender(tmp_path / "rows.jsonl")
    app.write({"method": "m", "image": "a", "instruction_id": "i", "seed": 0, "v": float("nan")})
    app.close()
    assert store.read_jsonl(tmp_path / "rows.jsonl")[0]["v"] is None  # strict JSON
    for rank, seeds in ((0, [0, 1]), (1, [1, 2])):
        store.append_records(store.part_path(tmp_path, "rows", rank),
                             [{"method": "m", "image": "a", "instruction_id": "i", "seed": s} for s in seeds])
    assert store.merge_parts(tmp_path, "rows", store.row_key) == 2  # seeds 1, 2 (0 already there; 1 once)
    keys = [store.row_key(r) for r in store.read_jsonl(tmp_path / "rows.jsonl")]
    assert keys == [("m", "a", "i", 0), ("m", "a", "i", 1), ("m", "a", "i", 2)]
    assert store.part_files(tmp_path, "rows") == []


# ------------------------------------------------------------------------------------------------------ inputs
def test_default_instruction_set_has_the_poster_instructions():
    items = load_instructions(DEFAULT_INSTRUCTIONS)
    poster = [i for i in items if i.origin == "poster"]
    text = " ".join(i.instruction.lower() for i in poster)
    for phrase in ("hipster glasses", "90s gamer yearbook", "wolf god", "riot gear", "computer geek", "neonpunk",
                   "1920s flapper", "rococo", "scuba"):
        assert phrase in text, phrase
    assert len(poster) == 9 and len(items) - len(poster) >= 10
    assert all(i.target_caption and i.category for i in items)
    assert {i.origin for i in items} == {"poster", "simple"}


def test_instruction_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "instruction": "x", "target_caption": "y"}\n{"id": "a", "instruction": "z", '
                   '"target_caption": "w"}\n')
    with pytest.raises(ValueError, match="appears twice"):
        load_instructions(bad)
    bad.write_text('{"id": "a", "instruction": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing or empty 'target_caption'"):
        load_instructions(bad)
    txt = tmp_path / "mine.txt"
    txt.write_text("# comment\nwearing a hat\n\nwith a beard\n")
    items = load_instructions(txt)
    assert [(i.id, i.instruction, i.target_caption) for i in items] == [
        ("line002", "wearing a hat", "wearing a hat"), ("line004", "with a beard", "with a beard")]


def test_cli_value_parsing():
    assert parse_per_method(["20", "instructpix2pix=50,idenet=10"], int, "--steps") == {
        "*": 20, "instructpix2pix": 50, "idenet": 10}
    with pytest.raises(ValueError, match="--steps 'idenet=ten'"):
        parse_per_method(["idenet=ten"], int, "--steps")
    assert parse_overrides(["ipnet=/models/ipnet", "magicbrush=me/mb@abc"]) == {
        "ipnet": "/models/ipnet", "magicbrush": "me/mb@abc"}
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_overrides(["ipnet"])
    assert parse_resolution(None) == (512, {})
    assert parse_resolution(["256", "instantid=1024,ipcontrol=native"]) == (256, {"instantid": 1024,
                                                                                "ipcontrol": None})
    with pytest.raises(ValueError, match="METHOD=native"):
        parse_resolution(["native"])


def test_image_sources(tmp_path, monkeypatch):
    import sys
    import types

    from benchmark.data import load_images

    (tmp_path / "sub").mkdir()
    for name in ("a.png", "a.jpg", "sub/b.png"):
        Image.new("RGB", (40, 20), (200, 150, 120)).save(tmp_path / name)
    (tmp_path / "c.png").write_bytes(b"\x89PNG broken")
    images, skipped = load_images(str(tmp_path), max_side=16)
    assert [im.id for im in images] == ["a_jpg", "a_png", "sub__b"]
    assert images[0].image.size == (16, 8) and images[0].image.mode == "RGB"
    assert len(skipped) == 1 and skipped[0]["origin"].endswith("c.png")

    images, _ = load_images("synthetic:3:32")
    assert [im.id for im in images] == ["synthetic-0000", "synthetic-0001", "synthetic-0002"]
    assert images[2].image.size == (32, 32)
    with pytest.raises(ValueError, match="synthetic:N"):
        load_images("synthetic:many")

    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name, split: [{"id": "p/1", "image": Image.new("RGB", (64, 32))}, {"text": "no image"}]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    images, skipped = load_images("someone/portraits:test", max_side=16)
    assert [im.id for im in images] == ["p_1"] and images[0].image.size == (16, 8)
    assert skipped == [{"origin": "someone/portraits[test][1]", "error": "no image column in this row"}]
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(ValueError, match="needs the `datasets` package"):
        load_images("someone/portraits")
    with pytest.raises(ValueError, match="no such file or folder"):
        load_images(str(tmp_path / "missing" / "dir"))
