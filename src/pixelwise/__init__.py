"""pixelwise: per-pixel segmentation with FCN and U-Net, faithful to the papers."""

from pixelwise.checkpoint import load, read_metadata, save
from pixelwise.models import FCN, UNet, build, convolutionalize

__version__ = "0.1.0"
__all__ = ["FCN", "UNet", "build", "convolutionalize", "load", "read_metadata", "save"]
