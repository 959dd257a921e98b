"""Face embedding -> identity tokens, in the released key layouts: InstantID's perceiver :class:`Resampler`
(``image_proj.*`` of ``ip-adapter.bin``) and IP-Adapter FaceID's MLP :class:`FaceIDProjection`
(``image_proj.*`` of ``ip-adapter-faceid_sd15.bin``). Both load with ``strict=True``; their sizes are read off the
state dict, so a release of another size loads without a config."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


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


@dataclass(frozen=True)
class FaceIDProjectionConfig:
    embedding_dim: int = 512
    hidden_dim: int = 1024
    cross_attention_dim: int = 768
    num_tokens: int = 4


class FaceIDProjection(nn.Module):
    """IP-Adapter FaceID's image projection: (B, 512) embedding -> (B, num_tokens, cross_attention_dim).

    Keys: ``proj.0`` (Linear), ``proj.2`` (Linear), ``norm`` (LayerNorm over each token)."""

    def __init__(self, config: FaceIDProjectionConfig = FaceIDProjectionConfig()) -> None:
        super().__init__()
        c = self.config = config
        self.proj = nn.Sequential(nn.Linear(c.embedding_dim, c.hidden_dim), nn.GELU(),
                                  nn.Linear(c.hidden_dim, c.cross_attention_dim * c.num_tokens))
        self.norm = nn.LayerNorm(c.cross_attention_dim)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> FaceIDProjection:
        try:
            hidden, emb = state["proj.0.weight"].shape
            out = state["proj.2.weight"].shape[0]
            cross = state["norm.weight"].shape[0]
        except KeyError as exc:
            raise ValueError(f"not an IP-Adapter FaceID projection (missing {exc}); keys: {sorted(state)[:6]}. "
                             "FaceID-Plus checkpoints are not supported") from exc
        if out % cross:
            raise ValueError(f"FaceID projection output {out} is not a multiple of its token width {cross}")
        return cls(FaceIDProjectionConfig(emb, hidden, cross, out // cross))

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = self.proj(embeds)  # (B, T * D)
        return self.norm(x.reshape(-1, c.num_tokens, c.cross_attention_dim))  # (B, T, D)


__all__ = ["FaceIDProjection", "FaceIDProjectionConfig", "PerceiverAttention", "Resampler", "ResamplerConfig"]
