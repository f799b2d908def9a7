"""CaptionStage on real generated clips: a caption per row, errors as rows, OOM split and retry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from captioning.captioner import CaptionStage, is_oom
from captioning.frames import FramePrepStage
from captioning.models import build_tiny_captioner
from captioning.prompts import DEFAULT_PROMPT
from infra.videogen import Scene, write_video

FPS = 24
TINY_CLIP = {  # a 1-layer open_clip config: keeps caption_score tests fast
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_captioner(tmp_path_factory.mktemp("tiny_captioner"), seed=0, num_frames=6)


@pytest.fixture(scope="module")
def clip_batch(tmp_path_factory):
    """A clips-table batch over two generated videos, with a `frames` column from FramePrepStage."""
    d = tmp_path_factory.mktemp("clips")
    a, b = d / "a.mp4", d / "b.mp4"
    write_video(a, [Scene(24), Scene(24, kind="static", text="HI")], fps=FPS)
    write_video(b, [Scene(24, kind="noise"), Scene(24, kind="fade_out")], fps=FPS, seed=1)
    uris = [str(a), str(a), str(b), str(b), str(b)]
    starts, ends = np.array([0, 24, 0, 24, 12]), np.array([24, 48, 24, 48, 36])
    batch = {
        "clip_id": np.array([f"v{i}-{s:07d}" for i, s in enumerate(starts)], dtype=object),
        "uri": np.array(uris, dtype=object),
        "start_frame": starts, "end_frame": ends,
        "start_s": starts / FPS, "end_s": ends / FPS, "fps": np.full(5, float(FPS)),
        "num_frames": ends - starts,
        "aesthetic": np.array([5.53, 4.0, np.nan, 6.26, 5.0]),
    }
    stage = FramePrepStage(num_frames=6, frame_size=32)
    stage.setup()
    out = stage(batch)
    assert all(e is None for e in out["error"])
    return out


def _run(tiny_dir, batch, **kwargs):
    stage = CaptionStage(tiny_dir, max_new_tokens=kwargs.pop("max_new_tokens", 10),
                         batch_size=kwargs.pop("batch_size", 4), device="cpu", **kwargs)
    stage.setup()
    return stage, stage(dict(batch))


def test_every_row_gets_a_caption(tiny_dir, clip_batch):
    _, out = _run(tiny_dir, clip_batch)
    assert "frames" not in out
    assert all(isinstance(c, str) and c.strip() for c in out["caption"])
    assert all(e is None for e in out["error"]) and all(s is None for s in out["error_stage"])
    assert list(out["caption_model"]) == [tiny_dir] * 5
    assert list(out["caption_prompt"]) == [DEFAULT_PROMPT] * 5
    assert out["caption_tokens"].dtype == np.int64 and (out["caption_tokens"] >= 4).all()
    assert np.isnan(out["caption_score"]).all()  # no CLIP model configured
    assert list(out["clip_id"]) == list(clip_batch["clip_id"])  # other columns pass through


def test_deterministic_for_a_fixed_seed(tiny_dir, clip_batch):
    _, a = _run(tiny_dir, clip_batch, do_sample=True, seed=3)
    _, b = _run(tiny_dir, clip_batch, do_sample=True, seed=3)
    _, c = _run(tiny_dir, clip_batch, do_sample=True, seed=4)
    assert list(a["caption"]) == list(b["caption"])
    assert list(a["caption"]) != list(c["caption"])


def test_missing_and_corrupt_clips_are_error_rows(tiny_dir, clip_batch, tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    rows = {k: v[:3].copy() for k, v in clip_batch.items() if k not in ("frames", "error",
                                                                         "error_stage")}
    rows["uri"] = np.array([rows["uri"][0], str(tmp_path / "missing.mp4"), str(bad)], dtype=object)
    prep = FramePrepStage(num_frames=6, frame_size=32)
    _, out = _run(tiny_dir, prep(rows))
    assert isinstance(out["caption"][0], str) and out["error"][0] is None
    for i in (1, 2):
        assert out["caption"][i] is None and out["caption_tokens"][i] == 0
        assert out["error"][i] and out["error_stage"][i] == "caption:frames"


class _OOMOnBigBatches:
    """Wraps Captioner.generate: raises out-of-memory for batches larger than `limit`."""

    def __init__(self, generate, limit=1, error=torch.OutOfMemoryError):
        self.generate, self.limit, self.error, self.sizes = generate, limit, error, []

    def __call__(self, frames, prompts, **kwargs):
        self.sizes.append(len(frames))
        if len(frames) > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.generate(frames, prompts, **kwargs)


def test_oom_splits_the_batch_and_retries(tiny_dir, clip_batch):
    _, expected = _run(tiny_dir, clip_batch)
    stage = CaptionStage(tiny_dir, max_new_tokens=10, batch_size=4, device="cpu")
    stage.setup()
    wrapped = _OOMOnBigBatches(stage.captioner.generate)
    stage.captioner.generate = wrapped
    out = stage(dict(clip_batch))
    # Chunks of 4 then 1: 4 -> 2 -> 1, 1 -> 2 -> 1, 1; then the last clip alone.
    assert wrapped.sizes == [4, 2, 1, 1, 2, 1, 1, 1]
    assert stage.oom_splits == 3
    assert list(out["caption"]) == list(expected["caption"])
    assert all(e is None for e in out["error"])


def test_runtime_error_out_of_memory_is_recognised(tiny_dir, clip_batch):
    assert is_oom(RuntimeError("CUDA error: out of memory")) and not is_oom(ValueError("x"))
    stage = CaptionStage(tiny_dir, max_new_tokens=6, batch_size=2, device="cpu")
    stage.setup()
    wrapped = _OOMOnBigBatches(stage.captioner.generate, limit=1, error=RuntimeError)
    stage.captioner.generate = wrapped
    out = stage(dict(clip_batch))
    assert all(isinstance(c, str) and c for c in out["caption"]) and stage.oom_splits == 2


def test_clip_that_fails_alone_becomes_an_error_row(tiny_dir, clip_batch):
    stage = CaptionStage(tiny_dir, max_new_tokens=6, batch_size=4, device="cpu")
    stage.setup()
    generate = stage.captioner.generate
    poisoned = clip_batch["frames"][2]

    def flaky(frames, prompts, **kwargs):
        if any(f is poisoned or np.array_equal(f, poisoned) for f in frames):
            raise torch.OutOfMemoryError("CUDA out of memory")  # even a single clip is too big
        return generate(frames, prompts, **kwargs)

    stage.captioner.generate = flaky
    out = stage(dict(clip_batch))
    assert out["caption"][2] is None and "OutOfMemoryError" in out["error"][2]
    assert out["error_stage"][2] == "caption"
    assert all(isinstance(out["caption"][i], str) for i in (0, 1, 3, 4))


def test_prompt_template_and_score_suffix(tiny_dir, clip_batch):
    _, out = _run(tiny_dir, clip_batch, prompt="A clip of {num_frames} frames. Describe it.",
                  score_suffix=["aesthetic"])
    assert out["caption_prompt"][0] == "A clip of 24 frames. Describe it."
    assert out["caption"][0].endswith(" aesthetic score 5.5.")
    assert out["caption"][3].endswith(" aesthetic score 6.3.")  # one decimal
    assert "aesthetic" not in out["caption"][2]  # NaN scores are left out
    _, missing = _run(tiny_dir, clip_batch, prompt="Describe {no_such_column}.")
    assert all("no_such_column" in e for e in missing["error"])
    assert all(c is None for c in missing["caption"])


def test_caption_score_with_a_clip_model(tiny_dir, clip_batch, tmp_path):
    cfg = tmp_path / "RF-Tiny-CLIP.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    _, out = _run(tiny_dir, clip_batch, clip_model=str(cfg))
    scores = out["caption_score"]
    assert scores.dtype == np.float64 and all(math.isfinite(s) and -1 <= s <= 1 for s in scores)
    _, again = _run(tiny_dir, clip_batch, clip_model=str(cfg))
    assert np.allclose(again["caption_score"], scores, atol=1e-6)  # a random CLIP is seeded
