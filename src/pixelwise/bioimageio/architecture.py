"""The architecture file of a bioimage.io package: a standalone copy of the network's source.

The spec's `pytorch_state_dict` weights name a Python file and a callable in it that builds the
module the state dict loads into. `architecture_source` writes that file from pixelwise's own
sources, so a consumer runs the package without pixelwise installed:

* the network's module (`pixelwise/models/unet.py` or `fcn.py`) with its `pixelwise.checks`
  import replaced by the source of the two checks it uses (`is_int`, `check_positive_int`);
* `PackagedModel` (`pixelwise.bioimageio.network`: mirroring and softmax);
* a builder `packaged_model(*, pad, extra, **model_args)` returning `PackagedModel(network,
  pad=pad, extra=extra)`, whose keyword arguments the package's `architecture.kwargs` records.

The file only needs torch and numpy (FCN); `tests/test_bioimageio.py` imports it from a
folder without pixelwise's modules and compares its output with the packaged weights.
"""

from __future__ import annotations

import ast
import inspect
from types import ModuleType

from pixelwise import checks
from pixelwise.bioimageio import network as network_module
from pixelwise.models import fcn, unet

CALLABLE = "packaged_model"
"""The name of the builder in the architecture file."""

_MODULES: dict[str, tuple[ModuleType, str]] = {
    "unet": (unet, "UNet(**model_args)"),
    "fcn32s": (fcn, 'FCN("32s", **model_args)'),
    "fcn16s": (fcn, 'FCN("16s", **model_args)'),
    "fcn8s": (fcn, 'FCN("8s", **model_args)'),
}


def _split(source: str) -> tuple[list[str], str]:
    """(the import lines other than __future__ and pixelwise ones, the rest without the module
    docstring and imports) of a module's source."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    drop: set[int] = set()
    imports: list[str] = []
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        drop.update(range(body[0].lineno - 1, body[0].end_lineno))
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            drop.update(range(node.lineno - 1, node.end_lineno))
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if module != "__future__" and not (module or "").startswith("pixelwise"):
                imports.append("".join(lines[node.lineno - 1 : node.end_lineno]))
    rest = "".join(line for i, line in enumerate(lines) if i not in drop)
    return imports, rest.strip("\n") + "\n"


def architecture_source(model_name: str) -> str:
    """The standalone architecture file for registered model `model_name` (see the module
    docstring).

    Raises:
        ValueError: a model with no architecture source (the message lists those with one).
    """
    if model_name not in _MODULES:
        raise ValueError(
            f"no bioimage.io architecture for model {model_name!r}; models with one: "
            f"{', '.join(_MODULES)}"
        )
    module, build = _MODULES[model_name]
    net_imports, net_body = _split(inspect.getsource(module))
    wrap_imports, wrap_body = _split(inspect.getsource(network_module))
    imports = list(dict.fromkeys(["import numbers\n", *net_imports, *wrap_imports]))
    check_source = "\n\n".join(
        inspect.getsource(f) for f in (checks.is_int, checks.check_positive_int)
    )
    file = module.__name__.rsplit(".", 1)[-1]
    header = (
        f'"""{model_name} for bioimage.io, written by `pixelwise export --bioimageio`.\n\n'
        f"A standalone copy of pixelwise's network source (pixelwise/models/{file}.py), the\n"
        "two argument checks it imports, and PackagedModel (mirrored border + softmax).\n"
        f"`{CALLABLE}(pad=..., extra=..., **model_args)` builds the module the package's state\n"
        'dict loads into.\n"""\n\nfrom __future__ import annotations\n\n'
    )
    parts = [
        header + "".join(sorted(imports, key=lambda line: (line.startswith("from"), line))),
        check_source,
        net_body,
        wrap_body,
        f"def {CALLABLE}(*, pad: int = 0, extra: int = 0, **model_args: object) -> PackagedModel:\n"
        f'    """PackagedModel({build}, pad=pad, extra=extra): see the module docstring."""\n'
        f"    return PackagedModel({build}, pad=pad, extra=extra)\n",
    ]
    return "\n\n".join(p.rstrip("\n") + "\n" for p in parts)
