"""accelerate launch -m train.train_ipnet --config train/configs/ipnet_full.yaml --output-dir outputs/ipnet_full

Distil IDE-Net into IPNet, the one-step student (DESIGN.md §1, "Diffusion Multi-Objective Distillation").

DMD2-style layout: one ``IPNetWrapper`` module holds the trainable student UNet, the frozen teacher UNet (IDE-Net),
the discriminator (its heads train; by default ``losses.UNetFeatureDiscriminator`` reading the frozen teacher's
encoder features), and the frozen VAE, text encoder and ArcFace. ``wrapper(batch, "generator" | "discriminator",
generator=...)`` returns ``(loss_dict, log_dict)``; this trainer applies the weights from the config:

* ``adv``      hinge (or non-saturating) generator loss through the discriminator on the re-noised student output;
* ``distill``  regression onto the teacher's multi-step edit (``inversion.teacher_target``; ``teacher_start``
  ddim-inversion | stochastic; ``distill_space`` latent | pixel; ``distill_kind`` l2 | l1 | perceptual ...);
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
``gen_update_ratio`` iterations. ``two_step`` also trains the student applied to its own (detached) output, as the
2-step "style boost" runs it. The teacher's outputs are computed on the fly (keep ``teacher_steps`` small in tests).

The output folder is an ``InstantPortraitPipeline`` (safetensors, model card with the config, ``train_config.yaml``):
``get_editor("ipnet", model=output_dir)`` loads it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from instantportrait.pipelines.ipnet import InstantPortraitPipeline, ipnet_from_instruct_pix2pix
from instantportrait.training.data import face_boxes
from instantportrait.training.inversion import teacher_target
from instantportrait.training.losses import (
    UNetFeatureDiscriminator,
    box_weight_map,
    distillation_loss,
    face_region_crop,
    hinge_d_loss,
    hinge_g_loss,
    identity_loss,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
    paired_regression_loss,
    sds_loss,
    triplet_loss,
    vae_encoder_feature_fn,
)
from train.common import (
    LOG_FILE,
    UNET_DIR,
    JsonlLogger,
    clip_gradients,
    encode_prompts,
    finish_training,
    load_checkpoint,
    load_ema,
    load_identity_model,
    load_unet_weights,
    make_accelerator,
    make_clip_scorer,
    make_ema,
    make_lr_scheduler,
    make_optimizer,
    make_validation_scorers,
    mean_logs,
    optimizer_stepped,
    resolve_model_path,
    resolve_resume,
    run_validation,
    save_ema,
    save_unet,
    step_generator,
    train_loop,
    weight_dtype,
)
from train.config import CONFIG_FILE, IPNetConfig, config_to_dict, parse_config, save_config

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

    @classmethod
    def from_config(cls, cfg: IPNetConfig, triplet_crop_size: int) -> IPNetLossSettings:
        return cls(
            weights=cfg.weights.active(), two_step=cfg.two_step, two_step_weight=cfg.two_step_weight,
            adv_loss=cfg.adv_loss, disc_t_range=(cfg.disc_t_min, cfg.disc_t_max), teacher_start=cfg.teacher_start,
            teacher_t_start=cfg.teacher_t_start, teacher_steps=cfg.teacher_steps, inversion_steps=cfg.inversion_steps,
            teacher_text_guidance=cfg.teacher_text_guidance, teacher_image_guidance=cfg.teacher_image_guidance,
            distill_space=cfg.distill_space, distill_kind=cfg.distill_kind, sds_t_range=(cfg.sds_t_min, cfg.sds_t_max),
            sds_text_guidance=cfg.sds_text_guidance, sds_image_guidance=cfg.sds_image_guidance,
            sds_weighting=cfg.sds_weighting, triplet_margin=cfg.triplet_margin,
            triplet_distance=cfg.triplet_distance, face_crop_expand=cfg.face_crop_expand,
            triplet_crop_size=triplet_crop_size, pair_face_weight=cfg.pair_face_weight)

    def uses(self, term: str) -> bool:
        return self.weights.get(term, 0.0) > 0


def make_triplet_features(cfg: IPNetConfig, vae: nn.Module, device: torch.device) -> tuple[FeatureFn, int, str]:
    """``(features(pixels in [-1, 1]) -> (B, D), crop size, description)`` for the triplet loss.

    CLIP (``clip`` configured and ``triplet_features`` auto|clip): L2-normalised CLIP image embeddings of the face
    crop. Fallback (``vae``, or auto without CLIP): the frozen VAE encoder's feature maps, each averaged over space
    and concatenated, then L2-normalised, on a crop of ``min(resolution, 224)`` pixels.
    """
    if cfg.triplet_features == "clip" or (cfg.triplet_features == "auto" and cfg.clip):
        scorer = make_clip_scorer(str(cfg.clip), device)

        def clip_features(pixels: torch.Tensor) -> torch.Tensor:
            return scorer.image_features_differentiable((pixels.float() + 1) / 2)  # (B, D)

        desc = f"CLIP image features of the face region ({scorer.variant or Path(str(cfg.clip)).name})"
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
      (``adv``, ``distill``, ``sds``, ``triplet``, ``identity``); with ``two_step``, each term also gets
      ``two_step_weight`` times the same term on the second output. ``log_dict["disc_inputs"]`` holds detached
      tensors for the discriminator turn (the output and the batch's encodings, as DMD2 hands its generator's
      output to the guidance turn); every other log value is a float.
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

    def student(self, source_latents: torch.Tensor, prompt: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The student's one-step output (scaled clean latents, float32), differentiable in its parameters."""
        start = self.pipe.start_latents(source_latents, generator)  # (B, 4, h, w)
        return self.pipe.predict_clean_latents(start, source_latents, prompt.to(self.student_unet.dtype))

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
                disc_inputs: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if turn == "generator":
            return self.generator_turn(batch, generator)
        if turn == "discriminator":
            return self.discriminator_turn(batch, generator, disc_inputs)
        raise ValueError(f"turn must be 'generator' or 'discriminator', got {turn!r}")

    def generator_turn(self, batch: dict[str, Any], generator: torch.Generator
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        s = self.settings
        enc = self.encode(batch)
        x0 = self.student(enc["src_latents"], enc["prompt"], generator)  # (B, 4, h, w)
        ctx = self._targets(batch, enc, generator)
        losses, logs = self._terms(x0, batch, enc, ctx, generator)
        if s.two_step:
            x0_2 = self.student(x0.detach() / self.scaling_factor, enc["prompt"], generator)  # (B, 4, h, w)
            losses2, logs2 = self._terms(x0_2, batch, enc, ctx, generator)
            for k, v in losses2.items():
                losses[k] = losses[k] + s.two_step_weight * v
            logs.update({f"step2_{k}": v for k, v in logs2.items()})
        logs["student_latent_std"] = float(x0.detach().std())
        logs["disc_inputs"] = {"fake_latents": x0.detach(), "enc": enc}
        return losses, logs

    @torch.no_grad()
    def _targets(self, batch: dict[str, Any], enc: dict[str, torch.Tensor], generator: torch.Generator
                 ) -> dict[str, Any]:
        """What the generator terms compare with, computed once per batch (no gradient)."""
        s = self.settings
        ctx: dict[str, Any] = {}
        if s.uses("distill") or s.uses("triplet"):
            ctx["teacher_latents"] = teacher_target(
                s.teacher_start, self.teacher_unet, self.pipe.scheduler, enc["src_latents"] * self.scaling_factor,
                enc["src_latents"], enc["prompt"], enc["uncond"], t_start=s.teacher_t_start, num_steps=s.teacher_steps,
                text_guidance=s.teacher_text_guidance, image_guidance=s.teacher_image_guidance,
                inversion_steps=s.inversion_steps, generator=generator, prediction_type=self.prediction_type).latents
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
            if sel.numel() > 0:
                id_loss, id_logs = identity_loss(pixels[sel], batch["source"][sel].float(),
                                                 batch["source_kps"][sel].float(), self.arcface)
                losses["identity"] = id_loss * (sel.numel() / b)
                logs["id_cos"] = id_logs["id_cos"]
            else:
                losses["identity"] = out.new_zeros(())
            logs["id_loss"] = float(losses["identity"].detach())
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
    arcface = load_identity_model(cfg.identity_model, device) if cfg.weights.identity > 0 else None
    features, crop, desc = (make_triplet_features(cfg, student.vae, device) if cfg.weights.triplet > 0
                            else (None, min(cfg.resolution, 224), "off"))
    settings = IPNetLossSettings.from_config(cfg, crop)
    return IPNetWrapper(student, teacher, disc, arcface, features, settings), init_path, desc


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

    accelerator = make_accelerator(cfg, find_unused_parameters=True)
    device = accelerator.device
    out = Path(cfg.output_dir)
    log = JsonlLogger(out / LOG_FILE, enabled=accelerator.is_main_process)

    wrapper, init_path, triplet_desc = build_wrapper(cfg, device, weight_dtype(cfg.mixed_precision))
    dataset = PairedEditDataset(cfg.dataset, cfg.resolution, hflip=cfg.hflip, seed=cfg.seed)
    student_unet = wrapper.student_unet
    g_params = [p for p in student_unet.parameters() if p.requires_grad]
    g_opt = make_optimizer(g_params, cfg.learning_rate, cfg)
    g_sched = make_lr_scheduler(g_opt, cfg, math.ceil(cfg.max_train_steps / cfg.gen_update_ratio))
    disc = wrapper.discriminator
    d_params = [p for p in disc.parameters() if p.requires_grad] if disc is not None else []
    d_opt = make_optimizer(d_params, cfg.disc_learning_rate, cfg) if disc is not None else None
    d_sched = make_lr_scheduler(d_opt, cfg, cfg.max_train_steps) if d_opt is not None else None
    ema = make_ema(student_unet, cfg)
    wrapper.train()
    if d_opt is not None:
        wrapper, g_opt, d_opt = accelerator.prepare(wrapper, g_opt, d_opt)
    else:
        wrapper, g_opt = accelerator.prepare(wrapper, g_opt)
    inner: IPNetWrapper = accelerator.unwrap_model(wrapper)

    def save_hook(models: list, weights: list, folder: str) -> None:
        if accelerator.is_main_process:
            for model in models:
                model = accelerator.unwrap_model(model)
                save_unet(model.student_unet, Path(folder) / UNET_DIR)
                if model.discriminator is not None:
                    save_file({k: v.contiguous() for k, v in model.discriminator.state_dict().items()},
                              str(Path(folder) / DISC_FILE))
            if ema is not None:
                save_ema(ema, inner.student_unet, Path(folder))
        weights.clear()

    def load_hook(models: list, folder: str) -> None:
        while models:
            model = accelerator.unwrap_model(models.pop())
            load_unet_weights(model.student_unet, Path(folder) / UNET_DIR)
            if model.discriminator is not None:
                model.discriminator.load_state_dict(load_file(str(Path(folder) / DISC_FILE)))
        if ema is not None:
            load_ema(ema, inner.student_unet, Path(folder), device)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    start_step = 0
    resume_from = resolve_resume(cfg.resume, out)
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from, cfg)
        start_step = int(state["global_step"])
        g_sched.load_state_dict(state["g_lr_scheduler"])
        if d_sched is not None:
            d_sched.load_state_dict(state["d_lr_scheduler"])
        log.log({"event": "resume", "checkpoint": str(resume_from), "global_step": start_step})
    elif cfg.resume == "latest":
        log.log({"event": "resume", "checkpoint": None, "note": f"no checkpoint in {out}: starting fresh"})
    if accelerator.is_main_process:
        save_config(cfg, out / CONFIG_FILE)
    log.log({"event": "start", "trainer": "ipnet", "global_step": start_step, "teacher": str(cfg.model),
             "student_init": str(init_path), "rows": len(dataset), "num_processes": accelerator.num_processes,
             "effective_batch": cfg.train_batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes,
             "loss_weights": cfg.weights.active(), "triplet_features": triplet_desc,
             "discriminator": cfg.discriminator if disc is not None else None})
    gen_weights = cfg.weights.active()

    def train_step(micro: list[dict[str, Any]], step: int) -> dict[str, float]:
        wrapper.train()
        g_records: list[dict[str, float]] = []
        d_records: list[dict[str, float]] = []
        logs: dict[str, float] = {}
        n = len(micro)
        update_g = (step - 1) % cfg.gen_update_ratio == 0
        handed: list[dict[str, Any] | None] = [None] * n  # generator -> discriminator turn
        if update_g:
            for m, batch in enumerate(micro):
                gen = step_generator(cfg.seed, "ipnet-g", step, m, accelerator.process_index, device)
                with contextlib.nullcontext() if m == n - 1 else accelerator.no_sync(wrapper):
                    with accelerator.autocast():
                        losses, step_logs = wrapper(batch, "generator", gen)
                        loss = weighted_total(losses, gen_weights)
                    accelerator.backward(loss / n)
                handed[m] = step_logs.pop("disc_inputs")
                g_records.append({"loss_g": float(loss.detach()), **step_logs})
            logs.update(mean_logs(g_records))
            norm = clip_gradients(accelerator, g_opt, g_params, cfg.max_grad_norm)
            g_opt.step()
            if optimizer_stepped(g_opt):
                g_sched.step()
            g_opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(inner.student_unet.parameters())
            if norm is not None:
                logs["grad_norm_g"] = norm
        if d_opt is not None:
            d_opt.zero_grad(set_to_none=True)  # drop what the generator turn sent into the heads
            for m, batch in enumerate(micro):
                gen = step_generator(cfg.seed, "ipnet-d", step, m, accelerator.process_index, device)
                with contextlib.nullcontext() if m == n - 1 else accelerator.no_sync(wrapper):
                    with accelerator.autocast():
                        losses, step_logs = wrapper(batch, "discriminator", gen, handed[m])
                    accelerator.backward(losses["disc"] / n)
                d_records.append({"loss_d": float(losses["disc"].detach()), **step_logs})
            logs.update(mean_logs(d_records))
            clip_gradients(accelerator, d_opt, d_params, cfg.max_grad_norm)
            d_opt.step()
            if optimizer_stepped(d_opt):
                d_sched.step()
            d_opt.zero_grad(set_to_none=True)
        logs["lr"] = g_sched.get_last_lr()[0]
        return logs

    scorers = make_validation_scorers(cfg, device) if cfg.validation_steps and accelerator.is_main_process \
        else (None, None)

    def validate(step: int) -> dict[str, Any]:
        if not accelerator.is_main_process:
            return {}
        unet = inner.student_unet
        if ema is not None:
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
        unet.eval()

        def edit(images: list, prompts: list[str]) -> list:
            with accelerator.autocast(), torch.no_grad():
                return inner.pipe(images, prompts, num_inference_steps=1,
                                  generator=torch.Generator(device=device).manual_seed(cfg.seed)).images

        try:
            return run_validation(edit, dataset, cfg, step, scorers)
        finally:
            if ema is not None:
                ema.restore(unet.parameters())
            unet.train()

    def checkpoint_state() -> dict[str, Any]:
        state = {"g_lr_scheduler": g_sched.state_dict()}
        if d_sched is not None:
            state["d_lr_scheduler"] = d_sched.state_dict()
        return state

    step = train_loop(accelerator=accelerator, cfg=cfg, dataset=dataset, start_step=start_step,
                      train_step=train_step, checkpoint_state=checkpoint_state,
                      validate=validate if cfg.validation_steps else None, log=log)

    finish_training(accelerator, cfg, inner.student_unet, ema,
                    lambda final: save_ipnet(final, init_path, cfg, out, dataset.info), log, step)
    return out


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(IPNetConfig, argv, description=__doc__ or "")
    return train(cfg)


if __name__ == "__main__":
    main()
