"""`training/evaluate_capabilities.py` end to end on a tiny world and an untrained tiny checkpoint:
every score is there, counted over what was sampled, and the example files are written (the real
numbers come from bench/learn.py --model capabilities)."""

from __future__ import annotations

import json

import numpy as np
import torch

from infra.config import load_config
from infra.world import write_world
from training.evaluate_capabilities import new_frames_score, score_capabilities
from training.models.dit import build_dit

SETS = ["world.videos=3", "world.eval_videos=2", "world.images=2", "world.sizes=['32x32']", "world.frames=[10, 12]",
        "world.scenes=[1, 1]", "world.holdout=['red:left']", "world.eval_prompts=2", "sample.steps=2",
        "sample.num_frames=5", "sample.height=32", "sample.width=32", "sample.allow_random_weights=true"]


def test_score_capabilities_on_a_tiny_world(tmp_path):
    cfg = load_config(None, SETS)
    write_world(cfg.world, tmp_path / "world")
    torch.manual_seed(0)
    build_dit("VDiT-T/2", frame_cond=True).save_pretrained(tmp_path / "ckpt" / "dit")
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps({"vae": "tiny", "text_encoder": "tiny"}))
    report = score_capabilities(cfg, str(tmp_path / "ckpt"), str(tmp_path / "world"), tmp_path / "out", extend_clips=2)
    assert set(report) == {"image_to_video", "extension", "extension_seen", "images"}
    assert report["image_to_video"]["accuracy"]["n"] == report["image_to_video"]["prompts"] >= 1
    assert report["extension"]["clips"] == 2 and report["extension_seen"]["clips"] >= 1
    # the checker on the clips' real next frames reads their direction and colour: the score is measurable
    assert report["extension"]["real"] == {"n": 2, "direction": 1.0, "color": 1.0}
    assert 0 <= report["extension"]["vae_round_trip"]["direction"] <= 1
    assert report["extension"]["frames_only"]["n"] == 2
    assert report["images"]["accuracy"]["n"] == report["images"]["prompts"] > 0
    for part in report.values():
        assert all(0 <= v <= 1 for k, v in part["accuracy"].items() if k != "n")
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir())[0] == "000.png"
    assert len(list((tmp_path / "out" / "extension").glob("*.mp4"))) == 2


def _square_track(xs: list[int]) -> np.ndarray:
    """A red 8x8 square on gray at x = xs[t] (32x32 frames)."""
    frames = np.full((len(xs), 32, 32, 3), 128, np.uint8)
    for t, x in enumerate(xs):
        frames[t, 12:20, x:x + 8] = (220, 30, 30)
    return frames


def test_extension_scores_the_new_frames_only():
    """Given frames 0..4 go right, the new ones 5..8 go left: the score reads left (the new latent frame's)."""
    cfg = load_config(None, [])
    video = _square_track([4, 6, 8, 10, 12, 11, 9, 7, 5])
    got = new_frames_score([video], [{"direction": "left", "color": "red"}], 4, cfg.world)
    assert got == {"n": 1, "direction": 1.0, "color": 1.0}
    assert new_frames_score([video], [{"direction": "right", "color": "red"}], 4, cfg.world)["direction"] == 0.0
