"""A tiny insightface model pack built from code: a fixed-rule face detector and a random-weight recogniser.

``build_tiny_face_pack(folder)`` writes two ONNX files that insightface 2.1 loads offline through
``FaceAnalysis(name=<folder>, allowed_modules=["detection", "recognition"])`` exactly as it loads ``buffalo_l``:

* ``det_tiny.onnx`` has the SCRFD output layout (3 strides x (scores, bbox distances, 5 keypoints), 2 anchors per
  location) so insightface routes it to its ``SCRFD`` class. Its outputs are computed by fixed operations, not learned:
  a skin-colour map from the input's chromaticity, averaged over each anchor's box and compared with the ring around
  the box (a face is a skin blob that fits its box), gated by the luminance contrast inside the box (eyes, mouth,
  hair: a uniform image scores 0). Boxes are the anchor's own box and the 5 keypoints a fixed template inside it, so
  keypoints are *placed*, not detected. It finds the face in ``skimage.data.astronaut()`` and drawn faces (a
  skin-coloured ellipse with dark eyes on a plain background) and nothing in a blank image. It is colour based, so
  it is biased to the skin tones its band covers and to frontal, well-lit faces: a test fixture, never a detector to
  measure anything with.
* ``w_tiny.onnx`` is a tiny conv net on the 112x112 aligned crop with a 128-d output and fixed-seed random weights:
  deterministic, content-dependent (different faces give different embeddings, the same crop gives cosine 1), and
  meaningless as an identity model.

Both files are well under 1 MB and the pack builds in about a second on a CPU.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DET_FILE = "det_tiny.onnx"
REC_FILE = "w_tiny.onnx"
REC_EMBED_DIM = 128
REC_INPUT_SIZE = 112
OPSET = 17

# SCRFD layout: 3 feature strides, 2 anchors per location; scrfd.py multiplies distances by the stride.
STRIDES = (8, 16, 32)
GRID = 8  # every statistic is first averaged over 8x8 cells; box windows are counted in cells
# Box sizes in cells per (stride, anchor): (width, height), faces being taller than wide. Odd, so that a window is
# centred on its cell. In pixels of the detector input: widths 40, 56, 88, 120, 200, 328.
ANCHOR_CELLS: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {
    8: ((5, 5), (7, 9)),
    16: ((11, 13), (15, 19)),
    32: ((25, 31), (41, 51)),
}
# Keypoints as fractions of the box (x, y): left eye, right eye, nose tip, left and right mouth corners.
KPS_TEMPLATE = ((0.32, 0.42), (0.68, 0.42), (0.50, 0.60), (0.36, 0.77), (0.64, 0.77))

# Skin band in chromaticity space (r / (r+g+b), b / (r+g+b)) and the other fixed constants of the score.
SKIN_RN, SKIN_RN_WIDTH = 0.405, 0.035
SKIN_BN, SKIN_BN_WIDTH = 0.27, 0.04
SKIN_MIN_LUMA = 60.0
CELL_SKIN_LO, CELL_SKIN_HI = 0.2, 0.5  # mean pixel skin likelihood of an 8x8 cell -> cell is skin (fills eyes, shade)
IOU_LO, IOU_HI = 0.3, 0.6  # box-vs-skin-blob IoU mapped linearly to a 0-1 score (0.45 -> insightface's 0.5)
CONTRAST_LO, CONTRAST_HI = 6.0, 18.0  # luminance std (0-255) inside the box: a uniform patch scores 0
RIVAL_TOLERANCE = 0.02  # how far below the best rival box centred inside it a box may score before it is dropped


def _ramp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """0 below ``lo``, 1 above ``hi``, linear in between."""
    return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)


def _box_mean(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Mean of ``x`` over a ``kh x kw`` window centred on each cell, ignoring the outside of the image.

    Separable (rows, then columns): the count of inside cells factorises, so this equals the 2-D mean.
    """
    x = F.avg_pool2d(x, (kh, 1), stride=1, padding=(kh // 2, 0), count_include_pad=False)
    return F.avg_pool2d(x, (1, kw), stride=1, padding=(0, kw // 2), count_include_pad=False)


def _box_max(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Max of ``x`` over a ``kh x kw`` window centred on each cell (separable)."""
    x = F.max_pool2d(x, (kh, 1), stride=1, padding=(kh // 2, 0))
    return F.max_pool2d(x, (1, kw), stride=1, padding=(0, kw // 2))


class TinySCRFD(nn.Module):
    """SCRFD-shaped detector whose outputs are fixed functions of a skin-colour map and local contrast.

    Input: ``(1, 3, H, W)`` normalised as insightface's SCRFD does, ``(rgb - 127.5) / 128`` (insightface swaps its
    BGR image to RGB in ``blobFromImage``); ``H`` and ``W`` multiples of 32. Outputs, in scrfd.py's order:
    scores for strides 8/16/32 ``(H/s * W/s * 2, 1)``, then box distances ``(N, 4)``, then keypoint offsets
    ``(N, 10)``, both in units of the stride, rows ordered location-major, anchor-minor.
    """

    def __init__(self) -> None:
        super().__init__()
        for stride, anchors in ANCHOR_CELLS.items():
            bbox, kps = [], []
            for kw, kh in anchors:
                # Window centre in pixels is cell*8 + 4; scrfd.py's anchor point is cell*8 (for stride 8).
                half_w, half_h, off = kw * GRID / 2, kh * GRID / 2, GRID / 2
                bbox.append([half_w - off, half_h - off, half_w + off, half_h + off])
                kps.append([v for fx, fy in KPS_TEMPLATE
                            for v in (off - half_w + 2 * half_w * fx, off - half_h + 2 * half_h * fy)])
            self.register_buffer(f"bbox_{stride}", torch.tensor(bbox) / stride)  # (2, 4)
            self.register_buffer(f"kps_{stride}", torch.tensor(kps) / stride)  # (2, 10)

    @staticmethod
    def skin_map(rgb: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in 0-255 -> ``(B, 1, H, W)`` skin likelihood in [0, 1]."""
        total = rgb.sum(1, keepdim=True) + 1e-3  # (B, 1, H, W)
        rn = rgb[:, 0:1] / total  # (B, 1, H, W)
        bn = rgb[:, 2:3] / total  # (B, 1, H, W)
        luma = rgb.mean(1, keepdim=True)  # (B, 1, H, W)
        chroma = torch.exp(-((rn - SKIN_RN) / SKIN_RN_WIDTH) ** 2 - ((bn - SKIN_BN) / SKIN_BN_WIDTH) ** 2)
        return chroma * torch.sigmoid((luma - SKIN_MIN_LUMA) / 8.0)  # (B, 1, H, W)

    def score_maps(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per stride, ``(B, 2, H/s, W/s)`` scores of the two anchors."""
        rgb = x * 128.0 + 127.5  # (B, 3, H, W) back to 0-255
        luma = rgb.mean(1, keepdim=True)  # (B, 1, H, W)
        cells = F.avg_pool2d(torch.cat([self.skin_map(rgb), luma, luma * luma], 1), GRID)  # (B, 3, H/8, W/8)
        skin = _ramp(cells[:, 0:1], CELL_SKIN_LO, CELL_SKIN_HI)  # (B, 1, H/8, W/8): is this cell skin?
        raw: list[torch.Tensor] = []  # per anchor (B, 1, H/8, W/8), on its own stride's grid only
        for stride, anchors in ANCHOR_CELLS.items():
            step = stride // GRID
            for kw, kh in anchors:
                box_skin = _box_mean(skin, kh, kw)  # (B, 1, H/8, W/8) skin fraction of the box
                big_skin = _box_mean(skin, 2 * kh + 1, 2 * kw + 1)  # (B, 1, H/8, W/8) ... of the 2x window
                area_ratio = (2 * kh + 1) * (2 * kw + 1) / (kh * kw)
                # IoU of the box with the skin blob around it, the blob's mass counted in the 2x window.
                iou = box_skin / (1.0 + area_ratio * big_skin - box_skin + 1e-6)  # (B, 1, H/8, W/8)
                stats = _box_mean(cells[:, 1:3], kh, kw)  # (B, 2, H/8, W/8): E[l], E[l^2] in the box
                std = (stats[:, 1:2] - stats[:, 0:1] ** 2).clamp_min(0.0).sqrt()  # (B, 1, H/8, W/8)
                score = _ramp(iou, IOU_LO, IOU_HI) * _ramp(std, CONTRAST_LO, CONTRAST_HI)  # (B, 1, H/8, W/8)
                # Keep only this stride's anchor points, each spread over its step x step block of cells.
                coarse = score[:, :, ::step, ::step]  # (B, 1, H/s, W/s)
                raw.append(F.interpolate(coarse, scale_factor=float(step), mode="nearest"))  # (B, 1, H/8, W/8)
        # Scale competition (an NMS across sizes inside the net): a box keeps its score only if no box of any size
        # centred inside it scores higher, so parts of a face and a face-plus-background box give way to the face.
        best = torch.stack(raw, 0).amax(0)  # (B, 1, H/8, W/8)
        out: dict[int, list[torch.Tensor]] = {}
        k = 0
        for stride, anchors in ANCHOR_CELLS.items():
            step = stride // GRID
            for kw, kh in anchors:
                rival = _box_max(best, kh, kw)  # (B, 1, H/8, W/8)
                keep = (1.0 + (raw[k] - rival) / RIVAL_TOLERANCE).clamp(0.0, 1.0)  # (B, 1, H/8, W/8)
                out.setdefault(stride, []).append((raw[k] * keep)[:, :, ::step, ::step])  # (B, 1, H/s, W/s)
                k += 1
        return {stride: torch.cat(maps, 1) for stride, maps in out.items()}  # (B, 2, H/s, W/s) each

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.score_maps(x)
        scores, bboxes, kpss = [], [], []
        for stride in STRIDES:
            s = maps[stride][0].permute(1, 2, 0).reshape(-1, 1)  # (H/s * W/s * 2, 1), location-major
            scores.append(s)
            bboxes.append(self._tile(s, getattr(self, f"bbox_{stride}")))  # (N, 4)
            kpss.append(self._tile(s, getattr(self, f"kps_{stride}")))  # (N, 10)
        return (*scores, *bboxes, *kpss)

    @staticmethod
    def _tile(s: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Constant per-anchor rows ``(2, C)`` repeated for every location: ``(N, C)`` with ``N = len(s)``."""
        width = table.shape[1]
        per_loc = torch.ones_like(s).reshape(-1, 2, 1)  # (N/2, 2, 1)
        return (per_loc * table[None]).reshape(-1, width)  # (N, width)


class TinyArcFace(nn.Module):
    """ArcFace-shaped recogniser: ``(B, 3, 112, 112)`` aligned crops, ``(rgb - 127.5) / 127.5`` -> ``(B, D)``.

    Fixed-seed random weights (no biases). The crop's mean colour is removed first and the pooled features are
    standardised before the projection, so that embeddings depend on the crop's structure rather than on its overall
    colour and are not all nearly parallel (as projections of all-positive ReLU features would be).
    """

    def __init__(self, embed_dim: int = REC_EMBED_DIM, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 5, stride=4, padding=2, bias=False)  # 112 -> 28
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)  # 28 -> 14
        self.proj = nn.Linear(16 * 7 * 7, embed_dim, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean((2, 3), keepdim=True)  # (B, 3, 112, 112)
        h = F.relu(self.conv1(x))  # (B, 8, 28, 28)
        h = F.avg_pool2d(F.relu(self.conv2(h)), 2)  # (B, 16, 7, 7)
        h = h.flatten(1)  # (B, 784)
        h = (h - h.mean(1, keepdim=True)) / (h.std(1, keepdim=True) + 1e-6)  # (B, 784)
        return self.proj(h)  # (B, D)


def export_tiny_detector(path: str | Path) -> Path:
    """Write :class:`TinySCRFD` as an ONNX file insightface routes to ``SCRFD`` (9 outputs, dynamic H, W)."""
    path = Path(path)
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    dynamic = {"input.1": {2: "height", 3: "width"}, **{n: {0: f"n_{n.split('_')[1]}"} for n in names}}
    torch.onnx.export(TinySCRFD().eval(), (torch.zeros(1, 3, 640, 640),), str(path), input_names=["input.1"],
                      output_names=names, dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    return path


def export_tiny_recognizer(path: str | Path, embed_dim: int = REC_EMBED_DIM, seed: int = 0) -> Path:
    """Write :class:`TinyArcFace` as an ONNX file insightface routes to ``ArcFaceONNX`` (one output, 112x112)."""
    path = Path(path)
    x = torch.zeros(1, 3, REC_INPUT_SIZE, REC_INPUT_SIZE)
    torch.onnx.export(TinyArcFace(embed_dim, seed).eval(), (x,), str(path), input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
                      opset_version=OPSET, dynamo=False)
    return path


def build_tiny_face_pack(folder: str | Path, embed_dim: int = REC_EMBED_DIM, seed: int = 0) -> Path:
    """Write a two-model insightface pack (detection + recognition ONNX) into ``folder`` and return it.

    Load it with ``FaceEncoder(pack=folder)`` or ``FaceAnalysis(name=str(folder), allowed_modules=[...])``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # dynamo=False is deliberate (insightface needs plain opset-17 graphs); silence its deprecation notices.
        warnings.simplefilter("ignore", DeprecationWarning)
        export_tiny_detector(folder / DET_FILE)
        export_tiny_recognizer(folder / REC_FILE, embed_dim, seed)
    return folder
