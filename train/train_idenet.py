"""accelerate launch -m train.train_idenet --config train/configs/idenet_aid.yaml --output-dir outputs/idenet_aid

Fine-tune an InstructPix2Pix-format model into IDE-Net, the identity-enhanced teacher (DESIGN.md §1):

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

import contextlib
from dataclasses import dataclass
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
    identity_loss,
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
from train.config import CONFIG_FILE, IDENetConfig, config_to_dict, parse_config, save_config

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
    t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator, device=device)  # (B,)
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
        if sel.numel() > 0:
            alpha = sched.alphas_cumprod.to(device)[t[sel]].view(-1, 1, 1, 1)  # (n, 1, 1, 1)
            x0 = predicted_x0(pred[sel].float(), noisy[sel], alpha, prediction_type)  # (n, 4, h, w)
            pixels = vae.decode((x0 / sf).to(vae.dtype)).sample.float()  # (n, 3, H, W)
            id_loss, id_logs = identity_loss(pixels, batch["source"][sel].float(), batch["source_kps"][sel].float(),
                                             parts.arcface, weights=w[sel])
            losses["identity"] = id_loss * (sel.numel() / b)
            logs["id_cos"] = id_logs["id_cos"]
        else:
            losses["identity"] = eps.new_zeros(())
        logs["id_loss"] = float(losses["identity"].detach())
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
                unet: nn.Module | None = None) -> IDENetParts:
    """Freeze and place the pipeline's VAE and text encoder, load the identity model, build the noise scheduler."""
    from diffusers import DDPMScheduler

    for module in (pipe.vae, pipe.text_encoder):
        module.requires_grad_(False).eval().to(device)
        if frozen_dtype != torch.float32:
            module.to(dtype=frozen_dtype)
    arcface = load_identity_model(cfg.identity_model, device) if cfg.uses_identity else None
    null = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""], device)  # (1, L, D)
    return IDENetParts(unet=unet if unet is not None else pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder,
                       tokenizer=pipe.tokenizer, noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
                       arcface=arcface, null_prompt_embeds=null)


def idenet_model_card(cfg: IDENetConfig, base: str, data: dict[str, Any]) -> str:
    """A model card for an IDE-Net checkpoint (YAML header + Markdown)."""
    from instantportrait.hub import INSIGHTFACE_NOTE

    header = {"library_name": "diffusers", "pipeline_tag": "image-to-image", "license": "openrail",
              "tags": ["instantportrait", "idenet", "instruction-based-editing", "portrait"]}
    return "\n".join([
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        "# IDE-Net (InstantPortrait teacher)", "",
        "Identity-enhanced InstructPix2Pix fine-tune from the InstantPortrait project (an open implementation of "
        "*InstantPortrait: One-Step Portrait Editing via Diffusion Multi-Objective Distillation*, ICLR 2025): the "
        "multi-step teacher IPNet is distilled from.", "",
        "## Use", "```python",
        "from instantportrait.methods import get_editor",
        "editor = get_editor(\"idenet\", model=\"PATH_OR_REPO\")",
        "out = editor.edit([image], [\"wearing hipster glasses\"], seed=0)[0]", "```", "",
        f"Base model: `{base}`. Identity weighting: `{cfg.identity_weighting}` (weight {cfg.identity_weight}); "
        f"identity model: `{Path(cfg.identity_model).name}`.", "",
        "## Training recipe", "```yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False).strip(), "```", "",
        "## Data", f"Paired-edit dataset `{cfg.dataset}`: " + yaml.safe_dump(data.get("counts", {}),
                                                                             default_flow_style=True).strip(), "",
        "## Licence notes", INSIGHTFACE_NOTE, "",
    ])


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
def train(cfg: IDENetConfig) -> Path:
    """Train IDE-Net as ``cfg`` says; returns the output folder (a loadable pipeline)."""
    from instantportrait.training.data import PairedEditDataset

    accelerator = make_accelerator(cfg)
    device, frozen_dtype = accelerator.device, weight_dtype(cfg.mixed_precision)
    out = Path(cfg.output_dir)
    log = JsonlLogger(out / LOG_FILE, enabled=accelerator.is_main_process)

    base_path = resolve_model_path(cfg.model)
    pipe = load_base_pipeline(base_path)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    if cfg.resolution % factor:
        raise ValueError(f"resolution {cfg.resolution} must be a multiple of the VAE factor {factor}")
    dataset = PairedEditDataset(cfg.dataset, cfg.resolution, hflip=cfg.hflip, seed=cfg.seed)
    unet = pipe.unet.to(device).train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        pipe.vae.enable_gradient_checkpointing()  # the identity loss backpropagates through the decoder
    parts = build_parts(pipe, cfg, device, frozen_dtype)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.learning_rate, cfg)
    lr_scheduler = make_lr_scheduler(optimizer, cfg, cfg.max_train_steps)
    ema = make_ema(unet, cfg)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    parts.unet = unet

    def save_hook(models: list, weights: list, folder: str) -> None:
        if accelerator.is_main_process:
            for model in models:
                save_unet(accelerator.unwrap_model(model), Path(folder) / UNET_DIR)
            if ema is not None:
                save_ema(ema, accelerator.unwrap_model(unet), Path(folder))
        weights.clear()  # the hook wrote the weights; accelerate must not write them again

    def load_hook(models: list, folder: str) -> None:
        while models:
            load_unet_weights(accelerator.unwrap_model(models.pop()), Path(folder) / UNET_DIR)
        if ema is not None:
            load_ema(ema, accelerator.unwrap_model(unet), Path(folder), device)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    start_step = 0
    resume_from = resolve_resume(cfg.resume, out)
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from, cfg)
        start_step = int(state["global_step"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        log.log({"event": "resume", "checkpoint": str(resume_from), "global_step": start_step})
    elif cfg.resume == "latest":
        log.log({"event": "resume", "checkpoint": None, "note": f"no checkpoint in {out}: starting fresh"})
    if accelerator.is_main_process:
        save_config(cfg, out / CONFIG_FILE)
    log.log({"event": "start", "trainer": "idenet", "global_step": start_step, "base_model": str(base_path),
             "rows": len(dataset), "num_processes": accelerator.num_processes,
             "effective_batch": cfg.train_batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes,
             "identity_model": cfg.identity_model if parts.arcface is not None else None})

    def train_step(micro: list[dict[str, Any]], step: int) -> dict[str, float]:
        unet.train()
        records: list[dict[str, float]] = []
        for m, batch in enumerate(micro):
            gen = step_generator(cfg.seed, STREAM, step, m, accelerator.process_index, device)
            sync = contextlib.nullcontext() if m == len(micro) - 1 else accelerator.no_sync(unet)
            with sync:
                with accelerator.autocast():
                    losses, step_logs = idenet_losses(parts, batch, cfg, gen, step)
                    loss = total_loss(losses, cfg)
                accelerator.backward(loss / len(micro))
            records.append({"loss": float(loss.detach()), **step_logs})
        logs = mean_logs(records)
        grad_norm = clip_gradients(accelerator, optimizer, params, cfg.max_grad_norm)
        optimizer.step()
        if optimizer_stepped(optimizer):
            lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(accelerator.unwrap_model(unet).parameters())
        logs["lr"] = lr_scheduler.get_last_lr()[0]
        if grad_norm is not None:
            logs["grad_norm"] = grad_norm
        return logs

    scorers = make_validation_scorers(cfg, device) if cfg.validation_steps and accelerator.is_main_process \
        else (None, None)

    def validate(step: int) -> dict[str, Any]:
        if not accelerator.is_main_process:
            return {}
        from diffusers import StableDiffusionInstructPix2PixPipeline

        model = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
        model.eval()
        val_pipe = StableDiffusionInstructPix2PixPipeline(
            vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=model,
            scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        val_pipe.set_progress_bar_config(disable=True)

        def edit(images: list, prompts: list[str]) -> list:
            with accelerator.autocast(), torch.no_grad():
                return val_pipe(prompts, image=images, num_inference_steps=cfg.validation_inference_steps,
                                guidance_scale=cfg.validation_guidance_scale,
                                image_guidance_scale=cfg.validation_image_guidance_scale,
                                generator=torch.Generator(device=device).manual_seed(cfg.seed)).images

        try:
            return run_validation(edit, dataset, cfg, step, scorers)
        finally:
            if ema is not None:
                ema.restore(model.parameters())
            model.train()

    def checkpoint_state() -> dict[str, Any]:
        return {"lr_scheduler": lr_scheduler.state_dict()}

    step = train_loop(accelerator=accelerator, cfg=cfg, dataset=dataset, start_step=start_step,
                      train_step=train_step, checkpoint_state=checkpoint_state,
                      validate=validate if cfg.validation_steps else None, log=log)

    finish_training(accelerator, cfg, accelerator.unwrap_model(unet), ema,
                    lambda final: save_idenet(final, base_path, cfg, out, dataset.info), log, step)
    return out


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(IDENetConfig, argv, description=__doc__ or "")
    return train(cfg)


if __name__ == "__main__":
    main()

