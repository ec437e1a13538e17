"""pixelwise: per-pixel segmentation with FCN and U-Net, faithful to the papers.

The names below are imported on first use (PEP 562), so that `import pixelwise` and the
command line's start-up load only what a command needs (torch, scipy, ... come with the
modules that use them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixelwise.checkpoint import load, read_metadata, save
    from pixelwise.models import FCN, UNet, build, convolutionalize
    from pixelwise.segmenter import Segmentation, Segmenter
    from pixelwise.zoo import pretrained

__version__ = "0.1.0"

_EXPORTS = {
    "FCN": "pixelwise.models",
    "Segmentation": "pixelwise.segmenter",
    "Segmenter": "pixelwise.segmenter",
    "UNet": "pixelwise.models",
    "build": "pixelwise.models",
    "convolutionalize": "pixelwise.models",
    "load": "pixelwise.checkpoint",
    "pretrained": "pixelwise.zoo",
    "read_metadata": "pixelwise.checkpoint",
    "save": "pixelwise.checkpoint",
}
"""Public name → the module that defines it."""

__all__ = [
    "FCN",
    "Segmentation",
    "Segmenter",
    "UNet",
    "build",
    "convolutionalize",
    "load",
    "pretrained",
    "read_metadata",
    "save",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pixelwise' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
