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

Release layout and key mapping (``ip-adapter.bin``, a torch pickle of ``{"image_proj": {...}, "ip_adapter": {...}}``
read with ``torch.load(weights_only=True)``; a flat ``image_proj.*`` / ``ip_adapter.*`` dict or safetensors file is
also accepted):

* ``image_proj.<k>`` -> :class:`Resampler` parameter ``<k>``, loaded with ``strict=True``: ``latents`` (1, 16, 1280),
  ``proj_in`` (1280 x 512), ``layers.<i>.0.{norm1,norm2,to_q,to_kv,to_out}`` (PerceiverAttention),
  ``layers.<i>.1.{0,1,3}`` (FeedForward: LayerNorm, Linear, GELU, Linear), ``proj_out`` (2048 x 1280), ``norm_out``.
* ``ip_adapter.<N>.to_{k,v}_ip.weight`` -> the IP projections of the UNet attention processor at position ``N`` of
  ``unet.attn_processors`` (diffusers' order: down blocks, up blocks, mid block; within a transformer block ``attn1``
  then ``attn2``). Self-attention processors have no weights, so the released keys are the odd ``N`` = 1, 3, ..., 139
  (70 cross-attentions in SDXL). This is the numbering InstantID's own loader (a ``ModuleList`` over
  ``attn_processors.values()``) and diffusers' ``_convert_ip_adapter_attn_to_diffusers`` (``key_id`` 1, += 2) use.

We use our own attention processor (:class:`IPAttnProcessor`) rather than diffusers' ``IPAdapterAttnProcessor2_0``:
the latter keeps the IP scale on the module, a per-request value stored on shared state, while ours receives the face
tokens and the scale per call through ``cross_attention_kwargs`` (``ip_hidden_states``, ``ip_scale``). The maths is
the same.

Defaults follow the release's ``infer.py``: 30 steps, guidance 5, ControlNet scale 0.8, IP-Adapter scale 0.8, SDXL's
own scheduler (Euler), 1024-class resolution, keypoint radius 10 / stick width 4 px.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn

from instantportrait.config import ModelSpec, resolve_model
from instantportrait.errors import ModelNotAvailableError
from instantportrait.face.keypoints import draw_face_keypoints, template_keypoints
from instantportrait.hub import cached_snapshot, hub_reachable, locate, offline_requested
from instantportrait.methods.base import Editor, EditSettings, ProgressFn
from instantportrait.methods.registry import register

# --------------------------------------------------------------------------------------------------------------------
# Face projection: the perceiver resampler (512-d face embedding -> N tokens), in the release's key layout.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResamplerConfig:
    """Sizes of the perceiver resampler. Defaults: InstantID's (1280 wide, 4 layers, 20 x 64 heads, 16 tokens)."""

    dim: int = 1280
    depth: int = 4
    dim_head: int = 64
    heads: int = 20
    num_queries: int = 16
    embedding_dim: int = 512
    output_dim: int = 2048
    ff_mult: int = 4

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], dim_head: int = 64) -> ResamplerConfig:
        """Sizes read off a released state dict (``dim_head`` cannot be read: heads x dim_head is one matrix)."""
        try:
            dim, embedding_dim = state["proj_in.weight"].shape
            output_dim = state["proj_out.weight"].shape[0]
            num_queries = state["latents"].shape[1]
            depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
            inner = state["layers.0.0.to_q.weight"].shape[0]
            ff_inner = state["layers.0.1.1.weight"].shape[0]
        except (KeyError, ValueError) as exc:
            raise ValueError(f"not a perceiver-resampler state dict (missing {exc}); keys start with "
                             f"{sorted(state)[:5]}") from exc
        if inner % dim_head or ff_inner % dim:
            raise ValueError(f"resampler inner width {inner} is not a multiple of dim_head={dim_head}, or its "
                             f"feed-forward width {ff_inner} not a multiple of dim={dim}")
        return cls(dim=dim, depth=depth, dim_head=dim_head, heads=inner // dim_head, num_queries=num_queries,
                   embedding_dim=embedding_dim, output_dim=output_dim, ff_mult=ff_inner // dim)


class PerceiverAttention(nn.Module):
    """Latent queries attend to (image features ‖ latents). Keys: norm1, norm2, to_q, to_kv, to_out."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)  # (B, n_in, dim)
        latents = self.norm2(latents)  # (B, n_q, dim)
        b, n_q, _ = latents.shape
        q = self.to_q(latents)  # (B, n_q, inner)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)  # (B, n_in + n_q, inner) each

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], self.heads, self.dim_head).transpose(1, 2)  # (B, h, n, d)

        # softmax in float32, as the release does for fp16 stability
        weights = (heads(q) @ heads(k).transpose(-2, -1)).float() / math.sqrt(self.dim_head)  # (B, h, n_q, n)
        out = weights.softmax(dim=-1).to(v.dtype) @ heads(v)  # (B, h, n_q, d)
        return self.to_out(out.transpose(1, 2).reshape(b, n_q, -1))  # (B, n_q, dim)


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    """Keys 0 (LayerNorm), 1 (Linear, no bias), 3 (Linear, no bias); 2 is the GELU."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class Resampler(nn.Module):
    """Perceiver resampler: a (B, n, embedding_dim) embedding -> (B, num_queries, output_dim) tokens."""

    def __init__(self, config: ResamplerConfig = ResamplerConfig()) -> None:
        super().__init__()
        c = self.config = config
        self.latents = nn.Parameter(torch.randn(1, c.num_queries, c.dim) / c.dim ** 0.5)
        self.proj_in = nn.Linear(c.embedding_dim, c.dim)
        self.proj_out = nn.Linear(c.dim, c.output_dim)
        self.norm_out = nn.LayerNorm(c.output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(c.dim, c.dim_head, c.heads), _feed_forward(c.dim, c.ff_mult)])
            for _ in range(c.depth))

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        if embeds.ndim == 2:
            embeds = embeds[:, None]  # (B, 1, embedding_dim)
        x = self.proj_in(embeds)  # (B, n, dim)
        latents = self.latents.expand(x.shape[0], -1, -1)  # (B, n_q, dim)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))  # (B, n_q, output_dim)


# --------------------------------------------------------------------------------------------------------------------
# IP-Adapter attention processors and the released "ip_adapter.<N>" key mapping (shared with IP-Control).
# --------------------------------------------------------------------------------------------------------------------


class SelfAttnProcessor(nn.Module):
    """diffusers' scaled-dot-product attention; accepts (and ignores) the IP arguments every processor receives."""

    def __init__(self) -> None:
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0

        self._inner = AttnProcessor2_0()

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 ip_hidden_states: torch.Tensor | None = None, ip_scale: float = 1.0) -> torch.Tensor:
        return self._inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class IPAttnProcessor(nn.Module):
    """Cross-attention to the text plus ``ip_scale`` x attention (same queries) to the IP tokens.

    Parameters ``to_k_ip`` / ``to_v_ip`` map the IP tokens (cross-attention width) to the layer's inner width.
    The tokens and the scale arrive per call as ``cross_attention_kwargs`` (``ip_hidden_states``, ``ip_scale``);
    without tokens the layer is plain cross-attention.
    """

    def __init__(self, inner_dim: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, inner_dim, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, inner_dim, bias=False)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 ip_hidden_states: torch.Tensor | None = None, ip_scale: float = 1.0) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states  # (B, L, D)
        batch = hidden_states.shape[0]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query = attn.to_q(hidden_states)  # (B, N, inner)
        inner = query.shape[-1]
        head_dim = inner // attn.heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, n, d)

        q = heads(query)
        k, v = heads(attn.to_k(context)), heads(attn.to_v(context))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)  # (B, h, N, d)
        if ip_hidden_states is not None and ip_scale != 0:
            ip_k = heads(self.to_k_ip(ip_hidden_states.to(query.dtype)))  # (B, h, T, d)
            ip_v = heads(self.to_v_ip(ip_hidden_states.to(query.dtype)))
            out = out + ip_scale * F.scaled_dot_product_attention(q, ip_k, ip_v)  # (B, h, N, d)
        out = out.transpose(1, 2).reshape(batch, -1, inner).to(query.dtype)  # (B, N, inner)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)  # (B, C, H, W)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


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


# --------------------------------------------------------------------------------------------------------------------
# Shared sampling pieces (text encoding, latents, the ControlNet + IP denoising loop, decoding).
# --------------------------------------------------------------------------------------------------------------------


def weights_variant(folder: Path) -> str | None:
    """``"fp16"`` when ``folder`` holds only ``*.fp16.*`` weight files (the layout our default download keeps)."""
    files = [p.name for p in folder.glob("*.safetensors")] + [p.name for p in folder.glob("*.bin")]
    return "fp16" if files and all(".fp16." in f for f in files) else None


def check_spec_available(spec: ModelSpec) -> None:
    """Present locally or downloadable now; else :class:`ModelNotAvailableError` within seconds (no download)."""
    if Path(spec.repo_id).expanduser().exists() or cached_snapshot(spec) is not None:
        return
    if offline_requested() or not hub_reachable():
        locate(spec)  # not cached and no Hub: raises ModelNotAvailableError naming the model and how to get it


def encode_clip_prompts(tokenizers: Sequence[Any], text_encoders: Sequence[nn.Module], prompts: list[str],
                        device: torch.device, *, penultimate: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenated per-token embeddings of each (tokenizer, encoder) and the last encoder's pooled projection.

    SDXL: ``penultimate=True`` (hidden_states[-2] of both encoders, pooled ``text_embeds`` of the second); SD1.5:
    one encoder, ``penultimate=False`` (last hidden state), no pooled output.
    """
    embeds, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)  # (B, 77)
        out = encoder(ids, output_hidden_states=penultimate)
        embeds.append(out.hidden_states[-2] if penultimate else out.last_hidden_state)  # (B, 77, D_i)
        pooled = getattr(out, "text_embeds", None)  # (B, P) for CLIPTextModelWithProjection
    return torch.cat(embeds, dim=-1), pooled  # (B, 77, sum D_i), (B, P) | None


def initial_latents(generators: list[torch.Generator], shape: tuple[int, ...], sigma: float,
                    device: torch.device) -> torch.Tensor:
    """One noise sample per generator (CPU, float32), so a sample's noise depends only on its seed."""
    noise = [torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators]  # (1, C, h, w) each
    return torch.cat(noise).to(device) * sigma  # (B, C, h, w)


def control_tensor(images: list[PIL.Image.Image], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """RGB condition images -> (B, 3, H, W) in [0, 1], the range diffusers' ControlNets take."""
    arr = np.stack([np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in images])  # (B, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).to(device=device, dtype=dtype)  # (B, 3, H, W)


@dataclass
class DenoiseInputs:
    """Everything one batch needs; ``*_cond`` / ``*_uncond`` halves are stacked for CFG inside the loop."""

    text_cond: torch.Tensor  # (B, L, D) UNet text context
    text_uncond: torch.Tensor  # (B, L, D)
    ip_cond: torch.Tensor  # (B, T, D) IP tokens
    ip_uncond: torch.Tensor  # (B, T, D)
    control_context_cond: torch.Tensor  # (B, L', D) ControlNet cross-attention context
    control_context_uncond: torch.Tensor
    control_image: torch.Tensor  # (B, 3, H, W) in [0, 1]
    added_cond: dict[str, torch.Tensor] | None = None  # SDXL: text_embeds / time_ids, already (2B, ...) under CFG


def controlnet_ip_denoise(*, unet: nn.Module, controlnet: nn.Module, scheduler: Any, latents: torch.Tensor,
                          inputs: DenoiseInputs, steps: int, guidance_scale: float, control_scale: float,
                          ip_scale: float, generators: list[torch.Generator],
                          progress: ProgressFn | None) -> torch.Tensor:
    """The sampling loop shared by InstantID and IP-Control: per step one ControlNet and one UNet evaluation on the
    (uncond ‖ cond) batch under CFG (``guidance_scale > 1``), else on the cond batch. Returns final latents (float32).
    """
    cfg = guidance_scale > 1.0
    dtype = next(unet.parameters()).dtype

    def both(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        return (torch.cat([uncond, cond]) if cfg else cond).to(dtype)

    text = both(inputs.text_cond, inputs.text_uncond)  # (2B, L, D)
    ip_tokens = both(inputs.ip_cond, inputs.ip_uncond)  # (2B, T, D)
    control_context = both(inputs.control_context_cond, inputs.control_context_uncond)
    control_image = both(inputs.control_image, inputs.control_image)  # (2B, 3, H, W)
    added = ({k: v.to(dtype) for k, v in inputs.added_cond.items()} if inputs.added_cond is not None else None)
    attn_kwargs = {"ip_hidden_states": ip_tokens, "ip_scale": float(ip_scale)}
    step_kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}

    scheduler.set_timesteps(steps, device=latents.device)
    for i, t in enumerate(scheduler.timesteps):
        model_in = torch.cat([latents, latents]) if cfg else latents  # (2B, 4, h, w)
        model_in = scheduler.scale_model_input(model_in, t).to(dtype)
        down, mid = controlnet(model_in, t, encoder_hidden_states=control_context, controlnet_cond=control_image,
                               conditioning_scale=float(control_scale), added_cond_kwargs=added, return_dict=False)
        noise = unet(model_in, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                     mid_block_additional_residual=mid, added_cond_kwargs=added, cross_attention_kwargs=attn_kwargs,
                     return_dict=False)[0].float()  # (2B, 4, h, w)
        if cfg:
            uncond, cond = noise.chunk(2)
            noise = uncond + guidance_scale * (cond - uncond)  # (B, 4, h, w)
        latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        if progress:
            progress(i + 1, steps)
    return latents


def decode_latents(vae: nn.Module, latents: torch.Tensor) -> list[PIL.Image.Image]:
    """VAE decode (in the VAE's dtype) -> RGB PIL images."""
    cfg = vae.config
    vae_dtype = next(vae.parameters()).dtype
    if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        mean = torch.tensor(cfg.latents_mean, device=latents.device).view(1, -1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=latents.device).view(1, -1, 1, 1)
        latents = latents * std / cfg.scaling_factor + mean
    else:
        latents = latents / cfg.scaling_factor
    images = vae.decode(latents.to(vae_dtype), return_dict=False)[0]  # (B, 3, H, W) in [-1, 1]
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [PIL.Image.fromarray(a) for a in arr]


def snap_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """(w, h) rounded to the nearest multiple (at least one multiple)."""
    return tuple(max(multiple, int(round(s / multiple)) * multiple) for s in size)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------------
# Architecture as code (random-weights latency mode; tiny releases for tests).
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SDXLArchitecture:
    """Configs of every network InstantID runs. :func:`sdxl_instantid_architecture` gives the released sizes."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]  # CLIPTextConfig kwargs (CLIP ViT-L/14 text tower)
    text_encoder_2: dict[str, Any]  # CLIPTextConfig kwargs (OpenCLIP ViT-bigG/14 text tower, with projection)
    resampler: ResamplerConfig
    scheduler: dict[str, Any]
    controlnet_conditioning_channels: tuple[int, ...] = (16, 32, 96, 256)


RANDOM_ARCH_ENV = "INSTANTPORTRAIT_RANDOM_ARCH"  # shared with instantportrait.models.architectures
SDXL_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "timestep_spacing": "leading",
                  "steps_offset": 1, "interpolation_type": "linear", "use_karras_sigmas": False}


def sdxl_instantid_architecture() -> SDXLArchitecture:
    """SDXL base 1.0 (UNet 2.6B, two CLIP text encoders, VAE) + InstantID's IdentityNet and resampler sizes."""
    return SDXLArchitecture(
        unet=dict(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, norm_num_groups=32,
        ),
        vae=dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
        ),
        text_encoder=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                          layer_norm_eps=1e-5, projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        text_encoder_2=dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                            num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
                            layer_norm_eps=1e-5, projection_dim=1280, bos_token_id=0, eos_token_id=2,
                            pad_token_id=1),
        resampler=ResamplerConfig(),
        scheduler=dict(SDXL_SCHEDULER),
    )


def tiny_sdxl_instantid_architecture(embedding_dim: int = 128) -> SDXLArchitecture:
    """The same architecture at a few hundred thousand parameters (tests): two UNet levels with 1 and 2 transformer
    blocks, two text encoders (16 + 16 = 32-d context), an 8x VAE, a 2-layer resampler with 2 heads of 16."""
    return SDXLArchitecture(
        unet=dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), cross_attention_dim=32,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 16, norm_num_groups=8,
        ),
        vae=dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.13025, force_upcast=True,
        ),
        text_encoder=dict(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                          projection_dim=16, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        text_encoder_2=dict(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
                            projection_dim=16, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        resampler=ResamplerConfig(dim=32, depth=2, dim_head=16, heads=2, num_queries=4, embedding_dim=embedding_dim,
                                  output_dim=32, ff_mult=2),
        scheduler=dict(SDXL_SCHEDULER),
        controlnet_conditioning_channels=(8, 8, 8, 16),
    )


# --------------------------------------------------------------------------------------------------------------------
# The editor.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstantIDConfig:
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

    def prompt_for(self, instruction: str) -> str:
        return self.prompt_template.format(instruction=instruction.strip().rstrip("."))


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


def unzero_controlnet(controlnet: nn.Module) -> nn.Module:
    """Random, signal-preserving weights for a fresh ControlNet's zero-initialised parts, so that a random (or tiny)
    ControlNet's condition image and context influence the UNet as a trained one's do (with the zeros a fresh
    ControlNet starts from, both would be ignored). For random-weights builds only; released weights replace them.

    The condition embedding (a stack of small convolutions) gets He-normal weights and zero biases: with PyTorch's
    default initialisation its output would shrink by orders of magnitude and the condition image would barely
    matter. The residual output convolutions get the default initialisation."""
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        conv.reset_parameters()
    return controlnet


def build_sdxl_networks(arch: SDXLArchitecture, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, nn.Module]:
    """Every InstantID network with random weights, built directly on ``device``."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)  # the caller's global RNG is left as it was
        unet = UNet2DConditionModel(**arch.unet)
        controlnet = unzero_controlnet(ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=arch.controlnet_conditioning_channels))
        vae = AutoencoderKL(**arch.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**arch.text_encoder))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**arch.text_encoder_2))
        resampler = Resampler(arch.resampler)
    nets = {"unet": unet, "controlnet": controlnet, "vae": vae, "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2, "resampler": resampler}
    return {k: m.to(dtype=dtype).eval() for k, m in nets.items()}


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


def write_clip_tokenizer_folder(folder: Path) -> Path:
    """A byte-level CLIP tokenizer saved as the SD/SDXL repos ship theirs (vocab.json, merges.txt, config)."""
    import json

    from instantportrait.tiny.diffusion import write_tiny_clip_tokenizer_files

    write_tiny_clip_tokenizer_files(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))
    return folder


def _vae_dtype(force_upcast: bool, dtype: torch.dtype) -> torch.dtype:
    # SDXL's VAE overflows in fp16 (its config says force_upcast): keep it in float32 then.
    return torch.float32 if dtype == torch.float16 and force_upcast else dtype


def random_architecture_name(editor: Editor) -> str:
    """``"tiny"`` or ``"real"`` for a random-weights build: the editor's ``random_architecture`` attribute (set by
    the benchmark runner for every method), else ``$INSTANTPORTRAIT_RANDOM_ARCH``; ``"tiny"`` picks test-size
    networks, any other name (e.g. the SD1.5 editors' ``"sd15-ip2p"``) this method's real architecture."""
    name = getattr(editor, "random_architecture", None) or os.environ.get(RANDOM_ARCH_ENV, "").strip()
    return "tiny" if name == "tiny" else "real"


class FaceConditionedEditor(Editor):
    """What InstantID and IP-Control share: a base model + an adapter release, a face pack, and sampling settings
    (steps, text guidance, ControlNet and IP-Adapter scales, prompt) read from ``EditSettings`` over a config."""

    base_key: str
    random_architecture: str | None = None  # see random_architecture_name()
    config: Any

    def spec(self) -> ModelSpec:
        return resolve_model(self.model_key, self.model_override)

    def base_spec(self) -> ModelSpec:
        return resolve_model(self.base_key, self.base_override)

    def face_encoder(self) -> Any:
        from instantportrait.face.encoder import FaceEncoder

        return FaceEncoder(self.config.face_pack, root=self.config.face_root, device=str(self.device))

    def _check_face_pack(self) -> None:
        from instantportrait.face.encoder import check_pack_folder

        enc = self.face_encoder()
        check_pack_folder(enc.spec, enc.folder)

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

    def _sample(self, loaded: Any, inputs: DenoiseInputs, scheduler: Any, seed: int | list[int],
                size: tuple[int, int], s: dict[str, Any], progress: Any,
                work_size: tuple[int, int]) -> list[PIL.Image.Image]:
        """Noise -> ControlNet + IP-Adapter denoising -> decoded images at ``work_size`` (``size``: sampling w, h)."""
        w, h = size
        generators = self.generators(len(inputs.text_cond), seed)
        vae_factor = 2 ** (len(loaded.vae.config.block_out_channels) - 1)
        latents = initial_latents(generators, (loaded.unet.config.in_channels, h // vae_factor, w // vae_factor),
                                  float(scheduler.init_noise_sigma), inputs.text_cond.device)
        latents = controlnet_ip_denoise(
            unet=loaded.unet, controlnet=loaded.controlnet, scheduler=scheduler, latents=latents, inputs=inputs,
            steps=s["steps"], guidance_scale=s["guidance_scale"], control_scale=s["control_scale"],
            ip_scale=s["ip_scale"], generators=generators, progress=progress)
        out = decode_latents(loaded.vae, latents)
        return [img.resize(work_size, PIL.Image.Resampling.LANCZOS) if img.size != work_size else img for img in out]


@register
class InstantIDEditor(FaceConditionedEditor):
    name = "instantid"
    label = "InstantID"
    description = ("InstantID (Wang et al. 2024): SDXL + IdentityNet ControlNet on face keypoints + IP-Adapter face "
                   "tokens; text-to-image with the instruction as a caption.")
    model_key = "instantid"
    base_key = "sdxl-base"

    def __init__(self, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 model: str | None = None, resolution: int | None = 1024, base_model: str | None = None,
                 config: InstantIDConfig | None = None) -> None:
        super().__init__(device=device, dtype=dtype, model=model, resolution=resolution)
        self.base_override = base_model
        self.config = config or InstantIDConfig()
        self._random = False

    # ----------------------------------------------------------------- models
    def check_available(self) -> None:
        """Face pack, InstantID release and SDXL base all present (or downloadable now); else a fast
        ``ModelNotAvailableError`` naming the missing one."""
        self._check_face_pack()
        check_spec_available(self.spec())
        check_spec_available(self.base_spec())

    def _load(self) -> InstantIDModels:
        from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

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
        for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
            if not (base / sub).is_dir():
                raise ModelNotAvailableError(f"Model {self.base_spec().describe()} at {base} has no {sub}/ folder: "
                                             "expected the SDXL diffusers layout.")
        dt, dev = self.dtype, self.device

        def pretrained(cls: Any, sub: str, dtype: torch.dtype = dt) -> Any:
            return cls.from_pretrained(base, subfolder=sub, variant=weights_variant(base / sub), dtype=dtype).eval()

        unet = pretrained(UNet2DConditionModel, "unet")
        vae_cfg = AutoencoderKL.load_config(base, subfolder="vae")
        vae = pretrained(AutoencoderKL, "vae", _vae_dtype(bool(vae_cfg.get("force_upcast", True)), dt))
        text_encoder = pretrained(CLIPTextModel, "text_encoder")
        text_encoder_2 = pretrained(CLIPTextModelWithProjection, "text_encoder_2")
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
        tokenizer_2 = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2")
        controlnet = ControlNetModel.from_pretrained(control_dir, variant=weights_variant(control_dir),
                                                     dtype=dt).eval()
        scheduler_class, scheduler_config = self._scheduler(base)

        proj_state, ip_state = read_ip_adapter(ip_file)
        resampler = Resampler(ResamplerConfig.from_state_dict(proj_state, self.config.resampler_dim_head))
        resampler.load_state_dict(proj_state, strict=True)
        install_ip_adapter(unet, group_ip_adapter_layers(unet, ip_state))
        self._check_dims(unet, controlnet, resampler)
        return InstantIDModels(
            unet=unet.to(dev, dt), controlnet=controlnet.to(dev), vae=vae.to(dev), text_encoder=text_encoder.to(dev),
            text_encoder_2=text_encoder_2.to(dev), tokenizer=tokenizer, tokenizer_2=tokenizer_2,
            resampler=resampler.to(dev, dt).eval(), scheduler_class=scheduler_class,
            scheduler_config=scheduler_config, face=face, embedding_dim=resampler.config.embedding_dim)

    @staticmethod
    def _scheduler(base: Path) -> tuple[type, dict[str, Any]]:
        import json

        import diffusers

        config = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
        cls = getattr(diffusers, config.get("_class_name", "EulerDiscreteScheduler"), None)
        if cls is None:
            raise ValueError(f"unknown scheduler class {config.get('_class_name')!r} in {base}/scheduler")
        return cls, dict(config)

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
        arch = self.config.architecture or (
            tiny_sdxl_instantid_architecture(512) if random_architecture_name(self) == "tiny"
            else sdxl_instantid_architecture())
        nets = build_sdxl_networks(arch, self.device, self.dtype)
        nets["vae"] = nets["vae"].to(_vae_dtype(bool(nets["vae"].config.force_upcast), self.dtype))
        install_ip_adapter(nets["unet"], group_ip_adapter_layers(nets["unet"], random_ip_adapter_state(nets["unet"])))
        nets["unet"].to(self.device, self.dtype)
        from diffusers import EulerDiscreteScheduler

        from instantportrait.models.architectures import (  # byte-level BPE, special tokens at the real ids
            random_weights_tokenizer,
        )

        tokenizer = random_weights_tokenizer(arch.text_encoder["vocab_size"])

        self._random = True
        return InstantIDModels(
            unet=nets["unet"], controlnet=nets["controlnet"], vae=nets["vae"], text_encoder=nets["text_encoder"],
            text_encoder_2=nets["text_encoder_2"], tokenizer=tokenizer, tokenizer_2=tokenizer,
            resampler=nets["resampler"], scheduler_class=EulerDiscreteScheduler,
            scheduler_config=dict(arch.scheduler), face=None, embedding_dim=arch.resampler.embedding_dim)

    def _modules(self, loaded: InstantIDModels) -> list[nn.Module]:
        return [loaded.unet, loaded.controlnet, loaded.vae, loaded.text_encoder, loaded.text_encoder_2,
                loaded.resampler]

    # ----------------------------------------------------------------- facts
    def describe(self) -> dict[str, Any]:
        c = self.config
        info = {**super().describe(), "controlnet_evaluations": self.nfe(),
                "model": self.spec().repo_id, "revision": self.spec().revision,
                "base_model": self.base_spec().repo_id, "base_revision": self.base_spec().revision,
                "face_pack": str(c.face_pack), "face_embedding": "normalised" if c.normalize_face_embedding else "raw",
                "steps": c.num_inference_steps, "guidance_scale": c.guidance_scale,
                "controlnet_conditioning_scale": c.controlnet_conditioning_scale,
                "ip_adapter_scale": c.ip_adapter_scale, "prompt_template": c.prompt_template,
                "negative_prompt": c.negative_prompt}
        if self._random and self.is_loaded:
            info["random_weights"] = True
            info["random_architecture"] = "custom" if c.architecture else random_architecture_name(self)
            info["face_analysis"] = "skipped (random weights: template keypoints, random embedding; not timed)"
        return info

    # ----------------------------------------------------------------- editing
    def _faces(self, loaded: InstantIDModels, images: list[PIL.Image.Image],
               seed: int | list[int]) -> tuple[torch.Tensor, list[np.ndarray]]:
        """(B, D) face embeddings and (5, 2) keypoints per image; ``NoFaceError`` names the image without a face."""
        if loaded.face is None:  # random-weights mode; raw ArcFace embeddings have norms of about 20
            emb = torch.stack([torch.randn(loaded.embedding_dim, generator=g) * 20.0
                               for g in self.generators(len(images), seed)])  # (B, D)
            return emb, [template_keypoints(img.size) for img in images]
        embeds, kps = [], []
        for i, img in enumerate(images):
            what = "source image" if len(images) == 1 else f"source image {i}"
            face = loaded.face.encode(img, what=f"{what} (InstantID needs a face for identity and keypoints)")
            vec = face.embedding if self.config.normalize_face_embedding else face.embedding * face.embedding_norm
            embeds.append(torch.from_numpy(np.asarray(vec, dtype=np.float32)))
            kps.append(face.kps)
        emb = torch.stack(embeds)  # (B, D)
        if emb.shape[1] != loaded.embedding_dim:
            raise ValueError(f"face pack {self.config.face_pack!r} gives {emb.shape[1]}-d embeddings but the "
                             f"IP-Adapter expects {loaded.embedding_dim}-d (InstantID uses antelopev2, 512-d)")
        return emb, kps

    @torch.no_grad()
    def _edit(self, loaded: InstantIDModels, images: list[PIL.Image.Image], instructions: list[str],
              seed: int | list[int],
              settings: EditSettings, progress: ProgressFn | None) -> list[PIL.Image.Image]:
        s = self._settings(settings)
        work_size = images[0].size
        size = snap_size(work_size, self.config.size_multiple)
        images = [img.resize(size, PIL.Image.Resampling.LANCZOS) if img.size != size else img for img in images]
        dev, dt = self.device, self.dtype
        n = len(images)

        emb, kps = self._faces(loaded, images, seed)
        kps_images = [draw_face_keypoints(size, k, radius=self.config.kps_radius,
                                          stick_width=self.config.kps_stick_width) for k in kps]
        prompts = [s["prompt"] or self.config.prompt_for(text) for text in instructions]
        encoders = (loaded.text_encoder, loaded.text_encoder_2)
        tokenizers = (loaded.tokenizer, loaded.tokenizer_2)
        text, pooled = encode_clip_prompts(tokenizers, encoders, prompts, dev, penultimate=True)  # (B, 77, D)
        if s["negative_prompt"]:
            neg, neg_pooled = encode_clip_prompts(tokenizers, encoders, [s["negative_prompt"]] * n, dev,
                                                  penultimate=True)
        else:  # SDXL's force_zeros_for_empty_prompt
            neg, neg_pooled = torch.zeros_like(text), torch.zeros_like(pooled)
        tokens = loaded.resampler(emb.to(dev, dt)[:, None])  # (B, T, D)
        null_tokens = loaded.resampler(torch.zeros_like(emb).to(dev, dt)[:, None])  # (B, T, D)

        w, h = size
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32, device=dev).repeat(n, 1)  # (B, 6)
        cfg = s["guidance_scale"] > 1.0
        added = {"text_embeds": torch.cat([neg_pooled, pooled]) if cfg else pooled,
                 "time_ids": torch.cat([time_ids, time_ids]) if cfg else time_ids}
        inputs = DenoiseInputs(
            text_cond=text, text_uncond=neg, ip_cond=tokens, ip_uncond=null_tokens,
            control_context_cond=tokens, control_context_uncond=null_tokens,
            control_image=control_tensor(kps_images, dev, loaded.controlnet.dtype), added_cond=added)
        scheduler = loaded.scheduler_class.from_config(loaded.scheduler_config)  # fresh: schedulers keep step state
        return self._sample(loaded, inputs, scheduler, seed, (w, h), s, progress, work_size)


# --------------------------------------------------------------------------------------------------------------------
# Tiny release in the real on-disk layout (tests and offline demos; random weights, never a model).
# --------------------------------------------------------------------------------------------------------------------


def save_tiny_instantid(folder: str | Path, *, embedding_dim: int = 128,
                        seed: int = 0) -> tuple[Path, Path, SDXLArchitecture]:
    """Write ``folder/sdxl-base`` (SDXL diffusers layout, ``*.fp16.safetensors`` as our default download keeps) and
    ``folder/instantid`` (``ControlNetModel/`` + ``ip-adapter.bin``, a nested dict pickled with ``torch.save`` as
    released). Returns ``(base_path, release_path, architecture)``."""
    from diffusers import EulerDiscreteScheduler

    folder = Path(folder)
    arch = tiny_sdxl_instantid_architecture(embedding_dim)
    nets = build_sdxl_networks(arch, "cpu", torch.float32, seed)
    base, release = folder / "sdxl-base", folder / "instantid"
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2"):
        nets[sub].to(torch.float16).save_pretrained(base / sub, variant="fp16", safe_serialization=True)
    for sub in ("tokenizer", "tokenizer_2"):  # vocab.json + merges.txt + tokenizer_config.json, as released
        write_clip_tokenizer_folder(base / sub)
    EulerDiscreteScheduler(**arch.scheduler).save_pretrained(base / "scheduler")
    nets["controlnet"].save_pretrained(release / "ControlNetModel", safe_serialization=True)
    state = {"image_proj": nets["resampler"].state_dict(),
             "ip_adapter": random_ip_adapter_state(nets["unet"], seed)}
    torch.save(state, release / "ip-adapter.bin")
    return base, release, arch


__all__ = [
    "DenoiseInputs", "IPAttnProcessor", "InstantIDConfig", "InstantIDEditor", "InstantIDModels", "Resampler",
    "ResamplerConfig", "SDXLArchitecture", "SelfAttnProcessor", "build_sdxl_networks", "controlnet_ip_denoise",
    "decode_latents", "group_ip_adapter_layers", "install_ip_adapter", "read_ip_adapter",
    "save_tiny_instantid", "sdxl_instantid_architecture", "tiny_sdxl_instantid_architecture",
]
