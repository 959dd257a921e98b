"""The benchmark's statistics on constructed data with known answers: the image-clustered bootstrap, paired
differences to IPNet, missing scores counted (never dropped), every numeric score column aggregated; and the
``no-edit`` reference method that gives each score its floor or ceiling."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark import metrics, report


def _two_images(rng: np.random.Generator, n: int = 50) -> tuple[np.ndarray, list[str]]:
    """Image "a" scores about 0.2 and image "b" about 0.8, ``n`` rows each (instructions x seeds of one portrait)."""
    values = np.concatenate([0.2 + 0.01 * rng.standard_normal(n), 0.8 + 0.01 * rng.standard_normal(n)])
    return values, ["a"] * n + ["b"] * n


# ------------------------------------------------------------------------------------------------------ bootstrap
def test_image_clustered_interval_is_much_wider_than_the_row_level_one():
    values, images = _two_images(np.random.default_rng(0))
    clustered = metrics.cluster_bootstrap(values, images)
    rows = metrics.cluster_bootstrap(values)  # every row its own cluster
    t = metrics.mean_ci(values)
    assert clustered.mean == rows.mean == pytest.approx(0.5, abs=0.01)
    assert (clustered.n, clustered.clusters, rows.clusters, clustered.missing) == (100, 2, 100, 0)
    # Two images: a resample is (a, a) ~0.2, (a, b) ~0.5 or (b, b) ~0.8, so the interval spans both images.
    assert clustered.lo == pytest.approx(0.2, abs=0.02) and clustered.hi == pytest.approx(0.8, abs=0.02)
    assert clustered.hi - clustered.lo > 5 * (rows.hi - rows.lo)
    assert clustered.hi - clustered.lo > 5 * (t.hi - t.lo)


def test_bootstrap_is_reproducible_with_its_seed_and_ignores_row_order():
    rng = np.random.default_rng(1)
    values = rng.normal(size=60)
    images = [f"im{i % 7}" for i in range(60)]
    first = metrics.cluster_bootstrap(values, images, metrics.Bootstrap(seed=3))
    assert metrics.cluster_bootstrap(values, images, metrics.Bootstrap(seed=3)) == first
    assert metrics.cluster_bootstrap(values, images, metrics.Bootstrap(seed=4)) != first
    order = rng.permutation(60)
    shuffled = metrics.cluster_bootstrap(values[order], [images[i] for i in order], metrics.Bootstrap(seed=3))
    assert (shuffled.lo, shuffled.hi) == (pytest.approx(first.lo), pytest.approx(first.hi))
    assert metrics.Bootstrap().resamples == 2000 and metrics.Bootstrap().percentiles == (2.5, 97.5)
    with pytest.raises(ValueError, match="cluster labels"):
        metrics.cluster_bootstrap([1.0, 2.0], ["a"])


def test_missing_values_are_counted_and_one_image_gives_no_interval():
    ci = metrics.cluster_bootstrap([0.5, None, float("nan"), 0.7, 0.9], ["a", "a", "b", "c", "c"])
    assert (ci.n, ci.missing, ci.clusters) == (3, 2, 2)  # image "b" has no value: not a cluster of this score
    assert ci.missing_rate == pytest.approx(2 / 5) and ci.mean == pytest.approx(0.7)
    one = metrics.cluster_bootstrap([0.1, 0.3], ["a", "a"])
    assert one.mean == pytest.approx(0.2) and math.isnan(one.lo) and math.isnan(one.hi)
    none = metrics.cluster_bootstrap([None, None], ["a", "b"])
    assert none.n == 0 and none.missing == 2 and math.isnan(none.mean)


# ------------------------------------------------------------------------------------------------------ paired
def _rows(method: str, values: list[float | None], **extra) -> list[dict]:
    """One row per value: images a..d x instructions i0/i1 (value k on image k // 2)."""
    return [{"method": method, "image": "abcd"[k // 2], "instruction_id": f"i{k % 2}", "seed": 0, "status": "ok",
             "scored": True, "clip_t": v, **extra} for k, v in enumerate(values)]


def test_paired_difference_known_answers():
    base = [k / 64 for k in range(8)]  # exact binary fractions: differences are exact
    rows = pd.DataFrame(_rows("ipnet", base) + _rows("same", base) + _rows("shift", [v + 0.125 for v in base]))
    same = metrics.paired_difference(rows, "same", "ipnet", "clip_t")
    assert (same.mean, same.lo, same.hi, same.n, same.clusters) == (0.0, 0.0, 0.0, 8, 4)
    shift = metrics.paired_difference(rows, "shift", "ipnet", "clip_t")
    assert (shift.mean, shift.lo, shift.hi) == (0.125, 0.125, 0.125)


def test_paired_difference_counts_pairs_missing_a_side():
    rows = pd.DataFrame(_rows("ipnet", [0.1, 0.2, 0.3, 0.4]) + _rows("m", [0.2, None, 0.5])[:3])
    d = metrics.paired_difference(rows, "m", "ipnet", "clip_t")
    # keys 0 and 2 pair up; key 1 has no value for m, key 3 has no row for m: both counted as missing
    assert (d.n, d.missing, d.clusters) == (2, 2, 2) and d.mean == pytest.approx((0.1 + 0.2) / 2)


# ------------------------------------------------------------------------------------------------------ summarize
def test_summarize_aggregates_every_score_column_and_skips_reference_rows_in_speed_ups():
    def rows(method: str, shift: float, ms: float) -> list[dict]:
        out = []
        for k in range(8):
            clip = None if (method == "m" and k == 7) else 0.2 + shift + k / 100
            out.append({"method": method, "image": f"im{k // 2}", "instruction_id": f"i{k % 2}", "seed": 0,
                        "status": "ok", "scored": True, "id_sim": 0.5 + shift, "no_face_source": False,
                        "no_face_output": False, "clip_t": clip, "id_sim_dlib": 0.4 + shift,
                        "id_backend": "dlib", "edit_ms": ms, "queue_ms": 1.0, "width": 64, "flag": True})
        return out

    df = pd.DataFrame(rows("ipnet", 0.0, 10.0) + rows("m", 0.1, 40.0) + rows("no-edit", 0.3, 0.01))
    cols = metrics.score_columns(metrics.add_derived_columns(df))
    assert cols[:6] == [c for c, _, _ in metrics.SCORE_COLUMNS] and cols[6:] == ["id_sim_dlib"]
    table = metrics.summarize(df).set_index("method")
    assert table.loc["m", "id_sim_dlib_mean"] == pytest.approx(0.5)
    assert table.loc["m", "diff_id_sim_dlib_mean"] == pytest.approx(0.1)
    assert table.loc["m", "diff_clip_t_mean"] == pytest.approx(0.1) and table.loc["m", "diff_clip_t_n"] == 7
    assert table.loc["m", "clip_t_missing_rate"] == pytest.approx(1 / 8)
    assert table.loc["m", "diff_clip_t_missing_rate"] == pytest.approx(1 / 8)
    assert math.isnan(table.loc["ipnet", "diff_clip_t_mean"])  # the baseline has no difference to itself
    assert table.loc["m", "ipnet_speedup"] == pytest.approx(4.0)
    assert bool(table.loc["no-edit", "is_reference"]) and not bool(table.loc["m", "is_reference"])
    assert math.isnan(table.loc["no-edit", "ipnet_speedup"])  # the harness's "latency" is not a speed
    assert table.loc["m", "n_images"] == 4 and table.loc["m", "clip_t_images"] == 4

    disp = report.display_table(table.reset_index())
    assert "id_sim_dlib" in disp.columns and disp["Method"].iloc[2].endswith("(reference)")
    paired = report.paired_table(table.reset_index())
    assert paired.loc[0, "Δ CLIP-T ↑"] == "baseline" and paired.loc[1, "Δ id_sim_dlib"].startswith("0.100 [0.100")
    assert "(12.5% missing)" in paired.loc[1, "Δ CLIP-T ↑"]


# ------------------------------------------------------------------------------------------------------ no-edit
def test_no_edit_returns_its_inputs_pixel_for_pixel():
    from instantportrait.methods import editor_class, get_editor, list_methods
    from instantportrait.methods.reference import NO_EDIT, editing_methods, is_reference

    assert NO_EDIT == metrics.NO_EDIT_METHOD and NO_EDIT in list_methods()
    assert is_reference(NO_EDIT) and not is_reference("ipnet")
    assert NO_EDIT not in editing_methods() and "ipnet" in editing_methods()
    editor = get_editor(NO_EDIT, resolution=512)  # a working size that would resize, were it used
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))]
    out = editor.edit(images, ["add a hat", "add glasses"], seed=[0, 1])
    assert [o.tobytes() for o in out] == [im.tobytes() for im in images] and all(o.mode == "RGB" for o in out)
    assert out[0] is not images[0]  # a copy: the caller's image is not handed back to be mutated
    assert editor.nfe() == 0 and editor.num_parameters() == 0 and editor.weight_bytes() == 0
    assert editor.describe()["reference"] is True and "CLIP-T" in editor.describe()["description"]
    random = get_editor(NO_EDIT)
    random.load_random_weights()  # a --random-weights run keeps its reference row
    assert random.edit([images[1]], ["x"])[0].tobytes() == images[1].tobytes()
    assert editor_class(NO_EDIT).label.startswith("No edit (reference")
    with pytest.raises(ValueError, match="instructions"):
        editor.edit(images, ["only one"])
