"""The one interface the app and the benchmark call: ``Editor``.

An editor is cheap to construct (nothing is loaded); ``load()`` (or the first ``edit``) loads weights onto the
device it was given, ``unload()`` frees them. Everything that varies per request (images, instructions, seed, steps,
guidance, a progress callback) is an argument of ``edit``; nothing per request is stored on the editor.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import PIL.Image
import torch

ProgressFn = Callable[[int, int], None]  # (step done, total steps)
logger = logging.getLogger(__name__)

# Where an editor keeps its weights between uses (diffusers' names): "none" all on the device; "model" in CPU memory,
# each network moved to the device while it runs (enable_model_cpu_offload); "sequential" in CPU memory, each layer
# moved while it runs (enable_sequential_cpu_offload: the least device memory, the slowest).
OFFLOAD_MODES = ("none", "model", "sequential")


def check_offload(mode: str) -> str:
    """``mode`` if it is one of :data:`OFFLOAD_MODES`, else one clear ``ValueError``."""
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {mode!r}")
    return mode


def offload_supported(device: torch.device) -> bool:
    """Offloading moves weights between CPU memory and an accelerator; on the CPU there is nowhere to move them."""
    return device.type != "cpu"


def offload_modules(chain: Sequence[torch.nn.Module], device: torch.device, mode: str,
                    loop: Sequence[torch.nn.Module] = ()) -> list[Any]:
    """What diffusers' ``enable_model_cpu_offload`` / ``enable_sequential_cpu_offload`` do to a pipeline, for editors
    whose networks are not one (InstantID, IP-Control): accelerate hooks that move each network (``model``) or each
    layer (``sequential``) to ``device`` for its forward. ``model``: ``chain`` is hooked in call order (a network goes
    back to the CPU when the next one runs); ``loop`` networks, called in turn with one of the chain inside the
    sampling loop (a ControlNet), are hooked on their own and stay on the device until the edit ends, as diffusers
    does. Returns the ``model`` hooks, whose ``offload()`` the editor calls after an edit (diffusers'
    ``maybe_free_model_hooks``) so that nothing stays on the device between edits."""
    from accelerate import cpu_offload, cpu_offload_with_hook

    if mode == "sequential":
        for module in [*chain, *loop]:
            cpu_offload(module, execution_device=device, offload_buffers=len(module._parameters) > 0)
        return []
    hooks: list[Any] = []
    hook = None
    for module in chain:
        _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)
        hooks.append(hook)
    return hooks + [cpu_offload_with_hook(module, device)[1] for module in loop]


@dataclass(frozen=True)
class EditSettings:
    """Per-request knobs; ``None`` means the editor's default."""

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def check_edit_inputs(images: Sequence[PIL.Image.Image], instructions: Sequence[str]) -> None:
    """One clear ``ValueError`` per bad input (shared by every editor)."""
    if isinstance(images, PIL.Image.Image) or isinstance(instructions, str):
        raise ValueError("edit() takes a list of images and a list of instructions (wrap single values in a list).")
    if len(images) == 0:
        raise ValueError("no image given: pass at least one portrait.")
    if len(images) != len(instructions):
        raise ValueError(f"{len(images)} images but {len(instructions)} instructions: pass one instruction per image.")
    for i, img in enumerate(images):
        if not isinstance(img, PIL.Image.Image):
            raise ValueError(f"image {i} is a {type(img).__name__}, expected a PIL image.")
    for i, text in enumerate(instructions):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"instruction {i} is empty: describe the edit, e.g. 'wearing hipster glasses'.")


def working_size(size: tuple[int, int], resolution: int | None, multiple: int = 8) -> tuple[int, int]:
    """Scale (w, h) so the long side is ``resolution`` (None keeps it), then round down to ``multiple``."""
    w, h = size
    if resolution:
        scale = resolution / max(w, h)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
    return max(multiple, w // multiple * multiple), max(multiple, h // multiple * multiple)


class Editor(ABC):
    """An instruction-based portrait editor.

    Subclasses set ``name``/``label`` and implement ``_load``, ``_edit`` and ``nfe``.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    description: ClassVar[str] = ""
    model_key: ClassVar[str | None] = None  # key in config.MODELS

    def __init__(self, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 model: str | None = None, resolution: int | None = 512, offload: str = "none"):
        self.device = torch.device(device)
        self.dtype = dtype
        self.model_override = model
        self.resolution = resolution
        self.offload = check_offload(offload)  # as asked; ``offload_mode`` is what applies on this device
        self._lock = threading.Lock()  # guards load/unload; edits on one editor run one at a time
        self._loaded: Any = None
        self._offload_hooks: list[Any] = []  # module-level ``model`` offload hooks (see offload_modules)

    # ----------------------------------------------------------------- lifecycle
    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    @property
    def loaded(self) -> Any:
        """What ``_load`` returned (a pipeline or a dataclass of networks), or ``None`` before ``load()``: the one
        public handle on it, so that the app and the benchmark never reach into ``_loaded``."""
        return self._loaded

    @property
    def tokenizer(self) -> Any:
        """The loaded model's text tokenizer (``None`` when not loaded or it has none), e.g. for the app to count an
        instruction's tokens with the tokenizer that will read it."""
        return getattr(self._loaded, "tokenizer", None)

    @property
    def offload_mode(self) -> str:
        """The offload that applies: ``offload`` on an accelerator, ``"none"`` on the CPU (where it is a no-op)."""
        return self.offload if offload_supported(self.device) else "none"

    @property
    def placement_device(self) -> torch.device:
        """Where ``_load`` / ``_build_random`` put the weights: the CPU under offload (the hooks move them to
        ``device`` as they run; an editor never also moves an offloaded model to the device), else ``device``."""
        return torch.device("cpu") if self.offload_mode != "none" else self.device

    def load(self) -> None:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._offloaded(self._load())

    def unload(self) -> None:
        with self._lock:
            self._loaded = None
            self._offload_hooks = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _offloaded(self, loaded: Any) -> Any:
        """``loaded`` with this editor's offload applied: a diffusers pipeline's own ``enable_model_cpu_offload`` /
        ``enable_sequential_cpu_offload``, or :func:`offload_modules` on the networks of :meth:`_modules`."""
        mode = self.offload_mode
        self._offload_hooks = []
        if mode == "none":
            if self.offload != "none":
                logger.warning("%s: offload=%s is a no-op on %s (the weights are already in CPU memory)",
                               self.name, self.offload, self.device)
            return loaded
        if hasattr(loaded, "enable_model_cpu_offload"):  # a DiffusionPipeline: it frees its hooks after each call
            getattr(loaded, f"enable_{mode}_cpu_offload")(device=self.device)
        else:
            chain, loop = self._offload_order(loaded)
            self._offload_hooks = offload_modules(chain, self.device, mode, loop)
        return loaded

    def _offload_order(self, loaded: Any) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
        """``(networks in call order, networks called in turn with them in a loop)`` for :func:`offload_modules`
        (editors that are not a diffusers pipeline). Default: :meth:`_modules` in its order, no loop network."""
        return self._modules(loaded), []

    def load_random_weights(self) -> None:
        """Load the method's *real* architecture with random weights (no download), for latency measurements only.

        Images it produces are noise; it exists so latency tables can be made on machines without the weights.
        """
        with self._lock:
            self._loaded = self._offloaded(self._build_random())

    def _build_random(self) -> Any:
        raise NotImplementedError(f"{self.name} has no random-weights architecture builder")

    def check_available(self) -> None:
        """Raise ``ModelNotAvailableError`` fast if ``load()`` could not succeed here (default: assume it can)."""
        return None

    @abstractmethod
    def _load(self) -> Any:
        """Load the model(s) onto ``self.device``/``self.dtype`` and return the loaded object."""

    # ----------------------------------------------------------------- facts
    @abstractmethod
    def nfe(self, settings: EditSettings | None = None) -> int:
        """Network (UNet/transformer) evaluations per edit; a CFG batch of 3 counts as 3."""

    def num_parameters(self) -> int:
        """Parameters of every network the edit uses (loads the model)."""
        self.load()
        modules = self._modules(self._loaded)
        return sum(p.numel() for m in modules for p in m.parameters())

    def _modules(self, loaded: Any) -> list[torch.nn.Module]:
        return [m for m in getattr(loaded, "components", {}).values() if isinstance(m, torch.nn.Module)]

    def weight_bytes(self) -> int:
        """Bytes of the parameters and buffers of every network the loaded editor runs (0 when not loaded).

        A tensor shared by two modules (e.g. tied embeddings, or one text encoder in two pipelines) is counted once:
        this is the memory the model holds, the one number the app's memory budget and the benchmark's
        ``weights_mb`` both report."""
        loaded = self._loaded
        if loaded is None:
            return 0
        seen: set[int] = set()
        total = 0
        for module in self._modules(loaded):
            for t in [*module.parameters(), *module.buffers()]:
                if id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
        return total

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""), "resolution": self.resolution,
                "offload": self.offload_mode, "nfe": self.nfe()}

    # ----------------------------------------------------------------- editing
    def edit(self, images: Sequence[PIL.Image.Image], instructions: Sequence[str], *,
             seed: int | Sequence[int] = 0, settings: EditSettings | None = None,
             progress: ProgressFn | None = None) -> list[PIL.Image.Image]:
        """Edit each image with its instruction; returns RGB images of the inputs' sizes.

        The same ``seed`` gives the same image whatever else is in the batch (each sample has its own generator).
        ``seed`` is one int for every image or a sequence of one int per image (e.g. per-row seeds of a dataset).
        """
        check_edit_inputs(images, instructions)
        if not isinstance(seed, Sequence):
            seed = int(seed)  # numpy / torch scalars too
        else:
            seed = [int(s) for s in seed]
            if len(seed) != len(images):
                raise ValueError(f"{len(seed)} seeds for {len(images)} images: pass one int or one seed per image.")
        self.load()
        settings = settings or EditSettings()
        rgb = [img.convert("RGB") for img in images]
        out: list[PIL.Image.Image | None] = [None] * len(rgb)
        # Batch images that share a working size; a batch runs in one network call.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(rgb):
            groups.setdefault(working_size(img.size, self.resolution), []).append(i)
        for size, idx in groups.items():
            batch = [rgb[i].resize(size, PIL.Image.Resampling.LANCZOS) if rgb[i].size != size else rgb[i]
                     for i in idx]
            group_seed = seed if isinstance(seed, int) else [seed[i] for i in idx]
            edited = self._edit(self._loaded, batch, [instructions[i] for i in idx], group_seed, settings, progress)
            for i, img in zip(idx, edited):
                out[i] = img if img.size == rgb[i].size else img.resize(rgb[i].size, PIL.Image.Resampling.LANCZOS)
        for hook in self._offload_hooks:  # the last network run goes back to the CPU (maybe_free_model_hooks)
            hook.offload()
        return out  # type: ignore[return-value]

    @abstractmethod
    def _edit(self, loaded: Any, images: list[PIL.Image.Image], instructions: list[str], seed: int | list[int],
              settings: EditSettings, progress: ProgressFn | None) -> list[PIL.Image.Image]:
        """Edit a batch of same-size RGB images at the working size (``seed``: pass it to :meth:`generators`)."""

    def generators(self, n: int, seed: int | Sequence[int]) -> list[torch.Generator]:
        """One CPU generator per sample (device-independent, batch-independent), all seeded with ``seed``, or
        sample ``i`` with ``seed[i]`` when a sequence of ``n`` seeds is given."""
        seeds = [int(s) for s in seed] if isinstance(seed, Sequence) else [int(seed)] * n
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} samples")
        return [torch.Generator("cpu").manual_seed(s) for s in seeds]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device}, dtype={self.dtype})"
