"""Load: curate over N small generated videos on local Ray (2 CPUs); peak RSS of the driver and all
Ray processes, and file descriptors / temp files before and after (a leak check). Prints JSON.
Usage: python bench/load.py [--videos 1000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.config import load_config  # noqa: E402
from infra.videogen import Scene, write_video  # noqa: E402
from pipelines.runner import run_curate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _tree_rss() -> int:
    me = psutil.Process()
    total = me.memory_info().rss
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.pid != me.pid and ("ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd or "ray/" in cmd):
                total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _tmp_count() -> int:
    return len(os.listdir(tempfile.gettempdir()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rf-load-"))
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(args.videos):
        write_video(src / f"v{i:05d}.mp4", [Scene(12 + i % 7), Scene(12, kind="static")], fps=12, width=64,
                    height=48, seed=i, draw_frame_number=False)
    gen_s = time.perf_counter() - t0
    fds_before, tmp_before = psutil.Process().num_fds(), _tmp_count()
    peak = {"rss": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _tree_rss())
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    t1 = time.perf_counter()
    m = run_curate(load_config(ROOT / "configs/tiny.yaml", ["curate.partition_size=50"]), str(src), str(work / "out"))
    wall = time.perf_counter() - t1
    stop.set()
    time.sleep(1)
    print(json.dumps({
        "videos": args.videos, "generate_s": round(gen_s, 1), "curate_wall_s": round(wall, 1),
        "videos_per_s": round(args.videos / wall, 2), "clips": m["counts"]["clips"],
        "ok": m["counts"]["videos_ok"], "failed": m["counts"]["failed"],
        "peak_rss_mib_driver_plus_ray": round(peak["rss"] / 2**20),
        "fds_before": fds_before, "fds_after": psutil.Process().num_fds(),
        "tmp_entries_before": tmp_before, "tmp_entries_after": _tmp_count(),
    }))


if __name__ == "__main__":
    main()
