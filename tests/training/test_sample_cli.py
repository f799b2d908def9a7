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


def test_sample_cli_reads_the_checkpoint_and_vae_from_s3_and_writes_mp4s_there(tmp_path, s3_bucket, cli_env):
    from infra import storage
    from training.models.vae import load_vae

    torch.manual_seed(0)
    build_dit("VDiT-T/2").save_pretrained(tmp_path / "ckpt" / "dit")
    load_vae("tiny").save_pretrained(tmp_path / "vae")
    vae_uri, ckpt_uri = f"{s3_bucket}/vae-train/vae", f"{s3_bucket}/run/checkpoint_00000004"
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps({"vae": vae_uri, "text_encoder": "tiny"}))
    (tmp_path / "ckpt" / "deepspeed").mkdir()
    (tmp_path / "ckpt" / "deepspeed" / "optim.pt").write_bytes(b"\0" * 1000)  # sampling fetches dit/, ema/, meta.json only
    storage.upload_dir(str(tmp_path / "vae"), vae_uri)
    storage.upload_dir(str(tmp_path / "ckpt"), ckpt_uri)
    res = subprocess.run(
        [sys.executable, "-m", "infra.cli", "sample", "--checkpoint", ckpt_uri, "--prompt", "a red square moves left",
         "--output", f"{s3_bucket}/samples", "--device", "auto", "--config", "configs/tiny.yaml",
         "--set", "sample.steps=2", "--set", "sample.num_frames=5", "--set", "sample.height=32",
         "--set", "sample.width=32"], capture_output=True, text=True, cwd=ROOT, env=cli_env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert storage.list_files(f"{s3_bucket}/samples") == [f"{s3_bucket}/samples/sample-0-000.mp4"]
    (tmp_path / "got.mp4").write_bytes(storage.read_bytes(f"{s3_bucket}/samples/sample-0-000.mp4"))
    with av.open(str(tmp_path / "got.mp4")) as c:
        assert len(list(c.decode(video=0))) == 5


def test_sample_device_choice():
    import pytest

    from training.sample import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    res = subprocess.run([sys.executable, "-m", "infra.cli", "sample", "--checkpoint", "x", "--prompt", "x",
                          "--device", "gpu"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "auto, cpu or cuda" in res.stderr
