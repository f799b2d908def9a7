"""`reelforge sample` end to end: a saved checkpoint -> mp4 files a decoder reads back."""

import json
import subprocess
import sys
from pathlib import Path

import av
import torch

from training.models.dit import build_dit

ROOT = Path(__file__).resolve().parents[2]


def test_sample_cli_writes_decodable_mp4(tmp_path):
    torch.manual_seed(0)
    dit = build_dit("VDiT-T/2")
    dit.save_pretrained(tmp_path / "ckpt" / "dit")
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps({"vae": "tiny", "text_encoder": "tiny"}))
    res = subprocess.run(
        [sys.executable, "-m", "infra.cli", "sample", "--checkpoint", str(tmp_path / "ckpt"),
         "--prompt", "a red square moves left", "--prompt", "a blue circle moves up",
         "--output", str(tmp_path / "out"), "--config", "configs/tiny.yaml",
         "--set", "sample.steps=2", "--set", "sample.num_frames=5", "--set", "sample.height=32",
         "--set", "sample.width=48"],
        capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    files = sorted((tmp_path / "out").glob("*.mp4"))
    assert len(files) == 2
    with av.open(str(files[0])) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (48, 32)


def test_sample_refuses_missing_checkpoint(tmp_path):
    res = subprocess.run([sys.executable, "-m", "infra.cli", "sample", "--checkpoint", str(tmp_path / "nope"),
                          "--prompt", "x"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode != 0 and "dit/config.json" in (res.stderr + res.stdout)
