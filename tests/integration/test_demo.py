"""`reelforge demo` end to end at toy sizes: every stage of the whole flow writes what a user would
open (clips table with the broken file in failures, captions, latents, a DiT checkpoint, an mp4
that decodes, the reports), and a re-run into the same folder resumes instead of redoing work."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from infra import storage
from infra.demo import STAGES, demo_config, run_demo

pytestmark = pytest.mark.slow
# configs/demo.yaml shrunk: 6 world files (~18 clips), a few optimizer steps everywhere
SETS = ["world.videos=6", "world.eval_videos=1", "world.eval_prompts=1", "curate.measures.text=false",
        "caption_train.steps=4", "caption_train.batch_size=4",
        "caption_train.num_workers=0",  # in-process: test_train_captioner covers its Ray Train path
        "train.steps=4", "train.warmup_steps=1", "train.checkpoint_every=4", "train.log_every=2", "sample.steps=2"]


@pytest.fixture(scope="module")
def demo(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, run_demo(demo_config(None, SETS), str(out))


def test_every_stage_writes_its_outputs(demo):
    out, summary = demo
    assert list(summary["stages"]) == list(STAGES)

    # curate: the world's files are clips; the broken file is a failures row, not a crash
    clips = storage.read_table(str(out / "curate" / "clips"))
    world = json.loads((out / "world" / "world.json").read_text())
    assert clips.num_rows >= world["counts"]["train"]["videos"]
    failures = storage.read_table(str(out / "curate" / "failures")).to_pylist()
    assert [Path(f["uri"]).name for f in failures] == ["broken.mp4"]
    assert summary["stages"]["curate"]["failed"] == 1

    # caption: kept clips carry the sidecar's caption and the trained captioner's own text
    captioned = storage.read_table(str(out / "captioned" / "clips")).to_pylist()
    kept = [r for r in captioned if r["keep"]]
    assert kept and all(r["caption"] and r["caption_source"] == "sidecar" for r in kept)
    assert all(r["caption_model_text"] is not None for r in kept)
    assert all(r["caption_model"] == str(out / "captioner") for r in kept)
    assert (out / "captioner" / "train_summary.json").exists()

    # precompute: one latent row per encoded clip
    latents = storage.read_table(str(out / "precompute" / "latents"), columns=["clip_id", "caption", "bucket"])
    assert latents.num_rows == summary["stages"]["precompute"]["encoded"] > 0

    # train: a checkpoint `reelforge sample` loads, at the configured step
    ckpt = Path(summary["checkpoint"])
    assert ckpt.name == "checkpoint_00000004" and (ckpt / "ema" / "model.safetensors").exists()

    # sample: an mp4 that decodes to the configured frames
    with av.open(summary["mp4"]) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    s = demo_config(None, SETS).sample
    assert len(frames) == s.num_frames == 9 and frames[0].shape == (s.height, s.width, 3)

    # eval numbers and the reports
    assert set(summary["stages"]["eval"]["accuracy"]) >= {"color", "direction", "shape"}
    assert "<td>probe</td><td>1</td>" in Path(summary["report"]).read_text()  # the failures table
    page = Path(summary["page"]).read_text()
    assert "samples/sample-0-000.mp4" in page and "curate/report/index.html" in page
    # the eval's held-out prompt beside its animated preview, the loss curve, the curation funnel
    assert '<img src="eval/eval-000.webp"' in page and (out / "eval" / "eval-000.webp").exists()
    assert '<img src="loss.png"' in page and '<img src="curate/report/funnel.png"' in page
    assert json.loads((out / "demo.json").read_text())["mp4"] == summary["mp4"]


def test_rerun_resumes_every_finished_stage(demo):
    out, first = demo
    again = run_demo(demo_config(None, SETS), str(out))
    for name in ("world", "curate", "train-captioner", "caption", "precompute", "train"):
        assert again["stages"][name]["reused"], name
    assert again["checkpoint"] == first["checkpoint"]
