"""CLIP scores for edit evaluation (CLIP-T, CLIP-I, directional CLIP) and a differentiable image encoder for training.

Everything goes through :class:`ClipScorer`, which wraps an OpenAI CLIP model from ``clip-anytorch``. The model comes
from one of

* ``weights=`` a local file: an OpenAI-format CLIP state dict saved with ``torch.save`` (loaded with
  ``weights_only=True``, nothing else is unpickled), a ``.safetensors`` file, or one of OpenAI's own TorchScript
  archives (``ViT-L-14.pt``; only its tensors are used, like ``clip.load(..., jit=False)`` does);
* ``variant=`` a name from ``clip.available_models()`` (default ``ViT-L/14``, or ``INSTANTPORTRAIT_CLIP``, via
  :func:`instantportrait.config.resolve_model`). Its file is looked up where ``clip.load`` keeps it
  (``download_root``, default ``~/.cache/clip``). If it is missing we only try the network after a short
  reachability probe of the download host (``openaipublic.azureedge.net``), so an offline machine gets a
  :class:`~instantportrait.errors.ModelNotAvailableError` in about a second (at most ~3.5 s) instead of a hang.
  ``INSTANTPORTRAIT_CLIP`` may also name a local file.

Scores move with the CLIP variant (ViT-L/14 and ViT-B/32 give different numbers), so benchmark results record
:meth:`ClipScorer.describe`.

Definitions (all embeddings L2-normalised):

* CLIP-T(image, text) = cos(E_I(image), E_T(text))
* CLIP-I(a, b) = cos(E_I(a), E_I(b))
* directional(src, out, src_text, tgt_text) = cos(E_I(out) - E_I(src), E_T(tgt_text) - E_T(src_text)); 0 where
  either difference has (near) zero norm, i.e. the image or the caption did not change (see ``eps``).
"""

from __future__ import annotations

import gc
import hashlib
import os
import threading
import urllib.request
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from instantportrait.config import MODELS, ModelSpec, resolve_model
from instantportrait.errors import ModelNotAvailableError
from instantportrait.hub import locating as _hub  # looked up at call time: tests patch hub.locating's probe

CLIP_KEY = "clip"
DEFAULT_DOWNLOAD_ROOT = "~/.cache/clip"
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: a stalled download fails after this long
# OpenAI CLIP's normalisation constants (clip.clip._transform).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImageLike = Image.Image | np.ndarray
Images = ImageLike | Sequence[ImageLike]
Texts = str | Sequence[str]


def _clip_module() -> Any:
    """``import clip`` on first use (it pulls in torchvision and pkg_resources)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import clip

    return clip


def clip_variants() -> dict[str, str]:
    """The variant names ``clip`` knows, mapped to their download URLs."""
    return dict(_clip_module().clip._MODELS)


def expected_clip_file(variant: str, download_root: str | Path | None = None) -> Path:
    """Where ``clip.load(variant, download_root=...)`` keeps (or would download) the variant's file."""
    urls = clip_variants()
    if variant not in urls:
        raise KeyError(f"unknown CLIP variant {variant!r}; known: {', '.join(urls)}")
    root = Path(download_root or DEFAULT_DOWNLOAD_ROOT).expanduser()
    return root / os.path.basename(urlparse(urls[variant]).path)


def _expected_sha256(url: str) -> str | None:
    """OpenAI's URLs carry the file's sha256 as their parent folder."""
    parts = urlparse(url).path.rstrip("/").split("/")
    digest = parts[-2] if len(parts) >= 2 else ""
    return digest.lower() if len(digest) == 64 and all(c in "0123456789abcdefABCDEF" for c in digest) else None


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def download_clip_weights(url: str, root: str | Path, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download one of OpenAI's CLIP files into ``root`` (same file name as ``clip.load`` uses) and return its path.

    Unlike ``clip``'s own downloader this has a socket timeout, writes to a ``.part`` file that is renamed only after
    the sha256 in the URL matched, and never leaves a truncated file behind. Raises ModelNotAvailableError.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    target = root / os.path.basename(urlparse(url).path)
    expected = _expected_sha256(url)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as source, open(tmp, "wb") as out:
            while chunk := source.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        if expected is not None and h.hexdigest() != expected:
            raise ModelNotAvailableError(f"downloaded {url} but its sha256 {h.hexdigest()} does not match {expected}")
        os.replace(tmp, target)
    except ModelNotAvailableError:
        raise
    except Exception as exc:  # URLError, timeout, HTTP 404, disk full...
        raise ModelNotAvailableError(f"downloading {url} failed ({type(exc).__name__}: {exc})") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _is_torchscript_archive(path: Path) -> bool:
    """OpenAI's released ``.pt`` files are TorchScript zips (they hold ``constants.pkl``); ``torch.save`` zips don't."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in zf.namelist())


def load_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an OpenAI-format CLIP checkpoint, on the CPU, without unpickling arbitrary objects.

    ``.safetensors`` -> safetensors; a TorchScript archive -> ``torch.jit.load`` (what ``clip.load`` does; we keep
    only its ``state_dict()``); anything else -> ``torch.load(weights_only=True)``, optionally nested under
    ``"state_dict"`` and/or prefixed with ``module.``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    if _is_torchscript_archive(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch>=2.9: "torch.jit.load is deprecated"
            module = torch.jit.load(str(path), map_location="cpu")
        return {k: v.detach() for k, v in module.state_dict().items()}
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _to_rgb_pil(image: ImageLike) -> Image.Image:
    """A PIL RGB image from a PIL image in any mode (alpha is dropped, as ``clip`` does) or a uint8 array."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise TypeError(f"arrays must be uint8 HxW or HxWxC, got {image.dtype} with shape {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _as_list(items: Any, kind: type | tuple[type, ...]) -> list:
    return [items] if isinstance(items, kind) else list(items)


class ClipScorer:
    """CLIP-T, CLIP-I and directional CLIP scores with one OpenAI CLIP model, loaded lazily.

    Args:
        variant: a ``clip.available_models()`` name or a local file; ``None`` -> ``resolve_model("clip")``, i.e.
            ``INSTANTPORTRAIT_CLIP`` if set, else ``ViT-L/14``.
        weights: a local weights file; takes precedence over ``variant``.
        device: where the model runs; inputs are moved there, results come back as float32 CPU tensors (except
            :meth:`image_features_differentiable`, which stays on ``device``).
        dtype: the model's dtype (float32 by default; float16 is for CUDA).
        download_root: where variant files live (default ``~/.cache/clip``, as ``clip.load``).
        download: allow downloading a missing variant file (after a reachability probe).

    All scoring methods run under ``torch.no_grad`` in batches of ``batch_size`` and are deterministic: the same
    inputs give the same numbers whatever the batch size (up to float rounding, < 1e-5).
    """

    def __init__(self, variant: str | None = None, *, weights: str | Path | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 download_root: str | Path | None = None, download: bool = True) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.download_root = Path(download_root or DEFAULT_DOWNLOAD_ROOT).expanduser()
        self.download = download
        self._lock = threading.Lock()
        self._model: Any = None  # clip.model.CLIP once loaded
        self._transform: Any = None
        self._sha256: str | None = None
        self.variant: str | None = None
        self.weights: Path | None = None
        self.url: str | None = None
        if weights is not None:
            self.weights = Path(weights).expanduser()
            self.spec = self._spec_for(str(self.weights))
            return
        self.spec = resolve_model(CLIP_KEY, variant)
        # parse_location splits "ViT-L/14@336px" into repo + revision: put the variant name back together.
        name = self.spec.repo_id if self.spec.is_local or self.spec.revision in ("", "main") \
            else f"{self.spec.repo_id}@{self.spec.revision}"
        urls = clip_variants()
        if Path(name).expanduser().is_file():
            self.weights = Path(name).expanduser()
        elif name in urls:
            self.variant, self.url = name, urls[name]
        else:
            looks_like_file = os.sep in name or name.endswith((".pt", ".pth", ".bin", ".safetensors"))
            why = (f"the weights file {name} does not exist" if looks_like_file
                   else f"{name!r} is neither a local file nor a clip variant ({', '.join(urls)})")
            how = _hub.how_to_get(self._spec_for(name))
            raise ModelNotAvailableError(f"CLIP model not available: {why}. To get one, {how}.")

    # ------------------------------------------------------------------ locating and loading

    @staticmethod
    def _spec_for(name: str) -> ModelSpec:
        from dataclasses import replace

        return replace(MODELS[CLIP_KEY], repo_id=name)

    @property
    def expected_path(self) -> Path:
        """The weights file this scorer loads (for a variant: where clip keeps it, present or not)."""
        if self.weights is not None:
            return self.weights
        assert self.variant is not None and self.url is not None
        return self.download_root / os.path.basename(urlparse(self.url).path)

    def _not_available(self, why: str) -> ModelNotAvailableError:
        name = self.variant or str(self.weights)
        extra = f" (or copy {self.url} to {self.expected_path})" if self.url else ""
        return ModelNotAvailableError(f"CLIP {name!r} is not available: {why}. To get it, "
                                      f"{_hub.how_to_get(self._spec_for(name))}{extra}.")

    def ensure_available(self) -> Path:
        """The local weights file, downloading a missing variant when allowed; raises ModelNotAvailableError fast.

        Offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` / ``INSTANTPORTRAIT_OFFLINE``) or with the download
        host unreachable (a ~3 s TCP probe), a missing variant raises without any download attempt.
        """
        path = self.expected_path
        if path.is_file():
            return path
        if self.weights is not None:
            raise self._not_available(f"the weights file {path} does not exist")
        assert self.url is not None
        if not self.download:
            raise self._not_available(f"{path} does not exist and downloads are disabled")
        if _hub.offline_requested():
            raise self._not_available(f"{path} does not exist and offline mode is requested (HF_HUB_OFFLINE / "
                                      "INSTANTPORTRAIT_OFFLINE)")
        endpoint = f"{urlparse(self.url).scheme}://{urlparse(self.url).netloc}"
        if not _hub.hub_reachable(endpoint):
            raise self._not_available(f"{path} does not exist and {endpoint} cannot be reached")
        try:
            return download_clip_weights(self.url, self.download_root)
        except ModelNotAvailableError as exc:
            raise self._not_available(f"{path} does not exist and {exc}") from exc

    def load(self) -> ClipScorer:
        """Load the model now (idempotent, thread-safe); returns ``self``."""
        with self._lock:
            if self._model is not None:
                return self
            build_model = _clip_module().model.build_model

            path = self.ensure_available()
            sha = sha256_file(path)
            expected = _expected_sha256(self.url) if self.url else None
            if expected is not None and sha != expected:
                raise self._not_available(f"{path} is corrupt or incomplete (sha256 {sha[:12]}..., expected "
                                          f"{expected[:12]}...); delete it and download it again")
            try:
                state_dict = load_clip_state_dict(path)
                model = build_model(state_dict)  # fp16 weights, eval mode
            except (KeyError, ValueError, RuntimeError, zipfile.BadZipFile) as exc:
                raise self._not_available(f"{path} is not an OpenAI CLIP checkpoint ({type(exc).__name__}: {exc}); "
                                          "open_clip / transformers formats are not supported") from exc
            model = model.to(device=self.device, dtype=self.dtype).eval()
            model.requires_grad_(False)  # frozen: gradients only flow to the inputs
            self._transform = self._build_transform(model.visual.input_resolution)
            self._sha256 = sha
            self._model = model
        return self

    def unload(self) -> None:
        """Free the model (a later call loads it again)."""
        with self._lock:
            self._model = None
            self._transform = None
        gc.collect()
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        """The ``clip.model.CLIP`` module (loads it on first use)."""
        if self._model is None:
            self.load()
        return self._model

    @property
    def input_resolution(self) -> int:
        return int(self.model.visual.input_resolution)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    def describe(self) -> dict[str, Any]:
        """What produced the scores, for benchmark results (loads the model)."""
        model = self.model
        try:
            from importlib.metadata import version

            lib = f"clip-anytorch {version('clip-anytorch')}"
        except Exception:  # not installed as a distribution
            lib = "clip"
        path = self.expected_path
        return {
            "variant": self.variant,
            "weights": path.name,
            "sha256": (self._sha256 or "")[:16],
            "architecture": "ViT" if hasattr(model.visual, "proj") else "ModifiedResNet",
            "input_resolution": self.input_resolution,
            "embed_dim": self.embed_dim,
            "context_length": int(model.context_length),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "library": lib,
        }

    # ------------------------------------------------------------------ preprocessing

    @staticmethod
    def _build_transform(n_px: int) -> Any:
        """clip's own transform (bicubic resize of the short side, centre crop, normalise), RGB conversion first."""
        from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

        return Compose([
            _to_rgb_pil,
            Resize(n_px, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(n_px),
            ToTensor(),
            Normalize(CLIP_MEAN, CLIP_STD),
        ])

    def preprocess(self, images: Images) -> torch.Tensor:
        """PIL images (any mode) or uint8 arrays -> normalised pixels (N, 3, R, R), float32 on the CPU."""
        items = _as_list(images, (Image.Image, np.ndarray))
        if not items:
            n = self.input_resolution
            return torch.empty(0, 3, n, n)
        self.load()
        transform = self._transform
        return torch.stack([transform(im) for im in items])  # (N, 3, R, R)

    # ------------------------------------------------------------------ features

    @staticmethod
    def _normalise(features: torch.Tensor) -> torch.Tensor:
        features = features.float()  # (N, D)
        return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (N, D)

    @torch.no_grad()
    def image_features(self, images: Images, batch_size: int = 32) -> torch.Tensor:
        """L2-normalised image embeddings (N, D), float32 on the CPU."""
        _check_batch_size(batch_size)
        items = _as_list(images, (Image.Image, np.ndarray))
        model = self.model
        out = [torch.empty(0, self.embed_dim)]
        for start in range(0, len(items), batch_size):
            pixels = self.preprocess(items[start:start + batch_size])  # (b, 3, R, R)
            feats = model.encode_image(pixels.to(self.device, self.dtype))  # (b, D)
            out.append(self._normalise(feats).cpu())  # (b, D)
        return torch.cat(out)  # (N, D)

    @torch.no_grad()
    def text_features(self, texts: Texts, batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings (N, D), float32 on the CPU; texts longer than 77 tokens are truncated."""
        _check_batch_size(batch_size)
        items = _as_list(texts, str)
        model = self.model
        clip = _clip_module()
        out = [torch.empty(0, self.embed_dim)]
        for start in range(0, len(items), batch_size):
            tokens = clip.tokenize(items[start:start + batch_size], context_length=model.context_length,
                                   truncate=True)  # (b, 77)
            feats = model.encode_text(tokens.to(self.device))  # (b, D)
            out.append(self._normalise(feats).cpu())  # (b, D)
        return torch.cat(out)  # (N, D)

    def preprocess_differentiable(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [0, 1] -> normalised model input (B, 3, R, R), float32 on ``self.device``.

        Torch ops mirroring :meth:`preprocess`, so gradients flow: the short side is resized to the model's
        resolution with antialiased bicubic interpolation (torch's antialiased kernel is PIL's, a = -0.5, for up-
        and downscaling), the result is clamped to [0, 1] (PIL clamps to uint8; clamped pixels pass no gradient),
        centre-cropped as torchvision does and normalised. It differs from the PIL path only by PIL's uint8 rounding
        (and clamping) of its intermediate image between the horizontal and vertical passes: mean |diff| ~ 1e-3,
        up to ~5/255 at sharp edges.
        """
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels of shape (B, 3, H, W), got {tuple(pixels.shape)}")
        n = self.input_resolution
        x = pixels.to(self.device, torch.float32)  # (B, 3, H, W)
        h, w = x.shape[-2:]
        # torchvision Resize(int): the short side becomes n, the long side int(n * long / short).
        nh, nw = (n, int(n * w / h)) if h <= w else (int(n * h / w), n)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)  # (B, 3, nh, nw)
            x = x.clamp(0.0, 1.0)  # (B, 3, nh, nw)
        top, left = int(round((nh - n) / 2.0)), int(round((nw - n) / 2.0))  # as torchvision CenterCrop
        x = x[..., top:top + n, left:left + n]  # (B, 3, n, n)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
        return (x - mean) / std  # (B, 3, n, n)

    def image_features_differentiable(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, D) of pixels (B, 3, H, W) in [0, 1], differentiable w.r.t. ``pixels``.

        Preprocessing is :meth:`preprocess_differentiable` (no PIL). The model is frozen (its parameters have
        ``requires_grad=False``) and no ``no_grad`` is applied, so the graph reaches the input. The result is
        float32 on ``self.device`` (not moved to the CPU). Use it for training losses, :meth:`image_features` for
        evaluation: the two agree to a cosine of ~1 - 1e-6 (see the tests).
        """
        x = self.preprocess_differentiable(pixels)  # (B, 3, R, R)
        feats = self.model.encode_image(x.to(self.dtype))  # (B, D)
        return self._normalise(feats)  # (B, D)

    # ------------------------------------------------------------------ scores

    def clip_t(self, images: Images, texts: Texts, batch_size: int = 32) -> torch.Tensor:
        """CLIP-T: cos(E_I(image_i), E_T(text_i)) per pair, shape (N,). One string is used for every image."""
        items = _as_list(images, (Image.Image, np.ndarray))
        captions = _broadcast_texts(texts, len(items))
        img = self.image_features(items, batch_size)  # (N, D)
        txt = self.text_features(captions, batch_size)  # (N, D)
        return (img * txt).sum(-1).clamp(-1.0, 1.0)  # (N,)

    def clip_i(self, images_a: Images, images_b: Images, batch_size: int = 32) -> torch.Tensor:
        """CLIP-I: cos(E_I(a_i), E_I(b_i)) per pair, shape (N,)."""
        a_items = _as_list(images_a, (Image.Image, np.ndarray))
        b_items = _as_list(images_b, (Image.Image, np.ndarray))
        if len(a_items) != len(b_items):
            raise ValueError(f"clip_i needs pairs: got {len(a_items)} and {len(b_items)} images")
        a = self.image_features(a_items, batch_size)  # (N, D)
        b = self.image_features(b_items, batch_size)  # (N, D)
        return (a * b).sum(-1).clamp(-1.0, 1.0)  # (N,)

    def directional(self, src_images: Images, out_images: Images, src_texts: Texts, tgt_texts: Texts,
                    batch_size: int = 32, eps: float = 1e-4) -> torch.Tensor:
        """Directional CLIP similarity, shape (N,): cos(E_I(out) - E_I(src), E_T(tgt) - E_T(src_text)).

        Rows where either difference has norm < ``eps`` (an unchanged image, or identical captions) score 0: their
        direction is undefined (float noise). Embeddings are unit vectors, so ``eps=1e-4`` means a cosine above
        1 - 5e-9 between the two images; real edits differ by norms of 0.05 and more. A single string is used for
        every row.
        """
        src = _as_list(src_images, (Image.Image, np.ndarray))
        out = _as_list(out_images, (Image.Image, np.ndarray))
        if len(src) != len(out):
            raise ValueError(f"directional needs pairs: got {len(src)} source and {len(out)} output images")
        src_t = _broadcast_texts(src_texts, len(src))
        tgt_t = _broadcast_texts(tgt_texts, len(src))
        d_img = self.image_features(out, batch_size) - self.image_features(src, batch_size)  # (N, D)
        d_txt = self.text_features(tgt_t, batch_size) - self.text_features(src_t, batch_size)  # (N, D)
        n_img, n_txt = d_img.norm(dim=-1), d_txt.norm(dim=-1)  # (N,), (N,)
        cos = (d_img * d_txt).sum(-1) / (n_img * n_txt).clamp_min(1e-12)  # (N,)
        cos = torch.where((n_img < eps) | (n_txt < eps), torch.zeros_like(cos), cos)  # (N,)
        return cos.clamp(-1.0, 1.0)  # (N,)

    def __repr__(self) -> str:
        what = self.variant or str(self.weights)
        return f"ClipScorer({what!r}, device={str(self.device)!r}, loaded={self.is_loaded})"


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _broadcast_texts(texts: Texts, n: int) -> list[str]:
    items = _as_list(texts, str)
    if len(items) == 1 and n != 1:
        items = items * n
    if len(items) != n:
        raise ValueError(f"got {len(items)} texts for {n} images")
    return items


def clip_scorer_from(name_or_file: str | Path | None, device: str | torch.device = "cpu",
                     **kwargs: Any) -> ClipScorer:
    """A ``ClipScorer`` (not loaded) for an existing weights file, else a variant name (``ViT-L/14``; ``None``: the
    default, ``INSTANTPORTRAIT_CLIP`` or ViT-L/14). The one place a user's ``--clip`` value becomes a scorer, so the
    benchmark, the app and training read it alike (a file is its own model card; a name may be downloaded)."""
    if name_or_file is not None and Path(str(name_or_file)).expanduser().is_file():
        return ClipScorer(weights=Path(str(name_or_file)).expanduser(), device=device, **kwargs)
    return ClipScorer(None if name_or_file is None else str(name_or_file), device=device, **kwargs)
