"""Editors built on diffusers pipelines: IPNet (ours, 1 or 2 steps) and the InstructPix2Pix family."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import PIL.Image

from instantportrait.config import resolve_model
from instantportrait.hub import cached_snapshot, hub_reachable, locate, offline_requested
from instantportrait.methods.base import Editor, EditSettings, ProgressFn
from instantportrait.methods.registry import register


class PipelineEditor(Editor):
    """Loads a diffusers pipeline from ``config.MODELS[model_key]`` (or an override) via ``hub.locate``."""

    def spec(self):
        return resolve_model(self.model_key, self.model_override)

    def model_path(self, download: bool = True) -> Path:
        return locate(self.spec(), download=download)

    def check_available(self) -> None:
        """Present locally or downloadable now; else ``ModelNotAvailableError`` within seconds (no download)."""
        spec = self.spec()
        if Path(spec.repo_id).expanduser().exists() or cached_snapshot(spec) is not None:
            return
        if offline_requested() or not hub_reachable():
            locate(spec)  # not cached and no Hub: raises ModelNotAvailableError with the full message

    def describe(self) -> dict[str, Any]:
        spec = self.spec()
        return {**super().describe(), "model": spec.repo_id, "revision": spec.revision}

    # Architecture of random-weights builds (``load_random_weights``): a key of architectures.ARCHITECTURES, or None
    # for $INSTANTPORTRAIT_RANDOM_ARCH / the real SD1.5-class default.
    random_architecture: str | None = None


@register
class IPNetEditor(PipelineEditor):
    name = "ipnet"
    label = "IPNet (1 step)"
    description = "Our one-step student distilled from IDE-Net."
    model_key = "ipnet"
    steps = 1

    def _load(self) -> Any:
        from instantportrait.pipelines.ipnet import InstantPortraitPipeline

        pipe = InstantPortraitPipeline.from_pretrained(self.model_path(), dtype=self.dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.placement_device)  # the CPU under offload: the hooks move it

    @property
    def pipeline(self) -> Any:
        """The loaded ``InstantPortraitPipeline`` (loads it first), e.g. for ``optimize()`` or ``use_tiny_decoder``."""
        self.load()
        return self._loaded

    def _build_random(self) -> Any:
        from instantportrait.models.architectures import build_random_ipnet, resolve_architecture

        return build_random_ipnet(resolve_architecture(self.random_architecture), device=self.placement_device,
                                  dtype=self.dtype)

    def nfe(self, settings: EditSettings | None = None) -> int:
        return self.steps

    def _edit(self, loaded: Any, images: list[PIL.Image.Image], instructions: list[str], seed: int,
              settings: EditSettings, progress: ProgressFn | None) -> list[PIL.Image.Image]:
        out = loaded(images, instructions, num_inference_steps=self.steps,
                     generator=self.generators(len(images), seed)).images
        if progress:
            progress(self.steps, self.steps)
        return out

    def edit_tensor(self, images: Any, instructions: Sequence[str], *, seed: int | Sequence[int] = 0,
                    non_blocking: bool = False) -> Any:
        """The real-time path: a (B, 3, H, W) tensor in [0, 1] on the editor's device in, the edited (B, 3, H, W)
        tensor in [0, 1] out, at the input's size (no working-size resize, no PIL or numpy round trip, nothing read
        back on the host; ``non_blocking`` as in ``InstantPortraitPipeline.__call__``). The same seeds as ``edit``
        (one CPU generator per sample): on an image already at the working size it gives ``edit``'s result before
        8-bit rounding. ``edit`` (PIL in, PIL out, any size) stays the path for users, the app and the benchmark."""
        import torch

        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError("edit_tensor takes a (B, 3, H, W) tensor in [0, 1]; use edit() for PIL images.")
        if isinstance(instructions, str) or len(instructions) != images.shape[0]:
            raise ValueError(f"edit_tensor takes one instruction per image: {images.shape[0]} images, "
                             f"{1 if isinstance(instructions, str) else len(instructions)} instructions.")
        self.load()
        return self._loaded(images, list(instructions), num_inference_steps=self.steps,
                            generator=self.generators(images.shape[0], seed), output_type="pt",
                            non_blocking=non_blocking).images


@register
class IPNet2StepEditor(IPNetEditor):
    name = "ipnet-2step"
    label = "IPNet (2 steps)"
    description = "IPNet run twice, the first output as the second source (style boost)."
    steps = 2


class InstructPix2PixFamily(PipelineEditor):
    """Multi-step editors with InstructPix2Pix's 3-way (text, image) classifier-free guidance."""

    default_steps = 100
    default_guidance = 7.5
    default_image_guidance = 1.5

    def _load(self) -> Any:
        from diffusers import StableDiffusionInstructPix2PixPipeline

        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            self.model_path(), dtype=self.dtype, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.placement_device)

    def _build_random(self) -> Any:
        from instantportrait.models.architectures import build_random_instruct_pix2pix, resolve_architecture

        return build_random_instruct_pix2pix(resolve_architecture(self.random_architecture),
                                             device=self.placement_device, dtype=self.dtype)

    def steps_for(self, settings: EditSettings | None) -> int:
        return (settings.num_inference_steps if settings and settings.num_inference_steps else self.default_steps)

    def nfe(self, settings: EditSettings | None = None) -> int:
        s = settings or EditSettings()
        text_cfg = (s.guidance_scale if s.guidance_scale is not None else self.default_guidance) > 1.0
        image_cfg = (s.image_guidance_scale if s.image_guidance_scale is not None
                     else self.default_image_guidance) >= 1.0
        return self.steps_for(settings) * (3 if text_cfg and image_cfg else 1)

    def _edit(self, loaded: Any, images: list[PIL.Image.Image], instructions: list[str], seed: int,
              settings: EditSettings, progress: ProgressFn | None) -> list[PIL.Image.Image]:
        steps = self.steps_for(settings)

        def on_step(pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
            if progress:
                progress(i + 1, steps)
            return kwargs

        w, h = images[0].size
        return loaded(
            instructions, image=images, num_inference_steps=steps, height=h, width=w,
            guidance_scale=settings.guidance_scale if settings.guidance_scale is not None else self.default_guidance,
            image_guidance_scale=(settings.image_guidance_scale if settings.image_guidance_scale is not None
                                  else self.default_image_guidance),
            generator=self.generators(len(images), seed), callback_on_step_end=on_step,
        ).images


@register
class IDENetEditor(InstructPix2PixFamily):
    name = "idenet"
    label = "IDE-Net (teacher)"
    description = "Our identity-enhanced multi-step teacher (InstructPix2Pix architecture, image + text CFG)."
    model_key = "idenet"
    default_steps = 20


@register
class InstructPix2PixEditor(InstructPix2PixFamily):
    name = "instructpix2pix"
    label = "InstructPix2Pix"
    description = "Brooks et al. 2023, diffusers defaults (100 steps, guidance 7.5, image guidance 1.5)."
    model_key = "instructpix2pix"


@register
class MagicBrushEditor(InstructPix2PixFamily):
    name = "magicbrush"
    label = "MagicBrush"
    description = "InstructPix2Pix fine-tuned on MagicBrush (Zhang et al. 2023)."
    model_key = "magicbrush"
