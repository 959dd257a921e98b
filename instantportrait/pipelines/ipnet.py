"""InstantPortraitPipeline: IPNet's one-step (or 2-step iterative) instruction-based portrait edit.

    pipe = InstantPortraitPipeline.from_pretrained("path/or/repo", dtype=torch.float16).to("cuda")
    edited = pipe(image, "wearing hipster glasses", num_inference_steps=1, generator=torch.Generator().manual_seed(0))

One step = one network evaluation: the UNet sees (start latent ‖ source-image latent) at a fixed timestep ``t*``
and the text, and its output is read as the clean latent x̂0 (with the scheduler's prediction type). The start is
``start_latents``: pure noise ε (``start="noise"``) or the source noised to t* with ε (``start="source"``); the IPNet
trainer builds the student's training start with this same method, so the student sees the same kind of input in
training and here. Two steps = "style boost by iterative inference", as the poster presents it: x̂0 becomes the next
step's source latent (in latent space, which skips a VAE decode + encode that would only add reconstruction error)
and the same one-step map runs again; it is inference-only (no training objective targets the second output).

Two ways in, one result. PIL images (or numpy arrays) in and PIL out is the path for users: any size, any format.
The real-time path is tensors: a (B, 3, H, W) tensor in [0, 1] on the pipeline's device and ``output_type="pt"``
(no PIL or numpy round trip, no read of a device value on the host, so the call never waits for the device; with
``non_blocking=True`` the result is copied into pinned host memory asynchronously). ``run_path`` is the device-side
part of a call (encode -> UNet -> decode), which ``optimize(compile_scope="path")`` compiles as one region, and
``use_tiny_vae`` swaps both VAE halves for a TAESD-layout ``AutoencoderTiny``.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

if TYPE_CHECKING:
    from instantportrait.pipelines.tiny_decoder import TinyDecoder

START_MODES = ("noise", "source")
COMPILE_SCOPES = ("networks", "path")
SUPPORTED_STEPS = (1, 2)
CARD_FILE = "README.md"
CARD_INFO_FILE = "instantportrait_card.json"


@dataclass
class InstantPortraitPipelineOutput(BaseOutput):
    """``images``: PIL list, numpy (B, H, W, 3) in [0, 1], a (B, 3, H, W) tensor in [0, 1], or latents."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class _Placement:
    """Where a call runs: the execution device and the networks' dtypes (see ``InstantPortraitPipeline._placement``)."""

    key: tuple
    device: torch.device
    unet_dtype: torch.dtype
    vae_dtype: torch.dtype


def _module_key(module: torch.nn.Module) -> tuple:
    """What changes when a module moves, is cast, or gets offloading hooks; a few attribute reads."""
    p = next(module.parameters(), None)
    return (id(module), None if p is None else (p.device, p.dtype), hasattr(module, "_hf_hook"),
            hasattr(module, "_diffusers_hook"))


def _image_size(image: Any) -> tuple[int, int]:
    """(width, height) of a PIL image, an (H, W, C) array, or a (C, H, W) / (B, C, H, W) tensor."""
    if isinstance(image, PIL.Image.Image):
        return image.size
    if isinstance(image, np.ndarray):
        return image.shape[-2], image.shape[-3]
    return image.shape[-1], image.shape[-2]


def predicted_x0(model_output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor,
                 prediction_type: str) -> torch.Tensor:
    """Clean latent from a UNet output at noise level ᾱ_t (variance-preserving form z_t = √ᾱ x0 + √(1-ᾱ) ε).

    ``alpha_bar`` broadcasts against ``sample`` (a scalar tensor or (B, 1, 1, 1)).
    """
    if prediction_type == "epsilon":
        return (sample - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


class InstantPortraitPipeline(DiffusionPipeline):
    """IPNet: a one-step instruction-based editor with an InstructPix2Pix-format UNet (8-channel ``conv_in``).

    Args:
        vae, text_encoder, tokenizer, unet, scheduler: as in InstructPix2Pix. Only the scheduler's noise schedule
            (``alphas_cumprod``) and ``prediction_type`` are used.
        timestep: the fixed timestep ``t*`` the student was trained at.
        start: ``"noise"``: the start latent is pure Gaussian noise at ``t*``; ``"source"``: the source latent
            noised to ``t*`` (keeps more of the input's layout at small ``t*``).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components: list[str] = []

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: Any, timestep: int = 999, start: str = "noise"):
        super().__init__()
        if unet.config.in_channels != 2 * vae.config.latent_channels:
            raise ValueError(f"unet.conv_in takes {unet.config.in_channels} channels; an InstructPix2Pix-format UNet "
                             f"needs 2 x {vae.config.latent_channels} (noisy latent ‖ source latent). Use "
                             "`widen_conv_in` to convert a text-to-image UNet.")
        if start not in START_MODES:
            raise ValueError(f"start must be one of {START_MODES}, got {start!r}")
        if not 0 <= int(timestep) < scheduler.config.num_train_timesteps:
            raise ValueError(f"timestep must be in [0, {scheduler.config.num_train_timesteps}), got {timestep}")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.register_to_config(timestep=int(timestep), start=start)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        # Text embeddings per instruction (a pure function of the prompt and the text encoder's weights), so a
        # stream of frames with one instruction encodes it once. Bounded; cleared whenever `optimize` runs.
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.prompt_cache_size = 64
        self._prompt_cache_lock = threading.Lock()
        self._tiny_decoder: TinyDecoder | None = None  # `use_tiny_decoder`; None: the full VAE decoder
        self._tiny_encoder: torch.nn.Module | None = None  # `use_tiny_vae`; None: the full VAE encoder
        self._placement_cache: _Placement | None = None
        self._alphas_on: dict[str, tuple] = {}  # device -> (alphas_cumprod, its copy there): `alpha_bar`
        self._compiled_path: Any = None  # `optimize(compile_scope="path")`

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, image: Any, prompt: Any, num_inference_steps: int, prompt_embeds: torch.Tensor | None,
                     output_type: str) -> tuple[list, list[str] | None]:
        """Normalise to lists and raise one clear ``ValueError`` per bad input."""
        if image is None:
            raise ValueError("`image` is required: pass a PIL image, a numpy array, a tensor, or a list of them.")
        images = list(image) if isinstance(image, (list, tuple)) else (
            list(image.unbind(0)) if isinstance(image, torch.Tensor) and image.ndim == 4 else [image])
        if not images:
            raise ValueError("`image` is an empty list: pass at least one image.")
        for i, img in enumerate(images):
            if not isinstance(img, (PIL.Image.Image, np.ndarray, torch.Tensor)):
                raise ValueError(f"`image[{i}]` has type {type(img).__name__}; expected PIL.Image.Image, "
                                 "np.ndarray or torch.Tensor.")
        if len({_image_size(img) for img in images}) > 1:
            raise ValueError("all images in one call must have the same size; call once per size.")
        if prompt_embeds is not None:
            if prompt is not None:
                raise ValueError("pass either `prompt` or `prompt_embeds`, not both.")
            if prompt_embeds.shape[0] != len(images):
                raise ValueError(f"batch size mismatch: {len(images)} images but {prompt_embeds.shape[0]} "
                                 "prompt embeddings.")
            prompts = None
        else:
            if prompt is None:
                raise ValueError("`prompt` is required: an editing instruction such as 'wearing hipster glasses'.")
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}.")
            if not prompts or any(not p.strip() for p in prompts):
                raise ValueError("`prompt` is empty: give an editing instruction such as 'wearing hipster glasses'.")
            if len(prompts) == 1 and len(images) > 1:
                prompts = list(prompts) * len(images)
            if len(prompts) != len(images):
                raise ValueError(f"batch size mismatch: {len(images)} images but {len(prompts)} prompts.")
        if isinstance(num_inference_steps, bool) or num_inference_steps not in SUPPORTED_STEPS:
            raise ValueError(f"num_inference_steps must be one of {SUPPORTED_STEPS} (1 = one-step edit, 2 = "
                             f"iterative style boost), got {num_inference_steps!r}.")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")
        return images, list(prompts) if prompts is not None else None

    # ------------------------------------------------------------------ building blocks
    @torch.no_grad()
    def encode_prompt(self, prompt: list[str], device: torch.device | None = None,
                      use_cache: bool = True) -> torch.Tensor:
        """Text -> CLIP last hidden states, (B, 77, D). Truncates to the tokenizer's limit; caches per prompt."""
        device = device or self._placement().device
        missing = [p for p in dict.fromkeys(prompt) if not use_cache or p not in self._prompt_cache]
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids  # (M, 77)
            embeds = self.text_encoder(ids.to(device))[0].to(self._placement().unet_dtype)  # (M, 77, D)
            fresh = dict(zip(missing, embeds.unbind(0)))
        with self._prompt_cache_lock:
            rows = [fresh[p] if p in fresh else self._prompt_cache[p] for p in prompt]
            if use_cache:
                self._prompt_cache.update(fresh)
                for p in prompt:  # least recently used goes first
                    self._prompt_cache.move_to_end(p)
                while len(self._prompt_cache) > self.prompt_cache_size:
                    self._prompt_cache.popitem(last=False)
        return torch.stack(rows).to(device)  # (B, 77, D)

    def clear_prompt_cache(self) -> None:
        with self._prompt_cache_lock:
            self._prompt_cache.clear()

    def _placement(self) -> _Placement:
        """The execution device and the UNet's / VAE's dtypes, cached. diffusers' ``_execution_device`` and
        ``ModelMixin.dtype`` walk every submodule (milliseconds per access on SD1.5's UNet, several accesses per edit:
        the largest host cost of a one-step call on CPU profiles); the cache is keyed on what changes when a network
        moves, is cast or gets offloading hooks (``_module_key``: a few attribute reads per access). Inside a compiled
        region the value computed before the region is used."""
        cached = self._placement_cache
        if cached is not None and torch.compiler.is_compiling():
            return cached
        key = tuple(_module_key(m) for m in (self.unet, self.vae, self.text_encoder))
        if cached is None or cached.key != key:
            cached = _Placement(key, self._execution_device, self.unet.dtype, self.vae.dtype)
            self._placement_cache = cached
        return cached

    def optimize(self, *, channels_last: bool = False, fuse_qkv: bool = False, compile: bool = False,
                 compile_mode: str = "reduce-overhead", upcast_vae: bool = False, compile_scope: str = "networks",
                 compile_backend: str = "inductor") -> InstantPortraitPipeline:
        """Inference speed switches (each off by default in ``__call__``; this turns the chosen ones on).

        - ``channels_last``: NHWC memory format for UNet and VAE convolutions. Off by default: on an H100 with torch
          2.11, CUDA GroupNorm has no NHWC kernel, and the profile of the eager one-step 512² edit spent 41 % of its
          device time in GroupNorm and 26 % in the layout copies around it (BENCHMARKS.md §4).
        - ``fuse_qkv``: fuse attention q/k/v projections into one matmul (diffusers ``fuse_qkv_projections``).
        - ``compile``: ``torch.compile``; ``mode="reduce-overhead"`` uses CUDA graphs, which need static shapes: keep
          resolution and batch size fixed per compiled pipeline. ``compile_scope="networks"``: the UNet and the VAE
          decoder, each on its own; ``"path"``: ``run_path`` (VAE or tiny encode -> UNet step(s) -> decode) as one
          region with static shapes, so the device side of a call is one graph (one CUDA graph replay under
          ``reduce-overhead``, which applies on CUDA only: elsewhere the mode falls back to the default).
          ``compile_backend``: ``"inductor"``, or ``"eager"`` / ``"aot_eager"`` (tracing only: the CPU tests).
        - ``upcast_vae``: run the VAE in float32 when the rest is half precision. Where fp16 is safe: the UNet, the
          text encoder and TAESD-layout tiny VAEs (no normalisation, bounded activations). Not always the full
          ``AutoencoderKL`` decoder: its mid-block activations can overflow fp16 (SDXL's VAE does, hence
          ``force_upcast`` in VAE configs; SD1.5's on some images), giving NaN/black images: upcast it then.
        Tiny VAE halves set by ``use_tiny_decoder`` / ``use_tiny_vae`` before this call get ``channels_last`` and
        ``compile`` (scope ``networks``) too.
        Attention uses PyTorch SDPA (flash / memory-efficient kernels) by default in diffusers; nothing to switch.
        Half precision is chosen at load time: ``from_pretrained(..., dtype=torch.float16)``.
        """
        if compile_scope not in COMPILE_SCOPES:
            raise ValueError(f"compile_scope must be one of {COMPILE_SCOPES}, got {compile_scope!r}")
        self.clear_prompt_cache()
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
            for tiny in (self._tiny_encoder, self._tiny_decoder):
                if tiny is not None:
                    tiny.to(memory_format=torch.channels_last)
        if fuse_qkv:
            self.unet.fuse_qkv_projections()
            self.vae.fuse_qkv_projections()
        if upcast_vae:
            self.vae.to(dtype=torch.float32)
        if compile and compile_scope == "path":
            cuda_graphs_ok = compile_mode != "reduce-overhead" or self._placement().device.type == "cuda"
            mode = {"mode": compile_mode if cuda_graphs_ok else None} if compile_backend == "inductor" else {}
            self._compiled_path = torch.compile(self.run_path, backend=compile_backend, fullgraph=True,
                                                dynamic=False, **mode)
        elif compile:
            self.unet = torch.compile(self.unet, mode=compile_mode, fullgraph=True)
            self.vae.decoder = torch.compile(self.vae.decoder, mode=compile_mode, fullgraph=True)
            for tiny in (self._tiny_encoder, self._tiny_decoder):
                if tiny is not None:
                    tiny.compile(mode=compile_mode, fullgraph=True)  # in place: weight names unchanged
        return self

    # ------------------------------------------------------------------ decoder choice
    @property
    def tiny_decoder(self) -> TinyDecoder | None:
        """The decoder ``decode_latents`` uses instead of the VAE's, or ``None`` (the default: the full VAE)."""
        return self._tiny_decoder

    def use_tiny_decoder(self, decoder: TinyDecoder | str | Path) -> InstantPortraitPipeline:
        """Decode with a tiny decoder (a ``TinyDecoder`` or a folder saved by ``save_tiny_decoder``) from now on.

        Only ``decode_latents`` changes (text, VAE encode and UNet are untouched). The decoder must fit this VAE
        (latent channels, upsampling factor; ``ValueError`` otherwise); it moves to the VAE's device and dtype here
        and follows the pipeline in ``to()``. Not part of ``save_pretrained``: it is a separate artefact.
        """
        from instantportrait.pipelines.tiny_decoder import TinyDecoder, check_compatible, load_tiny_decoder

        if isinstance(decoder, (str, Path)):
            decoder = load_tiny_decoder(decoder)
        if not isinstance(decoder, TinyDecoder):
            raise ValueError(f"use_tiny_decoder takes a TinyDecoder or a folder path, got {type(decoder).__name__}")
        check_compatible(decoder, self.vae.config)
        self._tiny_decoder = decoder.to(device=self.vae.device, dtype=self.vae.dtype).eval()
        return self

    def use_full_decoder(self) -> InstantPortraitPipeline:
        """Decode with the pipeline's full VAE decoder again (the default)."""
        self._tiny_decoder = None
        return self

    def use_tiny_vae(self, vae: Any = "taesd") -> InstantPortraitPipeline:
        """Encode and decode with a TAESD-layout ``AutoencoderTiny`` from now on (see ``pipelines.tiny_vae``).

        ``vae``: an ``AutoencoderTiny``, a folder saved by its ``save_pretrained`` (``train.train_tiny_decoder
        --encoder`` writes one), ``"taesd"`` (madebyollin/taesd through ``config.MODELS``, for SD-class VAEs) or a
        Hub id. A missing TAESD raises ``ModelNotAvailableError`` at once, naming the download command; a VAE that
        does not fit this pipeline's latents raises ``ValueError`` and changes nothing. Text and UNet are untouched;
        ``use_full_vae`` switches back, ``use_tiny_decoder`` / ``use_full_decoder`` still change the decoder alone.
        """
        from instantportrait.pipelines.tiny_vae import check_tiny_vae, load_tiny_vae, tiny_decoder_of

        ae = load_tiny_vae(vae)
        check_tiny_vae(ae, self.vae.config)
        torch.nn.Module.to(ae, device=self.vae.device, dtype=self.vae.dtype)  # ModelMixin.to warns needlessly
        ae.eval().requires_grad_(False)
        self._tiny_encoder, self._tiny_decoder = ae.encoder, tiny_decoder_of(ae)
        return self

    def use_full_vae(self) -> InstantPortraitPipeline:
        """Encode and decode with the pipeline's ``AutoencoderKL`` again (the default)."""
        self._tiny_encoder = self._tiny_decoder = None
        return self

    def to(self, *args, **kwargs) -> InstantPortraitPipeline:
        """``DiffusionPipeline.to``; the tiny encoder and decoder follow the VAE's device and dtype."""
        super().to(*args, **kwargs)
        for tiny in (self._tiny_encoder, self._tiny_decoder):
            if tiny is not None:
                tiny.to(device=self.vae.device, dtype=self.vae.dtype)
        return self

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], (B, 3, H, W) -> source latents (B, 4, H/f, W/f), unscaled mode (as InstructPix2Pix);
        after ``use_tiny_vae``, the tiny encoder's (scaled) latents brought to the same unscaled units."""
        dtype = self._placement().vae_dtype
        tiny = self._tiny_encoder
        if tiny is not None:
            tiny_dtype = next(tiny.parameters()).dtype
            return tiny(pixels.to(tiny_dtype)).to(dtype) / self.vae.config.scaling_factor  # (B, 4, h, w)
        return self.vae.encode(pixels.to(dtype)).latent_dist.mode()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled clean latents (B, 4, h, w) -> pixels (B, 3, H, W) in [-1, 1], with the full VAE decoder or, after
        ``use_tiny_decoder``, the tiny one (on the latents' device: CPU offload moves only the VAE)."""
        tiny = self._tiny_decoder
        dtype = self._placement().vae_dtype
        if tiny is not None:
            if not torch.compiler.is_compiling() and (tiny.device != latents.device or tiny.dtype != dtype):
                tiny.to(device=latents.device, dtype=dtype)
            return tiny.decode(latents)
        return self.vae.decode(latents.to(dtype) / self.vae.config.scaling_factor).sample

    def alpha_bar(self, timestep: int, device: torch.device) -> torch.Tensor:
        """ᾱ_t, a 0-d float32 tensor on ``device``. The schedule is copied to each device once: a copy per call from
        pageable host memory would make every call wait for the device."""
        key = str(device)
        if torch.compiler.is_compiling():
            return self._alphas_on[key][1][int(timestep)]
        schedule = self.scheduler.alphas_cumprod
        source, table = self._alphas_on.get(key, (None, None))
        if source is not schedule:  # first use on this device, or another scheduler
            table = schedule.to(device=device, dtype=torch.float32)
            self._alphas_on[key] = (schedule, table)
        return table[int(timestep)]

    def start_latents(self, source_latents: torch.Tensor, generator: torch.Generator | list | None,
                      timestep: int | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The start latent z_{t*} for the student, (B, 4, h, w), float32: ``noise`` (ε) itself (``start="noise"``)
        or the scaled source noised to t* with it (``start="source"``). ε is drawn from ``generator`` unless given:
        the IPNet trainer passes the ε it shares with the teacher, so training and inference use this one rule."""
        t = self.config.timestep if timestep is None else timestep
        if noise is None:
            noise = randn_tensor(source_latents.shape, generator=generator, device=source_latents.device,
                                 dtype=torch.float32)  # (B, 4, h, w)
        noise = noise.to(device=source_latents.device, dtype=torch.float32)
        if self.config.start == "noise":
            return noise
        a = self.alpha_bar(t, source_latents.device)
        scaled = source_latents.float() * self.vae.config.scaling_factor
        return a.sqrt() * scaled + (1 - a).sqrt() * noise

    def predict_clean_latents(self, start: torch.Tensor, source_latents: torch.Tensor, prompt_embeds: torch.Tensor,
                              timestep: int | None = None) -> torch.Tensor:
        """One network evaluation: (z_t ‖ source latent, text) -> x̂0 (scaled latent space, float32). Differentiable."""
        t = self.config.timestep if timestep is None else timestep
        model_in = torch.cat([start, source_latents.float()], dim=1).to(self._placement().unet_dtype)  # (B, 8, h, w)
        t_tensor = torch.full((start.shape[0],), t, device=start.device, dtype=torch.long)
        out = self.unet(model_in, t_tensor, encoder_hidden_states=prompt_embeds).sample.float()  # (B, 4, h, w)
        return predicted_x0(out, start.float(), self.alpha_bar(t, start.device),
                            self.scheduler.config.prediction_type)

    # ------------------------------------------------------------------ the device side of a call
    def prepare_pixels(self, images: list, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Checked images -> pixels (B, 3, height, width) in [-1, 1] on ``device``.

        3-channel tensors (read as [0, 1]) take the hot path: joined, moved, resized only when their size is off and
        mapped to [-1, 1], their values never read on the host (diffusers' ``preprocess`` reads the minimum to detect
        [-1, 1] input, which waits for the device). PIL images and arrays go through ``VaeImageProcessor.preprocess``.
        """
        if all(isinstance(im, torch.Tensor) and im.ndim in (3, 4) and im.shape[-3] == 3 for im in images):
            x = torch.cat([im if im.ndim == 4 else im.unsqueeze(0) for im in images]).to(device, non_blocking=True)
            if tuple(x.shape[-2:]) != (height, width):
                x = self.image_processor.resize(x, height, width)  # (B, 3, height, width)
            return 2.0 * x - 1.0
        return self.image_processor.preprocess(images, height=height, width=width).to(device)  # (B, 3, H, W)

    def start_noise(self, shape: tuple[int, ...], generator: torch.Generator | list | None,
                    device: torch.device) -> torch.Tensor:
        """One step's ε, float32 on ``device``, drawn as ``randn_tensor`` draws it (on the generators' device: CPU
        generators give the same numbers on every device). A CPU draw for a CUDA device is pinned and copied
        asynchronously, so the call does not wait for the device here."""
        gens = generator if isinstance(generator, list) else [generator]
        if device.type != "cuda" or any(g is None or g.device.type != "cpu" for g in gens):
            return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        noise = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        return noise.pin_memory().to(device, non_blocking=True)  # (B, 4, h, w)

    def run_path(self, pixels: torch.Tensor, prompt_embeds: torch.Tensor, noises: tuple[torch.Tensor, ...],
                 decode: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode, one network evaluation per start noise, decode: everything a call runs on the device, as a pure
        function of tensors (no host reads), which ``optimize(compile_scope="path")`` compiles as one region.

        Step 2 edits step 1's output (it is step 2's source latent, in latent space) from a fresh start drawn by the
        same rule, so 2 steps are inference-only: the trainer trains the one-step map. Returns the scaled clean
        latents (B, 4, h, w) and, with ``decode``, pixels (B, 3, H, W) in [-1, 1] (float32), else ``None``.
        """
        source_latents = self.encode_image(pixels)  # (B, 4, h, w)
        latents = source_latents
        for noise in noises:
            start = self.start_latents(source_latents, None, noise=noise)  # (B, 4, h, w)
            latents = self.predict_clean_latents(start, source_latents, prompt_embeds)  # (B, 4, h, w)
            source_latents = latents / self.vae.config.scaling_factor
        return latents, self.decode_latents(latents).float() if decode else None

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(self, image: Any = None, prompt: str | list[str] | None = None, num_inference_steps: int = 1,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 prompt_embeds: torch.Tensor | None = None, output_type: str = "pil",
                 return_dict: bool = True, non_blocking: bool = False) -> InstantPortraitPipelineOutput | tuple:
        """Edit ``image`` (one or a batch) following ``prompt``.

        Returns images of the input size. ``num_inference_steps`` is 1 (one-step edit) or 2 (the first output is
        the second step's source). The same ``generator`` seed gives the same image.

        For users: PIL images (or (H, W, 3) arrays) in, ``output_type="pil"`` / ``"np"`` out. For real time: a
        (B, 3, H, W) tensor in [0, 1] on the pipeline's device and ``output_type="pt"``: the result stays on the
        device and nothing in the call waits for it; ``non_blocking=True`` (CUDA, ``"pt"`` / ``"latent"``) instead
        copies it into pinned host memory asynchronously: synchronise once (``torch.cuda.current_stream()
        .synchronize()``) before reading it.
        """
        # 1. Check inputs
        images, prompts = self.check_inputs(image, prompt, num_inference_steps, prompt_embeds, output_type)
        if non_blocking and output_type not in ("pt", "latent"):
            raise ValueError(f"non_blocking=True returns tensors: use output_type 'pt' or 'latent', not "
                             f"{output_type!r}.")
        place = self._placement()
        device = place.device
        width, height = _image_size(images[0])

        # 2. Encode the instruction (cached per instruction)
        if prompt_embeds is None:
            prompt_embeds = self.encode_prompt(prompts, device)  # (B, 77, D)
        prompt_embeds = prompt_embeds.to(device=device, dtype=place.unet_dtype)

        # 3. Source pixels at a multiple of the VAE factor, and every step's start noise, drawn up front (the same
        #    draws, in the same order, as one draw per step)
        f = self.vae_scale_factor
        proc_h, proc_w = max(f, height // f * f), max(f, width // f * f)
        pixels = self.prepare_pixels(images, proc_h, proc_w, device)  # (B, 3, H, W) in [-1, 1]
        shape = (pixels.shape[0], self.vae.config.latent_channels, proc_h // f, proc_w // f)
        noises = tuple(self.start_noise(shape, generator, device) for _ in range(num_inference_steps))
        self.alpha_bar(self.config.timestep, device)  # the schedule's copy on the device, read inside run_path

        # 4. Encode, one network evaluation per step, decode (one compiled region after optimize(compile_scope=...))
        run = self._compiled_path or self.run_path
        latents, decoded = run(pixels, prompt_embeds, noises, decode=output_type != "latent")

        # 5. Return at the input size
        if output_type == "latent":
            result = latents
        else:
            if (proc_h, proc_w) != (height, width):
                decoded = torch.nn.functional.interpolate(decoded, size=(height, width), mode="bicubic",
                                                          align_corners=False)
            if output_type == "pt":  # postprocess's denormalisation in one op instead of one per image
                result = (decoded * 0.5 + 0.5).clamp(0, 1)  # (B, 3, H, W) in [0, 1]
            else:
                result = self.image_processor.postprocess(decoded, output_type=output_type,
                                                          do_denormalize=[True] * decoded.shape[0])
        if non_blocking and result.device.type == "cuda":
            host = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
            result = host.copy_(result, non_blocking=True)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return InstantPortraitPipelineOutput(images=result)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, save_directory: str | Path, safe_serialization: bool = True,
                        card_info: dict | None = None, **kwargs) -> None:
        """diffusers' save plus a model card (``README.md``) generated from ``card_info`` (see
        ``hub.cards.model_card``). To upload, use ``hub.publish_checkpoint`` on the saved folder: it keeps this card
        (diffusers' ``push_to_hub`` would replace it with a generic one)."""
        if not safe_serialization:
            raise ValueError("InstantPortrait checkpoints are saved as safetensors only.")
        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
        from instantportrait.hub.cards import model_card

        save_directory = Path(save_directory)
        info = dict(card_info or getattr(self, "card_info", None) or {})
        info.setdefault("timestep", self.config.timestep)
        info.setdefault("start", self.config.start)
        (save_directory / CARD_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
        (save_directory / CARD_FILE).write_text(model_card(info))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> InstantPortraitPipeline:
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        info_path = Path(str(pretrained_model_name_or_path)) / CARD_INFO_FILE
        if info_path.exists():
            pipe.card_info = json.loads(info_path.read_text())
        return pipe


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 8) -> UNet2DConditionModel:
    """Give a text-to-image UNet an InstructPix2Pix ``conv_in``: old weights kept, new channels start at zero."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise ValueError(f"conv_in already has {old.in_channels} > {in_channels} input channels")
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def ipnet_from_instruct_pix2pix(path: str | Path, *, timestep: int = 999, start: str = "noise",
                                dtype: torch.dtype | None = None) -> InstantPortraitPipeline:
    """Build an IPNet from any InstructPix2Pix-format checkpoint (how IPNet is initialised from IDE-Net).

    ``path`` is a local folder (or a Hub repo already resolved by ``hub.locate``) with ``vae/``, ``text_encoder/``,
    ``tokenizer/``, ``unet/`` and ``scheduler/``. A 4-channel (text-to-image) UNet is widened to 8 channels.
    """
    from diffusers import DDPMScheduler

    kw = {"dtype": dtype} if dtype is not None else {}
    unet = widen_conv_in(UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw))
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    return InstantPortraitPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, timestep=timestep, start=start)
