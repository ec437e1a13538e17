"""The error type of bad input data, shared by every part of :mod:`pixelwise.data`.

A :class:`DataError` names the file (or folder), what is wrong with it and how to fix it; the
dataset survey collects the same information as :class:`Problem` rows instead of raising, so that
one run lists every problem. Owns no reading or checking itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

StrPath = str | os.PathLike[str]


class Problem(NamedTuple):
    """One thing wrong with a dataset: the file (or folder), what is wrong, how to fix it."""

    path: str
    message: str
    fix: str


class DataError(ValueError):
    """Bad input data. ``str(error)`` names the file(s) and the fix; ``.problems`` lists them."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def data_error(path: object, message: str, fix: str) -> DataError:
    """A DataError of one problem, worded ``"<path>: <message>; <fix>"``."""
    return DataError(f"{path}: {message}; {fix}", [Problem(str(path), message, fix)])


def location(path: StrPath, page: int | None) -> str:
    """How messages name a file, or one page of a multi-page file: ``"a.tif [page 3]"``."""
    return str(path) if page is None else f"{path} [page {page}]"
