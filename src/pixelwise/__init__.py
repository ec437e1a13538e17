"""pixelwise: per-pixel segmentation with FCN and U-Net, faithful to the papers."""

from pixelwise.checkpoint import load, read_metadata, save
from pixelwise.models import FCN, UNet, build, convolutionalize
from pixelwise.segmenter import Segmentation, Segmenter

__version__ = "0.1.0"
__all__ = [
    "FCN",
    "Segmentation",
    "Segmenter",
    "UNet",
    "build",
    "convolutionalize",
    "load",
    "read_metadata",
    "save",
]
