"""`reelforge sample`'s capability flags in process (typer's runner): a PNG for one frame, animate an
image, extend forwards and backwards, connect, edit, extended prompts with scores, and the flag rules."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import pytest
import torch
from typer.testing import CliRunner

from infra.cli import app
from infra.videogen import Scene, write_image, write_video
from training.conditioning import animate
from training.models.dit import build_dit
from training.models.text import build_text_encoder
from training.models.vae import load_vae
from training.sample import sample_video

ROOT = Path(__file__).resolve().parents[2]
BASE = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--set", "sample.steps=2", "--set", "sample.num_frames=5",
        "--set", "sample.height=32", "--set", "sample.width=32"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("flags")
    torch.manual_seed(0)
    build_dit("VDiT-T/2", frame_cond=True).save_pretrained(d / "ckpt" / "dit")
    (d / "ckpt" / "meta.json").write_text(json.dumps({"vae": "tiny", "text_encoder": "tiny"}))
    write_image(d / "still.png", Scene(1, kind="static", color=(220, 40, 40), textured=False), width=32, height=32)
    write_video(d / "a.mp4", [Scene(9, direction="right")], fps=8, width=32, height=32, seed=1)
    write_video(d / "b.mp4", [Scene(9, direction="left")], fps=8, width=32, height=32, seed=2)
    return d


def _run(setup, *args):
    res = CliRunner().invoke(app, ["sample", "--checkpoint", str(setup / "ckpt"), "-o", str(setup / "out"), *args,
                                   *BASE], catch_exceptions=False)
    return res.exit_code, res.output


def _frames(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.parametrize("flags,frames", [
    (["--image", "{d}/still.png"], 5),
    (["--video", "{d}/a.mp4", "--extend", "1"], 9),  # 2 latent frames of the video + 1 new: 1 + 4 * 2
    (["--video", "{d}/a.mp4", "--extend", "2", "--backward"], 13),
    (["--connect", "{d}/a.mp4", "{d}/b.mp4", "--num-frames", "9"], 9),
    (["--video", "{d}/a.mp4", "--strength", "0.5"], 5),
])
def test_conditioning_flags_write_videos(setup, flags, frames):
    code, output = _run(setup, "-p", "a red square moves right", *[f.format(d=setup) for f in flags])
    assert code == 0, output
    path = Path(output.split()[0])
    assert path.suffix == ".mp4" and _frames(path) == frames


def test_one_frame_is_a_png(setup):
    code, output = _run(setup, "-p", "a red square", "--num-frames", "1")
    assert code == 0, output
    img = cv2.imread(output.split()[0])
    assert output.split()[0].endswith(".png") and img.shape == (32, 32, 3)


def test_extended_prompt_with_scores_is_printed(setup):
    code, output = _run(setup, "-p", "red ball left", "--prompt-extension", "world", "--print-prompt", "--scores",
                        "--set", "sample.target_scores={aesthetic: 6.5}")
    assert code == 0, output
    assert "'a red circle moves left on a black background. aesthetic score 6.5.'" in output.replace("\n", "")


@pytest.mark.parametrize("flags,message", [(["--extend", "1"], "need --video"),
                                           (["--video", "{d}/a.mp4"], "--video needs --extend"),
                                           (["--image", "{d}/nope.png"], "nope.png")])
def test_bad_flags_fail_with_a_message(setup, flags, message):
    code, output = _run(setup, "-p", "x", *[f.format(d=setup) for f in flags])
    assert code == 2 and message in output.replace("\n", "")


def test_the_image_stays_the_first_frame(setup):
    dit = build_dit("VDiT-T/2", frame_cond=True).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae, text = load_vae("tiny").eval(), build_text_encoder("tiny")
    s = __import__("infra.config", fromlist=["load_config"]).load_config(None, ["sample.num_frames=9", "sample.height=32",
                                                                               "sample.width=32"]).sample
    cond = animate(vae, None, str(setup / "still.png"), s)
    runs = [sample_video(dit, vae, text, ["a red square"], num_frames=9, height=32, width=32, steps=3, seed=seed,
                         condition=cond)[0] for seed in (0, 1)]
    assert torch.equal(runs[0][0], runs[1][0])  # frame 0 decodes from the fixed latent frame alone
    assert not torch.equal(runs[0][1:], runs[1][1:])  # the rest is generated
