"""The one training scaffold IDE-Net and IPNet share (the diffusers training examples' bookkeeping, DMD2's split).

    trainer = Trainer(cfg)                                  # accelerator, seeds, output folder, log
    model, unet, dataset = ...                              # the trainer script builds what differs ...
    turns = [Turn("idenet", losses, total, trainable(unet), cfg.learning_rate, cfg.max_train_steps, ema=True)]
    return trainer.run(TrainerParts("idenet", model, unet, dataset, turns, edit, save))  # ... and hands it over

A trainer script supplies only what differs between the models: the module accelerate prepares, the UNet inside it
(the one that has an EMA, is checkpointed as ``unet/`` and becomes the final model), the *turns* (DMD2: one loss
function returning ``(loss_dict, log_dict)``, its weighting and its optimiser each; IDE-Net has one turn, IPNet a
generator and a discriminator turn), how validation edits, and how the final folder is written. ``Trainer.run`` does
the rest, once for both: optimisers and LR schedulers, EMA, ``accelerator.prepare``, the save/load hooks, ``resume:
latest``, the config saved next to the logs, the step loop with gradient accumulation, checkpoint rotation, the
EMA-swapped validation, and the final save (EMA weights) plus the optional Hub upload. The bookkeeping rules (seeds,
data order, what a step is) are ``train/common.py``'s docstring.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from train.common import (
    LOG_FILE,
    UNET_DIR,
    JsonlLogger,
    clip_gradients,
    load_checkpoint,
    load_ema,
    load_unet_weights,
    make_accelerator,
    make_dataloader,
    make_ema,
    make_lr_scheduler,
    make_optimizer,
    make_validation_scorers,
    mean_logs,
    optimizer_stepped,
    publish_if_asked,
    resolve_resume,
    run_validation,
    save_checkpoint,
    save_ema,
    save_unet,
    step_generator,
    to_device,
)
from train.config import CONFIG_FILE, TrainConfig, save_config

Batch = dict[str, Any]
# (prepared model, micro-batch, generator, global step, micro-batch index) -> (unweighted loss terms, scalar logs)
LossFn = Callable[[nn.Module, Batch, torch.Generator, int, int], tuple[dict[str, torch.Tensor], dict[str, Any]]]
EditFn = Callable[[list[PIL.Image.Image], list[str], torch.Generator], list[PIL.Image.Image]]


def trainable(module: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimiser gets: those that require gradients."""
    return [p for p in module.parameters() if p.requires_grad]


@dataclass
class Turn:
    """One optimiser's part of a training step (DMD2's generator and guidance turns; IDE-Net has a single turn).

    On steps ``1, 1 + every, 1 + 2 every, ...`` the turn runs ``losses`` on every micro-batch of the step (each with
    its own ``step_generator(seed, stream, step, micro, rank)``), backpropagates ``total(loss_dict) /
    accumulation``, then clips, steps its optimiser and its LR scheduler (``num_steps`` long) and, with ``ema``, the
    EMA of the trained UNet. The weighting stays with the trainer, not the loss code (DMD2).
    """

    stream: str  # the step_generator stream: renaming it changes every random draw of the turn
    losses: LossFn
    total: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    params: list[nn.Parameter]
    lr: float
    num_steps: int  # this optimiser's steps over the run: the LR schedule's length
    loss_key: str = "loss"  # the log key of the weighted total
    state_key: str = "lr_scheduler"  # its LR scheduler's key in training_state.json
    grad_norm_key: str | None = "grad_norm"  # the log key of the pre-clip gradient norm (None: not logged)
    ema: bool = False
    every: int = 1
    optimizer: Any = field(default=None, init=False, repr=False)  # set by Trainer.run
    lr_scheduler: Any = field(default=None, init=False, repr=False)

    def due(self, step: int) -> bool:
        return (step - 1) % self.every == 0


@dataclass
class TrainerParts:
    """What a trainer script builds: everything that differs between IDE-Net and IPNet."""

    name: str  # "idenet" | "ipnet": the start record's `trainer`
    model: nn.Module  # what accelerate prepares (DDP-wraps); the turns' losses receive the prepared one
    unet: nn.Module  # the trained UNet inside `model`: EMA, checkpoint `unet/`, validation, the final model
    dataset: Any
    turns: list[Turn]
    edit: EditFn  # validation edits by the current (EMA-swapped) weights, every draw from the generator
    save: Callable[[nn.Module], Path]  # the final model folder (with its card) from the final UNet
    modules: dict[str, nn.Module] = field(default_factory=dict)  # other trained modules: checkpoint file -> module
    info: dict[str, Any] = field(default_factory=dict)  # extra keys of the log's start record


class Trainer:
    """Set-up at construction (so the script builds its models on ``trainer.device`` after the seeds are set);
    ``run(parts)`` trains and returns the output folder."""

    def __init__(self, cfg: TrainConfig, *, find_unused_parameters: bool = False):
        self.cfg = cfg
        self.accelerator = make_accelerator(cfg, find_unused_parameters=find_unused_parameters)
        self.device = self.accelerator.device
        self.out = Path(cfg.output_dir)
        self.log = JsonlLogger(self.out / LOG_FILE, enabled=self.accelerator.is_main_process)
        self.parts: TrainerParts | None = None
        self.model: nn.Module | None = None  # the prepared model
        self.ema: Any = None

    def prepare(self, parts: TrainerParts) -> None:
        """Optimisers and LR schedulers of the turns, the EMA, ``accelerator.prepare`` and the checkpoint hooks: what
        ``run`` sets up before its loop (``train.step_cost`` times :meth:`train_step` after it, on the same set-up)."""
        cfg, acc = self.cfg, self.accelerator
        self.parts = parts
        for turn in parts.turns:
            turn.optimizer = make_optimizer(turn.params, turn.lr, cfg)
            turn.lr_scheduler = make_lr_scheduler(turn.optimizer, cfg, turn.num_steps)
        self.ema = make_ema(parts.unet, cfg)
        parts.model.train()
        prepared = acc.prepare(parts.model, *(t.optimizer for t in parts.turns))
        self.model = prepared[0]
        for turn, optimizer in zip(parts.turns, prepared[1:]):
            turn.optimizer = optimizer
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)

    def run(self, parts: TrainerParts) -> Path:
        cfg, acc = self.cfg, self.accelerator
        self.prepare(parts)
        start_step = self._resume()
        if acc.is_main_process:
            save_config(cfg, self.out / CONFIG_FILE)
        self.log.log({"event": "start", "trainer": parts.name, "global_step": start_step, "rows": len(parts.dataset),
                      "num_processes": acc.num_processes,
                      "effective_batch": cfg.train_batch_size * cfg.gradient_accumulation_steps * acc.num_processes,
                      **parts.info})
        scorers = make_validation_scorers(cfg, self.device) if cfg.validation_steps and acc.is_main_process \
            else (None, None)
        step = self._loop(start_step, scorers)
        self._finish(step)
        return self.out

    # ------------------------------------------------------------------ checkpoints
    def _save_hook(self, models: list, weights: list, folder: str) -> None:
        """accelerate's save pre-hook: the UNet as a diffusers folder, other modules and the EMA as safetensors."""
        parts = self.parts
        if self.accelerator.is_main_process:
            save_unet(parts.unet, Path(folder) / UNET_DIR)
            for file, module in parts.modules.items():
                save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(Path(folder) / file))
            if self.ema is not None:
                save_ema(self.ema, parts.unet, Path(folder))
        weights.clear()  # the hook wrote the weights; accelerate must not write them again

    def _load_hook(self, models: list, folder: str) -> None:
        parts = self.parts
        load_unet_weights(parts.unet, Path(folder) / UNET_DIR)
        for file, module in parts.modules.items():
            module.load_state_dict(load_file(str(Path(folder) / file)))
        models.clear()  # the hook restored the weights; accelerate must not load them again
        if self.ema is not None:
            load_ema(self.ema, parts.unet, Path(folder), self.device)

    def _resume(self) -> int:
        """The global step to start after: a checkpoint's (weights, optimisers, RNG, LR schedulers restored) or 0."""
        cfg = self.cfg
        resume_from = resolve_resume(cfg.resume, self.out)
        if resume_from is None:
            if cfg.resume == "latest":
                self.log.log({"event": "resume", "checkpoint": None,
                              "note": f"no checkpoint in {self.out}: starting fresh"})
            return 0
        state = load_checkpoint(self.accelerator, resume_from, cfg)
        start_step = int(state["global_step"])
        for turn in self.parts.turns:
            turn.lr_scheduler.load_state_dict(state[turn.state_key])
        self.log.log({"event": "resume", "checkpoint": str(resume_from), "global_step": start_step})
        return start_step

    def _checkpoint_state(self) -> dict[str, Any]:
        return {turn.state_key: turn.lr_scheduler.state_dict() for turn in self.parts.turns}

    # ------------------------------------------------------------------ one step
    def train_step(self, micro: list[dict[str, Any]], step: int) -> dict[str, float]:
        """One optimiser step of every due turn over ``micro`` (the step's micro-batches, on the device)."""
        self.model.train()
        logs: dict[str, float] = {}
        for turn in self.parts.turns:
            if not turn.due(step):
                continue
            turn.optimizer.zero_grad(set_to_none=True)  # drop what an earlier turn sent into this one's parameters
            logs.update(self._accumulate(turn, micro, step))
            norm = self._update(turn)
            if norm is not None and turn.grad_norm_key:
                logs[turn.grad_norm_key] = norm
        logs["lr"] = self.parts.turns[0].lr_scheduler.get_last_lr()[0]
        return logs

    def _accumulate(self, turn: Turn, micro: list[dict[str, Any]], step: int) -> dict[str, float]:
        """Backpropagate the turn's weighted loss over the micro-batches (gradients synchronised on the last)."""
        acc, n = self.accelerator, len(micro)
        records: list[dict[str, float]] = []
        for m, batch in enumerate(micro):
            gen = step_generator(self.cfg.seed, turn.stream, step, m, acc.process_index, self.device)
            with contextlib.nullcontext() if m == n - 1 else acc.no_sync(self.model):
                with acc.autocast():
                    losses, step_logs = turn.losses(self.model, batch, gen, step, m)
                    loss = turn.total(losses)
                acc.backward(loss / n)
            records.append({turn.loss_key: float(loss.detach()), **step_logs})
        return mean_logs(records)

    def _update(self, turn: Turn) -> float | None:
        """Clip, step the optimiser, its LR scheduler (not when fp16 skipped the step) and the EMA; the norm."""
        norm = clip_gradients(self.accelerator, turn.optimizer, turn.params, self.cfg.max_grad_norm)
        turn.optimizer.step()
        if optimizer_stepped(turn.optimizer):
            turn.lr_scheduler.step()
        turn.optimizer.zero_grad(set_to_none=True)
        if turn.ema and self.ema is not None:
            self.ema.step(self.parts.unet.parameters())
        return norm

    # ------------------------------------------------------------------ validation
    def _validate(self, step: int, scorers: tuple[Any, Any]) -> dict[str, Any]:
        """Validation edits by the EMA weights (swapped in, then back out: training continues unchanged)."""
        if not self.accelerator.is_main_process:
            return {}
        unet, ema, parts = self.parts.unet, self.ema, self.parts
        if ema is not None:
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
        unet.eval()

        def edit(images: list[PIL.Image.Image], prompts: list[str]) -> list[PIL.Image.Image]:
            with self.accelerator.autocast(), torch.no_grad():
                return parts.edit(images, prompts, torch.Generator(device=self.device).manual_seed(self.cfg.seed))

        try:
            return run_validation(edit, parts.dataset, self.cfg, step, scorers)
        finally:
            if ema is not None:
                ema.restore(unet.parameters())
            unet.train()

    # ------------------------------------------------------------------ the loop
    def _loop(self, start_step: int, scorers: tuple[Any, Any]) -> int:
        """Run optimiser steps ``start_step + 1 ... cfg.max_train_steps``; returns the final global step.

        Each step reads ``gradient_accumulation_steps`` micro-batches; checkpoints every ``checkpointing_steps`` and
        at the end (``checkpoints_total_limit`` prunes the oldest first); validation every ``validation_steps`` and
        at the end.
        """
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.accelerator
        accum = cfg.gradient_accumulation_steps
        batches = iter(make_dataloader(self.parts.dataset, cfg, acc, start_micro_step=start_step * accum))
        progress = tqdm(total=cfg.max_train_steps, initial=start_step, desc=f"train {cfg.trainer}",
                        disable=not acc.is_local_main_process)
        step = start_step
        for step in range(start_step + 1, cfg.max_train_steps + 1):
            micro = [to_device(next(batches), acc.device) for _ in range(accum)]
            logs = self.train_step(micro, step)
            progress.update(1)
            progress.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k.startswith("loss")}, refresh=False)
            if step % cfg.log_every == 0 or step == start_step + 1 or step == cfg.max_train_steps:
                self.log.log({"step": step, **logs})
            if step % cfg.checkpointing_steps == 0 or step == cfg.max_train_steps:
                folder = save_checkpoint(acc, cfg, step, self._checkpoint_state())
                self.log.log({"event": "checkpoint", "step": step, "path": str(folder)})
            if cfg.validation_steps and (step % cfg.validation_steps == 0 or step == cfg.max_train_steps):
                self.log.log(self._validate(step, scorers))
        progress.close()
        return step

    def _finish(self, step: int) -> None:
        """On the main process: the EMA weights into the UNet, the final folder (model + card), the Hub upload when
        ``push_to_hub`` is set, the ``done`` record; then end training."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            if self.ema is not None:
                self.ema.copy_to(self.parts.unet.parameters())
            out = self.parts.save(self.parts.unet)
            url = publish_if_asked(self.cfg, out)
            if url:
                self.log.log({"event": "published", "repo": self.cfg.push_to_hub, "url": url})
            self.log.log({"event": "done", "global_step": step, "model": str(out)})
        acc.wait_for_everyone()
        acc.end_training()
