"""Scaffolding shared by the recipes in benchmarks/: their options, header, timing and results.

Every recipe (isbi2012, camvid_fcn, nuclei_weights: train and score; tiling, metrics,
losses_augment: time) composes the library and these helpers, so none writes its own:

* `make_parser` / `add_training_options` / `parse_args`: the command line — `--quick`
  everywhere; the data folder, `--out`, `--minutes` (> 0) and `--seed` for the training recipes.
* `Run`: when the run started and the load then; `Run.header` opens its report with the title,
  total time, load average, the machine (`machine_summary`: CPU model, avx2 / avx512 /
  avx512_bf16 / amx, cores, torch version and threads, date) and the command line.
* `time_calls` / `median_seconds`: median wall time of repeated calls, with explicit warm-up.
* `write_results`: OUT/results.md and OUT/results.json, written atomically (`pixelwise.atomic`).

Reference implementations and synthetic inputs that the tests use too live in references.py.
Recipes run as scripts (`python benchmarks/x.py`), which puts this folder on sys.path, so they
`import common`; tests/conftest.py puts it there for the tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pixelwise import atomic

# /proc/cpuinfo flags that decide CPU speed here: (label, flags any of which means "yes").
CPU_FLAGS = (
    ("avx2", ("avx2",)),
    ("avx512", ("avx512f",)),
    ("avx512_bf16", ("avx512_bf16",)),
    ("amx", ("amx_tile", "amx_bf16", "amx_int8")),
)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def make_parser(doc: str, *, quick: str) -> argparse.ArgumentParser:
    """A parser described by the first line of the recipe's docstring, with `--quick`.

    Args:
        doc: the recipe's module docstring.
        quick: help of `--quick`, saying what the quick run does and how long it takes.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def add_training_options(
    parser: argparse.ArgumentParser,
    *,
    name: str,
    data: str,
    minutes: float,
    minutes_help: str = "training time budget",
) -> None:
    """Add the training recipes' options: DATA, --out, --minutes and --seed.

    Args:
        parser: from `make_parser`.
        name: the recipe's name; results go to bench-results/<name> by default.
        data: help of the positional data folder.
        minutes: default training budget in minutes (`parse_args` rejects values ≤ 0).
        minutes_help: help of `--minutes`.
    """
    parser.add_argument("data", type=Path, help=data)
    parser.add_argument("--out", type=Path, default=Path("bench-results") / name)
    parser.add_argument("--minutes", type=float, default=minutes, help=minutes_help)
    parser.add_argument("--seed", type=int, default=0)


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """`parser.parse_args(argv)`, exiting with a usage error for `--minutes` ≤ 0."""
    args = parser.parse_args(argv)
    minutes = getattr(args, "minutes", None)
    if minutes is not None and not minutes > 0:
        parser.error(f"--minutes must be > 0, got {minutes}; pass a training budget")
    return args


# --------------------------------------------------------------------------------------------
# Run header
# --------------------------------------------------------------------------------------------


def _cpuinfo() -> tuple[str, set[str]]:
    """(CPU model name, flags) of the first processor in /proc/cpuinfo; platform's elsewhere."""
    model, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86, arm
            flags = set(value.split())
    return model or platform.processor() or platform.machine() or "unknown CPU", flags


def machine_summary() -> str:
    """One line: CPU model and flags, cores, torch version and threads, local date and time.

    Example: "machine: AMD EPYC 7B13, 2 cores (2 usable); avx2 yes, avx512 no, avx512_bf16 no,
    amx no; torch 2.5.1, 2 threads; 2026-12-01 14:03 UTC".
    """
    model, flags = _cpuinfo()
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    support = ", ".join(
        f"{label} {'yes' if flags & set(names) else 'no'}" for label, names in CPU_FLAGS
    )
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"machine: {model}, {cores} cores ({usable} usable); {support}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; {date}"
    )


@dataclass
class Run:
    """One run of a recipe: its start time and load average, summed up by `header` at the end.

    Attributes:
        name: the recipe's file stem ("isbi2012"), for the command line in the header.
        argv: the arguments `main` received; None means sys.argv[1:].
        started: `time.perf_counter()` at creation.
        load_before: the 1-minute load average at creation.
    """

    name: str
    argv: Sequence[str] | None = None
    started: float = field(default_factory=time.perf_counter)
    load_before: float = field(default_factory=lambda: os.getloadavg()[0])

    def header(self, title: str, *details: str) -> str:
        """The report's opening lines: title, total time and load, machine, command, details.

        Args:
            title: e.g. "ISBI 2012 recipe (--quick: 1 held-out slice)".
            details: further lines (data, model, budget), each without a newline.
        """
        argv = sys.argv[1:] if self.argv is None else self.argv
        lines = [
            f"{title}: total {time.perf_counter() - self.started:.0f} s, load average "
            f"{self.load_before:.1f} → {os.getloadavg()[0]:.1f}",
            machine_summary(),
            f"command: python benchmarks/{self.name}.py {shlex.join(argv)}".rstrip(),
            *details,
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


class Timing(NamedTuple):
    """What `time_calls` measured."""

    seconds: float  # median wall time of one timed call
    result: Any  # the last call's return value


def time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times timed; the median and last result.

    Warm-up calls fill lookup tables, allocator pools and caches; pass warmup=0 when one call
    is too expensive to repeat (a brute-force reference) and a cold first call is acceptable.
    """
    for _ in range(warmup):
        fn()
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), result)


def median_seconds(fn: Callable[[], Any], *, repeats: int, warmup: int) -> float:
    """Median wall time in seconds of one call of `fn` (see `time_calls`)."""
    return time_calls(fn, repeats=repeats, warmup=warmup).seconds


class CliRun(NamedTuple):
    """What `cli_seconds` measured."""

    seconds: float  # median wall time of one command, Python start included
    returncode: int  # the last run's exit status
    output: str  # the last run's stdout and stderr


def cli_seconds(argv: Sequence[str], *, repeats: int, env: dict[str, str] | None = None) -> CliRun:
    """Median wall seconds of `python -m pixelwise ARGV` in a fresh process, after one untimed
    run (it fills the file caches), and the last run's exit status and output."""
    command = [sys.executable, "-m", "pixelwise", *argv]
    times, done = [], None
    for i in range(repeats + 1):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if i:
            times.append(time.perf_counter() - start)
    return CliRun(statistics.median(times), done.returncode, done.stdout + done.stderr)


class WorkerFailed(RuntimeError):
    """A benchmark worker exited non-zero or ran past its time limit."""


def run_worker(script: str, cfg: dict[str, Any], *, timeout: float | None = None) -> dict:
    """Run `python script --worker JSON(cfg)` in a fresh process; its last stdout line's JSON.

    A fresh process per measurement keeps peak RSS (ru_maxrss) and allocator state separate.

    Raises:
        WorkerFailed: the worker failed (the end of its stderr in the message) or ran past
            `timeout` seconds.
    """
    try:
        proc = subprocess.run(
            [sys.executable, script, "--worker", json.dumps(cfg)],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise WorkerFailed(f"over the {timeout:.0f} s limit") from e
    if proc.returncode:
        raise WorkerFailed(f"worker {cfg.get('kind', cfg)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def write_results(out: Path, text: str, results: dict[str, Any]) -> None:
    """Write `text` to out/results.md and `results` (indented JSON) to out/results.json.

    Each file is replaced atomically: a reader sees the previous run's file or this one's.
    """
    atomic.write_text(Path(out) / "results.md", text)
    atomic.write_text(Path(out) / "results.json", json.dumps(results, indent=2))
