"""train/train_idenet.py end to end on tiny models: train, checkpoint, resume (bit-identical to an uninterrupted run),
load the result through the registry; the loss wiring (gradients, identity masking, conditioning dropout)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fixtures.pairs import write_synthetic_pairs
from safetensors.torch import load_file
from torch.utils.data import default_collate

from instantportrait.errors import ModelNotAvailableError
from instantportrait.training.data import PairedEditDataset
from train import train_idenet
from train.common import read_log, step_generator
from train.config import IDENetConfig, load_config_file

UNET_FILE = Path("unet") / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_synthetic_pairs(tmp_path_factory.mktemp("data") / "pairs", n=6, size=32)


def _cfg(tiny_ip2p: Path, pairs: Path, pack: Path, out: Path, **kw) -> IDENetConfig:
    base = dict(model=str(tiny_ip2p), dataset=str(pairs), output_dir=str(out), resolution=32, train_batch_size=2,
                max_train_steps=4, learning_rate=1e-3, lr_scheduler="linear", checkpointing_steps=2, log_every=1,
                identity_model=str(pack / "w_tiny.onnx"), identity_weighting="annealing",
                conditioning_dropout_prob=0.2, use_ema=True, ema_decay=0.9)
    return IDENetConfig(**{**base, **kw})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _steps(log: list[dict]) -> list[int]:
    return [r["step"] for r in log if "loss" in r]


def test_train_checkpoint_resume_matches_uninterrupted_run(tmp_path, tiny_ip2p, pairs, tiny_face_pack,
                                                           tiny_clip_file):
    # uninterrupted, with validation edits (ID-sim with the tiny face pack, CLIP-T with the tiny CLIP) at 2 and 4
    full = _cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path / "full", validation_steps=2, num_validation_images=2,
                validation_inference_steps=2, face_pack=str(tiny_face_pack), clip=str(tiny_clip_file))
    train_idenet.main(["--config", str(_save(full, tmp_path / "full.yaml"))])  # the CLI path
    full_log = read_log(tmp_path / "full" / "logs.jsonl")
    assert _steps(full_log) == [1, 2, 3, 4]
    val = [r for r in full_log if r.get("event") == "validation"]
    assert [r["step"] for r in val] == [2, 4] and all(-1 <= r["clip_t"] <= 1 and "id_sim" in r for r in val)
    assert len(list((tmp_path / "full" / "validation" / "step-000002").glob("*.png"))) == 2

    # the same run killed after step 2: its folder holds what the uninterrupted run had written by then
    ckpt = tmp_path / "full" / "checkpoint-2"
    assert json.loads((ckpt / "training_state.json").read_text())["global_step"] == 2
    assert load_config_file(ckpt / "train_config.yaml") == full  # the full config travels with the checkpoint
    shutil.copytree(ckpt, tmp_path / "part" / "checkpoint-2")
    part = _cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path / "part", resume="latest", checkpoints_total_limit=1)
    train_idenet.main(["--config", str(_save(part, tmp_path / "part.yaml"))])
    log = read_log(tmp_path / "part" / "logs.jsonl")
    resume = [r for r in log if r.get("event") == "resume"]
    assert resume and resume[-1]["global_step"] == 2 and resume[-1]["checkpoint"].endswith("checkpoint-2")
    assert _steps(log) == [3, 4]  # continued from the saved step, not from 0
    assert sorted(p.name for p in (tmp_path / "part").glob("checkpoint-*")) == ["checkpoint-4"]  # limit 1

    # identical losses after the resume (same data order and noise) and bit-identical weights (validation in the
    # uninterrupted run used the EMA weights and its own generator: it changed nothing)
    by_step = {r["step"]: r for r in full_log if "loss" in r}
    for r in (r for r in log if "loss" in r):
        assert r["loss"] == by_step[r["step"]]["loss"]
    for sub in (UNET_FILE, Path("checkpoint-4") / UNET_FILE, Path("checkpoint-4") / "unet_ema.safetensors"):
        a, b = _weights(tmp_path / "full" / sub), _weights(tmp_path / "part" / sub)
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    init = _weights(tiny_ip2p / UNET_FILE)
    assert any(not torch.equal(init[k], a[k]) for k in init)  # it did train
    # the LR scheduler stepped exactly once per optimiser step: linear decay to 0 over 4 steps
    state = json.loads((tmp_path / "part" / "checkpoint-4" / "training_state.json").read_text())
    assert state["lr_scheduler"]["last_epoch"] == 4 and state["lr_scheduler"]["_last_lr"] == [0.0]
    assert [round(r["lr"], 8) for r in full_log if "loss" in r] == [7.5e-4, 5e-4, 2.5e-4, 0.0]

    # the output is an InstructPix2Pix pipeline the registry loads as `idenet`, with config and card inside
    out = tmp_path / "full"
    assert load_config_file(out / "train_config.yaml") == full
    assert "IDE-Net" in (out / "README.md").read_text() and "identity_weighting: annealing" in \
        (out / "README.md").read_text()
    from instantportrait.methods import get_editor
    from instantportrait.methods.base import EditSettings

    editor = get_editor("idenet", model=str(out), resolution=32)
    item = PairedEditDataset(pairs, 32)[0]
    from train.common import tensor_to_pil

    edited = editor.edit([tensor_to_pil(item["source"])], ["make the background blue"], seed=0,
                         settings=EditSettings(num_inference_steps=2))
    assert edited[0].size == (32, 32)


def _save(cfg: IDENetConfig, path: Path) -> Path:
    from train.config import save_config

    return save_config(cfg, path)


def _parts(tiny_ip2p: Path, cfg: IDENetConfig) -> train_idenet.IDENetParts:
    pipe = train_idenet.load_base_pipeline(tiny_ip2p)
    return train_idenet.build_parts(pipe, cfg, torch.device("cpu"), torch.float32)


def _batch(pairs: Path, n: int = 4) -> dict:
    ds = PairedEditDataset(pairs, 32)
    return default_collate([ds[i] for i in range(n)])


def test_gradients_reach_the_unet_only(tmp_path, tiny_ip2p, pairs, tiny_face_pack):
    cfg = _cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path, identity_weighting="constant",
               conditioning_dropout_prob=0.0)
    parts = _parts(tiny_ip2p, cfg)
    losses, logs = train_idenet.idenet_losses(parts, _batch(pairs), cfg, step_generator(0, "t", 1, 0, 0), 1)
    assert set(losses) == {"eps", "identity"} and logs["id_samples"] == 4 and float(losses["identity"]) > 0
    train_idenet.total_loss(losses, cfg).backward()
    assert all(p.grad is not None for p in parts.unet.parameters() if p.requires_grad)
    for frozen in (parts.vae, parts.text_encoder, parts.arcface):
        assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    # the identity term alone also reaches the UNet (through the decoded x̂0)
    parts.unet.zero_grad(set_to_none=True)
    losses, _ = train_idenet.idenet_losses(parts, _batch(pairs), cfg, step_generator(0, "t", 1, 0, 0), 1)
    losses["identity"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in parts.unet.parameters())


def test_identity_weight_is_zero_without_a_face_and_follows_the_schedule(tmp_path, tiny_ip2p, pairs, tiny_face_pack):
    cfg = _cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path, conditioning_dropout_prob=0.0)
    parts = _parts(tiny_ip2p, cfg)
    batch = _batch(pairs)
    batch["has_face"] = torch.zeros(4, dtype=torch.bool)
    batch["source_kps"] = torch.full_like(batch["source_kps"], float("nan"))  # what the reader gives without a face
    losses, logs = train_idenet.idenet_losses(parts, batch, cfg, step_generator(0, "t", 1, 0, 0), 1)
    assert float(losses["identity"]) == 0.0 and logs["id_samples"] == 0 and torch.isfinite(losses["eps"])
    # annealing: ᾱ_t weights, monotone decreasing in t; constant: 1 everywhere
    t = torch.tensor([0, 250, 500, 999])
    w = train_idenet.identity_schedule(cfg, t, parts.noise_scheduler, step=10)
    assert torch.all(w[:-1] > w[1:]) and w[0] > 0.99 and w[-1] < 0.01
    const = IDENetConfig(**{**cfg.__dict__, "identity_weighting": "constant"})
    assert torch.equal(train_idenet.identity_schedule(const, t, parts.noise_scheduler, 10), torch.ones(4))


def test_conditioning_dropout_is_instructpix2pix_split():
    u = (torch.arange(10000) + 0.5) / 10000  # a uniform grid
    text, image = train_idenet.conditioning_dropout_masks(u, 0.05)
    assert float((text & ~image).float().mean()) == pytest.approx(0.05)
    assert float((text & image).float().mean()) == pytest.approx(0.05)
    assert float((image & ~text).float().mean()) == pytest.approx(0.05)


def test_timestep_bias_zero_is_the_uniform_draw_and_positive_bias_favours_high_noise():
    cpu = torch.device("cpu")
    uniform = train_idenet.sample_timesteps(64, 1000, 0.0, torch.Generator().manual_seed(3), cpu)
    assert torch.equal(uniform, torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(3)))
    t = train_idenet.sample_timesteps(200_000, 1000, 2.0, torch.Generator().manual_seed(0), cpu).float()
    assert t.min() >= 0 and t.max() <= 999
    # density proportional to t^2 on [0, T): mean 3T/4, a quarter of the draws below T * 0.25^(1/3) = 630
    assert float(t.mean()) == pytest.approx(750, abs=3)
    assert float((t < 630).float().mean()) == pytest.approx(0.25, abs=0.005)
    with pytest.raises(ValueError, match="timestep_bias"):
        IDENetConfig(model="m", dataset="d", output_dir="o", timestep_bias=-1.0)


def test_missing_identity_model_fails_fast_and_clearly(tmp_path, tiny_ip2p, pairs):
    cfg = IDENetConfig(model=str(tiny_ip2p), dataset=str(pairs), output_dir=str(tmp_path / "o"), resolution=32,
                       identity_model=str(tmp_path / "glintr100.onnx"))
    with pytest.raises(ModelNotAvailableError, match="glintr100.onnx does not exist.*identity_weighting: none"):
        train_idenet.train(cfg)
    assert not (tmp_path / "o" / "checkpoint-1").exists()
