"""What commands draw on a terminal while they work: the progress bar of ``put`` and
``get`` for large blobs, and the status line of ``gc`` and ``check``."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["PROGRESS_MIN", "Progress", "Status", "mib"]

#: Inputs at least this large get a progress bar (when stderr is a terminal).
PROGRESS_MIN = 16 * 1024 * 1024


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class Progress:
    """A one-line progress bar on a terminal: plain ``\\r`` redraws, at most 10 a second.

    Shown only when ``stream`` is a terminal and the input is (or turns out to be) at
    least :data:`PROGRESS_MIN` bytes; otherwise every method is a no-op.
    """

    WIDTH = 24

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.label = label if len(label) <= 30 else "…" + label[-29:]
        self.total = total
        self.done = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False
        try:
            tty = self.stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.enabled = tty and (total is None or total >= PROGRESS_MIN)

    def update(self, n: int) -> None:
        """Count ``n`` more bytes done, and redraw if it is time to."""
        self.done += n
        if not self.enabled or self.done < PROGRESS_MIN:
            return
        now = time.monotonic()
        if now - self._last_draw >= 0.1:
            self._last_draw = now
            self._draw(now)

    def finish(self) -> None:
        """Erase the bar (the result line takes its place)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self._start, 1e-6)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            filled = int(frac * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            text = (
                f"{self.label} [{bar}] {frac:4.0%} {_human(self.done)} / {_human(self.total)}"
                f"  {_human(rate)}/s"
            )
        else:
            text = f"{self.label} {_human(self.done)}  {_human(rate)}/s"
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._drawn = True


def mib(n: int) -> str:
    """``n`` bytes in MiB, one decimal."""
    return f"{n / (1 << 20):.1f} MiB"


class Status:
    """A one-line status on a terminal (``label: phase done[/total]``), redrawn at most
    10 times a second; a no-op when ``stream`` is not a terminal.

    An instance is the ``progress`` callback of a long store operation: it is called
    with the phase, the count done and, where known, the total.
    """

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        try:
            self.enabled = stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False
        self._last = 0.0
        self._drawn = False

    def __call__(self, phase: str, done: int, total: int | None = None) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.1:
            return
        self._last = now
        of = "" if total is None else f"/{total}"
        self.stream.write(f"\r\x1b[K{self.label}: {phase} {done}{of}")
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        """Erase the line (what the command prints next takes its place)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
