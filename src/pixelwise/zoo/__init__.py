"""Models that ship inside the package: objects from a fresh install, with no training.

A shipped model is an ordinary pixelwise checkpoint (safetensors + JSON metadata, read with
the same checks as any other; weights stored in float16 to keep the package small and loaded
as float32) kept as package data next to this module, so nothing is downloaded at run time.
Its metadata holds a model card under "pretrained": the training data and its licence, the
recipe and its commit, the expected input, the validation scores (as is and with the default
diameter), and per-image scores that the tests reproduce.

    segmenter = pixelwise.pretrained("nuclei")             # a Segmenter, ready to use
    result = segmenter.predict(image)                      # raw gray image, any bit depth
    result.instances                                       # (H, W) one id per nucleus
    pixelwise.pretrained("nuclei", diameter=30)            # nuclei about 30 pixels across
    pixelwise.pretrained("nuclei", diameter=None)          # as is, no size measured

A shipped model measures the nuclei's size per image by default (`diameter="auto"`,
`pixelwise.segmenter.SHIPPED_DIAMETER`): it meets microscopes and magnifications it never saw.

The command line names them where it takes a checkpoint: `pixelwise predict --model nuclei
IMAGES --out OUT --instances`, `pixelwise train DATA --instances --init nuclei --normalize
percentile` (fine-tuning, with the shipped model's normalisation), and `pixelwise models` lists
them. `benchmarks/train_pretrained.py` is the recipe that made them.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from pixelwise.checks import choice_message

MODELS: dict[str, str] = {"nuclei": "nuclei.safetensors"}
"""Shipped model name → its file in this package."""

CARD_FIELDS = (
    "name",
    "description",
    "input",
    "training_data",
    "licence",
    "recipe",
    "commit",
    "object_diameter",
    "validation_scores",
    "validation_scores_auto",
    "validation_images",
)
"""The keys every shipped model's card ("pretrained" in its metadata) has. The validation
scores are pooled over "validation_images" (each with its counts), predicted from raw pixels
in fp32: "validation_scores" as is (`diameter=None`), "validation_scores_auto" with the shipped
default (the nuclei's size measured per image, `pixelwise.segmenter.SHIPPED_DIAMETER`; each
image's counts under its "auto")."""


def model_path(name: str) -> Path:
    """The file of shipped model `name`.

    Raises:
        ValueError: an unknown name (the message lists the shipped ones).
    """
    if name not in MODELS:
        raise ValueError(choice_message("shipped model", name, tuple(MODELS)))
    return Path(str(resources.files(__name__).joinpath(MODELS[name])))


def model_card(name: str) -> dict[str, Any]:
    """The card of shipped model `name` (its metadata's "pretrained" record; `CARD_FIELDS`)."""
    from pixelwise.checkpoint import read_metadata

    return dict(read_metadata(model_path(name))["pretrained"])


def shipped_or_path(value: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """A checkpoint argument: a shipped model's name becomes its file, unless a file or folder
    of that name exists (a path always wins); anything else is returned as given."""
    if isinstance(value, str) and value in MODELS and not os.path.exists(value):
        return str(model_path(value))
    return value


def pretrained(name: str = "nuclei", **options: Any):
    """A `pixelwise.Segmenter` of shipped model `name`, ready to predict raw images.

    Args:
        name: one of `MODELS` ("nuclei": 2-D fluorescence nuclei, gray; see `model_card`).
        **options: as for `pixelwise.Segmenter.from_checkpoint`: `diameter=` (default
            "auto": measured per image from a first segmentation; the nuclei's typical
            diameter in pixels when it is known; None: as is), `tta=`, `precision=`,
            `device=`, `postprocessing=`, ...

    Raises:
        ValueError: an unknown name, or options the Segmenter refuses.
    """
    from pixelwise.segmenter import Segmenter

    return Segmenter.from_checkpoint(model_path(name), **options)


__all__ = ["CARD_FIELDS", "MODELS", "model_card", "model_path", "pretrained", "shipped_or_path"]
