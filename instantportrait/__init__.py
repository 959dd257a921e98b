"""InstantPortrait: one-step instruction-based portrait editing (IPNet) and its identity-enhanced teacher (IDE-Net)."""

from .errors import InstantPortraitError, InvalidImageError, ModelNotAvailableError, NoFaceError
from .pipeline import InstantPortraitPipeline, ipnet_from_instruct_pix2pix, widen_conv_in

__all__ = [
    "InstantPortraitError",
    "InstantPortraitPipeline",
    "InvalidImageError",
    "ModelNotAvailableError",
    "NoFaceError",
    "ipnet_from_instruct_pix2pix",
    "widen_conv_in",
]
__version__ = "0.1.0"
