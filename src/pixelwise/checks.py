"""Argument checks shared by the public entry points.

Each raises ValueError with a message that states the rule, the value received and, where the
caller knows one, the fix. Module-specific checks stay in their modules; what lives here is used
by several (models, tiling, training, the output folders of train, predict and evaluate), and
`InputWarning`, the warning of input that runs but is probably not what was meant.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path


def is_int(value: object) -> bool:
    """True for ints (and numpy integers), False for bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value: object) -> None:
    """Raise unless `value` is an integer ≥ 1."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def choice_message(name: str, value: object, choices: Sequence[object]) -> str:
    """`name must be one of 'a', 'b'; got 'c'`."""
    return f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}"


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(choice_message(name, value, choices))


class InputWarning(UserWarning):
    """Input that runs but is probably not what was meant (a model of 8 classes scored on
    2-class masks, masks without any object). The command line prints it as one
    ``warning: ...`` line on stderr."""


def check_output_folder(path: str | os.PathLike[str], name: str = "out") -> Path:
    """Raise ValueError unless `path` is a folder that exists or can be created, and that this
    process can write into.

    Nothing is created: the first existing folder on the way to `path` is checked, so a missing
    folder under a writable parent passes.

    Args:
        path: the output folder.
        name: how the message names the option (``"--out"`` on the command line).

    Returns:
        `path` as a Path.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(
            f"{name} {folder}: is an existing file, not a folder; give {name} a folder (a new "
            f"one is created), or move the file away"
        )
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(
            f"{name} {folder}: cannot create the folder, {existing} is a file; give {name} a "
            f"path whose parents are folders"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = (
            "folder is" if existing == folder else f"it would be created in {existing}, which is"
        )
        raise ValueError(
            f"{name} {folder}: {where} not writable (permission denied); give {name} a folder "
            f"you can write to, or change its permissions"
        )
    return folder
