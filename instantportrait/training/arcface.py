"""A differentiable, frozen ArcFace for the identity loss: an insightface ONNX model or an ``arcface_torch`` IResNet.

    arcface = DifferentiableArcFace.from_onnx("models/antelopev2/glintr100.onnx", device="cuda")
    emb = arcface(aligned)          # aligned: (B, 3, 112, 112) RGB in [-1, 1] -> (B, 512), unit norm

Input convention (checked against insightface 0.7 ``model_zoo/arcface_onnx.py``): insightface hands the recogniser a
BGR uint8 crop and builds the blob with ``cv2.dnn.blobFromImages(imgs, 1/std, size, (mean,)*3, swapRB=True)``, so
the network sees **RGB** ``(x - mean) / std`` with ``mean = std = 127.5`` for PyTorch-exported packs (buffalo_l's
w600k_r50, antelopev2's glintr100), or ``mean = 0, std = 1`` for old MXNet exports whose first graph nodes subtract
and multiply themselves. ``DifferentiableArcFace`` takes RGB in [-1, 1], maps it to that blob, and L2-normalises the
output, so its embedding of a crop equals insightface's normalised ``get_feat`` of the same crop (tested).

``arcface_torch``'s own inference also feeds RGB ``(x / 255 - 0.5) / 0.5``: the same convention, so an ``IResNet``
wrapped with the defaults needs no change. Licence: insightface's pretrained weights are non-commercial.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ARCFACE_INPUT_SIZE = 112
# Blocks per stage of arcface_torch's backbones (``backbones/iresnet.py``).
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3), "r200": (6, 26, 60, 6),
}


# ---------------------------------------------------------------------------------------------------- IResNet
def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """The improved residual block: BN → conv3x3 → BN → PReLU → conv3x3 (stride) → BN, plus the shortcut.

    Attribute names follow ``arcface_torch`` so its state dicts load unchanged.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))  # (B, planes, h', w')
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """``arcface_torch``'s IResNet with configurable depth and widths (state-dict compatible with its checkpoints).

    Stem conv3x3 (stride 1) → BN → PReLU, four stages of ``IBasicBlock`` each downsampling by 2, BN, flatten,
    dropout, ``fc`` to ``num_features``, ``features`` BatchNorm1d. ``layers=(3, 4, 14, 3)`` with the default widths
    is r50 (``IRESNET_LAYERS``). ``input_size`` must be divisible by 16 (112 → 7x7 before ``fc``).
    """

    def __init__(self, layers: Sequence[int] = IRESNET_LAYERS["r50"], *,
                 widths: Sequence[int] = (64, 128, 256, 512), num_features: int = 512,
                 input_size: int = ARCFACE_INPUT_SIZE, dropout: float = 0.0):
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"IResNet needs 4 stages, got layers={tuple(layers)} widths={tuple(widths)}")
        if input_size % 16:
            raise ValueError(f"input_size must be divisible by 16, got {input_size}")
        self.input_size = input_size
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-5)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1])
        self.layer3 = self._make_layer(widths[2], layers[2])
        self.layer4 = self._make_layer(widths[3], layers[3])
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(widths[3] * (input_size // 16) ** 2, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes: int, blocks: int, stride: int = 2) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes, eps=1e-5))
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))  # (B, w0, 112, 112)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, w3, 7, 7)
        x = self.dropout(torch.flatten(self.bn2(x), 1))  # (B, w3 * 49)
        return self.features(self.fc(x))  # (B, num_features)


def iresnet(arch: str | Sequence[int] = "r50", **kwargs) -> IResNet:
    """An ``IResNet`` by ``arcface_torch`` name (r18, r34, r50, r100, r200) or by blocks per stage."""
    if isinstance(arch, str):
        if arch not in IRESNET_LAYERS:
            raise ValueError(f"unknown IResNet {arch!r}; choose from {sorted(IRESNET_LAYERS)}")
        arch = IRESNET_LAYERS[arch]
    return IResNet(tuple(arch), **kwargs)


def _load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_iresnet(path: str | Path, arch: str | Sequence[int] = "r50", *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, **kwargs) -> IResNet:
    """An ``IResNet`` with an ``arcface_torch`` checkpoint (``backbone.pth`` or ``.safetensors``), eval mode."""
    model = iresnet(arch, **kwargs)
    model.load_state_dict(_load_state_dict(path))
    return model.to(device=device, dtype=dtype).eval()


# ---------------------------------------------------------------------------------------------------- ONNX
def onnx_input_normalisation(model_or_path: str | Path | object) -> tuple[float, float]:
    """insightface's rule for an ONNX recogniser's blob: (0, 1) if its first 8 nodes subtract and multiply (old
    MXNet exports normalise inside the graph), else (127.5, 127.5)."""
    import onnx

    model = model_or_path if hasattr(model_or_path, "graph") else onnx.load(str(model_or_path))
    names = [node.name for node in model.graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


def load_arcface_onnx(path: str | Path | object, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> nn.Module:
    """An insightface ONNX recogniser (a path, or an already loaded ``onnx.ModelProto``) as a torch module via
    onnx2torch, eval mode, parameters frozen.

    The module takes insightface's blob: (B, 3, 112, 112) **RGB** normalised with ``onnx_input_normalisation``.
    Wrap it in ``DifferentiableArcFace`` (or use ``DifferentiableArcFace.from_onnx``) to feed [-1, 1] RGB.
    """
    import onnx
    from onnx2torch import convert

    module = convert(path if hasattr(path, "graph") else onnx.load(str(path)))
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------- wrapper
class DifferentiableArcFace(nn.Module):
    """``forward(aligned (B, 3, S, S) RGB in [-1, 1]) -> (B, D)`` unit-norm embeddings, differentiable in the input.

    ``backbone`` takes insightface's blob ``(x_255 - input_mean) / input_std`` (RGB); this wrapper maps [-1, 1] to
    it. Frozen by default: parameters ``requires_grad=False`` and the backbone stays in eval mode even when a parent
    module calls ``.train()`` (BatchNorm statistics never move), while gradients still flow to the input.
    """

    def __init__(self, backbone: nn.Module, *, input_mean: float = 127.5, input_std: float = 127.5,
                 input_size: int = ARCFACE_INPUT_SIZE, frozen: bool = True):
        super().__init__()
        self.backbone = backbone
        self.input_mean = float(input_mean)
        self.input_std = float(input_std)
        self.input_size = int(input_size)
        self.frozen = frozen
        if frozen:
            self.backbone.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> DifferentiableArcFace:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"expected aligned crops of {self.input_size}x{self.input_size} (use "
                             f"losses.arcface_align), got {tuple(pixels.shape[-2:])}")
        blob = ((pixels + 1.0) * 127.5 - self.input_mean) / self.input_std  # (B, 3, S, S) RGB blob
        dtype = next(self.backbone.parameters(), blob).dtype
        emb = self.backbone(blob.to(dtype))  # (B, D)
        if isinstance(emb, (list, tuple)):
            emb = emb[0]
        return F.normalize(emb.float().flatten(1), dim=-1)  # (B, D)

    @classmethod
    def from_onnx(cls, path: str | Path, *, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32, frozen: bool = True) -> DifferentiableArcFace:
        """Wrap an insightface recogniser ONNX (e.g. antelopev2 ``glintr100.onnx``); the blob rule is read from it."""
        import onnx

        model = onnx.load(str(path))
        mean, std = onnx_input_normalisation(model)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        size = dims[2].dim_value if len(dims) == 4 and dims[2].dim_value else ARCFACE_INPUT_SIZE
        return cls(load_arcface_onnx(model, device, dtype), input_mean=mean, input_std=std, input_size=size,
                   frozen=frozen)

    @classmethod
    def from_iresnet(cls, path: str | Path, arch: str | Sequence[int] = "r50", *,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                     frozen: bool = True, **kwargs) -> DifferentiableArcFace:
        """Wrap an ``arcface_torch`` IResNet checkpoint (its RGB [-1, 1] convention is the default blob)."""
        model = load_iresnet(path, arch, device=device, dtype=dtype, **kwargs)
        return cls(model, input_size=model.input_size, frozen=frozen)
