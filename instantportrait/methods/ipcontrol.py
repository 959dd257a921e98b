"""IP-Control baseline: IP-Adapter FaceID + a ControlNet on Stable Diffusion 1.5, as a registry editor.

The identity comes from **IP-Adapter FaceID** (``h94/IP-Adapter-FaceID``, file ``ip-adapter-faceid_sd15.bin``): an
MLP maps the *L2-normalised* 512-d ArcFace embedding of ``buffalo_l`` (the model card's ``normed_embedding``) to 4
tokens of the UNet's 768-d cross-attention width, and every UNet cross-attention attends to them through extra
``to_k_ip`` / ``to_v_ip`` projections (same processor as InstantID:
:class:`~.face_conditioned.attention.IPAttnProcessor`). The layout comes from a **ControlNet** on the source: by
default the SD1.5 OpenPose ControlNet fed with the head of an OpenPose
skeleton drawn from the 5 face landmarks (:func:`~instantportrait.face.keypoints.draw_openpose_head`: the face's
position
and tilt, nothing else), or ``control="canny"``: the Canny ControlNet on the source's edges (keeps the whole layout,
also what the instruction may want changed).

FaceID variant: the plain FaceID model. Its ``.bin`` also holds a rank-128 LoRA for *every* UNet attention
(``<N>.to_{q,k,v,out}_lora.{down,up}.weight``, applied as ``W x + up(down(x))``); the separate
``ip-adapter-faceid_sd15_lora.safetensors`` of the release is the same LoRA for diffusers' ``load_lora_weights``
users. We merge it into the attention weights at load time (``W += scale * up @ down``), so it costs nothing per step
and no second file is needed. (FaceID-Plus/PlusV2 need a CLIP image encoder as well; not used here.)

Key mapping (``ip-adapter-faceid_sd15.bin``: ``{"image_proj": {...}, "ip_adapter": {...}}``, ``weights_only`` load):

* ``image_proj.proj.0`` (1024 x 512), ``image_proj.proj.2`` (3072 x 1024), ``image_proj.norm`` (768) ->
  :class:`~.face_conditioned.resampler.FaceIDProjection` (``strict=True``), GELU between the two linears, LayerNorm
  per token.
* ``ip_adapter.<N>.*`` -> processor ``N`` of ``unet.attn_processors`` (32 in SD1.5; ``attn1`` at even, ``attn2`` at
  odd ``N``): ``to_{q,k,v,out}_lora.{down,up}.weight`` on every layer (merged into ``to_q``, ``to_k``, ``to_v``,
  ``to_out.0``), ``to_{k,v}_ip.weight`` on the cross-attentions.

The instruction becomes a caption as in InstantID (``prompt_template``; ``EditSettings.extra["prompt"]`` overrides).
Defaults: 30 DDIM steps, guidance 7.5, IP scale 1.0 (the FaceID model card's), ControlNet scale 1.0, 512-class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from torch import nn

from instantportrait.config import ModelSpec, resolve_model
from instantportrait.errors import ModelNotAvailableError
from instantportrait.face.keypoints import canny_edges, draw_openpose_head
from instantportrait.hub import locate
from instantportrait.methods.face_conditioned.base import (
    CaptionTemplate,
    FaceConditionedEditor,
    from_folder,
    read_scheduler_config,
    vae_dtype,
)
from instantportrait.methods.face_conditioned.ip_adapter import (
    group_ip_adapter_layers,
    install_ip_adapter,
    merge_attention_lora,
    read_ip_adapter,
)
from instantportrait.methods.face_conditioned.resampler import FaceIDProjection
from instantportrait.methods.face_conditioned.sampling import DenoiseInputs, control_tensor, encode_clip_prompts
from instantportrait.methods.registry import register
from instantportrait.models.sd15 import (
    SD15Architecture,
    build_sd15_networks,
    sd15_ipcontrol_architecture,
    tiny_sd15_ipcontrol_architecture,
)

CONTROL_MODELS = {"openpose": "controlnet-openpose-sd15", "canny": "controlnet-canny-sd15"}


@dataclass(frozen=True)
class IPControlConfig(CaptionTemplate):
    """IP-Control settings. Per-request overrides as for InstantID: ``EditSettings`` steps / guidance and
    ``extra`` keys ``controlnet_conditioning_scale``, ``ip_adapter_scale``, ``prompt``, ``negative_prompt``."""

    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    controlnet_conditioning_scale: float = 1.0
    ip_adapter_scale: float = 1.0
    lora_scale: float = 1.0  # merged into the UNet at load time
    prompt_template: str = "a portrait photo of a person, {instruction}, highly detailed, best quality"
    negative_prompt: str = "monochrome, lowres, bad anatomy, worst quality, low quality, blurry"
    control: str = "openpose"  # openpose (head skeleton from the face landmarks) | canny (source edges)
    face_pack: str | Path = "buffalo_l"  # FaceID was trained on buffalo_l's normalised embeddings
    face_root: str | Path | None = None
    ip_adapter_file: str = "ip-adapter-faceid_sd15.bin"
    openpose_radius: int = 4
    openpose_stick_width: int = 4
    size_multiple: int = 64
    architecture: SD15Architecture | None = None  # random-weights mode; None = real SD1.5 sizes

    def __post_init__(self) -> None:
        if self.control not in CONTROL_MODELS:
            raise ValueError(f"control must be one of {sorted(CONTROL_MODELS)}, got {self.control!r}")


@dataclass
class IPControlModels:
    unet: nn.Module
    controlnet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    projection: FaceIDProjection
    scheduler_config: dict[str, Any]
    face: Any | None
    text_encoder_2: nn.Module | None = None  # SDXL (IP-Control-XL) only
    tokenizer_2: Any = None

    @property
    def embedding_dim(self) -> int:
        return self.projection.config.embedding_dim


@register
class IPControlEditor(FaceConditionedEditor):
    """FaceID + ControlNet on SD1.5. The backbone-specific parts are hooks (``_load_base``, ``_random_parts``,
    ``_text_conditions``) and class attributes, which :class:`~.ipcontrol_xl.IPControlXLEditor` swaps for SDXL's."""

    name = "ipcontrol"
    label = "IP-Control (FaceID + ControlNet)"
    description = ("IP-Adapter FaceID (identity tokens + merged LoRA) with an SD1.5 ControlNet (OpenPose head from "
                   "the face landmarks, or Canny); text-to-image with the instruction as a caption.")
    model_key = "ip-adapter-faceid"
    base_key = "sd15-base"
    face_purpose = "IP-Control needs a face for the identity"
    embedding_expectation = "FaceID expects {dim}-d (it was trained on buffalo_l, 512-d)"
    control_models: ClassVar[dict[str, str]] = CONTROL_MODELS  # control -> model key of the ControlNet
    upcast_vae: ClassVar[bool] = False  # True for SDXL: float32 VAE under fp16 when its config says force_upcast
    scheduler_overrides: ClassVar[dict[str, Any]] = {}  # DDIM settings over the base's scheduler config

    def __init__(self, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 model: str | None = None, resolution: int | None = 512, base_model: str | None = None,
                 controlnet: str | None = None, config: IPControlConfig | None = None,
                 offload: str = "none") -> None:
        super().__init__(device=device, dtype=dtype, model=model, resolution=resolution, base_model=base_model,
                         config=config or IPControlConfig(), offload=offload)
        self.controlnet_override = controlnet

    def controlnet_spec(self) -> ModelSpec:
        return resolve_model(self.control_models[self.config.control], self.controlnet_override)

    def _specs(self) -> list[ModelSpec]:
        return [self.spec(), self.controlnet_spec(), self.base_spec()]

    def _load_base(self, base: Path) -> dict[str, Any]:
        """The base model's UNet, VAE, text encoder(s) and tokenizer(s) (here SD1.5's), on the CPU."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self._check_base_layout(base, ("unet", "vae", "text_encoder", "tokenizer", "scheduler"), "SD1.5")
        dt = self.dtype
        return {"unet": from_folder(UNet2DConditionModel, base, dt, "unet"),
                "vae": from_folder(AutoencoderKL, base, dt, "vae"),
                "text_encoder": from_folder(CLIPTextModel, base, dt, "text_encoder"),
                "tokenizer": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")}

    def _models(self, nets: dict[str, Any], scheduler_config: dict[str, Any], face: Any | None) -> IPControlModels:
        """The loaded (or random) networks on :attr:`placement_device` (the CPU under offload), as
        :class:`IPControlModels`."""
        dev = self.placement_device
        on = {k: (v.to(dev) if isinstance(v, nn.Module) else v) for k, v in nets.items()}
        return IPControlModels(unet=on["unet"], controlnet=on["controlnet"], vae=on["vae"],
                               text_encoder=on["text_encoder"], tokenizer=on["tokenizer"], projection=on["projection"],
                               scheduler_config=scheduler_config, face=face, text_encoder_2=on.get("text_encoder_2"),
                               tokenizer_2=on.get("tokenizer_2"))

    def _load(self) -> IPControlModels:
        self._random = False
        self._check_face_pack()  # the pack's files first, the releases next: each fails within a second or so
        release = locate(self.spec())
        control_dir = locate(self.controlnet_spec())
        base = locate(self.base_spec())
        ip_file = release / self.config.ip_adapter_file
        if not ip_file.is_file():
            raise ModelNotAvailableError(f"Model {self.spec().describe()} at {release} has no "
                                         f"{self.config.ip_adapter_file}.")
        face = self.face_encoder().load()  # seconds (insightface, onnxruntime): after the fast checks
        from diffusers import ControlNetModel  # seconds too, cold

        dt, dev = self.dtype, self.placement_device  # the CPU under offload
        nets = self._load_base(base)
        unet = nets["unet"]
        controlnet = from_folder(ControlNetModel, control_dir, dt)
        scheduler_config = read_scheduler_config(base)
        proj_state, ip_state = read_ip_adapter(ip_file)
        projection = FaceIDProjection.from_state_dict(proj_state)
        projection.load_state_dict(proj_state, strict=True)
        groups = group_ip_adapter_layers(unet, ip_state)
        merge_attention_lora(unet, groups, self.config.lora_scale)
        install_ip_adapter(unet, groups)
        width = unet.config.cross_attention_dim
        if projection.config.cross_attention_dim != width or controlnet.config.cross_attention_dim != width:
            raise ValueError(f"FaceID tokens are {projection.config.cross_attention_dim}-d, the UNet / ControlNet "
                             f"attend to {width} / {controlnet.config.cross_attention_dim}-d: mismatched models")
        return self._models({**nets, "unet": unet.to(dev, dt), "controlnet": controlnet,
                             "projection": projection.to(dev, dt).eval()}, scheduler_config, face)

    def _build_random(self) -> IPControlModels:
        """Real sizes with random weights (or test size, as
        :func:`~.face_conditioned.base.random_architecture_name` says): :meth:`_random_parts`."""
        arch, nets, tokenizer = self._random_networks(*self._random_parts())
        vae = nets["vae"]
        nets["vae"] = vae.to(vae_dtype(self.upcast_vae and bool(vae.config.force_upcast), self.dtype))
        tokenizers = {"tokenizer": tokenizer, **({"tokenizer_2": tokenizer} if "text_encoder_2" in nets else {})}
        return self._models({**nets, **tokenizers}, dict(arch.scheduler), face=None)

    def _random_parts(self) -> tuple[Callable[[], Any], Callable[[], Any], Callable[..., dict[str, nn.Module]]]:
        """``(tiny architecture, real architecture, builder)`` for :meth:`_build_random` (here SD1.5's)."""
        return lambda: tiny_sd15_ipcontrol_architecture(512), sd15_ipcontrol_architecture, build_sd15_networks

    def _modules(self, loaded: IPControlModels) -> list[nn.Module]:
        return [m for m in (loaded.unet, loaded.controlnet, loaded.vae, loaded.text_encoder, loaded.text_encoder_2,
                            loaded.projection) if m is not None]

    def _describe_models(self) -> dict[str, Any]:
        return {"controlnet": self.controlnet_spec().repo_id, "control": self.config.control}

    def _describe_sampling(self) -> dict[str, Any]:
        return {"lora_scale": self.config.lora_scale}

    def _control_images(self, images: list[PIL.Image.Image], kps: list[np.ndarray]) -> list[PIL.Image.Image]:
        c = self.config
        if c.control == "canny":
            return [canny_edges(img) for img in images]
        return [draw_openpose_head(img.size, k, radius=c.openpose_radius, stick_width=c.openpose_stick_width)
                for img, k in zip(images, kps)]

    def _text_conditions(self, loaded: IPControlModels, prompts: list[str], s: dict[str, Any],
                         size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        """``(text, negative text, added_cond)``: here SD1.5's one text encoder (last layer), no added conditions."""
        dev, n = self.device, len(prompts)
        text, _ = encode_clip_prompts([loaded.tokenizer], [loaded.text_encoder], prompts, dev, penultimate=False)
        neg, _ = encode_clip_prompts([loaded.tokenizer], [loaded.text_encoder], [s["negative_prompt"]] * n, dev,
                                     penultimate=False)  # (B, 77, 768)
        return text, neg, None

    def _conditions(self, loaded: IPControlModels, images: list[PIL.Image.Image], kps: list[np.ndarray],
                    emb: torch.Tensor, prompts: list[str], s: dict[str, Any]) -> tuple[DenoiseInputs, Any]:
        """The text (:meth:`_text_conditions`) as the UNet's and the ControlNet's context, FaceID tokens as the IP
        context, the OpenPose head (or Canny edges) as the condition; DDIM as the FaceID model cards sample."""
        from diffusers import DDIMScheduler

        dev, dt = self.device, self.dtype
        text, neg, added = self._text_conditions(loaded, prompts, s, images[0].size)
        tokens = loaded.projection(emb.to(dev, dt))  # (B, 4, D)
        null_tokens = loaded.projection(torch.zeros_like(emb).to(dev, dt))  # (B, 4, D)
        inputs = DenoiseInputs(
            text_cond=text, text_uncond=neg, ip_cond=tokens, ip_uncond=null_tokens, control_context_cond=text,
            control_context_uncond=neg,
            control_image=control_tensor(self._control_images(images, kps), dev, loaded.controlnet.dtype),
            added_cond=added)
        return inputs, DDIMScheduler.from_config(loaded.scheduler_config, **self.scheduler_overrides)  # fresh per edit


__all__ = ["CONTROL_MODELS", "IPControlConfig", "IPControlEditor", "IPControlModels"]
