"""The torchrun environment: which process this is, and which device it runs on.

`torchrun` describes the job in environment variables (RANK, WORLD_SIZE, LOCAL_RANK). This
module is the one reader of them, and the one place a device is chosen and checked
(`select_device`: a --device this machine lacks is refused with the devices it has). Training
joins a process group with `init_process_group`; prediction only splits its files by rank and
needs none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import torch


class DistributedContext(NamedTuple):
    """Where this process stands in a torchrun job: (rank, world_size, local_rank); (0, 1, 0)
    for a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that logs and writes shared files."""
        return self.rank == 0


def check_rank(rank: int, world_size: int) -> None:
    """Raise ValueError unless 0 <= rank < world_size and world_size >= 1."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, world_size) with world_size >= 1, got rank {rank} and "
            f"world_size {world_size}"
        )


def distributed_context(environ: Mapping[str, str] | None = None) -> DistributedContext:
    """Read RANK, WORLD_SIZE and LOCAL_RANK; missing variables mean a single process.

    Raises:
        ValueError: a variable is not an integer, or rank is outside [0, world_size).
    """
    env = os.environ if environ is None else environ
    values = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = env.get(name, "")
        try:
            values.append(int(text) if text.strip() else default)
        except ValueError:
            raise ValueError(
                f"environment variable {name} must be an integer, got {text!r}; launch with "
                f"torchrun or unset it"
            ) from None
    rank, world_size, local_rank = values
    check_rank(rank, world_size)
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK must be >= 0, got {local_rank}")
    return DistributedContext(rank, world_size, local_rank)


def available_devices() -> list[str]:
    """The devices this process can run on: "cpu", then "cuda:0" ... "cuda:N-1", "mps" (Apple)
    and "xpu:0" ... (Intel) where present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        names += [f"xpu:{i}" for i in range(xpu.device_count())]
    return names


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, once it is known to exist here.

    Raises:
        ValueError: not a device name, or a device this machine does not have (CUDA on a
            CPU-only build of PyTorch, cuda:7 with two GPUs); the message lists the devices
            there are (`available_devices`).
    """
    names = available_devices()
    shown = ", ".join(names)
    fix = f"pass one of these to --device (device= in Python), or leave it out for {_default()}"
    try:
        target = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"--device {device}: not a device name; available: {shown}; {fix}"
        ) from None
    kind, index = target.type, target.index
    if kind == "cpu":
        return target
    if kind not in ("cuda", "mps", "xpu"):
        raise ValueError(
            f"--device {device}: pixelwise runs on cpu, cuda, mps or xpu devices, not {kind}; "
            f"available: {shown}; {fix}"
        )
    present = [n for n in names if n.split(":")[0] == kind]
    if not present:
        why = {
            "cuda": "no CUDA GPU is visible"
            + ("" if torch.version.cuda else f" (PyTorch {torch.__version__} is built without it)"),
            "mps": "no Apple MPS device is available",
            "xpu": "no Intel XPU is available",
        }[kind]
        raise ValueError(f"--device {device}: {why}; available: {shown}; {fix}")
    if index is not None and f"{kind}:{index}" not in present and (kind, index) != ("mps", 0):
        raise ValueError(
            f"--device {device}: there is no {kind}:{index}; available: {shown}; {fix}"
        )
    return target


def _default() -> str:
    """What `select_device(None)` picks here, in words."""
    return "the first GPU" if torch.cuda.is_available() else "the CPU"


def select_device(
    device: str | torch.device | None = None, local_rank: int | None = None
) -> torch.device:
    """`device` when given (checked: `check_device`), else `cuda:{local_rank}` when CUDA is
    available, else the CPU.

    `local_rank` defaults to LOCAL_RANK (0 when unset), so each torchrun process takes its GPU.

    Raises:
        ValueError: a `device` that is not a device name or that this machine does not have;
            the message names --device and lists the devices there are.
    """
    if device is not None:
        return check_device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank is None:
        local_rank = distributed_context().local_rank
    return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")


def init_process_group(
    device: str | torch.device | None = None,
) -> tuple[DistributedContext, torch.device]:
    """Join the process group torchrun describes (NCCL on GPUs, else gloo); pick the device.

    A single process (WORLD_SIZE unset or 1) joins nothing.
    """
    import torch.distributed as dist

    context = distributed_context()
    target = select_device(device, context.local_rank)
    if context.world_size <= 1:
        return context, target
    if not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    if target.type == "cuda":
        torch.cuda.set_device(target)
    return DistributedContext(dist.get_rank(), context.world_size, context.local_rank), target
