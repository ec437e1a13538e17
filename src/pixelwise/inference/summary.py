"""What a `predict_files` run reports: failed inputs, the summary, and its one-line log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Log = Callable[[str], None]


@dataclass(frozen=True)
class Failure:
    """One input that could not be predicted.

    Attributes:
        source: the file (and page) concerned.
        message: one line: the file, the problem and the fix.
    """

    source: str
    message: str


@dataclass
class PredictSummary:
    """What one `predict_files` call (one rank) did.

    Attributes:
        images: images (pages count one each) predicted and written.
        written: every file written, in order.
        failures: inputs that failed, one line each.
        notes: remarks that are not failures (e.g. an overlay skipped for a streamed image).
        rank, world_size: the share of the inputs this summary covers (files[rank::world_size]).
    """

    images: int = 0
    written: list[Path] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def exit_status(self) -> int:
        """0 when every input was predicted, else 1 (what the CLI should exit with)."""
        return 0 if self.ok else 1

    def report(self) -> str:
        """A few lines for the end of a run: counts, then every failure again."""
        share = f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""
        head = f"{share}predicted {self.images} image(s), wrote {len(self.written)} file(s)"
        if self.ok:
            return head
        lines = [f"{head}; {len(self.failures)} input(s) failed:"]
        lines += [f"  {f.message}" for f in self.failures]
        return "\n".join(lines)


class RunLog:
    """Records failures, notes and written files in the summary and emits one line for each."""

    def __init__(self, summary: PredictSummary, log: Log | None) -> None:
        self.summary = summary
        self._emit = log or (lambda _line: None)
        self._prefix = f"[rank {summary.rank}] " if summary.world_size > 1 else ""

    def note(self, line: str) -> None:
        self.summary.notes.append(line)
        self._emit(f"{self._prefix}note: {line}")

    def fail(self, source: str, message: str) -> None:
        self.summary.failures.append(Failure(source, message))
        self._emit(f"{self._prefix}failed: {message}")

    def done(self, line: str, written: list[Path]) -> None:
        self.summary.images += 1
        self.summary.written += written
        self._emit(f"{self._prefix}{line}")


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (newlines and runs of spaces collapsed)."""
    return " ".join(str(error).split())
