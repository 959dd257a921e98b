"""Training infrastructure: config dataclasses (YAML round trip, overrides, errors, every shipped config), the
paired-dataset reader (instantportrait.training.data) and the shared plumbing in train/common.py (data stream,
checkpoints)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures.pairs import write_synthetic_pairs

from instantportrait.training.data import FORMAT, PairedEditDataset, face_boxes, read_dataset
from train.common import StepBatchSampler, list_checkpoints, prune_checkpoints, resolve_resume, step_generator
from train.config import (
    CONFIG_CLASSES,
    IDENetConfig,
    IPNetConfig,
    LossWeights,
    load_config,
    load_config_file,
    parse_config,
    save_config,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "train" / "configs"
POSTER_ABLATIONS = {"idenet_aid", "idenet_cid", "idenet_noid", "ipnet_adv", "ipnet_adv_sds", "ipnet_adv_distill",
                    "ipnet_full", "ipnet_stochastic", "ipnet_pixel"}


# ---------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("cls", [IDENetConfig, IPNetConfig])
def test_yaml_round_trip(tmp_path, cls):
    extra = {"disc_levels": [0, 2], "weights": LossWeights(adv=0.25, distill=2.0, sds=0.5, triplet=0.0,
                                                           identity=0.0)} if cls is IPNetConfig else \
        {"identity_weighting": "constant", "identity_power": 2.0}
    cfg = cls(learning_rate=3e-5, seed=7, checkpoints_total_limit=None, resume="latest", **extra)
    path = save_config(cfg, tmp_path / "c.yaml")
    assert load_config_file(path) == cfg
    assert load_config(cls, path) == cfg
    assert yaml.safe_load(path.read_text())["trainer"] == cls.TRAINER


def test_every_shipped_config_loads_and_covers_the_poster_ablations():
    files = sorted(f for f in CONFIG_DIR.glob("*.yaml") if f.stem.split("_")[0] in CONFIG_CLASSES)
    assert {f.stem for f in files} >= POSTER_ABLATIONS
    for f in files:
        cfg = load_config_file(f)
        assert isinstance(cfg, CONFIG_CLASSES[f.stem.split("_")[0]]), f
        assert cfg.resolution == 512 and cfg.seed == 0 and cfg.max_train_steps >= 1000, f
    get = {f.stem: load_config_file(f) for f in files}
    assert [get[n].identity_weighting for n in ("idenet_aid", "idenet_cid", "idenet_noid")] == \
        ["annealing", "constant", "none"]
    assert set(get["ipnet_adv"].weights.active()) == {"adv"}
    assert set(get["ipnet_adv_sds"].weights.active()) == {"adv", "sds"}
    assert set(get["ipnet_adv_distill"].weights.active()) == {"adv", "distill"}
    assert {"adv", "distill", "triplet"} <= set(get["ipnet_full"].weights.active())
    assert get["ipnet_full"].teacher_start == "ddim-inversion" and get["ipnet_full"].distill_space == "latent"
    assert get["ipnet_stochastic"].teacher_start == "stochastic"
    assert get["ipnet_pixel"].distill_space == "pixel"


def test_unknown_keys_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: idenet\nidentiy_weighting: constant\n")
    with pytest.raises(ValueError, match="unknown IDENetConfig key 'identiy_weighting'.*identity_weighting"):
        load_config_file(bad)
    with pytest.raises(ValueError, match="unknown IPNetConfig key"):
        load_config(IPNetConfig, None, ["no_such_key=1"])
    with pytest.raises(ValueError, match="unknown LossWeights key weights.'lpips'"):
        load_config(IPNetConfig, None, {"weights.lpips": 1})
    with pytest.raises(SystemExit):  # argparse: an unknown flag
        parse_config(IDENetConfig, ["--no-such-flag", "1"])


def test_bad_values_raise_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="identity_weighting must be one of annealing, constant, none"):
        IDENetConfig(identity_weighting="sometimes")
    with pytest.raises(ValueError, match="seed must be an integer"):
        IDENetConfig(seed=None)
    with pytest.raises(ValueError, match="learning_rate must be a number"):
        load_config(IDENetConfig, None, ["learning_rate=fast"])
    with pytest.raises(ValueError, match="needs distill_space: pixel"):
        IPNetConfig(distill_kind="perceptual")
    with pytest.raises(ValueError, match="every loss weight is 0"):
        LossWeights(adv=0, distill=0, sds=0, triplet=0, identity=0)
    with pytest.raises(ValueError, match="needs an identity_model"):
        IDENetConfig(identity_model="none")
    other = save_config(IPNetConfig(), tmp_path / "ipnet.yaml")
    with pytest.raises(ValueError, match="trainer is 'ipnet' but this is a IDENetConfig"):
        load_config(IDENetConfig, other)


def test_precedence_file_then_set_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer: ipnet\nlearning_rate: 1e-5\nmax_train_steps: 50\nweights: {adv: 2.0}\n")
    cfg = parse_config(IPNetConfig, ["--config", str(path)])
    assert cfg.learning_rate == 1e-5 and isinstance(cfg.learning_rate, float)  # YAML reads 1e-5 as a string
    assert cfg.weights.adv == 2.0 and cfg.weights.distill == LossWeights().distill  # nested merge keeps defaults
    cfg = parse_config(IPNetConfig, ["--config", str(path), "--set", "max_train_steps=60", "--set", "weights.sds=0.5",
                                     "--max-train-steps", "70", "--teacher-start", "stochastic",
                                     "--disc-levels", "[1]", "--resume", "none", "--two-step", "yes"])
    assert (cfg.max_train_steps, cfg.weights.sds, cfg.teacher_start, cfg.disc_levels, cfg.resume, cfg.two_step) == \
        (70, 0.5, "stochastic", [1], None, True)
    assert parse_config(IDENetConfig, ["--identity-weighting", "constant"]).identity_weighting == "constant"


def test_config_fields_all_have_help():
    for cls in (IDENetConfig, IPNetConfig, LossWeights):
        missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
        assert not missing, f"{cls.__name__}: {missing}"


# ---------------------------------------------------------------------------------------------------- dataset reader
@pytest.fixture()
def pairs(tmp_path) -> Path:
    return write_synthetic_pairs(tmp_path / "pairs", n=3, size=32)


def test_reader_geometry_and_fields(pairs):
    info, rows = read_dataset(pairs)
    assert info["format"] == FORMAT and len(rows) == 3
    ds = PairedEditDataset(pairs, resolution=64)
    item = ds[1]
    assert item["source"].shape == item["target"].shape == (3, 64, 64)
    assert -1.0 <= float(item["source"].min()) and float(item["source"].max()) <= 1.0
    assert item["instruction"] == "make the background blue" and item["has_face"] is True
    # landmarks follow the 2x resize with pixel centres at integers: u' = (u + 0.5) * 2 - 0.5
    np.testing.assert_allclose(item["source_kps"].numpy(), (rows[1].source_kps + 0.5) * 2 - 0.5, atol=1e-5)
    np.testing.assert_allclose(item["source_bbox"].numpy(), rows[1].source_bbox * 2, atol=1e-5)
    # the target's background is blue, the source's is not
    blue = torch.tensor([40.0, 70.0, 220.0]) / 127.5 - 1
    corner_src, corner_tgt = item["source"][:, :4, :4].mean((1, 2)), item["target"][:, :4, :4].mean((1, 2))
    assert torch.allclose(corner_tgt, blue, atol=0.02) and not torch.allclose(corner_src, blue, atol=0.2)


def test_reader_crops_non_square_and_flags_missing_faces(tmp_path):
    root = write_synthetic_pairs(tmp_path / "p", n=2, size=32)
    lines = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
    from PIL import Image

    Image.new("RGB", (64, 32), (200, 0, 0)).save(root / lines[0]["source"])  # wide source, target left 32x32
    lines[0]["source_kps"] = [[22.0, 10.0], [42.0, 10.0], [32.0, 14.0], [24.0, 20.0], [40.0, 20.0]]
    lines[0]["source_bbox"] = None
    lines[1]["source_kps"] = lines[1]["source_bbox"] = None
    lines.append({**lines[1], "id": "rejected", "passed": False, "target": None})
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ds = PairedEditDataset(root, resolution=32)
    assert len(ds) == 2  # the rejected row is not read
    a, b = ds[0], ds[1]
    assert a["source"].shape == a["target"].shape == (3, 32, 32)
    np.testing.assert_allclose(a["source_kps"][:, 0].numpy(), [6.0, 26.0, 16.0, 8.0, 24.0])  # centre crop: x - 16
    assert a["has_face"] and torch.isnan(a["source_bbox"]).all()
    assert not b["has_face"] and torch.isnan(b["source_kps"]).all()
    lines[0]["source_kps"][1] = [50.0, 10.0]  # a landmark the centre crop cuts off: no usable face
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert not PairedEditDataset(root, resolution=32)[0]["has_face"]
    boxes = face_boxes(torch.stack([a["source_bbox"], b["source_bbox"]]), torch.stack([a["source_kps"],
                                                                                         b["source_kps"]]), (32, 32))
    assert torch.equal(boxes[1], torch.tensor([0.0, 0.0, 32.0, 32.0]))  # no face: the whole image
    assert boxes[0, 0] < 6 and boxes[0, 2] > 26  # around the landmarks


def test_reader_flip_is_deterministic_and_mirrors_landmarks(pairs):
    ds = PairedEditDataset(pairs, resolution=32, hflip=True, seed=3)
    plain = PairedEditDataset(pairs, resolution=32)[0]
    keys = [k for k in range(20) if ds.flipped(0, k)]
    assert 0 < len(keys) < 20 and keys == [k for k in range(20) if ds.flipped(0, k)]
    item = ds[(0, keys[0])]
    assert torch.equal(item["source"], plain["source"].flip(-1))
    assert torch.equal(ds[0]["source"], plain["source"])  # a plain index is never augmented
    kps = plain["source_kps"].numpy()
    expected = kps[[1, 0, 2, 4, 3]].copy()
    expected[:, 0] = 31 - expected[:, 0]
    np.testing.assert_allclose(item["source_kps"].numpy(), expected, atol=1e-5)
    assert item["source_kps"][0, 0] < item["source_kps"][1, 0]  # left eye still left in the image


def test_reader_errors(tmp_path, pairs):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PairedEditDataset(tmp_path / "nope")
    (pairs / "dataset.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ValueError, match="has format 'other/9'"):
        PairedEditDataset(pairs)
    root = write_synthetic_pairs(tmp_path / "q", n=1)
    row = json.loads((root / "manifest.jsonl").read_text())
    (root / "manifest.jsonl").write_text(json.dumps({**row, "passed": False}) + "\n")
    with pytest.raises(ValueError, match="no row with \"passed\": true"):
        PairedEditDataset(root)
    (root / "manifest.jsonl").write_text(json.dumps({**row, "source_kps": [[1, 2]]}) + "\n")
    with pytest.raises(ValueError, match="source_kps must be"):
        PairedEditDataset(root)
    (root / "manifest.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="manifest.jsonl:1: not valid JSON"):
        PairedEditDataset(root)


# ---------------------------------------------------------------------------------------------------- plumbing
def test_data_stream_resumes_exactly_and_shards_disjointly():
    full = StepBatchSampler(10, 3, seed=5)
    it = iter(full)
    first = [next(it) for _ in range(8)]
    resumed = iter(StepBatchSampler(10, 3, seed=5, start=5))
    assert [next(resumed) for _ in range(3)] == first[5:]
    positions = [p for batch in first for _, p in batch]
    assert positions == list(range(24))  # one continuous stream
    rows = [r for batch in first for r, _ in batch]
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))  # epochs are permutations
    assert rows[:10] != rows[10:20]  # and reshuffled
    r0, r1 = StepBatchSampler(10, 2, seed=5, rank=0, world_size=2), StepBatchSampler(10, 2, seed=5, rank=1,
                                                                                        world_size=2)
    pos0 = {p for k in range(5) for _, p in r0.batch(k)}
    pos1 = {p for k in range(5) for _, p in r1.batch(k)}
    assert not pos0 & pos1 and pos0 | pos1 == set(range(20))


def test_step_generator_depends_on_coordinates_only():
    a = torch.randn(3, generator=step_generator(0, "s", 4, 1, 0))
    torch.manual_seed(123)  # the global RNG does not matter
    assert torch.equal(a, torch.randn(3, generator=step_generator(0, "s", 4, 1, 0)))
    assert not torch.equal(a, torch.randn(3, generator=step_generator(0, "s", 5, 1, 0)))
    assert not torch.equal(a, torch.randn(3, generator=step_generator(1, "s", 4, 1, 0)))


def test_checkpoint_discovery_pruning_and_resume_resolution(tmp_path):
    for step in (10, 2, 30):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "training_state.json").write_text("{}")
    (tmp_path / "checkpoint-99").mkdir()  # no state file: an interrupted save, ignored
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 10, 30]
    assert resolve_resume("latest", tmp_path) == tmp_path / "checkpoint-30"
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("latest", tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        resolve_resume(str(tmp_path / "checkpoint-99"), tmp_path)
    deleted = prune_checkpoints(tmp_path, 2)  # room for one more: keep the newest one
    assert [p.name for p in deleted] == ["checkpoint-2", "checkpoint-10"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30]


def test_push_to_hub_publishes_the_final_folder(tmp_path, monkeypatch):
    """--push-to-hub hands the saved model folder and the revision to hub.publish.publish_checkpoint."""
    from train import common
    from train.config import IDENetConfig

    calls = []
    monkeypatch.setattr("instantportrait.hub.publish.publish_checkpoint",
                        lambda folder, repo, revision=None, metrics_file=None: calls.append((folder, repo, revision))
                        or "https://example.invalid/commit/1")
    cfg = IDENetConfig(trainer="idenet", push_to_hub="me/idenet-test", hub_revision="v1")
    assert common.publish_if_asked(cfg, tmp_path) == "https://example.invalid/commit/1"
    assert calls == [(tmp_path, "me/idenet-test", "v1")]
    assert common.publish_if_asked(IDENetConfig(trainer="idenet"), tmp_path) is None and len(calls) == 1


def test_base_key_extends_another_yaml(tmp_path):
    """``base:`` loads the named file (relative to the one naming it), then this file's keys on top (nested mappings
    key by key); chains work, and a missing base or a loop is one clear error."""
    (tmp_path / "sub").mkdir()
    parent = save_config(IPNetConfig(max_train_steps=500, seed=3, weights=LossWeights(adv=0.2, identity=1.0, pair=1.0)),
                         tmp_path / "parent.yaml")
    (tmp_path / "sub" / "child.yaml").write_text("base: ../parent.yaml\nmax_train_steps: 3500\nweights:\n  adv: 0.0\n")
    (tmp_path / "grandchild.yaml").write_text("base: sub/child.yaml\nseed: 5\n")
    child = load_config_file(tmp_path / "sub" / "child.yaml")  # `trainer` comes from the base
    assert child == dataclasses.replace(load_config_file(parent), max_train_steps=3500,
                                        weights=LossWeights(adv=0.0, identity=1.0, pair=1.0))
    assert load_config(IPNetConfig, tmp_path / "grandchild.yaml") == dataclasses.replace(child, seed=5)
    assert load_config(IPNetConfig, tmp_path / "grandchild.yaml", ["seed=6"]).seed == 6  # --set still wins
    (tmp_path / "orphan.yaml").write_text("base: nowhere.yaml\nseed: 1\n")
    with pytest.raises(FileNotFoundError, match=r"orphan.yaml: its base file .*nowhere.yaml does not exist"):
        load_config_file(tmp_path / "orphan.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\ntrainer: ipnet\n")
    with pytest.raises(ValueError, match="loops back"):
        load_config_file(tmp_path / "loop.yaml")
    (tmp_path / "empty_base.yaml").write_text("base: ''\ntrainer: ipnet\n")
    with pytest.raises(ValueError, match="must name the YAML file"):
        load_config_file(tmp_path / "empty_base.yaml")


def test_demo_warmup_config_extends_the_demo_ipnet_config():
    """The warm-up holds only what differs from stage 2: the L_pair-only weights, its steps and output folder."""
    warm = load_config_file(CONFIG_DIR / "demo_ipnet_warmup.yaml")
    full = load_config_file(CONFIG_DIR / "demo_ipnet.yaml")
    assert yaml.safe_load((CONFIG_DIR / "demo_ipnet_warmup.yaml").read_text())["base"] == "demo_ipnet.yaml"
    assert warm.weights.active() == {"pair": 1.0} and warm.max_train_steps == 3500
    assert warm == dataclasses.replace(full, output_dir="outputs/demo_ipnet_warmup", max_train_steps=3500,
                                       weights=LossWeights(adv=0.0, distill=0.0, sds=0.0, triplet=0.0, identity=0.0,
                                                           pair=1.0))


def test_ipnet_loss_settings_copy_the_config_by_field_name():
    """``IPNetLossSettings.from_config`` copies every setting named like a config field (none is hand-copied), and
    every IPNetConfig field is a setting, the source of a derived one, or used when building: a new config field
    fails here until it is placed."""
    from train.config import TrainConfig
    from train.train_ipnet import IPNetLossSettings

    cfg = IPNetConfig(disc_t_max=700, sds_t_min=5, sds_t_max=600, teacher_steps=3, teacher_t_start=500,
                      pair_face_weight=2.0, triplet_margin=0.3, weights=LossWeights(adv=0.0, sds=0.5))
    settings = IPNetLossSettings.from_config(cfg, 64)
    names = {f.name for f in dataclasses.fields(IPNetLossSettings)}
    for name in names & {f.name for f in dataclasses.fields(cfg)} - {"weights"}:
        assert getattr(settings, name) == getattr(cfg, name), name
    assert settings.weights == cfg.weights.active() and "adv" not in settings.weights
    assert (settings.disc_t_range, settings.sds_t_range, settings.triplet_crop_size) == ((10, 700), (5, 600), 64)
    derived_from = {"weights", "disc_t_min", "disc_t_max", "sds_t_min", "sds_t_max"}
    build_time = {"student_init", "timestep", "start", "discriminator", "disc_hidden", "disc_levels",
                  "disc_learning_rate", "gen_update_ratio", "triplet_features", "triplet_clip", "identity_model"}
    own = {f.name for f in dataclasses.fields(IPNetConfig)} - {f.name for f in dataclasses.fields(TrainConfig)}
    assert own - names - derived_from == build_time
    # a setting with no config field of its name (and no derivation) is an error, not a silent default
    extra = dataclasses.make_dataclass("Extra", [("no_such_field", int, dataclasses.field(default=0))],
                                       bases=(IPNetLossSettings,), frozen=True)
    with pytest.raises(TypeError, match="no_such_field: neither an IPNetConfig field"):
        extra.from_config(cfg, 64)
