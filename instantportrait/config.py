"""Every model the project can use, in one place: ids, pinned revisions, licences, sizes.

A model is named by a short key (``ipnet``, ``instructpix2pix``, ...). Its location can be overridden, most specific
first, by

1. an explicit argument (``resolve_model("ipnet", "path/or/repo@revision")``),
2. the environment variable ``INSTANTPORTRAIT_<KEY>`` (key upper-cased, ``-`` -> ``_``), e.g.
   ``INSTANTPORTRAIT_IPNET=/data/ipnet`` or ``INSTANTPORTRAIT_MAGICBRUSH=someone/magicbrush@<commit>``,
3. the default below.

A value is either a local folder or a Hub repo id with an optional ``@revision``.

Revisions: where we could not read the Hub's commit hash from this offline machine we pin ``main`` and say so
(``pinned=False``); ``python -m instantportrait models`` prints which ones are unpinned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

ENV_PREFIX = "INSTANTPORTRAIT_"


@dataclass(frozen=True)
class ModelSpec:
    """Where one model lives and what it is."""

    key: str
    repo_id: str
    revision: str = "main"
    kind: str = "diffusers"  # diffusers | insightface | clip | file
    licence: str = ""
    size_gb: float = 0.0
    description: str = ""
    subfolder: str | None = None
    pinned: bool = False  # True once `revision` is a commit hash we verified
    allow_patterns: tuple[str, ...] = ()
    # Added for `python -m instantportrait models / download` (issue 8):
    variant: str | None = None  # diffusers weight variant the loader must ask for (e.g. "fp16"), None = default
    required_files: tuple[str, ...] = ()  # glob patterns that must each match a file for the model to count as present
    published: bool = True  # False: the Hub repo does not exist yet (`download --all` skips it)
    pin_source: str = ""  # where the pinned commit hash was read (public references), for the record

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.key.upper().replace("-", "_")

    @property
    def is_local(self) -> bool:
        return Path(self.repo_id).expanduser().exists()

    def describe(self) -> str:
        rev = "" if self.is_local else f"@{self.revision}"
        return f"{self.key} ({self.repo_id}{rev})"


_DIFFUSERS_PATTERNS = ("*.json", "*.txt", "**/*.json", "**/*.txt", "**/*.safetensors")

# What `download` fetches (and `models` checks) for an SD1.5-class InstructPix2Pix repository: the pipeline index, the
# scheduler, the tokenizer and the three weighted components as fp32 safetensors. Not the root-level single-file
# checkpoints (7.7 GB each), the pickled `.bin` duplicates, or the safety checker (editors load with
# `safety_checker=None`).
_IP2P_CONFIGS = ("model_index.json", "scheduler/*.json", "tokenizer/*", "unet/config.json", "vae/config.json",
                 "text_encoder/config.json")
_IP2P_PATTERNS = (*_IP2P_CONFIGS, "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                  "text_encoder/model.safetensors")
# MagicBrush's repo was uploaded in July 2023 with pickled `.bin` weights (unet/diffusion_pytorch_model.bin, 3.44 GB,
# is listed on the Hub); whether a safetensors conversion exists is unknown, so both are allowed (diffusers loads
# `.bin` with torch.load(weights_only=True)). If both exist, both are fetched: a known cost of not pinning it.
_MAGICBRUSH_PATTERNS = (*_IP2P_PATTERNS, "unet/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.bin",
                        "text_encoder/pytorch_model.bin")
# SDXL: fp16 variant files only (load with variant="fp16"), both text encoders and tokenizers.
_SDXL_PATTERNS = ("model_index.json", "scheduler/*.json", "tokenizer/*", "tokenizer_2/*", "unet/config.json",
                  "vae/config.json", "text_encoder/config.json", "text_encoder_2/config.json",
                  "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
                  "text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors")
# InstantID: the IdentityNet ControlNet (fp32 safetensors, the only format released) and the IP-Adapter (pickle;
# load it with torch.load(weights_only=True)).
_INSTANTID_PATTERNS = ("ControlNetModel/config.json", "ControlNetModel/diffusion_pytorch_model.safetensors",
                       "ip-adapter.bin")

# Hub repos our trainers publish to. They do not exist until a full-scale training run is pushed
# (see README "Training"); until then `ipnet`/`idenet` fall back to the offline demo models when those exist.
IPNET_REPO = "instantportrait/ipnet-sd15"
IDENET_REPO = "instantportrait/idenet-sd15"

MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in [
        ModelSpec(
            "ipnet", IPNET_REPO, licence="CreativeML OpenRAIL-M (inherits SD1.5); identity loss uses "
            "insightface-derived weights (non-commercial)", size_gb=2.1,
            description="IPNet: one-step student distilled from IDE-Net", allow_patterns=_DIFFUSERS_PATTERNS,
            published=False,
        ),
        ModelSpec(
            "idenet", IDENET_REPO, licence="CreativeML OpenRAIL-M (inherits SD1.5); identity loss uses "
            "insightface-derived weights (non-commercial)", size_gb=2.1,
            description="IDE-Net: identity-enhanced multi-step teacher", allow_patterns=_DIFFUSERS_PATTERNS,
            published=False,
        ),
        ModelSpec(
            "instructpix2pix", "timbrooks/instruct-pix2pix", licence="MIT (weights: CreativeML OpenRAIL-M)",
            size_gb=4.3, description="InstructPix2Pix (Brooks et al. 2023); IDE-Net initialisation",
            allow_patterns=_IP2P_PATTERNS, revision="31519b5cb02a7fd89b906d88731cd4d6a7bbf88d", pinned=True,
            pin_source="the Hub cache snapshot name used in many public projects' code and docs",
        ),
        ModelSpec(
            "magicbrush", "vinesmsuic/magicbrush-jul7", licence="CC BY 4.0 (MagicBrush); SD weights OpenRAIL-M",
            size_gb=4.3, description="MagicBrush fine-tune of InstructPix2Pix, diffusers format",
            allow_patterns=_MAGICBRUSH_PATTERNS,
        ),
        ModelSpec(
            "sdxl-base", "stabilityai/stable-diffusion-xl-base-1.0", licence="CreativeML OpenRAIL++-M",
            size_gb=7.0, description="SDXL base (InstantID backbone)", allow_patterns=_SDXL_PATTERNS,
            variant="fp16", revision="462165984030d82259a11f4367a4eed129e94a7b", pinned=True,
            pin_source="the Hub cache snapshot name used in many public projects' code",
        ),
        ModelSpec(
            "instantid", "InstantX/InstantID", licence="Apache-2.0 (code/weights); face pack non-commercial",
            size_gb=4.2, description="InstantID IdentityNet ControlNet + IP-Adapter",
            allow_patterns=_INSTANTID_PATTERNS, required_files=_INSTANTID_PATTERNS,
            revision="57b32dfee076092ad2930c71fd6d439c2c3b1820", pinned=True,
            pin_source="pinned revision in several public projects' download scripts",
        ),
        ModelSpec(
            "buffalo_l", "buffalo_l", kind="insightface", licence="insightface: non-commercial research only",
            size_gb=0.28, description="insightface pack (SCRFD-10G + ArcFace w600k_r50); evaluation face model",
            required_files=("det_10g.onnx", "w600k_r50.onnx"),
        ),
        ModelSpec(
            "antelopev2", "antelopev2", kind="insightface", licence="insightface: non-commercial research only",
            size_gb=0.34, description="insightface pack (SCRFD-10G + ArcFace glintr100); InstantID's face model",
            required_files=("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
        ),
        ModelSpec(
            "clip", "ViT-L/14", kind="clip", licence="MIT (OpenAI CLIP)", size_gb=0.89,
            description="CLIP ViT-L/14 (clip-anytorch) for CLIP-T / CLIP-I / directional scores",
        ),
        # The real-time path's tiny VAE (pipe.use_tiny_vae("taesd")): diffusers AutoencoderTiny weights, 2.4M
        # parameters (fp32 safetensors, ~10 MB), for SD-class latents. Unpinned: no commit hash readable offline.
        ModelSpec(
            "taesd", "madebyollin/taesd", licence="MIT", size_gb=0.01,
            description="TAESD: tiny VAE encoder + decoder (AutoencoderTiny) for the real-time one-step path",
            allow_patterns=("config.json", "diffusion_pytorch_model.safetensors"),
        ),
        # IP-Control baseline (methods/ipcontrol.py): IP-Adapter FaceID + an SD1.5 ControlNet on SD1.5.
        ModelSpec(
            "sd15-base", "stable-diffusion-v1-5/stable-diffusion-v1-5", licence="CreativeML OpenRAIL-M",
            size_gb=2.2, description="Stable Diffusion 1.5 (IP-Control backbone), fp16 variant files",
            allow_patterns=("model_index.json", "scheduler/*.json", "tokenizer/*", "unet/config.json",
                            "vae/config.json", "text_encoder/config.json",
                            "unet/diffusion_pytorch_model.fp16.safetensors",
                            "vae/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.fp16.safetensors"),
        ),
        ModelSpec(
            "ip-adapter-faceid", "h94/IP-Adapter-FaceID", licence="non-commercial research only (insightface "
            "embeddings; see the model card)", size_gb=0.1,
            description="IP-Adapter FaceID for SD1.5 (face-ID projection + LoRA + IP layers)",
            allow_patterns=("ip-adapter-faceid_sd15.bin",),
        ),
        ModelSpec(
            "controlnet-openpose-sd15", "lllyasviel/control_v11p_sd15_openpose", licence="CreativeML OpenRAIL-M",
            size_gb=1.45, description="ControlNet 1.1 OpenPose for SD1.5 (IP-Control's default condition)",
            allow_patterns=("config.json", "diffusion_pytorch_model.safetensors"),
        ),
        ModelSpec(
            "controlnet-canny-sd15", "lllyasviel/control_v11p_sd15_canny", licence="CreativeML OpenRAIL-M",
            size_gb=1.45, description="ControlNet 1.1 Canny for SD1.5 (IP-Control with control='canny')",
            allow_patterns=("config.json", "diffusion_pytorch_model.safetensors"),
        ),
        # IP-Control-XL baseline (methods/ipcontrol_xl.py): IP-Adapter FaceID SDXL + an SDXL ControlNet on sdxl-base.
        # Revisions unpinned (main): no commit hash could be read from this offline machine.
        ModelSpec(
            "ip-adapter-faceid-sdxl", "h94/IP-Adapter-FaceID", licence="non-commercial research only (insightface "
            "embeddings; see the model card)", size_gb=1.07,  # 536M fp16 parameters: projection, LoRA, IP layers
            description="IP-Adapter FaceID for SDXL (face-ID projection + LoRA + IP layers; LoRA merged at load)",
            allow_patterns=("ip-adapter-faceid_sdxl.bin",),
        ),
        ModelSpec(
            "controlnet-openpose-sdxl", "thibaud/controlnet-openpose-sdxl-1.0",
            licence="see the model card (Hub licence tag: other); SDXL-derived", size_gb=5.0,
            description="OpenPose ControlNet for SDXL, diffusers format (IP-Control-XL's default condition)",
            # Its diffusers weights' format is not known here: either counts; not the single-file OpenPoseXL2 copy.
            allow_patterns=("config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
            required_files=("config.json", "diffusion_pytorch_model.*"),
        ),
        ModelSpec(
            "controlnet-canny-sdxl", "diffusers/controlnet-canny-sdxl-1.0", licence="CreativeML OpenRAIL++-M",
            size_gb=2.5, description="Canny ControlNet for SDXL, fp16 variant (IP-Control-XL with control='canny')",
            allow_patterns=("config.json", "diffusion_pytorch_model.fp16.safetensors"), variant="fp16",
        ),
    ]
}


# Toy models shipped in the repo, trained by this project's own trainers on the synthetic portrait world
# (`python -m train.train_scorers`, `python -m train.demo`). Offline defaults where the real models are absent.
# dtype names accepted on every command line and setting, and the torch dtype each means.
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}


def torch_dtype(name: str):
    """The ``torch.dtype`` of a name in :data:`DTYPE_NAMES` (``"fp16"`` -> ``torch.float16``); ValueError otherwise.
    torch is imported here, not at module level, so ``config`` stays light."""
    import torch

    try:
        return getattr(torch, DTYPE_NAMES[name])
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPE_NAMES)}") from None


DEMO_ROOT = Path(__file__).resolve().parent / "demo" / "models"
DEMO_FACE_PACK = DEMO_ROOT / "face_pack"
DEMO_CLIP = DEMO_ROOT / "clip" / "demo_clip.safetensors"
DEMO_WORLD = {"seed": 0, "num_identities": 120}  # the synthetic world the demo editors were trained on (train.demo)


def env_override(key: str) -> str | None:
    spec = MODELS.get(key)
    name = spec.env_var if spec else ENV_PREFIX + key.upper().replace("-", "_")
    value = os.environ.get(name, "").strip()
    return value or None


def parse_location(value: str) -> tuple[str, str | None]:
    """``"repo/id@rev"`` -> ``("repo/id", "rev")``; a local path is returned as is (``@`` allowed in paths)."""
    if Path(value).expanduser().exists():
        return str(Path(value).expanduser()), None
    if "@" in value:
        repo, rev = value.rsplit("@", 1)
        return repo, rev or None
    return value, None


def resolve_model(key: str, override: str | None = None) -> ModelSpec:
    """The spec for ``key`` after applying an explicit override, then the environment, then the default.

    An unknown key with an override describes an ad-hoc model (``--model some/repo``).
    """
    value = override or env_override(key)
    base = MODELS.get(key)
    if base is None:
        if value is None:
            raise KeyError(f"unknown model {key!r}; known: {', '.join(sorted(MODELS))}")
        base = ModelSpec(key, value)
    if value is None:
        return base
    if base.kind in ("clip", "insightface"):  # names like "ViT-L/14@336px" are not repo@revision
        return replace(base, repo_id=value, revision="main", pinned=False)
    repo, rev = parse_location(value)
    # An override replaces the location, so the default's pin no longer applies.
    return replace(base, repo_id=repo, revision=rev or "main", pinned=False)
