"""python -m train.step_cost --device cuda --dtype bf16 --micro-batch 1,4,8 --resolution 512 --arch sd15 --out DIR

What one optimiser step of each trainer costs at the real scale, before renting a cluster: IDE-Net (the ε loss and the
annealing identity loss through the VAE decoder and ArcFace) and IPNet (the full recipe of ``ipnet_full.yaml``: the
teacher target by DDIM inversion and sampling, the discriminator turn, the adversarial, distillation, identity and
triplet terms), both built with **random weights** in the real architecture (SD1.5 InstructPix2Pix UNet, VAE and
CLIP text encoder; IResNet-100 ArcFace as antelopev2's glintr100; a CLIP ViT-B/16 vision tower for the triplet
features), gradient checkpointing on, the recipes' mixed precision (``--dtype``). Nothing is downloaded.

The step is the trainers' own: ``Trainer.prepare`` + ``Trainer.train_step`` on the turns of
``train_idenet.idenet_turn`` / ``train_ipnet.ipnet_turns`` (the same losses, weighting, clipping, optimisers, LR
schedulers and EMA), one micro-batch per step (``gradient_accumulation_steps`` 1), on synthetic batches of the
paired-data schema. Per micro-batch size: seconds per step (``--warmup`` steps excluded, ``--steps`` timed, device
synchronised) and peak memory (``torch.cuda.max_memory_allocated``, reset per size), then the implied cost of the
README's schedule (each recipe's ``max_train_steps`` × ``train_batch_size * gradient_accumulation_steps`` samples):
steps × accumulation × s/step with accumulation = effective batch / micro-batch (a slight over-estimate: an
accumulated micro-step skips the optimiser and EMA update). A size that runs out of memory is recorded as OOM.

Writes ``step_cost.json`` and ``step_cost.md`` to ``--out`` and prints the table. ``--arch tiny`` (test-size networks,
the VAE-feature triplet fallback) is the CPU smoke test.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIGS = Path(__file__).parent / "configs"
RECIPES = {"idenet": CONFIGS / "idenet_aid.yaml", "ipnet": CONFIGS / "ipnet_full.yaml"}
PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}
LATENT_ARCH = {"sd15": "sd15-ip2p", "tiny": "tiny"}
# CLIP ViT-B/16 vision tower (the recipe's `triplet_clip: ViT-B/16` triplet features, kept apart from the
# evaluation's ViT-L/14), as transformers configures it.
CLIP_VIT_B16_VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 224, "patch_size": 16, "projection_dim": 512}
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass
class StepCostConfig:
    out: Path
    device: str = "cuda"
    dtype: str = "bf16"  # bf16 | fp16 | fp32: the trainers' mixed precision (frozen networks in that dtype)
    micro_batches: list[int] = field(default_factory=lambda: [1, 4, 8])
    resolution: int = 512
    arch: str = "sd15"  # sd15 | tiny
    trainers: list[str] = field(default_factory=lambda: ["idenet", "ipnet"])
    warmup: int = 1
    steps: int = 3
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)  # trainer -> {config key: value} (tests)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.dtype not in PRECISION or self.arch not in LATENT_ARCH:
            raise ValueError(f"--dtype must be one of {list(PRECISION)} and --arch one of {list(LATENT_ARCH)}")
        if not self.micro_batches or min(self.micro_batches) < 1 or self.steps < 1 or self.warmup < 0:
            raise ValueError("--micro-batch sizes and --steps must be >= 1, --warmup >= 0")
        unknown = [t for t in self.trainers if t not in RECIPES]
        if unknown:
            raise ValueError(f"unknown trainer(s) {unknown}; choose from {list(RECIPES)}")


# ---------------------------------------------------------------------------------------------------- random networks
def random_arcface(arch: str, device: torch.device) -> nn.Module:
    """A frozen differentiable ArcFace with random weights: IResNet-100 (glintr100's depth) or a test-size one."""
    from instantportrait.training.arcface import DifferentiableArcFace, iresnet

    backbone = iresnet("r100") if arch == "sd15" else iresnet((1, 1, 1, 1), widths=(8, 8, 16, 16), num_features=32)
    return DifferentiableArcFace(backbone.to(device))


def random_clip_features(device: torch.device, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pixels in [-1, 1] -> L2-normalised CLIP ViT-B/16 image embeddings (random weights, frozen), differentiable in
    the input: the cost of ``ClipScorer.image_features_differentiable`` without its weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_B16_VISION)).to(device, dtype)
    model.requires_grad_(False).eval()
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    def features(pixels: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate((pixels.float() + 1) / 2, size=(224, 224), mode="bicubic")  # (B, 3, 224, 224)
        emb = model(pixel_values=((x - mean) / std).to(dtype)).image_embeds  # (B, 512)
        return nn.functional.normalize(emb.float(), dim=-1)  # (B, 512)

    return features


def synthetic_batch(n: int, resolution: int, device: torch.device, seed: int) -> dict[str, Any]:
    """``n`` rows of the paired-data schema (``training.data.PairedEditDataset``): noise images, one face each at the
    ArcFace template's keypoints."""
    from instantportrait.face.keypoints import template_keypoints

    g = torch.Generator().manual_seed(seed)
    kps = torch.as_tensor(template_keypoints((resolution, resolution)), dtype=torch.float32)  # (5, 2)
    lo, hi = kps.min(0).values, kps.max(0).values
    bbox = torch.cat([lo - 0.3 * (hi - lo), hi + 0.3 * (hi - lo)]).clamp(0, resolution)  # (4,)
    batch = {"source": torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1,  # (B, 3, H, W)
             "target": torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1,
             "instruction": ["give them a gaming headset with a microphone"] * n,
             "source_kps": kps.expand(n, 5, 2).clone(), "has_face": torch.ones(n, dtype=torch.bool),
             "source_bbox": bbox.expand(n, 4).clone()}
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------- the two trainers
def recipe(name: str, sc: StepCostConfig, out: Path) -> Any:
    """The recipe's config with this run's resolution and precision, one micro-batch per step, no validation."""
    from train.config import IDENetConfig, IPNetConfig, load_config

    over = {"resolution": sc.resolution, "mixed_precision": PRECISION[sc.dtype], "gradient_checkpointing": True,
            "gradient_accumulation_steps": 1, "output_dir": str(out), "validation_steps": 0}
    if name == "ipnet":
        over["log_grad_norms_every"] = 0  # a logging extra, not part of a training step's cost
    over.update(sc.overrides.get(name, {}))
    return load_config(IDENetConfig if name == "idenet" else IPNetConfig, RECIPES[name], over)


def build_idenet(cfg: Any, trainer: Any, arch: str) -> Any:
    """IDE-Net's ``TrainerParts`` on random networks, as ``train_idenet.train`` assembles them from a checkpoint."""
    from instantportrait.models.architectures import build_random_instruct_pix2pix, resolve_architecture
    from train.common import weight_dtype
    from train.train_idenet import build_parts, idenet_turn
    from train.trainer import TrainerParts

    pipe = build_random_instruct_pix2pix(resolve_architecture(LATENT_ARCH[arch]), device=trainer.device)
    unet = pipe.unet.requires_grad_(True)
    unet.enable_gradient_checkpointing()
    pipe.vae.enable_gradient_checkpointing()  # the identity loss backpropagates through the decoder
    parts = build_parts(pipe, cfg, trainer.device, weight_dtype(cfg.mixed_precision),
                        arcface=random_arcface(arch, trainer.device))
    return TrainerParts("idenet", model=unet, unet=unet, dataset=[], turns=[idenet_turn(cfg, parts, unet)],
                        edit=_no_edit, save=_no_save)


def build_ipnet(cfg: Any, trainer: Any, arch: str) -> Any:
    """IPNet's ``TrainerParts`` on random networks (student, a teacher of the same architecture, discriminator,
    ArcFace, CLIP triplet features or, for ``tiny``, the VAE fallback), through ``train_ipnet.assemble_wrapper``."""
    from instantportrait.models.architectures import build_random_ipnet, resolve_architecture
    from train.common import weight_dtype
    from train.train_ipnet import assemble_wrapper, ipnet_turns, make_triplet_features
    from train.trainer import TrainerParts

    dev, frozen = trainer.device, weight_dtype(cfg.mixed_precision)
    student = build_random_ipnet(resolve_architecture(LATENT_ARCH[arch]), device=dev, timestep=cfg.timestep,
                                 start=cfg.start)
    teacher = copy.deepcopy(student.unet)  # the student starts as a copy of its teacher
    student.unet.requires_grad_(True)
    features = ((random_clip_features(dev, frozen), 224, "CLIP ViT-B/16 image features (random weights)")
                if arch == "sd15" else make_triplet_features(replace(cfg, triplet_features="vae"), student.vae, dev))
    wrapper, _ = assemble_wrapper(cfg, student, teacher, dev, frozen, random_arcface(arch, dev), features)
    return TrainerParts("ipnet", model=wrapper, unet=wrapper.student_unet, dataset=[],
                        turns=ipnet_turns(cfg, wrapper), edit=_no_edit, save=_no_save)


def _no_edit(*args: Any) -> list:
    raise NotImplementedError("step_cost runs no validation")


def _no_save(unet: nn.Module) -> Path:
    raise NotImplementedError("step_cost saves nothing")


# ---------------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer: Any, sc: StepCostConfig, micro_batch: int) -> dict[str, Any]:
    """``--warmup`` then ``--steps`` timed ``Trainer.train_step`` calls on one micro-batch of ``micro_batch``."""
    dev = trainer.device
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    times: list[float] = []
    try:
        for i in range(sc.warmup + sc.steps):
            micro = [synthetic_batch(micro_batch, sc.resolution, dev, seed=i)]
            _sync(dev)
            t0 = time.perf_counter()
            trainer.train_step(micro, i + 1)
            _sync(dev)
            if i >= sc.warmup:
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError as exc:
        return {"micro_batch": micro_batch, "status": "OOM", "message": str(exc).splitlines()[0][:300],
                "peak_gb": _peak_gb(dev)}
    times.sort()
    return {"micro_batch": micro_batch, "status": "ok", "s_per_step": times[len(times) // 2],
            "s_per_step_min": times[0], "s_per_step_max": times[-1], "timed_steps": len(times),
            "peak_gb": _peak_gb(dev)}


def _peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan


def schedule_cost(full: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The README schedule (the recipe ``full`` as shipped) at this micro-batch: steps × (effective batch /
    micro-batch) × s/step, in GPU-hours on this device."""
    effective = full.train_batch_size * full.gradient_accumulation_steps
    accumulation = max(1, math.ceil(effective / row["micro_batch"]))
    hours = full.max_train_steps * accumulation * row.get("s_per_step", math.nan) / 3600
    return {"schedule": f"{full.max_train_steps} steps × {effective}", "accumulation": accumulation,
            "schedule_gpu_hours": hours}


def measure(name: str, sc: StepCostConfig, work: Path) -> list[dict[str, Any]]:
    """Every micro-batch size of one trainer (networks built once; peak memory reset per size)."""
    from train.config import load_config
    from train.trainer import Trainer

    cfg = recipe(name, sc, work / name)
    full = load_config(type(cfg), RECIPES[name])
    trainer = Trainer(cfg, find_unused_parameters=name == "ipnet")
    if trainer.device.type != torch.device(sc.device).type:
        raise ValueError(f"--device {sc.device} but accelerate chose {trainer.device} (set CUDA_VISIBLE_DEVICES)")
    t0 = time.perf_counter()
    parts = (build_idenet if name == "idenet" else build_ipnet)(cfg, trainer, sc.arch)
    trainer.prepare(parts)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in parts.unet.parameters())
    rows = []
    for mb in sc.micro_batches:
        row = {"trainer": name, "arch": sc.arch, "resolution": sc.resolution, "dtype": sc.dtype,
               "trained_unet_params_m": params / 1e6, "build_s": build_s, **time_steps(trainer, sc, mb)}
        rows.append({**row, **schedule_cost(full, row)})
        print(json.dumps(rows[-1]), flush=True)
    del trainer, parts
    if torch.device(sc.device).type == "cuda":
        torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    def num(v: Any, fmt: str) -> str:
        return "–" if v is None or not math.isfinite(float(v)) else format(float(v), fmt)

    lines = ["# Training step cost (random weights, real architecture)", "",
             "| Trainer | Micro-batch | s / step | Peak GB | Schedule | Accumulation | GPU-hours |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        status = "" if r["status"] == "ok" else f" ({r['status']})"
        lines.append(f"| {r['trainer']}{status} | {r['micro_batch']} | {num(r.get('s_per_step'), '.3f')} | "
                     f"{num(r.get('peak_gb'), '.1f')} | {r['schedule']} | {r['accumulation']} | "
                     f"{num(r.get('schedule_gpu_hours'), '.1f')} |")
    lines += ["", f"- device: {env['device_name']}, torch {env['torch']}, mixed precision {env['dtype']}, "
              f"{env['resolution']} px, architecture {env['arch']}, gradient checkpointing on",
              f"- s / step: median of {env['steps']} optimiser steps after {env['warmup']} warm-up (synchronised); "
              "Peak GB: torch.cuda.max_memory_allocated (reset per micro-batch size; n/a off CUDA)",
              "- GPU-hours: the README schedule (recipe max_train_steps × train_batch_size × "
              "gradient_accumulation_steps) = steps × accumulation × s/step on one such device"]
    return "\n".join(lines) + "\n"


def run(sc: StepCostConfig) -> list[dict[str, Any]]:
    sc.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(sc.device)
    env = {"device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "dtype": sc.dtype, "resolution": sc.resolution, "arch": sc.arch,
           "steps": sc.steps, "warmup": sc.warmup, "micro_batches": sc.micro_batches}
    with tempfile.TemporaryDirectory() as work:
        rows = [r for name in sc.trainers for r in measure(name, sc, Path(work))]
    (sc.out / "step_cost.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2, default=str))
    table = markdown(rows, env)
    (sc.out / "step_cost.md").write_text(table)
    print(table)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="python -m train.step_cost", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=list(PRECISION))
    p.add_argument("--micro-batch", default="1,4,8", help="comma-separated micro-batch sizes")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--arch", default="sd15", choices=list(LATENT_ARCH))
    p.add_argument("--trainers", default="idenet,ipnet")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="TRAINER.KEY=VALUE",
                   help="override a recipe key, e.g. ipnet.teacher_steps=2 (quick tests only: it changes the step)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    overrides: dict[str, dict[str, str]] = {}
    for item in a.set:
        key, sep, value = item.partition("=")
        trainer, dot, name = key.partition(".")
        if not sep or not dot:
            p.error(f"--set {item!r}: expected TRAINER.KEY=VALUE, e.g. ipnet.teacher_steps=2")
        overrides.setdefault(trainer.strip(), {})[name.strip()] = value.strip()
    return run(StepCostConfig(out=Path(a.out), device=a.device, dtype=a.dtype, resolution=a.resolution, arch=a.arch,
                              micro_batches=[int(x) for x in a.micro_batch.split(",") if x.strip()],
                              trainers=[t.strip() for t in a.trainers.split(",") if t.strip()], warmup=a.warmup,
                              steps=a.steps, overrides=overrides))


if __name__ == "__main__":
    main()
