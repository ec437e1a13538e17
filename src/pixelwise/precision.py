"""Numeric precision and memory format: the precisions pixelwise accepts by their command-line
names, the automatic choice for the hardware at hand (and why), and the training memory format
that is fast there.

`--precision auto` (the default of `pixelwise train`, `pixelwise predict` and
`pixelwise.Segmenter`) resolves per device (`resolve_precision`):

* CPU: bf16 autocast where the CPU computes bf16 natively (`native_bf16`: the AVX512_BF16 or
  AMX-BF16 instructions; measured 2.2× faster prediction and 3.1× faster training than fp32 on a
  2-core AVX-512 EPYC), fp32 elsewhere: without them bf16 is emulated, up to 25× *slower* than
  fp32, so an explicit bf16 there warns;
* CUDA: autocast in bf16 where the GPU supports it, else fp16 (training then scales the loss,
  `torch.amp.GradScaler`);
* other devices: fp32.

The choice is a pure function of the CPU flags (`cpu_flags`, from
`torch.cpu.get_capabilities()` and /proc/cpuinfo), so it is tested with made-up flag sets.
`pixelwise.tiling.predict` does not resolve anything: the exact engine stays fp32 unless its
`autocast` option says otherwise.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from pixelwise.checks import InputWarning, check_choice

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""The values of `--precision` (TrainConfig.precision, `Segmenter(precision=...)`)."""

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Mixed-precision names → torch dtypes for `torch.autocast` (training and inference)."""

NATIVE_BF16_FLAGS = {"avx512_bf16": "AVX512_BF16", "amx_bf16": "AMX"}
"""CPU flags (as /proc/cpuinfo and `torch.cpu.get_capabilities()` spell them) → the name the
run header uses: instructions that compute bf16 natively."""

NATIVE_FP16_FLAGS = {"avx512_fp16": "AVX512_FP16", "amx_fp16": "AMX-FP16"}
"""CPU flags of native fp16 arithmetic (without them CPU fp16 autocast is emulated, slow)."""

SLOW_WITHOUT_NATIVE = "up to 25× slower than fp32 measured on an AVX2 CPU"
"""How much slower emulated CPU bf16 was (benchmarks/tiling.py section 4 and issue 13)."""

FAST_CHANNELS_LAST_CPUS = ("AVX512",)
"""`torch.backends.cpu.get_cpu_capability()` values on which a U-Net trains faster in
channels_last: 1.5× per step on a 2-core AVX-512 EPYC (issue 13's measurement); on an AVX2 CPU
it trains slower (0.82×: 4.27 s against 3.50 s per step of the instance U-Net, batch 4 × 256²,
medians after a warm-up step), though it predicts faster there too (1.5×: 0.95 s against
1.45 s for `tiling.predict` of 512², warm), so prediction's default stays on for every CPU."""


@dataclass(frozen=True)
class Precision:
    """A resolved precision and why it was chosen.

    Attributes:
        name: "fp32", "bf16" or "fp16".
        reason: why, for the run header: "auto: CPU has AVX512_BF16", "as asked", ...
    """

    name: str
    reason: str

    @property
    def autocast(self) -> str | None:
        """The autocast name (`PredictOptions.autocast`): None for fp32."""
        return None if self.name == "fp32" else self.name

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32."""
        return AUTOCAST_DTYPES.get(self.name)

    def describe(self) -> str:
        """The run header's words, e.g. "precision bf16 (auto: CPU has AVX512_BF16)"."""
        return f"precision {self.name} ({self.reason})"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags, lower case: those `torch.cpu.get_capabilities()` reports true
    (torch ≥ 2.8; its names follow /proc/cpuinfo's for the flags pixelwise reads) and the
    `flags` line of /proc/cpuinfo (Linux)."""
    flags: set[str] = set()
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        flags |= {k.lower() for k, v in capabilities().items() if v is True}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags |= set(line.partition(":")[2].lower().split())
                break
    except OSError:
        pass
    return frozenset(flags)


def native_bf16(flags: Iterable[str]) -> str | None:
    """The names of the instruction sets among `flags` that compute bf16 natively
    (`NATIVE_BF16_FLAGS`), joined: "AVX512_BF16", "AMX", "AVX512_BF16 and AMX"; or None."""
    return _natives(flags, NATIVE_BF16_FLAGS)


def native_fp16(flags: Iterable[str]) -> str | None:
    """As `native_bf16`, for fp16 (`NATIVE_FP16_FLAGS`)."""
    return _natives(flags, NATIVE_FP16_FLAGS)


def _natives(flags: Iterable[str], table: dict[str, str]) -> str | None:
    present = {f.lower() for f in flags}
    names = [name for flag, name in table.items() if flag in present]
    return " and ".join(names) or None


def merge_older_spelling(
    precision: str, older: str | None, *, names: tuple[str, str] = ("precision", "autocast")
) -> str:
    """The precision asked for by `precision` and an older option that spells it (`amp` of a
    training config, `autocast` of `PredictOptions` and of the command line): the older one
    when given, which `precision` "auto" gives way to and any other precision must equal.

    Args:
        precision: the `precision` option ("auto" when not given).
        older: the older option's value, or None when not given.
        names: how the caller spells the two options in its message, e.g. ("--precision",
            "--autocast").

    Raises:
        ValueError: the two disagree, e.g. "precision fp32 and autocast bf16 disagree; give
            precision alone (autocast is its older spelling)".
    """
    if older is None or precision in ("auto", older):
        return older or precision
    new, old = names
    raise ValueError(
        f"{new} {precision} and {old} {older} disagree; give {new} alone ({old} is its older "
        f"spelling)"
    )


def resolve_precision(
    precision: str,
    device: str | torch.device,
    *,
    flags: Iterable[str] | None = None,
    cuda_bf16: bool | None = None,
) -> Precision:
    """The precision to run in on `device` for `precision` ("auto", "fp32", "bf16", "fp16").

    "auto": on a CPU, bf16 when `native_bf16(flags)`, else fp32; on CUDA, bf16 when the GPU
    supports it (`cuda_bf16`), else fp16; fp32 on other devices. An explicit precision is kept;
    bf16 or fp16 on a CPU without native support warns (`InputWarning`): it is emulated, slow.

    Args:
        precision: one of `PRECISIONS`.
        device: where the model runs.
        flags: the CPU flags (default `cpu_flags()`; tests pass made-up sets).
        cuda_bf16: whether the GPU supports bf16 (default `torch.cuda.is_bf16_supported()`).

    Raises:
        ValueError: `precision` is not one of `PRECISIONS`.
    """
    check_choice("precision", precision, PRECISIONS)
    kind = torch.device(device).type
    if kind == "cuda":
        if precision != "auto":
            return Precision(precision, "as asked")
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_bf16_supported()
        if cuda_bf16:
            return Precision("bf16", "auto: CUDA GPU with bf16")
        return Precision("fp16", "auto: CUDA GPU without bf16; training scales the loss")
    if kind != "cpu":
        if precision != "auto":
            return Precision(precision, "as asked")
        return Precision("fp32", f"auto: no mixed precision measured on {kind}")
    flags = cpu_flags() if flags is None else frozenset(f.lower() for f in flags)
    bf16 = native_bf16(flags)
    if precision == "auto":
        if bf16 is not None:
            return Precision("bf16", f"auto: CPU has {bf16}")
        return Precision("fp32", "auto: CPU lacks AVX512_BF16 and AMX")
    native = {"bf16": bf16, "fp16": native_fp16(flags), "fp32": "fp32"}[precision]
    if native is None:
        table = NATIVE_BF16_FLAGS if precision == "bf16" else NATIVE_FP16_FLAGS
        needs = " or ".join(table.values())
        warnings.warn(
            f"precision {precision} on a CPU without native {precision} ({needs}) is "
            f"emulated and slow ({SLOW_WITHOUT_NATIVE}); use --precision auto "
            f"(precision='auto'), which runs fp32 on this CPU",
            InputWarning,
            stacklevel=2,
        )
        return Precision(precision, "as asked; emulated on this CPU, slow")
    return Precision(precision, "as asked")


def training_channels_last(device: str | None) -> bool:
    """The training memory format's default for `device` (None: cuda when available):
    channels_last on CPUs in FAST_CHANNELS_LAST_CPUS, contiguous (NCHW) elsewhere."""
    on_cpu = (device is None and not torch.cuda.is_available()) or str(device).startswith("cpu")
    return on_cpu and torch.backends.cpu.get_cpu_capability() in FAST_CHANNELS_LAST_CPUS
