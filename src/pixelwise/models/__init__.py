"""Models: U-Net, FCN, convolutionalization, the geometry contract, and a registry of names.

Every network here satisfies `Geometry` (margin, stride, receptive_radius, output_size,
input_size, valid_input_sizes), the one interface `pixelwise.tiling` and training plan sizes with.
The registry (`build`) checks a model's arguments against its constructor's signature before
building it, so a misspelt or mistyped option (a flag, a checkpoint's metadata) is one clear
`ValueError` listing the arguments the model takes.
"""

from __future__ import annotations

import inspect
import numbers
import typing
from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from pixelwise.checks import is_int
from pixelwise.models.convolutionalize import convolutionalize
from pixelwise.models.fcn import FCN, load_vgg16_weights
from pixelwise.models.geometry import Geometry
from pixelwise.models.unet import UNet, UNetGeometry

REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "fcn32s": partial(FCN, "32s"),
    "fcn16s": partial(FCN, "16s"),
    "fcn8s": partial(FCN, "8s"),
}

_KINDS: dict[type, tuple[str, Callable[[object], bool]]] = {
    int: ("an integer", is_int),
    float: ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
}
"""The annotations `check_model_args` checks values against: (what it expects, the test)."""


def _check_name(name: object) -> None:
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}")


def model_arguments(name: str) -> dict[str, inspect.Parameter]:
    """The constructor arguments registered model `name` takes, in order, by name.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    _check_name(name)
    return dict(inspect.signature(REGISTRY[name]).parameters)


def describe_arguments(name: str) -> str:
    """`in_channels=1, num_classes=2, ...`: model `name`'s arguments with their defaults."""
    return ", ".join(
        p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
        for p in model_arguments(name).values()
    )


def check_model_args(name: str, kwargs: dict[str, Any]) -> None:
    """Raise ValueError unless `build(name, **kwargs)` gets arguments its constructor takes.

    Checks the name, that every key is a constructor argument, and that values of arguments
    annotated int, float, bool or str have that type (the constructors check the ranges).

    Raises:
        ValueError: the message names the model, the argument and the arguments it takes.
    """
    parameters = model_arguments(name)
    takes = f"{name} takes {describe_arguments(name)}"
    unknown = [k for k in kwargs if k not in parameters]
    if unknown:
        raise ValueError(
            f"model {name!r} has no argument(s) {', '.join(map(str, unknown))}; {takes}"
        )
    constructor = REGISTRY[name]
    constructor = getattr(constructor, "func", constructor)  # a partial: FCN of one variant
    hints = typing.get_type_hints(getattr(constructor, "__init__", constructor))
    for key, value in kwargs.items():
        kind = _KINDS.get(hints.get(key))
        if kind is not None and not kind[1](value):
            raise ValueError(
                f"model {name!r} argument {key} must be {kind[0]}, got {value!r}; {takes}"
            )


def build(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name, e.g. `build("unet", base_channels=16)`.

    Raises:
        ValueError: unknown name (the message lists the known ones), or an argument the model
            does not take or of the wrong type (`check_model_args`; the message lists the
            model's arguments), or a value out of range (the constructor's check).
    """
    check_model_args(name, kwargs)
    return REGISTRY[name](**kwargs)


def model_config(model: nn.Module) -> tuple[str, dict]:
    """(registry name, constructor keyword arguments) that rebuild `model` with `build`."""
    if isinstance(model, UNet):
        return "unet", dict(model.hparams)
    if isinstance(model, FCN):
        return model.registry_name, dict(model.hparams)
    raise TypeError(
        f"{type(model).__name__} is not a pixelwise model; known: {', '.join(REGISTRY)}"
    )


__all__ = [
    "FCN",
    "REGISTRY",
    "Geometry",
    "UNet",
    "UNetGeometry",
    "build",
    "check_model_args",
    "convolutionalize",
    "describe_arguments",
    "load_vgg16_weights",
    "model_arguments",
    "model_config",
]
