"""`reelforge train-vae`: frames of the kept clips of a curate output -> a saved VideoVAE."""

import json
import subprocess
import sys
from pathlib import Path

from infra import storage
from infra.videogen import Scene, write_video
from infra.schema import CLIPS_SCHEMA, table_from_rows
from training.models.vae import VideoVAE, load_vae

ROOT = Path(__file__).resolve().parents[2]


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


def test_train_vae_cli_saves_a_loadable_vae_from_kept_clips(tmp_path, cli_env):
    clips = _curate_output(tmp_path / "cur")
    res = subprocess.run(
        [sys.executable, "-m", "infra.cli", "train-vae", "--clips", str(clips), "--output", str(tmp_path / "out"),
         "--config", "configs/tiny.yaml", "--set", "train.vae.steps=4", "--set", "train.vae.height=32",
         "--set", "train.vae.width=32", "--set", "train.vae.num_frames=5", "--set", "train.vae.log_every=100"],
        capture_output=True, text=True, cwd=ROOT, env=cli_env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "final loss" in res.stdout and "vae" in res.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["clips"] == 2 and summary["failed_clips"] == 1 and summary["steps"] == 4
    assert "gone.mp4" in summary["errors"][0]
    vae = load_vae(str(tmp_path / "out" / "vae"))
    assert isinstance(vae, VideoVAE) and vae.scaling_factor == summary["scaling_factor"] > 0
    assert (tmp_path / "out" / "config.yaml").exists()


def test_train_vae_refuses_an_output_without_decodable_clips(tmp_path, cli_env):
    rows = [_clip(str(tmp_path / "missing.mp4"), "m", 0, 24)]
    storage.write_table(table_from_rows(rows, CLIPS_SCHEMA), str(tmp_path / "clips" / "part-00000.parquet"))
    res = subprocess.run([sys.executable, "-m", "infra.cli", "train-vae", "--clips", str(tmp_path),
                          "--set", "train.vae.steps=1"], capture_output=True, text=True, cwd=ROOT, env=cli_env)
    assert res.returncode == 2 and "no kept clip" in res.stderr


def test_train_cli_names_a_missing_latents_table(tmp_path, cli_env):
    res = subprocess.run([sys.executable, "-m", "infra.cli", "train", "--latents", str(tmp_path / "nope"),
                          "--output", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, env=cli_env)
    assert res.returncode == 2 and "no Parquet files" in res.stderr
