"""The offline demo: make sample videos with known cuts (and one broken file), then curate them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from infra.config import ReelForgeConfig

# (name, scenes as (frames, kind, colour, background)) -- several scenes each, hard cuts between them
_DEMO_VIDEOS = [
    ("shapes-a.mp4", [(48, "moving", (230, 40, 40), (20, 30, 120)), (40, "moving", (40, 220, 60), (200, 200, 200)),
                      (56, "static", (240, 240, 40), (60, 20, 20))]),
    ("shapes-b.mp4", [(60, "moving", (40, 80, 230), (230, 230, 230)), (48, "text", (255, 255, 255), (10, 10, 10))]),
    ("shapes-c.mp4", [(36, "moving", (230, 140, 20), (20, 100, 40)), (36, "black", (0, 0, 0), (0, 0, 0)),
                      (48, "moving", (200, 40, 200), (240, 240, 200))]),
]


def make_demo_videos(directory: str, seed: int = 0) -> dict[str, dict]:
    """Write the demo videos plus one corrupt file; returns the ground truth per file."""
    from infra.videogen import Scene, write_video

    os.makedirs(directory, exist_ok=True)
    truth = {}
    for i, (name, scenes) in enumerate(_DEMO_VIDEOS):
        spec = [Scene(num_frames=n, kind=kind, color=color, bg=bg) for n, kind, color, bg in scenes]
        truth[name] = write_video(os.path.join(directory, name), spec, fps=24, width=160, height=96, seed=seed + i)
    with open(os.path.join(directory, "broken.mp4"), "wb") as f:
        f.write(b"this is not a video, the job must record it as a failure and go on\n")
    truth["broken.mp4"] = {"expect": "failure"}
    with open(os.path.join(directory, "truth.json"), "w") as f:
        json.dump(truth, f, indent=2, default=str)
    return truth


def run_demo(cfg: ReelForgeConfig, output: str, progress: Callable | None = None) -> tuple[dict, str]:
    from pipelines.runner import run_curate

    videos_dir = os.path.join(output, "sample-videos")
    make_demo_videos(videos_dir, seed=cfg.train.seed)
    manifest = run_curate(cfg, videos_dir, os.path.join(output, "curate"), progress=progress)
    return manifest, videos_dir
