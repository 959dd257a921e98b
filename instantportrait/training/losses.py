"""Every training loss of IDE-Net and IPNet, each a pure function of tensors returning ``(loss, logs)``.

``loss`` is a scalar tensor (un-weighted: the trainer applies the weights), ``logs`` a small dict of detached python
floats. Every loss is a mean over its elements or samples (none is a sum), so a weight of 1 means the same for
each. Models enter only as arguments (an embedding callable, a frozen teacher UNet, a feature extractor), so this
module imports no face or CLIP code and holds no state.

Conventions: pixels are RGB in [-1, 1] (what ``InstantPortraitPipeline.decode_latents`` returns) unless a function
says otherwise; latents are *scaled* (``vae_latent * scaling_factor``) and source/image latents *unscaled*, as in
InstructPix2Pix; keypoints are insightface's 5 points (left eye, right eye, nose, left and right mouth corners) in
pixel coordinates (x, y) of the image they go with.

Contents:
    identity   arcface_align, identity_loss, annealing_identity_weight, constant_identity_weight
    adversarial hinge_d_loss, hinge_g_loss, nonsaturating_d_loss, nonsaturating_g_loss, UNetFeatureDiscriminator
    distillation distillation_loss (l2 / l1 / LPIPS-like perceptual), sds_loss
    style      triplet_loss, face_region_crop
    diffusion  epsilon_loss
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from instantportrait.face.keypoints import ARCFACE_SIZE, ARCFACE_TEMPLATE_112
from instantportrait.training.inversion import guided_model_output, resolve_alphas_cumprod, split_prediction

Logs = dict[str, float]
EmbedFn = Callable[[torch.Tensor], torch.Tensor]
FeatureFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]

DISTILL_SPACES = ("latent", "pixel")
DISTILL_KINDS = ("l2", "l1", "perceptual", "l2+perceptual")
SDS_WEIGHTINGS = ("sds", "uniform")


def _f(x: torch.Tensor) -> float:
    return float(x.detach().float().mean())


# ==================================================================================================== alignment
def arcface_template(size: int = ARCFACE_SIZE, *, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ArcFace 5-point template for a ``size`` crop, (5, 2), scaled exactly as insightface's ``estimate_norm``.

    ``size`` must be a multiple of 112 (scaled template) or of 128 (scaled, shifted right by 8 * size / 128).
    """
    if size % 112 == 0:
        ratio, shift = size / 112.0, 0.0
    elif size % 128 == 0:
        ratio, shift = size / 128.0, 8.0 * size / 128.0
    else:
        raise ValueError(f"ArcFace crop size must be a multiple of 112 or 128, got {size}")
    dst = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64) * ratio  # (5, 2)
    dst[:, 0] += shift
    return dst.to(device=device, dtype=dtype)


def similarity_transform(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping ``src`` onto ``dst``.

    ``src``: (B, N, 2); ``dst``: (B, N, 2) or (N, 2). Returns (B, 2, 3) matrices ``[[a, -b, tx], [b, a, ty]]`` acting
    on (x, y, 1), the same transform as Umeyama's estimate (skimage ``SimilarityTransform.estimate``, used by
    insightface's ``estimate_norm``). In 2-D the problem is linear in (a, b, tx, ty), so the optimum is closed form:
    with centred points, ``a = Σ x·y / Σ|x|²`` and ``b = Σ x×y / Σ|x|²``. Differentiable in both arguments.
    """
    src64 = src.double()  # (B, N, 2)
    dst64 = dst.to(src64).expand_as(src64)  # (B, N, 2)
    mu_s, mu_d = src64.mean(1, keepdim=True), dst64.mean(1, keepdim=True)  # (B, 1, 2)
    xs, yd = src64 - mu_s, dst64 - mu_d  # (B, N, 2)
    norm = (xs**2).sum((1, 2)).clamp_min(1e-12)  # (B,)
    a = (xs * yd).sum((1, 2)) / norm  # (B,)
    b = (xs[..., 0] * yd[..., 1] - xs[..., 1] * yd[..., 0]).sum(1) / norm  # (B,)
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # (B, 2, 2)
    trans = mu_d.squeeze(1) - (rot @ mu_s.transpose(1, 2)).squeeze(-1)  # (B, 2)
    return torch.cat([rot, trans.unsqueeze(-1)], dim=-1).to(src.dtype)  # (B, 2, 3)


def _pixel_to_normalised(width: int, height: int, ref: torch.Tensor) -> torch.Tensor:
    """3x3 map from pixel coordinates (centres at integers) to ``grid_sample``'s align_corners=False space."""
    return torch.tensor([[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0],
                         [0.0, 0.0, 1.0]], dtype=ref.dtype, device=ref.device)


def warp_affine(pixels: torch.Tensor, matrix: torch.Tensor, out_size: tuple[int, int], *, fill: float = 0.0,
                mode: str = "bilinear") -> torch.Tensor:
    """Differentiable ``cv2.warpAffine(img, M, (w, h), borderValue=fill)`` for a batch.

    ``pixels``: (B, C, H, W); ``matrix``: (B, 2, 3) mapping *source* pixel coordinates to *output* pixel coordinates
    (cv2's convention, pixel centres at integer coordinates); ``out_size``: (height, width). Outside the source image
    the output is ``fill``, blended bilinearly at the border as cv2 does. Gradients reach ``pixels`` and ``matrix``.
    """
    b, c, h, w = pixels.shape
    ho, wo = out_size
    m = matrix.double()
    full = torch.cat([m, torch.tensor([0.0, 0.0, 1.0], dtype=m.dtype, device=m.device).expand(b, 1, 3)], 1)  # (B,3,3)
    # normalised output coords -> output pixels -> source pixels (inverse warp) -> normalised source coords
    theta = _pixel_to_normalised(w, h, m) @ torch.linalg.inv(full) @ torch.linalg.inv(_pixel_to_normalised(wo, ho, m))
    grid = F.affine_grid(theta[:, :2].to(pixels.dtype), [b, c, ho, wo], align_corners=False)  # (B, ho, wo, 2)
    out = F.grid_sample(pixels - fill, grid, mode=mode, padding_mode="zeros", align_corners=False)  # (B, C, ho, wo)
    return out + fill


def arcface_align(pixels: torch.Tensor, src_kps: torch.Tensor, *, size: int = ARCFACE_SIZE,
                  fill: float = -1.0) -> torch.Tensor:
    """Warp faces to the standard ArcFace crop, differentiably: (B, 3, H, W) -> (B, 3, size, size).

    The similarity transform is the least-squares fit of ``src_kps`` (B, 5, 2, pixel coordinates of ``pixels``)
    onto insightface's ``arcface_dst`` template (``similarity_transform``); the warp is bilinear ``grid_sample``,
    numerically the same as insightface's ``norm_crop`` (skimage estimate + ``cv2.warpAffine``). The warp is linear,
    so any pixel range works: ``fill`` is the value outside the image, default -1.0 = black for pixels in [-1, 1]
    (what ``norm_crop`` pads with); pass 0.0 for pixels in [0, 1].
    """
    if src_kps.shape[-2:] != (5, 2) or src_kps.shape[0] != pixels.shape[0]:
        raise ValueError(f"src_kps must be (B, 5, 2) with B = {pixels.shape[0]}, got {tuple(src_kps.shape)}")
    matrix = similarity_transform(src_kps.float(), arcface_template(size, device=pixels.device))  # (B, 2, 3)
    return warp_affine(pixels, matrix, (size, size), fill=fill)  # (B, 3, size, size)


# ==================================================================================================== identity
def identity_loss(pred_pixels: torch.Tensor, source: torch.Tensor, src_kps: torch.Tensor, embed_fn: EmbedFn, *,
                  weights: torch.Tensor | None = None, fill: float = -1.0) -> tuple[torch.Tensor, Logs]:
    """``mean_b w_b (1 - cos(e(align(pred_b)), e_src_b))``: the identity loss (``L_aid`` / ``L_cid`` by weight).

    Args:
        pred_pixels: (B, 3, H, W) RGB in [-1, 1], the decoded prediction (x̂0 of the teacher or the student output).
        source: either the source identity embeddings (B, D), or the source pixels (B, 3, H', W') in [-1, 1], which
            are aligned with the same ``src_kps`` and embedded without gradient.
        src_kps: (B, 5, 2) the *source's* landmarks in pixel coordinates of ``pred_pixels`` (the edit keeps the
            layout, so the source's landmarks place the crop on the prediction; rescale them if sizes differ).
        embed_fn: aligned (B, 3, 112, 112) RGB in [-1, 1] -> (B, D), e.g. ``arcface.DifferentiableArcFace``.
        weights: optional per-sample weights (B,), e.g. ``annealing_identity_weight`` of each sample's timestep.
    Identical prediction and source give 0. Gradients reach ``pred_pixels`` only.
    """
    aligned = arcface_align(pred_pixels, src_kps, fill=fill)  # (B, 3, 112, 112)
    pred_emb = embed_fn(aligned)  # (B, D)
    if source.ndim == 4:
        with torch.no_grad():
            src_emb = embed_fn(arcface_align(source.to(pred_pixels.dtype), src_kps, fill=fill))  # (B, D)
    elif source.ndim == 2:
        src_emb = source
    else:
        raise ValueError(f"source must be embeddings (B, D) or pixels (B, 3, H, W), got shape {tuple(source.shape)}")
    cos = F.cosine_similarity(pred_emb.float(), src_emb.detach().float().to(pred_emb.device), dim=-1)  # (B,)
    per_sample = 1.0 - cos  # (B,)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    loss = per_sample.mean()
    return loss, {"id_loss": _f(loss), "id_cos": _f(cos)}



def subset_identity_loss(decode: Callable[[torch.Tensor], torch.Tensor], sel: torch.Tensor, batch_size: int,
                         source: torch.Tensor, src_kps: torch.Tensor, embed_fn: EmbedFn, *,
                         weights: torch.Tensor | None = None, zero: torch.Tensor) -> tuple[torch.Tensor, Logs]:
    """The identity term over the samples ``sel`` (n,) of a batch of ``batch_size``: those with a face (and, for
    IDE-Net, a weight worth the decode). ``decode(sel)`` gives their predicted pixels (n, 3, H, W), so nothing is
    decoded when ``sel`` is empty. The mean over the subset is scaled by n / B, so the term is a mean over the whole
    batch (samples without a face contribute 0), as every other term is. Returns ``(loss, logs)`` with ``id_loss``
    and, when any sample counted, ``id_cos``; ``zero`` gives the empty case its device and dtype."""
    logs: Logs = {}
    if sel.numel() > 0:
        loss, id_logs = identity_loss(decode(sel), source[sel].float(), src_kps[sel].float(), embed_fn,
                                      weights=None if weights is None else weights[sel])
        loss = loss * (sel.numel() / batch_size)
        logs["id_cos"] = id_logs["id_cos"]
    else:
        loss = zero.new_zeros(())
    logs["id_loss"] = float(loss.detach())
    return loss, logs

def annealing_identity_weight(timesteps: torch.Tensor, alphas_cumprod: Any, *, base: float = 1.0,
                              power: float = 1.0, step: int | None = None, ramp_steps: int = 0) -> torch.Tensor:
    """``L_aid``'s per-sample weight ``base * ᾱ_t^power * ramp(step)``, (B,) float32 in [0, base].

    Small where x̂0 is a blur (large t, ᾱ → 0), close to ``base`` near the data (small t, ᾱ → 1); monotone
    decreasing in t for a decreasing ᾱ schedule. ``ramp(step) = min(1, step / ramp_steps)`` when ``ramp_steps > 0``
    and ``step`` is given (a linear warm-up of the identity term over training), else 1.
    """
    alphas = resolve_alphas_cumprod(alphas_cumprod).to(timesteps.device)
    w = base * alphas[timesteps.long()].clamp(0.0, 1.0) ** power  # (B,)
    if ramp_steps > 0 and step is not None:
        w = w * min(1.0, max(0.0, step / ramp_steps))
    return w.float()


def constant_identity_weight(timesteps: torch.Tensor, base: float = 1.0) -> torch.Tensor:
    """``L_cid``'s weight (the ablation): ``base`` for every sample, (B,) float32."""
    return torch.full(timesteps.shape[:1], float(base), dtype=torch.float32, device=timesteps.device)


# ==================================================================================================== adversarial
def _d_logs(real_logits: torch.Tensor, fake_logits: torch.Tensor, loss: torch.Tensor) -> Logs:
    return {"d_loss": _f(loss), "d_real_logit": _f(real_logits), "d_fake_logit": _f(fake_logits),
            "d_acc": 0.5 * (_f((real_logits > 0).float()) + _f((fake_logits < 0).float()))}


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, Logs]:
    """Discriminator hinge loss ``E[relu(1 - D(real))] + E[relu(1 + D(fake))]``; logits (B,)."""
    loss = F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()
    return loss, _d_logs(real_logits, fake_logits, loss)


def hinge_g_loss(fake_logits: torch.Tensor) -> tuple[torch.Tensor, Logs]:
    """Generator hinge loss ``-E[D(fake)]``; logits (B,)."""
    loss = -fake_logits.float().mean()
    return loss, {"g_loss": _f(loss), "g_fake_logit": _f(fake_logits)}


def nonsaturating_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, Logs]:
    """Discriminator logistic loss ``E[softplus(-D(real))] + E[softplus(D(fake))]``; logits (B,)."""
    loss = F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()
    return loss, _d_logs(real_logits, fake_logits, loss)


def nonsaturating_g_loss(fake_logits: torch.Tensor) -> tuple[torch.Tensor, Logs]:
    """Non-saturating generator loss ``E[softplus(-D(fake))]`` (= -log sigmoid D(fake)); logits (B,)."""
    loss = F.softplus(-fake_logits.float()).mean()
    return loss, {"g_loss": _f(loss), "g_fake_logit": _f(fake_logits)}


def unet_encoder_features(unet: Any, sample: torch.Tensor, timesteps: torch.Tensor,
                          encoder_hidden_states: torch.Tensor,
                          added_cond_kwargs: dict[str, torch.Tensor] | None = None,
                          class_labels: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The outputs of every down block and of the mid block of a diffusers ``UNet2DConditionModel``.

    Mirrors ``UNet2DConditionModel.forward`` steps 0-4 (centre input, time/class/addition embeddings,
    ``process_encoder_hidden_states``, ``conv_in``, down blocks, mid block) and stops before the up blocks, so the
    features are exactly those of the full forward at half the cost. ``sample``: the UNet's full input (B, C_in, h, w)
    (for InstructPix2Pix ``[z_t ‖ image_latents]``); ``timesteps``: (B,). Not wrapped in ``no_grad``: gradients flow
    to ``sample`` (and to the UNet's parameters unless they are frozen).
    """
    added_cond_kwargs = added_cond_kwargs or {}
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timesteps), None)  # (B, E)
    class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
    if unet.config.addition_embed_type == "image_hint":
        raise NotImplementedError("image_hint addition embeddings are not supported by the feature discriminator")
    aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                 added_cond_kwargs=added_cond_kwargs)
    if aug_emb is not None:
        emb = emb + aug_emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    encoder_hidden_states = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                               added_cond_kwargs=added_cond_kwargs)
    h = unet.conv_in(sample)  # (B, C0, h, w)
    feats: list[torch.Tensor] = []
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states)
        else:
            h, _ = block(hidden_states=h, temb=emb)
        feats.append(h)  # (B, C_i, h_i, w_i)
    if unet.mid_block is not None:
        if getattr(unet.mid_block, "has_cross_attention", False):
            h = unet.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
        else:
            h = unet.mid_block(h, emb)
        feats.append(h)  # (B, C_last, h_last, w_last)
    return feats


class _FeatureHead(nn.Module):
    """conv3x3 → GroupNorm → LeakyReLU → conv3x3 → LeakyReLU → global mean → linear, plus a text projection term."""

    def __init__(self, in_channels: int, hidden: int, text_dim: int | None):
        super().__init__()
        groups = 8 if hidden % 8 == 0 else 1
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.GroupNorm(groups, hidden), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.LeakyReLU(0.2),
        )
        self.out = nn.Linear(hidden, 1)
        self.text_proj = nn.Linear(text_dim, hidden) if text_dim else None

    def forward(self, feat: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        h = self.body(feat).mean(dim=(2, 3))  # (B, hidden)
        logit = self.out(h).squeeze(-1)  # (B,)
        if self.text_proj is not None and text is not None:
            logit = logit + (h * self.text_proj(text)).sum(-1) / h.shape[-1] ** 0.5  # projection discriminator
        return logit


class UNetFeatureDiscriminator(nn.Module):
    """``L_adv``'s default discriminator: light trainable heads on a FROZEN teacher UNet's encoder features.

    ``forward(latents, source_latents, prompt_embeds, timesteps, noise) -> logits (B,)`` re-noises the clean scaled
    ``latents`` to ``z_t = √ᾱ_t latents + √(1-ᾱ_t) noise`` at the given ``timesteps`` (B,), runs the teacher's
    ``conv_in``, down blocks and mid block on ``[z_t ‖ source_latents]`` with the text (as in LADD / DMD2), and
    averages one logit per feature level (``_FeatureHead``: two 3x3 convs, global pool, linear, plus a projection
    term with the token-mean text embedding). Any ``nn.Module`` with this forward signature can replace it.

    The teacher is *referenced, not owned*: it is not a registered submodule, so ``parameters()``, ``state_dict()``
    and ``.to()`` see only the heads (an optimizer over ``disc.parameters()`` trains the heads only, checkpoints hold
    only the heads). Its parameters are set ``requires_grad_(False)`` here and never receive gradients, while
    gradients flow through it to ``latents`` so the generator learns through the discriminator.

    Args:
        teacher_unet: an InstructPix2Pix-format ``UNet2DConditionModel`` (frozen in place).
        alphas_cumprod: ᾱ schedule (tensor, scheduler or scheduler config).
        hidden: head width. levels: indices of the feature levels to use (default all: each down block + mid).
        text_conditioning: add the projection term on the text embedding.
    """

    def __init__(self, teacher_unet: Any, alphas_cumprod: Any, *, hidden: int = 64,
                 levels: Sequence[int] | None = None, text_conditioning: bool = True):
        super().__init__()
        teacher_unet.requires_grad_(False)
        object.__setattr__(self, "teacher", teacher_unet)  # not registered: see the class docstring
        self.register_buffer("alphas_cumprod", resolve_alphas_cumprod(alphas_cumprod).clone(), persistent=False)
        blocks = tuple(teacher_unet.config.block_out_channels)
        channels = list(blocks) + ([blocks[-1]] if teacher_unet.mid_block is not None else [])
        self.levels = tuple(range(len(channels))) if levels is None else tuple(int(i) for i in levels)
        if not self.levels or any(not 0 <= i < len(channels) for i in self.levels):
            raise ValueError(f"levels must index the {len(channels)} feature levels, got {levels}")
        text_dim = teacher_unet.config.cross_attention_dim if text_conditioning else None
        if isinstance(text_dim, (list, tuple)):
            text_dim = text_dim[0]
        self.heads = nn.ModuleList(_FeatureHead(channels[i], hidden, text_dim) for i in self.levels)

    def teacher_features(self, latents: torch.Tensor, source_latents: torch.Tensor, prompt_embeds: torch.Tensor,
                         timesteps: torch.Tensor, noise: torch.Tensor,
                         added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The teacher's encoder features of the re-noised input, float32, one per selected level."""
        a = self.alphas_cumprod.to(latents.device)[timesteps.long()].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        z_t = a.sqrt() * latents.float() + (1 - a).sqrt() * noise.float()  # (B, 4, h, w)
        dtype = self.teacher.dtype
        model_in = torch.cat([z_t, source_latents.float()], dim=1).to(dtype)  # (B, 8, h, w)
        feats = unet_encoder_features(self.teacher, model_in, timesteps.to(latents.device), prompt_embeds.to(dtype),
                                      added_cond_kwargs)
        return [feats[i].float() for i in self.levels]

    def forward(self, latents: torch.Tensor, source_latents: torch.Tensor, prompt_embeds: torch.Tensor,
                timesteps: torch.Tensor, noise: torch.Tensor,
                added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        feats = self.teacher_features(latents, source_latents, prompt_embeds, timesteps, noise, added_cond_kwargs)
        text = prompt_embeds.float().mean(dim=1)  # (B, D)
        logits = [head(f, text) for head, f in zip(self.heads, feats)]  # L x (B,)
        return torch.stack(logits, 0).mean(0)  # (B,)


# ==================================================================================================== distillation
def lpips_like_distance(feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor],
                        eps: float = 1e-10) -> torch.Tensor:
    """LPIPS-*like* distance, (B,): Σ_levels mean_hw ‖n(f_a) − n(f_b)‖²_channels with channel-unit-normalised features.

    This is LPIPS's formula with unit channel weights and *any* feature extractor; it is not LPIPS (no learned
    linear heads, no VGG/AlexNet calibration), so its values are not comparable to published LPIPS numbers.
    """
    total = 0.0
    for fa, fb in zip(feats_a, feats_b, strict=True):
        na = fa.float() / (fa.float().pow(2).sum(1, keepdim=True).sqrt() + eps)  # (B, C, h, w)
        nb = fb.float() / (fb.float().pow(2).sum(1, keepdim=True).sqrt() + eps)  # (B, C, h, w)
        total = total + (na - nb).pow(2).sum(1).mean(dim=(1, 2))  # (B,)
    return total


def vae_encoder_feature_fn(vae: Any) -> FeatureFn:
    """A perceptual feature extractor from an ``AutoencoderKL``'s encoder: pixels in [-1, 1] -> list of maps.

    Returns the outputs of ``encoder.conv_in``, each down block and the mid block. The VAE is used as given: freeze
    it (``vae.requires_grad_(False)``) if it should not train.
    """
    encoder = vae.encoder

    def features(pixels: torch.Tensor) -> list[torch.Tensor]:
        h = encoder.conv_in(pixels.to(vae.dtype))  # (B, C0, H, W)
        feats = [h]
        for block in encoder.down_blocks:
            h = block(h)
            feats.append(h)
        if getattr(encoder, "mid_block", None) is not None:
            feats.append(encoder.mid_block(h))
        return feats

    return features


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, *, space: str = "latent", kind: str = "l2",
                      perceptual_fn: FeatureFn | None = None,
                      perceptual_weight: float = 1.0) -> tuple[torch.Tensor, Logs]:
    """``L_distill``: regress the student's output onto the teacher's multi-step output (a target: detached).

    Args:
        student, teacher: (B, C, H, W), scaled latents (``space="latent"``, the default) or pixels in [-1, 1]
            (``space="pixel"``, 3 channels); ``space`` is checked and names the logs.
        kind: ``"l2"`` (mean squared error), ``"l1"``, ``"perceptual"`` (``lpips_like_distance`` on
            ``perceptual_fn`` features, batch mean) or ``"l2+perceptual"`` (l2 + ``perceptual_weight`` * perceptual).
        perceptual_fn: input -> list of feature maps (e.g. ``vae_encoder_feature_fn(vae)`` for pixels); its
            teacher-side features are computed without gradient.
    """
    if space not in DISTILL_SPACES:
        raise ValueError(f"space must be one of {DISTILL_SPACES}, got {space!r}")
    if kind not in DISTILL_KINDS:
        raise ValueError(f"kind must be one of {DISTILL_KINDS}, got {kind!r}")
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} shapes differ")
    if space == "pixel" and student.shape[1] != 3:
        raise ValueError(f"pixel-space distillation expects (B, 3, H, W) pixels, got {tuple(student.shape)}")
    target = teacher.detach()
    logs: Logs = {}
    loss = student.new_zeros((), dtype=torch.float32)
    if kind in ("l2", "l2+perceptual"):
        l2 = F.mse_loss(student.float(), target.float())
        logs[f"distill_{space}_l2"] = _f(l2)
        loss = loss + l2
    if kind == "l1":
        l1 = F.l1_loss(student.float(), target.float())
        logs[f"distill_{space}_l1"] = _f(l1)
        loss = loss + l1
    if kind in ("perceptual", "l2+perceptual"):
        if perceptual_fn is None:
            raise ValueError(f"kind={kind!r} needs `perceptual_fn` (input -> list of feature maps)")
        with torch.no_grad():
            feats_t = perceptual_fn(target)
        perc = lpips_like_distance(perceptual_fn(student), feats_t).mean()
        logs[f"distill_{space}_perceptual"] = _f(perc)
        loss = loss + (perceptual_weight if kind == "l2+perceptual" else 1.0) * perc
    logs["distill_loss"] = _f(loss)
    return loss, logs


def box_weight_map(boxes: torch.Tensor, image_size: tuple[int, int], map_size: tuple[int, int], weight: float, *,
                   expand: float = 1.0) -> torch.Tensor:
    """(B, 1, h, w) per-position weights: ``weight`` where a position of the ``map_size`` grid (e.g. latents) falls
    inside the sample's box (scaled by ``expand`` about its centre), 1 elsewhere.

    Args:
        boxes: (B, 4) ``x0, y0, x1, y1`` in pixels of an ``image_size`` (H, W) image.
    """
    (hi, wi), (h, w) = image_size, map_size
    centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2 * expand  # (B, 2) each
    boxes = torch.cat([centre - half, centre + half], dim=1)  # (B, 4)
    ys = (torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5) * (hi / h)  # (h,) pixel centre rows
    xs = (torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5) * (wi / w)  # (w,)
    b = boxes.float()
    inside_y = (ys[None, :] >= b[:, 1:2]) & (ys[None, :] < b[:, 3:4])  # (B, h)
    inside_x = (xs[None, :] >= b[:, 0:1]) & (xs[None, :] < b[:, 2:3])  # (B, w)
    inside = inside_y[:, :, None] & inside_x[:, None, :]  # (B, h, w)
    return torch.where(inside, float(weight), 1.0)[:, None]  # (B, 1, h, w)


def paired_regression_loss(student: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, Logs]:
    """``L_pair`` (ours, not the paper's): weighted mean squared error of the student's output against the pair's own
    target, ``Σ w·(s − t)² / (C · Σ w)``; with no ``weight_map`` the plain MSE.

    Args:
        student, target: (B, C, h, w) scaled latents; ``target`` is detached.
        weight_map: (B, 1, h, w) non-negative weights (e.g. :func:`box_weight_map` around the face).
    """
    if student.shape != target.shape:
        raise ValueError(f"student {tuple(student.shape)} and target {tuple(target.shape)} shapes differ")
    err = (student.float() - target.detach().float()) ** 2  # (B, C, h, w)
    if weight_map is None:
        loss = err.mean()
    else:
        if weight_map.shape != (err.shape[0], 1, *err.shape[2:]):
            raise ValueError(f"weight_map must be {(err.shape[0], 1, *err.shape[2:])}, got {tuple(weight_map.shape)}")
        w = weight_map.float()
        loss = (err * w).sum() / (w.sum() * err.shape[1])
    return loss, {"pair_loss": _f(loss)}


def sds_loss(student_latents: torch.Tensor, source_latents: torch.Tensor, prompt_embeds: torch.Tensor,
             uncond_prompt_embeds: torch.Tensor | None, teacher_unet: Any, alphas_cumprod: Any,
             timesteps: torch.Tensor, noise: torch.Tensor, *, text_guidance: float = 7.5, image_guidance: float = 1.5,
             prediction_type: str = "epsilon", weighting: str | torch.Tensor = "sds") -> tuple[torch.Tensor, Logs]:
    """``L_sds``: score distillation with the frozen teacher as the score (the ablation of ``L_distill``).

    z_t = √ᾱ x + √(1-ᾱ) ε for the student's clean scaled latents x (B, C, h, w) at ``timesteps`` (B,) with ``noise``;
    ε̂ = the teacher's InstructPix2Pix 3-way-CFG prediction on ``[z_t ‖ source_latents]`` (``guided_model_output``:
    diffusers' ordering [text+img, ∅+img, ∅+∅] and formula; v-predictions are converted to ε). With
    ``grad = w(t) (ε̂ − ε)`` the loss is ``0.5 mean((x − sg(x − grad))²)``, so ``∂loss/∂x = grad / x.numel()``: the
    SDS gradient, mean-reduced like every other term here (a sum would outweigh a mean L2 by ~C·h·w/2 per element,
    so a weight of 1 would not mean the same as for ``L_distill``). ``weighting``: ``"sds"`` w = 1 − ᾱ_t
    (DreamFusion), ``"uniform"`` w = 1, or a (B,) tensor. The teacher runs under ``no_grad`` and gets no gradient.
    The logged value is not a divergence; ``sds_grad_norm`` is the per-sample norm of ``grad`` (before the mean).
    """
    alphas = resolve_alphas_cumprod(alphas_cumprod).to(student_latents.device)
    a = alphas[timesteps.long()].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    if isinstance(weighting, torch.Tensor):
        w = weighting.float().to(a.device).view(-1, 1, 1, 1)
    elif weighting == "sds":
        w = 1.0 - a
    elif weighting == "uniform":
        w = torch.ones_like(a)
    else:
        raise ValueError(f"weighting must be one of {SDS_WEIGHTINGS} or a (B,) tensor, got {weighting!r}")
    x = student_latents.float()  # (B, C, h, w)
    with torch.no_grad():
        z_t = a.sqrt() * x + (1 - a).sqrt() * noise.float()  # (B, C, h, w)
        out = guided_model_output(teacher_unet, z_t, timesteps, source_latents, prompt_embeds, uncond_prompt_embeds,
                                  text_guidance=text_guidance, image_guidance=image_guidance)  # (B, C, h, w)
        eps_hat = split_prediction(out, z_t, a, prediction_type)[1]  # (B, C, h, w)
        grad = torch.nan_to_num(w * (eps_hat - noise.float()))  # (B, C, h, w)
        target = x - grad
    loss = 0.5 * (x - target).pow(2).mean()
    return loss, {"sds_loss": _f(loss), "sds_grad_norm": _f(grad.flatten(1).norm(dim=1))}


# ==================================================================================================== style
def triplet_loss(anchor_feats: torch.Tensor, positive_feats: torch.Tensor, negative_feats: torch.Tensor, *,
                 margin: float = 0.2, distance: str = "cosine") -> tuple[torch.Tensor, Logs]:
    """``L_triplet`` (Facial-Style Enhancing loss, our reading): ``mean relu(d(a, p) − d(a, n) + margin)``.

    anchor = student output features, positive = teacher output features, negative = unedited source features,
    each (B, D). Positive and negative are targets (detached). ``distance``: ``"cosine"`` (1 − cos) or ``"l2"``
    (Euclidean norm, as ``nn.TripletMarginLoss``). Zero once the anchor is ``margin`` closer to the positive.
    """
    p, n = positive_feats.detach().float(), negative_feats.detach().float()
    a = anchor_feats.float()
    if distance == "cosine":
        d_pos, d_neg = 1 - F.cosine_similarity(a, p, dim=-1), 1 - F.cosine_similarity(a, n, dim=-1)  # (B,)
    elif distance == "l2":
        d_pos, d_neg = (a - p).norm(dim=-1), (a - n).norm(dim=-1)  # (B,)
    else:
        raise ValueError(f"distance must be 'cosine' or 'l2', got {distance!r}")
    per_sample = F.relu(d_pos - d_neg + margin)  # (B,)
    loss = per_sample.mean()
    return loss, {"triplet_loss": _f(loss), "triplet_d_pos": _f(d_pos), "triplet_d_neg": _f(d_neg),
                  "triplet_active": _f((per_sample > 0).float())}


def face_region_crop(pixels: torch.Tensor, bboxes: torch.Tensor, size: int | tuple[int, int], *,
                     expand: float = 1.0, square: bool = True) -> torch.Tensor:
    """Differentiable crop-and-resize of face boxes: (B, C, H, W) -> (B, C, size, size), via torchvision roi_align.

    ``bboxes``: (B, 4) ``x1, y1, x2, y2`` in pixel coordinates (insightface's ``face.bbox``); each box is scaled by
    ``expand`` about its centre and, with ``square``, grown to a square of its longer side. Each output pixel
    averages the box's input pixels under it (area-like, so downscaling does not alias); regions outside the image
    read 0. Feed the result to a feature function (e.g. CLIP image features) for ``triplet_loss``.
    """
    from torchvision.ops import roi_align

    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    boxes = bboxes.to(device=pixels.device, dtype=torch.float32)  # (B, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # (B, 2)
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * expand  # (B, 2)
    if square:
        half = half.max(dim=1, keepdim=True).values.expand(-1, 2)
    rois = torch.cat([torch.arange(len(boxes), device=pixels.device, dtype=torch.float32)[:, None],
                      centre - half, centre + half], dim=1)  # (B, 5)
    out = roi_align(pixels.float(), rois, out_hw, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return out.to(pixels.dtype)  # (B, C, size, size)


# ==================================================================================================== diffusion
def epsilon_loss(model_output: torch.Tensor, target: torch.Tensor, *,
                 weights: torch.Tensor | None = None) -> tuple[torch.Tensor, Logs]:
    """IDE-Net's diffusion loss: mean squared error between the UNet output and its target (ε, or v), float32.

    ``weights`` (B,) optionally weight each sample's mean error (e.g. min-SNR); default plain MSE.
    """
    per_sample = (model_output.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    loss = per_sample.mean()
    return loss, {"eps_loss": _f(loss)}
