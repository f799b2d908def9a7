"""Progress a person can follow, and `--quiet` that turns it all off.

- Ray Data jobs (curate, caption, precompute): Ray Data's own progress bars (`data_progress`); on a
  terminal they redraw, otherwise Ray Data logs plain lines (every RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL
  seconds, 10 by default).
- Training jobs (train, train-vae, train-captioner): rank 0 posts `(step, loss)` to a small inbox actor
  (`report_step`); the driver drains it and prints one line, `train  step 40/120  loss 0.634
  12.5 samples/s  ETA 1m05s`: redrawn in place (carriage return) on a terminal, a plain line at
  most every `every_s` seconds otherwise. Ray's log forwarding is off (runtime.py), so nothing
  else from the workers reaches the screen.

`reelforge --quiet` (or REELFORGE_QUIET=1) turns all of it off; summaries and errors still print.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

QUIET_ENV = "REELFORGE_QUIET"


def quiet() -> bool:
    """True when the user asked for no progress output (`reelforge --quiet ...`)."""
    return os.environ.get(QUIET_ENV, "") not in ("", "0")


def set_quiet(on: bool) -> None:
    if on:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


def data_progress(ctx) -> None:
    """Ray Data's progress bars on this DataContext: on, unless quiet."""
    import logging

    ctx.enable_progress_bars = not quiet()
    if quiet():  # not even Ray Data's "progress bars disabled" hint
        logging.getLogger("ray.data").setLevel(logging.ERROR)


# ----------------------------------------------------------------------------- the line


def format_duration(seconds: float | None) -> str:
    """12s, 3m05s, 1h02m; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_step_line(job: str, step: int, total: int, loss: float | None, samples_per_s: float | None,
                     eta_s: float | None) -> str:
    """`train  step 40/120  loss 0.6341  12.5 samples/s  ETA 1m05s`."""
    loss_s = f"{loss:.4f}" if loss is not None and math.isfinite(loss) else "?"
    rate = f"{samples_per_s:.1f}" if samples_per_s is not None else "?"
    return f"{job}  step {step}/{total}  loss {loss_s}  {rate} samples/s  ETA {format_duration(eta_s)}"


class StepPrinter:
    """Turns `(step, loss, at)` events into the live line: rates and ETA from the steps seen so far."""

    def __init__(self, job: str, total: int, samples_per_step: int, stream: TextIO | None = None,
                 every_s: float = 10.0, tty: bool | None = None):
        self.job, self.total, self.samples_per_step = job, total, samples_per_step
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = every_s
        self.first: tuple[int, float] | None = None
        self.last: tuple[int, float | None, float] | None = None
        self.printed_at = -math.inf
        self.printed_step = -1
        self.drawn = False

    def line(self) -> str:
        step, loss, at = self.last
        first_step, first_at = self.first
        done, took = step - first_step, at - first_at
        per_step = took / done if done > 0 and took > 0 else None
        rate = self.samples_per_step / per_step if per_step else None
        eta = (self.total - step) * per_step if per_step else None
        return format_step_line(self.job, step, self.total, loss, rate, eta)

    def update(self, step: int, loss: float | None, at: float | None = None) -> None:
        at = time.time() if at is None else at
        if self.first is None:  # the rate counts from the first step seen (a resumed run starts late)
            self.first = (step, at)
        self.last = (step, loss, at)
        now = time.monotonic()
        if self.tty and (now - self.printed_at >= 0.2 or step >= self.total):
            self.stream.write("\r\x1b[2K" + self.line())
            self.stream.flush()
            self.drawn, self.printed_at = True, now
        elif not self.tty and (now - self.printed_at >= self.every_s or step >= self.total):
            self._plain(now)

    def _plain(self, now: float) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self.printed_at, self.printed_step = now, self.last[0]

    def close(self) -> None:
        """End the line (a terminal) or print the last step when it was not printed yet."""
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
        elif not self.tty and self.last is not None and self.printed_step != self.last[0]:
            self._plain(time.monotonic())


# ----------------------------------------------------------------------------- rank 0 -> the driver


def _inbox_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class StepInbox:
        """Rank 0's step events, held until the driver takes them."""

        def __init__(self):
            self.events: list[tuple] = []

        def put(self, event: tuple) -> None:
            self.events.append(event)

        def take(self) -> list[tuple]:
            events, self.events = self.events, []
            return events

    return StepInbox


@contextlib.contextmanager
def step_progress(job: str, total: int, samples_per_step: int, stream: TextIO | None = None,
                  every_s: float = 10.0, poll_s: float = 0.5) -> Iterator[object | None]:
    """Ray must be up. Yields the handle a training worker's rank 0 passes to `report_step` (None when
    quiet); a driver thread prints the line while the block runs."""
    if quiet():
        yield None
        return
    import ray

    inbox = _inbox_class().remote()
    printer = StepPrinter(job, total, samples_per_step, stream, every_s)
    stop = threading.Event()

    def drain() -> None:
        for step, loss, at in ray.get(inbox.take.remote()):
            printer.update(step, loss, at)

    def follow() -> None:
        while not stop.wait(poll_s):
            with contextlib.suppress(Exception):  # the line is best effort; the job goes on
                drain()

    thread = threading.Thread(target=follow, name=f"{job}-progress", daemon=True)
    thread.start()
    try:
        yield inbox
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(Exception):
            drain()
        printer.close()
        with contextlib.suppress(Exception):
            ray.kill(inbox)


def report_step(handle, step: int, loss: float | None) -> None:
    """Rank 0, after a step: post it to the driver's line (no-op without a handle); never waits."""
    if handle is not None:
        handle.put.remote((int(step), None if loss is None else float(loss), time.time()))
