"""The demo editors (``python -m train.demo``): the shipped IDE-Net / IPNet (they learned the world's edits on
held-out people, fit the size budget, say what they are, and are what the registry serves when the real models are
missing), the quick run end to end, stage reuse, the toy ablation command, and the held-out people the editors are
scored on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from train import demo

SHIPPED = Path(__file__).resolve().parents[1] / "instantportrait" / "demo" / "models"
EDIT_MARGIN = 0.5  # edits judged present: shipped IPNet minus the unchanged source, at least (24 pairs: 79 % vs 8 %)




def _l1(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean() / 255.0)


def test_shipped_demo_ipnet_learned_the_edits_on_held_out_people():
    """Issue #4's acceptance, looser and on 24 held-out pairs (the full check on 200 pairs is
    ``python -m train.demo --evaluate instantportrait/demo/models``): the one-step edit is closer to the rendered
    target than the unchanged source, the demo CLIP sees the edit far more often than in the source, and the person
    is still recognisable."""
    res = demo.evaluate(SHIPPED, n=24, methods=("ipnet",), scorers=demo.DemoScorers.load())
    src, one = res["rows"]["source (no edit)"], res["rows"]["ipnet"]
    assert one["l1_to_target"]["all"] < 0.7 * src["l1_to_target"]["all"]  # 24 pairs: 0.54x
    assert one["edit_present"] >= src["edit_present"] + EDIT_MARGIN
    assert one["identity"] >= 0.65 and one["face_missing"] <= 0.1  # 24 pairs: 0.75
    assert res["different_identity"] < 0.3  # the identity scale: other people score low


def test_shipped_demo_models_fit_the_budget_and_say_what_they_are():
    files = [p for p in SHIPPED.rglob("*") if p.is_file() and ".demo_work" not in p.parts]
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20  # weights of all demo models together
    for name in ("ipnet", "idenet"):
        card = (SHIPPED / name / "README.md").read_text()
        assert "TOY demo model" in card and "synthetic" in card
        assert not list((SHIPPED / name).glob("checkpoint-*"))
    assert (SHIPPED / "demo_editors_eval.json").is_file()  # the numbers the cards quote, machine-readable


def test_registry_serves_the_shipped_demo_model_when_the_real_one_is_missing(tmp_path, monkeypatch):
    from instantportrait.methods.sources import open_editor, resolve_source

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    for method, folder in (("ipnet", "ipnet"), ("ipnet-2step", "ipnet"), ("idenet", "idenet")):
        source = resolve_source(method)
        assert (source.kind, source.location, source.resolution) == ("demo", str(SHIPPED / folder), 64)
    editor, source = open_editor("ipnet")
    assert source.kind == "demo" and editor.resolution == 64


def test_app_serves_the_shipped_demo_editors_and_their_examples_work(tmp_path, monkeypatch):
    """A fresh offline machine (no real weights): the app's default sources pick the shipped demo models, the page
    shows the demo-world examples, and an example edits: the one-step output is closer to that person's rendered
    target than the input is, and the tile says it is the toy demo model."""
    import app as app_module
    from instantportrait.app.logic import EditRequest, EditService
    from instantportrait.app.settings import AppSettings
    from instantportrait.demo import World
    from instantportrait.demo.examples import write_demo_world_examples

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    service = EditService.create(AppSettings(work_dir=tmp_path, device="cpu"))
    assert service.sources["ipnet"].kind == "demo" and service.sources["idenet"].kind == "demo"
    assert service.sources["magicbrush"].kind == "missing"  # no demo model, no silent tiny stand-in
    page = app_module.build_demo(service)
    labels = [c.get("props", {}).get("label") or "" for c in page.config["components"]]
    assert any("toy demo models" in label for label in labels)
    rows = write_demo_world_examples(tmp_path / "examples")
    world = World(0, demo.DemoConfig().num_identities, size=128)
    samples = [world.sample("test", int(path.stem.rsplit("-", 1)[1])) for path, _ in rows]
    assert [s.instruction for s in samples] == [text for _, text in rows]
    # the example with the largest edit (a background or style change; a mustache moves a few pixels only)
    (path, text), sample = max(zip(rows, samples), key=lambda r: _l1(r[1].source, r[1].target))
    result = service.run(EditRequest(str(path), text, ("ipnet",)))
    tile = result.results[0]
    assert tile.ok and "demo" in tile.caption().lower()
    assert tile.image.size == sample.source.size
    assert _l1(tile.image, sample.target) < _l1(sample.source, sample.target)


def test_world_unet_puts_cross_attention_at_the_asked_levels_and_level_one_is_the_shipped_architecture():
    from safetensors.torch import load_file

    from instantportrait.tiny.diffusion import world_unet

    shipped = json.loads((SHIPPED / "idenet" / "unet" / "config.json").read_text())
    one = world_unet(32, 1)
    for key in ("down_block_types", "up_block_types", "block_out_channels", "cross_attention_dim", "in_channels"):
        assert json.loads(json.dumps(one.config[key])) == shipped[key]
    # same parameters, name for name and shape for shape, as the shipped weights
    weights = load_file(SHIPPED / "idenet" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {k: tuple(v.shape) for k, v in one.state_dict().items()} == {k: tuple(v.shape) for k, v in weights.items()}

    two = world_unet(32, 2)
    assert two.config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    assert two.config.up_block_types == ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    # the 16x16 level now reads the text: change the context and its features (before downsampling) change there
    torch.manual_seed(0)
    x, t = torch.randn(1, 8, 32, 32), torch.tensor([500])
    ctx_a, ctx_b = torch.randn(1, 5, 64), torch.randn(1, 5, 64)
    for unet, reads_text in ((one, False), (two, True)):
        feats = []
        unet.down_blocks[1].register_forward_hook(lambda m, i, o, feats=feats: feats.append(o[1][0]))
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=ctx_a)
            unet(x, t, encoder_hidden_states=ctx_b)
        assert feats[0].shape[-1] == 16 and torch.allclose(feats[0], feats[1]) != reads_text
    with pytest.raises(ValueError, match="attention_levels"):
        world_unet(32, 0)


def test_world_words_are_alphabetic_and_sorted(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"instruction": "Make it a 90s yearbook photo",
                                    "paraphrases": ["add a red hat"]}) + "\n")
    assert demo.world_words(manifest) == ("a", "add", "hat", "it", "make", "photo", "red", "s", "yearbook")


def test_quick_run_end_to_end_writes_loadable_fp16_folders(tmp_path):
    from safetensors.torch import load_file

    from instantportrait.demo import World
    from instantportrait.methods import get_editor

    out = tmp_path / "demo_models"
    res = demo.main(["--out", str(out), "--quick", "--force-ship", "--work", str(tmp_path / "work"),
                     "--eval-pairs", "4"])
    assert res["shipped"]
    # stage 0: the out folder had no scorers, so the run trained (smoke-sized) ones there and scored with them
    assert "scorers" in res["times_s"] and (out / "clip" / "demo_clip.safetensors").is_file()
    assert demo.find_recognition_onnx(out / "face_pack") is not None
    assert res["acceptance"] is not None and 0.0 <= res["rows"]["ipnet"]["edit_present"] <= 1.0
    assert set(res["rows"]) == {"source (no edit)", "rendered target", "ipnet", "ipnet-2step"}
    assert res["rows"]["rendered target"]["l1_to_target"]["all"] == 0.0  # the reference row is exact
    assert res["rows"]["source (no edit)"]["l1_to_target"]["all"] > 0.0
    assert all(0.0 <= r["l1_to_target"]["all"] <= 1.0 for r in res["rows"].values())
    for name in ("ipnet", "idenet"):
        folder = out / name
        assert "TOY demo model" in (folder / "README.md").read_text()
        weights = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
        assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
        assert not list(folder.glob("checkpoint-*"))
        # the world's base sets what the UNet predicts, and both models keep it (the student inherits the teacher's)
        sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert sched["prediction_type"] == demo.DemoConfig().prediction_type
    # IPNet's second stage started from the L_pair warm-up, which started from IDE-Net
    from train.config import IPNetConfig, load_config

    stage2 = load_config(IPNetConfig, out / "ipnet" / "train_config.yaml")
    warm = load_config(IPNetConfig, Path(stage2.student_init) / "train_config.yaml")
    assert Path(stage2.student_init) == tmp_path / "work" / "ipnet_warmup" and Path(warm.model) == Path(stage2.model)
    assert warm.weights.active() == {"pair": 1.0} and stage2.weights.active()["adv"] > 0
    assert "warm-up" in (out / "ipnet" / "README.md").read_text()
    editor = get_editor("ipnet", model=str(out / "ipnet"), resolution=64, dtype=torch.float32)
    editor.load()
    assert next(editor._loaded.unet.parameters()).dtype == torch.float32  # fp16 files upcast on load
    sample = World(0, 12, size=64).sample("test", 0)
    img = editor.edit([sample.source], [sample.instruction], seed=0)[0]
    assert img.size == sample.source.size
    again = editor.edit([sample.source], [sample.instruction], seed=0)[0]
    assert np.array_equal(np.asarray(img), np.asarray(again))
    ide = get_editor("idenet", model=str(out / "idenet"), resolution=64, dtype=torch.float32)
    from instantportrait.methods.base import EditSettings
    assert ide.edit([sample.source], [sample.instruction], seed=0,
                    settings=EditSettings(num_inference_steps=2))[0].size == sample.source.size


def test_interrupted_run_reuses_finished_stages_and_ablations_start_from_them(tmp_path, capsys):
    """A second run with the same settings reuses every finished stage (nothing retrained); the ablation command
    trains its variants from the run's own base / IDE-Net and writes its tables."""
    from train import demo_ablations

    work = tmp_path / "work"
    args = ["--out", str(tmp_path / "out"), "--quick", "--work", str(work), "--eval-pairs", "3", "--ship-bar", "9"]
    first = demo.main(args)
    assert not first["shipped"]  # a 900 % improvement bar cannot be met: nothing written to --out
    assert not (tmp_path / "out" / "ipnet").exists()
    stamp = {p.name: p.stat().st_mtime_ns for p in (work / "ipnet" / "unet").iterdir()}
    capsys.readouterr()
    second = demo.main(args)
    log = capsys.readouterr().out
    for stage in ("data", "base", "idenet", "ipnet_warmup", "ipnet"):
        assert f"[{stage}] reusing" in log
    assert "[scorers]" not in log  # the first run left its scorers in --out
    assert second["reused_stages"] == ["data", "base", "idenet", "ipnet_warmup", "ipnet"]
    assert {k: second["times_s"][k] for k in second["reused_stages"]} == \
        {k: first["times_s"][k] for k in second["reused_stages"]}  # the seconds recorded when they ran
    assert {p.name: p.stat().st_mtime_ns for p in (work / "ipnet" / "unet").iterdir()} == stamp
    assert second["rows"]["ipnet"]["l1_to_target"] == first["rows"]["ipnet"]["l1_to_target"]  # same model, same output

    out = tmp_path / "ablations"
    rows = demo_ablations.main(["--work", str(work), "--out", str(out), "--ipnet-steps", "1", "--eval-pairs", "3",
                                "--only", "ipnet", "--seeds", "0,1"])
    names = [r["variant"] for r in rows]
    # references, demo-run rows, then every variant and the full recipe's 2-step row, once per training seed
    assert len(names) == 2 + 3 + 2 * (len(demo_ablations.IPNET_VARIANTS) + 1)
    assert all(f"IPNet 1-step, {v}" in names and f"IPNet 1-step, {v} [seed 1]" in names
               for v in demo_ablations.IPNET_VARIANTS)
    seeds = json.loads((out / "ablations_seeds.json").read_text())
    assert set(seeds) == {f"IPNet 1-step, {v}" for v in demo_ablations.IPNET_VARIANTS} | {demo_ablations.TWO_STEP_ROW}
    assert all(e["seeds"] == 2 and len(e["l1"]["per_seed"]) == 2 for e in seeds.values())
    assert "diff" in seeds["IPNet 1-step, L_adv"]["edit_present"] and "reference" in (
        out / "ablations_seeds.md").read_text()
    csv_rows = (out / "ablations.csv").read_text().splitlines()
    assert csv_rows[0].split(",")[:2] == ["group", "variant"] and len(csv_rows) == 1 + len(rows)
    assert "IPNet 1-step, L_adv" in (out / "ablations.md").read_text()
    by_name = {r["variant"]: r for r in rows}
    assert by_name["source (no edit)"]["identity"] == pytest.approx(1.0, abs=1e-4)  # the source against itself
    assert by_name["source (no edit)"]["face_missing"] == 0.0  # the demo face pack finds every test face
    for r in rows:
        assert 0.0 <= r["edit_present"] <= 1.0 and 0.0 <= r["face_missing"] <= 1.0
        assert math.isnan(r["identity"]) or -1.0 <= r["identity"] <= 1.0
    with pytest.raises(FileNotFoundError, match="run `python -m train.demo"):
        demo_ablations.main(["--work", str(tmp_path / "nothing"), "--out", str(out)])


def test_demo_editor_test_people_were_never_seen_by_the_demo_scorers():
    """The editors are scored on the test people of World(0, 120); the demo scorers trained on the train split of
    World(0, 200) (same identity draws per index): those test people must be test people there too."""
    from instantportrait.demo import World

    editors, scorers = World(0, demo.DemoConfig().num_identities), World(0, 200)
    test = set(editors.split_ids("test"))
    assert len(test) == 12 and test <= set(scorers.split_ids("test"))


@pytest.mark.parametrize("recipe", ["paper", "pair"])
def test_ipnet_recipe_picks_the_stages_and_objectives(tmp_path, monkeypatch, recipe):
    """``--recipe paper``: one stage of the paper's terms (no L_pair) from the IDE-Net through its DDIM-inversion path;
    ``pair``: the L_pair warm-up, then the L_pair recipe from it. Only the trainer call is replaced."""
    from train import train_ipnet

    trained = []

    def fake_train(cfg):
        trained.append(cfg)
        Path(cfg.output_dir).mkdir(parents=True)
        return Path(cfg.output_dir)

    monkeypatch.setattr(train_ipnet, "train", fake_train)
    cfg = demo.DemoConfig(recipe=recipe)
    rec = tmp_path / "w_demo.onnx"
    times, reused = {}, []
    folder, wcfg, pcfg, identity = demo._ipnet_stages(cfg, tmp_path / "work", tmp_path / "idenet", tmp_path / "pairs",
                                                       rec, {"k": 1}, times, reused)
    assert folder == tmp_path / "work" / "ipnet" and trained[-1] is pcfg
    assert pcfg.model == str(tmp_path / "idenet") and pcfg.identity_model == str(rec) and pcfg.weights.identity > 0
    if recipe == "paper":
        assert len(trained) == 1 and wcfg is None and pcfg.student_init is None
        assert set(pcfg.weights.active()) == {"adv", "distill", "triplet", "identity"}
        assert (pcfg.teacher_start, pcfg.inversion_prompt, pcfg.distill_pairing) == ("ddim-inversion", "empty",
                                                                                      "shared")
        assert "stage 2" not in identity
    else:
        assert len(trained) == 2 and trained[0] is wcfg and wcfg.weights.active() == {"pair": 1.0}
        assert pcfg.student_init == str(tmp_path / "work" / "ipnet_warmup") and pcfg.weights.pair > 0
    assert set(times) == ({"ipnet"} if recipe == "paper" else {"ipnet_warmup", "ipnet"})
    with pytest.raises(ValueError, match="recipe"):
        demo._ipnet_stages(demo.DemoConfig(recipe="other"), tmp_path / "w2", tmp_path / "idenet", tmp_path / "pairs",
                           rec, {}, {}, [])
