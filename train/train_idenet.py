"""accelerate launch -m train.train_idenet --config train/configs/idenet_aid.yaml --output-dir outputs/idenet_aid

Fine-tune an InstructPix2Pix-format model into IDE-Net, the identity-enhanced teacher (README "Training", step 3):

    loss = ε-MSE + identity_weight * mean_b w_b (1 - cos(ArcFace(align(decode(x̂0_b), kps_src_b)), ArcFace(src_b)))

* ``x̂0`` is the clean latent implied by the UNet's prediction at the sampled timestep, decoded by the frozen VAE and
  warped to the 112x112 ArcFace crop with the *source's* landmarks (``losses.arcface_align``); the differentiable
  ArcFace is an insightface recognition ONNX (``identity_model``; default antelopev2's glintr100, a different model
  than the evaluation's buffalo_l).
* ``w_b``: ``--identity-weighting annealing`` (L_aid, ᾱ_t^power, optionally ramped over training steps),
  ``constant`` (L_cid) or ``none``; 0 for samples without a face and for samples whose image conditioning was
  dropped (no source to keep the identity of).
* conditioning dropout as InstructPix2Pix (text only / image only / both, each ``conditioning_dropout_prob``): the
  empty instruction's embedding and a zeroed source latent, so image/text CFG works at sampling time.

CPU tiny run: ``python -m train.train_idenet --config train/configs/idenet_aid.yaml --set model=/path/tiny ...``.
The output folder is a diffusers ``StableDiffusionInstructPix2PixPipeline`` (safetensors, ``safety_checker=None``)
with ``train_config.yaml`` and a model card: ``get_editor("idenet", model=output_dir)`` loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from instantportrait.pipelines.ipnet import predicted_x0, widen_conv_in
from instantportrait.training.losses import (
    annealing_identity_weight,
    constant_identity_weight,
    epsilon_loss,
    subset_identity_loss,
)
from train.common import (
    encode_prompts,
    load_identity_model,
    resolve_model_path,
    weight_dtype,
)
from train.config import CONFIG_FILE, IDENetConfig, config_to_dict, parse_config, save_config
from train.trainer import Trainer, TrainerParts, Turn, trainable

STREAM = "idenet"


@dataclass
class IDENetParts:
    """What the IDE-Net loss needs. ``unet`` is the trained network as called (possibly DDP-wrapped)."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    noise_scheduler: Any  # DDPMScheduler with the base model's noise schedule
    arcface: nn.Module | None
    null_prompt_embeds: torch.Tensor  # (1, L, D): the empty instruction


# ---------------------------------------------------------------------------------------------------- pure parts
def conditioning_dropout_masks(u: torch.Tensor, prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """InstructPix2Pix's dropout from uniforms ``u`` (B,): ``[0, p)`` drops the text only, ``[p, 2p)`` both,
    ``[2p, 3p)`` the image only. Returns ``(drop_text, drop_image)``, (B,) bool each."""
    drop_text = u < 2 * prob
    drop_image = (u >= prob) & (u < 3 * prob)
    return drop_text, drop_image


def sample_timesteps(b: int, num_train_timesteps: int, bias: float, generator: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    """(B,) int64 training timesteps in [0, T): uniform for ``bias`` 0 (the same draw as ``torch.randint``), else
    with density proportional to ``t^bias`` (inverse CDF ``T * u^(1/(1+bias))``)."""
    if bias == 0:
        return torch.randint(0, num_train_timesteps, (b,), generator=generator, device=device)
    u = torch.rand(b, generator=generator, device=device)  # (B,)
    t = (num_train_timesteps * u.pow(1.0 / (1.0 + bias))).long()
    return t.clamp_(0, num_train_timesteps - 1)


def identity_schedule(cfg: IDENetConfig, timesteps: torch.Tensor, alphas_cumprod: Any, step: int) -> torch.Tensor:
    """Per-sample identity weights before masking, (B,) in [0, 1]: the L_aid / L_cid schedule or zeros."""
    if cfg.identity_weighting == "annealing":
        return annealing_identity_weight(timesteps, alphas_cumprod, power=cfg.identity_power, step=step,
                                         ramp_steps=cfg.identity_ramp_steps)
    if cfg.identity_weighting == "constant":
        return constant_identity_weight(timesteps)
    return torch.zeros(timesteps.shape[0], device=timesteps.device)


def idenet_losses(parts: IDENetParts, batch: dict[str, Any], cfg: IDENetConfig, generator: torch.Generator,
                  step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One micro-batch of IDE-Net's loss terms (unweighted) and logs. Every random draw comes from ``generator``.

    Returns ``({"eps": ..., "identity": ...}, logs)``; ``identity`` is present when the config uses it (0 when no
    sample qualifies) and is already the batch mean of ``w_b (1 - cos)`` (samples without weight count as 0).
    """
    vae, device = parts.vae, batch["source"].device
    sf = vae.config.scaling_factor
    src = batch["source"].to(vae.dtype)  # (B, 3, H, W) in [-1, 1]
    with torch.no_grad():
        # the posterior mode, not a sample: SD's VAE posterior is nearly a point (sampling only adds noise), and
        # the same latents are then used everywhere (IPNet's discriminator reads target modes too)
        latents = vae.encode(batch["target"].to(vae.dtype)).latent_dist.mode().float() * sf  # (B, 4, h, w)
        src_latents = vae.encode(src).latent_dist.mode().float()  # (B, 4, h, w), unscaled as InstructPix2Pix
    prompt_embeds = encode_prompts(parts.tokenizer, parts.text_encoder, list(batch["instruction"]), device)
    b = latents.shape[0]
    sched = parts.noise_scheduler
    noise = torch.randn(latents.shape, generator=generator, device=device)  # (B, 4, h, w)
    t = sample_timesteps(b, sched.config.num_train_timesteps, cfg.timestep_bias, generator, device)  # (B,)
    noisy = sched.add_noise(latents, noise, t)  # (B, 4, h, w)

    drop_image = torch.zeros(b, dtype=torch.bool, device=device)
    if cfg.conditioning_dropout_prob > 0:
        u = torch.rand(b, generator=generator, device=device)
        drop_text, drop_image = conditioning_dropout_masks(u, cfg.conditioning_dropout_prob)
        null = parts.null_prompt_embeds.to(prompt_embeds.dtype).expand_as(prompt_embeds)
        prompt_embeds = torch.where(drop_text[:, None, None], null, prompt_embeds)  # (B, L, D)
        src_latents = src_latents * (~drop_image).float()[:, None, None, None]  # (B, 4, h, w)

    model_in = torch.cat([noisy, src_latents], dim=1)  # (B, 8, h, w)
    pred = parts.unet(model_in, t, encoder_hidden_states=prompt_embeds).sample  # (B, 4, h, w)
    prediction_type = sched.config.prediction_type
    target = noise if prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
    eps, logs = epsilon_loss(pred, target)
    losses: dict[str, torch.Tensor] = {"eps": eps}
    logs["drop_image_frac"] = float(drop_image.float().mean())

    if cfg.uses_identity and parts.arcface is not None:
        w = identity_schedule(cfg, t, sched, step)  # (B,)
        w = w * batch["has_face"].float() * (~drop_image).float()
        sel = torch.nonzero(w > cfg.identity_min_weight).flatten()  # (n,)
        logs["id_weight_mean"] = float(w.mean())
        logs["id_samples"] = float(sel.numel())

        def decode(sel: torch.Tensor) -> torch.Tensor:
            alpha = sched.alphas_cumprod.to(device)[t[sel]].view(-1, 1, 1, 1)  # (n, 1, 1, 1)
            x0 = predicted_x0(pred[sel].float(), noisy[sel], alpha, prediction_type)  # (n, 4, h, w)
            return vae.decode((x0 / sf).to(vae.dtype)).sample.float()  # (n, 3, H, W)

        losses["identity"], id_logs = subset_identity_loss(decode, sel, b, batch["source"], batch["source_kps"],
                                                           parts.arcface, weights=w, zero=eps)
        logs.update(id_logs)
    return losses, logs


def total_loss(losses: dict[str, torch.Tensor], cfg: IDENetConfig) -> torch.Tensor:
    """The trainer's weighting: ``eps + identity_weight * identity``."""
    total = losses["eps"]
    if "identity" in losses:
        total = total + cfg.identity_weight * losses["identity"]
    return total


# ---------------------------------------------------------------------------------------------------- models
def load_base_pipeline(path: Path, dtype: torch.dtype = torch.float32) -> Any:
    """The base InstructPix2Pix pipeline (a 4-channel text-to-image UNet is widened to 8 channels)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        path, dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    widen_conv_in(pipe.unet, 2 * pipe.vae.config.latent_channels)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_parts(pipe: Any, cfg: IDENetConfig, device: torch.device, frozen_dtype: torch.dtype,
                unet: nn.Module | None = None, arcface: nn.Module | None = None) -> IDENetParts:
    """Freeze and place the pipeline's VAE and text encoder, load the identity model (``arcface``: one already built,
    e.g. random weights for ``train.step_cost``), build the noise scheduler."""
    from diffusers import DDPMScheduler

    for module in (pipe.vae, pipe.text_encoder):
        module.requires_grad_(False).eval().to(device)
        if frozen_dtype != torch.float32:
            module.to(dtype=frozen_dtype)
    if arcface is None and cfg.uses_identity:
        arcface = load_identity_model(cfg.identity_model, device)
    null = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""], device)  # (1, L, D)
    return IDENetParts(unet=unet if unet is not None else pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder,
                       tokenizer=pipe.tokenizer, noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
                       arcface=arcface, null_prompt_embeds=null)


def idenet_model_card(cfg: IDENetConfig, base: str, data: dict[str, Any]) -> str:
    """The IDE-Net card (``hub.cards.model_card``, kind ``idenet``) from this run's config and data counts."""
    from instantportrait.hub.cards import model_card

    counts = yaml.safe_dump(data.get("counts", {}), default_flow_style=True).strip()
    return model_card({
        "kind": "idenet", "name": "IDE-Net (InstantPortrait teacher)", "base_model": base,
        "details": f"Base model: `{base}`. Identity weighting: `{cfg.identity_weighting}` (weight "
                   f"{cfg.identity_weight}); identity model: `{Path(cfg.identity_model).name}`.",
        "training": config_to_dict(cfg), "data": f"Paired-edit dataset `{cfg.dataset}`: {counts}"})


def save_idenet(unet: nn.Module, base_path: Path, cfg: IDENetConfig, out: Path, data_info: dict[str, Any]) -> Path:
    """Write the IDE-Net pipeline folder: the base model's other components (fresh, full precision) + ``unet``."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        base_path, unet=unet, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    save_config(cfg, out / CONFIG_FILE)
    (out / "README.md").write_text(idenet_model_card(cfg, str(cfg.model), data_info))
    return out


# ---------------------------------------------------------------------------------------------------- training
def idenet_turn(cfg: IDENetConfig, parts: IDENetParts, unet: nn.Module) -> Turn:
    """IDE-Net's one turn: :func:`idenet_losses` on the prepared (possibly DDP-wrapped) UNet, :func:`total_loss`,
    an optimiser over ``unet``'s trainable parameters, with EMA (``train`` and ``train.step_cost`` both use it)."""

    def losses(model: nn.Module, batch: dict[str, Any], gen: torch.Generator, step: int, micro: int
               ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        return idenet_losses(replace(parts, unet=model), batch, cfg, gen, step)  # the prepared (DDP) UNet

    return Turn(STREAM, losses, lambda terms: total_loss(terms, cfg), trainable(unet), cfg.learning_rate,
                cfg.max_train_steps, ema=True)


def train(cfg: IDENetConfig) -> Path:
    """Train IDE-Net as ``cfg`` says; returns the output folder (a loadable pipeline)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from instantportrait.training.data import PairedEditDataset

    trainer = Trainer(cfg)
    base_path = resolve_model_path(cfg.model)
    pipe = load_base_pipeline(base_path)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    if cfg.resolution % factor:
        raise ValueError(f"resolution {cfg.resolution} must be a multiple of the VAE factor {factor}")
    dataset = PairedEditDataset(cfg.dataset, cfg.resolution, hflip=cfg.hflip, seed=cfg.seed)
    unet = pipe.unet.to(trainer.device)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        pipe.vae.enable_gradient_checkpointing()  # the identity loss backpropagates through the decoder
    parts = build_parts(pipe, cfg, trainer.device, weight_dtype(cfg.mixed_precision))

    def edit(images: list, prompts: list[str], generator: torch.Generator) -> list:
        val_pipe = StableDiffusionInstructPix2PixPipeline(
            vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=unet,
            scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        val_pipe.set_progress_bar_config(disable=True)
        return val_pipe(prompts, image=images, num_inference_steps=cfg.validation_inference_steps,
                        guidance_scale=cfg.validation_guidance_scale,
                        image_guidance_scale=cfg.validation_image_guidance_scale, generator=generator).images

    return trainer.run(TrainerParts(
        "idenet", model=unet, unet=unet, dataset=dataset, turns=[idenet_turn(cfg, parts, unet)], edit=edit,
        save=lambda final: save_idenet(final, base_path, cfg, trainer.out, dataset.info),
        info={"base_model": str(base_path),
              "identity_model": cfg.identity_model if parts.arcface is not None else None}))


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(IDENetConfig, argv, description=__doc__ or "")
    return train(cfg)


if __name__ == "__main__":
    main()

