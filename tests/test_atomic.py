"""pixelwise.atomic: the one way a file reaches its final name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixelwise.atomic import (
    atomic_folder,
    atomic_path,
    atomic_write,
    remove_stale_temporaries,
    write_text,
)


def _with_umask(mask: int, fn):
    previous = os.umask(mask)
    try:
        return fn()
    finally:
        os.umask(previous)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_open_would_give_under_the_umask(
    tmp_path: Path, mask: int, mode: int
) -> None:
    target = _with_umask(mask, lambda: write_text(tmp_path / "a.txt", "x"))
    assert target.stat().st_mode & 0o777 == mode
    assert target.read_text() == "x"


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt  # any BaseException, as Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_the_temporary_is_beside_the_target_and_parents_are_created(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "x.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(f".x.bin.{os.getpid()}.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"ok")
        assert not target.exists()
    assert target.read_bytes() == b"ok" and not tmp.exists()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_killed_runs_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "map.png"
    stale = tmp_path / f".map.png.{_dead_pid()}.abc123.tmp"
    live = tmp_path / f".map.png.{os.getppid()}.def456.tmp"  # a process that is running
    other = tmp_path / f".other.png.{_dead_pid()}.x.tmp"  # another target's: not ours to judge
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    write_text(target, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [target.name, live.name, other.name]
    )
    assert remove_stale_temporaries(tmp_path / "other.png") == [other]


def test_a_write_killed_with_sigkill_is_cleaned_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "big.tif"
    code = (
        "import os, signal\n"
        "from pixelwise.atomic import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    tmp.write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False)
    assert result.returncode == -9
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".big.tif.")]
    assert len(leftovers) == 1 and not target.exists()
    write_text(target, "done")
    assert [p.name for p in tmp_path.iterdir()] == ["big.tif"]


def test_a_folder_appears_complete_with_the_umask_modes_and_replaces_the_old(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out" / "image.ome.zarr"

    def write(text: str) -> None:
        with atomic_folder(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.endswith(".tmp")
            (tmp / "0").mkdir()
            (tmp / "0" / "chunk").write_text(text)
            assert not target.exists() or (target / "0" / "chunk").read_text() != text

    _with_umask(0o022, lambda: write("old"))
    assert target.stat().st_mode & 0o777 == 0o755
    assert (target / "0").stat().st_mode & 0o777 == 0o755
    assert (target / "0" / "chunk").stat().st_mode & 0o777 == 0o644
    _with_umask(0o022, lambda: write("new"))
    assert (target / "0" / "chunk").read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["image.ome.zarr"]


def test_a_failing_folder_write_leaves_the_old_folder_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "package"
    target.mkdir()
    (target / "rdf.yaml").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_folder(target) as tmp:
        (tmp / "rdf.yaml").write_text("half")
        raise KeyboardInterrupt
    assert (target / "rdf.yaml").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["package"]


def test_a_folder_write_killed_with_sigkill_is_cleaned_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "labels.zarr"
    code = (
        "import os, signal\n"
        "from pixelwise.atomic import atomic_folder\n"
        f"with atomic_folder({str(target)!r}) as tmp:\n"
        "    (tmp / 'part').write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False)
    assert result.returncode == -9
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".labels.zarr.")]
    assert len(leftovers) == 1 and leftovers[0].is_dir() and not target.exists()
    with atomic_folder(target) as tmp:
        (tmp / "done").write_text("1")
    assert [p.name for p in tmp_path.iterdir()] == ["labels.zarr"]
