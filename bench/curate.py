"""Curate throughput: the full job on the demo set, and the ratio of its wall time to its stages run alone.

Writes `--copies` copies of the demo videos (infra/demo.py, another seed each: 3 videos and one
broken file per copy), then on one local Ray (configs/tiny.yaml, 2 CPUs) runs:
- the full `curate` job (ingest -> probe -> split -> frames -> measures, streamed and committed per
  partition -> filters + dedup -> [materialize] -> report);
- each stage alone on the same inputs: its input computed beforehand and held in Ray's object store,
  so a timing covers that stage only (workers started, models loaded, as the full job pays them);
  filters + dedup, materialize and the report alone on the full job's output.
A tiny warm-up job starts Ray's worker processes first so neither side pays for that.
Prints one JSON line per stage and a summary: clips/s and video-seconds per wall-second of the full
job, and full_wall / sum(stage walls alone) (target <= 1.3; below 1 means streaming overlapped stages).
Run:  OMP_NUM_THREADS=1 python bench/curate.py [--copies 8] [--materialize] [--set curate.key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from infra.config import load_config  # noqa: E402
from infra.demo import make_demo_videos  # noqa: E402
from infra import runtime, tables  # noqa: E402
from pipelines import ingest, refilter, runner  # noqa: E402
from pipelines.report import write_report  # noqa: E402
from spans import emit, ratio, result, shares  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def stages_alone(cfg, videos: str, out_full: str, out_alone: str) -> dict[str, float]:
    """Wall seconds of each stage run by itself over the same inputs."""
    import ray

    uris, alone = _timed(lambda: ingest.list_inputs(videos, cfg.curate.extensions))
    walls = {"ingest": alone}
    rows = runner.input_rows(tables.plan(uris, cfg.curate.partition_size))
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).materialize()
    for kind in runner.stage_kinds(cfg):
        ds, walls[kind] = _timed(lambda ds=ds, kind=kind: runner.add_stage(ds, cfg, kind).materialize())
    t0 = time.perf_counter()
    decisions = refilter.decide(out_full, cfg.curate)
    refilter.write(out_full, decisions)
    walls["filters+dedup"] = time.perf_counter() - t0
    if cfg.curate.materialize.enabled:
        _, walls["materialize"] = _timed(lambda: runner._materialize(cfg, out_alone, decisions))
    if cfg.curate.report:
        shutil.rmtree(os.path.join(out_full, "report"), ignore_errors=True)  # no cached thumbnails: decode as the job did
        _, walls["report"] = _timed(lambda: write_report(out_full, cfg))
    return walls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--materialize", action="store_true", help="also write each kept clip as an mp4")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="small sizes: 3 copies")
    ap.add_argument("--result-json", default=None, help="also write the result record here")
    args = ap.parse_args()
    if args.quick:
        args.copies = 3
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    sets = args.sets + (["curate.materialize.enabled=true"] if args.materialize else [])
    cfg = load_config(ROOT / "configs" / "tiny.yaml", sets)
    tmp = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    for i in range(args.copies):
        make_demo_videos(str(tmp / "videos" / f"set{i:02d}"), seed=i)
    runtime.init_ray(cfg)
    import ray

    try:
        runner.run_curate(cfg, str(tmp / "videos" / "set00" / "shapes-a.mp4"), str(tmp / "warmup"))
        manifest, full = _timed(lambda: runner.run_curate(cfg, str(tmp / "videos"), str(tmp / "full")))
        walls = stages_alone(cfg, str(tmp / "videos"), str(tmp / "full"), str(tmp / "alone"))
    finally:
        ray.shutdown()
    c = manifest["counts"]
    video_s = c["video_hours"] * 3600
    for name, wall in walls.items():
        print(json.dumps({"stage": name, "alone_wall_s": round(wall, 3)}))
    print(json.dumps({
        "bench": "curate", "inputs": c["inputs"], "videos_ok": c["videos_ok"], "clips": c["clips"], "kept": c["kept"],
        "dropped_by_reason": c["dropped_by_reason"], "video_s": round(video_s, 2),
        "full_wall_s": round(full, 3), "clips_per_s": round(c["clips"] / full, 3),
        "video_s_per_wall_s": round(video_s / full, 3), "stages_alone_sum_s": round(sum(walls.values()), 3),
        "full_over_sum_alone": round(full / sum(walls.values()), 3), "target_ratio": 1.3,
        "manifest_stage_wall_s": manifest["stage_wall_s"], "measure_task_s": manifest["stages"]["measures"]["task_s"],
        "ray_cpus": cfg.ray.num_cpus, "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "materialize": cfg.curate.materialize.enabled,
    }))
    profile = {"stages_alone": shares(walls), "full_wall_s": round(full, 3),
               "manifest_stage_wall_s": manifest["stage_wall_s"], "clips": c["clips"], "inputs": c["inputs"]}
    emit(result("curate", {"full_over_sum_alone": ratio(full / sum(walls.values()), 1.3, "lower")}, profile,
                copies=args.copies), args.result_json)


if __name__ == "__main__":
    main()
