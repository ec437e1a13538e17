"""Numeric precision: the autocast dtypes pixelwise accepts, by their command-line names."""

from __future__ import annotations

import torch

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Mixed-precision names → torch dtypes for `torch.autocast` (training and inference)."""
