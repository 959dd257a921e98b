"""InstantID baseline (Wang et al. 2024) as a registry editor: our own runner on diffusers core classes.

InstantID is text-to-image with an identity: SDXL base, plus

* **IdentityNet**, a ``ControlNetModel`` (released in ``InstantX/InstantID/ControlNetModel``) whose condition image
  is the 5 facial keypoints drawn by :func:`instantportrait.face.keypoints.draw_face_keypoints` and whose
  cross-attention
  context is the 16 face tokens (not the text);
* an **IP-Adapter** (``ip-adapter.bin``): a perceiver :class:`Resampler` maps the 512-d ArcFace embedding (antelopev2,
  *unnormalised*, as the release's ``face_info['embedding']``) to 16 tokens of the UNet's cross-attention width, and
  every UNet cross-attention gets extra ``to_k_ip`` / ``to_v_ip`` projections that attend to those tokens; their
  output is added to the text attention's output times ``ip_adapter_scale``.

How an instruction becomes a prompt: InstantID is not instruction-based, so the instruction is turned into a caption
with ``InstantIDConfig.prompt_template`` (default ``"a portrait photo of a person, {instruction}, ..."``); a caller
with a real target caption (the benchmark's instruction set has one) passes it as ``EditSettings.extra["prompt"]``.
The source image gives only the identity and the face's position (keypoints): pose, clothes and background come
from the prompt, so InstantID re-renders the scene rather than editing it. That is the baseline's nature.

Release layout and key mapping (``ip-adapter.bin``; how it is read and the ``ip_adapter.<N>`` numbering:
:mod:`.face_conditioned.ip_adapter`):

* ``image_proj.<k>`` -> :class:`Resampler` parameter ``<k>``, loaded with ``strict=True``: ``latents`` (1, 16, 1280),
  ``proj_in`` (1280 x 512), ``layers.<i>.0.{norm1,norm2,to_q,to_kv,to_out}`` (PerceiverAttention),
  ``layers.<i>.1.{0,1,3}`` (FeedForward: LayerNorm, Linear, GELU, Linear), ``proj_out`` (2048 x 1280), ``norm_out``.
* ``ip_adapter.<N>.to_{k,v}_ip.weight`` -> the IP projections of the UNet attention processor at position ``N`` of
  ``unet.attn_processors`` (diffusers' order: down blocks, up blocks, mid block; within a transformer block ``attn1``
  then ``attn2``). Self-attention processors have no weights, so the released keys are the odd ``N`` = 1, 3, ..., 139
  (70 cross-attentions in SDXL). This is the numbering InstantID's own loader (a ``ModuleList`` over
  ``attn_processors.values()``) and diffusers' ``_convert_ip_adapter_attn_to_diffusers`` (``key_id`` 1, += 2) use.

The IP attention is our own processor (:mod:`.face_conditioned.attention`: the face tokens and the IP scale
arrive per call, never stored on a module).

Defaults follow the release's ``infer.py``: 30 steps, guidance 5, ControlNet scale 0.8, IP-Adapter scale 0.8, SDXL's
own scheduler (Euler), 1024-class resolution, keypoint radius 10 / stick width 4 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import nn

from instantportrait.errors import ModelNotAvailableError
from instantportrait.face.keypoints import draw_face_keypoints
from instantportrait.hub import locate
from instantportrait.methods.face_conditioned.base import (
    SDXL_FOLDERS,
    CaptionTemplate,
    FaceConditionedEditor,
    from_folder,
    load_sdxl_base,
    read_scheduler_config,
    vae_dtype,
)
from instantportrait.methods.face_conditioned.ip_adapter import (
    group_ip_adapter_layers,
    install_ip_adapter,
    read_ip_adapter,
)
from instantportrait.methods.face_conditioned.resampler import Resampler, ResamplerConfig
from instantportrait.methods.face_conditioned.sampling import DenoiseInputs, control_tensor, encode_sdxl_prompts
from instantportrait.methods.registry import register
from instantportrait.models.sdxl import (
    SDXLArchitecture,
    build_sdxl_networks,
    sdxl_instantid_architecture,
    tiny_sdxl_instantid_architecture,
)


@dataclass(frozen=True)
class InstantIDConfig(CaptionTemplate):
    """InstantID runner settings (defaults: the release's ``infer.py``). Per-request overrides: ``EditSettings``
    (``num_inference_steps``, ``guidance_scale``) and ``EditSettings.extra`` keys ``controlnet_conditioning_scale``,
    ``ip_adapter_scale``, ``prompt`` (a caption used instead of the template), ``negative_prompt``."""

    num_inference_steps: int = 30
    guidance_scale: float = 5.0
    controlnet_conditioning_scale: float = 0.8
    ip_adapter_scale: float = 0.8
    prompt_template: str = "a portrait photo of a person, {instruction}, highly detailed, best quality"
    negative_prompt: str = ("lowres, low quality, worst quality, watermark, text, painting, drawing, illustration, "
                            "glitch, deformed, mutated, cross-eyed, ugly, disfigured")
    face_pack: str | Path = "antelopev2"  # InstantID was trained on antelopev2 (glintr100) embeddings
    face_root: str | Path | None = None
    normalize_face_embedding: bool = False  # the release feeds insightface's raw (unnormalised) embedding
    ip_adapter_file: str = "ip-adapter.bin"
    controlnet_subfolder: str = "ControlNetModel"
    resampler_dim_head: int = 64
    kps_radius: int = 10
    kps_stick_width: int = 4
    size_multiple: int = 64
    architecture: SDXLArchitecture | None = None  # random-weights mode; None = real SDXL + InstantID sizes


@dataclass
class InstantIDModels:
    """The loaded networks. ``face`` is None in random-weights mode (synthetic keypoints and embeddings)."""

    unet: nn.Module
    controlnet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    text_encoder_2: nn.Module
    tokenizer: Any
    tokenizer_2: Any
    resampler: Resampler
    scheduler_class: type
    scheduler_config: dict[str, Any]
    face: Any | None
    embedding_dim: int


@register
class InstantIDEditor(FaceConditionedEditor):
    name = "instantid"
    label = "InstantID"
    description = ("InstantID (Wang et al. 2024): SDXL + IdentityNet ControlNet on face keypoints + IP-Adapter face "
                   "tokens; text-to-image with the instruction as a caption.")
    model_key = "instantid"
    base_key = "sdxl-base"
    face_purpose = "InstantID needs a face for identity and keypoints"
    embedding_expectation = "the IP-Adapter expects {dim}-d (InstantID uses antelopev2, 512-d)"

    def __init__(self, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 model: str | None = None, resolution: int | None = 1024, base_model: str | None = None,
                 config: InstantIDConfig | None = None, offload: str = "none") -> None:
        super().__init__(device=device, dtype=dtype, model=model, resolution=resolution, base_model=base_model,
                         config=config or InstantIDConfig(), offload=offload)

    # ----------------------------------------------------------------- models
    def _load(self) -> InstantIDModels:
        from diffusers import ControlNetModel

        self._random = False
        face = self.face_encoder().load()  # cheapest failure first
        release = locate(self.spec())
        base = locate(self.base_spec())
        ip_file = release / self.config.ip_adapter_file
        control_dir = release / self.config.controlnet_subfolder
        if not ip_file.is_file() or not (control_dir / "config.json").is_file():
            raise ModelNotAvailableError(
                f"Model {self.spec().describe()} at {release} is incomplete: it needs {self.config.ip_adapter_file} "
                f"and {self.config.controlnet_subfolder}/ (config.json + weights).")
        self._check_base_layout(base, SDXL_FOLDERS, "SDXL")
        dt, dev = self.dtype, self.placement_device  # the CPU under offload
        sdxl = load_sdxl_base(base, dt)
        unet = sdxl["unet"]
        controlnet = from_folder(ControlNetModel, control_dir, dt)
        scheduler_class, scheduler_config = self._scheduler(base)

        proj_state, ip_state = read_ip_adapter(ip_file)
        resampler = Resampler(ResamplerConfig.from_state_dict(proj_state, self.config.resampler_dim_head))
        resampler.load_state_dict(proj_state, strict=True)
        install_ip_adapter(unet, group_ip_adapter_layers(unet, ip_state))
        self._check_dims(unet, controlnet, resampler)
        return InstantIDModels(
            unet=unet.to(dev, dt), controlnet=controlnet.to(dev), vae=sdxl["vae"].to(dev),
            text_encoder=sdxl["text_encoder"].to(dev), text_encoder_2=sdxl["text_encoder_2"].to(dev),
            tokenizer=sdxl["tokenizer"], tokenizer_2=sdxl["tokenizer_2"],
            resampler=resampler.to(dev, dt).eval(), scheduler_class=scheduler_class,
            scheduler_config=scheduler_config, face=face, embedding_dim=resampler.config.embedding_dim)

    @staticmethod
    def _scheduler(base: Path) -> tuple[type, dict[str, Any]]:
        import diffusers

        config = read_scheduler_config(base)
        cls = getattr(diffusers, config.get("_class_name", "EulerDiscreteScheduler"), None)
        if cls is None:
            raise ValueError(f"unknown scheduler class {config.get('_class_name')!r} in {base}/scheduler")
        return cls, config

    @staticmethod
    def _check_dims(unet: nn.Module, controlnet: nn.Module, resampler: Resampler) -> None:
        width = unet.config.cross_attention_dim
        if resampler.config.output_dim != width or controlnet.config.cross_attention_dim != width:
            raise ValueError(f"face tokens are {resampler.config.output_dim}-d but the UNet / IdentityNet attend to "
                             f"{width} / {controlnet.config.cross_attention_dim}-d contexts: the InstantID weights do "
                             "not belong to this base model")

    def _build_random(self) -> InstantIDModels:
        """Real sizes with random weights; no face model (synthetic face inputs). ``config.architecture``, else
        ``random_architecture`` / ``$INSTANTPORTRAIT_RANDOM_ARCH`` = ``"tiny"``, selects test-size networks."""
        from diffusers import EulerDiscreteScheduler

        arch, nets, tokenizer = self._random_networks(lambda: tiny_sdxl_instantid_architecture(512),
                                                      sdxl_instantid_architecture, build_sdxl_networks)
        nets["vae"] = nets["vae"].to(vae_dtype(bool(nets["vae"].config.force_upcast), self.dtype))
        return InstantIDModels(
            unet=nets["unet"], controlnet=nets["controlnet"], vae=nets["vae"], text_encoder=nets["text_encoder"],
            text_encoder_2=nets["text_encoder_2"], tokenizer=tokenizer, tokenizer_2=tokenizer,
            resampler=nets["resampler"], scheduler_class=EulerDiscreteScheduler,
            scheduler_config=dict(arch.scheduler), face=None, embedding_dim=arch.resampler.embedding_dim)

    def _modules(self, loaded: InstantIDModels) -> list[nn.Module]:
        return [loaded.unet, loaded.controlnet, loaded.vae, loaded.text_encoder, loaded.text_encoder_2,
                loaded.resampler]

    # ----------------------------------------------------------------- facts
    def _normalised_embedding(self) -> bool:
        return self.config.normalize_face_embedding

    def _describe_models(self) -> dict[str, Any]:
        return {"base_revision": self.base_spec().revision}

    # ----------------------------------------------------------------- editing
    def _conditions(self, loaded: InstantIDModels, images: list[PIL.Image.Image], kps: list[np.ndarray],
                    emb: torch.Tensor, prompts: list[str], s: dict[str, Any]) -> tuple[DenoiseInputs, Any]:
        """Both text encoders (penultimate layer, SDXL's pooled and size embeddings), the face tokens as the UNet's
        IP context and IdentityNet's cross-attention context, and the keypoint image as IdentityNet's condition."""
        dev, dt = self.device, self.dtype
        kps_images = [draw_face_keypoints(img.size, k, radius=self.config.kps_radius,
                                          stick_width=self.config.kps_stick_width) for img, k in zip(images, kps)]
        text, neg, added = encode_sdxl_prompts(
            (loaded.tokenizer, loaded.tokenizer_2), (loaded.text_encoder, loaded.text_encoder_2), prompts,
            s["negative_prompt"], images[0].size, s["guidance_scale"] > 1.0, dev)  # (B, 77, D) each
        tokens = loaded.resampler(emb.to(dev, dt)[:, None])  # (B, T, D)
        null_tokens = loaded.resampler(torch.zeros_like(emb).to(dev, dt)[:, None])  # (B, T, D)
        inputs = DenoiseInputs(
            text_cond=text, text_uncond=neg, ip_cond=tokens, ip_uncond=null_tokens,
            control_context_cond=tokens, control_context_uncond=null_tokens,
            control_image=control_tensor(kps_images, dev, loaded.controlnet.dtype), added_cond=added)
        scheduler = loaded.scheduler_class.from_config(loaded.scheduler_config)  # fresh: schedulers keep step state
        return inputs, scheduler


__all__ = ["InstantIDConfig", "InstantIDEditor", "InstantIDModels"]
