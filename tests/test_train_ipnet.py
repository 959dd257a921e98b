"""train/train_ipnet.py on tiny models: the DMD2-style wrapper (which terms, where gradients go), train + checkpoint +
resume bit-identical to an uninterrupted run, the saved InstantPortraitPipeline through the registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fixtures.pairs import write_synthetic_pairs
from safetensors.torch import load_file
from torch.utils.data import default_collate

from instantportrait.training.data import PairedEditDataset
from train import train_ipnet
from train.common import read_log, step_generator, tensor_to_pil
from train.config import IPNetConfig, LossWeights, load_config_file, save_config

UNET_FILE = Path("unet") / "diffusion_pytorch_model.safetensors"
ALL_TERMS = LossWeights(adv=1.0, distill=1.0, sds=0.5, triplet=0.5, identity=0.5)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_synthetic_pairs(tmp_path_factory.mktemp("data") / "pairs", n=6, size=32)


def _cfg(teacher: Path, pairs: Path, pack: Path, out: Path, **kw) -> IPNetConfig:
    base = dict(model=str(teacher), dataset=str(pairs), output_dir=str(out), resolution=32, train_batch_size=2,
                max_train_steps=4, learning_rate=1e-4, disc_learning_rate=1e-3, lr_scheduler="linear",
                checkpointing_steps=2, log_every=1, identity_model=str(pack / "w_tiny.onnx"), weights=ALL_TERMS,
                teacher_steps=2, teacher_t_start=600, sds_text_guidance=2.0, sds_image_guidance=1.5,
                use_ema=True, ema_decay=0.9)
    return IPNetConfig(**{**base, **kw})


def _batch(pairs: Path, n: int = 2) -> dict:
    ds = PairedEditDataset(pairs, 32)
    batch = default_collate([ds[i] for i in range(n)])
    batch["has_face"][-1] = False  # one sample without a face: excluded from the identity term
    batch["source_kps"][-1] = float("nan")
    return batch


def _frozen_modules(w: train_ipnet.IPNetWrapper) -> list[torch.nn.Module]:
    return [w.teacher_unet, w.vae, w.text_encoder, w.arcface]


def test_generator_turn_gradients_reach_the_student_only(tmp_path, tiny_ip2p, pairs, tiny_face_pack):
    cfg = _cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path, log_grad_norms_every=3)
    wrapper, _, desc = train_ipnet.build_wrapper(cfg, torch.device("cpu"))
    assert "VAE-encoder" in desc and "fallback: no CLIP" in desc  # the run log says which triplet features
    assert not any(k.startswith("grad_norm/") for k in wrapper(_batch(pairs), "generator",
                                                                step_generator(0, "t", 1, 0, 0), step=2)[1])
    losses, logs = wrapper(_batch(pairs), "generator", step_generator(0, "t", 1, 0, 0), step=3)
    assert set(losses) == {"adv", "distill", "sds", "triplet", "identity"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert logs["disc_inputs"]["fake_latents"].requires_grad is False
    # every 3rd step: each term's gradient norm on the student output, and the graph survives for the backward
    assert all(logs[f"grad_norm/{k}"] > 0 for k in losses), {k: v for k, v in logs.items() if "grad_norm" in k}
    total = train_ipnet.weighted_total(losses, cfg.weights.active())
    torch.testing.assert_close(total, sum(w * losses[k] for k, w in cfg.weights.active().items()))
    total.backward()
    student = list(wrapper.student_unet.parameters())
    assert all(p.grad is not None for p in student)
    for module in _frozen_modules(wrapper):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters()), type(module).__name__
    # every term on its own reaches the student (no detached path by mistake)
    for term in ("adv", "distill", "sds", "triplet", "identity"):
        wrapper.zero_grad(set_to_none=True)
        losses, _ = wrapper(_batch(pairs), "generator", step_generator(0, "t", 1, 0, 0))
        losses[term].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student), term
        assert all(p.grad is None for m in _frozen_modules(wrapper) for p in m.parameters()), term


def test_discriminator_turn_trains_the_heads_only(tmp_path, tiny_ip2p, pairs, tiny_face_pack):
    cfg = _cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path, weights=LossWeights(adv=1, distill=0, sds=0, triplet=0,
                                                                                identity=0))
    wrapper, _, _ = train_ipnet.build_wrapper(cfg, torch.device("cpu"))
    assert wrapper.arcface is None and wrapper.triplet_features is None  # unused parts are not even loaded
    batch = _batch(pairs)
    gen_losses, logs = wrapper(batch, "generator", step_generator(0, "g", 1, 0, 0))
    assert set(gen_losses) == {"adv"}
    losses, d_logs = wrapper(batch, "discriminator", step_generator(0, "d", 1, 0, 0), logs["disc_inputs"])
    losses["disc"].backward()
    assert all(p.grad is not None for p in wrapper.discriminator.parameters())
    assert all(p.grad is None for p in wrapper.student_unet.parameters())
    assert all(p.grad is None for m in (wrapper.teacher_unet, wrapper.vae) for p in m.parameters())
    assert {"d_loss", "d_real_logit", "d_fake_logit"} <= set(d_logs)
    # the teacher is referenced by the discriminator, not owned: its state holds only the heads
    assert all(k.startswith("heads.") for k in wrapper.discriminator.state_dict())
    with pytest.raises(ValueError, match="turn must be"):
        wrapper(batch, "critic", step_generator(0, "d", 1, 0, 0))


def test_pair_term_is_the_latent_l2_to_the_pairs_own_target(tmp_path, tiny_ip2p, pairs, tiny_face_pack):
    """``pair`` regresses the one-step output onto the pair's target latents; it needs no teacher pass, and the
    student it trains moves toward the target (the loss falls over a few optimiser steps on one batch)."""
    import torch.nn.functional as F

    cfg = _cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path, weights=LossWeights(adv=0, distill=0, sds=0, triplet=0,
                                                                                identity=0, pair=1.0))
    wrapper, _, _ = train_ipnet.build_wrapper(cfg, torch.device("cpu"))
    assert wrapper.discriminator is None and wrapper.arcface is None
    batch = _batch(pairs)
    enc = wrapper.encode(batch)
    with torch.no_grad():
        x0 = wrapper.student(enc["src_latents"], enc["prompt"], step_generator(0, "g", 1, 0, 0))
        losses, logs = wrapper(batch, "generator", step_generator(0, "g", 1, 0, 0))
    assert set(losses) == {"pair"} and "teacher_latents" not in wrapper._targets(batch, enc, None)
    torch.testing.assert_close(losses["pair"], F.mse_loss(x0, enc["tgt_latents"]))
    assert logs["pair_loss"] == pytest.approx(float(losses["pair"]))
    opt = torch.optim.Adam(wrapper.student_unet.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        opt.zero_grad()
        loss = wrapper(batch, "generator", step_generator(0, "g", 1, 0, 0))[0]["pair"]
        first = float(loss.detach()) if first is None else first
        loss.backward()
        opt.step()
    assert float(wrapper(batch, "generator", step_generator(0, "g", 1, 0, 0))[0]["pair"]) < 0.8 * first
    # pair_face_weight: the same squared errors, weighted up inside the face box (from the batch's boxes/landmarks)
    from dataclasses import replace

    from instantportrait.training.data import face_boxes
    from instantportrait.training.losses import box_weight_map, paired_regression_loss

    wrapper.settings = replace(wrapper.settings, pair_face_weight=4.0)
    with torch.no_grad():
        x0 = wrapper.student(enc["src_latents"], enc["prompt"], step_generator(0, "g", 1, 0, 0))
        weighted = wrapper(batch, "generator", step_generator(0, "g", 1, 0, 0))[0]["pair"]
    boxes = face_boxes(batch["source_bbox"].float(), batch["source_kps"].float(), (32, 32))
    wmap = box_weight_map(boxes, (32, 32), tuple(x0.shape[-2:]), 4.0, expand=cfg.face_crop_expand)
    assert 1.0 < float(wmap.max()) and float(wmap.min()) == 1.0  # a face box that is not the whole image
    torch.testing.assert_close(weighted, paired_regression_loss(x0, enc["tgt_latents"], wmap)[0])


def test_train_checkpoint_resume_matches_uninterrupted_run(tmp_path, tiny_ip2p, pairs, tiny_face_pack,
                                                           tiny_clip_file):
    # uninterrupted, with one-step validation edits scored by the tiny face pack and CLIP at steps 2 and 4
    full = _cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path / "full", gen_update_ratio=2, triplet_features="vae",
                validation_steps=2, num_validation_images=1, face_pack=str(tiny_face_pack), clip=str(tiny_clip_file),
                log_grad_norms_every=3)
    train_ipnet.main(["--config", str(save_config(full, tmp_path / "full.yaml"))])
    full_log = read_log(tmp_path / "full" / "logs.jsonl")
    start = next(r for r in full_log if r.get("event") == "start")
    assert start["triplet_features"].startswith("pooled VAE-encoder") and start["discriminator"] == "unet-feature"
    val = [r for r in full_log if r.get("event") == "validation"]
    assert [r["step"] for r in val] == [2, 4] and all("clip_t" in r and "id_sim" in r for r in val)
    steps = [r for r in full_log if "loss_d" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [("loss_g" in r) for r in steps] == [True, False, True, False]  # generator every 2nd iteration
    # per-term gradient norms on the student output: only on generator steps that are multiples of 3
    assert [sorted(k for k in r if k.startswith("grad_norm/")) for r in steps] == \
        [[], [], [f"grad_norm/{k}" for k in sorted(ALL_TERMS.active())], []]

    # killed after step 2, resumed from that checkpoint in a fresh folder (an explicit path this time), without
    # validation: identical numbers show validation (EMA weights swapped in and out) changed nothing
    ckpt = tmp_path / "full" / "checkpoint-2"
    assert load_config_file(ckpt / "train_config.yaml") == full
    assert {"unet", "unet_ema.safetensors", "discriminator.safetensors", "training_state.json"} <= \
        {p.name for p in ckpt.iterdir()}
    resumed_ckpt = tmp_path / "elsewhere" / "checkpoint-2"
    shutil.copytree(ckpt, resumed_ckpt)
    train_ipnet.train(_cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path / "part", gen_update_ratio=2,
                           triplet_features="vae", resume=str(resumed_ckpt)))
    log = read_log(tmp_path / "part" / "logs.jsonl")
    assert [r["global_step"] for r in log if r.get("event") == "resume"] == [2]
    assert [r["step"] for r in log if "loss_d" in r] == [3, 4]
    by_step = {r["step"]: r for r in steps}
    for r in (r for r in log if "loss_d" in r):
        assert (r["loss_d"], r.get("loss_g")) == (by_step[r["step"]]["loss_d"], by_step[r["step"]].get("loss_g"))
    for sub in (UNET_FILE, Path("checkpoint-4") / UNET_FILE, Path("checkpoint-4") / "unet_ema.safetensors",
                Path("checkpoint-4") / "discriminator.safetensors"):
        a, b = load_file(str(tmp_path / "full" / sub)), load_file(str(tmp_path / "part" / sub))
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    # each LR scheduler stepped once per step of its own optimiser: 2 generator steps, 4 discriminator steps
    state = json.loads((tmp_path / "part" / "checkpoint-4" / "training_state.json").read_text())
    assert state["g_lr_scheduler"]["last_epoch"] == 2 and state["d_lr_scheduler"]["last_epoch"] == 4
    assert state["g_lr_scheduler"]["_last_lr"] == [0.0] and state["d_lr_scheduler"]["_last_lr"] == [0.0]

    # the output is an InstantPortraitPipeline the registry loads as `ipnet`; the card holds the config
    out = tmp_path / "full"
    card = json.loads((out / "instantportrait_card.json").read_text())
    assert card["training"]["weights"] == {"adv": 1.0, "distill": 1.0, "sds": 0.5, "triplet": 0.5, "identity": 0.5,
                                           "pair": 0.0}
    assert card["training"]["gen_update_ratio"] == 2 and load_config_file(out / "train_config.yaml") == full
    from instantportrait.methods import get_editor

    item = PairedEditDataset(pairs, 32)[0]
    edited = get_editor("ipnet", model=str(out), resolution=32).edit([tensor_to_pil(item["source"])],
                                                                      ["make the background blue"], seed=0)
    assert edited[0].size == (32, 32)


def test_ablation_switches_run(tmp_path, tiny_ip2p, pairs, tiny_face_pack, tiny_clip_file):
    """Stochastic teacher start, pixel-space perceptual distillation, CLIP triplet features, non-saturating GAN."""
    cfg = _cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path, teacher_start="stochastic", distill_space="pixel",
               distill_kind="l2+perceptual", clip=str(tiny_clip_file), adv_loss="nonsaturating",
               weights=LossWeights(adv=1, distill=1, sds=0, triplet=1, identity=0))
    wrapper, _, desc = train_ipnet.build_wrapper(cfg, torch.device("cpu"))
    assert desc.startswith("CLIP image features")
    losses, logs = wrapper(_batch(pairs), "generator", step_generator(0, "t", 1, 0, 0))
    assert {"distill_pixel_l2", "distill_pixel_perceptual", "triplet_loss"} <= set(logs)
    train_ipnet.weighted_total(losses, cfg.weights.active()).backward()
    assert all(p.grad is not None for p in wrapper.student_unet.parameters())
    with pytest.raises(ValueError, match="inference-only"):  # 2-step: no objective trains the second output
        train_ipnet.build_wrapper(_cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path, two_step=True), torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown discriminator 'stylegan'"):
        train_ipnet.build_discriminator(wrapper.teacher_unet, wrapper.pipe.scheduler,
                                        IPNetConfig(discriminator="stylegan"))


def test_grad_norms_are_each_terms_gradient_on_the_output():
    out = torch.randn(2, 4, 3, 3, requires_grad=True)
    losses = {"l2": (out**2).mean(), "const": torch.tensor(1.0)}
    norms = train_ipnet.IPNetWrapper.grad_norms(losses, out)
    assert norms["grad_norm/l2"] == pytest.approx(float((2 * out / out.numel()).norm()), rel=1e-5)
    assert norms["grad_norm/const"] == 0.0
    losses["l2"].backward()  # retain_graph: the trainer's backward still runs
    assert out.grad is not None


class _Recorder:
    """Wraps a function and keeps each call's keyword arguments and result."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kw):
        result = self.fn(*args, **kw)
        self.calls.append({"args": args, "kw": kw, "result": result})
        return result


def _record_turn(monkeypatch, wrapper, batch, seed=0):
    """One generator turn; returns (the student's start and output, the teacher_target call)."""
    teacher = _Recorder(train_ipnet.teacher_target)
    student = _Recorder(wrapper.pipe.predict_clean_latents)
    monkeypatch.setattr(train_ipnet, "teacher_target", teacher)
    monkeypatch.setattr(wrapper.pipe, "predict_clean_latents", student)
    losses, _ = wrapper(batch, "generator", step_generator(seed, "t", 1, 0, 0))
    monkeypatch.undo()
    (s_call,), (t_call,) = student.calls, teacher.calls
    return s_call["args"][0], s_call["result"], t_call, losses


@pytest.mark.parametrize("start", ["noise", "source"])
def test_shared_pairing_starts_student_and_teacher_from_the_same_latent(monkeypatch, tmp_path, tiny_ip2p, pairs,
                                                                        tiny_face_pack, start):
    """Shared: the teacher samples from the student's very start tensor (the pipeline's start rule, so inference sees
    what training saw); independent: two draws. With the levels apart (student t* 300, teacher 999) the same ε."""
    weights = LossWeights(adv=0, distill=1, sds=0, triplet=0, identity=0)
    kw = dict(teacher_start="stochastic", teacher_t_start=999, weights=weights, start=start, timestep=999)

    def build(**over):
        cfg = _cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path, **{**kw, **over})
        return train_ipnet.build_wrapper(cfg, torch.device("cpu"))[0]

    batch = _batch(pairs)
    s_start, _, t_call, _ = _record_turn(monkeypatch, build(), batch)
    assert torch.equal(s_start, t_call["result"].start)
    s_start, _, t_call, _ = _record_turn(monkeypatch, build(distill_pairing="independent"), batch)
    assert not torch.allclose(s_start, t_call["result"].start, atol=1e-3)
    if start == "source":  # student at t* = 300, teacher at 999: not one tensor, but one ε
        apart = build(timestep=300)
        s_start, _, t_call, _ = _record_turn(monkeypatch, apart, batch)
        eps = t_call["kw"]["noise"]
        src = apart.encode(batch)["src_latents"]
        torch.testing.assert_close(s_start, apart.pipe.start_latents(src, None, noise=eps))
        assert t_call["kw"]["start"] is None and not torch.equal(s_start, t_call["result"].start)


def test_teacher_target_inverts_with_the_empty_instruction_and_runs_cfg(monkeypatch, tmp_path, tiny_ip2p, pairs,
                                                                       tiny_face_pack):
    """The DDIM-inversion target: inverted with the empty instruction by default (the instruction on request),
    sampled with the teacher's CFG (3.0 / 1.5 here; the learning test turns CFG off); L_distill regresses onto it."""
    import torch.nn.functional as F

    from instantportrait.training.inversion import teacher_target

    weights = LossWeights(adv=0, distill=1, sds=0, triplet=0, identity=0)
    cfg = _cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path, weights=weights, teacher_text_guidance=3.0,
               teacher_image_guidance=1.5)
    batch = _batch(pairs)
    wrapper, _, _ = train_ipnet.build_wrapper(cfg, torch.device("cpu"))
    enc = wrapper.encode(batch)
    s_start, x0, t_call, losses = _record_turn(monkeypatch, wrapper, batch)
    assert torch.equal(t_call["kw"]["inversion_prompt_embeds"], enc["uncond"].expand_as(enc["prompt"]))
    assert (t_call["kw"]["text_guidance"], t_call["kw"]["image_guidance"]) == (3.0, 1.5)
    target = t_call["result"].latents
    torch.testing.assert_close(losses["distill"], F.mse_loss(x0, target))
    args = (wrapper.teacher_unet, wrapper.pipe.scheduler, enc["src_latents"] * wrapper.scaling_factor,
            enc["src_latents"], enc["prompt"], enc["uncond"])
    common = dict(t_start=600, num_steps=2, inversion_prompt_embeds=t_call["kw"]["inversion_prompt_embeds"])
    no_cfg = teacher_target("ddim-inversion", *args, text_guidance=1.0, image_guidance=1.0, **common)
    assert not torch.allclose(no_cfg.latents, target, atol=1e-4)  # the CFG pass changed the target
    # under ddim-inversion the student keeps the pipeline's start (one network evaluation at inference)
    assert t_call["kw"]["start"] is None and not torch.equal(s_start, t_call["result"].start)
    instr, _, _ = train_ipnet.build_wrapper(_cfg(tiny_ip2p, pairs, tiny_face_pack, tmp_path, weights=weights,
                                                 inversion_prompt="instruction"), torch.device("cpu"))
    _, _, i_call, _ = _record_turn(monkeypatch, instr, batch)
    assert torch.equal(i_call["kw"]["inversion_prompt_embeds"], enc["prompt"])
    assert not torch.allclose(i_call["result"].start, t_call["result"].start, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_ip2p_v(tiny_ip2p, tmp_path_factory) -> Path:
    """The tiny InstructPix2Pix with a v-prediction scheduler config (same weights)."""
    path = tmp_path_factory.mktemp("models") / "tiny-ip2p-v"
    shutil.copytree(tiny_ip2p, path)
    sched = path / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps({**json.loads(sched.read_text()), "prediction_type": "v_prediction"}))
    return path


def test_v_prediction_through_both_trainers(monkeypatch, tmp_path, tiny_ip2p, tiny_ip2p_v, pairs, tiny_face_pack):
    from instantportrait.pipelines.ipnet import predicted_x0
    from train import train_idenet
    from train.config import IDENetConfig

    # IPNet: the student reads its output as v, the teacher target and SDS convert v, every term trains
    weights = LossWeights(adv=1, distill=1, sds=0.5, triplet=0, identity=0)
    wrapper, _, _ = train_ipnet.build_wrapper(_cfg(tiny_ip2p_v, pairs, tiny_face_pack, tmp_path, weights=weights),
                                              torch.device("cpu"))
    assert wrapper.prediction_type == "v_prediction"
    batch = _batch(pairs)
    s_start, x0, t_call, losses = _record_turn(monkeypatch, wrapper, batch)
    assert t_call["kw"]["prediction_type"] == "v_prediction"
    enc = wrapper.encode(batch)
    with torch.no_grad():
        out = wrapper.student_unet(torch.cat([s_start, enc["src_latents"]], 1), torch.full((2,), 999),
                                   encoder_hidden_states=enc["prompt"]).sample
    a = wrapper.pipe.alpha_bar(999, torch.device("cpu"))
    torch.testing.assert_close(x0.detach(), predicted_x0(out, s_start, a, "v_prediction"), atol=1e-5, rtol=1e-5)
    train_ipnet.weighted_total(losses, weights.active()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    # IDE-Net: the ε-loss target is the velocity (same weights and draws, other target than the ε model's)
    eps_losses = []
    for model in (tiny_ip2p, tiny_ip2p_v):
        icfg = IDENetConfig(model=str(model), dataset=str(pairs), output_dir=str(tmp_path / "ide"), resolution=32,
                            identity_model=str(tiny_face_pack / "w_tiny.onnx"), conditioning_dropout_prob=0.0)
        parts = train_idenet.build_parts(train_idenet.load_base_pipeline(model), icfg, torch.device("cpu"),
                                         torch.float32)
        assert parts.noise_scheduler.config.prediction_type == ("epsilon" if model == tiny_ip2p else "v_prediction")
        losses, _ = train_idenet.idenet_losses(parts, batch, icfg, step_generator(0, "i", 1, 0, 0), 10**6)
        assert all(torch.isfinite(v) for v in losses.values())
        eps_losses.append(float(losses["eps"]))
    assert eps_losses[0] != pytest.approx(eps_losses[1], rel=1e-3)
