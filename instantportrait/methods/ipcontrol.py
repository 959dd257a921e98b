"""IP-Control baseline: IP-Adapter FaceID + a ControlNet on Stable Diffusion 1.5, as a registry editor.

The identity comes from **IP-Adapter FaceID** (``h94/IP-Adapter-FaceID``, file ``ip-adapter-faceid_sd15.bin``): an
MLP maps the *L2-normalised* 512-d ArcFace embedding of ``buffalo_l`` (the model card's ``normed_embedding``) to 4
tokens of the UNet's 768-d cross-attention width, and every UNet cross-attention attends to them through extra
``to_k_ip`` / ``to_v_ip`` projections (same processor as InstantID: :class:`~.instantid.IPAttnProcessor`). The layout
comes from a **ControlNet** on the source: by default the SD1.5 OpenPose ControlNet fed with the head of an OpenPose
skeleton drawn from the 5 face landmarks (:func:`~instantportrait.face.keypoints.draw_openpose_head`: the face's
position
and tilt, nothing else), or ``control="canny"``: the Canny ControlNet on the source's edges (keeps the whole layout,
also what the instruction may want changed).

FaceID variant: the plain FaceID model. Its ``.bin`` also holds a rank-128 LoRA for *every* UNet attention
(``<N>.to_{q,k,v,out}_lora.{down,up}.weight``, applied as ``W x + up(down(x))``); the separate
``ip-adapter-faceid_sd15_lora.safetensors`` of the release is the same LoRA for diffusers' ``load_lora_weights``
users. We merge it into the attention weights at load time (``W += scale * up @ down``), so it costs nothing per step
and no second file is needed. (FaceID-Plus/PlusV2 need a CLIP image encoder as well; not used here.)

Key mapping (``ip-adapter-faceid_sd15.bin``: ``{"image_proj": {...}, "ip_adapter": {...}}``, ``weights_only`` load):

* ``image_proj.proj.0`` (1024 x 512), ``image_proj.proj.2`` (3072 x 1024), ``image_proj.norm`` (768) ->
  :class:`FaceIDProjection` (``strict=True``), GELU between the two linears, LayerNorm per token.
* ``ip_adapter.<N>.*`` -> processor ``N`` of ``unet.attn_processors`` (32 in SD1.5; ``attn1`` at even, ``attn2`` at
  odd ``N``): ``to_{q,k,v,out}_lora.{down,up}.weight`` on every layer (merged into ``to_q``, ``to_k``, ``to_v``,
  ``to_out.0``), ``to_{k,v}_ip.weight`` on the cross-attentions.

The instruction becomes a caption as in InstantID (``prompt_template``; ``EditSettings.extra["prompt"]`` overrides).
Defaults: 30 DDIM steps, guidance 7.5, IP scale 1.0 (the FaceID model card's), ControlNet scale 1.0, 512-class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import nn

from instantportrait.config import ModelSpec, resolve_model
from instantportrait.errors import ModelNotAvailableError
from instantportrait.face.keypoints import canny_edges, draw_openpose_head, template_keypoints
from instantportrait.hub import locate
from instantportrait.methods.base import EditSettings, ProgressFn
from instantportrait.methods.instantid import (
    DenoiseInputs,
    FaceConditionedEditor,
    attention_module,
    check_spec_available,
    control_tensor,
    encode_clip_prompts,
    group_ip_adapter_layers,
    install_ip_adapter,
    random_architecture_name,
    random_ip_adapter_state,
    read_ip_adapter,
    snap_size,
    unzero_controlnet,
    weights_variant,
    write_clip_tokenizer_folder,
)
from instantportrait.methods.registry import register

CONTROL_MODELS = {"openpose": "controlnet-openpose-sd15", "canny": "controlnet-canny-sd15"}
LORA_TARGETS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}


@dataclass(frozen=True)
class FaceIDProjectionConfig:
    embedding_dim: int = 512
    hidden_dim: int = 1024
    cross_attention_dim: int = 768
    num_tokens: int = 4


class FaceIDProjection(nn.Module):
    """IP-Adapter FaceID's image projection: (B, 512) embedding -> (B, num_tokens, cross_attention_dim).

    Keys: ``proj.0`` (Linear), ``proj.2`` (Linear), ``norm`` (LayerNorm over each token)."""

    def __init__(self, config: FaceIDProjectionConfig = FaceIDProjectionConfig()) -> None:
        super().__init__()
        c = self.config = config
        self.proj = nn.Sequential(nn.Linear(c.embedding_dim, c.hidden_dim), nn.GELU(),
                                  nn.Linear(c.hidden_dim, c.cross_attention_dim * c.num_tokens))
        self.norm = nn.LayerNorm(c.cross_attention_dim)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> FaceIDProjection:
        try:
            hidden, emb = state["proj.0.weight"].shape
            out = state["proj.2.weight"].shape[0]
            cross = state["norm.weight"].shape[0]
        except KeyError as exc:
            raise ValueError(f"not an IP-Adapter FaceID projection (missing {exc}); keys: {sorted(state)[:6]}. "
                             "FaceID-Plus checkpoints are not supported") from exc
        if out % cross:
            raise ValueError(f"FaceID projection output {out} is not a multiple of its token width {cross}")
        return cls(FaceIDProjectionConfig(emb, hidden, cross, out // cross))

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = self.proj(embeds)  # (B, T * D)
        return self.norm(x.reshape(-1, c.num_tokens, c.cross_attention_dim))  # (B, T, D)


def merge_attention_lora(unet: nn.Module, groups: dict[str, dict[str, torch.Tensor]], scale: float = 1.0) -> int:
    """Fold the FaceID LoRA into the attention weights and remove its keys from ``groups``; returns merged layers.

    Per layer either all four (to_q, to_k, to_v, to_out) down/up pairs are present, or none."""
    merged = 0
    for name, params in groups.items():
        lora = {k: params.pop(k) for k in [k for k in params if "_lora." in k]}
        if not lora:
            continue
        attn = attention_module(unet, name)
        expected = {f"{t}_lora.{d}.weight" for t in LORA_TARGETS for d in ("down", "up")}
        if set(lora) != expected:
            raise ValueError(f"layer {name}: incomplete LoRA {sorted(lora)}, expected {sorted(expected)}")
        for target, path in LORA_TARGETS.items():
            linear = attn.get_submodule(path)
            down, up = lora[f"{target}_lora.down.weight"], lora[f"{target}_lora.up.weight"]  # (r, in), (out, r)
            if down.shape[1] != linear.in_features or up.shape[0] != linear.out_features:
                raise ValueError(f"layer {name}.{path}: LoRA {tuple(up.shape)} x {tuple(down.shape)} does not fit "
                                 f"a {linear.out_features} x {linear.in_features} weight")
            with torch.no_grad():
                delta = up.float() @ down.float()  # (out, in)
                linear.weight += (scale * delta).to(linear.weight.dtype)
        merged += 1
    return merged


@dataclass(frozen=True)
class SD15Architecture:
    """Configs of every network IP-Control runs; :func:`sd15_ipcontrol_architecture` gives the released sizes."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    projection: FaceIDProjectionConfig
    scheduler: dict[str, Any]
    controlnet_conditioning_channels: tuple[int, ...] = (16, 32, 96, 256)


SD15_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
                  "steps_offset": 1, "prediction_type": "epsilon"}


def sd15_ipcontrol_architecture() -> SD15Architecture:
    """SD1.5 (UNet 860M, CLIP ViT-L/14 text, VAE) + an SD1.5 ControlNet + FaceID's projection.

    The SD1.5 configs are the shared ones in :mod:`instantportrait.models.architectures` (its InstructPix2Pix UNet
    with the original 4-channel ``conv_in``)."""
    from instantportrait.models.architectures import CLIP_VIT_L14_TEXT, SD15_IP2P_UNET, SD15_VAE

    return SD15Architecture(
        unet={**SD15_IP2P_UNET, "in_channels": 4},
        vae=dict(SD15_VAE),
        text_encoder=dict(CLIP_VIT_L14_TEXT),
        projection=FaceIDProjectionConfig(),
        scheduler=dict(SD15_SCHEDULER),
    )


def tiny_sd15_ipcontrol_architecture(embedding_dim: int = 128) -> SD15Architecture:
    """The same at test size (32-d context, two UNet levels, 8x VAE, 4 face tokens)."""
    return SD15Architecture(
        unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                  attention_head_dim=8, norm_num_groups=8),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                 layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.18215),
        text_encoder=dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                          projection_dim=32, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        projection=FaceIDProjectionConfig(embedding_dim, 2 * embedding_dim, 32, 4),
        scheduler=dict(SD15_SCHEDULER),
        controlnet_conditioning_channels=(8, 8, 8, 16),
    )


def build_sd15_networks(arch: SD15Architecture, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, nn.Module]:
    """Every IP-Control network with random weights, built directly on ``device``."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)  # the caller's global RNG is left as it was
        unet = UNet2DConditionModel(**arch.unet)
        controlnet = unzero_controlnet(ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=arch.controlnet_conditioning_channels))
        nets = {"unet": unet, "controlnet": controlnet, "vae": AutoencoderKL(**arch.vae),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**arch.text_encoder)),
                "projection": FaceIDProjection(arch.projection)}
    return {k: m.to(dtype=dtype).eval() for k, m in nets.items()}


def random_faceid_lora_state(unet: nn.Module, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random FaceID LoRA tensors (``"<N>.to_q_lora.down.weight"``, ...) for every attention, release numbering."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for n, name in enumerate(unet.attn_processors):
        attn = attention_module(unet, name)
        for target, path in LORA_TARGETS.items():
            linear = attn.get_submodule(path)
            state[f"{n}.{target}_lora.down.weight"] = torch.randn(rank, linear.in_features, generator=gen) * 0.05
            state[f"{n}.{target}_lora.up.weight"] = torch.randn(linear.out_features, rank, generator=gen) * 0.05
    return state


@dataclass(frozen=True)
class IPControlConfig:
    """IP-Control settings. Per-request overrides as for InstantID: ``EditSettings`` steps / guidance and
    ``extra`` keys ``controlnet_conditioning_scale``, ``ip_adapter_scale``, ``prompt``, ``negative_prompt``."""

    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    controlnet_conditioning_scale: float = 1.0
    ip_adapter_scale: float = 1.0
    lora_scale: float = 1.0  # merged into the UNet at load time
    prompt_template: str = "a portrait photo of a person, {instruction}, highly detailed, best quality"
    negative_prompt: str = "monochrome, lowres, bad anatomy, worst quality, low quality, blurry"
    control: str = "openpose"  # openpose (head skeleton from the face landmarks) | canny (source edges)
    face_pack: str | Path = "buffalo_l"  # FaceID was trained on buffalo_l's normalised embeddings
    face_root: str | Path | None = None
    ip_adapter_file: str = "ip-adapter-faceid_sd15.bin"
    openpose_radius: int = 4
    openpose_stick_width: int = 4
    size_multiple: int = 64
    architecture: SD15Architecture | None = None  # random-weights mode; None = real SD1.5 sizes

    def __post_init__(self) -> None:
        if self.control not in CONTROL_MODELS:
            raise ValueError(f"control must be one of {sorted(CONTROL_MODELS)}, got {self.control!r}")

    def prompt_for(self, instruction: str) -> str:
        return self.prompt_template.format(instruction=instruction.strip().rstrip("."))


@dataclass
class IPControlModels:
    unet: nn.Module
    controlnet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    projection: FaceIDProjection
    scheduler_config: dict[str, Any]
    face: Any | None


@register
class IPControlEditor(FaceConditionedEditor):
    name = "ipcontrol"
    label = "IP-Control (FaceID + ControlNet)"
    description = ("IP-Adapter FaceID (identity tokens + merged LoRA) with an SD1.5 ControlNet (OpenPose head from "
                   "the face landmarks, or Canny); text-to-image with the instruction as a caption.")
    model_key = "ip-adapter-faceid"
    base_key = "sd15-base"

    def __init__(self, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 model: str | None = None, resolution: int | None = 512, base_model: str | None = None,
                 controlnet: str | None = None, config: IPControlConfig | None = None) -> None:
        super().__init__(device=device, dtype=dtype, model=model, resolution=resolution)
        self.base_override = base_model
        self.controlnet_override = controlnet
        self.config = config or IPControlConfig()
        self._random = False

    def controlnet_spec(self) -> ModelSpec:
        return resolve_model(CONTROL_MODELS[self.config.control], self.controlnet_override)

    def check_available(self) -> None:
        self._check_face_pack()
        for spec in (self.spec(), self.controlnet_spec(), self.base_spec()):
            check_spec_available(spec)

    def _load(self) -> IPControlModels:
        from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self._random = False
        face = self.face_encoder().load()
        release = locate(self.spec())
        control_dir = locate(self.controlnet_spec())
        base = locate(self.base_spec())
        ip_file = release / self.config.ip_adapter_file
        if not ip_file.is_file():
            raise ModelNotAvailableError(f"Model {self.spec().describe()} at {release} has no "
                                         f"{self.config.ip_adapter_file}.")
        for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if not (base / sub).is_dir():
                raise ModelNotAvailableError(f"Model {self.base_spec().describe()} at {base} has no {sub}/ folder: "
                                             "expected the SD1.5 diffusers layout.")
        dt, dev = self.dtype, self.device

        def pretrained(cls: Any, sub: str) -> Any:
            return cls.from_pretrained(base, subfolder=sub, variant=weights_variant(base / sub), dtype=dt).eval()

        unet = pretrained(UNet2DConditionModel, "unet")
        vae = pretrained(AutoencoderKL, "vae")
        text_encoder = pretrained(CLIPTextModel, "text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
        controlnet = ControlNetModel.from_pretrained(control_dir, variant=weights_variant(control_dir),
                                                     dtype=dt).eval()
        import json

        scheduler_config = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
        proj_state, ip_state = read_ip_adapter(ip_file)
        projection = FaceIDProjection.from_state_dict(proj_state)
        projection.load_state_dict(proj_state, strict=True)
        groups = group_ip_adapter_layers(unet, ip_state)
        merge_attention_lora(unet, groups, self.config.lora_scale)
        install_ip_adapter(unet, groups)
        width = unet.config.cross_attention_dim
        if projection.config.cross_attention_dim != width or controlnet.config.cross_attention_dim != width:
            raise ValueError(f"FaceID tokens are {projection.config.cross_attention_dim}-d, the UNet / ControlNet "
                             f"attend to {width} / {controlnet.config.cross_attention_dim}-d: mismatched models")
        return IPControlModels(unet=unet.to(dev, dt), controlnet=controlnet.to(dev), vae=vae.to(dev),
                               text_encoder=text_encoder.to(dev), tokenizer=tokenizer,
                               projection=projection.to(dev, dt).eval(), scheduler_config=scheduler_config,
                               face=face)

    def _build_random(self) -> IPControlModels:
        """Real SD1.5 sizes with random weights (or test size, as :func:`~.instantid.random_architecture_name`)."""
        arch = self.config.architecture or (
            tiny_sd15_ipcontrol_architecture(512) if random_architecture_name(self) == "tiny"
            else sd15_ipcontrol_architecture())
        nets = build_sd15_networks(arch, self.device, self.dtype)
        install_ip_adapter(nets["unet"], group_ip_adapter_layers(nets["unet"], random_ip_adapter_state(nets["unet"])))
        nets["unet"].to(self.device, self.dtype)
        from instantportrait.models.architectures import (  # byte-level BPE, special tokens at the real ids
            random_weights_tokenizer,
        )

        tokenizer = random_weights_tokenizer(arch.text_encoder["vocab_size"])
        self._random = True
        return IPControlModels(unet=nets["unet"], controlnet=nets["controlnet"], vae=nets["vae"],
                               text_encoder=nets["text_encoder"], tokenizer=tokenizer, projection=nets["projection"],
                               scheduler_config=dict(arch.scheduler), face=None)

    def _modules(self, loaded: IPControlModels) -> list[nn.Module]:
        return [loaded.unet, loaded.controlnet, loaded.vae, loaded.text_encoder, loaded.projection]

    def describe(self) -> dict[str, Any]:
        c = self.config
        info = {**super().describe(), "controlnet_evaluations": self.nfe(),
                "model": self.spec().repo_id, "revision": self.spec().revision,
                "base_model": self.base_spec().repo_id, "controlnet": self.controlnet_spec().repo_id,
                "control": c.control, "face_pack": str(c.face_pack), "face_embedding": "normalised",
                "steps": c.num_inference_steps, "guidance_scale": c.guidance_scale,
                "controlnet_conditioning_scale": c.controlnet_conditioning_scale,
                "ip_adapter_scale": c.ip_adapter_scale, "lora_scale": c.lora_scale,
                "prompt_template": c.prompt_template, "negative_prompt": c.negative_prompt}
        if self._random and self.is_loaded:
            info["random_weights"] = True
            info["random_architecture"] = "custom" if c.architecture else random_architecture_name(self)
            info["face_analysis"] = "skipped (random weights: template keypoints, random embedding; not timed)"
        return info

    def _faces(self, loaded: IPControlModels, images: list[PIL.Image.Image],
               seed: int | list[int]) -> tuple[torch.Tensor, list[np.ndarray]]:
        dim = loaded.projection.config.embedding_dim
        if loaded.face is None:  # random-weights mode
            emb = torch.stack([torch.randn(dim, generator=g) for g in self.generators(len(images), seed)])
            return torch.nn.functional.normalize(emb, dim=-1), [template_keypoints(img.size) for img in images]
        embeds, kps = [], []
        for i, img in enumerate(images):
            what = "source image" if len(images) == 1 else f"source image {i}"
            face = loaded.face.encode(img, what=f"{what} (IP-Control needs a face for the identity)")
            embeds.append(torch.from_numpy(np.asarray(face.embedding, dtype=np.float32)))
            kps.append(face.kps)
        emb = torch.stack(embeds)  # (B, D), L2-normalised
        if emb.shape[1] != dim:
            raise ValueError(f"face pack {self.config.face_pack!r} gives {emb.shape[1]}-d embeddings but FaceID "
                             f"expects {dim}-d (it was trained on buffalo_l, 512-d)")
        return emb, kps

    def _control_images(self, images: list[PIL.Image.Image], kps: list[np.ndarray]) -> list[PIL.Image.Image]:
        c = self.config
        if c.control == "canny":
            return [canny_edges(img) for img in images]
        return [draw_openpose_head(img.size, k, radius=c.openpose_radius, stick_width=c.openpose_stick_width)
                for img, k in zip(images, kps)]

    @torch.no_grad()
    def _edit(self, loaded: IPControlModels, images: list[PIL.Image.Image], instructions: list[str],
              seed: int | list[int],
              settings: EditSettings, progress: ProgressFn | None) -> list[PIL.Image.Image]:
        from diffusers import DDIMScheduler

        s = self._settings(settings)
        work_size = images[0].size
        size = snap_size(work_size, self.config.size_multiple)
        images = [img.resize(size, PIL.Image.Resampling.LANCZOS) if img.size != size else img for img in images]
        dev, dt, n = self.device, self.dtype, len(images)

        emb, kps = self._faces(loaded, images, seed)
        prompts = [s["prompt"] or self.config.prompt_for(text) for text in instructions]
        text, _ = encode_clip_prompts([loaded.tokenizer], [loaded.text_encoder], prompts, dev, penultimate=False)
        neg, _ = encode_clip_prompts([loaded.tokenizer], [loaded.text_encoder], [s["negative_prompt"]] * n, dev,
                                     penultimate=False)  # (B, 77, 768)
        tokens = loaded.projection(emb.to(dev, dt))  # (B, 4, 768)
        null_tokens = loaded.projection(torch.zeros_like(emb).to(dev, dt))  # (B, 4, 768)
        inputs = DenoiseInputs(
            text_cond=text, text_uncond=neg, ip_cond=tokens, ip_uncond=null_tokens, control_context_cond=text,
            control_context_uncond=neg,
            control_image=control_tensor(self._control_images(images, kps), dev, loaded.controlnet.dtype))
        scheduler = DDIMScheduler.from_config(loaded.scheduler_config)  # fresh per edit; DDIM as the FaceID card
        return self._sample(loaded, inputs, scheduler, seed, size, s, progress, work_size)


def save_tiny_ipcontrol(folder: str | Path, *, embedding_dim: int = 128,
                        seed: int = 0) -> tuple[Path, Path, Path, SD15Architecture]:
    """Write ``folder/sd15-base`` (SD1.5 diffusers layout, fp16 variant files), ``folder/controlnet`` (a diffusers
    ControlNet folder) and ``folder/faceid`` (``ip-adapter-faceid_sd15.bin``: projection + per-layer LoRA + IP
    weights, nested dict, ``torch.save``). Random weights (tests). Returns ``(base, controlnet, release, arch)``."""
    from diffusers import PNDMScheduler

    folder = Path(folder)
    arch = tiny_sd15_ipcontrol_architecture(embedding_dim)
    nets = build_sd15_networks(arch, "cpu", torch.float32, seed)
    base, control, release = folder / "sd15-base", folder / "controlnet", folder / "faceid"
    for sub in ("unet", "vae", "text_encoder"):
        nets[sub].to(torch.float16).save_pretrained(base / sub, variant="fp16", safe_serialization=True)
    write_clip_tokenizer_folder(base / "tokenizer")
    PNDMScheduler(**{k: v for k, v in arch.scheduler.items() if k not in ("clip_sample",)}).save_pretrained(
        base / "scheduler")  # SD1.5 ships a PNDM config; we sample with DDIM from it
    nets["controlnet"].save_pretrained(control, safe_serialization=True)
    ip_state = {**random_faceid_lora_state(nets["unet"], seed=seed), **random_ip_adapter_state(nets["unet"], seed)}
    release.mkdir(parents=True, exist_ok=True)
    torch.save({"image_proj": nets["projection"].state_dict(), "ip_adapter": ip_state},
               release / "ip-adapter-faceid_sd15.bin")
    return base, control, release, arch
