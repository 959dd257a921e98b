"""IP-Control-XL baseline: IP-Adapter FaceID + an SDXL ControlNet on SDXL base 1.0, as a registry editor.

Which "IP-Control" this is. The poster compares against "IP-Control-1.5" and "IP-Control-XL" without defining them;
we read the name as *IP-Adapter for the identity + ControlNet for the layout*, on SD1.5 and on SDXL, with the
identity-specific IP-Adapter, **FaceID** (``h94/IP-Adapter-FaceID``), rather than the plain IP-Adapter (a CLIP image
embedding of the face crop) or FaceID-Plus (ArcFace + CLIP image tokens). Why: FaceID is the IP-Adapter release made
for identity; it conditions on an ArcFace embedding as InstantID does, so the three face-conditioned baselines differ
in how they use the identity, not in what they measure it with; and it ships an SDXL model
(``ip-adapter-faceid_sdxl.bin``), so the -1.5 / -XL pair is the same method on two backbones. This is
:class:`~instantportrait.methods.ipcontrol.IPControlEditor` (read its docstring) with the SDXL pieces swapped in:

* **Base**: ``stabilityai/stable-diffusion-xl-base-1.0`` (the ``sdxl-base`` entry InstantID also uses; the FaceID
  SDXL model card samples with RealVisXL V3.0, an SDXL fine-tune: pass it as ``base_model`` to match the card).
  Both text encoders (penultimate layers), the pooled embedding and the size ids, as SDXL's pipeline; the VAE in
  float32 under fp16 (its ``force_upcast``).
* **FaceID SDXL** (``ip-adapter-faceid_sdxl.bin``): the same layout as the SD1.5 file at SDXL's sizes. The MLP maps
  the L2-normalised 512-d ``buffalo_l`` embedding to 4 tokens of 2048 (``image_proj.proj.0`` 1024 x 512,
  ``proj.2`` 8192 x 1024, ``norm`` 2048). ``ip_adapter.<N>.*``: ``N`` indexes ``unet.attn_processors`` in diffusers'
  order (down blocks, up blocks, mid block; ``attn1`` then ``attn2`` in each transformer block), as the release's
  ``IPAdapterFaceIDXL`` builds its ``ModuleList``: 140 attentions in SDXL (70 transformer blocks), a rank-128 LoRA
  (``to_{q,k,v,out}_lora.{down,up}.weight``) on every one, ``to_{k,v}_ip.weight`` on the 70 cross-attentions (the
  odd ``N``). :func:`~.face_conditioned.ip_adapter.group_ip_adapter_layers` numbers them so for any UNet; the LoRA is
  merged into the attention weights at load time, as for SD1.5, so ``ip-adapter-faceid_sdxl_lora.safetensors`` (the
  same LoRA for ``load_lora_weights`` users) is not needed.
* **ControlNet**: the same choice as the SD1.5 variant (``control``): ``openpose`` (default), the head skeleton drawn
  from the 5 face landmarks, on ``thibaud/controlnet-openpose-sdxl-1.0``; or ``canny``, the source's edges, on
  ``diffusers/controlnet-canny-sdxl-1.0``. Both are diffusers-format SDXL ControlNets, unpinned (``main``). The text is
  the ControlNet's context and its added conditions are the UNet's, as in diffusers' SDXL ControlNet pipeline.

Defaults: the FaceID SDXL card's (30 DDIM steps with ``clip_sample=False``, ``set_alpha_to_one=False``; guidance
7.5; IP scale 1.0), ControlNet scale 1.0 as the SD1.5 variant, 1024-class resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from instantportrait.methods.face_conditioned.base import SDXL_FOLDERS, load_sdxl_base
from instantportrait.methods.face_conditioned.sampling import encode_sdxl_prompts
from instantportrait.methods.ipcontrol import IPControlConfig, IPControlEditor, IPControlModels
from instantportrait.methods.registry import register
from instantportrait.models import sdxl

CONTROL_MODELS_XL = {"openpose": "controlnet-openpose-sdxl", "canny": "controlnet-canny-sdxl"}


@dataclass(frozen=True)
class IPControlXLConfig(IPControlConfig):
    """IP-Control settings with the SDXL FaceID file; ``architecture`` is an SDXL one (random-weights mode)."""

    ip_adapter_file: str = "ip-adapter-faceid_sdxl.bin"
    architecture: sdxl.SDXLArchitecture | None = None  # random-weights mode; None = real SDXL sizes


@register
class IPControlXLEditor(IPControlEditor):
    name = "ipcontrol-xl"
    label = "IP-Control-XL (FaceID + ControlNet, SDXL)"
    description = ("IP-Adapter FaceID SDXL (identity tokens + merged LoRA) with an SDXL ControlNet (OpenPose head "
                   "from the face landmarks, or Canny); text-to-image with the instruction as a caption.")
    model_key = "ip-adapter-faceid-sdxl"
    base_key = "sdxl-base"
    control_models: ClassVar[dict[str, str]] = CONTROL_MODELS_XL
    upcast_vae: ClassVar[bool] = True
    scheduler_overrides: ClassVar[dict[str, Any]] = {"clip_sample": False, "set_alpha_to_one": False}  # the card's

    def __init__(self, *, resolution: int | None = 1024, config: IPControlXLConfig | None = None,
                 **kwargs: Any) -> None:
        super().__init__(resolution=resolution, config=config or IPControlXLConfig(), **kwargs)

    def _load_base(self, base: Path) -> dict[str, Any]:
        self._check_base_layout(base, SDXL_FOLDERS, "SDXL")
        return load_sdxl_base(base, self.dtype)

    def _random_parts(self) -> tuple[Callable[[], Any], Callable[[], Any], Callable[..., dict[str, nn.Module]]]:
        return (lambda: sdxl.tiny_sdxl_ipcontrol_architecture(512), sdxl.sdxl_ipcontrol_architecture,
                sdxl.build_sdxl_networks)

    def _describe_models(self) -> dict[str, Any]:
        return {**super()._describe_models(), "base_revision": self.base_spec().revision}

    def _text_conditions(self, loaded: IPControlModels, prompts: list[str], s: dict[str, Any],
                         size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        """SDXL's: both text encoders (penultimate layers), the pooled embedding and the size ids."""
        return encode_sdxl_prompts((loaded.tokenizer, loaded.tokenizer_2), (loaded.text_encoder, loaded.text_encoder_2),
                                   prompts, s["negative_prompt"], size, s["guidance_scale"] > 1.0, self.device)


__all__ = ["CONTROL_MODELS_XL", "IPControlXLConfig", "IPControlXLEditor"]
