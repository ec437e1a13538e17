"""Checkpoints: one `.safetensors` file holding the weights and JSON metadata. Never pickle.

The metadata (stored under the safetensors header key "pixelwise") records the registry name and
constructor arguments, so `load` rebuilds the model with no other input, plus whatever the caller
adds: class names, input normalisation, training state. Extra tensors (an optimizer's state, for
resuming) live in the same file under the prefix "extra/". Files are written with
:mod:`pixelwise.atomic` (temporary file + rename, normal permissions).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pixelwise.atomic import atomic_write
from pixelwise.models import build, model_config

FORMAT = "pixelwise-checkpoint"
VERSION = 1
_EXTRA = "extra/"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as a pixelwise checkpoint."""


def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    **meta,
) -> None:
    """Write `model`'s weights and metadata to `path` atomically.

    Args:
        model: a registered pixelwise model (UNet, FCN); a DDP/compiled wrapper is unwrapped.
        path: destination, conventionally ending in `.safetensors`.
        extra_tensors: more tensors to store (e.g. optimizer state), returned by `load_state`.
        **meta: JSON-serialisable metadata (class_names, normalization, ...).
    """
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    name, kwargs = model_config(model)
    header = {"format": FORMAT, "version": VERSION, "model": name, "model_args": kwargs, **meta}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[_EXTRA + k] = v.detach().cpu().contiguous()
    text = json.dumps(header)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"pixelwise": text}))


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata of a checkpoint, without loading its tensors."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100_000_000:
                raise CheckpointError("bad header length")
            header = json.loads(f.read(n))
        meta = json.loads(header["__metadata__"]["pixelwise"])
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except (CheckpointError, KeyError, TypeError, ValueError, UnicodeDecodeError):
        raise CheckpointError(
            f"{path}: not a pixelwise checkpoint (expected a .safetensors file written by "
            f"pixelwise.save or `pixelwise train`)"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pixelwise checkpoint (format {meta.get('format')!r})")
    return meta


def load_state(path: str | os.PathLike) -> tuple[nn.Module, dict, dict[str, torch.Tensor]]:
    """Rebuild the model; return (model, metadata, extra tensors)."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: checkpoint is truncated or corrupt ({e})") from None
    model = build(meta["model"], **meta["model_args"])
    weights = {k: v for k, v in tensors.items() if not k.startswith(_EXTRA)}
    extra = {k[len(_EXTRA) :]: v for k, v in tensors.items() if k.startswith(_EXTRA)}
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the recorded model ({e})") from None
    model.eval()
    return model, meta, extra


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model from a checkpoint, in eval mode; its metadata is `read_metadata(path)`."""
    return load_state(path)[0]
