"""Rich progress and the one-screen summaries printed at the end of long jobs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


@contextlib.contextmanager
def curate_progress(console: Console) -> Iterator:
    """A progress callback `(event, n, done)` drawing one bar over the job's videos."""
    bar = Progress(TextColumn("[bold]curate[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=False, disable=not console.is_terminal)
    task = None
    with bar:
        def progress(event: str, n: int, done: int) -> None:
            nonlocal task
            if event == "start":
                task = bar.add_task("videos", total=n, completed=done)
                if done:
                    console.print(f"resume: {done} of {n} inputs are in complete partitions, skipping them")
            elif task is not None:
                bar.advance(task, n)

        yield progress


def print_curate_summary(out: Console, manifest: dict) -> None:
    c = manifest["counts"]
    t = Table(title=f"curate -> {manifest['output']}", show_header=False, box=None)
    t.add_row("inputs", str(c["inputs"]))
    t.add_row("videos ok", str(c["videos_ok"]))
    t.add_row("failed", str(c["failed"]))
    for reason, n in sorted(c["failed_by_type"].items()):
        t.add_row(f"  {reason}", str(n))
    t.add_row("clips", str(c["clips"]))
    t.add_row("hours of video", f"{c['video_hours']:.4f}")
    t.add_row("hours in clips", f"{c['clip_hours']:.4f}")
    r = manifest["resume"]
    t.add_row("partitions", f"{r['partitions']} ({r['skipped_complete']} already complete, skipped)")
    t.add_row("wall time", f"{manifest['wall_s']:.1f} s")
    tp = manifest["throughput"]
    if tp.get("video_s_per_wall_s") is not None:
        t.add_row("throughput", f"{tp['videos_per_s']} videos/s, {tp['video_s_per_wall_s']} video-s per wall-s")
    out.print(t)
