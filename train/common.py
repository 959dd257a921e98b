"""Training plumbing under ``train/trainer.py``'s scaffold (the step loop, hooks and resume live there; the loss
code in ``train_idenet.py`` / ``train_ipnet.py``).

    accelerator = make_accelerator(cfg)
    loader = make_dataloader(dataset, cfg, accelerator, start_micro_step=global_step * cfg.gradient_accumulation_steps)

What is here and the bookkeeping rules it keeps:

* **Seeds.** ``cfg.seed`` (default 0, never None) seeds the libraries once; every random draw of a training step
  comes from ``step_generator(seed, stream, step, micro, rank)``, a generator derived from the step's coordinates,
  so a step's noise, timesteps and dropout do not depend on what ran before it (resuming cannot shift them).
* **Data order.** ``StepBatchSampler`` is an endless stream of per-epoch permutations (seeded by ``(seed, epoch)``);
  micro-batch ``k`` of process ``r`` holds stream positions ``(k W + r) B ... + B``. A run resumed at global step
  ``s`` starts at micro-batch ``s * accumulation``: it reads exactly what the uninterrupted run would have read.
* **Steps.** A global step is one optimiser step of the trained network (IPNet: one generator/discriminator
  iteration). Each LR scheduler steps exactly once per step of *its* optimiser, by our own call (not accelerate's
  prepared scheduler, which steps ``num_processes`` times per call), and not when fp16 skipped the step.
* **Checkpoints.** ``output_dir/checkpoint-<step>/``: model weights written by the trainer's accelerate save hook
  (diffusers UNet folder, EMA and discriminator safetensors), optimiser / scaler / RNG state by ``save_state``,
  ``training_state.json`` (global step, LR scheduler states) and ``train_config.yaml`` (the full config).
  ``checkpoints_total_limit`` prunes the oldest before a save. ``resume: latest`` picks the newest (or starts fresh
  when there is none); a path must exist.
* **Logs.** ``output_dir/logs.jsonl``: one JSON record per logged step (``step``, losses, ``lr``) and per event
  (``start``, ``resume``, ``checkpoint``, ``validation``, ``done``); a tqdm bar on the main process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from instantportrait.errors import ModelNotAvailableError
from train.config import CONFIG_FILE, TrainConfig, config_to_dict, load_config_file, save_config

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"
LOG_FILE = "logs.jsonl"
UNET_DIR = "unet"
EMA_WEIGHTS = "unet_ema.safetensors"
EMA_STATE = "unet_ema.json"
# config fields that may differ between a run and the run it resumes without a warning
RESUME_MUTABLE = {"resume", "output_dir", "max_train_steps", "checkpointing_steps", "checkpoints_total_limit",
                  "log_every", "validation_steps", "num_validation_images", "dataloader_num_workers", "face_pack"}


# ---------------------------------------------------------------------------------------------------- models
def resolve_model_path(name: str) -> Path:
    """A local folder for a model given as a ``config.MODELS`` key, a folder, or a Hub ``repo[@rev]``.

    Offline and not cached, this raises ``ModelNotAvailableError`` within seconds (``hub.locate``).
    """
    from instantportrait.config import MODELS, resolve_model
    from instantportrait.hub import locate

    local = Path(name).expanduser()
    if local.is_dir():
        return local
    spec = resolve_model(name) if name in MODELS else resolve_model("custom-model", name)
    return locate(spec)


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype frozen models are cast to under ``mixed_precision``."""
    from instantportrait.config import torch_dtype

    return torch_dtype(mixed_precision) if mixed_precision in ("fp16", "bf16") else torch.float32


def load_identity_model(path: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.nn.Module | None:
    """The frozen, differentiable ArcFace of an insightface recognition ONNX; ``None`` for ``"none"``.

    A missing file raises ``ModelNotAvailableError`` at once, saying where the file goes.
    """
    if path.strip().lower() == "none":
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelNotAvailableError(
            f"identity model {file} does not exist. The identity loss needs an insightface recognition ONNX "
            "(default: antelopev2's glintr100.onnx; insightface's own download link for antelopev2 is dead, so "
            "unzip a copy of the pack into ~/.insightface/models/antelopev2/). Or set identity_model to another "
            "recognition ONNX, or train without the identity loss (IDE-Net: identity_weighting: none; IPNet: "
            "weights.identity: 0). insightface's weights are for non-commercial research only.")
    from instantportrait.training.arcface import DifferentiableArcFace

    return DifferentiableArcFace.from_onnx(file, device=device, dtype=dtype)


def save_unet(unet: torch.nn.Module, folder: Path) -> None:
    unet.save_pretrained(folder, safe_serialization=True)


def load_unet_weights(unet: torch.nn.Module, folder: Path) -> None:
    """Load a diffusers UNet folder's weights into ``unet`` in place (diffusers training examples' pattern)."""
    from diffusers import UNet2DConditionModel

    loaded = UNet2DConditionModel.from_pretrained(folder)
    unet.load_state_dict(loaded.state_dict())
    del loaded


def make_ema(unet: torch.nn.Module, cfg: TrainConfig) -> Any:
    """diffusers ``EMAModel`` over ``unet``'s parameters, or ``None`` when ``cfg.use_ema`` is off."""
    if not cfg.use_ema:
        return None
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import EMAModel

    return EMAModel(unet.parameters(), decay=cfg.ema_decay, model_cls=UNet2DConditionModel, model_config=unet.config)


def save_ema(ema: Any, unet: torch.nn.Module, folder: Path) -> None:
    """The EMA weights as a UNet state dict (``unet_ema.safetensors``, loadable into the UNet) plus its counters
    (``unet_ema.json``)."""
    from safetensors.torch import save_file

    names = [n for n, _ in unet.named_parameters()]
    if len(names) != len(ema.shadow_params):
        raise ValueError(f"the EMA tracks {len(ema.shadow_params)} tensors but the UNet has {len(names)} parameters")
    folder.mkdir(parents=True, exist_ok=True)
    save_file({n: p.detach().contiguous() for n, p in zip(names, ema.shadow_params)}, str(folder / EMA_WEIGHTS))
    state = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
    (folder / EMA_STATE).write_text(json.dumps(state))


def load_ema(ema: Any, unet: torch.nn.Module, folder: Path, device: torch.device) -> None:
    """Restore what ``save_ema`` wrote (exactly: float32 safetensors and the step counter)."""
    from safetensors.torch import load_file

    weights = load_file(str(folder / EMA_WEIGHTS))  # on the CPU ("cpu:0", a MULTI_CPU device, is not valid here)
    names = [n for n, _ in unet.named_parameters()]
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValueError(f"{folder / EMA_WEIGHTS} does not match the UNet (missing {missing[:3]}...)")
    state = json.loads((folder / EMA_STATE).read_text())
    ema.load_state_dict({**state, "shadow_params": [weights[n] for n in names]})
    ema.to(device)


# ---------------------------------------------------------------------------------------------------- accelerate
def make_accelerator(cfg: TrainConfig, *, find_unused_parameters: bool = False) -> Any:
    """An ``Accelerator`` with the config's mixed precision; gradient accumulation is done by the trainers."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration, set_seed

    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, kwargs_handlers=handlers,
                              project_config=ProjectConfiguration(project_dir=cfg.output_dir))
    set_seed(cfg.seed)
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def step_generator(seed: int, stream: str, step: int, micro: int, rank: int,
                   device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one micro-step's random draws, seeded from its coordinates (resume-proof)."""
    digest = hashlib.sha256(f"{seed}/{stream}/{step}/{micro}/{rank}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def clip_gradients(accelerator: Any, optimizer: Any, parameters: list[torch.nn.Parameter],
                   max_norm: float) -> float | None:
    """Clip the gradients of ``parameters`` (unscaling only ``optimizer`` under fp16, so two optimizers can share
    accelerate's scaler); returns the pre-clip norm, ``None`` when clipping is off."""
    if max_norm <= 0:
        return None
    from accelerate.utils import DistributedType

    params = [p for p in parameters if p.grad is not None]
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        norm = accelerator.clip_grad_norm_(params, max_norm)
    else:
        accelerator.unscale_gradients(optimizer=optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return None if norm is None else float(norm)


def optimizer_stepped(optimizer: Any) -> bool:
    """False when accelerate's fp16 scaler skipped the last ``optimizer.step()`` (inf/NaN gradients)."""
    return not getattr(optimizer, "step_was_skipped", False)


def make_optimizer(parameters: list[torch.nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)


def make_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, num_steps: int) -> Any:
    """diffusers' ``get_scheduler`` over ``num_steps`` optimiser steps of ``optimizer`` (never scaled by the number
    of processes: we step it ourselves, once per optimiser step)."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(cfg.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                         num_training_steps=num_steps)


# ---------------------------------------------------------------------------------------------------- data
class StepBatchSampler:
    """Endless batch sampler: micro-batch ``k`` of process ``rank`` is stream positions ``(k W + rank) B ... + B``.

    The stream concatenates permutations of the dataset, epoch ``e`` shuffled by ``(seed, e)``. Each item is
    ``(row, position)``: the dataset uses ``position`` as its augmentation key. ``start`` is the first micro-batch.
    """

    def __init__(self, num_rows: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0, shuffle: bool = True):
        if num_rows <= 0 or batch_size <= 0:
            raise ValueError(f"need rows and a batch size > 0, got {num_rows} rows, batch {batch_size}")
        self.n, self.batch_size, self.seed = num_rows, batch_size, seed
        self.rank, self.world_size, self.start, self.shuffle = rank, world_size, start, shuffle
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            if self.shuffle:
                g = step_generator(self.seed, "data-order", epoch, 0, 0)
                self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
            else:
                self._perms[epoch] = list(range(self.n))
        return self._perms[epoch]

    def batch(self, k: int) -> list[tuple[int, int]]:
        first = (k * self.world_size + self.rank) * self.batch_size
        out = []
        for pos in range(first, first + self.batch_size):
            epoch, i = divmod(pos, self.n)
            out.append((self._perm(epoch)[i], pos))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        k = self.start
        while True:
            yield self.batch(k)
            k += 1


def make_dataloader(dataset: torch.utils.data.Dataset, cfg: TrainConfig, accelerator: Any,
                    start_micro_step: int) -> torch.utils.data.DataLoader:
    """An endless DataLoader over ``dataset`` for this process, starting at ``start_micro_step``."""
    sampler = StepBatchSampler(len(dataset), cfg.train_batch_size, seed=cfg.seed, rank=accelerator.process_index,
                               world_size=accelerator.num_processes, start=start_micro_step)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.dataloader_num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),  # worker seeds never touch the global RNG
        pin_memory=accelerator.device.type == "cuda")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def encode_prompts(tokenizer: Any, text_encoder: torch.nn.Module, prompts: list[str],
                   device: torch.device) -> torch.Tensor:
    """CLIP last hidden states (B, L, D) of ``prompts``, without gradient (the text encoder is frozen)."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids  # (B, L)
    with torch.no_grad():
        return text_encoder(ids.to(device))[0]  # (B, L, D)


# ---------------------------------------------------------------------------------------------------- logs
def mean_logs(records: list[dict[str, float]]) -> dict[str, float]:
    """Per-key means over micro-batch log dicts (a key missing from some records is averaged where present)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for rec in records:
        for k, v in rec.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


class JsonlLogger:
    """Append-only JSONL log (main process only); values are made JSON-safe (tensors -> floats)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (torch.Tensor, np.floating)) else v) for k, v in record.items()}
        clean.setdefault("time", round(time.time(), 3))
        with self.path.open("a") as fh:
            fh.write(json.dumps(clean, default=str) + "\n")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``logs.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, folder)]`` of ``output_dir/checkpoint-<step>`` folders holding a training state, oldest first."""
    root = Path(output_dir)
    found = []
    if root.is_dir():
        for p in root.iterdir():
            suffix = p.name[len(CHECKPOINT_PREFIX):]
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() and (p / STATE_FILE).is_file():
                found.append((int(suffix), p))
    return sorted(found)


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``None``, ``"latest"`` (newest in ``output_dir``; None if there is none) or a
    folder (which must be a checkpoint)."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"resume: {path} is not a checkpoint folder (no {STATE_FILE}); use 'latest' or a "
                                f"{CHECKPOINT_PREFIX}<step> folder")
    return path


def prune_checkpoints(output_dir: str | Path, limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints so that one more save keeps at most ``limit``; returns what was deleted."""
    if limit is None:
        return []
    found = list_checkpoints(output_dir)
    doomed = [p for _, p in found[: max(0, len(found) - limit + 1)]]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def save_checkpoint(accelerator: Any, cfg: TrainConfig, step: int, state: dict[str, Any]) -> Path:
    """``output_dir/checkpoint-<step>``: ``accelerator.save_state`` (the trainer's hooks write the weights) plus
    ``training_state.json`` (``state`` + ``global_step``) and the config."""
    folder = Path(cfg.output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        prune_checkpoints(cfg.output_dir, cfg.checkpoints_total_limit)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / STATE_FILE).write_text(json.dumps({"global_step": step, **state}, indent=1))
        save_config(cfg, folder / CONFIG_FILE)
    accelerator.wait_for_everyone()
    return folder


def load_checkpoint(accelerator: Any, folder: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Restore a checkpoint (the trainer's load hook restores the weights); returns its ``training_state.json``.

    Differences between the saved config and ``cfg`` outside ``RESUME_MUTABLE`` are logged as warnings.
    """
    accelerator.load_state(str(folder))
    state = json.loads((folder / STATE_FILE).read_text())
    if (folder / CONFIG_FILE).is_file():
        saved = config_to_dict(load_config_file(folder / CONFIG_FILE))
        now = config_to_dict(cfg)
        changed = sorted(k for k in now if k not in RESUME_MUTABLE and saved.get(k) != now[k])
        if changed:
            logger.warning("resuming %s with a changed config: %s", folder,
                           ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed))
    return state


# ---------------------------------------------------------------------------------------------------- validation
def make_validation_scorers(cfg: TrainConfig, device: torch.device) -> tuple[Any, Any]:
    """``(FaceEncoder | None, ClipScorer | None)`` from ``cfg.face_pack`` / ``cfg.clip``, loaded (missing models raise
    ``ModelNotAvailableError`` now, not at the first validation); :func:`run_validation` scores with them through
    the one :class:`~instantportrait.eval.scorer.Scorer`."""
    face = clip = None
    if cfg.face_pack:
        from instantportrait.face.encoder import FaceEncoder

        face = FaceEncoder(cfg.face_pack, device=str(device)).load()
    if cfg.clip:
        clip = make_clip_scorer(cfg.clip, device)
    return face, clip


def make_clip_scorer(name: str, device: torch.device) -> Any:
    """A loaded ``ClipScorer`` for a weights file or a variant name (``clip_scorer_from``)."""
    from instantportrait.eval.clip_score import clip_scorer_from

    return clip_scorer_from(name, device).load()


def tensor_to_pil(pixels: torch.Tensor) -> PIL.Image.Image:
    """(3, H, W) in [-1, 1] -> RGB PIL."""
    arr = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return PIL.Image.fromarray(arr)


def run_validation(edit_fn: Callable[[list[PIL.Image.Image], list[str]], list[PIL.Image.Image]],
                   dataset: Any, cfg: TrainConfig, step: int, scorers: tuple[Any, Any]) -> dict[str, Any]:
    """Edit the first ``num_validation_images`` rows, save ``source | output | target`` strips under
    ``output_dir/validation/step-<step>/`` and return metrics: mean ID-sim (faces found only) and CLIP-T against
    the target caption (or the instruction), each with its count."""
    n = min(cfg.num_validation_images, len(dataset))
    items = [dataset[i] for i in range(n)]
    sources = [tensor_to_pil(it["source"]) for it in items]
    targets = [tensor_to_pil(it["target"]) for it in items]
    outputs = edit_fn(sources, [it["instruction"] for it in items])
    folder = Path(cfg.output_dir) / "validation" / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    for it, src, out, tgt in zip(items, sources, outputs, targets):
        strip = PIL.Image.new("RGB", (src.width * 3, src.height))
        for j, im in enumerate((src, out.resize(src.size), tgt)):
            strip.paste(im, (j * src.width, 0))
        strip.save(folder / f"{it['id']}.png")
    metrics: dict[str, Any] = {"event": "validation", "step": step, "num_images": n, "folder": str(folder)}
    from instantportrait.eval.scorer import Scorer

    scorer = Scorer(*scorers)  # (face, clip)
    if scorer.face is not None:
        sims = [v for v in scorer.identities(sources, outputs) if v is not None]  # pairs with a face in both
        metrics["id_sim"] = float(np.mean(sims)) if sims else None
        metrics["id_sim_count"] = len(sims)
    if scorer.clip is not None:
        captions = [it["target_caption"] or it["instruction"] for it in items]
        scores = scorer.clip_t_all(outputs, captions)  # (n,)
        metrics["clip_t"] = float(scores.mean())
        metrics["clip_t_count"] = len(captions)
    return metrics


# ---------------------------------------------------------------------------------------------------- publishing
def publish_if_asked(cfg: Any, out: Path, metrics_file: str | None = None) -> str | None:
    """Upload the final model to ``cfg.push_to_hub`` (if set) with a model card built from its saved config."""
    if not getattr(cfg, "push_to_hub", None):
        return None
    from instantportrait.hub import publish  # the module, so that tests can patch publish.publish_checkpoint

    return publish.publish_checkpoint(out, cfg.push_to_hub, revision=cfg.hub_revision, metrics_file=metrics_file)

