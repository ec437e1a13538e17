"""The README.md of a bioimage.io package: what the model is, its data, how to run it.

`readme` writes the Markdown the package's `documentation` field points to from the facts the
exporter gathered (`PackageFacts`): the network and its size arithmetic, the classes, the
training data and normalisation the checkpoint records, the preprocessing, tiling with the halo,
and, for instance models, the post-processing that turns probabilities into objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pixelwise.bioimageio.sizes import PackageSizes

_TARGET_TEXT = {
    "three-class": (
        "seeds are the connected components of P(interior) > `seed_threshold`, grown by a "
        "watershed on −P(interior) inside the foreground 1 − P(background) > `mask_threshold`"
    ),
    "distance": (
        "the expected distance band E = Σₖ P(band k)·k/B is computed; seeds are the connected "
        "components of E > `seed_threshold`, grown by a watershed on −E inside the foreground "
        "1 − P(background) > `mask_threshold`"
    ),
    "two-class": (
        "the foreground P(object) > `mask_threshold` is split by a watershed on its distance "
        "transform, seeded at maxima at least `seed_distance` pixels apart"
    ),
}


@dataclass(frozen=True)
class PackageFacts:
    """What the README states.

    Attributes:
        name, description: the package's name and one-line description.
        model: registry name ("unet", "fcn8s", ...); model_args: its constructor arguments.
        parameters: the number of network parameters.
        margin, stride, receptive_radius: the network's geometry (`pixelwise.models.Geometry`).
        sizes: the package's input sizes, mirrored border and halo.
        class_names: the output channels' names, in order.
        input_dtype: the raw input's dtype; preprocessing: the spec's preprocessing steps.
        meta: the checkpoint's metadata (normalisation, target, post-processing, config).
        weights: the weight formats in the package.
        test_shape: the (1, C, H, W) shape of the test input.
        cite: (text, doi or url) pairs.
    """

    name: str
    description: str
    model: str
    model_args: dict[str, Any]
    parameters: int
    margin: int
    stride: int
    receptive_radius: int
    sizes: PackageSizes
    class_names: list[str]
    input_dtype: str
    preprocessing: list[dict[str, Any]]
    meta: dict[str, Any]
    weights: list[str]
    test_shape: tuple[int, ...]
    cite: list[tuple[str, str]]


def _network(facts: PackageFacts) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in facts.model_args.items())
    kind = (
        "U-Net (Ronneberger et al. 2015)"
        if facts.model == "unet"
        else (f"FCN-{facts.model[3:]} (Long et al. 2015) on a VGG16 backbone")
    )
    lines = [
        f"A {kind}, `{facts.model}({args})`, {facts.parameters:,} parameters, trained with "
        "pixelwise (per-pixel segmentation with FCN and U-Net, faithful to the papers).",
        "",
        f"- margin {facts.margin}, stride {facts.stride}, receptive radius "
        f"{facts.receptive_radius} pixels",
    ]
    if facts.sizes.pad:
        extra = (
            f" (and {facts.sizes.extra} more at the bottom and right, whose outputs it drops, "
            "to reach a valid network size)"
            if facts.sizes.extra
            else ""
        )
        lines.append(
            f"- the network uses valid (unpadded) convolutions and loses {facts.margin} pixels "
            f"per side; the packaged model mirrors {facts.sizes.pad} pixels per side first"
            f"{extra} (reflection, as pixelwise and the U-Net paper extrapolate the border), so "
            "its output has the input's height and width"
        )
    else:
        lines.append("- the network's output has the input's height and width")
    return "\n".join(lines)


def _training(meta: dict[str, Any]) -> str:
    config = meta.get("config") or {}
    items = []
    if config.get("data"):
        items.append(f"- dataset: `{config['data']}`")
    for key, label in (
        ("layout", "layout"),
        ("split", "split"),
        ("steps", "steps"),
        ("epochs", "epochs"),
        ("batch_size", "batch size"),
        ("patch_size", "patch size"),
        ("lr", "learning rate"),
        ("loss", "loss"),
        ("augment", "augmentation"),
    ):
        if config.get(key) not in (None, "", [], {}):
            items.append(f"- {label}: `{config[key]}`")
    if meta.get("target"):
        items.append(f"- target: `{meta['target']}` (instance segmentation)")
    if not items:
        return "The checkpoint records no training run (it was saved with `pixelwise.save`)."
    return "From the checkpoint's record of its training run:\n\n" + "\n".join(items)


def _preprocessing(facts: PackageFacts) -> str:
    norm = facts.meta.get("normalization")
    steps = "\n".join(f"  - `{json.dumps(step)}`" for step in facts.preprocessing)
    if norm is None:
        how = (
            "The checkpoint records no normalisation: the network takes the input as it is "
            f"({facts.input_dtype})."
        )
    elif norm.get("method") == "percentile":
        how = (
            f"pixelwise maps each channel of each image from its {norm.get('low', 1.0)}th and "
            f"{norm.get('high', 99.8)}th percentiles onto 0 and 1; the package states this as "
            "one `scale_range` step per sample and channel (axes y, x). "
            + (
                "pixelwise also inverts dark-on-bright images (their median above the middle "
                "of that range); the spec has no such step, so invert such images before "
                "giving them to the package."
                if norm.get("invert", False)
                else ""
            )
        )
    else:
        how = (
            f"pixelwise scales {facts.input_dtype} pixels by {norm.get('scale')} and "
            f"standardises each channel with the training set's mean {norm['mean']} and std "
            f"{norm['std']}: (x·scale − mean) / std. The package states this exactly as one "
            "`scale_linear` step, x·gain + offset with gain = scale / std and offset = "
            "−mean / std per channel (`fixed_zero_mean_unit_variance` would add an epsilon "
            "to the std)."
        )
    return f"{how}\n\n- input: {facts.input_dtype}, axes (batch, channel, y, x)\n- steps:\n{steps}"


def _tiling(facts: PackageFacts) -> str:
    s = facts.sizes
    rounded = (
        f" (the margin {facts.margin} rounded up to the pooling stride {facts.stride}, so tiles "
        "stay on the network's grid)"
        if facts.margin and s.halo != facts.margin
        else ""
    )
    return (
        f"Input height and width must be {s.min} + k·{s.step} (k = 0, 1, ...); the output "
        f"(probabilities, axes batch, channel, y, x) has the same size. Tiles must overlap by "
        f"the output halo of {s.halo} pixels per side{rounded}: crop {s.halo} pixels from each "
        "side of a tile's output, and mirror the image by as much at its border (the input's "
        "`pad` mode is `reflect`); bioimage.io consumers such as bioimageio.core do both from "
        f"the `halo` field. The test input is {facts.test_shape}."
    )


def _instances(facts: PackageFacts) -> str:
    pp = facts.meta.get("postprocessing")
    target = (pp or {}).get("target") or facts.meta.get("target")
    if target not in _TARGET_TEXT:
        return (
            "A semantic model: the class of a pixel is the argmax of its probabilities; no "
            "object post-processing."
        )
    record = json.dumps(pp) if pp else f'{{"target": "{target}"}} (the defaults)'
    return (
        f"An instance model (target `{target}`): {_TARGET_TEXT[target]}; then holes are "
        "filled (`fill_holes`), objects under `min_size` pixels dropped, objects touching the "
        "border dropped if `exclude_border`, and ids renumbered 1..N. The tuned record is "
        f"`config.pixelwise.postprocessing`:\n\n```json\n{record}\n```\n\nWith pixelwise "
        "installed:\n\n```python\nfrom pixelwise.instances import PostProcessing, "
        "objects_from_probabilities\n\nobjects = objects_from_probabilities(\n    probs, "
        "PostProcessing.from_dict(rdf['config']['pixelwise']['postprocessing'])\n)  # probs: "
        "(K, H, W) of one image\n```"
    )


def _validation(facts: PackageFacts) -> str:
    meta = facts.meta
    recorded = ""
    best = meta.get("best")
    if isinstance(best, dict):
        scores = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in best.items()
        )
        recorded = f"The checkpoint's best validation scores: {scores}.\n\n"
    elif best is not None:
        recorded = f"The checkpoint's best validation score: {best} (step {meta.get('step')}).\n\n"
    return (
        f"{recorded}The package's test output is what its weights compute for the test input "
        "(bioimageio.core's model test reproduces it for every weight format); it equals "
        "`pixelwise predict --probs` of the same image. To score the model on unseen labelled "
        "images (class IoU, pixel accuracy and, for instance models, object F1 / AP / panoptic "
        "quality), with the checkpoint:\n\n```sh\npixelwise evaluate CHECKPOINT DATA --out "
        "REPORT  # REPORT/metrics.json and report.html\n```"
    )


def readme(facts: PackageFacts) -> str:
    """The package's README.md (see the module docstring)."""
    classes = "\n".join(f"{i}. {name}" for i, name in enumerate(facts.class_names))
    cite = "\n".join(f"- {text}: {ref}" for text, ref in facts.cite)
    return f"""# {facts.name}

{facts.description}

## Model

{_network(facts)}

Output channels (softmax probabilities, summing to 1 per pixel):

{classes}

## Training data

{_training(facts.meta)}

## Preprocessing

{_preprocessing(facts)}

## Sizes and tiling

{_tiling(facts)}

## Objects

{_instances(facts)}

## Validation

{_validation(facts)}

## How to use

Weights: {", ".join(facts.weights)}. In Python with bioimageio.core
(`pip install bioimageio.core`):

```python
from bioimageio.core import load_description, predict

model = load_description("PACKAGE.zip")  # or the folder's rdf.yaml
sample = predict(model=model, inputs={{"input": image}})  # image: (1, C, H, W) or a file
probs = sample.members["output"].data  # (1, K, H, W) probabilities
```

`bioimageio.core.predict(..., blocksize_parameter=k)` tiles large images with the halo above.
The package also runs in deepImageJ (Fiji), ilastik and the bioimage.io napari plugin. With
pixelwise, the checkpoint this package was made from gives the same probabilities:
`pixelwise predict CHECKPOINT IMAGES --out OUT --probs`.

## Citation

{cite}
"""
