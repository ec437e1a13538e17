"""Array inputs of post-processing and scoring: the one numpy/torch converter and map check.

:mod:`pixelwise.instances` and :mod:`pixelwise.metrics` accept numpy arrays or torch tensors and
compute in numpy. They convert through :func:`as_numpy`, check instance maps with
:func:`as_instances` and paired inputs with :func:`check_same_shape`, so a wrong input gets the
same message everywhere. Nothing else lives here.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_instances", "as_numpy", "check_same_shape"]


def as_numpy(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """`x` as a numpy array: arrays as they are, tensors detached and copied to the CPU.

    Args:
        x: numpy array or torch tensor, any shape and dtype.
        name: the argument's name, for the error message.

    Raises:
        TypeError: `x` is neither (a list, a PIL image, ...).
    """
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(
        f"{name} must be a numpy array or torch tensor, got {type(x).__name__}; "
        "convert it with np.asarray"
    )


def as_instances(instances: np.ndarray | torch.Tensor, name: str = "instances") -> np.ndarray:
    """An (H, W) instance map as numpy: integer ids, 0 = background, 1..K = objects.

    Raises:
        ValueError: not 2-D, not integer, or a negative id (the message says which).
        TypeError: neither a numpy array nor a torch tensor.
    """
    inst = as_numpy(instances, name)
    if inst.ndim != 2 or not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(
            f"{name} must be an (H, W) integer array, got shape {inst.shape} dtype "
            f"{inst.dtype}; pass instance ids (0 = background, 1..K = objects)"
        )
    if inst.size and inst.min() < 0:
        raise ValueError(
            f"{name} must be >= 0, got minimum {inst.min()}; use 0 for background and 1..K "
            "for objects"
        )
    return inst


def check_same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str], fix: str) -> None:
    """Raise ValueError unless `a` and `b` have one shape; `fix` says what the caller should do.

    Example message: ``pred and gt must have the same shape, got pred (10, 9) and gt (10, 10);
    crop or resize the prediction to the label's size``.
    """
    if a.shape != b.shape:
        first, second = names
        raise ValueError(
            f"{first} and {second} must have the same shape, got {first} {tuple(a.shape)} and "
            f"{second} {tuple(b.shape)}; {fix}"
        )
