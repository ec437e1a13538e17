"""Atomic writes: the one way pixelwise puts a file or a folder under its final name.

Every output (checkpoints, class maps, overlays, tables, reports, logs; OME-Zarr groups and
model packages, which are folders) is written to a temporary beside its destination and renamed
over it, so a reader sees the old output or the new one, never a half-written one. This module
owns that pattern and nothing else:

* the temporary is named ``.<name>.<pid>.<random>.tmp`` in the destination's folder (a
  rename across filesystems would not be atomic);
* it gets the permissions a plain ``open(path, "w")`` would give (0o666 minus the umask: 0644
  under umask 022), not ``mkstemp``'s 0600, so other users of a shared server can read outputs;
* it is deleted on any exception, including KeyboardInterrupt;
* temporaries (files or folders) of the same destination left by a killed run (their process
  is gone) are removed before a new write, so reruns into the same folder leave no litter.
"""

from __future__ import annotations

import os
import re
import shutil
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
    """Delete the temporary files and folders of `path` whose writing process no longer exists.

    Returns the temporaries removed. Those of live processes (a concurrent writer) are kept.
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
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
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


@contextmanager
def atomic_folder(path: StrPath) -> Iterator[Path]:
    """A temporary folder beside `path`, renamed over `path` when the block succeeds.

    For outputs that are folders (an OME-Zarr group, a bioimage.io package). The folder and
    what is in it get the umask's permissions (0755 / 0644 under umask 022), not ``mkdtemp``'s
    0700. An existing `path` is moved aside, replaced and then deleted, so a reader sees the
    old folder or the new one. On any exception the temporary is deleted and `path` untouched.

    Example:
        with atomic_folder("out/image.ome.zarr") as tmp:
            zarr.open_group(tmp, mode="w")  # ... write the group's arrays and metadata
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(
        tempfile.mkdtemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=_TEMP_SUFFIX, dir=path.parent
        )
    )
    try:
        yield tmp
        _set_folder_permissions(tmp)
        if path.exists():
            old = Path(
                tempfile.mkdtemp(
                    prefix=f".{path.name}.{os.getpid()}.", suffix=_TEMP_SUFFIX, dir=path.parent
                )
            )
            os.replace(path, old / "old")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def scratch_folder(path: StrPath) -> Iterator[Path]:
    """A temporary folder beside `path` to assemble what one write to `path` puts there.

    For a file built from many (a .zip of a folder): the folder is deleted when the block ends;
    one left by a killed run is removed by the next write to `path`, like any temporary of it.

    Example:
        with scratch_folder("model.zip") as folder:
            ...  # write the files into folder
            atomic_write("model.zip", lambda tmp: zip_folder(folder, tmp))
    """
    folder = _temporary_folder(Path(path))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _temporary_folder(path: Path) -> Path:
    """A new empty folder named as a temporary of `path` (stale ones removed first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    name = tempfile.mkdtemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=_TEMP_SUFFIX, dir=path.parent
    )
    return Path(name)


def _set_folder_permissions(folder: Path) -> None:
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


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
