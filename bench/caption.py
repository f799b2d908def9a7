"""Captioning throughput (output tokens/s): CaptionStage driven in batches vs a plain generate loop.

Both modes caption the same clips (frames sampled once, untimed) with the same model and batch
size; one JSON line per mode, then a summary line. Run:
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/caption.py [--model DIR_OR_NAME]
Without --model it builds the tiny random GIT captioner (placeholder captions). A `ray` mode
(the stage on ray.data actors) plugs in beside run_plain_loop/run_stage.
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

FPS = 24


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
    out = prep(batch)
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

    def once() -> int:
        tokens = 0
        for s in range(0, len(frames), args.batch_size):
            _, counts = captioner.generate(frames[s : s + args.batch_size], args.prompt,
                                           max_new_tokens=args.max_new_tokens, seed=args.seed)
            tokens += sum(counts)
        return tokens

    seconds, tokens = _timed(once, args.repeats)
    return {"mode": "plain", "seconds": seconds, "output_tokens": tokens}


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


MODES = {"plain": run_plain_loop, "stage": run_stage}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="hub name or local dir (default: tiny random)")
    p.add_argument("--clips", type=int, default=32)
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
    args = p.parse_args(argv)
    args.device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or build_tiny_captioner(work / "tiny_captioner", seed=args.seed,
                                                   num_frames=args.num_frames)
        batch = make_clip_batch(work, args.clips, args.num_frames, args.frame_size)
        common = {"bench": "caption", "model": args.model or "tiny-random-git",
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
        if {"plain", "stage"} <= results.keys():
            ratio = results["stage"]["tokens_per_s"] / results["plain"]["tokens_per_s"]
            print(json.dumps({**common, "mode": "summary", "stage_over_plain": ratio}), flush=True)


if __name__ == "__main__":
    main()
