"""The prepared device check (benchmark/gpu_check.sh) end to end on the CPU: its Python entry in --cpu-smoke mode."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmark import gpu_check


@pytest.mark.slow
def test_cpu_smoke_runs_the_whole_plan(tmp_path, capsys):
    out = tmp_path / "check"
    assert gpu_check.main(["--cpu-smoke", "--out", str(out)]) == 0
    table = pd.read_csv(out / "gpu_check.csv")
    jobs = [j.name for j in gpu_check.PLAN if j.smoke]
    assert sorted(set(table["job"])) == sorted(jobs) and (table["status"] == "ok").all()
    ipnet = table[table["kind"] == "ipnet"]
    assert set(ipnet["variant"]) == {"eager, full VAE", "eager, tiny VAE", "compiled, tiny VAE", "compiled, full VAE"}
    assert set(ipnet["resolution"]) == {32, 64} and set(ipnet["batch"]) == {1, 2}
    ip2p = table[table["kind"] == "ip2p"]
    assert list(ip2p["steps"]) == [2, 1] and (ip2p["ratio_to_best"] > 0).all()
    assert (ip2p["ratio_to_best"] >= ip2p["ratio_to_eager_full"] - 1e-9).all()  # the fastest IPNet is the divisor
    for job in jobs:
        assert (out / job / "realtime.json").is_file()
    md = (out / "gpu_check.md").read_text()
    assert "compiled, tiny VAE" in md and "InstructPix2Pix" in md and md in capsys.readouterr().out


def test_budget_skips_jobs_and_says_so(tmp_path):
    cfg = gpu_check.CheckConfig(out=tmp_path, device="cpu", arch="tiny", budget_s=0.0)
    table = gpu_check.run_check(cfg, say=lambda m: None)
    assert (table["status"] == "skipped (time budget)").all() and len(table) == len(gpu_check.PLAN)
    assert "skipped" in (tmp_path / "gpu_check.md").read_text()
