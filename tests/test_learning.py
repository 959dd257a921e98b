"""Issue 3 acceptance: the real trainers learn. On a small synthetic paired set ("make the background blue" on drawn
faces), a few hundred CPU steps of IDE-Net and then of IPNet lower their losses clearly, and IPNet's one-step
output ends closer to the target than its initialisation was. Everything runs through ``train_idenet.train`` /
``train_ipnet.train`` and the trainers' own loss functions; the numbers are printed (``pytest -s``).

The model is the tiny InstructPix2Pix of ``instantportrait.tiny.diffusion`` (random weights, 8x VAE: 32 px images, 4x4
latents) with one change: the frozen random VAE's ``scaling_factor`` is fitted so the scaled latents have unit
variance, as SD's 0.18215 was fitted for its VAE (with the default factor the signal would be ~0.05 of the noise).
A random VAE cannot reconstruct pixels, but its latents still differ between source and target, so the edit is a
learnable latent mapping; the distances are therefore measured in latent space.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch
from fixtures.pairs import write_synthetic_pairs
from torch.utils.data import default_collate

from instantportrait.training.data import PairedEditDataset
from train import train_idenet, train_ipnet
from train.common import read_log, step_generator
from train.config import IDENetConfig, IPNetConfig, LossWeights

IDENET_STEPS = 200
IPNET_STEPS = 120


def _learning_model(path: Path, data: Path) -> Path:
    """The tiny InstructPix2Pix with the VAE scaling factor fitted to the data (unit-variance scaled latents)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from instantportrait.tiny.diffusion import tiny_instruct_pix2pix_components

    parts = tiny_instruct_pix2pix_components(path.parent / "work", seed=0)
    ds = PairedEditDataset(data, 32)
    pixels = torch.stack([ds[i]["source"] for i in range(len(ds))])  # (N, 3, 32, 32)
    with torch.no_grad():
        std = float(parts["vae"].encode(pixels).latent_dist.mode().std())
    parts["vae"].register_to_config(scaling_factor=1.0 / std)
    StableDiffusionInstructPix2PixPipeline(**parts, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False).save_pretrained(path)
    return path


def _idenet_eval(model: Path, cfg: IDENetConfig, batch: dict) -> dict[str, float]:
    """IDE-Net's loss terms on the whole set with fixed draws and no conditioning dropout (4 draws averaged)."""
    cfg = dataclasses.replace(cfg, conditioning_dropout_prob=0.0)
    parts = train_idenet.build_parts(train_idenet.load_base_pipeline(model), cfg, torch.device("cpu"), torch.float32)
    out: dict[str, float] = {}
    with torch.no_grad():
        for r in range(4):
            losses, _ = train_idenet.idenet_losses(parts, batch, cfg, step_generator(99, "eval", r, 0, 0), 10**6)
            for k, v in losses.items():
                out[k] = out.get(k, 0.0) + float(v) / 4
    return out


def _ipnet_eval(student: Path, cfg: IPNetConfig, batch: dict) -> dict[str, float]:
    """With the student loaded from ``student``: its one-step latents' MSE to the target latents, the source
    latents' MSE to them (the "no edit" reference), and the distillation term (fixed draws)."""
    wrapper, _, _ = train_ipnet.build_wrapper(dataclasses.replace(cfg, student_init=str(student)),
                                              torch.device("cpu"))
    with torch.no_grad():
        enc = wrapper.encode(batch)
        x0 = wrapper.student(enc["src_latents"], enc["prompt"], torch.Generator().manual_seed(7))  # (N, 4, 4, 4)
        losses, _ = wrapper(batch, "generator", step_generator(99, "eval", 0, 0, 0))
    return {"to_target": float((x0 - enc["tgt_latents"]).pow(2).mean()),
            "source_to_target": float((enc["src_latents"] * wrapper.scaling_factor - enc["tgt_latents"]).pow(2).mean()),
            "distill": float(losses["distill"])}


def _logged(path: Path, key: str) -> list[float]:
    return [r[key] for r in read_log(path) if key in r]


@pytest.mark.slow
def _train(trainer, cfg, evaluate, start, batch, log_key):
    """Train ``cfg`` with ``trainer`` from the model ``start``: (output folder, ``evaluate`` before and after, the
    logged ``log_key`` values, CPU seconds)."""
    before = evaluate(start, cfg, batch)
    cpu = time.process_time()
    out = trainer.train(cfg)
    cpu = time.process_time() - cpu
    return out, before, evaluate(out, cfg, batch), _logged(out / "logs.jsonl", log_key), cpu


def _ends(values):
    return f"first {[round(v, 3) for v in values[:3]]} last {[round(v, 3) for v in values[-3:]]}"


def test_idenet_then_ipnet_learn_the_blue_background_edit(tmp_path, tiny_face_pack):
    cpu0, wall0 = time.process_time(), time.perf_counter()
    data = write_synthetic_pairs(tmp_path / "pairs", n=8, size=32)
    model = _learning_model(tmp_path / "tiny-ip2p", data)
    ds = PairedEditDataset(data, 32)
    batch = default_collate([ds[i] for i in range(len(ds))])
    common = dict(dataset=str(data), resolution=32, train_batch_size=8, log_every=10, use_ema=False,
                  checkpointing_steps=10**6, checkpoints_total_limit=1, seed=0)
    arcface = str(tiny_face_pack / "w_tiny.onnx")

    # ---- IDE-Net: ε + annealing identity loss, from the random tiny model
    icfg = IDENetConfig(model=str(model), output_dir=str(tmp_path / "idenet"), max_train_steps=IDENET_STEPS,
                        learning_rate=2e-3, identity_model=arcface, identity_weighting="annealing", **common)
    idenet, ide_before, ide_after, ide_log, cpu_ide = _train(train_idenet, icfg, _idenet_eval, model, batch,
                                                             "eps_loss")
    print(f"\nIDE-Net {IDENET_STEPS} steps ({cpu_ide:.1f} s CPU): eval eps {ide_before['eps']:.3f} -> "
          f"{ide_after['eps']:.3f}, identity {ide_before['identity']:.3f} -> {ide_after['identity']:.3f}; "
          f"logged eps {_ends(ide_log)}")
    assert ide_after["eps"] < 0.5 * ide_before["eps"]
    assert sum(ide_log[-5:]) / 5 < 0.6 * sum(ide_log[:5]) / 5

    # ---- IPNet: the full recipe (adv + distill from the DDIM-inverted teacher + triplet + identity), student
    # initialised from the IDE-Net above; the teacher runs 4 DDIM steps without CFG to fit the CPU budget
    pcfg = IPNetConfig(model=str(idenet), output_dir=str(tmp_path / "ipnet"), max_train_steps=IPNET_STEPS,
                       learning_rate=1e-3, disc_learning_rate=1e-3, identity_model=arcface,
                       weights=LossWeights(adv=1.0, distill=1.0, sds=0.0, triplet=0.1, identity=0.1),
                       teacher_start="ddim-inversion", teacher_steps=4, teacher_text_guidance=1.0,
                       teacher_image_guidance=1.0, **common)
    _, ip_before, ip_after, distill_log, cpu_ip = _train(train_ipnet, pcfg, _ipnet_eval, idenet, batch,
                                                         "distill_loss")
    print(f"IPNet {IPNET_STEPS} steps ({cpu_ip:.1f} s CPU): one-step latent MSE to target {ip_before['to_target']:.3f} "
          f"-> {ip_after['to_target']:.3f} (source to target: {ip_after['source_to_target']:.3f}); eval distill "
          f"{ip_before['distill']:.3f} -> {ip_after['distill']:.3f}; logged distill {_ends(distill_log)}")
    assert ip_after["to_target"] < 0.5 * ip_before["to_target"]
    assert ip_after["distill"] < 0.5 * ip_before["distill"]
    assert sum(distill_log[-3:]) / 3 < 0.5 * sum(distill_log[:3]) / 3
    print(f"total: {time.process_time() - cpu0:.1f} s CPU, {time.perf_counter() - wall0:.1f} s wall")
