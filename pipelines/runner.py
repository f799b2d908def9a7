"""The curate job on Ray Data: ingest -> probe -> split -> measures, streamed, written per partition with resume.

This is the only module of `pipelines` that imports Ray. Stages are plain classes (probe.py,
split.py); here they are mapped onto `ray.data` as tasks with CPUs and concurrency from config,
and the driver gathers each partition's rows (small metadata, never pixels) and commits it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import math
import os
import posixpath
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from infra import storage
from infra.config import ReelForgeConfig
from pipelines import ingest, measures, partitions, refilter
from pipelines.manifest import build_manifest, write_manifest
from pipelines.materialize import CLIP_FILES, clip_file_uri
from pipelines.schema import CLIPS_SCHEMA, FAILURES_SCHEMA, VIDEOS_SCHEMA, table_from_rows, video_id_for

log = logging.getLogger(__name__)
TABLES = ["videos", "clips", "failures"]
# Config that is re-applied at every job end without decoding: changing it keeps the partitions.
RECOMPUTE_FREE = ("curate.filters", "curate.dedup", "curate.materialize", "curate.report")


# ----------------------------------------------------------------------------- stage tasks


@functools.lru_cache(maxsize=8)
def _stage(kind: str, kwargs_json: str) -> Callable:
    """Build a stage once per worker process (worker processes are reused across tasks)."""
    kwargs = json.loads(kwargs_json)
    if kind == "probe":
        from pipelines.probe import ProbeStage as cls
    elif kind == "split":
        from pipelines.split import SplitStage as cls
    elif kind == "frames":
        from pipelines.measures.frames import FramesStage as cls
    elif kind == "materialize":
        from pipelines.materialize import MaterializeStage as cls
    elif kind in ("cheap", "ocr", "clip"):
        from pipelines.measures import build_stage

        cls = functools.partial(build_stage, kind)
    else:
        raise ValueError(kind)
    stage = cls(**kwargs)
    if hasattr(stage, "setup"):
        stage.setup()
    return stage


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


def _maybe_die(kind: str) -> None:
    """Fault injection for the reliability suite: REELFORGE_FAULT_KILL_ONCE=<stage>:<marker path> makes the
    first task of that stage kill its own worker process (as an OOM kill would); Ray must retry it."""
    spec = os.environ.get("REELFORGE_FAULT_KILL_ONCE", "")
    if not spec.startswith(kind + ":"):
        return
    marker = spec.split(":", 1)[1]
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os._exit(137)


def run_stage_batch(batch: dict[str, np.ndarray], kind: str, kwargs_json: str, timeout_s: float) -> dict:
    """Run one stage row by row under the per-video deadline; a row that times out becomes a failure."""
    _maybe_die(kind)
    stage = _stage(kind, kwargs_json)
    n = len(batch["uri"])
    out_rows: list[dict] = []
    for i in range(n):
        row_batch = {k: v[i : i + 1] for k, v in batch.items()}
        t0 = time.perf_counter()
        try:
            with _deadline(timeout_s):
                result = stage(row_batch)
            row = {k: _scalar(v[0]) for k, v in result.items()}
        except TimeoutError as exc:
            row = {k: _scalar(v[0]) for k, v in row_batch.items()}
            row.update(status="failed", error=f"{kind}: {exc}", error_stage=kind, error_type="Timeout")
            row.setdefault("clips", "[]")
        row[f"{kind}_task_s"] = time.perf_counter() - t0
        out_rows.append(row)
    keys = list(dict.fromkeys(k for r in out_rows for k in r))
    return {k: np.array([r.get(k) for r in out_rows], dtype=object) for k in keys}


class StageActor:
    """A model-backed stage on a Ray actor: built and loaded once per actor, then run per batch."""

    def __init__(self, kind: str, kwargs_json: str, timeout_s: float):
        self.args = (kind, kwargs_json, timeout_s)
        _stage(kind, kwargs_json)  # load the model now, not inside the first batch's deadline

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        return run_stage_batch(batch, *self.args)


def _none_if_nan(v: Any) -> Any:
    # Arrow<->numpy round trips turn a missing string into NaN; the tables want null.
    return None if isinstance(v, float) and math.isnan(v) else v


def _scalar(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# ----------------------------------------------------------------------------- the job


def _split_kwargs(cfg: ReelForgeConfig) -> dict:
    c = cfg.curate
    return dict(method=c.split_method, content_threshold=c.content_threshold,
                adaptive_threshold=c.adaptive_threshold, fade_threshold=c.fade_threshold,
                transnet_threshold=c.transnet_threshold, min_scene_len=c.min_scene_len,
                downscale=c.downscale, min_clip_s=c.min_clip_s, max_clip_s=c.max_clip_s,
                trim_frames=c.trim_frames)


def init_ray(cfg: ReelForgeConfig) -> bool:
    """Start or join Ray as the config says; True when this call started it (and should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    # A job submitted through Ray Jobs gets RAY_ADDRESS: join that cluster instead of starting one.
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or "local"
    # Inside a submitted job the job's runtime_env already reaches the workers; a second one conflicts.
    in_job = bool(os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
    ray.init(address=address, num_cpus=cfg.ray.num_cpus if address == "local" else None,
             include_dashboard=cfg.ray.include_dashboard, object_store_memory=cfg.ray.object_store_memory,
             runtime_env=None if in_job else {"env_vars": storage.storage_env()}, log_to_driver=False)
    return True


def stage_kinds(cfg: ReelForgeConfig) -> list[str]:
    """The per-video stages in pipeline order: probe, split, then frames and the measure stages that are on."""
    kinds = measures.stage_kinds(cfg.curate.measures.model_dump(mode="json"))
    return ["probe", "split"] + (["frames", *kinds] if kinds else [])


def add_stage(ds, cfg: ReelForgeConfig, kind: str):
    """Map one stage onto `ds`: a task per video, or an actor pool for the model-backed measures."""
    import ray

    c, m = cfg.curate, cfg.curate.measures
    kwargs = {"probe": {}, "split": _split_kwargs(cfg),
              "frames": dict(frames_per_clip=m.frames_per_clip, short_side=m.short_side, pairs=m.motion)}
    fn_kwargs = dict(kind=kind, kwargs_json=json.dumps(kwargs.get(kind, m.model_dump(mode="json"))),
                     timeout_s=c.decode_timeout_s)
    if kind in ("ocr", "clip"):
        cpus, gpus, size = ((m.ocr_cpus, m.ocr_gpus, m.ocr_concurrency) if kind == "ocr"
                            else (m.clip_cpus, m.clip_gpus, m.clip_concurrency))
        return ds.map_batches(StageActor, fn_constructor_kwargs=fn_kwargs, compute=ray.data.ActorPoolStrategy(size=size),
                              num_cpus=cpus, num_gpus=gpus or None, batch_size=1, zero_copy_batch=False)
    cpus = {"probe": c.probe_cpus, "split": c.split_cpus, "frames": m.frames_cpus, "cheap": m.cheap_cpus}[kind]
    # Ray retries a task whose worker died (default max_retries); a bad *row* never raises.
    return ds.map_batches(run_stage_batch, fn_kwargs=fn_kwargs, num_cpus=cpus, batch_size=1,
                          concurrency=c.concurrency, zero_copy_batch=False)


def input_rows(pending: list[partitions.Partition]) -> list[dict]:
    return [{"uri": u, "video_id": video_id_for(u), "partition": p.pid} for p in pending for u in p.uris]


def _dataset(cfg: ReelForgeConfig, pending: list[partitions.Partition]):
    """probe -> split -> frames -> measures over the pending partitions' videos, one row per video throughout."""
    import ray

    rows = input_rows(pending)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False  # partitions are sorted when written
    ctx.enable_progress_bars = False
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    kinds = stage_kinds(cfg)
    for kind in kinds:
        ds = add_stage(ds, cfg, kind)
    return ds.drop_columns(["frames"]) if "frames" in kinds else ds  # pixels never reach the driver


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
            stage = r.get("error_stage") or "probe"
            by_stage[stage] += 1
            by_type[r.get("error_type") or "Error"] += 1
            failures.append({"uri": r["uri"], "video_id": r["video_id"], "clip_id": None, "stage": stage,
                             "error_type": r.get("error_type") or "Error", "message": r.get("error") or ""})
    counts["clips"] = len(clips)
    counts["clip_s"] = sum((c["end_s"] or 0) - (c["start_s"] or 0) for c in clips)
    clips.sort(key=lambda c: c["clip_id"])
    tables = {"videos": table_from_rows(videos, VIDEOS_SCHEMA), "clips": table_from_rows(clips, CLIPS_SCHEMA),
              "failures": table_from_rows(failures, FAILURES_SCHEMA)}
    return tables, {**counts, "failed_by_stage": dict(by_stage), "failed_by_type": dict(by_type)}


def _run_partitions(cfg: ReelForgeConfig, pending: list[partitions.Partition], output: str, fingerprint: str,
                    markers: dict, progress: Callable | None) -> None:
    """Stream the pending partitions through Ray and commit each one as soon as all its videos are in."""
    expected = {p.pid: len(p.uris) for p in pending}
    buffers: dict[str, list[dict]] = collections.defaultdict(list)
    for row in _dataset(cfg, pending).iter_rows():
        pid = row["partition"]
        buffers[pid].append({k: _none_if_nan(v) for k, v in row.items()})
        if progress:
            progress("video", 1, 0)
        if len(buffers[pid]) == expected[pid]:
            tables, counts = _partition_tables(buffers.pop(pid))
            markers[pid] = partitions.write_partition(output, pid, tables, fingerprint, counts)


def _materialize(cfg: ReelForgeConfig, output: str, d: refilter.Decisions) -> tuple[dict, dict]:
    """Write kept clips as mp4s on Ray, one task per source video; files already there are reused."""
    import ray

    mc = cfg.curate.materialize
    t = d.table.select(["clip_id", "uri", "start_frame", "end_frame"]).to_pylist()
    existing = {posixpath.basename(u) for u in storage.list_files(storage.join(output, CLIP_FILES))}
    uris: dict[str, str | None] = {}
    todo: dict[str, list[dict]] = collections.defaultdict(list)
    for i in np.flatnonzero(d.keep):
        c = t[i]
        target = clip_file_uri(output, c["clip_id"])
        if posixpath.basename(target) in existing:
            uris[c["clip_id"]] = target
        else:
            todo[c["uri"]].append({**c, "target": target})
    reused = len(uris)
    if todo:
        kw = dict(fps=mc.fps, short_side=mc.short_side, max_frames=mc.max_frames, crf=mc.crf, threads=max(1, int(mc.cpus)))
        rows = [{"uri": u, "clips": json.dumps(cs)} for u, cs in sorted(todo.items())]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(run_stage_batch, fn_kwargs=dict(kind="materialize", kwargs_json=json.dumps(kw),
                                                            timeout_s=cfg.curate.decode_timeout_s),
                            num_cpus=mc.cpus, batch_size=1, zero_copy_batch=False, concurrency=cfg.curate.concurrency)
        for row in ds.iter_rows():
            uris.update(json.loads(row.get("clip_uris") or "{}"))
    written = sum(1 for u in uris.values() if u) - reused
    return uris, {"kept": int(d.keep.sum()), "written": written, "reused": reused,
                  "failed": int(d.keep.sum()) - written - reused}


def run_curate(cfg: ReelForgeConfig, source: str, output: str, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run the curate job over `source` into `output`; returns the manifest.

    Partitions stream through probe -> split -> frames -> measures and commit with markers; then,
    over the whole clips table, filters + dedup (and materialize), and the report.
    """
    started = time.time()
    storage.configure(cfg.storage.s3_endpoint, cfg.storage.region, cfg.storage.retries, cfg.storage.backoff_s)
    t0 = time.perf_counter()
    uris = ingest.list_inputs(source, cfg.curate.extensions)
    ingest_s = time.perf_counter() - t0
    plan = partitions.plan(uris, cfg.curate.partition_size)
    fingerprint = cfg.fingerprint("curate", exclude=RECOMPUTE_FREE)
    markers = partitions.completed(output, plan, fingerprint)
    pending = [p for p in plan if p.pid not in markers]
    storage.makedirs(output)
    storage.write_text(storage.join(output, "config.yaml"), cfg.to_yaml())
    log.info("curate: %d inputs in %d partitions; %d complete, skipping them", len(uris), len(plan), len(markers))
    if progress:
        progress("start", len(uris), sum(len(p.uris) for p in plan if p.pid in markers))

    wall = {"ingest": ingest_s}
    started_ray = False
    try:
        t1 = time.perf_counter()
        if pending:
            started_ray = init_ray(cfg)
            _run_partitions(cfg, pending, output, fingerprint, markers, progress)
        wall["probe+split+measures (streamed)"] = time.perf_counter() - t1
        removed = partitions.remove_stale(output, TABLES, {p.pid for p in plan})
        t2 = time.perf_counter()
        decisions = refilter.decide(output, cfg.curate)
        wall["filters+dedup"] = time.perf_counter() - t2
        clip_uris, materialized = None, None
        if cfg.curate.materialize.enabled:
            t3 = time.perf_counter()
            started_ray = init_ray(cfg) or started_ray
            clip_uris, materialized = _materialize(cfg, output, decisions)
            wall["materialize"] = time.perf_counter() - t3
        t4 = time.perf_counter()
        refilter.write(output, decisions, clip_uris)
        wall["filters+dedup"] += time.perf_counter() - t4  # rewriting the changed part files
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    if cfg.curate.report:
        from pipelines.report import write_report

        t2 = time.perf_counter()
        write_report(output, cfg)
        wall["report"] = time.perf_counter() - t2
    manifest = build_manifest(
        job="curate", cfg=cfg, source=source, output=output, started=started, markers=markers,
        plan_size=len(plan), skipped=len(plan) - len(pending), removed_stale=removed, stage_wall=wall,
        decisions=decisions.counts, materialized=materialized,
    )
    write_manifest(output, manifest)
    return manifest
