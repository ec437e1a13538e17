"""Models: U-Net, FCN, convolutionalization, the geometry contract, and a registry of names.

Every network here satisfies `Geometry` (margin, stride, receptive_radius, output_size,
input_size, valid_input_sizes), the one interface `pixelwise.tiling` and training plan sizes with.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pixelwise.models.convolutionalize import convolutionalize
from pixelwise.models.fcn import FCN, load_vgg16_weights
from pixelwise.models.geometry import Geometry
from pixelwise.models.unet import UNet, UNetGeometry

REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "fcn32s": lambda **kw: FCN("32s", **kw),
    "fcn16s": lambda **kw: FCN("16s", **kw),
    "fcn8s": lambda **kw: FCN("8s", **kw),
}


def build(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name, e.g. `build("unet", base_channels=16)`.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}")
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
    "convolutionalize",
    "load_vgg16_weights",
    "model_config",
]
