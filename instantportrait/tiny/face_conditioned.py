"""Tiny InstantID and IP-Control(-XL) releases in the real on-disk layouts, random weights (tests and offline demos;
never a model): the base model as a diffusers folder with ``*.fp16.safetensors`` (as our default download keeps),
the ControlNet folder, and the IP-Adapter ``.bin`` pickled with ``torch.save`` as released."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from instantportrait.models.sd15 import SD15Architecture, build_sd15_networks, tiny_sd15_ipcontrol_architecture
from instantportrait.models.sdxl import (
    SDXLArchitecture,
    build_sdxl_networks,
    tiny_sdxl_instantid_architecture,
    tiny_sdxl_ipcontrol_architecture,
)
from instantportrait.tiny.diffusion import write_tiny_clip_tokenizer_files


def write_clip_tokenizer_folder(folder: Path) -> Path:
    """A byte-level CLIP tokenizer saved as the SD/SDXL repos ship theirs (vocab.json, merges.txt, config)."""
    write_tiny_clip_tokenizer_files(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))
    return folder


def _save_sdxl_base(nets: dict[str, torch.nn.Module], arch: SDXLArchitecture, base: Path) -> Path:
    """SDXL's diffusers layout (``*.fp16.safetensors`` as our default download keeps), tokenizers as released."""
    from diffusers import EulerDiscreteScheduler

    for sub in ("unet", "vae", "text_encoder", "text_encoder_2"):
        nets[sub].to(torch.float16).save_pretrained(base / sub, variant="fp16", safe_serialization=True)
    for sub in ("tokenizer", "tokenizer_2"):  # vocab.json + merges.txt + tokenizer_config.json, as released
        write_clip_tokenizer_folder(base / sub)
    EulerDiscreteScheduler(**arch.scheduler).save_pretrained(base / "scheduler")
    return base


def _save_sd15_base(nets: dict[str, torch.nn.Module], arch: SD15Architecture, base: Path) -> Path:
    """SD1.5's diffusers layout (fp16 variant files) with the PNDM scheduler config SD1.5 ships."""
    from diffusers import PNDMScheduler

    for sub in ("unet", "vae", "text_encoder"):
        nets[sub].to(torch.float16).save_pretrained(base / sub, variant="fp16", safe_serialization=True)
    write_clip_tokenizer_folder(base / "tokenizer")
    PNDMScheduler(**{k: v for k, v in arch.scheduler.items() if k not in ("clip_sample",)}).save_pretrained(
        base / "scheduler")  # SD1.5 ships a PNDM config; we sample with DDIM from it
    return base


def save_tiny_instantid(folder: str | Path, *, embedding_dim: int = 128,
                        seed: int = 0) -> tuple[Path, Path, SDXLArchitecture]:
    """Write ``folder/sdxl-base`` (SDXL diffusers layout, ``*.fp16.safetensors`` as our default download keeps) and
    ``folder/instantid`` (``ControlNetModel/`` + ``ip-adapter.bin``, a nested dict pickled with ``torch.save`` as
    released). Returns ``(base_path, release_path, architecture)``."""
    from instantportrait.methods.face_conditioned.ip_adapter import random_ip_adapter_state

    folder = Path(folder)
    arch = tiny_sdxl_instantid_architecture(embedding_dim)
    nets = build_sdxl_networks(arch, "cpu", torch.float32, seed)
    base, release = _save_sdxl_base(nets, arch, folder / "sdxl-base"), folder / "instantid"
    nets["controlnet"].save_pretrained(release / "ControlNetModel", safe_serialization=True)
    state = {"image_proj": nets["resampler"].state_dict(),
             "ip_adapter": random_ip_adapter_state(nets["unet"], seed)}
    torch.save(state, release / "ip-adapter.bin")
    return base, release, arch


def save_tiny_ipcontrol(folder: str | Path, *, embedding_dim: int = 128, seed: int = 0,
                        sdxl: bool = False) -> tuple[Path, Path, Path, SD15Architecture | SDXLArchitecture]:
    """Write ``folder/sd15-base`` (SD1.5 diffusers layout, fp16 variant files), ``folder/controlnet`` (a diffusers
    ControlNet folder) and ``folder/faceid`` (``ip-adapter-faceid_sd15.bin``: projection + per-layer LoRA + IP
    weights, nested dict, ``torch.save``). ``sdxl=True``: the IP-Control-XL release instead, ``folder/sdxl-base``
    (as :func:`save_tiny_instantid` writes it), an SDXL ControlNet and ``ip-adapter-faceid_sdxl.bin`` (the same
    keys over SDXL's attention numbering). Random weights (tests). Returns ``(base, controlnet, release, arch)``."""
    from instantportrait.methods.face_conditioned.ip_adapter import random_faceid_lora_state, random_ip_adapter_state

    folder = Path(folder)
    if sdxl:
        arch: SD15Architecture | SDXLArchitecture = tiny_sdxl_ipcontrol_architecture(embedding_dim)
        nets = build_sdxl_networks(arch, "cpu", torch.float32, seed)
        base = _save_sdxl_base(nets, arch, folder / "sdxl-base")
    else:
        arch = tiny_sd15_ipcontrol_architecture(embedding_dim)
        nets = build_sd15_networks(arch, "cpu", torch.float32, seed)
        base = _save_sd15_base(nets, arch, folder / "sd15-base")
    control, release = folder / "controlnet", folder / "faceid"
    nets["controlnet"].save_pretrained(control, safe_serialization=True)
    ip_state = {**random_faceid_lora_state(nets["unet"], seed=seed), **random_ip_adapter_state(nets["unet"], seed)}
    release.mkdir(parents=True, exist_ok=True)
    torch.save({"image_proj": nets["projection"].state_dict(), "ip_adapter": ip_state},
               release / f"ip-adapter-faceid_{'sdxl' if sdxl else 'sd15'}.bin")
    return base, control, release, arch


__all__ = ["save_tiny_instantid", "save_tiny_ipcontrol", "write_clip_tokenizer_folder"]
