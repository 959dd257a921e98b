"""train.demo_ablations with training seeds: names per seed, intervals over seeds, and paired differences to each
group's full recipe that resample people (issue #15, item 7). Built on synthetic per-pair scores: no training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from train import demo_ablations as ab

REF = ab.REFERENCE["IPNet objectives"]


def _res(values: dict[str, dict[str, list]], people: list[str]) -> dict:
    return {"people": people, "rows": {row: {"per_sample": m} for row, m in values.items()}}


def test_seeded_names_keep_the_world_seed_bare():
    assert ab.seeded("IPNet 1-step, L_adv", 0, 0) == "IPNet 1-step, L_adv"
    assert ab.seeded("IPNet 1-step, L_adv", 2, 0) == "IPNet 1-step, L_adv [seed 2]"


def test_seed_summary_pairs_each_seed_with_the_reference_of_the_same_seed_and_resamples_people():
    rng = np.random.default_rng(0)
    people = [f"p{i // 4}" for i in range(40)]  # 10 people, 4 pairs each
    values, variants = {}, {REF: [], "IPNet 1-step, L_adv": [], ab.TWO_STEP_ROW: []}
    for seed in (0, 1, 2):
        base = rng.uniform(0.05, 0.15, 40)
        for variant, shift in ((REF, 0.0), ("IPNet 1-step, L_adv", 0.02), (ab.TWO_STEP_ROW, -0.01)):
            row = ab.seeded(variant, seed, 0)
            ident = list(rng.uniform(0.5, 0.9, 40))
            ident[3] = None  # a pair where no face was found: missing, not zero
            values[row] = {"l1": list(base + shift), "identity": ident, "edit_present": list(rng.integers(0, 2, 40))}
            variants[variant].append(row)
    groups = dict.fromkeys(variants, "IPNet objectives")
    summary = ab.seed_summary(_res(values, people), variants, groups)

    adv = summary["IPNet 1-step, L_adv"]
    # the same seed's reference has the same per-pair base, so the paired difference is exactly the shift
    assert adv["l1"]["diff"]["mean"] == pytest.approx(0.02)
    assert adv["l1"]["diff"]["lo"] == pytest.approx(0.02) and adv["l1"]["diff"]["hi"] == pytest.approx(0.02)
    assert adv["l1"]["diff"]["people"] == 10
    # the interval over seeds: mean of the three seeds' means, a t-interval that contains it
    per_seed = adv["l1"]["per_seed"]
    assert len(per_seed) == 3 and adv["l1"]["mean"] == pytest.approx(np.mean(per_seed))
    assert adv["l1"]["lo"] < adv["l1"]["mean"] < adv["l1"]["hi"]
    # the missing identity is left out of the means (nan-mean), and counted
    assert not math.isnan(adv["identity"]["mean"]) and adv["identity"]["diff"]["missing"] == 1
    # 1 vs 2 steps compares the reference student with itself at 2 steps
    assert summary[ab.TWO_STEP_ROW]["l1"]["diff"]["mean"] == pytest.approx(-0.01)
    assert "diff" not in summary[REF]["l1"]
    table = ab.format_seed_summary(summary, [0, 1, 2])
    assert "| IPNet 1-step, L_adv | " in table and "reference" in table


def test_seed_summary_with_one_seed_has_no_interval_over_seeds():
    values = {REF: {"l1": [0.1, 0.2], "identity": [0.7, 0.8], "edit_present": [1, 0]}}
    summary = ab.seed_summary(_res(values, ["a", "b"]), {REF: [REF]}, {REF: "IPNet objectives"})
    assert summary[REF]["l1"]["mean"] == pytest.approx(0.15) and math.isnan(summary[REF]["l1"]["lo"])


def test_seeds_flag_must_be_integers(capsys):
    with pytest.raises(SystemExit):
        ab.main(["--seeds", "0,x"])
    assert "--seeds" in capsys.readouterr().err
