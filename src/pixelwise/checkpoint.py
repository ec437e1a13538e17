"""Checkpoints: one `.safetensors` file holding the weights and JSON metadata. Never pickle.

The metadata (stored under the safetensors header key "pixelwise") records the registry name and
constructor arguments, so `load` rebuilds the model with no other input, plus whatever the caller
adds: class names, input normalisation, training state. Extra tensors (an optimizer's state, for
resuming) live in the same file under the prefix "extra/". Files are written with
:mod:`pixelwise.atomic` (temporary file + rename, normal permissions).

A checkpoint is untrusted input. `load_state` checks the recorded model name and arguments
against the registry, builds the model on the meta device (no memory) and compares its tensor
names and shapes with the file's header before it allocates anything, and refuses weights that
hold NaN or infinite values. A run folder (`runs/x`) names its best checkpoint (`resolve`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.overrides import TorchFunctionMode

from pixelwise.atomic import atomic_write
from pixelwise.models import build, check_model_args, model_config

FORMAT = "pixelwise-checkpoint"
VERSION = 1
BEST = "best.safetensors"
"""The file a run folder stands for (`resolve`): the run's best checkpoint."""
_EXTRA = "extra/"
_EDITED = (
    "the metadata was edited or damaged: use the file as `pixelwise train` or pixelwise.save "
    "wrote it"
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as a pixelwise checkpoint."""


class _SkipRandomInit(TorchFunctionMode):
    """Random in-place initialisation (`normal_`, `uniform_`) does nothing: on the meta device
    they would import torch's decompositions (seconds, once) for values nobody reads."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in ("normal_", "uniform_"):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


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


def resolve(path: str | os.PathLike) -> Path:
    """The checkpoint file `path` names: `path` itself, or for a folder its best.safetensors
    (a training run's output folder), or the folder's only `.safetensors` file; a shipped
    model's name ("nuclei", `pixelwise.zoo.MODELS`) where no file or folder has that name is
    the shipped file. Every command and loader takes checkpoints through here.

    Raises:
        CheckpointError: a folder with several checkpoints and no best.safetensors, a folder of
            run folders, or one with no checkpoint; the message lists what it holds.
    """
    from pixelwise.zoo import shipped_or_path

    path = Path(shipped_or_path(path))
    if not path.is_dir():
        return path
    if (path / BEST).is_file():
        return path / BEST
    try:
        files = sorted(p for p in path.glob("*.safetensors") if p.is_file())
        runs = sorted(p / BEST for p in path.iterdir() if (p / BEST).is_file())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the folder ({e.strerror})") from None
    if len(files) == 1:
        return files[0]
    if files:
        raise CheckpointError(
            f"{path} is a folder of {len(files)} checkpoints and no {BEST} "
            f"({', '.join(p.name for p in files)}): pass one of them, e.g. {files[0]}"
        )
    if runs:
        more = f" (and {len(runs) - 3} more)" if len(runs) > 3 else ""
        raise CheckpointError(
            f"{path} is a folder of run folders, not a checkpoint: pass the checkpoint of one, "
            f"e.g. {', '.join(map(str, runs[:3]))}{more}"
        )
    raise CheckpointError(
        f"{path} is a folder with no .safetensors checkpoint: pass a checkpoint file, e.g. "
        f"RUN/{BEST} of `pixelwise train --out RUN`"
    )


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the safetensors JSON header, the pixelwise metadata) of checkpoint file `path`."""
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
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}: not a pixelwise checkpoint (format {found!r})")
    return header, meta


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata of a checkpoint (a file, or a run folder: `resolve`), without loading
    its tensors."""
    return _read_header(resolve(path))[1]


def recorded_model(path: str | os.PathLike, meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(registry name, constructor arguments) that checkpoint `path`'s metadata `meta` records,
    checked against the registry (`pixelwise.models.check_model_args`).

    Raises:
        CheckpointError: no model name, model_args that are not a mapping, an unknown model,
            arguments its constructor does not take or of the wrong type.
    """
    name, kwargs = meta.get("model"), meta.get("model_args", {})
    if name is None:
        raise CheckpointError(f"{path}: the metadata records no model name ('model'); {_EDITED}")
    if not isinstance(kwargs, dict):
        raise CheckpointError(
            f"{path}: the metadata's model_args must be a mapping of constructor arguments, got "
            f"{type(kwargs).__name__} {kwargs!r:.80}; {_EDITED}"
        )
    try:
        check_model_args(name, kwargs)
    except ValueError as e:
        raise CheckpointError(
            f"{path}: the recorded model does not build: {e}; {_EDITED}"
        ) from None
    return name, kwargs


def _stored_shapes(path: Path, header: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shapes of the model tensors (not the extra ones) that the header of `path` lists."""
    shapes = {}
    for key, entry in header.items():
        if key == "__metadata__" or key.startswith(_EXTRA):
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise CheckpointError(f"{path}: checkpoint is truncated or corrupt (tensor {key!r})")
        shapes[key] = tuple(shape)
    return shapes


def check_shapes(path: str | os.PathLike, header: dict[str, Any], name: str, kwargs: dict) -> None:
    """Compare the tensors model `name(**kwargs)` has (built on the meta device: no memory) with
    those the safetensors `header` of `path` lists, by name and shape.

    Raises:
        CheckpointError: the model cannot be built from these arguments, or its tensors differ
            from the file's (the message names the first differences).
    """
    stored = _stored_shapes(Path(path), header)
    try:
        with torch.device("meta"), _SkipRandomInit():
            model = build(name, **kwargs)
    except ValueError as e:  # a constructor's range check
        raise CheckpointError(
            f"{path}: the recorded model does not build: {e}; {_EDITED}"
        ) from None
    except (RuntimeError, OverflowError) as e:  # sizes beyond any memory
        raise CheckpointError(
            f"{path}: the recorded model {name} {kwargs} cannot be built ({e}); {_EDITED}"
        ) from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    differences = [
        f"{k} is {stored[k]} in the file but {expected[k]} for the recorded model"
        for k in expected
        if k in stored and stored[k] != expected[k]
    ]
    differences += [f"{k} is missing from the file" for k in expected if k not in stored]
    differences += [
        f"{k} is not a tensor of the recorded model" for k in stored if k not in expected
    ]
    if differences:
        more = f" (and {len(differences) - 2} more)" if len(differences) > 2 else ""
        raise CheckpointError(
            f"{path}: the stored weights do not fit the model its metadata records ({name}, "
            f"{sum(map(_numel, expected.values())):,} parameters vs "
            f"{sum(map(_numel, stored.values())):,} in the file): "
            f"{'; '.join(differences[:2])}{more}; {_EDITED}"
        )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def check_finite(path: str | os.PathLike, weights: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError when a floating-point tensor of `weights` holds NaN or inf."""
    bad = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise CheckpointError(
            f"{path}: the weights hold NaN or infinite values ({len(bad)} of {len(weights)} "
            f"tensors, e.g. {bad[0]}): the training run that wrote them diverged; train again "
            f"with a lower learning rate (--lr), or use an earlier checkpoint"
        )


def load_state(path: str | os.PathLike) -> tuple[nn.Module, dict, dict[str, torch.Tensor]]:
    """Rebuild the model; return (model, metadata, extra tensors).

    `path` is a checkpoint file, or a run folder (its best.safetensors: `resolve`). The recorded
    model and the file's tensor shapes are checked before the model is built.

    Raises:
        CheckpointError: a missing, foreign, corrupt or edited checkpoint, or NaN/inf weights.
    """
    path = resolve(path)
    header, meta = _read_header(path)
    name, kwargs = recorded_model(path, meta)
    check_shapes(path, header, name, kwargs)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: checkpoint is truncated or corrupt ({e})") from None
    weights = {k: v for k, v in tensors.items() if not k.startswith(_EXTRA)}
    extra = {k[len(_EXTRA) :]: v for k, v in tensors.items() if k.startswith(_EXTRA)}
    check_finite(path, weights)
    model = build(name, **kwargs)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the recorded model ({e})") from None
    model.eval()
    return model, meta, extra


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model from a checkpoint (a file, or a run folder: `resolve`), in eval mode; its
    metadata is `read_metadata(path)`."""
    return load_state(path)[0]
