"""What a long-running command tells its user while it works.

``Reporter`` carries a command's lines: results (``say``, to standard output) and notes (``note``,
to standard error), both silenced by ``quiet``, and both copied to a log file when one is given.
``Reporter.task`` follows one loop over a known number of samples (a training epoch):

* on a terminal (the error stream's ``isatty()``), a live tqdm bar with the samples done, the
  rate in samples/s, the time left and the running loss, erased when the loop ends;
* elsewhere (a pipe, a file, CI), a plain line at most every ``PLAIN_SECONDS`` seconds and every
  ``PLAIN_FRACTION`` of the loop, so a log gets a few lines per long epoch and none for a short one;
* in the log file, the same plain lines, whatever the terminal shows; with ``quiet``, nothing on
  the terminal.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, TextIO

from tqdm import tqdm

__all__ = ["Reporter", "Task", "PLAIN_SECONDS", "PLAIN_FRACTION", "format_seconds"]

PLAIN_SECONDS = 10.0
PLAIN_FRACTION = 0.1


def format_seconds(seconds: float) -> str:
    """``m:ss`` below an hour, ``h:mm:ss`` above (as tqdm shows times)."""
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Reporter:
    """Where one command's lines go: ``out`` (results), ``err`` (notes and progress), ``log``."""

    def __init__(self, out: TextIO, err: TextIO, quiet: bool = False, log: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.monotonic,
                 plain_seconds: float = PLAIN_SECONDS, plain_fraction: float = PLAIN_FRACTION,
                 bar_seconds: float = 0.1) -> None:
        """``clock``, ``plain_seconds``, ``plain_fraction``: when plain lines are due;
        ``bar_seconds``: the least time between two redraws of the live bar."""
        self.out, self.err, self.quiet, self.log, self.clock = out, err, quiet, log, clock
        self.plain_seconds, self.plain_fraction, self.bar_seconds = plain_seconds, plain_fraction, bar_seconds
        isatty = getattr(err, "isatty", None)
        self.live = bool(isatty and isatty())

    def record(self, text: str) -> None:
        """A line for the log file only."""
        if self.log is not None:
            self.log.write(text + "\n")
            self.log.flush()

    def say(self, text: str) -> None:
        """A result line: standard output unless quiet, and the log."""
        if not self.quiet:
            self.out.write(text + "\n")
            self.out.flush()
        self.record(text)

    def note(self, text: str) -> None:
        """A note beside the results: the error stream unless quiet, and the log."""
        if not self.quiet:
            self.err.write(text + "\n")
            self.err.flush()
        self.record(text)

    def task(self, label: str, total: int) -> Task:
        """Follow a loop over ``total`` samples, named ``label`` ("epoch 3/20")."""
        return Task(self, label, total)


class Task:
    """One loop's progress; ``update`` after each batch, ``close`` at the end (or use ``with``)."""

    def __init__(self, reporter: Reporter, label: str, total: int) -> None:
        if total < 1:
            raise ValueError(f"total must be >= 1, got {total}")
        self.r, self.label, self.total = reporter, label, total
        self.done = 0
        self.loss: Optional[float] = None
        self.start = self._last_time = reporter.clock()
        self._last_done = 0
        self.bar = None
        if reporter.live and not reporter.quiet:
            self.bar = tqdm(total=total, desc=label, unit=" samples", file=reporter.err, leave=False,
                            dynamic_ncols=True, mininterval=reporter.bar_seconds)

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int, loss: Optional[float] = None) -> None:
        """``n`` more samples done; ``loss``: the running mean loss so far, if there is one."""
        self.done += n
        if loss is not None:
            self.loss = loss
        if self.bar is not None:
            if loss is not None:
                self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            self.bar.update(n)
        now = self.r.clock()
        if (self.done < self.total and now - self._last_time >= self.r.plain_seconds
                and self.done - self._last_done >= self.r.plain_fraction * self.total):
            self._last_time, self._last_done = now, self.done
            line = self.plain_line(now)
            if self.bar is None:
                self.r.note(line)
            else:
                self.r.record(line)

    def plain_line(self, now: Optional[float] = None) -> str:
        """``epoch 3/20  40% 576/1438 samples  412 samples/s  0:02 left  loss 0.1234``."""
        elapsed = (self.r.clock() if now is None else now) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = format_seconds((self.total - self.done) / rate) if rate > 0 else "?"
        shown = f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"
        line = (f"{self.label}  {100 * self.done / self.total:3.0f}% {self.done}/{self.total} samples  "
                f"{shown} samples/s  {left} left")
        return line + (f"  loss {self.loss:.4f}" if self.loss is not None else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
