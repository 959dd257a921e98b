"""What InstantID and IP-Control share, so that each editor only says what differs: a base model plus an adapter
release and a face pack; sampling settings read from ``EditSettings`` over a config; face embeddings and keypoints
(or, with random weights, synthetic ones); random-weights builds; and one ``_edit`` that snaps the size, encodes the
faces, turns instructions into captions and hands the editor's conditions to :func:`.sampling.sample`.

A subclass implements ``_load``, ``_modules``, :meth:`FaceConditionedEditor._conditions` (the text, face-token and
ControlNet inputs plus a fresh scheduler) and sets the class attributes that word its messages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn

from instantportrait.config import ModelSpec, resolve_model
from instantportrait.errors import ModelNotAvailableError
from instantportrait.face.keypoints import template_keypoints
from instantportrait.hub import cached_snapshot, hub_reachable, locate, offline_requested
from instantportrait.methods.base import Editor, EditSettings, ProgressFn
from instantportrait.methods.face_conditioned.ip_adapter import (
    group_ip_adapter_layers,
    install_ip_adapter,
    random_ip_adapter_state,
)
from instantportrait.methods.face_conditioned.sampling import DenoiseInputs, sample, snap_size
from instantportrait.models.architectures import ARCH_ENV


def weights_variant(folder: Path) -> str | None:
    """``"fp16"`` when ``folder`` holds only ``*.fp16.*`` weight files (the layout our default download keeps)."""
    files = [p.name for p in folder.glob("*.safetensors")] + [p.name for p in folder.glob("*.bin")]
    return "fp16" if files and all(".fp16." in f for f in files) else None


def from_folder(cls: Any, folder: Path, dtype: torch.dtype, subfolder: str | None = None) -> Any:
    """``cls.from_pretrained`` on a diffusers / transformers folder (or its ``subfolder``), fp16 variant files
    picked up when that is all the folder holds; in eval mode."""
    path = folder / subfolder if subfolder else folder
    where = {"subfolder": subfolder} if subfolder else {}
    return cls.from_pretrained(folder, **where, variant=weights_variant(path), dtype=dtype).eval()


SDXL_FOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def vae_dtype(force_upcast: bool, dtype: torch.dtype) -> torch.dtype:
    """SDXL's VAE overflows in fp16 (its config says ``force_upcast``): float32 then, else ``dtype``."""
    return torch.float32 if dtype == torch.float16 and force_upcast else dtype


def load_sdxl_base(base: Path, dtype: torch.dtype) -> dict[str, Any]:
    """An SDXL diffusers folder's UNet, VAE (see :func:`vae_dtype`), both text encoders and both tokenizers, on the
    CPU in eval mode (InstantID and IP-Control-XL share the base)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vae_cfg = AutoencoderKL.load_config(base, subfolder="vae")
    return {"unet": from_folder(UNet2DConditionModel, base, dtype, "unet"),
            "vae": from_folder(AutoencoderKL, base, vae_dtype(bool(vae_cfg.get("force_upcast", True)), dtype), "vae"),
            "text_encoder": from_folder(CLIPTextModel, base, dtype, "text_encoder"),
            "text_encoder_2": from_folder(CLIPTextModelWithProjection, base, dtype, "text_encoder_2"),
            "tokenizer": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
            "tokenizer_2": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2")}


def read_scheduler_config(base: Path) -> dict[str, Any]:
    """The base model's ``scheduler/scheduler_config.json``."""
    return dict(json.loads((base / "scheduler" / "scheduler_config.json").read_text()))


def check_spec_available(spec: ModelSpec) -> None:
    """Present locally or downloadable now; else :class:`ModelNotAvailableError` within seconds (no download)."""
    if Path(spec.repo_id).expanduser().exists() or cached_snapshot(spec) is not None:
        return
    if offline_requested() or not hub_reachable():
        locate(spec)  # not cached and no Hub: raises ModelNotAvailableError naming the model and how to get it


def random_architecture_name(editor: Editor) -> str:
    """``"tiny"`` or ``"real"`` for a random-weights build: the editor's ``random_architecture`` attribute (set by
    the benchmark runner for every method), else ``$INSTANTPORTRAIT_RANDOM_ARCH``; ``"tiny"`` picks test-size
    networks, any other name (e.g. the SD1.5 editors' ``"sd15-ip2p"``) this method's real architecture."""
    name = getattr(editor, "random_architecture", None) or os.environ.get(ARCH_ENV, "").strip()
    return "tiny" if name == "tiny" else "real"


class CaptionTemplate:
    """Mixin for the configs: these methods are text-to-image, so an instruction becomes a caption."""

    prompt_template: str

    def prompt_for(self, instruction: str) -> str:
        return self.prompt_template.format(instruction=instruction.strip().rstrip("."))


class FaceConditionedEditor(Editor):
    """A base model + an adapter release, a face pack, and sampling settings (steps, text guidance, ControlNet and
    IP-Adapter scales, prompt) read from ``EditSettings`` over a config."""

    base_key: ClassVar[str]
    face_purpose: ClassVar[str]  # why the method needs a face, for NoFaceError ("X needs a face for ...")
    embedding_expectation: ClassVar[str]  # what the adapter expects, with a {dim} field
    random_architecture: str | None = None  # see random_architecture_name()
    config: Any

    def __init__(self, *, device: str | torch.device, dtype: torch.dtype, model: str | None,
                 resolution: int | None, base_model: str | None, config: Any, offload: str = "none") -> None:
        super().__init__(device=device, dtype=dtype, model=model, resolution=resolution, offload=offload)
        self.base_override = base_model
        self.config = config
        self._random = False

    # ----------------------------------------------------------------- models
    def spec(self) -> ModelSpec:
        return resolve_model(self.model_key, self.model_override)

    def base_spec(self) -> ModelSpec:
        return resolve_model(self.base_key, self.base_override)

    def _specs(self) -> list[ModelSpec]:
        """Every model release the editor loads, in the order their absence is reported."""
        return [self.spec(), self.base_spec()]

    def check_available(self) -> None:
        """Face pack and every release present (or downloadable now); else a fast ``ModelNotAvailableError``
        naming the missing one."""
        self._check_face_pack()
        for spec in self._specs():
            check_spec_available(spec)

    def face_encoder(self) -> Any:
        from instantportrait.face.encoder import FaceEncoder

        return FaceEncoder(self.config.face_pack, root=self.config.face_root, device=str(self.device))

    def _check_face_pack(self) -> None:
        from instantportrait.face.encoder import check_pack_folder

        enc = self.face_encoder()
        check_pack_folder(enc.spec, enc.folder)

    def _check_base_layout(self, base: Path, subfolders: tuple[str, ...], layout: str) -> None:
        for sub in subfolders:
            if not (base / sub).is_dir():
                raise ModelNotAvailableError(f"Model {self.base_spec().describe()} at {base} has no {sub}/ folder: "
                                             f"expected the {layout} diffusers layout.")

    def _random_networks(self, tiny: Callable[[], Any], real: Callable[[], Any],
                         build: Callable[..., dict[str, nn.Module]]) -> tuple[Any, dict[str, nn.Module], Any]:
        """``(architecture, networks, tokenizer)`` with random weights: ``config.architecture``, else ``tiny()`` or
        ``real()`` as :func:`random_architecture_name` says; random IP-Adapter weights installed in the UNet."""
        from instantportrait.models.architectures import (  # byte-level BPE, special tokens at the real ids
            random_weights_tokenizer,
        )

        arch = self.config.architecture or (tiny() if random_architecture_name(self) == "tiny" else real())
        nets = build(arch, self.placement_device, self.dtype)
        unet = nets["unet"]
        install_ip_adapter(unet, group_ip_adapter_layers(unet, random_ip_adapter_state(unet)))
        unet.to(self.placement_device, self.dtype)
        self._random = True
        return arch, nets, random_weights_tokenizer(arch.text_encoder["vocab_size"])

    def _offload_order(self, loaded: Any) -> tuple[list[nn.Module], list[nn.Module]]:
        """Text encoders and face-token projection, then the UNet and the VAE, in call order; the ControlNet runs in
        turn with the UNet at every step, so it is hooked on its own (diffusers' ControlNet pipelines do the same)."""
        loop_nets = (loaded.unet, loaded.vae, loaded.controlnet)
        first = [m for m in self._modules(loaded) if all(m is not n for n in loop_nets)]
        return [*first, loaded.unet, loaded.vae], [loaded.controlnet]

    # ----------------------------------------------------------------- facts
    def _settings(self, settings: EditSettings | None) -> dict[str, Any]:
        s, c = settings or EditSettings(), self.config
        extra = s.extra or {}
        steps = s.num_inference_steps if s.num_inference_steps else c.num_inference_steps
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        return {
            "steps": int(steps),
            "guidance_scale": float(s.guidance_scale if s.guidance_scale is not None else c.guidance_scale),
            "control_scale": float(extra.get("controlnet_conditioning_scale", c.controlnet_conditioning_scale)),
            "ip_scale": float(extra.get("ip_adapter_scale", c.ip_adapter_scale)),
            "prompt": extra.get("prompt"),
            "negative_prompt": str(extra.get("negative_prompt", c.negative_prompt)),
        }

    def nfe(self, settings: EditSettings | None = None) -> int:
        """UNet evaluations: steps x 2 under CFG (guidance > 1). The ControlNet runs as often (see describe())."""
        s = self._settings(settings)
        return s["steps"] * (2 if s["guidance_scale"] > 1.0 else 1)

    def _normalised_embedding(self) -> bool:
        """Whether the adapter takes the L2-normalised face embedding (else insightface's raw one)."""
        return True

    def _describe_models(self) -> dict[str, Any]:
        """Model facts besides the adapter release and the base model (e.g. a revision, the ControlNet)."""
        return {}

    def _describe_sampling(self) -> dict[str, Any]:
        """Sampling settings besides steps, guidance, ControlNet and IP-Adapter scales."""
        return {}

    def describe(self) -> dict[str, Any]:
        c = self.config
        embedding = "normalised" if self._normalised_embedding() else "raw"
        info = {**super().describe(), "controlnet_evaluations": self.nfe(),
                "model": self.spec().repo_id, "revision": self.spec().revision,
                "base_model": self.base_spec().repo_id, **self._describe_models(),
                "face_pack": str(c.face_pack), "face_embedding": embedding,
                "steps": c.num_inference_steps, "guidance_scale": c.guidance_scale,
                "controlnet_conditioning_scale": c.controlnet_conditioning_scale,
                "ip_adapter_scale": c.ip_adapter_scale, **self._describe_sampling(),
                "prompt_template": c.prompt_template, "negative_prompt": c.negative_prompt}
        if self._random and self.is_loaded:
            info["random_weights"] = True
            info["random_architecture"] = "custom" if c.architecture else random_architecture_name(self)
            info["face_analysis"] = "skipped (random weights: template keypoints, random embedding; not timed)"
        return info

    # ----------------------------------------------------------------- editing
    def _faces(self, loaded: Any, images: list[PIL.Image.Image],
               seed: int | list[int]) -> tuple[torch.Tensor, list[np.ndarray]]:
        """(B, D) face embeddings and (5, 2) keypoints per image; ``NoFaceError`` names the image without a face."""
        dim, normalised = loaded.embedding_dim, self._normalised_embedding()
        if loaded.face is None:  # random-weights mode; raw ArcFace embeddings have norms of about 20
            emb = torch.stack([torch.randn(dim, generator=g) for g in self.generators(len(images), seed)])  # (B, D)
            emb = F.normalize(emb, dim=-1) if normalised else emb * 20.0
            return emb, [template_keypoints(img.size) for img in images]
        embeds, kps = [], []
        for i, img in enumerate(images):
            what = "source image" if len(images) == 1 else f"source image {i}"
            face = loaded.face.encode(img, what=f"{what} ({self.face_purpose})")
            vec = face.embedding if normalised else face.embedding * face.embedding_norm
            embeds.append(torch.from_numpy(np.asarray(vec, dtype=np.float32)))
            kps.append(face.kps)
        emb = torch.stack(embeds)  # (B, D)
        if emb.shape[1] != dim:
            raise ValueError(f"face pack {self.config.face_pack!r} gives {emb.shape[1]}-d embeddings but "
                             + self.embedding_expectation.format(dim=dim))
        return emb, kps

    def _conditions(self, loaded: Any, images: list[PIL.Image.Image], kps: list[np.ndarray], emb: torch.Tensor,
                    prompts: list[str], s: dict[str, Any]) -> tuple[DenoiseInputs, Any]:
        """The denoising inputs (text, face tokens, ControlNet image and context) and a fresh scheduler."""
        raise NotImplementedError

    @torch.no_grad()
    def _edit(self, loaded: Any, images: list[PIL.Image.Image], instructions: list[str], seed: int | list[int],
              settings: EditSettings, progress: ProgressFn | None) -> list[PIL.Image.Image]:
        s = self._settings(settings)
        work_size = images[0].size
        size = snap_size(work_size, self.config.size_multiple)
        images = [img.resize(size, PIL.Image.Resampling.LANCZOS) if img.size != size else img for img in images]
        emb, kps = self._faces(loaded, images, seed)
        prompts = [s["prompt"] or self.config.prompt_for(text) for text in instructions]
        inputs, scheduler = self._conditions(loaded, images, kps, emb, prompts, s)
        return sample(loaded, inputs, scheduler, self.generators(len(images), seed), size, s, progress, work_size)
