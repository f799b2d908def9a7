"""The curate job on Ray Data: ingest -> probe -> split -> measures, streamed, written per partition with resume.

This is the only module of `pipelines` that imports Ray. Stages are plain classes (probe.py,
split.py); here they are mapped onto `ray.data` as tasks with CPUs and concurrency from config,
and the driver gathers each partition's rows (small metadata, never pixels) and commits it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import posixpath
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from infra import storage, tables
from infra.config import CurateConfig, ReelForgeConfig, SafetyConfig
from infra.faults import fault_point
from infra.progress import data_progress
from infra.runtime import placement, ray_when_needed
from infra.schema import CLIPS_SCHEMA, VIDEOS_SCHEMA, table_from_rows, video_id_for
from infra.tables import batch_rows, map_rows, rows_batch
from pipelines import ingest, measures, refilter
from pipelines.manifest import build_manifest
from pipelines.measures.embed import models_at_start
from pipelines.materialize import CLIP_FILES, clip_file_uri

log = logging.getLogger(__name__)
TABLES = ["videos", "clips", "failures"]
# Config that is re-applied at every job end without decoding: changing it keeps the partitions.
RECOMPUTE_FREE = ("curate.filters", "curate.dedup", "curate.materialize", "curate.report",
                  "curate.measures.allow_random_weights", "curate.resources")  # resources: where stages run


# ----------------------------------------------------------------------------- stage tasks

_BUILT: dict[tuple[str, str, str], Callable] = {}


def _build(kind: str, c: CurateConfig, safety: SafetyConfig | None = None) -> Callable:
    m = c.measures
    if kind == "probe":
        from pipelines.probe import ProbeStage

        return ProbeStage()
    if kind == "split":
        from pipelines.split import SplitStage

        return SplitStage(method=c.split_method, content_threshold=c.content_threshold,
                          adaptive_threshold=c.adaptive_threshold, fade_threshold=c.fade_threshold,
                          transnet_threshold=c.transnet_threshold, min_scene_len=c.min_scene_len,
                          downscale=c.downscale, min_clip_s=c.min_clip_s, max_clip_s=c.max_clip_s,
                          trim_frames=c.trim_frames)
    if kind == "frames":
        from pipelines.measures.frames import FramesStage

        return FramesStage(frames_per_clip=m.frames_per_clip, short_side=m.short_side, pairs=m.motion)
    if kind == "materialize":
        from pipelines.materialize import MaterializeStage

        mc = c.materialize
        return MaterializeStage(fps=mc.fps, short_side=mc.short_side, max_frames=mc.max_frames, crf=mc.crf,
                                threads=max(1, int(mc.cpus)))
    return measures.build_stage(kind, m, safety)  # cheap, ocr, clip, safety


def _stage(kind: str, c: CurateConfig, safety: SafetyConfig | None = None) -> Callable:
    """Build a stage once per worker process (worker processes are reused across tasks)."""
    key = (kind, c.model_dump_json(), safety.model_dump_json() if safety else "")
    if key not in _BUILT:
        stage = _build(kind, c, safety)
        if hasattr(stage, "setup"):
            stage.setup()
        _BUILT[key] = stage
    return _BUILT[key]


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raise TimeoutError in this thread after `seconds` (decode loops check signals per frame)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise TimeoutError(f"gave up after {seconds:g} s (curate.decode_timeout_s)")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_stage_batch(batch: dict[str, np.ndarray], kind: str, curate: CurateConfig,
                    safety: SafetyConfig | None = None) -> dict:
    """Run one stage row by row under the per-video deadline; a row that times out becomes a failure."""
    fault_point(f"stage:{kind}")
    stage = _stage(kind, curate, safety)
    timeout_s = curate.decode_timeout_s

    def one(row: dict) -> dict:
        t0 = time.perf_counter()
        try:
            with _deadline(timeout_s):
                out = batch_rows(stage(rows_batch([row])))[0]
        except TimeoutError as exc:
            out = dict(row, status="failed", error=f"{kind}: {exc}", error_stage=kind, error_type="Timeout")
            out.setdefault("clips", "[]")
        out[f"{kind}_task_s"] = time.perf_counter() - t0
        return out

    return map_rows(batch, one)


class StageActor:
    """A model-backed stage on a Ray actor: built and loaded once per actor, then run per batch."""

    def __init__(self, kind: str, curate: CurateConfig, safety: SafetyConfig | None = None):
        self.kind, self.curate, self.safety = kind, curate, safety
        _stage(kind, curate, safety)  # load the model now, not inside the first batch's deadline

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        return run_stage_batch(batch, self.kind, self.curate, self.safety)


# ----------------------------------------------------------------------------- the job


def stage_kinds(cfg: ReelForgeConfig) -> list[str]:
    """The per-video stages in pipeline order: probe, split, then frames and the measure stages that are on."""
    kinds = measures.stage_kinds(cfg.curate.measures, cfg.safety)
    return ["probe", "split"] + (["frames", *kinds] if kinds else [])


def add_stage(ds, cfg: ReelForgeConfig, kind: str):
    """Map one stage onto `ds`: a task per video, or an actor pool for the model-backed measures."""
    import ray

    c, m, s = cfg.curate, cfg.curate.measures, cfg.safety
    fn_kwargs = dict(kind=kind, curate=c, **({"safety": s} if kind == "safety" else {}))
    if kind in ("ocr", "clip", "safety"):
        cpus, gpus, size = {"ocr": (m.ocr_cpus, m.ocr_gpus, m.ocr_concurrency),
                            "clip": (m.clip_cpus, m.clip_gpus, m.clip_concurrency),
                            "safety": (s.cpus, s.gpus, s.concurrency)}[kind]
        # an actor lost with its node is restarted, and its batches retried, on another node
        return ds.map_batches(StageActor, fn_constructor_kwargs=fn_kwargs, compute=ray.data.ActorPoolStrategy(size=size),
                              num_cpus=cpus, num_gpus=gpus or None, batch_size=1, zero_copy_batch=False,
                              **placement(c.resources))
    cpus = {"probe": c.probe_cpus, "split": c.split_cpus, "frames": m.frames_cpus, "cheap": m.cheap_cpus,
            "materialize": c.materialize.cpus}[kind]
    # Ray retries a task whose worker (or node) died; a bad *row* never raises.
    return ds.map_batches(run_stage_batch, fn_kwargs=fn_kwargs, num_cpus=cpus, batch_size=1,
                          compute=ray.data.TaskPoolStrategy(size=c.concurrency), zero_copy_batch=False,
                          **placement(c.resources))


def input_rows(pending: list[tables.Partition], image_extensions=()) -> list[dict]:
    return [{"uri": u, "video_id": video_id_for(u), "partition": p.pid,
             "media_type": ingest.media_type(u, image_extensions)} for p in pending for u in p.uris]


def _dataset(cfg: ReelForgeConfig, rows: list[dict], kinds: list[str]):
    """`kinds` stages over `rows`, one row per video throughout; pixels never reach the driver."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False  # partitions are sorted when written
    data_progress(ctx)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    for kind in kinds:
        ds = add_stage(ds, cfg, kind)
    return ds.drop_columns(["frames"]) if "frames" in kinds else ds


def _partition_tables(rows: list[dict]) -> tuple[dict, dict]:
    """Per-video rows (with clips as JSON) -> videos/clips/failures tables and the partition's counts."""
    rows = sorted(rows, key=lambda r: r["uri"])
    videos, clips, failures = [], [], []
    counts: dict[str, Any] = collections.Counter()
    by_stage: dict[str, int] = collections.Counter()
    by_type: dict[str, int] = collections.Counter()
    for r in rows:
        counts["inputs"] += 1
        for k in [k for k in r if k.endswith("_task_s")]:  # probe, split, frames and each measure stage
            counts[k] += float(r.get(k) or 0)
        videos.append({k: r.get(k) for k in VIDEOS_SCHEMA.names})
        if r.get("status") == "ok":
            counts["ok"] += 1
            counts["video_s"] += float(r.get("duration_s") or 0)
            for c in json.loads(r.get("clips") or "[]"):
                clips.append({k: c.get(k) for k in CLIPS_SCHEMA.names})
        else:
            stage, etype = r.get("error_stage") or "probe", r.get("error_type") or "Error"
            by_stage[stage] += 1
            by_type[etype] += 1
            failures.append(tables.failure_row(r["uri"], stage, r.get("error") or "", error_type=etype,
                                               video_id=r["video_id"]))
    counts["clips"] = len(clips)
    counts["clip_s"] = sum((c["end_s"] or 0) - (c["start_s"] or 0) for c in clips)
    clips.sort(key=lambda c: c["clip_id"])
    out = {"videos": table_from_rows(videos, VIDEOS_SCHEMA), "clips": table_from_rows(clips, CLIPS_SCHEMA),
           "failures": tables.failures_table(failures)}
    return out, {**counts, "failed_by_stage": dict(by_stage), "failed_by_type": dict(by_type)}


def _run_partitions(cfg: ReelForgeConfig, pending: list[tables.Partition], output: str, fingerprint: str,
                    markers: dict, progress: Callable | None) -> None:
    """Stream the pending partitions through Ray and commit each one as soon as all its videos are in."""

    def commit(pid: str, rows: list[dict]) -> None:
        part, counts = _partition_tables(rows)
        markers[pid] = tables.write_partition(output, pid, part, fingerprint, counts)

    rows = _dataset(cfg, input_rows(pending, cfg.curate.image_extensions), stage_kinds(cfg)).iter_rows()
    tables.commit_as_complete(rows, {p.pid: len(p.uris) for p in pending}, commit, progress=progress, unit="video")


def _materialize(cfg: ReelForgeConfig, output: str, d: refilter.Decisions) -> tuple[dict, dict]:
    """Write kept clips as mp4s on Ray, one task per source video; files already there are reused."""
    t = d.table.select(["clip_id", "uri", "start_frame", "end_frame"]).to_pylist()
    existing = {posixpath.basename(u) for u in storage.list_files(storage.join(output, CLIP_FILES))}
    uris: dict[str, str | None] = {}
    todo: dict[str, list[dict]] = collections.defaultdict(list)
    images = 0
    for i in np.flatnonzero(d.keep):
        c = t[i]
        if ingest.media_type(c["uri"], cfg.curate.image_extensions) == "image":
            images += 1  # an image is its own one-frame clip file
            continue
        target = clip_file_uri(output, c["clip_id"])
        if posixpath.basename(target) in existing:
            uris[c["clip_id"]] = target
        else:
            todo[c["uri"]].append({**c, "target": target})
    reused = len(uris)
    if todo:
        rows = [{"uri": u, "clips": json.dumps(cs)} for u, cs in sorted(todo.items())]
        for row in _dataset(cfg, rows, ["materialize"]).iter_rows():
            uris.update(json.loads(row.get("clip_uris") or "{}"))
    written = sum(1 for u in uris.values() if u) - reused
    return uris, {"kept": int(d.keep.sum()), "written": written, "reused": reused, "images": images,
                  "failed": int(d.keep.sum()) - written - reused - images}


def curate_fingerprint(cfg: ReelForgeConfig) -> str:
    """What decides if a partition is reusable: curate (less RECOMPUTE_FREE), plus the safety measure when on."""
    # image_extensions only decides which inputs there are (so which partitions), never how one is made
    base = cfg.fingerprint("curate", exclude=RECOMPUTE_FREE + ("curate.image_extensions",))
    if not cfg.safety.enabled:
        return base  # outputs curated before the safety section existed keep resuming
    return base + "-" + cfg.fingerprint("safety", exclude=("safety.cpus", "safety.gpus", "safety.concurrency"))


def run_curate(cfg: ReelForgeConfig, source: str, output: str, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run the curate job over `source` into `output`; returns the manifest.

    Partitions stream through probe -> split -> frames -> measures and commit with markers; then,
    over the whole clips table, filters + dedup (and materialize), and the report.
    """
    started = time.time()
    tables.configure_storage(cfg)
    if cfg.safety.enabled:
        measures.safety_model()  # a missing detector fails here, with one message, before any work
    random_weights = models_at_start(cfg.curate.measures)  # refused or missing models fail before any work
    t0 = time.perf_counter()
    uris = ingest.list_inputs(source, cfg.curate.extensions + cfg.curate.image_extensions)
    wall = {"ingest": time.perf_counter() - t0}
    plan = tables.plan(uris, cfg.curate.partition_size)
    fingerprint = curate_fingerprint(cfg)
    markers = tables.completed(output, plan, fingerprint)
    pending = [p for p in plan if p.pid not in markers]
    # workers on every node read the inputs and write the output: on a cluster, no local paths
    paths = {"--output": output, "--input": source if any("://" not in u for u in uris) else None}
    with ray_when_needed(cfg, paths=paths) as ensure_ray:
        tables.open_output(cfg, output)
        log.info("curate: %d inputs in %d partitions; %d complete, skipping them", len(uris), len(plan), len(markers))
        if progress:
            progress("start", len(uris), sum(len(p.uris) for p in plan if p.pid in markers))
        t1 = time.perf_counter()
        if pending:
            ensure_ray()
            _run_partitions(cfg, pending, output, fingerprint, markers, progress)
        wall["probe+split+measures (streamed)"] = time.perf_counter() - t1
        removed = tables.remove_stale(output, TABLES, {p.pid for p in plan})
        t2 = time.perf_counter()
        decisions = refilter.decide(output, cfg.curate)
        wall["filters+dedup"] = time.perf_counter() - t2
        clip_uris, materialized = None, None
        if cfg.curate.materialize.enabled:
            t3 = time.perf_counter()
            ensure_ray()
            clip_uris, materialized = _materialize(cfg, output, decisions)
            wall["materialize"] = time.perf_counter() - t3
        t4 = time.perf_counter()
        refilter.write(output, decisions, clip_uris)
        wall["filters+dedup"] += time.perf_counter() - t4  # rewriting the changed part files
    if cfg.curate.report:
        from pipelines.report import write_report

        t2 = time.perf_counter()
        write_report(output, cfg)
        wall["report"] = time.perf_counter() - t2
    manifest = build_manifest(
        cfg=cfg, source=source, output=output, started=started, markers=markers,
        plan_size=len(plan), skipped=len(plan) - len(pending), removed_stale=removed, stage_wall=wall,
        decisions=decisions.counts, materialized=materialized,
    )
    manifest["random_weights"] = random_weights
    tables.write_manifest(output, manifest)
    return manifest
