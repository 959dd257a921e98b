"""Real-time benchmark script (issue #7): sweep files, figures that agree with each other, stage timers, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark import realtime
from benchmark.metrics import percentile
from instantportrait import InstantPortraitPipeline

COMMON = ["--device", "cpu", "--resolutions", "64", "--warmup", "1", "--quiet"]
TINY = ["--random-weights", "--arch", "tiny", *COMMON]


def run(tmp_path, *extra: str, source: tuple[str, ...] = ("--random-weights", "--arch", "tiny")) -> tuple:
    """(realtime.csv, realtime.json) of a CPU sweep at 64²."""
    out = tmp_path / "rt"
    assert realtime.main([*source, *COMMON, "--out", str(out), *extra]) == 0
    for name in realtime.FILES:
        assert (out / name).is_file(), name
    return pd.read_csv(out / "realtime.csv"), json.loads((out / "realtime.json").read_text())


def test_sweep_figures_agree(tmp_path, capsys):
    table, result = run(tmp_path, "--batches", "1,2", "--repeats", "3", "--ip2p-steps", "2,1", "--ip2p-repeats", "2")
    ipnet, ip2p = table[table["kind"] == "ipnet"], table[table["kind"] == "ip2p"]
    assert list(zip(ipnet["resolution"], ipnet["batch"])) == [(64, 1), (64, 2)]
    assert list(ip2p["steps"]) == [2, 1] and list(ip2p["nfe"]) == [6, 3] and (ip2p["batch"] == 1).all()
    assert (table["status"] == "ok").all() and (table["n"] == [3, 3, 2, 2]).all()
    assert (table["p95_ms"] >= table["p50_ms"]).all() and (table["p50_ms"] > 0).all()
    # per-image and throughput columns follow from p50 and the batch
    np.testing.assert_allclose(table["edits_per_s"], table["batch"] * 1000.0 / table["p50_ms"])
    np.testing.assert_allclose(table["p50_ms_per_image"], table["p50_ms"] / table["batch"])
    # p50/p95 are those of the raw timings in realtime.json; the first call is kept apart from them
    for row in result["rows"]:
        assert len(row["times_ms"]) == row["n"] and row["first_call_ms"] > 0
        assert row["p50_ms"] == pytest.approx(percentile(row["times_ms"], 50))
        assert row["p95_ms"] == pytest.approx(percentile(row["times_ms"], 95))
    # the ratio is InstructPix2Pix's p50 over IPNet's batch-1 p50 from the same rows
    b1 = ipnet.loc[ipnet["batch"] == 1, "p50_ms"].item()
    np.testing.assert_allclose(ip2p["ratio_to_ipnet"], ip2p["p50_ms"] / b1)
    summary_ratios = [r["ratio_to_ipnet"] for r in result["summary"]["ip2p_ratios"]]
    assert summary_ratios == pytest.approx(list(ip2p["ratio_to_ipnet"]))
    best = ipnet.loc[ipnet["edits_per_s"].idxmax()]
    assert result["summary"]["best_batch"] == best["batch"] and result["summary"]["batch1_p50_ms"] == pytest.approx(b1)
    assert (table["mem_kind"].isin(["cpu_peak_rss", "cpu_peak_rss_since_start"])).all() and (table["mem_mb"] > 0).all()
    # breakdown at batch 1: every stage timed in every call, stages + other = total
    (bd,) = result["breakdown"]
    assert bd["batch"] == 1 and bd["n"] == 3 and len(bd["calls_ms"]) == 3
    stages = ["text", "vae_encode", "unet", "vae_decode"]
    assert all(bd["mean_ms"][s] > 0 for s in stages)
    assert sum(bd["mean_ms"][s] for s in stages) <= bd["mean_ms"]["total"] + 1e-9
    assert bd["mean_ms"]["other"] == pytest.approx(bd["mean_ms"]["total"] - sum(bd["mean_ms"][s] for s in stages))
    # what produced the numbers is written in
    meta, cold = result["meta"], result["cold_start"]
    assert meta["device_name"].startswith("CPU") and meta["dtype"] == "float32"
    assert meta["switches"] == {"channels_last": False, "fuse_qkv": False, "compile": False,
                                "compile_mode": "reduce-overhead", "upcast_vae": False, "compile_scope": "networks",
                                "compile_backend": "inductor"}
    assert meta["environment"]["versions"]["torch"] == torch.__version__.split("+")[0]
    assert cold["load_s"] > 0 and cold["first_call_ms"] == result["rows"][0]["first_call_ms"]
    md = (tmp_path / "rt" / "realtime.md").read_text()
    for text in ("CPU", "float32", "channels_last=False", "diffusers", "Text encoding", "InstructPix2Pix 2 steps",
                 "Cold start"):
        assert text in md, text
    line = capsys.readouterr().out.splitlines()[0]
    assert f"at batch {best['batch']}" in line and "InstructPix2Pix / IPNet" in line


def test_oom_shape_is_recorded_and_sweep_goes_on(tmp_path, monkeypatch):
    real_call = InstantPortraitPipeline.__call__

    def fake_oom(self, image=None, *args, **kwargs):
        if len(image) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_call(self, image, *args, **kwargs)

    monkeypatch.setattr(InstantPortraitPipeline, "__call__", fake_oom)
    table, _ = run(tmp_path, "--batches", "1,2,3", "--repeats", "2", "--ip2p-steps", "none")
    assert list(table["status"]) == ["ok", "OOM", "ok"] and list(table["batch"]) == [1, 2, 3]
    oom = table.iloc[1]
    assert np.isnan(oom["p50_ms"]) and "out of memory" in oom["message"]
    assert table.iloc[2]["p50_ms"] > 0 and "**OOM**" in (tmp_path / "rt" / "realtime.md").read_text()


def test_model_folders_and_tensor_io(tmp_path, tiny_ipnet, tiny_ip2p):
    table, result = run(tmp_path, "--batches", "1", "--repeats", "2", "--ip2p-steps", "1", "--ip2p-repeats", "1",
                        "--io", "tensor", "--no-channels-last", "--prompt-cache",
                        source=("--model", str(tiny_ipnet), "--ip2p-model", str(tiny_ip2p)))
    assert (table["status"] == "ok").all() and list(table["kind"]) == ["ipnet", "ip2p"]
    meta = result["meta"]
    assert meta["source"] == f"model {tiny_ipnet}" and meta["ip2p_source"] == f"model {tiny_ip2p}"
    assert meta["io"] == "tensor" and meta["prompt_cache"] and not meta["switches"]["channels_last"]


def test_stage_timers_time_the_real_call_and_leave_it_unchanged(tiny_ipnet, portrait):
    pipe = InstantPortraitPipeline.from_pretrained(tiny_ipnet)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe(portrait, "add a hat", generator=torch.Generator().manual_seed(0), output_type="np").images
    with realtime.stage_timers(pipe, torch.device("cpu")) as spent:
        timed = pipe(portrait, "add a hat", generator=torch.Generator().manual_seed(0), output_type="np").images
        assert set(spent) == {"text", "vae_encode", "unet", "vae_decode"} and all(v > 0 for v in spent.values())
        before = dict(spent)
        pipe(portrait, "add a hat", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(timed, plain)
    assert all(spent[k] > before[k] for k in spent)  # the timers add up over calls (clear them between calls)
    assert not {"encode_prompt", "encode_image", "predict_clean_latents", "decode_latents"} & set(vars(pipe))


@pytest.mark.parametrize("argv", [["--batches", "1,0"], ["--batches", "two"], ["--dtype", "float8"],
                                  ["--resolutions", "60"], ["--repeats", "0"], ["--ip2p-steps", "-3"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        realtime.main([*TINY, *argv])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_bad_config_raises():
    with pytest.raises(ValueError, match="batch sizes must be >= 1"):
        realtime.RealtimeConfig(random_weights=True, device="cpu", batches=(1, 0))
    with pytest.raises(ValueError, match="exactly one model source"):
        realtime.RealtimeConfig(device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        realtime.RealtimeConfig(random_weights=True, device="cpu", dtype="int8")


@pytest.mark.gpu
def test_cuda_compiled_fp16_sweep(tmp_path):
    out = tmp_path / "rt"
    assert realtime.main(["--random-weights", "--arch", "tiny", "--device", "cuda", "--dtype", "float16", "--compile",
                          "--batches", "1,2", "--resolutions", "64", "--warmup", "3", "--repeats", "5",
                          "--ip2p-steps", "2", "--profile", "--quiet", "--out", str(out)]) == 0
    table = pd.read_csv(out / "realtime.csv")
    assert (table["status"] == "ok").all() and (table["mem_kind"] == "cuda_max_allocated").all()
    assert (table["mem_mb"] > 0).all() and (table["p95_ms"] >= table["p50_ms"]).all()
    ipnet = table[table["kind"] == "ipnet"]
    assert (ipnet["first_call_ms"] > ipnet["p50_ms"]).all()  # each shape's first call compiles
    result = json.loads((out / "realtime.json").read_text())
    assert result["meta"]["dtype"] == "float16" and result["meta"]["switches"]["compile"]
    assert "cuda" in result["meta"]["environment"]["device"] and result["breakdown"][0]["mean_ms"]["unet"] > 0
    assert "self device time" in (out / "profile_64.txt").read_text()
