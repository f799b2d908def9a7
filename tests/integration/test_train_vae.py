"""`reelforge train-vae`: frames of the kept clips of a curate output -> a saved VideoVAE, trained by
ONE Ray Train worker (so on a cluster it runs on a worker node), written to a local path or s3://.
(Its errors without Ray: tests/training/test_vae_train.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infra import storage
from infra.schema import CLIPS_SCHEMA, table_from_rows
from infra.videogen import Scene, write_video
from training.models.vae import VideoVAE, load_vae

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
SETS = ["train.vae.steps=4", "train.vae.height=32", "train.vae.width=32", "train.vae.num_frames=5",
        "train.vae.log_every=100"]


def _clip(uri, video_id, start, end, fps=24.0, keep=True):
    return {"clip_id": f"{video_id}-{start:07d}", "video_id": video_id, "uri": uri, "start_frame": start,
            "end_frame": end, "start_s": start / fps, "end_s": end / fps, "num_frames": end - start, "fps": fps,
            "width": 128, "height": 96, "split_method": "content", "keep": keep}


def _curate_output(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    video = root / "v.mp4"
    write_video(video, [Scene(24), Scene(24, kind="static")], fps=24, width=128, height=96, seed=3)
    rows = [_clip(str(video), "v", 0, 24), _clip(str(video), "v", 24, 48),
            _clip(str(video), "v", 0, 48, keep=False),  # dropped by curate: not trained on
            _clip(str(root / "gone.mp4"), "w", 0, 24)]  # its file is missing: reported, skipped
    storage.write_table(table_from_rows(rows, CLIPS_SCHEMA), str(root / "clips" / "part-00000.parquet"))
    return root


def test_train_vae_cli_trains_in_a_ray_train_worker_and_saves_to_s3(tmp_path, s3_bucket, cli_env):
    clips, out = _curate_output(tmp_path / "cur"), f"{s3_bucket}/vae-train"
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "--quiet", "train-vae", "--clips", str(clips), "--output", out,
         "--config", "configs/tiny.yaml", *[a for s in SETS for a in ("--set", s)]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=cli_env)
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-3000:]
    assert "final loss" in stdout and "vae" in stdout
    assert "train-vae  step" not in stderr and "samples/s" not in stderr, stderr[-3000:]  # --quiet: no progress line
    summary = json.loads(storage.read_text(f"{out}/summary.json"))
    assert summary["clips"] == 2 and summary["failed_clips"] == 1 and summary["steps"] == 4
    assert "gone.mp4" in summary["errors"][0]
    assert summary["pid"] != proc.pid  # trained in the Ray Train worker, not in the CLI's process
    vae = load_vae(f"{out}/vae")  # precompute.vae / sample --vae take the s3:// directory as it is
    assert isinstance(vae, VideoVAE) and vae.scaling_factor == summary["scaling_factor"] > 0
    assert storage.exists(f"{out}/config.yaml")
