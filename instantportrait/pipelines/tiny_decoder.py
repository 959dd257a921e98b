"""A small latent decoder distilled from a pipeline's VAE decoder: a cheaper last step for the one-step edit.

    decoder = load_tiny_decoder("instantportrait/demo/models/tiny_decoder")
    pipe.use_tiny_decoder(decoder)          # or a folder path; pipe.use_full_decoder() switches back

The VAE decoder is the largest cost of a one-step edit (2.51 of about 4.45 TFLOP at 512² for SD1.5, BENCHMARKS.md
§6). The
tiny decoder is diffusers' ``DecoderTiny`` (the decoder of ``AutoencoderTiny``, TAESD's layout: no normalisation,
no attention, plain ReLU conv blocks, nearest upsampling), configured from the pipeline VAE's config: its latent
channels and its upsampling factor ``2 ** (len(block_out_channels) - 1)`` (8 for SD, 4 for the demo world).
It reads the pipeline's *scaled* latents (what ``InstantPortraitPipeline.decode_latents`` receives, i.e. already
multiplied by ``vae.config.scaling_factor``) and returns pixels in [-1, 1] of the full decoder's shape.

Default sizes: width ``min(64, min(vae.block_out_channels))`` for every stage and ``(3, ..., 3, 1)`` blocks per
stage — exactly TAESD's decoder for an SD-class VAE (width 64, blocks (3, 3, 3, 1)); width 16, blocks (3, 3, 1)
for the demo world's small 4x VAE. Trained by ``python -m train.train_tiny_decoder`` (distillation onto the full
decoder); its quality cost is measured there and written into the model card.

On disk (safetensors only): ``tiny_decoder.safetensors`` (weights), ``tiny_decoder.json`` (architecture and
provenance), ``README.md`` (model card: what it was distilled from, how, and its measured quality cost).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from instantportrait.errors import ModelNotAvailableError

WEIGHTS_FILE = "tiny_decoder.safetensors"
CONFIG_FILE = "tiny_decoder.json"
CARD_FILE = "README.md"
FORMAT = "instantportrait-tiny-decoder"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TinyDecoderConfig:
    """Architecture of a tiny decoder. ``num_blocks[i]``: ``AutoencoderTinyBlock``s of stage ``i``; a 2x nearest
    upsampling follows every stage but the last, so ``len(num_blocks) == log2(upsampling_factor) + 1``."""

    latent_channels: int = 4
    upsampling_factor: int = 8
    width: int = 64
    num_blocks: tuple[int, ...] = (3, 3, 3, 1)
    out_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_blocks", tuple(int(b) for b in self.num_blocks))
        for name in ("latent_channels", "upsampling_factor", "width", "out_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        f = self.upsampling_factor
        if f & (f - 1):
            raise ValueError(f"upsampling_factor must be a power of 2 (a VAE's 2 ** (levels - 1)), got {f}")
        stages = int(math.log2(f)) + 1
        if len(self.num_blocks) != stages or any(b < 0 for b in self.num_blocks):
            raise ValueError(f"num_blocks must hold {stages} non-negative counts for a {f}x decoder "
                             f"(one stage per resolution), got {self.num_blocks}")

    @classmethod
    def from_vae_config(cls, vae_config: Any, *, width: int | None = None,
                        num_blocks: tuple[int, ...] | None = None) -> TinyDecoderConfig:
        """Sizes for a VAE (an ``AutoencoderKL``, its ``config`` or a config dict): latent channels, output channels
        and upsampling factor from the VAE; ``width`` / ``num_blocks`` default to the module docstring's rule."""
        cfg = getattr(vae_config, "config", vae_config)
        get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
        blocks = get("block_out_channels")
        if not blocks or get("latent_channels") is None:
            raise ValueError("not a VAE config: it needs `block_out_channels` and `latent_channels` "
                             "(pass an AutoencoderKL, its .config, or vae/config.json as a dict)")
        stages = len(blocks)
        return cls(latent_channels=int(get("latent_channels")), upsampling_factor=2 ** (stages - 1),
                   width=int(width if width is not None else min(64, min(blocks))),
                   num_blocks=tuple(num_blocks) if num_blocks is not None else (3,) * (stages - 1) + (1,),
                   out_channels=int(get("out_channels", 3)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_blocks"] = list(self.num_blocks)
        return d


class TinyDecoder(nn.Module):
    """Scaled latents (B, C, h, w) -> pixels (B, 3, f h, f w), ``f = config.upsampling_factor``.

    ``forward`` returns the raw output (what distillation regresses onto the full decoder's raw output, whose nominal
    range is [-1, 1]); ``decode`` clamps it to [-1, 1] (what the pipeline uses).
    """

    def __init__(self, config: TinyDecoderConfig):
        super().__init__()
        from diffusers.models.autoencoders.vae import DecoderTiny

        self.config = config
        self.decoder = DecoderTiny(in_channels=config.latent_channels, out_channels=config.out_channels,
                                   num_blocks=config.num_blocks,
                                   block_out_channels=(config.width,) * len(config.num_blocks),
                                   upsampling_scaling_factor=2, act_fn="relu", upsample_fn="nearest")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
            raise ValueError(f"latents must be a (B, C, h, w) tensor, got "
                             f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
        if latents.shape[1] != self.config.latent_channels:
            raise ValueError(f"this tiny decoder reads {self.config.latent_channels}-channel latents, got "
                             f"{latents.shape[1]} channels: it was distilled for another VAE")

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> raw pixels (B, 3, f h, f w), nominally in [-1, 1] (not clamped)."""
        self.check_latents(latents)
        return self.decoder(latents.to(self.dtype))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> pixels (B, 3, f h, f w) in [-1, 1]."""
        return self(latents).clamp(-1.0, 1.0)


def build_tiny_decoder(vae_or_config: Any, *, width: int | None = None, num_blocks: tuple[int, ...] | None = None,
                       seed: int | None = 0) -> TinyDecoder:
    """A freshly initialised tiny decoder for a VAE (module, config or dict) or a ``TinyDecoderConfig``.

    ``seed`` makes the initialisation deterministic without touching the global RNG (``None``: global RNG).
    """
    config = vae_or_config if isinstance(vae_or_config, TinyDecoderConfig) else TinyDecoderConfig.from_vae_config(
        vae_or_config, width=width, num_blocks=num_blocks)
    if seed is None:
        return TinyDecoder(config).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyDecoder(config).eval()


def check_compatible(decoder: TinyDecoder, vae_config: Any) -> None:
    """Raise ``ValueError`` when ``decoder`` cannot stand in for this VAE's decoder (channels or upsampling)."""
    want = TinyDecoderConfig.from_vae_config(vae_config)
    have = decoder.config
    if have.latent_channels != want.latent_channels:
        raise ValueError(f"the tiny decoder reads {have.latent_channels}-channel latents but this VAE makes "
                         f"{want.latent_channels}-channel latents: distil one for this pipeline "
                         "(python -m train.train_tiny_decoder --model ...)")
    if have.upsampling_factor != want.upsampling_factor or have.out_channels != want.out_channels:
        raise ValueError(f"the tiny decoder upsamples {have.upsampling_factor}x to {have.out_channels} channels but "
                         f"this VAE decodes {want.upsampling_factor}x to {want.out_channels}: distil one for this "
                         "pipeline (python -m train.train_tiny_decoder --model ...)")


# ---------------------------------------------------------------------------------------------------- files
def _write_atomic(path: Path, write: Any) -> None:
    """``write(tmp_path)`` then rename over ``path``: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def model_card(config: TinyDecoderConfig, info: dict[str, Any]) -> str:
    """README text (``hub.cards.model_card``, kind ``tiny-decoder``): what the decoder was distilled from, how, and
    its measured quality cost (``info["quality"]``, the dict ``train.train_tiny_decoder.evaluate`` returns, rendered
    as a table when present)."""
    from instantportrait.hub.cards import model_card as render

    arch = (f"{config.latent_channels} latent channels, {config.upsampling_factor}x upsampling, width {config.width}, "
            f"blocks per stage {list(config.num_blocks)}" + (f", {info['params']:,} parameters" if "params" in info
                                                            else ""))
    quality = info.get("quality")
    return render({
        "kind": "tiny-decoder", "name": info.get("name", "Tiny latent decoder"),
        "details": f"- Distilled from: the VAE decoder of `{info.get('distilled_from', 'unknown')}`\n"
                   f"- Architecture: {arch}"
                   + ("" if quality else "\n\nQuality cost: not measured yet "
                                         "(`python -m train.train_tiny_decoder --evaluate FOLDER`)."),
        "training": info.get("training"), "notes": info.get("note"),
        "sections": {"Measured quality cost": format_quality(quality)} if quality else {}})


def format_quality(q: dict[str, Any]) -> str:
    """A markdown table of an evaluation dict (see ``train.train_tiny_decoder.evaluate``)."""
    rows = ["| decoded with | L1 to full decode | PSNR to full decode | L1 to image | PSNR to image | ms / decode | "
            "GFLOP / decode |", "|---|---|---|---|---|---|---|"]
    lat, flop = q.get("latency_ms", {}), q.get("gflop", {})
    for name in ("full", "tiny"):
        m = q["reconstruction"][name]
        to_full = ("0", "∞") if name == "full" else (f"{m['l1_to_full']:.4f}", f"{m['psnr_to_full']:.2f} dB")
        rows.append(f"| {name} VAE decoder | {to_full[0]} | {to_full[1]} | {m['l1_to_image']:.4f} | "
                    f"{m['psnr_to_image']:.2f} dB | {lat.get(name, float('nan')):.2f} | "
                    f"{flop.get(name, float('nan')):.3f} |")
    text = (f"{q['num_images']} held-out images ({q.get('images', '?')}, {q.get('size', '?')} px), each encoded by the "
            "frozen VAE encoder and decoded both ways; pixels in [0, 1]. Latency: one image, median of "
            f"{q.get('latency_repeats', '?')} calls on {q.get('device', '?')}"
            f" ({q.get('threads', '?')} threads).\n\n" + "\n".join(rows))
    edits = q.get("edits")
    if edits:
        text += ("\n\nOn the pipeline's own one-step edits of the held-out sources "
                 f"({edits['num_images']} edits; what a user sees): L1 tiny vs full decode "
                 f"{edits['l1_tiny_to_full']:.4f} "
                 f"(PSNR {edits['psnr_tiny_to_full']:.2f} dB); L1 to the rendered target: full "
                 f"{edits['l1_full_to_target']:.4f}, tiny {edits['l1_tiny_to_target']:.4f}.")
    enc = q.get("encoder")
    if enc:
        text += ("\n\nTiny encoder (both VAE sides, `pipe.use_tiny_vae`): latent L1 to the full encoder "
                 f"{enc['latent_l1_to_full']:.4f} (scaled units); images through tiny encoder + full decoder: L1 "
                 f"{enc['tiny_encoder_full_decoder']['l1_to_image']:.4f}, PSNR "
                 f"{enc['tiny_encoder_full_decoder']['psnr_to_image']:.2f} dB; tiny encoder + tiny decoder: L1 "
                 f"{enc['tiny_encoder_tiny_decoder']['l1_to_image']:.4f}, PSNR "
                 f"{enc['tiny_encoder_tiny_decoder']['psnr_to_image']:.2f} dB; ms / encode full "
                 f"{enc['latency_ms']['full']:.2f}, tiny {enc['latency_ms']['tiny']:.2f}; GFLOP / encode full "
                 f"{enc['gflop']['full']:.3f}, tiny {enc['gflop']['tiny']:.3f}.")
    return text


def save_tiny_decoder(decoder: TinyDecoder, folder: str | Path, card_info: dict[str, Any] | None = None) -> Path:
    """Write ``tiny_decoder.safetensors``, ``tiny_decoder.json`` and ``README.md`` into ``folder``; each file is
    replaced atomically. Returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = dict(card_info or {})
    info.setdefault("params", sum(p.numel() for p in decoder.parameters()))
    tensors = {k: v.detach().contiguous().cpu() for k, v in decoder.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": decoder.config.to_dict(), "info": info}
    _write_atomic(folder / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    _write_atomic(folder / CONFIG_FILE, lambda p: p.write_text(json.dumps(meta, indent=2, default=str) + "\n"))
    _write_atomic(folder / CARD_FILE, lambda p: p.write_text(model_card(decoder.config, info)))
    return folder


def read_tiny_decoder_info(path: str | Path) -> dict[str, Any]:
    """The ``tiny_decoder.json`` of a saved decoder (``config`` and ``info``)."""
    folder = _folder_of(path)
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise ModelNotAvailableError(f"tiny decoder {path}: no {CONFIG_FILE} in {folder}. Make one with "
                                     "`python -m train.train_tiny_decoder --model PIPELINE --out FOLDER`.")
    meta = json.loads(file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{file} is not a tiny decoder config (format {meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def _folder_of(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt", ".pkl"):
        raise ValueError(f"{path}: tiny decoders load from safetensors only (a folder with {WEIGHTS_FILE})")
    return path.parent if path.suffix == ".safetensors" else path


def load_tiny_decoder(path: str | Path, *, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> TinyDecoder:
    """Load a decoder saved by ``save_tiny_decoder`` (a folder, or its ``.safetensors`` file with the JSON beside it).

    Missing files raise ``ModelNotAvailableError`` saying how to make one; weights that do not match the config
    raise ``ValueError``.
    """
    from safetensors.torch import load_file

    folder = _folder_of(path)
    if not folder.is_dir():
        raise ModelNotAvailableError(f"tiny decoder {path}: no such folder. Make one with "
                                     "`python -m train.train_tiny_decoder --model PIPELINE --out FOLDER`.")
    weights = Path(path) if Path(path).suffix == ".safetensors" else folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelNotAvailableError(f"tiny decoder {path}: {weights.name} is missing in {folder}. Make one with "
                                     "`python -m train.train_tiny_decoder --model PIPELINE --out FOLDER`.")
    meta = read_tiny_decoder_info(folder)
    cfg = dict(meta["config"])
    config = TinyDecoderConfig(**{**cfg, "num_blocks": tuple(cfg["num_blocks"])})
    decoder = TinyDecoder(config)
    state = load_file(str(weights))
    expected = decoder.state_dict()
    bad = sorted(set(expected) ^ set(state)) + sorted(k for k in expected if k in state
                                                       and expected[k].shape != state[k].shape)
    if bad:
        raise ValueError(f"{weights} does not match {CONFIG_FILE} (mismatched tensors: {bad[:4]}"
                         f"{'...' if len(bad) > 4 else ''})")
    decoder.load_state_dict(state)
    if dtype is None:
        dtype = next(iter(state.values())).dtype
    return decoder.to(device=device, dtype=dtype).eval()
