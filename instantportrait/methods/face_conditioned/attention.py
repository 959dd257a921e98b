"""UNet attention processors that add IP-Adapter attention to the face tokens (shared by InstantID and IP-Control).

We use our own :class:`IPAttnProcessor` rather than diffusers' ``IPAdapterAttnProcessor2_0``: the latter keeps the IP
scale on the module, a per-request value stored on shared state, while ours receives the face tokens and the scale
per call through ``cross_attention_kwargs`` (``ip_hidden_states``, ``ip_scale``). The maths is the same.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


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
