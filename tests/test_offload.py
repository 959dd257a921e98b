"""Offload (issue #18): the setting's plumbing from the app / benchmark flags to the editors' load, the VRAM table, and
the training step-cost tool. Offline, tiny models, CPU: offload is a no-op there, so the tests that follow a call
through force ``offload_supported`` (the hooks then run with the CPU as their execution device); no GPU numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import instantportrait.methods.base as base
from instantportrait.methods import get_editor
from instantportrait.methods.sources import Kind, ModelSource, SourcePolicy, open_editor
from instantportrait.tiny.images import portrait_like_image


def _tiny(name: str, offload: str = "none"):
    editor = get_editor(name, device="cpu", resolution=64)
    editor.offload = offload
    editor.random_architecture = "tiny"
    return editor


def test_offload_is_a_no_op_on_the_cpu_with_a_message(caplog):
    editor = _tiny("ipnet", "model")
    assert editor.offload_mode == "none" and editor.placement_device == torch.device("cpu")
    with caplog.at_level("WARNING"):
        editor.load_random_weights()
    assert "no-op" in caplog.text and editor.describe()["offload"] == "none"
    with pytest.raises(ValueError, match="offload must be one of"):
        get_editor("ipnet", offload="disk")


def test_pipeline_editor_calls_diffusers_offload_and_never_moves_the_pipeline(monkeypatch):
    from instantportrait.pipelines.ipnet import InstantPortraitPipeline

    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(base, "offload_supported", lambda device: True)
    for mode in ("model", "sequential"):
        monkeypatch.setattr(InstantPortraitPipeline, f"enable_{mode}_cpu_offload",
                            lambda self, device=None, mode=mode: calls.append((mode, str(device))))
    real_to = InstantPortraitPipeline.to
    monkeypatch.setattr(InstantPortraitPipeline, "to",
                        lambda self, *a, **k: calls.append(("to", str(a or k))) or real_to(self, *a, **k))
    for mode in ("model", "sequential"):
        editor = _tiny("ipnet", mode)
        editor.load_random_weights()
        assert editor.describe()["offload"] == mode
    assert calls == [("model", "cpu"), ("sequential", "cpu")]  # and no .to(device)


@pytest.mark.parametrize("name", ["ipcontrol"])
def test_module_offload_gives_the_same_edit(monkeypatch, name):
    """Face-conditioned editors are not pipelines: accelerate hooks on their networks (ControlNet hooked on its own),
    moved back after every edit; the edit is the same image as without offload."""
    img = [portrait_like_image(64, seed=0)]
    plain = _tiny(name)
    plain.load_random_weights()
    expected = np.asarray(plain.edit(img, ["add glasses"], seed=0, settings=_few_steps())[0])
    monkeypatch.setattr(base, "offload_supported", lambda device: True)
    editor = _tiny(name, "model")
    editor.load_random_weights()
    chain, loop = editor._offload_order(editor.loaded)
    assert loop == [editor.loaded.controlnet] and chain[-2:] == [editor.loaded.unet, editor.loaded.vae]
    assert len(editor._offload_hooks) == len(chain) + 1
    out = np.asarray(editor.edit(img, ["add glasses"], seed=0, settings=_few_steps())[0])
    assert np.array_equal(out, expected)


def _few_steps():
    from instantportrait.methods import EditSettings

    return EditSettings(num_inference_steps=2)


def test_policy_app_and_benchmark_flags_reach_the_editor(tmp_path):
    from benchmark.cli import build_parser, config_from_args
    from benchmark.editors import make_editor
    from instantportrait.app.settings import settings_from_args

    editor, _ = open_editor("ipnet", SourcePolicy(random_weights=True, offload="sequential"),
                            source=ModelSource("ipnet", Kind.RANDOM_WEIGHTS))
    assert editor.offload == "sequential"
    assert settings_from_args(["--offload", "model"]).offload == "model"
    args = build_parser().parse_args(["run", "--methods", "ipnet", "--latency-only", "--device", "cpu",
                                      "--offload", "none,model", "--out", str(tmp_path)])
    cfg = config_from_args(args)
    assert cfg.offload_modes() == ["none", "model"] and cfg.to_json()["offload"] == "none,model"
    one = config_from_args(build_parser().parse_args(["run", "--methods", "ipnet", "--images", "synthetic:2",
                                                      "--offload", "model", "--out", str(tmp_path)]))
    assert one.fingerprint()["offload"] == "model" and "offload" not in cfg.__class__(
        methods=["ipnet"], out=tmp_path, images="synthetic:2").fingerprint()  # plain runs resume as before
    assert make_editor(one, "ipnet", "cpu").offload == "model"
    with pytest.raises(ValueError, match="a list of modes is for --latency-only"):
        cfg.__class__(methods=["ipnet"], out=tmp_path, images="synthetic:2", offload="none,model")


def test_vram_table_says_na_off_cuda_and_picks_the_smallest_card(tmp_path):
    from benchmark.latency import latency_table
    from benchmark.report import to_markdown
    from benchmark.vram import smallest_card, write_vram_table

    assert (smallest_card(6 * 1024), smallest_card(7.5 * 1024), smallest_card(100 * 1024),
            smallest_card(math.nan)) == ("8 GB", "12 GB", "> 80 GB", "n/a")
    recs = [{"method": m, "label": m, "offload_asked": o, "offload": o, "status": "ok", "times_ms": [t],
             "p50_ms": t, "peak_mb": peak, "resolution": 512}
            for m, o, t, peak in [("ipnet", "none", 10.0, 3000.0), ("ipnet", "model", 15.0, 900.0),
                                  ("instantid", "none", 100.0, 20000.0), ("instantid", "model", 300.0, math.nan)]]
    table = latency_table(recs)
    assert table["offload_cost"].tolist()[:2] == [1.0, 1.5] and table["ratio_to_ipnet"].tolist()[2:] == [10.0, 20.0]
    write_vram_table(table, {"environment": {"device": "cuda"}}, tmp_path, to_markdown)
    csv = pd.read_csv(tmp_path / "vram.csv", keep_default_na=False)
    assert csv["Card (plain)"].tolist() == ["8 GB", "24 GB"]
    assert csv["Card (offload model)"].tolist() == ["8 GB", "n/a"] and csv["× latency (offload model)"][1] == 3.0
    assert "Which card" in (tmp_path / "vram.md").read_text()


def test_cpu_latency_run_has_offload_rows_and_na_memory(tmp_path):
    from benchmark.cli import main

    assert main(["--latency-only", "--random-weights", "--random-arch", "tiny", "--methods", "ipnet", "--device",
                 "cpu", "--resolution", "32", "--warmup", "0", "--repeats", "1", "--offload", "none,model",
                 "--quiet", "--out", str(tmp_path)]) == 0
    lat = pd.read_csv(tmp_path / "latency.csv")
    assert lat["offload_asked"].tolist() == ["none", "model"] and lat["offload"].tolist() == ["none", "none"]
    assert lat["peak_mb"].isna().all()
    assert pd.read_csv(tmp_path / "vram.csv", keep_default_na=False)["Peak GB (plain)"].tolist() == ["n/a"]


def test_step_cost_tiny_runs_the_trainers_own_steps(tmp_path, monkeypatch):
    import train.trainer
    from train import step_cost

    seen: list[str] = []
    real = train.trainer.Trainer.train_step
    monkeypatch.setattr(train.trainer.Trainer, "train_step",
                        lambda self, micro, step: seen.append(self.parts.name) or real(self, micro, step))
    rows = step_cost.main(["--device", "cpu", "--dtype", "fp32", "--micro-batch", "1", "--resolution", "32",
                           "--arch", "tiny", "--warmup", "0", "--steps", "1", "--set", "ipnet.teacher_steps=1",
                           "--out", str(tmp_path)])
    assert seen == ["idenet", "ipnet"] and [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[0]["accumulation"] == 32 and rows[1]["accumulation"] == 16  # the README schedules: 8 x 4, 4 x 4
    assert rows[0]["schedule_gpu_hours"] == pytest.approx(10000 * 32 * rows[0]["s_per_step"] / 3600)
    assert "| ipnet | 1 |" in (tmp_path / "step_cost.md").read_text()


@pytest.mark.gpu
def test_cuda_offload_lowers_peak_memory(tmp_path):
    from benchmark.cli import main

    assert main(["--latency-only", "--random-weights", "--methods", "ipnet", "--device", "cuda", "--resolution", "256",
                 "--warmup", "1", "--repeats", "2", "--offload", "none,model", "--quiet", "--out", str(tmp_path)]) == 0
    lat = pd.read_csv(tmp_path / "latency.csv")
    assert lat.loc[1, "peak_mb"] < lat.loc[0, "peak_mb"]
