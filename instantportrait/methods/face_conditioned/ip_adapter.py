"""IP-Adapter weights in the released key layout: reading the file, mapping ``ip_adapter.<N>.*`` keys onto the
UNet's attention processors, installing :class:`~.attention.IPAttnProcessor`, folding IP-Adapter FaceID's LoRA into
the attention weights, and random tensors in the same layout (random-weights builds and tiny releases).

Release layout (``ip-adapter.bin`` / ``ip-adapter-faceid_sd15.bin`` / ``ip-adapter-faceid_sdxl.bin``, a torch
pickle of ``{"image_proj": {...}, "ip_adapter": {...}}`` read with ``torch.load(weights_only=True)``; a flat
``image_proj.*`` / ``ip_adapter.*`` dict or safetensors file is also accepted):

* ``image_proj.<k>``: the face projection's parameters (:mod:`.resampler`).
* ``ip_adapter.<N>.to_{k,v}_ip.weight`` -> the IP projections of the UNet attention processor at position ``N`` of
  ``unet.attn_processors`` (diffusers' order: down blocks, up blocks, mid block; within a transformer block ``attn1``
  then ``attn2``). Self-attention processors have no IP weights, so InstantID's keys are the odd ``N`` = 1, 3, ...,
  139 (70 cross-attentions in SDXL). This is the numbering InstantID's own loader (a ``ModuleList`` over
  ``attn_processors.values()``) and diffusers' ``_convert_ip_adapter_attn_to_diffusers`` (``key_id`` 1, += 2) use.
* FaceID only: ``ip_adapter.<N>.to_{q,k,v,out}_lora.{down,up}.weight`` on every attention (a rank-128 LoRA), merged
  into ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` at load time by :func:`merge_attention_lora`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from instantportrait.errors import ModelNotAvailableError
from instantportrait.methods.face_conditioned.attention import IPAttnProcessor, SelfAttnProcessor

LORA_TARGETS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}


def read_ip_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(image_proj, ip_adapter)`` state dicts from a released IP-Adapter file.

    ``.bin``: a torch pickle, nested ``{"image_proj": {...}, "ip_adapter": {...}}`` or flat with those prefixes, read
    with ``weights_only=True`` (plain tensors only, no code). ``.safetensors``: flat keys with the prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotAvailableError(f"IP-Adapter weights {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: dict[str, Any] = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    if isinstance(state.get("image_proj"), dict) and isinstance(state.get("ip_adapter"), dict):
        return dict(state["image_proj"]), dict(state["ip_adapter"])
    proj = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
    ip = {k[len("ip_adapter."):]: v for k, v in state.items() if k.startswith("ip_adapter.")}
    if not proj or not ip:
        raise ValueError(f"{path}: no 'image_proj' / 'ip_adapter' weights (keys start with {sorted(state)[:5]})")
    return proj, ip



def group_ip_adapter_layers(unet: nn.Module, ip_state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Released ``"<N>.<param>"`` keys -> ``{processor name: {param: tensor}}``; ``N`` indexes ``unet.attn_processors``.

    Every processor name appears in the result (with ``{}`` when the release has no weights for it).
    """
    names = list(unet.attn_processors)
    groups: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    for key, value in ip_state.items():
        index, _, param = key.partition(".")
        if not index.isdigit() or not param:
            raise ValueError(f"unexpected IP-Adapter key {key!r} (expected '<layer number>.<parameter>')")
        if int(index) >= len(names):
            raise ValueError(f"IP-Adapter weights have layer {index}, but this UNet has only {len(names)} attention "
                             "layers: the adapter was trained for a different base model")
        groups[names[int(index)]][param] = value
    return groups



def attention_module(unet: nn.Module, processor_name: str) -> Any:
    return unet.get_submodule(processor_name.removesuffix(".processor"))



def install_ip_adapter(unet: nn.Module, groups: dict[str, dict[str, torch.Tensor]]) -> int:
    """Put :class:`IPAttnProcessor` on every cross-attention (weights from ``groups``), :class:`SelfAttnProcessor`
    elsewhere. Strict: every cross-attention needs exactly ``to_k_ip.weight`` and ``to_v_ip.weight`` of the right
    shapes, self-attentions none. Returns the number of IP layers."""
    processors: dict[str, nn.Module] = {}
    count = 0
    for name, params in groups.items():
        attn = attention_module(unet, name)
        if not attn.is_cross_attention:
            if params:
                raise ValueError(f"IP-Adapter weights {sorted(params)} for self-attention layer {name}: the layer "
                                 "numbering does not match this UNet")
            processors[name] = SelfAttnProcessor()
            continue
        proc = IPAttnProcessor(attn.to_k.out_features, attn.to_k.in_features)
        expected = {"to_k_ip.weight", "to_v_ip.weight"}
        if set(params) != expected:
            raise ValueError(f"cross-attention layer {name}: expected IP-Adapter weights {sorted(expected)}, got "
                             f"{sorted(params)}")
        proc.load_state_dict(params, strict=True)  # raises with both shapes on a size mismatch
        processors[name] = proc
        count += 1
    unet.set_attn_processor(processors)
    return count



def merge_attention_lora(unet: nn.Module, groups: dict[str, dict[str, torch.Tensor]], scale: float = 1.0) -> int:
    """Fold the FaceID LoRA into the attention weights and remove its keys from ``groups``; returns merged layers.

    Per layer either all four (to_q, to_k, to_v, to_out) down/up pairs are present, or none."""
    merged = 0
    for name, params in groups.items():
        lora = {k: params.pop(k) for k in [k for k in params if "_lora." in k]}
        if not lora:
            continue
        attn = attention_module(unet, name)
        expected = {f"{t}_lora.{d}.weight" for t in LORA_TARGETS for d in ("down", "up")}
        if set(lora) != expected:
            raise ValueError(f"layer {name}: incomplete LoRA {sorted(lora)}, expected {sorted(expected)}")
        for target, path in LORA_TARGETS.items():
            linear = attn.get_submodule(path)
            down, up = lora[f"{target}_lora.down.weight"], lora[f"{target}_lora.up.weight"]  # (r, in), (out, r)
            if down.shape[1] != linear.in_features or up.shape[0] != linear.out_features:
                raise ValueError(f"layer {name}.{path}: LoRA {tuple(up.shape)} x {tuple(down.shape)} does not fit "
                                 f"a {linear.out_features} x {linear.in_features} weight")
            with torch.no_grad():
                delta = up.float() @ down.float()  # (out, in)
                linear.weight += (scale * delta).to(linear.weight.dtype)
        merged += 1
    return merged



def random_ip_adapter_state(unet: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ``"<N>.to_{k,v}_ip.weight"`` tensors for every cross-attention of ``unet``, in the release numbering."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for n, name in enumerate(unet.attn_processors):
        attn = attention_module(unet, name)
        if attn.is_cross_attention:
            shape = (attn.to_k.out_features, attn.to_k.in_features)
            for proj in ("to_k_ip", "to_v_ip"):
                state[f"{n}.{proj}.weight"] = torch.randn(shape, generator=gen) / shape[1] ** 0.5
    return state



def random_faceid_lora_state(unet: nn.Module, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random FaceID LoRA tensors (``"<N>.to_q_lora.down.weight"``, ...) for every attention, release numbering."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for n, name in enumerate(unet.attn_processors):
        attn = attention_module(unet, name)
        for target, path in LORA_TARGETS.items():
            linear = attn.get_submodule(path)
            state[f"{n}.{target}_lora.down.weight"] = torch.randn(rank, linear.in_features, generator=gen) * 0.05
            state[f"{n}.{target}_lora.up.weight"] = torch.randn(linear.out_features, rank, generator=gen) * 0.05
    return state
