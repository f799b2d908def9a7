"""The curate job on Ray Data: ingest -> probe -> split, streamed, written per partition with resume.

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
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from infra import storage
from infra.config import ReelForgeConfig
from pipelines import ingest, partitions
from pipelines.manifest import build_manifest, write_manifest
from pipelines.schema import CLIPS_SCHEMA, FAILURES_SCHEMA, VIDEOS_SCHEMA, table_from_rows, video_id_for

log = logging.getLogger(__name__)
TABLES = ["videos", "clips", "failures"]


# ----------------------------------------------------------------------------- stage tasks


@functools.lru_cache(maxsize=8)
def _stage(kind: str, kwargs_json: str) -> Callable:
    """Build a stage once per worker process (worker processes are reused across tasks)."""
    kwargs = json.loads(kwargs_json)
    if kind == "probe":
        from pipelines.probe import ProbeStage as cls
    elif kind == "split":
        from pipelines.split import SplitStage as cls
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


def run_stage_batch(batch: dict[str, np.ndarray], kind: str, kwargs_json: str, timeout_s: float) -> dict:
    """Run one stage row by row under the per-video deadline; a row that times out becomes a failure."""
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
    ray.init(address=cfg.ray.address or "local", num_cpus=cfg.ray.num_cpus if not cfg.ray.address else None,
             include_dashboard=cfg.ray.include_dashboard, object_store_memory=cfg.ray.object_store_memory,
             runtime_env={"env_vars": storage.storage_env()}, log_to_driver=False)
    return True


def _dataset(cfg: ReelForgeConfig, pending: list[partitions.Partition]):
    import ray

    c = cfg.curate
    rows = [{"uri": u, "video_id": video_id_for(u), "partition": p.pid} for p in pending for u in p.uris]
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False  # partitions are sorted when written
    ctx.enable_progress_bars = False
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    # Ray retries a task whose worker died (default max_retries); a bad *row* never raises.
    common = dict(batch_size=1, concurrency=c.concurrency, zero_copy_batch=False)
    ds = ds.map_batches(run_stage_batch, fn_kwargs=dict(kind="probe", kwargs_json="{}", timeout_s=c.decode_timeout_s),
                        num_cpus=c.probe_cpus, **common)
    ds = ds.map_batches(run_stage_batch, fn_kwargs=dict(kind="split", kwargs_json=json.dumps(_split_kwargs(cfg)),
                                                        timeout_s=c.decode_timeout_s),
                        num_cpus=c.split_cpus, **common)
    return ds


def _partition_tables(rows: list[dict]) -> tuple[dict, dict]:
    """Per-video rows (with clips as JSON) -> videos/clips/failures tables and the partition's counts."""
    rows = sorted(rows, key=lambda r: r["uri"])
    videos, clips, failures = [], [], []
    counts: dict[str, Any] = collections.Counter()
    by_stage: dict[str, int] = collections.Counter()
    by_type: dict[str, int] = collections.Counter()
    for r in rows:
        counts["inputs"] += 1
        counts["probe_task_s"] += float(r.get("probe_task_s") or 0)
        counts["split_task_s"] += float(r.get("split_task_s") or 0)
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


def run_curate(cfg: ReelForgeConfig, source: str, output: str, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run curate part 1 over `source` into `output`; returns the manifest."""
    started = time.time()
    storage.configure(cfg.storage.s3_endpoint, cfg.storage.region, cfg.storage.retries, cfg.storage.backoff_s)
    t0 = time.perf_counter()
    uris = ingest.list_inputs(source, cfg.curate.extensions)
    ingest_s = time.perf_counter() - t0
    plan = partitions.plan(uris, cfg.curate.partition_size)
    fingerprint = cfg.fingerprint("curate")
    markers = partitions.completed(output, plan, fingerprint)
    pending = [p for p in plan if p.pid not in markers]
    expected = {p.pid: len(p.uris) for p in pending}
    storage.makedirs(output)
    storage.write_text(storage.join(output, "config.yaml"), cfg.to_yaml())
    log.info("curate: %d inputs in %d partitions; %d complete, skipping them", len(uris), len(plan), len(markers))
    if progress:
        progress("start", len(uris), sum(len(p.uris) for p in plan if p.pid in markers))

    t1 = time.perf_counter()
    if pending:
        started_ray = init_ray(cfg)
        try:
            buffers: dict[str, list[dict]] = collections.defaultdict(list)
            for row in _dataset(cfg, pending).iter_rows():
                pid = row["partition"]
                buffers[pid].append({k: _none_if_nan(v) for k, v in row.items()})
                if progress:
                    progress("video", 1, 0)
                if len(buffers[pid]) == expected[pid]:
                    tables, counts = _partition_tables(buffers.pop(pid))
                    markers[pid] = partitions.write_partition(output, pid, tables, fingerprint, counts)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    removed = partitions.remove_stale(output, TABLES, {p.pid for p in plan})
    manifest = build_manifest(
        job="curate", cfg=cfg, source=source, output=output, started=started, markers=markers,
        plan_size=len(plan), skipped=len(plan) - len(pending), removed_stale=removed,
        stage_wall={"ingest": ingest_s, "probe+split (streamed)": time.perf_counter() - t1},
    )
    write_manifest(output, manifest)
    return manifest
