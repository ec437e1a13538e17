"""Numeric precision and memory format: the autocast dtypes pixelwise accepts, by their
command-line names, and the training memory format that is fast on the hardware at hand."""

from __future__ import annotations

import torch

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Mixed-precision names → torch dtypes for `torch.autocast` (training and inference)."""

FAST_CHANNELS_LAST_CPUS = ("AVX512",)
"""`torch.backends.cpu.get_cpu_capability()` values on which a U-Net trains faster in
channels_last: 1.5× per step on a 2-core AVX-512 EPYC (issue 13's measurement); on an AVX2 CPU
it trains slower (0.82×: 4.27 s against 3.50 s per step of the instance U-Net, batch 4 × 256²,
medians after a warm-up step), though it predicts faster there too (1.5×: 0.95 s against
1.45 s for `tiling.predict` of 512², warm), so prediction's default stays on for every CPU."""


def training_channels_last(device: str | None) -> bool:
    """The training memory format's default for `device` (None: cuda when available):
    channels_last on CPUs in FAST_CHANNELS_LAST_CPUS, contiguous (NCHW) elsewhere."""
    on_cpu = (device is None and not torch.cuda.is_available()) or str(device).startswith("cpu")
    return on_cpu and torch.backends.cpu.get_cpu_capability() in FAST_CHANNELS_LAST_CPUS
