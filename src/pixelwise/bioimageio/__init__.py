"""bioimage.io model packages: a pixelwise checkpoint as a model the zoo's tools run.

`export_bioimageio(checkpoint, out)` (`pixelwise export CKPT --bioimageio OUT`) writes a spec
0.5 package, a folder or a .zip, that bioimage.io's consumers (bioimageio.core, deepImageJ,
ilastik, napari) run and tile without pixelwise. The parts:

* `network`: `PackagedModel`, the module the weights hold (mirrored border, network, softmax);
* `sizes`: `package_sizes`, the input sizes and halo from the model's geometry;
* `architecture`: the standalone architecture file of the `pytorch_state_dict` weights;
* `documentation`: the package's README.md;
* `package`: the rdf.yaml, the weights, test tensors and cover, validation, atomic writing.

Needs the optional extra `pixelwise[bioimageio]` (bioimageio.spec; bioimageio.core to run the
packages' model test). Nothing here is imported by the rest of pixelwise.
"""

from pixelwise.bioimageio.network import PackagedModel
from pixelwise.bioimageio.package import (
    WEIGHT_FORMATS,
    BioimageioError,
    PackageInfo,
    export_bioimageio,
)
from pixelwise.bioimageio.sizes import PackageSizes, UnsupportedModelError, package_sizes

__all__ = [
    "WEIGHT_FORMATS",
    "BioimageioError",
    "PackageInfo",
    "PackageSizes",
    "PackagedModel",
    "UnsupportedModelError",
    "export_bioimageio",
    "package_sizes",
]
