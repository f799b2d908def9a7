"""Learning curves on the synthetic world: per-attribute accuracy against minutes of training.

Captioner (now): train the small GIT of `caption_train` in this process on a world's train split
and, every `--eval-every` steps, caption the held-out eval clips through the caption job's
Captioner and score the colour / direction / shape words. One JSON line per evaluation, then a
summary line. The DiT curve (sampled videos scored by training.evaluate.check_video) joins here
once the trainer lands. Run:
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/learn.py [--steps 1200] [--set world.videos=150]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from captioning.models import Captioner  # noqa: E402
from captioning.runner_train import caption_prompt  # noqa: E402
from captioning.train_captioner import (CaptionLoss, build_dataset_from_frames, build_model,  # noqa: E402
                                        caption_frames, clip_frames, train)
from infra.config import load_config  # noqa: E402
from infra.world import world_clips, write_world  # noqa: E402
from training.evaluate import score_captions  # noqa: E402


def captioner_curve(cfg, world_dir: Path, eval_every: int, threads: int) -> list[dict]:
    """Train in-process, scoring the eval split every `eval_every` steps; returns the points."""
    torch.set_num_threads(threads)
    c, w, prompt = cfg.caption_train, cfg.world, caption_prompt(cfg)
    t0 = time.perf_counter()
    rows, eval_rows = world_clips(world_dir, "train"), world_clips(world_dir, "eval")
    model, processor = build_model(c)
    data = build_dataset_from_frames(clip_frames(rows, cfg.caption.num_frames, cfg.caption.frame_size),
                                     [r["caption"] for r in rows], c, processor, prompt)
    eval_frames = clip_frames(eval_rows, cfg.caption.num_frames, cfg.caption.frame_size)
    truth = [r["attributes"] for r in eval_rows]
    captioner = Captioner("bench", model, processor, "cpu")
    points, paused = [], [0.0]  # scoring time is taken out of the training minutes

    def on_log(m: dict) -> None:
        step = m["step"] + 1
        if step % eval_every and step != c.steps:
            return
        t = time.perf_counter()
        acc = score_captions(caption_frames(captioner, eval_frames, prompt), truth, w.shape_colors, w.directions,
                             w.shapes)
        paused[0] += time.perf_counter() - t
        train_min = (time.perf_counter() - t0 - paused[0]) / 60
        points.append({"bench": "learn", "model": "captioner", "step": step, "train_minutes": round(train_min, 2),
                       "loss": m["loss"], **{k: acc[k] for k in ("color", "direction", "shape")},
                       "eval_clips": acc["n"]})
        print(json.dumps(points[-1]), flush=True)

    # One process steps the global batch that caption_train.num_workers DDP workers would share.
    c = c.model_copy(update={"log_every": 1, "batch_size": c.batch_size * max(1, c.num_workers)})
    train(CaptionLoss(model), data, c, log=on_log)
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value")
    ap.add_argument("--steps", type=int, default=None, help="caption_train.steps (default: the config's)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--world", default=None, help="an existing world dir (default: a fresh one in a temp dir)")
    args = ap.parse_args()
    sets = args.sets + ([f"caption_train.steps={args.steps}"] if args.steps else [])
    cfg = load_config(args.config, sets)
    with tempfile.TemporaryDirectory() as tmp:
        world_dir = Path(args.world or tmp)
        if not (world_dir / "world.json").exists():
            write_world(cfg.world, world_dir)
        t = time.perf_counter()
        points = captioner_curve(cfg, world_dir, args.eval_every, args.threads)
    best = max(points, key=lambda p: (min(p["color"], p["direction"]), p["step"]))
    print(json.dumps({"bench": "learn", "summary": True, "model": "captioner", "steps": cfg.caption_train.steps,
                      "wall_minutes": round((time.perf_counter() - t) / 60, 2), "final": points[-1], "best": best,
                      "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
