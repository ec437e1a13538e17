"""Atomic file writes: the one way pixelwise puts a file under its final name.

Every output (checkpoints, class maps, overlays, tables, reports, logs) is written to a temporary
file beside its destination and renamed over it, so a reader sees the old file or the new one,
never a half-written one. This module owns that pattern and nothing else:

* the temporary file is named ``.<name>.<pid>.<random>.tmp`` in the destination's folder (a
  rename across filesystems would not be atomic);
* it gets the permissions a plain ``open(path, "w")`` would give (0o666 minus the umask: 0644
  under umask 022), not ``mkstemp``'s 0600, so other users of a shared server can read outputs;
* it is deleted on any exception, including KeyboardInterrupt;
* temporary files of the same destination left by a killed run (their process is gone) are
  removed before a new write, so reruns into the same folder leave no litter.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

StrPath = str | os.PathLike[str]

_TEMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def _temp_pattern(name: str) -> re.Pattern[str]:
    """Temporary names of destination `name`: .<name>.<pid>.<random>.tmp."""
    return re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[^.]+{re.escape(_TEMP_SUFFIX)}$")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: StrPath) -> list[Path]:
    """Delete the temporary files of `path` whose writing process no longer exists.

    Returns the files removed. Temporaries of live processes (a concurrent writer) are kept.
    """
    path = Path(path)
    pattern = _temp_pattern(path.name)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not _process_alive(int(match.group(1))):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


@contextmanager
def atomic_path(path: StrPath) -> Iterator[Path]:
    """A temporary path beside `path`, renamed over `path` when the block succeeds.

    For writers that need a file name (tifffile memory maps, savefig, onnx.save). Missing parent
    folders are created. On any exception the temporary file is deleted and `path` untouched.

    Example:
        with atomic_path("out/labels.tif") as tmp:
            tifffile.imwrite(tmp, labels)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=_TEMP_SUFFIX, dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: StrPath, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: StrPath, text: str) -> Path:
    """Write UTF-8 `text` atomically (no newline translation)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""))


def write_bytes(path: StrPath, data: bytes) -> Path:
    """Write `data` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
