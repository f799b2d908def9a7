"""Shared helpers of the speed benches: time spans, row-arrival profiles and the result record.

Every speed bench ends with one result record (`result(...)`): its ratios, each with its target
and whether it is met, a profile (where the time goes: start-up, decode, model, serialisation,
waiting, each with its share), the load average (the machine is shared: walls under load are
pessimistic), the machine and the date. `bench/run_all.py` gathers these into one JSON.
(Not named `profile`: a script's folder comes first on sys.path and cProfile imports `profile`.)
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


class Spans:
    """Seconds (and calls) per named part, from perf_counter spans."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def profile(self, total: float | None = None) -> dict:
        """{part: {"s", "share"}}; with `total`, the time in no span is `other`."""
        parts = dict(self.seconds)
        if total is not None:
            parts["other"] = max(0.0, total - sum(parts.values()))
        return shares(parts)


def shares(parts: dict[str, float]) -> dict:
    """{part: seconds} -> {part: {"s": seconds, "share": fraction of the sum}}."""
    total = sum(parts.values()) or 1.0
    return {k: {"s": round(v, 4), "share": round(v / total, 3)} for k, v in parts.items()}


def arrivals(t0: float, stamps: Sequence[float], warm: int) -> dict:
    """Start-up and steady state from the times rows reached the driver.

    start-up: submit (t0) -> the `warm`-th row (workers started, models loaded, first batch done);
    steady: the rows after it over the time they took (a pipeline's rate once it is full).
    """
    stamps = sorted(stamps)
    if not stamps:
        return {"rows": 0}
    warm = min(max(1, warm), len(stamps) - 1) if len(stamps) > 1 else 1
    steady_rows = len(stamps) - warm
    steady_s = stamps[-1] - stamps[warm - 1]
    return {"rows": len(stamps), "startup_s": round(stamps[warm - 1] - t0, 4),
            "startup_rows": warm, "steady_rows": steady_rows, "steady_s": round(steady_s, 4),
            "steady_s_per_row": round(steady_s / steady_rows, 5) if steady_rows else None,
            "total_s": round(stamps[-1] - t0, 4)}


def marginal(small_s: float, small_rows: int, big_s: float, big_rows: int) -> dict:
    """Steady state as the marginal cost of rows: two runs of the same job, small and big.
    A pipeline's rows reach the driver in bursts (a block at a time), so the arrival times of
    one run say little; the difference of two runs cancels the fixed start-up cost."""
    per_row = (big_s - small_s) / max(1, big_rows - small_rows)
    return {"steady_s_per_row": round(per_row, 5), "startup_s": round(small_s - small_rows * per_row, 3)}


class Arrivals:
    """A job's `progress` callback that stamps each arriving row (unit events; 'start' ignored)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.stamps: list[float] = []

    def __call__(self, event: str, n: int, _done: int) -> None:
        if event != "start":
            self.stamps.extend([time.perf_counter()] * int(n))

    def profile(self, warm: int) -> dict:
        return arrivals(self.t0, self.stamps, warm)


def ratio(value: float, target: float, better: str) -> dict:
    """One measured ratio against its target; `better` is 'lower' or 'higher'."""
    met = value <= target if better == "lower" else value >= target
    return {"value": round(value, 3), "target": target, "better": better, "met": bool(met)}


def machine() -> dict:
    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "gpu": gpu, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def result(bench: str, ratios: dict[str, dict], profile: dict, note: str = "", **extra) -> dict:
    """The bench's result record (see the module docstring)."""
    return {"bench": bench, "ratios": ratios, "met": all(r["met"] for r in ratios.values()),
            "profile": profile, "note": note, "load_avg": [round(x, 2) for x in os.getloadavg()],
            "machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"), **extra}


def emit(record: dict, path: str | None) -> None:
    """Print the result record as the last JSON line, and write it to `path` when given."""
    print(json.dumps({"result": True, **record}), flush=True)
    if path:
        Path(path).write_text(json.dumps(record, indent=1))
