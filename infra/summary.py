"""Rich progress and the one-screen summaries printed at the end of long jobs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.table import Table


@contextlib.contextmanager
def job_progress(console: Console, job: str, unit: str, items: str, every_s: float = 10.0) -> Iterator:
    """A progress callback `(event, n, done)` over the job's `items` (committed partitions).

    `event == "start"`: n items in all, `done` already in complete partitions (said once, on resume);
    any other event adds n. Ray Data draws the live bars (infra/progress.py); where the console is
    not a terminal this also prints `job: done/total unit` at most every `every_s` seconds."""
    import time

    from infra.progress import quiet

    state = {"total": 0, "done": 0, "at": -every_s}
    lines = not quiet() and not console.is_terminal

    def progress(event: str, n: int, done: int) -> None:
        if event == "start":
            state.update(total=n, done=done)
            if done:
                console.print(f"resume: {done} of {n} {items} are in complete partitions, skipping them")
            return
        state["done"] += n
        now = time.monotonic()
        if lines and (now - state["at"] >= every_s or state["done"] >= state["total"]):
            state["at"] = now
            console.print(f"{job}: {state['done']}/{state['total']} {unit} done", markup=False, highlight=False)

    yield progress


def curate_progress(console: Console, job: str = "curate") -> contextlib.AbstractContextManager:
    """A progress callback `(event, n, done)` drawing one bar over the job's inputs."""
    return job_progress(console, job, unit="videos", items="inputs")


def print_curate_summary(out: Console, manifest: dict) -> None:
    c = manifest["counts"]
    t = Table(title=f"curate -> {manifest['output']}", show_header=False, box=None)
    t.add_row("inputs", str(c["inputs"]))
    t.add_row("videos ok", str(c["videos_ok"]))
    t.add_row("failed", str(c["failed"]))
    for reason, n in sorted(c["failed_by_type"].items()):
        t.add_row(f"  {reason}", str(n))
    t.add_row("clips", str(c["clips"]))
    if "kept" in c:
        t.add_row("kept", str(c["kept"]))
        for reason, n in c["dropped_by_reason"].items():
            t.add_row(f"  dropped: {reason}", str(n))
    t.add_row("hours of video", f"{c['video_hours']:.4f}")
    t.add_row("hours in clips", f"{c['clip_hours']:.4f}")
    r = manifest["resume"]
    t.add_row("partitions", f"{r['partitions']} ({r['skipped_complete']} already complete, skipped)")
    t.add_row("wall time", f"{manifest['wall_s']:.1f} s")
    tp = manifest["throughput"]
    if tp.get("video_s_per_wall_s") is not None:
        t.add_row("throughput", f"{tp['videos_per_s']} videos/s, {tp['video_s_per_wall_s']} video-s per wall-s")
    out.print(t)
    print_random_weights(out, manifest.get("random_weights"))


def caption_progress(console: Console) -> contextlib.AbstractContextManager:
    """A progress callback `(event, n, done)` drawing one bar over the job's kept clips."""
    return job_progress(console, "caption", unit="clips", items="kept clips")


def print_caption_summary(out: Console, manifest: dict) -> None:
    c = manifest["counts"]
    t = Table(title=f"caption -> {manifest['output']}", show_header=False, box=None)
    t.add_row("model", manifest["model"])
    t.add_row("clips", f"{c['clips_in']} ({c['kept']} kept, {c['not_kept']} not kept: passed through)")
    t.add_row("captioned", str(c["captioned"]))
    t.add_row("failed", str(c["failed"]))
    for stage, n in sorted(c["failed_by_stage"].items()):
        t.add_row(f"  {stage}", str(n))
    t.add_row("output tokens", str(c["output_tokens"]))
    r = manifest["resume"]
    t.add_row("partitions", f"{r['partitions']} ({r['skipped_complete']} already complete, skipped)")
    t.add_row("wall time", f"{manifest['wall_s']:.1f} s")
    tp = manifest["throughput"]
    if tp.get("clips_per_s") is not None:
        t.add_row("throughput", f"{tp['clips_per_s']} clips/s, {tp['output_tokens_per_s']} output tokens/s "
                                f"({tp['clips']} clips this run)")
    out.print(t)
    if manifest["placeholder"]:
        out.print(f"[bold red]WARNING: CAPTIONS ARE PLACEHOLDERS[/] - {manifest['model']!r} is a tiny randomly "
                  "initialised model; set caption.model or --model to a real captioner before training on them.")
    print_random_weights(out, [n for n in manifest.get("random_weights") or [] if "CAPTIONER" not in n])


def print_precompute_summary(out: Console, manifest: dict) -> None:
    c, b = manifest["counts"], manifest["bytes"]
    t = Table(title=f"precompute -> {manifest['output']}", show_header=False, box=None)
    t.add_row("clips read", str(c["clips"]))
    t.add_row("eligible", str(c["eligible"]))
    for reason, n in sorted(c["dropped"].items()):
        t.add_row(f"  dropped: {reason}", str(n))
    t.add_row("encoded", str(c["encoded"]))
    t.add_row("failed", str(c["failed"]))
    for bucket, n in sorted(c["rows_per_bucket"].items()):
        t.add_row(f"  bucket {bucket}", str(n))
    t.add_row("bytes per clip", f"{b['per_clip']:.0f}")
    t.add_row("projected storage", f"{b['projection']['1M_clips_GB']} GB per 1M clips, "
              f"{b['projection']['10M_clips_GB']} GB per 10M")
    r = manifest["resume"]
    t.add_row("shards", f"{r['partitions']} ({r['skipped_complete']} already complete, skipped)")
    t.add_row("throughput", f"{manifest['throughput']['clips_per_s']} clips/s")
    t.add_row("wall time", f"{manifest['wall_s']:.1f} s")
    m = manifest["models"]
    t.add_row("vae", f"{m['vae']} ({m.get('vae_id')})")
    t.add_row("text encoder", m["text_encoder"])
    out.print(t)
    print_random_weights(out, m.get("random_weights"))


def print_random_weights(out: Console, notes: list[str] | None) -> None:
    """The job ran on randomly initialised models (allow_random_weights): say so, loudly."""
    for note in notes or []:
        out.print(f"[bold red]WARNING: {note}[/] (allow_random_weights is set)")


def print_dedup_summary(out: Console, manifest: dict) -> None:
    c = manifest["counts"]
    t = Table(title=f"dedup -> {manifest['output']}", show_header=False, box=None)
    r = manifest["resume"]
    t.add_row("clips parts", f"{r['processed']} new, {r['skipped_complete']} indexed before (skipped)")
    t.add_row("clips read", str(c["clips_read"]))
    t.add_row("clips in the dataset", str(c["dataset_clips"]))
    t.add_row("duplicate groups", f"{c['groups']} ({c['clips_in_groups']} clips)")
    t.add_row("removed", str(c["removed"]))
    kinds = manifest.get("config", {}).get("dedup", {}).get("kinds", list(c["removed_by_kind"]))
    for kind, n in c["removed_by_kind"].items():
        if kind in kinds:
            t.add_row(f"  linked by {kind}", str(n))
    t.add_row("kept", str(c["dataset_kept"]))
    for kind, d in manifest.get("index", {}).items():
        if isinstance(d, dict) and "index_files" in d:
            t.add_row(f"index ({kind})", f"read {d['index_files_read']} of {d['index_files']} files")
    t.add_row("wall time", f"{manifest['wall_s']:.1f} s")
    if r["processed"] == 0:
        t.add_row("resume", f"every input part was indexed already (run {manifest['run']}): nothing to do")
    out.print(t)


def print_balance_summary(out: Console, manifest: dict) -> None:
    c, cl = manifest["counts"], manifest["clusters"]
    t = Table(title=f"balance -> {manifest['output']}", show_header=False, box=None)
    t.add_row("clips clustered", str(c["clips"]))
    t.add_row("clusters", f"{c['clusters']} (largest {max(cl['sizes'])}, smallest {min(cl['sizes'])})")
    t.add_row("kept after the cap", f"{c['kept_expected']} expected")
    t.add_row("sample_weight", f"{min(cl['sample_weight']):.3g} .. {max(cl['sample_weight']):.3g}")
    r = manifest["resume"]
    t.add_row("partitions", f"{r['partitions']} ({r['skipped_complete']} already complete, skipped)")
    t.add_row("wall time", f"{manifest['wall_s']:.1f} s")
    out.print(t)
