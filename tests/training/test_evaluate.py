"""training.evaluate: `reelforge eval` on a (random) DiT checkpoint and a VAE, and SSIM itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infra import storage
from infra.config import load_config
from infra.world import write_world
from training.evaluate import heldout_prompts, run_eval, ssim
from training.models.dit import build_dit
from training.models.vae import load_vae

ROOT = Path(__file__).resolve().parents[2]
SETS = ["sample.steps=2", "world.eval_prompts=3", "world.holdout=[red:left]", "world.videos=1",
        "world.eval_videos=1", "world.scenes=[2,2]", "world.frames=[12,12]"]


def test_ssim_is_one_for_equal_images_and_low_for_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert abs(ssim(x, x) - 1.0) < 1e-5
    assert ssim(x, torch.rand(2, 3, 32, 32, generator=g)) < 0.1
    assert 0.5 < ssim(x, (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)) < 1.0


def test_heldout_prompts_only_name_held_out_combos():
    world = load_config(None, ["world.holdout=[red:left,blue:up]", "world.eval_prompts=6"]).world
    prompts = heldout_prompts(world)
    assert len(prompts) == 6 and heldout_prompts(world) == prompts  # deterministic
    for p in prompts:
        a = p["attributes"]
        assert (a["color"], a["direction"]) in {("red", "left"), ("blue", "up")}
        assert p["prompt"] == f"a {a['color']} {a['shape']} moves {a['direction']} on a {a['background']} background"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_eval_samples_a_checkpoint_scores_it_and_measures_a_vae(tmp_path, where, request):
    cfg = load_config(ROOT / "configs" / "tiny.yaml", SETS)
    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    build_dit("VDiT-T/2").save_pretrained(ckpt / "dit")
    (ckpt / "meta.json").write_text(json.dumps({"vae": "tiny", "text_encoder": "tiny"}))
    load_vae("tiny").save_pretrained(tmp_path / "vae")
    write_world(cfg.world, tmp_path / "world")
    paths = {name: str(tmp_path / name) for name in ("ckpt", "vae", "world", "out")}
    if where == "s3":  # every path eval reads or writes on the S3 endpoint
        bucket = request.getfixturevalue("s3_bucket")
        for name in ("ckpt", "vae", "world"):
            storage.upload_dir(paths[name], f"{bucket}/{name}")
        paths = {name: f"{bucket}/{name}" for name in paths}
    report = run_eval(cfg, checkpoint=paths["ckpt"], vae=paths["vae"], clips=paths["world"], output=paths["out"])
    s = report["sample"]
    assert s["prompts"] == 3 and s["accuracy"]["n"] == 3
    for key in ("color", "direction", "shape"):
        assert 0.0 <= s["accuracy"][key] <= 1.0
    assert s["clip_score"] is None  # no caption.clip_model configured
    assert all(p["attributes"]["color"] == "red" for p in s["per_prompt"])
    r = report["reconstruction"]
    assert r["clips"] == 2 and 0 < r["psnr"] < 60 and -1 <= r["ssim"] <= 1
    out = paths["out"]
    assert json.loads(storage.read_text(storage.join(out, "eval.json")))["sample"]["accuracy"] == s["accuracy"]
    assert len([f for f in storage.list_files(out) if f.rsplit("/", 1)[-1].startswith("eval-")]) == 3


def test_cli_demo_data_and_eval_without_inputs(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "infra.cli", *args], capture_output=True, text=True, cwd=ROOT)

    res = run("demo-data", "--output", str(tmp_path / "w"), *sum([["--set", s] for s in SETS], []))
    assert res.returncode == 0, res.stderr
    assert "train 1 videos / 2 scenes, eval 1 videos / 2 scenes; held out of train: red:left" in res.stdout
    assert (tmp_path / "w" / "train" / "world-0000.json").exists()
    res = run("eval", "--config", "configs/tiny.yaml")
    assert res.returncode == 2 and "--checkpoint" in res.stderr
