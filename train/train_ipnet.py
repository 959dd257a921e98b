"""accelerate launch -m train.train_ipnet --config train/configs/ipnet_full.yaml --output-dir outputs/ipnet_full

Distil IDE-Net into IPNet, the one-step student (README "Training", step 4: "Diffusion Multi-Objective Distillation").

DMD2-style layout: one ``IPNetWrapper`` module holds the trainable student UNet, the frozen teacher UNet (IDE-Net),
the discriminator (its heads train; by default ``losses.UNetFeatureDiscriminator`` reading the frozen teacher's
encoder features), and the frozen VAE, text encoder and ArcFace. ``wrapper(batch, "generator" | "discriminator",
generator=...)`` returns ``(loss_dict, log_dict)``; this trainer applies the weights from the config:

* ``adv``      hinge (or non-saturating) generator loss through the discriminator on the re-noised student output;
* ``distill``  regression onto the teacher's multi-step edit (``inversion.teacher_target``; ``teacher_start``
  ddim-inversion | stochastic; ``distill_pairing`` shared | independent, see ``IPNetWrapper.starts``;
  ``inversion_prompt`` empty | instruction; ``distill_space`` latent | pixel; ``distill_kind`` l2 | l1 | ...);
* ``sds``      score distillation with the teacher's image/text-CFG score;
* ``triplet``  Facial-Style Enhancing triplet (anchor student, positive teacher, negative source) on face-region
  features: CLIP image features (``ClipScorer.image_features_differentiable``) when ``clip`` is configured, else
  pooled VAE-encoder features (the fallback; the run log says which);
* ``identity`` ``1 - cos`` of ArcFace embeddings of the student output and the source, aligned with the source's
  landmarks (samples without a face excluded);
* ``pair``     latent L2 onto the pair's own target, the data IDE-Net was fine-tuned on and the discriminator's "real"
  side, ``pair_face_weight`` times heavier on the (``face_crop_expand``-scaled) face box (not one of the paper's
  terms, default 0: the toy demo needs it because its small teacher's samples are further from the rendered targets
  than the unchanged source, BENCHMARKS.md §5).

The discriminator steps every iteration on (real target, detached student output); the student every
``gen_update_ratio`` iterations. Every term is a mean, so a weight of 1 means the same for each; every
``log_grad_norms_every`` steps the log holds each term's gradient norm on the student output (``grad_norm/<term>``).
2-step is inference-only (the pipeline's ``num_inference_steps=2``): ``two_step: true`` is refused. The teacher's
outputs are computed on the fly (keep ``teacher_steps`` small in tests).

The output folder is an ``InstantPortraitPipeline`` (safetensors, model card with the config, ``train_config.yaml``):
``get_editor("ipnet", model=output_dir)`` loads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from instantportrait.pipelines.ipnet import InstantPortraitPipeline, ipnet_from_instruct_pix2pix
from instantportrait.training.data import face_boxes
from instantportrait.training.inversion import normality_stats, teacher_target
from instantportrait.training.losses import (
    UNetFeatureDiscriminator,
    box_weight_map,
    distillation_loss,
    face_region_crop,
    hinge_d_loss,
    hinge_g_loss,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
    paired_regression_loss,
    sds_loss,
    subset_identity_loss,
    triplet_loss,
    vae_encoder_feature_fn,
)
from train.common import (
    encode_prompts,
    load_identity_model,
    make_clip_scorer,
    resolve_model_path,
    weight_dtype,
)
from train.config import CONFIG_FILE, IPNetConfig, config_to_dict, parse_config, save_config
from train.trainer import Trainer, TrainerParts, Turn, trainable

DISC_FILE = "discriminator.safetensors"
LOSS_TERMS = ("adv", "distill", "sds", "triplet", "identity", "pair")
FeatureFn = Callable[[torch.Tensor], torch.Tensor]

# ---------------------------------------------------------------------------------------------------- discriminators
DiscriminatorBuilder = Callable[[nn.Module, Any, IPNetConfig], nn.Module]
DISCRIMINATORS: dict[str, DiscriminatorBuilder] = {}


def register_discriminator(name: str) -> Callable[[DiscriminatorBuilder], DiscriminatorBuilder]:
    """Register ``builder(teacher_unet, scheduler, cfg) -> module`` under ``name``. The module's forward is
    ``(latents, source_latents, prompt_embeds, timesteps, noise) -> logits (B,)``; its ``state_dict`` must hold only
    what it trains (it is saved in checkpoints)."""

    def deco(builder: DiscriminatorBuilder) -> DiscriminatorBuilder:
        if name in DISCRIMINATORS:
            raise ValueError(f"discriminator {name!r} is already registered")
        DISCRIMINATORS[name] = builder
        return builder

    return deco


@register_discriminator("unet-feature")
def _unet_feature_discriminator(teacher_unet: nn.Module, scheduler: Any, cfg: IPNetConfig) -> nn.Module:
    return UNetFeatureDiscriminator(teacher_unet, scheduler, hidden=cfg.disc_hidden, levels=cfg.disc_levels)


def build_discriminator(teacher_unet: nn.Module, scheduler: Any, cfg: IPNetConfig) -> nn.Module:
    if cfg.discriminator not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator {cfg.discriminator!r}; registered: {', '.join(DISCRIMINATORS)}")
    return DISCRIMINATORS[cfg.discriminator](teacher_unet, scheduler, cfg)


# ---------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class IPNetLossSettings:
    """What the wrapper needs from the config (the wrapper never sees the whole config)."""

    weights: dict[str, float]  # active terms only
    two_step: bool
    two_step_weight: float
    adv_loss: str
    disc_t_range: tuple[int, int]
    teacher_start: str
    teacher_t_start: int
    teacher_steps: int
    inversion_steps: int | None
    teacher_text_guidance: float
    teacher_image_guidance: float
    distill_space: str
    distill_kind: str
    sds_t_range: tuple[int, int]
    sds_text_guidance: float
    sds_image_guidance: float
    sds_weighting: str
    triplet_margin: float
    triplet_distance: str
    face_crop_expand: float
    triplet_crop_size: int
    pair_face_weight: float = 1.0
    distill_pairing: str = "shared"  # shared | independent: see IPNetWrapper.starts
    inversion_prompt: str = "empty"  # empty | instruction: what DDIM inversion is conditioned on
    log_grad_norms_every: int = 50  # grad_norm/<term> every N generator steps; 0 = off

    def __post_init__(self) -> None:
        if self.two_step:
            raise ValueError("two_step: true is refused: 2-step is inference-only (the pipeline's "
                             "num_inference_steps=2 runs the one-step student on its own output, as the poster "
                             "presents it); training its second output toward the one-step teacher target worked "
                             "against the style boost. Set two_step: false.")

    @classmethod
    def from_config(cls, cfg: IPNetConfig, triplet_crop_size: int) -> IPNetLossSettings:
        """Each setting named like a config field is copied from it, so a new setting needs no line here; only the
        derived ones (active weights, timestep ranges, the crop size) are spelled out. A setting that is neither
        raises at once."""
        derived = {"weights": cfg.weights.active(), "disc_t_range": (cfg.disc_t_min, cfg.disc_t_max),
                   "sds_t_range": (cfg.sds_t_min, cfg.sds_t_max), "triplet_crop_size": triplet_crop_size}
        names = [f.name for f in fields(cls)]
        config_names = {f.name for f in fields(cfg)}
        unknown = [n for n in names if n not in derived and n not in config_names]
        if unknown:
            raise TypeError(f"IPNetLossSettings.{', '.join(unknown)}: neither an IPNetConfig field nor derived in "
                            "from_config")
        return cls(**{n: derived[n] if n in derived else getattr(cfg, n) for n in names})

    def uses(self, term: str) -> bool:
        return self.weights.get(term, 0.0) > 0

    def grad_norms_due(self, step: int | None) -> bool:
        """Whether generator step ``step`` logs per-term gradient norms (never without a step number)."""
        return step is not None and self.log_grad_norms_every > 0 and step % self.log_grad_norms_every == 0


def make_triplet_features(cfg: IPNetConfig, vae: nn.Module, device: torch.device) -> tuple[FeatureFn, int, str]:
    """``(features(pixels in [-1, 1]) -> (B, D), crop size, description)`` for the triplet loss.

    CLIP (``triplet_clip``, else ``clip``, configured and ``triplet_features`` auto|clip): L2-normalised CLIP image
    embeddings of the face crop. Fallback (``vae``, or auto without CLIP): the frozen VAE encoder's feature maps, each
    averaged over space and concatenated, then L2-normalised, on a crop of ``min(resolution, 224)`` pixels.
    """
    clip_name = cfg.triplet_clip or cfg.clip  # another CLIP than the evaluation's in the paper configs
    if cfg.triplet_features == "clip" or (cfg.triplet_features == "auto" and clip_name):
        scorer = make_clip_scorer(str(clip_name), device)

        def clip_features(pixels: torch.Tensor) -> torch.Tensor:
            return scorer.image_features_differentiable((pixels.float() + 1) / 2)  # (B, D)

        desc = f"CLIP image features of the face region ({scorer.variant or Path(str(clip_name)).name})"
        return clip_features, scorer.input_resolution, desc
    maps = vae_encoder_feature_fn(vae)

    def vae_features(pixels: torch.Tensor) -> torch.Tensor:
        pooled = [f.float().mean(dim=(2, 3)) for f in maps(pixels)]  # L x (B, C_l)
        return nn.functional.normalize(torch.cat(pooled, dim=1), dim=-1)  # (B, ΣC)

    why = "triplet_features: vae" if cfg.triplet_features == "vae" else "fallback: no CLIP configured"
    return vae_features, min(cfg.resolution, 224), f"pooled VAE-encoder features of the face region ({why})"


# ---------------------------------------------------------------------------------------------------- the wrapper
class IPNetWrapper(nn.Module):
    """Student, frozen teacher, discriminator, frozen VAE / text encoder / ArcFace in one module (DMD2 style).

    ``forward(batch, turn, generator, fake_latents=None) -> (loss_dict, log_dict)``:

    * ``turn="generator"``: the student's one-step output and the unweighted terms in ``settings.weights``
      (``adv``, ``distill``, ``sds``, ``triplet``, ``identity``, ``pair``), each a mean. With ``step`` a multiple of
      ``settings.log_grad_norms_every``, ``log_dict["grad_norm/<term>"]`` = ‖∂term/∂output‖ (unweighted; computed
      with ``torch.autograd.grad(..., retain_graph=True)``, so the trainer's backward still runs). Only the one-step
      output is trained: 2-step is inference-only (``IPNetLossSettings`` refuses ``two_step``).
      ``log_dict["disc_inputs"]`` holds detached tensors for the discriminator turn (the output and the batch's
      encodings, as DMD2 hands its generator's output to the guidance turn); every other log value is a float.
    * ``turn="discriminator"``: ``{"disc": loss}`` on the real targets and the student output from ``disc_inputs``
      (or, without it, a fresh gradient-free one).

    Every random draw comes from ``generator``. Only the student UNet and the discriminator's heads have trainable
    parameters.
    """

    def __init__(self, student: InstantPortraitPipeline, teacher_unet: nn.Module, discriminator: nn.Module | None,
                 arcface: nn.Module | None, triplet_features: FeatureFn | None, settings: IPNetLossSettings):
        super().__init__()
        self.student_unet = student.unet
        self.teacher_unet = teacher_unet.requires_grad_(False).eval()
        self.vae = student.vae.requires_grad_(False).eval()
        self.text_encoder = student.text_encoder.requires_grad_(False).eval()
        self.discriminator = discriminator
        self.arcface = arcface
        self.pipe = student  # not a module: its unet is `student_unet`
        self.triplet_features = triplet_features
        self.settings = settings
        self.prediction_type = student.scheduler.config.prediction_type
        if settings.uses("adv") and discriminator is None:
            raise ValueError("weights.adv > 0 needs a discriminator")
        if settings.uses("identity") and arcface is None:
            raise ValueError("weights.identity > 0 needs an identity model (ArcFace)")
        if settings.uses("triplet") and triplet_features is None:
            raise ValueError("weights.triplet > 0 needs a triplet feature function")

    def train(self, mode: bool = True) -> IPNetWrapper:
        """Only the student and the discriminator heads switch modes; frozen parts stay in eval."""
        self.training = mode
        self.student_unet.train(mode)
        if self.discriminator is not None:
            self.discriminator.train(mode)
        return self

    # ------------------------------------------------------------------ pieces
    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def encode(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Source latents (unscaled), target latents (scaled), prompt and empty-prompt embeddings."""
        vae, device = self.vae, batch["source"].device
        src_latents = vae.encode(batch["source"].to(vae.dtype)).latent_dist.mode().float()  # (B, 4, h, w)
        tgt_latents = vae.encode(batch["target"].to(vae.dtype)).latent_dist.mode().float() * self.scaling_factor
        tokenizer = self.pipe.tokenizer
        prompt = encode_prompts(tokenizer, self.text_encoder, list(batch["instruction"]), device)  # (B, L, D)
        uncond = encode_prompts(tokenizer, self.text_encoder, [""], device)  # (1, L, D)
        return {"src_latents": src_latents, "tgt_latents": tgt_latents, "prompt": prompt, "uncond": uncond}

    def student(self, source_latents: torch.Tensor, prompt: torch.Tensor, generator: torch.Generator | None,
                start: torch.Tensor | None = None) -> torch.Tensor:
        """The student's one-step output (scaled clean latents, float32), differentiable in its parameters, from
        ``start`` or, without it, from the pipeline's own start drawn from ``generator`` (what inference does)."""
        if start is None:
            start = self.pipe.start_latents(source_latents, generator)  # (B, 4, h, w)
        return self.pipe.predict_clean_latents(start, source_latents, prompt.to(self.student_unet.dtype))

    def _start_is_at_teacher_level(self) -> bool:
        """Whether the pipeline's start is a latent at the teacher's ``teacher_t_start``: the noised source at
        t* = teacher_t_start (``start="source"``), or pure noise with the teacher starting at the last timestep,
        where every sampler starts from ε (``start="noise"``)."""
        t_start, cfg = self.settings.teacher_t_start, self.pipe.config
        if cfg.start == "source":
            return t_start == int(cfg.timestep)
        return t_start == int(self.pipe.scheduler.config.num_train_timesteps) - 1

    @torch.no_grad()
    def starts(self, enc: dict[str, torch.Tensor], generator: torch.Generator | None) -> dict[str, Any]:
        """The student's start and what the teacher starts from (``distill_pairing``), one draw per batch.

        At inference the student sees ``pipe.start_latents`` (pure ε, or the source noised to t* with ε: see
        ``pipelines/ipnet.py``), so its training start is always built by that same method; what pairing changes is
        the teacher's start. ``{"student": z, "teacher": z or None, "noise": ε or None}``; None: the teacher finds
        its own (``teacher_target`` inverts, or draws ε from ``generator``).

        * ``independent``: the student's ε and the teacher's are separate draws (the ablation; with the stochastic
          start the target is an independent sample, and regressing onto it teaches the mean: a blur).
        * ``shared`` + ``stochastic``: one ε for both. When the pipeline's start is a latent at the teacher's level
          (``_start_is_at_teacher_level``) the teacher samples from the student's very start tensor; otherwise (e.g.
          the demo's student at t* = 300 from the noised source, teacher at 999) from the source noised to
          ``teacher_t_start`` with the same ε. Either way the target is a function of what the student sees.
        * ``shared`` + ``ddim-inversion``: the teacher starts from the source's DDIM inversion (empty instruction by
          default) and the student keeps the pipeline's start. Decision: starting the student from the inverted z_t
          would need the teacher and ``inversion_steps`` more network evaluations at inference to match training
          (the pipeline holds only the student); the inverted target is already a deterministic function of the
          source and the instruction, which the student sees, so there is no independent sample to average into a
          blur. ``normality_stats`` of the inverted starts are logged (``inversion_start/*``) to report how far they
          are from the N(0, I) the student gets.
        """
        s, src = self.settings, enc["src_latents"]
        if s.distill_pairing != "shared" or s.teacher_start != "stochastic" or not (
                s.uses("distill") or s.uses("triplet")):
            return {"student": self.pipe.start_latents(src, generator), "teacher": None, "noise": None}
        noise = randn_tensor(src.shape, generator=generator, device=src.device, dtype=torch.float32)  # (B, 4, h, w)
        student = self.pipe.start_latents(src, None, noise=noise)  # (B, 4, h, w)
        return {"student": student, "teacher": student if self._start_is_at_teacher_level() else None,
                "noise": noise}

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels in [-1, 1], float32 (differentiable through the frozen VAE decoder)."""
        return self.vae.decode((latents / self.scaling_factor).to(self.vae.dtype)).sample.float()

    def _rand_t(self, lo_hi: tuple[int, int], n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return torch.randint(lo_hi[0], lo_hi[1] + 1, (n,), generator=generator, device=device)

    def _disc_logits(self, latents: torch.Tensor, enc: dict[str, torch.Tensor], generator: torch.Generator
                     ) -> torch.Tensor:
        n, device = latents.shape[0], latents.device
        t = self._rand_t(self.settings.disc_t_range, n, generator, device)  # (B,)
        noise = torch.randn(latents.shape, generator=generator, device=device)  # (B, 4, h, w)
        return self.discriminator(latents, enc["src_latents"], enc["prompt"], t, noise)  # (B,)

    # ------------------------------------------------------------------ turns
    def forward(self, batch: dict[str, Any], turn: str, generator: torch.Generator,
                disc_inputs: dict[str, Any] | None = None, step: int | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if turn == "generator":
            return self.generator_turn(batch, generator, step)
        if turn == "discriminator":
            return self.discriminator_turn(batch, generator, disc_inputs)
        raise ValueError(f"turn must be 'generator' or 'discriminator', got {turn!r}")

    def generator_turn(self, batch: dict[str, Any], generator: torch.Generator, step: int | None = None
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        enc = self.encode(batch)
        starts = self.starts(enc, generator)
        x0 = self.student(enc["src_latents"], enc["prompt"], generator, start=starts["student"])  # (B, 4, h, w)
        ctx = self._targets(batch, enc, generator, starts)
        losses, logs = self._terms(x0, batch, enc, ctx, generator)
        if self.settings.grad_norms_due(step):
            logs.update(self.grad_norms(losses, x0))
        logs.update(ctx.get("logs", {}))
        logs["student_latent_std"] = float(x0.detach().std())
        logs["disc_inputs"] = {"fake_latents": x0.detach(), "enc": enc}
        return losses, logs

    @staticmethod
    def grad_norms(losses: dict[str, torch.Tensor], out: torch.Tensor) -> dict[str, float]:
        """``{"grad_norm/<term>": ‖∂term/∂out‖}`` for each unweighted term (its weight scales it linearly), so the
        terms' pulls on the student output can be compared; the graph is retained for the trainer's backward."""
        if not out.requires_grad:
            return {}
        norms: dict[str, float] = {}
        for k, v in losses.items():
            grad = torch.autograd.grad(v, out, retain_graph=True, allow_unused=True)[0] if v.requires_grad else None
            norms[f"grad_norm/{k}"] = 0.0 if grad is None else float(grad.float().norm())
        return norms

    @torch.no_grad()
    def _targets(self, batch: dict[str, Any], enc: dict[str, torch.Tensor], generator: torch.Generator | None,
                 starts: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the generator terms compare with, computed once per batch (no gradient); ``starts`` from
        :meth:`starts` (None: the teacher finds its own start)."""
        s = self.settings
        ctx: dict[str, Any] = {}
        if s.uses("distill") or s.uses("triplet"):
            starts = starts or {}
            b = enc["src_latents"].shape[0]
            inversion_prompt = enc["uncond"].expand(b, -1, -1) if s.inversion_prompt == "empty" else enc["prompt"]
            target = teacher_target(
                s.teacher_start, self.teacher_unet, self.pipe.scheduler, enc["src_latents"] * self.scaling_factor,
                enc["src_latents"], enc["prompt"], enc["uncond"], t_start=s.teacher_t_start, num_steps=s.teacher_steps,
                text_guidance=s.teacher_text_guidance, image_guidance=s.teacher_image_guidance,
                inversion_steps=s.inversion_steps, inversion_prompt_embeds=inversion_prompt,
                noise=starts.get("noise"), start=starts.get("teacher"), generator=generator,
                prediction_type=self.prediction_type)
            ctx["teacher_latents"], ctx["teacher_start"] = target.latents, target.start
            if s.teacher_start == "ddim-inversion":
                ctx["logs"] = {f"inversion_start/{k}": v for k, v in normality_stats(target.start).items()}
            if s.uses("triplet") or (s.uses("distill") and s.distill_space == "pixel"):
                ctx["teacher_pixels"] = self.decode(ctx["teacher_latents"])  # (B, 3, H, W)
        if s.uses("triplet"):
            size = batch["source"].shape[-2:]
            ctx["boxes"] = face_boxes(batch["source_bbox"].float(), batch["source_kps"].float(), size)  # (B, 4)
            ctx["pos_feats"] = self._face_features(ctx["teacher_pixels"], ctx["boxes"])  # (B, D)
            ctx["neg_feats"] = self._face_features(batch["source"].float(), ctx["boxes"])  # (B, D)
        return ctx

    def _face_features(self, pixels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        s = self.settings
        crops = face_region_crop(pixels, boxes, s.triplet_crop_size, expand=s.face_crop_expand)  # (B, 3, S, S)
        return self.triplet_features(crops)  # (B, D)

    def _terms(self, out: torch.Tensor, batch: dict[str, Any], enc: dict[str, torch.Tensor], ctx: dict[str, Any],
               generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The unweighted generator terms for one student output ``out`` (scaled latents)."""
        s = self.settings
        losses: dict[str, torch.Tensor] = {}
        logs: dict[str, Any] = {}
        b = out.shape[0]
        if s.uses("adv"):
            logits = self._disc_logits(out, enc, generator)  # (B,)
            losses["adv"], adv_logs = (hinge_g_loss if s.adv_loss == "hinge" else nonsaturating_g_loss)(logits)
            logs.update(adv_logs)
        needs_pixels = s.uses("identity") or s.uses("triplet") or (s.uses("distill") and s.distill_space == "pixel")
        pixels = self.decode(out) if needs_pixels else None  # (B, 3, H, W)
        if s.uses("distill"):
            if s.distill_space == "latent":
                losses["distill"], d_logs = distillation_loss(out, ctx["teacher_latents"], space="latent",
                                                              kind=s.distill_kind)
            else:
                losses["distill"], d_logs = distillation_loss(
                    pixels, ctx["teacher_pixels"], space="pixel", kind=s.distill_kind,
                    perceptual_fn=vae_encoder_feature_fn(self.vae))
            logs.update(d_logs)
        if s.uses("pair"):
            weight_map = None
            if s.pair_face_weight != 1.0:
                size = tuple(batch["source"].shape[-2:])
                boxes = face_boxes(batch["source_bbox"].float(), batch["source_kps"].float(), size)  # (B, 4)
                weight_map = box_weight_map(boxes, size, tuple(out.shape[-2:]), s.pair_face_weight,
                                            expand=s.face_crop_expand)  # (B, 1, h, w)
            losses["pair"], p_logs = paired_regression_loss(out, enc["tgt_latents"], weight_map)
            logs.update(p_logs)
        if s.uses("sds"):
            t = self._rand_t(s.sds_t_range, b, generator, out.device)  # (B,)
            noise = torch.randn(out.shape, generator=generator, device=out.device)  # (B, 4, h, w)
            losses["sds"], sds_logs = sds_loss(
                out, enc["src_latents"], enc["prompt"], enc["uncond"], self.teacher_unet, self.pipe.scheduler, t, noise,
                text_guidance=s.sds_text_guidance, image_guidance=s.sds_image_guidance,
                prediction_type=self.prediction_type, weighting=s.sds_weighting)
            logs.update(sds_logs)
        if s.uses("triplet"):
            anchor = self._face_features(pixels, ctx["boxes"])  # (B, D)
            losses["triplet"], t_logs = triplet_loss(anchor, ctx["pos_feats"], ctx["neg_feats"],
                                                     margin=s.triplet_margin, distance=s.triplet_distance)
            logs.update(t_logs)
        if s.uses("identity"):
            sel = torch.nonzero(batch["has_face"]).flatten()  # (n,)
            losses["identity"], id_logs = subset_identity_loss(lambda s: pixels[s], sel, b, batch["source"],
                                                               batch["source_kps"], self.arcface, zero=out)
            logs.update(id_logs)
        return losses, logs

    def discriminator_turn(self, batch: dict[str, Any], generator: torch.Generator,
                           disc_inputs: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self.discriminator is None:
            raise ValueError("this wrapper has no discriminator (weights.adv is 0)")
        if disc_inputs is not None:
            enc, fake_latents = disc_inputs["enc"], disc_inputs["fake_latents"]
        else:
            enc = self.encode(batch)
            with torch.no_grad():
                fake_latents = self.student(enc["src_latents"], enc["prompt"], generator)
        real_logits = self._disc_logits(enc["tgt_latents"], enc, generator)  # (B,)
        fake_logits = self._disc_logits(fake_latents.detach().float(), enc, generator)  # (B,)
        loss, logs = (hinge_d_loss if self.settings.adv_loss == "hinge" else nonsaturating_d_loss)(
            real_logits, fake_logits)
        return {"disc": loss}, logs


def weighted_total(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The trainer's weighting of the wrapper's generator terms: ``Σ_k weights[k] * losses[k]``."""
    missing = [k for k in weights if k not in losses]
    if missing:
        raise KeyError(f"the wrapper returned no {', '.join(missing)} term(s)")
    return sum(weights[k] * losses[k] for k in weights)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------- building
def build_wrapper(cfg: IPNetConfig, device: torch.device, frozen_dtype: torch.dtype = torch.float32
                  ) -> tuple[IPNetWrapper, Path, str]:
    """``(wrapper, student init path, triplet feature description)`` for ``cfg`` on ``device``."""
    from diffusers import UNet2DConditionModel

    teacher_path = resolve_model_path(cfg.model)
    init_path = resolve_model_path(cfg.student_init) if cfg.student_init else teacher_path
    student = ipnet_from_instruct_pix2pix(init_path, timestep=cfg.timestep, start=cfg.start)
    student.set_progress_bar_config(disable=True)
    factor = student.vae_scale_factor
    if cfg.resolution % factor:
        raise ValueError(f"resolution {cfg.resolution} must be a multiple of the VAE factor {factor}")
    teacher = UNet2DConditionModel.from_pretrained(teacher_path, subfolder="unet")
    if teacher.config.in_channels != student.unet.config.in_channels:
        raise ValueError(f"the teacher {teacher_path} is not an InstructPix2Pix-format UNet "
                         f"({teacher.config.in_channels} input channels)")
    wrapper, desc = assemble_wrapper(cfg, student, teacher, device, frozen_dtype)
    return wrapper, init_path, desc


def assemble_wrapper(cfg: IPNetConfig, student: InstantPortraitPipeline, teacher: nn.Module, device: torch.device,
                     frozen_dtype: torch.dtype, arcface: nn.Module | None = None,
                     features: tuple[FeatureFn | None, int, str] | None = None) -> tuple[IPNetWrapper, str]:
    """``(wrapper, triplet feature description)`` from loaded networks (what :func:`build_wrapper` does after
    loading; ``train.step_cost`` passes random-weight ones): place and freeze them, gradient checkpointing, the
    discriminator, then the identity model and the triplet features (``arcface`` / ``features``, as
    :func:`make_triplet_features` returns them, when given; else loaded as ``cfg`` says), the loss settings."""
    student.unet.to(device)
    for module in (teacher, student.vae, student.text_encoder):
        module.requires_grad_(False).eval().to(device)
        if frozen_dtype != torch.float32:
            module.to(dtype=frozen_dtype)
    if cfg.gradient_checkpointing:
        student.unet.enable_gradient_checkpointing()
        teacher.enable_gradient_checkpointing()  # the adversarial term backpropagates through its encoder
        student.vae.enable_gradient_checkpointing()
    disc = build_discriminator(teacher, student.scheduler, cfg).to(device) if cfg.uses_adversarial else None
    if arcface is None and cfg.weights.identity > 0:
        arcface = load_identity_model(cfg.identity_model, device)
    if features is None:
        features = (make_triplet_features(cfg, student.vae, device) if cfg.weights.triplet > 0
                    else (None, min(cfg.resolution, 224), "off"))
    settings = IPNetLossSettings.from_config(cfg, features[1])
    return IPNetWrapper(student, teacher, disc, arcface, features[0], settings), features[2]


def save_ipnet(student_unet: nn.Module, init_path: Path, cfg: IPNetConfig, out: Path,
               data_info: dict[str, Any]) -> Path:
    """Write the IPNet pipeline folder: the init model's other components (fresh, full precision) + the student."""
    pipe = ipnet_from_instruct_pix2pix(init_path, timestep=cfg.timestep, start=cfg.start)
    pipe.unet.load_state_dict({k: v.float() for k, v in student_unet.state_dict().items()})
    counts = data_info.get("counts", {})
    pipe.save_pretrained(out, card_info={
        "name": "IPNet", "base_model": cfg.model, "training": config_to_dict(cfg),
        "data": f"Paired-edit dataset `{cfg.dataset}` ({counts.get('passed', '?')} passed pairs).",
        "timestep": cfg.timestep, "start": cfg.start})
    save_config(cfg, out / CONFIG_FILE)
    return out


# ---------------------------------------------------------------------------------------------------- training
def train(cfg: IPNetConfig) -> Path:
    """Train IPNet as ``cfg`` says; returns the output folder (a loadable ``InstantPortraitPipeline``)."""
    from instantportrait.training.data import PairedEditDataset

    trainer = Trainer(cfg, find_unused_parameters=True)
    wrapper, init_path, triplet_desc = build_wrapper(cfg, trainer.device, weight_dtype(cfg.mixed_precision))
    dataset = PairedEditDataset(cfg.dataset, cfg.resolution, hflip=cfg.hflip, seed=cfg.seed)
    disc = wrapper.discriminator

    def edit(images: list, prompts: list[str], generator: torch.Generator) -> list:
        return wrapper.pipe(images, prompts, num_inference_steps=1, generator=generator).images

    return trainer.run(TrainerParts(
        "ipnet", model=wrapper, unet=wrapper.student_unet, dataset=dataset, turns=ipnet_turns(cfg, wrapper),
        edit=edit, save=lambda final: save_ipnet(final, init_path, cfg, trainer.out, dataset.info),
        modules={DISC_FILE: disc} if disc is not None else {},
        info={"teacher": str(cfg.model), "student_init": str(init_path), "loss_weights": cfg.weights.active(),
              "triplet_features": triplet_desc, "discriminator": cfg.discriminator if disc is not None else None}))


def ipnet_turns(cfg: IPNetConfig, wrapper: IPNetWrapper) -> list[Turn]:
    """The generator turn (every ``gen_update_ratio`` steps, EMA) and, with a discriminator, its turn on the same
    micro-batch's student output (DMD2); ``train`` and ``train.step_cost`` both use them."""
    disc = wrapper.discriminator
    gen_weights = cfg.weights.active()
    handed: dict[tuple[int, int], dict[str, Any]] = {}  # (step, micro) -> the generator turn's output, for DMD2's
    # discriminator turn on the same micro-batch (without it, the discriminator turn draws a fresh student output)

    def generator_losses(model: nn.Module, batch: dict[str, Any], gen: torch.Generator, step: int, micro: int
                         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        losses, logs = model(batch, "generator", gen, step=step)
        disc_inputs = logs.pop("disc_inputs")
        if disc is not None:
            handed[step, micro] = disc_inputs
        return losses, logs

    def discriminator_losses(model: nn.Module, batch: dict[str, Any], gen: torch.Generator, step: int, micro: int
                             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return model(batch, "discriminator", gen, handed.pop((step, micro), None))

    turns = [Turn("ipnet-g", generator_losses, lambda terms: weighted_total(terms, gen_weights),
                  trainable(wrapper.student_unet), cfg.learning_rate,
                  math.ceil(cfg.max_train_steps / cfg.gen_update_ratio), loss_key="loss_g",
                  state_key="g_lr_scheduler", grad_norm_key="grad_norm_g", ema=True, every=cfg.gen_update_ratio)]
    if disc is not None:
        turns.append(Turn("ipnet-d", discriminator_losses, lambda terms: terms["disc"], trainable(disc),
                          cfg.disc_learning_rate, cfg.max_train_steps, loss_key="loss_d", state_key="d_lr_scheduler",
                          grad_norm_key=None))
    return turns


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(IPNetConfig, argv, description=__doc__ or "")
    return train(cfg)


if __name__ == "__main__":
    main()
