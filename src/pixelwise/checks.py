"""Argument checks shared by the public entry points.

Each raises ValueError with a message that states the rule, the value received and, where the
caller knows one, the fix. Module-specific checks stay in their modules; what lives here is used
by several (models, tiling, training).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence


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
