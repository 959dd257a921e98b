"""The optimiser-step pattern the small trainers share (demo scorers, tiny decoder), written once.

``backward_step`` is one update (clear grads, backward, step, then the scheduler); ``one_cycle_loop`` is the whole
loop of the demo scorers: a one-cycle schedule over a fixed number of steps, a loss per step, and a log line every
``log_every`` steps and at the last one. The log line is built *after* the update (some report a parameter, such
as CLIP's logit scale, as it stands after the step), so a trainer hands over a function rather than a string.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

# What a trainer's step returns: the loss to minimise and a function giving the step's log line (without the time).
StepResult = tuple[torch.Tensor, Callable[[], str]]


def backward_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, scheduler: Any = None) -> None:
    """One update from ``loss``: grads cleared (set to None), backward, optimiser step, then ``scheduler`` if any."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def one_cycle_loop(optimizer: torch.optim.Optimizer, max_lr: float, steps: int, pct_start: float,
                   step_fn: Callable[[int], StepResult], log: Callable[[str], Any], *, log_every: int = 50) -> None:
    """Run ``steps`` updates under ``OneCycleLR(optimizer, max_lr, total_steps=steps, pct_start=pct_start)``.

    ``step_fn(step)`` computes the loss of step ``step`` (drawing its own randomness from the step number, so the
    loop adds none) and a function for its log line; every ``log_every`` steps and at the last one ``log`` gets that
    line followed by the seconds since the loop started.
    """
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, total_steps=steps, pct_start=pct_start)
    t0 = time.time()
    for step in range(steps):
        loss, report = step_fn(step)
        backward_step(optimizer, loss, scheduler)
        if step % log_every == 0 or step == steps - 1:
            log(f"{report()}  ({time.time() - t0:.0f} s)")
