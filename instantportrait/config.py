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
        ),
        ModelSpec(
            "idenet", IDENET_REPO, licence="CreativeML OpenRAIL-M (inherits SD1.5); identity loss uses "
            "insightface-derived weights (non-commercial)", size_gb=2.1,
            description="IDE-Net: identity-enhanced multi-step teacher", allow_patterns=_DIFFUSERS_PATTERNS,
        ),
        ModelSpec(
            "instructpix2pix", "timbrooks/instruct-pix2pix", licence="MIT (weights: CreativeML OpenRAIL-M)",
            size_gb=2.6, description="InstructPix2Pix (Brooks et al. 2023); IDE-Net initialisation",
            allow_patterns=_DIFFUSERS_PATTERNS,
        ),
        ModelSpec(
            "magicbrush", "vinesmsuic/magicbrush-jul7", licence="CC BY 4.0 (MagicBrush); SD weights OpenRAIL-M",
            size_gb=2.6, description="MagicBrush fine-tune of InstructPix2Pix, diffusers format",
            allow_patterns=_DIFFUSERS_PATTERNS,
        ),
        ModelSpec(
            "sdxl-base", "stabilityai/stable-diffusion-xl-base-1.0", licence="CreativeML OpenRAIL++-M",
            size_gb=7.0, description="SDXL base (InstantID backbone)",
            allow_patterns=("*.json", "**/*.json", "**/*.txt", "**/*.fp16.safetensors"),
        ),
        ModelSpec(
            "instantid", "InstantX/InstantID", licence="Apache-2.0 (code/weights); face pack non-commercial",
            size_gb=4.1, description="InstantID IdentityNet ControlNet + IP-Adapter",
            allow_patterns=("ControlNetModel/*", "ip-adapter.bin"),
        ),
        ModelSpec(
            "buffalo_l", "buffalo_l", kind="insightface", licence="insightface: non-commercial research only",
            size_gb=0.28, description="insightface pack (SCRFD-10G + ArcFace w600k_r50); evaluation face model",
        ),
        ModelSpec(
            "antelopev2", "antelopev2", kind="insightface", licence="insightface: non-commercial research only",
            size_gb=0.34, description="insightface pack (SCRFD-10G + ArcFace glintr100); InstantID's face model",
        ),
        ModelSpec(
            "clip", "ViT-L/14", kind="clip", licence="MIT (OpenAI CLIP)", size_gb=0.89,
            description="CLIP ViT-L/14 (clip-anytorch) for CLIP-T / CLIP-I / directional scores",
        ),
    ]
}


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
