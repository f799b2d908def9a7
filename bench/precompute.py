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

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra import storage  # noqa: E402
from infra.config import load_config  # noqa: E402
from infra.videogen import Scene, write_video  # noqa: E402
from pipelines import precompute  # noqa: E402
from pipelines.runner import run_curate  # noqa: E402
from pipelines.runner_precompute import plan_clips, run_precompute  # noqa: E402
from spans import Arrivals, Spans, emit, marginal, ratio, result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_captioned(work: Path, n_videos: int, repeat: int) -> Path:
    """A curated and captioned clips table (`captioned`), its clips repeated `repeat` times under
    new clip ids (more clips of the same videos: real decoding and encoding per clip, without
    curating more videos), and the same with a third of the repeats (`captioned_small`)."""
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(n_videos):
        write_video(src / f"v{i}.mp4", [Scene(40 + i), Scene(36, direction="left"), Scene(30, kind="static")],
                    fps=24, width=160, height=96, seed=i)
    run_curate(load_config(ROOT / "configs/tiny.yaml"), str(src), str(work / "curated"))
    clips = storage.read_table(str(work / "curated" / "clips"))
    clips = clips.append_column("caption", pa.array([f"shapes clip {i}" for i in range(clips.num_rows)]))
    for name, reps in (("captioned", repeat), ("captioned_small", max(1, repeat // 3))):
        copies = [clips.set_column(clips.schema.get_field_index("clip_id"), "clip_id",
                                   pa.array([f"{c}r{k}" for c in clips["clip_id"].to_pylist()]))
                  for k in range(reps)]
        storage.write_table(pa.concat_tables(copies), str(work / name / "clips" / "part-00000.parquet"))
    return work / "captioned"


def plain_loop(cfg, captioned: Path) -> dict:
    rows, _, _ = plan_clips(cfg, str(captioned))
    prep = precompute.PixelPrepStage()
    enc = precompute.EncodeStage(cfg.precompute)
    spans = Spans()
    with spans.span("startup (models)"):
        enc.setup()
    t0 = time.perf_counter()
    done, nbytes, bs = 0, 0, cfg.precompute.batch_size
    for i in range(0, len(rows), bs):
        chunk = rows[i : i + bs]
        batch = {k: np.array([r[k] for r in chunk], dtype=object) for k in chunk[0]}
        with spans.span("decode"):
            pixels = prep(batch)
        with spans.span("encode (model + rows)"):
            out = enc(pixels)
        done += len(chunk)
        nbytes += sum(len(b) for b in out["latent"]) + sum(len(b) for b in out["text_emb"])
    wall = time.perf_counter() - t0
    return {"mode": "plain_loop", "clips": done, "wall_s": round(wall, 3), "clips_per_s": round(done / wall, 3),
            "s_per_clip": wall / done, "bytes_per_clip": round(nbytes / done, 1),
            "profile": spans.profile()}


def ray_job(captioned: Path, out: Path, workers: int) -> dict:
    cfg = load_config(ROOT / "configs/tiny.yaml", [f"precompute.concurrency={workers}",
                                                    f"precompute.prep_concurrency={workers}",
                                                    "precompute.encode_cpus=0.5", "precompute.prep_cpus=0.5"])
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    stamps = Arrivals()
    m = run_precompute(cfg, str(captioned), str(out), progress=stamps)
    wall = time.perf_counter() - t0
    n = m["counts"]["encoded"]
    prep_s = sum(json.loads(p.read_text())["counts"]["prep_s"] for p in (out / "_markers").glob("*.json"))
    return {"mode": f"ray_{workers}_worker", "clips": n, "wall_s": round(wall, 3), "clips_per_s": round(n / wall, 3),
            "bytes_per_clip": m["bytes"]["per_clip"], "first_row_s": stamps.profile(warm=1)["startup_s"],
            "decode_task_s_per_clip": round(prep_s / max(n, 1), 5)}


def ray_marginal(captioned: Path, work: Path, workers: int) -> dict:
    """The job on the first third of the clips and on all of them: steady state from the difference."""
    small = ray_job(captioned.parent / "captioned_small", work / f"lat{workers}s", workers)
    big = ray_job(captioned, work / f"lat{workers}", workers)
    return {**big, "small_clips": small["clips"], "small_wall_s": small["wall_s"],
            **marginal(small["wall_s"], small["clips"], big["wall_s"], big["clips"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=12, help="copies of each clip (steady state needs many)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--quick", action="store_true", help="small sizes (4 videos, 6 copies)")
    ap.add_argument("--result-json", default=None, help="also write the result record here")
    args = ap.parse_args()
    if args.quick:
        args.videos, args.repeat = 4, 6
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from infra.runtime import ray_session

    work = Path(args.workdir or tempfile.mkdtemp(prefix="rf-bench-pre-"))
    cfg = load_config(ROOT / "configs/tiny.yaml", ["ray.num_cpus=2"])
    with ray_session(cfg):
        captioned = make_captioned(work, args.videos, args.repeat)
        ray_job(captioned.parent / "captioned_small", work / "warm", 1)  # starts Ray's worker pool
        results = [plain_loop(cfg, captioned), ray_marginal(captioned, work, 1), ray_marginal(captioned, work, 2)]
    for r in results:
        print(json.dumps(r))
    base = results[0]["wall_s"]
    print(json.dumps({"summary": True, "ray1_vs_loop_wall": round(results[1]["wall_s"] / base, 3),
                      "ray2_vs_loop_wall": round(results[2]["wall_s"] / base, 3),
                      "bytes_per_clip": results[1]["bytes_per_clip"], "target": "ray1 <= 1.1x loop, ray2 < loop"}))
    emit(record(results), args.result_json)


def record(results: list[dict]) -> dict:
    """Steady-state seconds per clip of each Ray run over the plain loop's (decode + encode, models
    loaded); start-up (workers, models, first batch) apart. `waiting` per clip is what a Ray run
    pays at steady state beyond the plain loop's work (serialising pixels, scheduling, idle)."""
    plain = results[0]
    per_clip = plain["s_per_clip"]
    ratios, runs = {}, {}
    for r in results[1:]:
        steady = r["steady_s_per_row"]
        ratios[f"{r['mode']}_steady_vs_plain"] = ratio(steady / per_clip, 1.1, "lower")
        runs[r["mode"]] = {"startup_s": r["startup_s"], "steady_s_per_clip": round(steady, 5),
                           "first_row_s": round(r["first_row_s"], 3), "wall_s": r["wall_s"],
                           "small_wall_s": r["small_wall_s"], "clips": [r["small_clips"], r["clips"]],
                           "decode_task_s_per_clip": r["decode_task_s_per_clip"],
                           "waiting_s_per_clip": round(max(0.0, steady - per_clip), 5)}
    profile = {"plain_per_clip_s": round(per_clip, 5), "plain": plain["profile"], "ray": runs,
               "wall_ratios_incl_startup": {m: round(r["wall_s"] / plain["wall_s"], 3) for m, r in
                                            zip(runs, results[1:])}}
    return result("precompute", ratios, profile, clips=plain["clips"])


if __name__ == "__main__":
    main()
