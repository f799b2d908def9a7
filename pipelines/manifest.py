"""The curate job's manifest.json: what it read, how it was configured, what it counted and how long it took."""

from __future__ import annotations

from infra.config import ReelForgeConfig
from infra.tables import manifest_footer, manifest_header, sum_counts


def build_manifest(*, cfg: ReelForgeConfig, source: str, output: str, started: float,
                   markers: dict[str, dict], plan_size: int, skipped: int, removed_stale: int,
                   stage_wall: dict[str, float], decisions: dict | None = None,
                   materialized: dict | None = None) -> dict:
    counts = sum_counts(markers)
    decisions = decisions or {}
    measure_failed = {k: v for k, v in counts["failed_by_stage"].items() if k.startswith("measure:")}
    header = manifest_header("curate", source, output, started)
    wall = header["wall_s"]
    footer = manifest_footer(cfg, plan_size, skipped, removed_stale)
    return {
        **header,
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
        **footer,
    }
