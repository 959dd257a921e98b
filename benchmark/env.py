"""Where a benchmark run happens: the process layout (one process, or ``accelerate launch``), device timing and
memory helpers, and the environment recorded in ``run.json`` (device, library versions, git commit).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Dist:
    """Process layout: one process by default; ``accelerate launch`` (``WORLD_SIZE`` > 1) uses PartialState."""

    rank: int = 0
    world: int = 1
    state: Any = None

    @classmethod
    def from_env(cls, device: str = "cuda") -> Dist:
        """One process unless launched by ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1).

        ``device`` "cpu" asks accelerate for a gloo (CPU) process group, anything else for the GPU one.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            from accelerate import PartialState

            state = PartialState(cpu=torch.device(device).type == "cpu")
            if state.num_processes != world:  # never let two processes believe they are alone (duplicate rows)
                raise RuntimeError(f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} process(es) "
                                   f"({state.distributed_type}); launch with `accelerate launch --multi_gpu "
                                   "--num_processes N -m benchmark ...` (GPUs) or torchrun")
            return cls(state.process_index, state.num_processes, state)
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1 and self.state is not None:
            self.state.wait_for_everyone()

    def device(self, requested: str) -> str:
        """``cuda`` without an index under accelerate -> this process's GPU."""
        if self.state is not None and requested == "cuda":
            return str(self.state.device)
        return requested


# ---------------------------------------------------------------------------------------------------------- helpers
def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {name} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})"


def git_info() -> dict[str, Any]:
    """Commit and whether the work tree differs from it (read-only git calls; null outside a checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment(device: torch.device, dist: Dist) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("torch", "diffusers", "transformers", "accelerate", "insightface", "onnxruntime", "clip-anytorch",
                "numpy", "pillow"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    env = {
        "device": str(device), "device_name": device_name(device),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "python": sys.version.split()[0], "platform": platform.platform(), "versions": versions,
        "git": git_info(), "world_size": dist.world, "torch_threads": torch.get_num_threads(),
    }
    return env
