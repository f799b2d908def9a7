"""train-vae's errors without Ray (the job itself: tests/integration/test_train_vae.py), and the
train CLI naming a missing latents table before any Ray starts."""

import subprocess
import sys
from pathlib import Path

import pytest

from infra import storage
from infra.config import load_config
from infra.schema import CLIPS_SCHEMA, table_from_rows
from training.vae_train import _worker_error, train_vae_job

ROOT = Path(__file__).resolve().parents[2]


def test_train_vae_refuses_an_output_without_decodable_clips(tmp_path):
    row = {"clip_id": "m-0000000", "video_id": "m", "uri": str(tmp_path / "missing.mp4"), "start_frame": 0,
           "end_frame": 24, "start_s": 0.0, "end_s": 1.0, "num_frames": 24, "fps": 24.0, "width": 128, "height": 96,
           "split_method": "content", "keep": True}
    storage.write_table(table_from_rows([row], CLIPS_SCHEMA), str(tmp_path / "clips" / "part-00000.parquet"))
    with pytest.raises(ValueError, match="no kept clip"):
        train_vae_job(load_config(None, ["train.vae.steps=1"]), str(tmp_path), str(tmp_path / "out"))


def test_a_failed_worker_surfaces_as_the_error_it_raised():
    """Ray Train reports a worker's exception inside its own error types; the CLI prints the cause."""
    class TaskError(Exception):
        def __init__(self, cause):
            super().__init__("ray task failed")
            self.cause = cause

    class WorkerGroupError(Exception):
        worker_failures = {0: TaskError(ValueError("no kept clip under X could be decoded"))}

    assert str(_worker_error(WorkerGroupError())) == "no kept clip under X could be decoded"
    assert _worker_error(RuntimeError("no workers")) is None


def test_train_cli_names_a_missing_latents_table(tmp_path, cli_env):
    res = subprocess.run([sys.executable, "-m", "infra.cli", "train", "--latents", str(tmp_path / "nope"),
                          "--output", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, env=cli_env)
    assert res.returncode == 2 and "no Parquet files" in res.stderr


def test_train_vae_images_false_trains_on_the_video_clips_only(tmp_path):
    """A still is read as one frame repeated (a clip where nothing moves): train.vae.images=false leaves it out."""
    from infra.videogen import Scene, write_image, write_video
    from training.vae_train import clip_videos

    write_video(tmp_path / "v.mp4", [Scene(12)], fps=8, width=32, height=32)
    write_image(tmp_path / "s.png", Scene(1, kind="static"), width=32, height=32)
    base = {"start_frame": 0, "split_method": "content", "keep": True, "width": 32, "height": 32}
    rows = [{**base, "clip_id": "v-0000000", "video_id": "v", "uri": str(tmp_path / "v.mp4"), "end_frame": 12,
             "start_s": 0.0, "end_s": 1.5, "num_frames": 12, "fps": 8.0, "media_type": "video"},
            {**base, "clip_id": "s-0000000", "video_id": "s", "uri": str(tmp_path / "s.png"), "end_frame": 1,
             "num_frames": 1, "media_type": "image"}]
    storage.write_table(table_from_rows(rows, CLIPS_SCHEMA), str(tmp_path / "clips" / "part-00000.parquet"))
    sets = ["train.vae.num_frames=9", "train.vae.height=32", "train.vae.width=32"]
    both, _ = clip_videos(str(tmp_path), load_config(None, sets).train.vae)
    videos, _ = clip_videos(str(tmp_path), load_config(None, sets + ["train.vae.images=false"]).train.vae)
    assert len(both) == 2 and len(videos) == 1
    assert videos[0].shape == (3, 9, 32, 32) and (videos[0][:, 1:] != videos[0][:, :1]).any()  # the moving one
