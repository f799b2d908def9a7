"""manifest.json: what a job read, how it was configured, what it counted and how long it took."""

from __future__ import annotations

import collections
import datetime as dt
import json
import subprocess
import time
from importlib import metadata
from pathlib import Path

from infra import storage
from infra.config import ReelForgeConfig

_PACKAGES = ("reelforge", "ray", "torch", "pyarrow", "av", "scenedetect", "decord", "deepspeed",
             "transformers", "open_clip_torch")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_sha() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def sum_counts(markers: dict[str, dict]) -> dict:
    """Add up the per-partition counts of every committed partition."""
    total: collections.Counter = collections.Counter()
    by_stage: collections.Counter = collections.Counter()
    by_type: collections.Counter = collections.Counter()
    for m in markers.values():
        c = m["counts"]
        by_stage.update(c.get("failed_by_stage", {}))
        by_type.update(c.get("failed_by_type", {}))
        total.update({k: v for k, v in c.items() if isinstance(v, (int, float))})
    return {**total, "failed": sum(by_stage.values()), "failed_by_stage": dict(by_stage),
            "failed_by_type": dict(by_type)}


def build_manifest(*, job: str, cfg: ReelForgeConfig, source: str, output: str, started: float,
                   markers: dict[str, dict], plan_size: int, skipped: int, removed_stale: int,
                   stage_wall: dict[str, float], decisions: dict | None = None,
                   materialized: dict | None = None) -> dict:
    counts = sum_counts(markers)
    decisions = decisions or {}
    measure_failed = {k: v for k, v in counts["failed_by_stage"].items() if k.startswith("measure:")}
    finished = time.time()
    wall = finished - started
    return {
        "job": job,
        "input": source,
        "output": output,
        "started": _iso(started),
        "finished": _iso(finished),
        "wall_s": round(wall, 3),
        "counts": {
            "inputs": int(counts.get("inputs", 0)),
            "videos_ok": int(counts.get("ok", 0)),
            "failed": int(counts["failed"]),
            "failed_by_stage": counts["failed_by_stage"],
            "failed_by_type": counts["failed_by_type"],
            "clips": int(counts.get("clips", 0)),
            "kept": int(decisions.get("kept", 0)),
            "dropped_by_reason": decisions.get("dropped_by_reason", {}),
            "video_hours": round(counts.get("video_s", 0.0) / 3600, 6),
            "clip_hours": round(counts.get("clip_s", 0.0) / 3600, 6),
        },
        "stages": {
            "ingest": {"wall_s": round(stage_wall.get("ingest", 0.0), 3), "out": int(counts.get("inputs", 0))},
            "probe": {"in": int(counts.get("inputs", 0)),
                      "failed": int(counts["failed_by_stage"].get("probe", 0)),
                      "task_s": round(counts.get("probe_task_s", 0.0), 3)},
            "split": {"in": int(counts.get("inputs", 0)) - int(counts["failed_by_stage"].get("probe", 0)),
                      "failed": int(counts["failed_by_stage"].get("split", 0)),
                      "clips": int(counts.get("clips", 0)),
                      "task_s": round(counts.get("split_task_s", 0.0), 3)},
            "measures": {"failed": sum(measure_failed.values()), "failed_by_stage": measure_failed,
                         "task_s": {k[: -len("_task_s")]: round(counts.get(k, 0.0), 3)
                                    for k in ("frames_task_s", "cheap_task_s", "ocr_task_s", "clip_task_s")
                                    if k in counts}},
            "filters": {"in": int(decisions.get("clips", 0)), "kept": int(decisions.get("kept", 0)),
                        "dropped_by_reason": decisions.get("dropped_by_reason", {}),
                        "dedup_method": decisions.get("dedup_method")},
            **({"materialize": materialized} if materialized is not None else {}),
        },
        "stage_wall_s": {k: round(v, 3) for k, v in stage_wall.items()},
        "throughput": {
            "videos_per_s": round(counts.get("inputs", 0) / wall, 3) if wall else None,
            "video_s_per_wall_s": round(counts.get("video_s", 0.0) / wall, 3) if wall else None,
            "clips_per_s": round(counts.get("clips", 0) / wall, 3) if wall else None,
        },
        "resume": {"partitions": plan_size, "skipped_complete": skipped, "processed": plan_size - skipped,
                   "stale_parts_removed": removed_stale},
        "config": cfg.to_dict(),
        "versions": package_versions(),
        "git_sha": git_sha(),
    }


def write_manifest(output: str, manifest: dict) -> None:
    storage.write_text(storage.join(output, "manifest.json"), json.dumps(manifest, indent=2, sort_keys=False))
