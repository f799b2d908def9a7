"""Captioning throughput (output tokens/s): CaptionStage driven in batches vs a plain generate loop.

Both modes caption the same clips (frames sampled once, untimed) with the same model and batch
size; one JSON line per mode, then a summary line. Run:
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/caption.py [--model DIR_OR_NAME]
Without --model it builds the tiny random GIT captioner (placeholder captions); `--captioner
costly` builds a bigger random GIT instead (COSTLY below: generation costs hundreds of ms a clip
on one thread, like a real captioner's order of cost, so decoding is no longer the bigger part).
`--mode ray` runs the `reelforge caption` job (captioning/runner.py: frame-prep tasks feeding
CaptionStage actors on a local Ray) over the same clips written as a clips table, and the plain
loop beside it; the Ray number includes frame decoding and actor start-up, the plain one not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from captioning.captioner import CaptionStage  # noqa: E402
from captioning.frames import FramePrepStage  # noqa: E402
from captioning.models import build_tiny_captioner, load_captioner, resolve_device  # noqa: E402
from captioning.prompts import DEFAULT_PROMPT  # noqa: E402
from infra.videogen import Scene, write_video  # noqa: E402
from spans import Arrivals, Spans, emit, marginal, ratio, result  # noqa: E402

FPS = 24
# build_tiny_captioner sizes per --captioner: "tiny" is the job's placeholder default
CAPTIONERS = {"tiny": {}, "costly": {"hidden_size": 512, "num_layers": 4, "vision_layers": 4, "image_size": 112}}


def make_clip_batch(work_dir: Path, num_clips: int, num_frames: int, frame_size: int) -> dict:
    """A clips-table batch (2 s clips from generated videos) with its `frames` column."""
    uris, starts = [], []
    for v in range((num_clips + 3) // 4):
        path = work_dir / f"video{v}.mp4"
        kinds = ["moving", "static", "noise", "fade_out"]
        write_video(path, [Scene(48, kind=k) for k in kinds], fps=FPS, width=256, height=192,
                    seed=v)
        uris += [str(path)] * 4
        starts += [0, 48, 96, 144]
    uris, starts = uris[:num_clips], np.array(starts[:num_clips])
    batch = {
        "clip_id": np.array([f"c{i:04d}" for i in range(num_clips)], dtype=object),
        "uri": np.array(uris, dtype=object),
        "start_frame": starts, "end_frame": starts + 48,
        "start_s": starts / FPS, "end_s": (starts + 48) / FPS, "fps": np.full(num_clips, FPS),
    }
    prep = FramePrepStage(num_frames=num_frames, frame_size=frame_size)
    prep.setup()
    t0 = time.perf_counter()
    out = prep(batch)
    out["_decode_s"] = time.perf_counter() - t0  # frame decoding + resizing of every clip
    failed = [e for e in out["error"] if e]
    if failed:
        raise RuntimeError(f"frame sampling failed: {failed[:3]}")
    return out


def _timed(fn, repeats: int) -> tuple[float, int]:
    """Median seconds over `repeats` runs (after one warm-up) and the tokens of one run."""
    fn()
    times, tokens = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        tokens = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), tokens


def run_plain_loop(model: str, batch: dict, args) -> dict:
    """The baseline: load the model once and call `generate` batch by batch."""
    captioner = load_captioner(model, dtype=args.dtype, device=args.device)
    frames = list(batch["frames"])
    spans = Spans()

    def once() -> int:
        tokens = 0
        for s in range(0, len(frames), args.batch_size):
            with spans.span("generate"):
                _, counts = captioner.generate(frames[s : s + args.batch_size], args.prompt,
                                               max_new_tokens=args.max_new_tokens, seed=args.seed)
            tokens += sum(counts)
        return tokens

    seconds, tokens = _timed(once, args.repeats)
    runs = args.repeats + 1
    return {"mode": "plain", "seconds": seconds, "output_tokens": tokens,
            "generate_s_per_clip": spans.seconds["generate"] / runs / len(frames)}


def run_stage(model: str, batch: dict, args) -> dict:
    """CaptionStage (prompt rendering, clean-up, error columns) fed `stage_batch` rows per call."""
    stage = CaptionStage(model, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                         seed=args.seed)
    stage.setup()
    n = len(batch["clip_id"])

    def once() -> int:
        tokens = 0
        for s in range(0, n, args.stage_batch):
            out = stage({k: v[s : s + args.stage_batch] for k, v in batch.items()})
            if any(e for e in out["error"]):
                raise RuntimeError(f"caption errors: {[e for e in out['error'] if e][:3]}")
            tokens += int(out["caption_tokens"].sum())
        return tokens

    seconds, tokens = _timed(once, args.repeats)
    return {"mode": "stage", "seconds": seconds, "output_tokens": tokens}


def _write_clips_table(root: Path, batch: dict, part_size: int) -> None:
    """The bench clips as a curate-style clips table, `part_size` rows per part file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = ["clip_id", "uri", "start_frame", "end_frame", "start_s", "end_s", "fps"]
    table = pa.table({c: batch[c].tolist() for c in cols})
    (root / "clips").mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(range(0, table.num_rows, part_size)):
        pq.write_table(table.slice(s, part_size), root / "clips" / f"part-{i:05d}-bench.parquet")


def run_ray(model: str, batch: dict, args) -> dict:
    """The `reelforge caption` job (prep tasks -> CaptionStage actors on a local Ray) over the same
    clips written as a clips table, at two sizes: all clips and the first third. Each timed from
    submitting the dataset to the last partition committed (frame decoding, actor start-up and
    model loading in; Ray start-up not). Steady state is the marginal cost: (big - small) walls
    over the extra clips; start-up is the small run's wall less its clips at that rate."""
    from captioning.runner import run_caption
    from infra.config import CaptionConfig, RayConfig, ReelForgeConfig
    from infra.runtime import init_ray

    work, n_big = Path(args.work), len(batch["clip_id"])
    n_small = max(args.batch_size, n_big // 3)
    _write_clips_table(work / "ray_big", batch, args.part_size)
    _write_clips_table(work / "ray_small", {k: v[:n_small] for k, v in batch.items()}, args.part_size)
    cfg = ReelForgeConfig(
        caption=CaptionConfig(model=model, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                              num_frames=args.num_frames, frame_size=args.frame_size,
                              batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                              num_gpus=1.0 if args.device == "cuda" else 0.0, seed=args.seed,
                              concurrency=args.ray_actors, allow_random_weights=args.model is None,
                              prep_cpus=args.prep_cpus),
        ray=RayConfig(num_cpus=args.ray_cpus))
    started_ray = init_ray(cfg)
    walls: dict[str, list] = {"small": [], "big": []}
    firsts, last = [], None
    try:
        for i in range(args.repeats + 1):  # the first (small) run warms the worker pool and file cache
            for size in ("small", "big") if i else ("small",):
                stamps = Arrivals()
                m = run_caption(cfg, str(work / f"ray_{size}"), str(work / f"ray_out{i}{size}"), progress=stamps)
                if m["counts"]["failed"]:
                    raise RuntimeError(f"caption job failures: {m['counts']['failed_by_type']}")
                if i:
                    walls[size].append(m["stage_wall_s"]["prep+caption (streamed)"])
                    firsts.append(stamps.profile(warm=1)["startup_s"])
                    last = m if size == "big" else last
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    small, big = statistics.median(walls["small"]), statistics.median(walls["big"])
    steady = marginal(small, n_small, big, n_big)
    return {"mode": "ray", "seconds": big, "output_tokens": last["counts"]["output_tokens"],
            "small_clips": n_small, "small_seconds": small, **steady,
            "first_row_s": statistics.median(firsts), "job_wall_s": last["wall_s"],
            "partitions": last["resume"]["partitions"], "ray_cpus": args.ray_cpus,
            "actors": args.ray_actors}


MODES = {"plain": run_plain_loop, "stage": run_stage, "ray": run_ray}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="hub name or local dir (default: tiny random)")
    p.add_argument("--clips", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=8, help="clips per generate call")
    p.add_argument("--stage-batch", type=int, default=16, help="rows per CaptionStage call")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--num-frames", type=int, default=6)
    p.add_argument("--frame-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--modes", default="plain,stage", help=f"comma list of {sorted(MODES)}")
    p.add_argument("--mode", dest="modes", help="one mode (same as --modes MODE); e.g. --mode ray "
                   "runs the plain loop too and compares")
    p.add_argument("--part-size", type=int, default=8, help="ray: clips per input part file")
    p.add_argument("--ray-cpus", type=int, default=None, help="ray: CPUs of the local Ray (default: all)")
    p.add_argument("--ray-actors", type=int, default=1, help="ray: caption actors (caption.concurrency)")
    p.add_argument("--prep-cpus", type=float, default=1.0, help="ray: caption.prep_cpus (CPUs a prep task "
                   "reserves; 0.5 lets decoding use what generation leaves of the actor's core)")
    p.add_argument("--captioner", choices=sorted(CAPTIONERS), default="tiny",
                   help="the random GIT built without --model: tiny, or costly (realistic generate cost)")
    p.add_argument("--quick", action="store_true", help="small sizes: 96 clips, 1 timed repeat")
    p.add_argument("--result-json", default=None, help="also write the result record here")
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.repeats = 96, 1
    if args.modes == "ray":
        args.modes = "plain,ray"  # the Ray job is reported against the plain loop
    args.device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work = Path(tmp)
        model = args.model or build_tiny_captioner(work / "tiny_captioner", seed=args.seed,
                                                   num_frames=args.num_frames, **CAPTIONERS[args.captioner])
        batch = make_clip_batch(work, args.clips, args.num_frames, args.frame_size)
        decode_s = batch.pop("_decode_s")
        common = {"bench": "caption", "model": args.model or f"{args.captioner}-random-git",
                  "clips": args.clips, "batch_size": args.batch_size,
                  "max_new_tokens": args.max_new_tokens, "num_frames": args.num_frames,
                  "frame_size": args.frame_size, "device": args.device,
                  "torch_threads": torch.get_num_threads(), "host": platform.node(),
                  "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
        results = {}
        for mode in args.modes.split(","):
            r = MODES[mode](model, batch, args)
            r["tokens_per_s"] = r["output_tokens"] / r["seconds"]
            r["clips_per_s"] = args.clips / r["seconds"]
            results[mode] = r
            print(json.dumps({**common, **r}), flush=True)
        summary = {f"{m}_over_plain": results[m]["tokens_per_s"] / results["plain"]["tokens_per_s"]
                   for m in ("stage", "ray") if "plain" in results and m in results}
        if summary:
            print(json.dumps({**common, "mode": "summary", **summary}), flush=True)
        if "ray" in results:
            emit(ray_record(results, decode_s / args.clips, args), args.result_json)


def ray_record(results: dict, decode_per_clip: float, args) -> dict:
    """Steady-state clips/s of the Ray job over the plain loop's, and where the job's time goes.

    The plain loop only generates (frames decoded beforehand); the job decodes too, in prep tasks
    that overlap generation when a second core is free. Per clip: decode (measured on the frames
    made for the bench), generate (the plain loop's), the job's steady time; `waiting` is what the
    job pays beyond its slower part (serialisation, scheduling, cores shared by both parts)."""
    plain, ray = results["plain"], results["ray"]
    gen = plain["generate_s_per_clip"]
    steady = ray["steady_s_per_row"]
    profile = {"per_clip_s": {"decode": round(decode_per_clip, 5), "generate": round(gen, 5),
                              "ray_steady": round(steady, 5),
                              "waiting": round(max(0.0, steady - max(gen, decode_per_clip)), 5)},
               "startup_s": ray["startup_s"], "first_row_s": round(ray["first_row_s"], 3),
               "walls_s": {f"{ray['small_clips']}_clips": round(ray["small_seconds"], 3),
                           f"{args.clips}_clips": round(ray["seconds"], 3)},
               "job_wall_s": round(ray["job_wall_s"], 3)}
    serial = gen + decode_per_clip
    note = (f"steady {steady * 1e3:.1f} ms/clip vs generate {gen * 1e3:.1f} + decode "
            f"{decode_per_clip * 1e3:.1f} ms/clip (serial {serial * 1e3:.1f})")
    # with start-up, for the record (no target: start-up amortises over a cluster-scale run)
    profile["job_throughput_vs_plain_incl_startup"] = round(ray["tokens_per_s"] / plain["tokens_per_s"], 3)
    return result("caption", {"steady_throughput_vs_plain": ratio(gen / steady, 0.9, "higher")},
                  profile, note, clips=args.clips, batch_size=args.batch_size, actors=args.ray_actors,
                  prep_cpus=args.prep_cpus, captioner=args.model or args.captioner)


if __name__ == "__main__":
    main()
