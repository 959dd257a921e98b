"""python -m train.train_tiny_decoder --model PIPELINE_DIR --images demo-world --out DIR --steps 2000

Distil a tiny latent decoder (``instantportrait/tiny_decoder.py``) from a pipeline's full VAE decoder, then measure
its quality cost on held-out synthetic-world *test* images:

1. training images: a folder (``--images FOLDER``, recursively, centre-cropped and resized to ``--size``) or the
   synthetic world's *train* identities (``--images demo-world``: sources and targets of ``World(--world-seed,
   --world-identities, size=--size)``);
2. the frozen VAE encoder gives each image's posterior (mean, std) once; each step draws a batch of scaled latents
   ``z = (mean + latent_noise * std * eps) * scaling_factor`` (posterior samples widen the latents seen beyond the
   encoder's modes, towards what a UNet produces), and regresses ``tiny(z)`` onto ``full_decoder(z)`` with
   L1 + MSE in pixels, optionally plus ``--image-weight`` x (L1 + MSE) onto the image itself;
3. AdamW, linear warm-up then cosine decay (``lr_at``); every random draw of step ``s`` comes from
   ``common.step_generator(seed, "tiny-decoder", s, ...)``, so a run is deterministic and a resumed run equals the
   uninterrupted one. A checkpoint (weights + optimiser state) is written every ``--checkpoint-every`` steps into
   ``<out>/checkpoint/`` and picked up by the next run with the same settings (``--no-resume`` starts over);
4. at the end ``<out>`` gets the decoder (``tiny_decoder.safetensors``, ``tiny_decoder.json``, ``README.md``;
   each file replaced atomically), the evaluation (``quality.json``; also in the card) and ``logs.jsonl`` (its
   ``l1_to_full`` / ``mse_to_full`` are in [-1, 1] pixel units, twice / four times the evaluation's [0, 1] ones).

Evaluation (``evaluate``; ``--evaluate FOLDER`` measures a saved decoder without training): ``--eval-images`` test
samples of the world; their sources and targets are encoded (posterior mode) and decoded by both decoders: L1 and
PSNR of tiny vs full, and each vs the original image (pixels in [0, 1]); when ``--model`` is an
``InstantPortraitPipeline`` folder, also its one-step edits of the test sources decoded both ways (L1 to the
rendered target). Latency: one image, median over ``--latency-repeats`` calls after warm-up, on ``--device``.

``--encoder`` also distils a TAESD-layout encoder (diffusers' ``EncoderTiny``) from the VAE's encoder (L1 + MSE onto
the scaled posterior mean of each training image, its own optimiser and random stream) and saves the pair as an
``AutoencoderTiny`` folder in ``<out>`` (``config.json`` + ``diffusion_pytorch_model.safetensors``, beside the
decoder's files) for ``pipe.use_tiny_vae(out)``; the evaluation then adds the encoder's quality cost (latent L1 to
the full encoder; images through tiny encoder + full decoder and tiny encoder + tiny decoder). ``--evaluate FOLDER``
measures the encoder too when FOLDER holds such an ``AutoencoderTiny``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from instantportrait.pipelines.tiny_decoder import (
    TinyDecoder,
    build_tiny_decoder,
    check_compatible,
    format_quality,
    load_tiny_decoder,
    read_tiny_decoder_info,
    save_tiny_decoder,
)
from instantportrait.pipelines.tiny_vae import AE_CONFIG_FILE, build_tiny_autoencoder, load_tiny_vae
from train.common import LOG_FILE, JsonlLogger, resolve_model_path, step_generator
from train.loops import backward_step

DEMO_WORLD = "demo-world"
CHECKPOINT_DIR = "checkpoint"
QUALITY_FILE = "quality.json"
# settings that may differ between a run and the checkpoint it resumes
RESUME_MUTABLE = {"out", "eval_images", "checkpoint_every", "latency_repeats", "device", "log_every"}


@dataclass
class DistillConfig:
    """One distillation run (the CLI flags, one to one)."""

    model: str
    out: str
    images: str = DEMO_WORLD
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    seed: int = 0
    size: int = 64
    num_images: int = 2000
    latent_noise: float = 1.0
    image_weight: float = 0.0
    width: int | None = None
    num_blocks: tuple[int, ...] | None = None
    world_seed: int = 0
    world_identities: int = 120
    eval_images: int = 64
    latency_repeats: int = 20
    checkpoint_every: int = 250
    log_every: int = 50
    resume: bool = True
    device: str = "auto"
    encoder: bool = False  # also distil a TAESD-layout encoder and save an AutoencoderTiny folder

    def __post_init__(self) -> None:
        if self.num_blocks is not None:
            self.num_blocks = tuple(int(b) for b in self.num_blocks)
        for name in ("steps", "batch_size", "size", "num_images", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.latent_noise < 0 or self.image_weight < 0 or self.eval_images < 0:
            raise ValueError("lr must be > 0; latent_noise, image_weight and eval_images must be >= 0")

    def key(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it."""
        d = asdict(self)
        d["num_blocks"] = list(self.num_blocks) if self.num_blocks is not None else None
        return {k: v for k, v in d.items() if k not in RESUME_MUTABLE and k != "resume"}


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Learning rate of optimiser step ``step`` (1-based): linear warm-up over ``warmup`` steps, then cosine decay
    from ``base`` to ``0.05 * base`` at ``total``."""
    if warmup > 0 and step <= warmup:
        return base * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------------- images
def _square(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """Centre crop to a square, resize to ``size``."""
    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return image.convert("RGB").resize((size, size), PIL.Image.Resampling.BICUBIC, box=box)


def to_uint8(images: list[PIL.Image.Image], size: int) -> torch.Tensor:
    """PIL images -> (N, 3, size, size) uint8."""
    return torch.from_numpy(np.stack([np.asarray(_square(im, size)) for im in images])).permute(0, 3, 1, 2)


def world_images(split: str, n: int, size: int, seed: int, num_identities: int) -> list[PIL.Image.Image]:
    """``n`` images of a world split: the sources and targets of its first ``ceil(n / 2)`` samples, in turn."""
    from instantportrait.demo import World

    world = World(seed, num_identities, size=size)
    out: list[PIL.Image.Image] = []
    for s in world.samples(split, (n + 1) // 2):
        out += [s.source, s.target]
    return out[:n]


def training_images(cfg: DistillConfig) -> torch.Tensor:
    """(N, 3, size, size) uint8 training images from ``cfg.images`` (a folder or ``demo-world``)."""
    if cfg.images == DEMO_WORLD:
        return to_uint8(world_images("train", cfg.num_images, cfg.size, cfg.world_seed, cfg.world_identities),
                        cfg.size)
    from benchmark.data import image_files
    from instantportrait.imageio import IMAGE_SUFFIXES, load_image

    folder = Path(cfg.images).expanduser()
    if not folder.is_dir():
        raise ValueError(f"--images {cfg.images}: not a folder (give a folder of images or {DEMO_WORLD!r})")
    files = image_files(folder)[: cfg.num_images]
    if not files:
        raise ValueError(f"--images {cfg.images}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return to_uint8([load_image(f).image for f in files], cfg.size)


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 in [-1, 1]."""
    return images.float() / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------------- teacher
class Teacher:
    """The frozen full VAE: posterior moments of the training images (computed once, kept on the device) and full
    decodes of scaled latents."""

    def __init__(self, vae: Any, images: torch.Tensor, device: torch.device, chunk: int = 32):
        self.vae = vae.to(device).eval().requires_grad_(False)
        self.sf = float(vae.config.scaling_factor)
        self.images = images  # (N, 3, H, W) uint8, on the CPU
        means, stds = [], []
        with torch.no_grad():
            for i in range(0, images.shape[0], chunk):
                post = self.vae.encode(to_pixels(images[i:i + chunk]).to(device, vae.dtype)).latent_dist
                means.append(post.mean.float())
                stds.append(post.std.float())
        self.mean, self.std = torch.cat(means), torch.cat(stds)  # (N, C, h, w), unscaled

    def __len__(self) -> int:
        return self.mean.shape[0]

    def latents(self, idx: torch.Tensor, generator: torch.Generator, noise: float) -> torch.Tensor:
        """Scaled latents (B, C, h, w) of images ``idx``: posterior samples with std x ``noise`` (0: the mode)."""
        eps = torch.randn(self.mean[idx].shape, generator=generator).to(self.mean.device)
        return (self.mean[idx] + noise * self.std[idx] * eps) * self.sf

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> the full decoder's raw pixels (B, 3, H, W), float32 (= ``decode_latents``)."""
        return self.vae.decode(latents.to(self.vae.dtype) / self.sf).sample.float()


def distill_step(tiny: TinyDecoder, teacher: Teacher, optimizer: torch.optim.Optimizer, step: int,
                 cfg: DistillConfig) -> dict[str, float]:
    """One optimiser step; every random draw comes from ``step``'s own generator. Returns scalars to log."""
    device = teacher.mean.device
    gen = step_generator(cfg.seed, "tiny-decoder", step, 0, 0)
    idx = torch.randint(0, len(teacher), (cfg.batch_size,), generator=gen)
    z = teacher.latents(idx.to(device), gen, cfg.latent_noise)  # (B, C, h, w)
    target = teacher.decode(z)  # (B, 3, H, W)
    out = tiny(z).float()  # (B, 3, H, W)
    l1, mse = (out - target).abs().mean(), (out - target).pow(2).mean()
    loss = l1 + mse
    logs = {"l1_to_full": float(l1.detach()), "mse_to_full": float(mse.detach())}
    if cfg.image_weight > 0:
        image = to_pixels(teacher.images[idx]).to(device)  # (B, 3, H, W)
        img_loss = (out - image).abs().mean() + (out - image).pow(2).mean()
        loss = loss + cfg.image_weight * img_loss
        logs["loss_image"] = float(img_loss.detach())
    lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    backward_step(optimizer, loss)
    return {"loss": float(loss.detach()), **logs, "lr": lr}


def encoder_step(encoder: torch.nn.Module, teacher: Teacher, optimizer: torch.optim.Optimizer, step: int,
                 cfg: DistillConfig) -> dict[str, float]:
    """One optimiser step of the tiny encoder onto the full encoder's scaled posterior mean (what the pipeline's
    ``encode_image`` gives, times the scaling factor). Its own random stream: the decoder's run is unchanged."""
    device = teacher.mean.device
    gen = step_generator(cfg.seed, "tiny-encoder", step, 0, 0)
    idx = torch.randint(0, len(teacher), (cfg.batch_size,), generator=gen)
    pixels = to_pixels(teacher.images[idx]).to(device)  # (B, 3, H, W) in [-1, 1]
    target = teacher.mean[idx.to(device)] * teacher.sf  # (B, C, h, w), scaled
    out = encoder(pixels).float()  # (B, C, h, w)
    l1, mse = (out - target).abs().mean(), (out - target).pow(2).mean()
    lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    backward_step(optimizer, l1 + mse)
    return {"encoder_l1": float(l1.detach()), "encoder_mse": float(mse.detach())}


# ---------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(folder: Path, tiny: TinyDecoder, optimizer: torch.optim.Optimizer, step: int,
                    cfg: DistillConfig, encoder: tuple | None = None) -> None:
    """``folder/step-<s>.safetensors`` + ``optimizer-<s>.pt``, then ``state.json`` (replaced atomically) points at
    them; older files go after. A crash at any point leaves a complete checkpoint or the previous one."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tiny.state_dict().items()},
              str(folder / f"step-{step}.safetensors"))
    torch.save(optimizer.state_dict(), folder / f"optimizer-{step}.pt")
    if encoder is not None:  # (EncoderTiny, its optimiser)
        save_file({k: v.detach().contiguous().cpu() for k, v in encoder[0].state_dict().items()},
                  str(folder / f"encoder-step-{step}.safetensors"))
        torch.save(encoder[1].state_dict(), folder / f"encoder-optimizer-{step}.pt")
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps({"step": step, "config": cfg.key()}, indent=1))
    tmp.replace(folder / "state.json")
    for f in folder.iterdir():
        if f.name.startswith(("step-", "optimizer-", "encoder-")) and f.stem.split("-")[-1] != str(step):
            f.unlink()


def load_checkpoint(folder: Path, tiny: TinyDecoder, optimizer: torch.optim.Optimizer,
                    cfg: DistillConfig, encoder: tuple | None = None) -> int:
    """Restore the checkpoint in ``folder``; returns its step (0 when there is none). A checkpoint of other
    settings raises ``ValueError`` (use another ``--out`` or ``--no-resume``)."""
    from safetensors.torch import load_file

    state_file = folder / "state.json"
    if not state_file.is_file():
        return 0
    state = json.loads(state_file.read_text())
    if state["config"] != cfg.key():
        changed = sorted(k for k in cfg.key() if state["config"].get(k) != cfg.key()[k])
        raise ValueError(f"{folder} holds a checkpoint of other settings ({', '.join(changed)}); use --no-resume to "
                         "start over or another --out")
    step = int(state["step"])
    tiny.load_state_dict(load_file(str(folder / f"step-{step}.safetensors")))
    optimizer.load_state_dict(torch.load(folder / f"optimizer-{step}.pt", weights_only=True))
    if encoder is not None:
        encoder[0].load_state_dict(load_file(str(folder / f"encoder-step-{step}.safetensors")))
        encoder[1].load_state_dict(torch.load(folder / f"encoder-optimizer-{step}.pt", weights_only=True))
    return step


# ---------------------------------------------------------------------------------------------------- training
def load_vae(model: str, device: torch.device) -> Any:
    """The pipeline's VAE in float32 (``model``: a folder, a ``config.MODELS`` key or a Hub id)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(resolve_model_path(model), subfolder="vae", dtype=torch.float32).to(device)


def train(cfg: DistillConfig) -> Path:
    """Distil, save and (``eval_images > 0``) evaluate; returns the output folder."""
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = JsonlLogger(out / LOG_FILE)
    ckpt = out / CHECKPOINT_DIR
    if not cfg.resume and ckpt.exists():
        shutil.rmtree(ckpt)

    vae = load_vae(cfg.model, device)
    tiny = build_tiny_decoder(vae, width=cfg.width, num_blocks=cfg.num_blocks, seed=cfg.seed).to(device).train()
    optimizer = torch.optim.AdamW(tiny.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    enc = None  # (EncoderTiny, its optimiser) with --encoder
    if cfg.encoder:
        encoder = build_tiny_autoencoder(vae, width=cfg.width, seed=cfg.seed + 1).encoder.to(device).train()
        enc = (encoder, torch.optim.AdamW(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay))
    start = load_checkpoint(ckpt, tiny, optimizer, cfg, enc)
    t0 = time.perf_counter()
    teacher = Teacher(vae, training_images(cfg), device)
    log.log({"event": "resume" if start else "start", "step": start, "config": asdict(cfg),
             "num_images": len(teacher), "tiny": tiny.config.to_dict(), "data_s": time.perf_counter() - t0})
    print(f"[tiny-decoder] {len(teacher)} images, tiny {tiny.config}, steps {start + 1}..{cfg.steps}", flush=True)

    t0 = time.perf_counter()
    for step in range(start + 1, cfg.steps + 1):
        logs = distill_step(tiny, teacher, optimizer, step, cfg)
        if enc is not None:
            logs.update(encoder_step(enc[0], teacher, enc[1], step, cfg))
        if step % cfg.log_every == 0 or step in (start + 1, cfg.steps):
            log.log({"step": step, **logs})
            print(f"[tiny-decoder] step {step} loss {logs['loss']:.4f} L1 {logs['l1_to_full']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save_checkpoint(ckpt, tiny, optimizer, step, cfg, enc)
    tiny.eval()
    finish(cfg, tiny, None if enc is None else enc[0].eval(), len(teacher), device, log)
    shutil.rmtree(ckpt, ignore_errors=True)
    return out


def finish(cfg: DistillConfig, tiny: TinyDecoder, encoder: torch.nn.Module | None, num_images: int,
           device: torch.device, log: JsonlLogger) -> None:
    """Save the decoder (and, with an encoder, the ``AutoencoderTiny`` pair) into ``cfg.out``, then evaluate."""
    out = Path(cfg.out)
    info: dict[str, Any] = {
        "name": "Tiny latent decoder", "distilled_from": cfg.model,
        "training": (f"{cfg.steps} steps x {cfg.batch_size} latents of {num_images} images ({cfg.images}, "
                     f"{cfg.size} px), L1 + MSE onto the full decoder's output"
                     + (f" + {cfg.image_weight} x (L1 + MSE) onto the image" if cfg.image_weight else "")
                     + f", posterior samples x {cfg.latent_noise}, AdamW lr {cfg.lr} cosine, seed {cfg.seed} "
                     "(`python -m train.train_tiny_decoder`)"),
        "train_config": asdict(cfg)}
    save_tiny_decoder(tiny, out, info)
    if encoder is not None:
        ae = build_tiny_autoencoder(None, decoder=tiny)
        ae.encoder.load_state_dict(encoder.state_dict())
        ae.save_pretrained(out, safe_serialization=True)  # config.json + diffusion_pytorch_model.safetensors
    if cfg.eval_images:
        quality = evaluate(tiny, cfg.model, n=cfg.eval_images, size=cfg.size, world_seed=cfg.world_seed,
                           world_identities=cfg.world_identities, device=device,
                           latency_repeats=cfg.latency_repeats, encoder=encoder)
        info["quality"] = quality
        save_tiny_decoder(tiny, out, info)
        (out / QUALITY_FILE).write_text(json.dumps(quality, indent=2) + "\n")
        log.log({"event": "evaluation", **{f"{k}_{n}": v for k, m in quality["reconstruction"].items()
                                           for n, v in m.items()}})
        print(format_quality(quality), flush=True)
    log.log({"event": "done", "step": cfg.steps, "model": str(out)})


# ---------------------------------------------------------------------------------------------------- evaluation
def _to01(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.float().clamp(-1, 1) + 1) / 2


def _l1_psnr(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean L1 and mean per-image PSNR (dB) of two (N, 3, H, W) batches in [-1, 1], measured in [0, 1]."""
    a, b = _to01(a), _to01(b)
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)  # (N,)
    return float((a - b).abs().mean()), float((10 * torch.log10(1.0 / mse)).mean())


def _median_ms(fn: Any, x: torch.Tensor, repeats: int) -> float:
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn(x)
            sync()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def _gflop(fn: Any, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(x)
    return counter.get_total_flops() / 1e9


def _ipnet_folder(model: str) -> Path | None:
    """The folder of ``model`` when it is an ``InstantPortraitPipeline`` checkpoint (edits can be measured)."""
    path = Path(model).expanduser()
    index = path / "model_index.json"
    if index.is_file() and json.loads(index.read_text()).get("_class_name") == "InstantPortraitPipeline":
        return path
    return None


@torch.no_grad()
def evaluate(tiny: TinyDecoder, model: str, *, n: int = 64, size: int = 64, world_seed: int = 0,
             world_identities: int = 120, device: torch.device | str = "cpu", latency_repeats: int = 20,
             edits: bool = True, batch: int = 16, encoder: torch.nn.Module | None = None) -> dict[str, Any]:
    """The quality cost of ``tiny`` against the full decoder of ``model`` on ``n`` held-out world *test* samples
    (and of a tiny ``encoder`` against the full encoder, under ``"encoder"``: see ``encoder_quality``).

    Returns ``{"reconstruction": {"full": {l1_to_image, psnr_to_image}, "tiny": {l1_to_full, psnr_to_full,
    l1_to_image, psnr_to_image}}, "edits": {...} | None, "latency_ms": {full, tiny}, "gflop": {full, tiny}, ...}``
    (pixels in [0, 1]; ``edits`` only when ``model`` is an ``InstantPortraitPipeline`` folder and ``edits``).
    """
    from instantportrait.demo import World

    device = torch.device(device)
    tiny = tiny.to(device).eval()
    pipe = None
    folder = _ipnet_folder(str(resolve_model_path(model))) if edits else None
    if folder is not None:
        from instantportrait.pipelines.ipnet import InstantPortraitPipeline

        pipe = InstantPortraitPipeline.from_pretrained(folder, dtype=torch.float32).to(device)
        pipe.set_progress_bar_config(disable=True)
        vae = pipe.vae
    else:
        vae = load_vae(model, device)
    check_compatible(tiny, vae.config)
    sf = float(vae.config.scaling_factor)

    def full(z: torch.Tensor) -> torch.Tensor:  # what InstantPortraitPipeline.decode_latents does
        return vae.decode(z.to(vae.dtype) / sf).sample.float()

    samples = list(World(world_seed, world_identities, size=size).samples("test", n))
    images = to_pixels(to_uint8([im for s in samples for im in (s.source, s.target)], size))  # (2n, 3, H, W)
    dec_full, dec_tiny = [], []
    for i in range(0, images.shape[0], batch):
        z = vae.encode(images[i:i + batch].to(device, vae.dtype)).latent_dist.mode() * sf  # (b, C, h, w)
        dec_full.append(full(z).cpu())
        dec_tiny.append(tiny.decode(z).float().cpu())
    f_img, t_img = torch.cat(dec_full), torch.cat(dec_tiny)
    l1_tf, psnr_tf = _l1_psnr(t_img, f_img)
    l1_fi, psnr_fi = _l1_psnr(f_img, images)
    l1_ti, psnr_ti = _l1_psnr(t_img, images)
    result: dict[str, Any] = {
        "images": f"synthetic world seed {world_seed}, {world_identities} identities, test split, sources+targets",
        "num_images": int(images.shape[0]), "size": size,
        "reconstruction": {"full": {"l1_to_image": l1_fi, "psnr_to_image": psnr_fi},
                           "tiny": {"l1_to_full": l1_tf, "psnr_to_full": psnr_tf, "l1_to_image": l1_ti,
                                    "psnr_to_image": psnr_ti}},
        "edits": None}
    if pipe is not None:
        targets = to_pixels(to_uint8([s.target for s in samples], size))  # (n, 3, H, W)
        e_full, e_tiny = [], []
        for i in range(0, n, batch):
            chunk = samples[i:i + batch]
            lat = pipe([s.source for s in chunk], [s.instruction for s in chunk], output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images  # (b, C, h, w), scaled
            e_full.append(full(lat).cpu())
            e_tiny.append(tiny.decode(lat).float().cpu())
        e_full_t, e_tiny_t = torch.cat(e_full), torch.cat(e_tiny)
        l1_e, psnr_e = _l1_psnr(e_tiny_t, e_full_t)
        result["edits"] = {"num_images": n, "l1_tiny_to_full": l1_e, "psnr_tiny_to_full": psnr_e,
                           "l1_full_to_target": _l1_psnr(e_full_t, targets)[0],
                           "l1_tiny_to_target": _l1_psnr(e_tiny_t, targets)[0]}
    f = tiny.config.upsampling_factor
    z1 = torch.randn(1, tiny.config.latent_channels, size // f, size // f,
                     generator=torch.Generator().manual_seed(0)).to(device)
    result["latency_ms"] = {"full": _median_ms(full, z1, latency_repeats),
                            "tiny": _median_ms(tiny.decode, z1, latency_repeats)}
    result["gflop"] = {"full": _gflop(full, z1), "tiny": _gflop(tiny.decode, z1)}
    full_modules = [m for m in (vae.post_quant_conv, vae.decoder) if m is not None]
    result["params"] = {"full": sum(p.numel() for m in full_modules for p in m.parameters()),
                        "tiny": sum(p.numel() for p in tiny.parameters())}
    if encoder is not None:
        result["encoder"] = encoder_quality(encoder.to(device).eval(), vae, images, tiny, full, batch,
                                            latency_repeats)
    result.update(device=str(device), threads=torch.get_num_threads(), latency_repeats=latency_repeats)
    return result


@torch.no_grad()
def encoder_quality(encoder: torch.nn.Module, vae: Any, images: torch.Tensor, tiny: TinyDecoder, full: Any,
                    batch: int, latency_repeats: int) -> dict[str, Any]:
    """A tiny encoder's cost on the evaluation images (pixels (N, 3, H, W) in [-1, 1]): mean latent L1 to the full
    encoder's scaled mode, and the images through tiny encoder + full decoder and tiny encoder + tiny decoder (L1 and
    PSNR to the image, pixels in [0, 1]); latency and GFLOP of both encoders for one image."""
    device, sf = next(tiny.parameters()).device, float(vae.config.scaling_factor)

    def full_enc(x: torch.Tensor) -> torch.Tensor:  # what encode_image gives, scaled
        return vae.encode(x.to(vae.dtype)).latent_dist.mode().float() * sf

    def tiny_enc(x: torch.Tensor) -> torch.Tensor:
        return encoder(x.to(next(encoder.parameters()).dtype)).float()

    lat_l1, via_full, via_tiny = [], [], []
    for i in range(0, images.shape[0], batch):
        x = images[i:i + batch].to(device)  # (b, 3, H, W)
        z = tiny_enc(x)  # (b, C, h, w), scaled
        lat_l1.append((z - full_enc(x)).abs().flatten(1).mean(1).cpu())
        via_full.append(full(z).cpu())
        via_tiny.append(tiny.decode(z).float().cpu())
    (l1_f, psnr_f), (l1_t, psnr_t) = _l1_psnr(torch.cat(via_full), images), _l1_psnr(torch.cat(via_tiny), images)
    x1 = images[:1].to(device)
    return {"latent_l1_to_full": float(torch.cat(lat_l1).mean()),
            "tiny_encoder_full_decoder": {"l1_to_image": l1_f, "psnr_to_image": psnr_f},
            "tiny_encoder_tiny_decoder": {"l1_to_image": l1_t, "psnr_to_image": psnr_t},
            "latency_ms": {"full": _median_ms(full_enc, x1, latency_repeats),
                           "tiny": _median_ms(tiny_enc, x1, latency_repeats)},
            "gflop": {"full": _gflop(full_enc, x1), "tiny": _gflop(tiny_enc, x1)}}


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> tuple[DistillConfig, Path | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="pipeline folder (or config key / Hub id) whose VAE is distilled")
    p.add_argument("--out", help="output folder of the tiny decoder (required unless --evaluate)")
    p.add_argument("--images", default=DEMO_WORLD, help=f"a folder of training images or {DEMO_WORLD!r}")
    p.add_argument("--evaluate", type=Path, default=None, metavar="FOLDER",
                   help="only measure the saved tiny decoder in FOLDER against --model's full decoder")
    p.add_argument("--blocks", default=None, help="blocks per stage, e.g. 3,3,1 (default: TAESD's rule)")
    defaults = DistillConfig(model="", out="")
    for f in fields(DistillConfig):
        if f.name in ("model", "out", "images", "num_blocks", "resume", "encoder"):
            continue
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        kind = int if f.name == "width" else type(value)
        p.add_argument(flag, type=kind, default=value)
    p.add_argument("--no-resume", action="store_true", help="ignore (and delete) a checkpoint in --out")
    p.add_argument("--encoder", action="store_true",
                   help="also distil a TAESD-layout encoder; save an AutoencoderTiny folder (pipe.use_tiny_vae)")
    args = p.parse_args(argv)
    if args.evaluate is None and not args.out:
        p.error("--out is required (or --evaluate FOLDER)")
    kw = {f.name: getattr(args, f.name) for f in fields(DistillConfig)
          if f.name not in ("out", "num_blocks", "resume")}
    blocks = tuple(int(b) for b in args.blocks.split(",")) if args.blocks else None
    cfg = DistillConfig(**kw, out=args.out or "", num_blocks=blocks, resume=not args.no_resume)
    return cfg, args.evaluate


def main(argv: list[str] | None = None) -> dict[str, Any] | Path:
    cfg, evaluate_folder = parse_args(argv)
    if evaluate_folder is None:
        return train(cfg)
    tiny = load_tiny_decoder(evaluate_folder)
    pair = (evaluate_folder / AE_CONFIG_FILE).is_file()  # an AutoencoderTiny saved beside the decoder
    quality = evaluate(tiny, cfg.model, n=cfg.eval_images, size=cfg.size, world_seed=cfg.world_seed,
                       world_identities=cfg.world_identities, device=resolve_device(cfg.device),
                       latency_repeats=cfg.latency_repeats,
                       encoder=load_tiny_vae(evaluate_folder).encoder if pair else None)
    trained_from = read_tiny_decoder_info(evaluate_folder)["info"].get("distilled_from")
    print(f"tiny decoder {evaluate_folder} (distilled from {trained_from}) vs the full decoder of {cfg.model}:")
    print(format_quality(quality))
    print(json.dumps(quality))
    return quality


if __name__ == "__main__":
    main()
