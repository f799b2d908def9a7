"""Precompute throughput: the Ray job (1 and 2 encoder workers) vs a plain single-process loop.

Same clips, same tiny VAE and text encoder, same batch size. Ray start-up is paid before timing.
Prints one JSON line per mode, then a summary line with the ratios and bytes per clip.
Usage: python bench/precompute.py [--videos 6] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra import storage  # noqa: E402
from infra.config import load_config  # noqa: E402
from infra.videogen import Scene, write_video  # noqa: E402
from pipelines import precompute  # noqa: E402
from pipelines.runner import run_curate  # noqa: E402
from pipelines.runner_precompute import plan_clips, run_precompute  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_captioned(work: Path, n_videos: int) -> Path:
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(n_videos):
        write_video(src / f"v{i}.mp4", [Scene(40 + i), Scene(36, direction="left"), Scene(30, kind="static")],
                    fps=24, width=160, height=96, seed=i)
    run_curate(load_config(ROOT / "configs/tiny.yaml"), str(src), str(work / "curated"))
    clips = storage.read_table(str(work / "curated" / "clips"))
    clips = clips.append_column("caption", pa.array([f"shapes clip {i}" for i in range(clips.num_rows)]))
    storage.write_table(clips, str(work / "captioned" / "clips" / "part-00000.parquet"))
    return work / "captioned"


def plain_loop(cfg, captioned: Path) -> dict:
    rows, _, _ = plan_clips(cfg, str(captioned))
    prep = precompute.PixelPrepStage()
    enc = precompute.EncodeStage(cfg.precompute)
    enc.setup()
    t0 = time.perf_counter()
    done, nbytes, bs = 0, 0, cfg.precompute.batch_size
    for i in range(0, len(rows), bs):
        chunk = rows[i : i + bs]
        batch = {k: [r[k] for r in chunk] for k in chunk[0]}
        import numpy as np

        batch = {k: np.array(v, dtype=object) for k, v in batch.items()}
        out = enc(prep(batch))
        done += len(chunk)
        nbytes += sum(len(b) for b in out["latent"]) + sum(len(b) for b in out["text_emb"])
    wall = time.perf_counter() - t0
    return {"mode": "plain_loop", "clips": done, "wall_s": round(wall, 3), "clips_per_s": round(done / wall, 3),
            "bytes_per_clip": round(nbytes / done, 1)}


def ray_job(cfg, captioned: Path, out: Path, workers: int) -> dict:
    cfg = load_config(ROOT / "configs/tiny.yaml", [f"precompute.concurrency={workers}",
                                                    f"precompute.prep_concurrency={workers}",
                                                    "precompute.encode_cpus=0.5", "precompute.prep_cpus=0.5"])
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    m = run_precompute(cfg, str(captioned), str(out))
    wall = time.perf_counter() - t0
    n = m["counts"]["encoded"]
    return {"mode": f"ray_{workers}_worker", "clips": n, "wall_s": round(wall, 3), "clips_per_s": round(n / wall, 3),
            "bytes_per_clip": m["bytes"]["per_clip"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from infra.runtime import ray_session

    work = Path(args.workdir or tempfile.mkdtemp(prefix="rf-bench-pre-"))
    cfg = load_config(ROOT / "configs/tiny.yaml", ["ray.num_cpus=2"])
    with ray_session(cfg):
        captioned = make_captioned(work, args.videos)
        results = [plain_loop(cfg, captioned), ray_job(cfg, captioned, work / "lat1", 1),
                   ray_job(cfg, captioned, work / "lat2", 2)]
    for r in results:
        print(json.dumps(r))
    base = results[0]["wall_s"]
    print(json.dumps({"summary": True, "ray1_vs_loop_wall": round(results[1]["wall_s"] / base, 3),
                      "ray2_vs_loop_wall": round(results[2]["wall_s"] / base, 3),
                      "bytes_per_clip": results[1]["bytes_per_clip"], "target": "ray1 <= 1.1x loop, ray2 < loop"}))


if __name__ == "__main__":
    main()
