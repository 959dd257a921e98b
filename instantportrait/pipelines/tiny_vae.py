"""A tiny VAE on both sides of the one-step edit: diffusers' ``AutoencoderTiny`` (TAESD's layout).

    pipe.use_tiny_vae("taesd")              # madebyollin/taesd (`python -m instantportrait download taesd`)
    pipe.use_tiny_vae("out/tiny")           # our own, distilled by `python -m train.train_tiny_decoder --encoder`
    pipe.use_full_vae()                     # back to the pipeline's AutoencoderKL

Why: at 512² the full VAE is 3.6 of the 4.45 TFLOP of an edit (decoder 2.5, encoder 1.1) against the UNet's 0.8;
TAESD-size halves bring the whole edit to about 1 TFLOP. The real TAESD weights fit SD-class latents (4 channels,
8x); for any other VAE (the demo world's 2x one) distil a pair with ``train.train_tiny_decoder --encoder``.

Latent units: an ``AutoencoderTiny`` reads and writes *scaled* latents (an SD VAE's latents times its
``scaling_factor``; its own config says ``scaling_factor=1.0``); its encoder takes pixels in [-1, 1] and its decoder
returns pixels in [-1, 1]. The decoder half is wrapped as a :class:`TinyDecoder` sharing the same module, so
everything ``use_tiny_decoder`` does (device following, ``optimize``) applies to it unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from instantportrait.errors import ModelNotAvailableError
from instantportrait.pipelines.tiny_decoder import TinyDecoder, TinyDecoderConfig, check_compatible

TAESD_KEY = "taesd"  # config.MODELS key of madebyollin/taesd
AE_CONFIG_FILE = "config.json"


def tiny_encoder_blocks(stages: int) -> tuple[int, ...]:
    """TAESD's encoder rule: one block at full resolution, then three per downsampling stage ((1, 3, 3, 3) for 8x)."""
    return (1,) + (3,) * (stages - 1)


def build_tiny_autoencoder(vae_or_config: Any, *, width: int | None = None, seed: int | None = 0,
                           decoder: TinyDecoder | None = None) -> Any:
    """A freshly initialised ``AutoencoderTiny`` sized for a VAE (module, config or dict): encoder and decoder of
    ``TinyDecoderConfig.from_vae_config``'s width, TAESD's block counts. ``decoder``: use that trained decoder's
    weights (and sizes) for the decoder half. ``seed`` as in ``build_tiny_decoder``. An SD VAE gives exactly
    TAESD's architecture (2.4M parameters)."""
    from diffusers import AutoencoderTiny

    cfg = decoder.config if decoder is not None else TinyDecoderConfig.from_vae_config(vae_or_config, width=width)
    stages = len(cfg.num_blocks)
    kwargs = dict(in_channels=cfg.out_channels, out_channels=cfg.out_channels, latent_channels=cfg.latent_channels,
                  encoder_block_out_channels=(cfg.width,) * stages, decoder_block_out_channels=(cfg.width,) * stages,
                  num_encoder_blocks=tiny_encoder_blocks(stages), num_decoder_blocks=cfg.num_blocks,
                  upsampling_scaling_factor=2, act_fn="relu", upsample_fn="nearest", scaling_factor=1.0)
    if seed is None:
        ae = AutoencoderTiny(**kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ae = AutoencoderTiny(**kwargs)
    if decoder is not None:
        ae.decoder.load_state_dict(decoder.decoder.state_dict())
    return ae.eval()


def downsampling_factor(ae: Any) -> int:
    return 2 ** (len(ae.config.num_encoder_blocks) - 1)


def tiny_decoder_of(ae: Any) -> TinyDecoder:
    """The decoder half of an ``AutoencoderTiny`` as a :class:`TinyDecoder` (the same module: no copy)."""
    c = ae.config
    widths = set(c.decoder_block_out_channels)
    if len(widths) != 1 or c.act_fn != "relu" or c.upsample_fn != "nearest" or c.upsampling_scaling_factor != 2:
        raise ValueError("this AutoencoderTiny's decoder is not TAESD-layout (one width, ReLU, 2x nearest upsampling): "
                         f"{dict(c)}")
    config = TinyDecoderConfig(latent_channels=int(c.latent_channels),
                               upsampling_factor=2 ** (len(c.num_decoder_blocks) - 1), width=widths.pop(),
                               num_blocks=tuple(c.num_decoder_blocks), out_channels=int(c.out_channels))
    tiny = TinyDecoder(config)
    tiny.decoder = ae.decoder  # shared: the wrapper adds the latent check and the [-1, 1] clamp of `decode`
    return tiny.eval()


def check_tiny_vae(ae: Any, vae_config: Any) -> None:
    """``ValueError`` when ``ae`` cannot stand in for this VAE on both sides (latent channels, resolution factor)."""
    from diffusers import AutoencoderTiny

    if not isinstance(ae, AutoencoderTiny):
        raise ValueError(f"use_tiny_vae takes an AutoencoderTiny, a folder or a Hub id, got {type(ae).__name__}")
    check_compatible(tiny_decoder_of(ae), vae_config)
    want = TinyDecoderConfig.from_vae_config(vae_config).upsampling_factor
    if downsampling_factor(ae) != want:
        raise ValueError(f"the tiny encoder downsamples {downsampling_factor(ae)}x but this VAE encodes {want}x: "
                         "distil a pair for this pipeline (python -m train.train_tiny_decoder --encoder ...)")


def load_tiny_vae(source: Any, *, dtype: torch.dtype | None = None) -> Any:
    """An ``AutoencoderTiny`` from an instance, a local folder (``config.json`` + safetensors, as
    ``save_pretrained`` writes), ``"taesd"`` or a Hub id (located through ``config.MODELS["taesd"]``: the Hub cache
    first; offline and missing, ``ModelNotAvailableError`` within seconds naming the download command)."""
    from diffusers import AutoencoderTiny

    if isinstance(source, AutoencoderTiny):
        return source
    if not isinstance(source, (str, Path)):
        raise ValueError(f"use_tiny_vae takes an AutoencoderTiny, a folder or a Hub id, got {type(source).__name__}")
    folder = Path(source).expanduser()
    if not folder.exists():
        from instantportrait.config import MODELS, resolve_model
        from instantportrait.hub import locate

        override = None if str(source) in (TAESD_KEY, MODELS[TAESD_KEY].repo_id) else str(source)
        folder = locate(resolve_model(TAESD_KEY, override))
    if not (folder / AE_CONFIG_FILE).is_file():
        raise ModelNotAvailableError(
            f"tiny VAE {source}: no {AE_CONFIG_FILE} in {folder}. Get TAESD with `python -m instantportrait download "
            f"{TAESD_KEY}`, or distil one with `python -m train.train_tiny_decoder --encoder --model PIPELINE --out "
            "FOLDER`.")
    kw = {"dtype": dtype} if dtype is not None else {}
    return AutoencoderTiny.from_pretrained(folder, **kw).eval()


def tiny_vae_gflop(ae: Any, size: int) -> dict[str, float]:
    """GFLOP of the encoder and the decoder for one ``size``² image (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    f = downsampling_factor(ae)
    p = next(ae.parameters())
    x = torch.zeros(1, ae.config.in_channels, size, size, device=p.device, dtype=p.dtype)
    z = torch.zeros(1, ae.config.latent_channels, math.ceil(size / f), math.ceil(size / f), device=p.device,
                    dtype=p.dtype)
    out = {}
    for name, module, arg in (("encoder", ae.encoder, x), ("decoder", ae.decoder, z)):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(arg)
        out[name] = counter.get_total_flops() / 1e9
    return out
