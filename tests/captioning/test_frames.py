"""Frame sampling: the right frames (read back from the numbers drawn in them), sizes, fallbacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from captioning.frames import FramePrepStage
from infra import video as F
from infra.video import sample_frames
from infra.videogen import Scene, read_frame_number, write_video

MEDIA = Path(__file__).resolve().parents[3] / "shared" / "media"
FPS = 24


def _numbers(frames, rotation=0) -> list[int]:
    return [read_frame_number(f, rotation=rotation) for f in frames]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("frames")
    out = {}
    out["cfr"] = (d / "cfr.mp4", write_video(d / "cfr.mp4", [Scene(30), Scene(30, kind="static")],
                                             fps=FPS, width=128, height=96))
    out["vfr"] = (d / "vfr.mp4", write_video(d / "vfr.mp4", [Scene(48)], fps=FPS, width=128,
                                             height=96, vfr_drop_every=3))
    out["rot"] = (d / "rot.mp4", write_video(d / "rot.mp4", [Scene(24)], fps=FPS, width=128,
                                             height=96, rotation=-90))
    out["tiny"] = (d / "one_pixel.mp4", write_video(d / "one_pixel.mp4", [Scene(5, kind="static")],
                                                    width=1, height=1, draw_frame_number=False))
    return out


@pytest.fixture(params=["decord", "pyav"])
def decoder(request, monkeypatch):
    """Run a test with decord, and again with decord failing so PyAV's fallback answers."""
    if request.param == "pyav":
        def broken(*args, **kwargs):
            raise RuntimeError("decord disabled by the test")
        monkeypatch.setattr(F, "_read_decord", broken)
    return request.param


def test_uniform_frames_over_a_sub_range(videos, decoder):
    path, _ = videos["cfr"]
    by_frames = sample_frames(str(path), start_frame=10, end_frame=31, source_fps=FPS, num_frames=6)
    by_seconds = sample_frames(str(path), 10 / FPS, 31 / FPS, num_frames=6)
    assert by_frames.shape == (6, 96, 128, 3) and by_frames.dtype == np.uint8
    assert _numbers(by_frames) == [10, 14, 18, 22, 26, 30]
    assert _numbers(by_seconds) == [10, 14, 18, 22, 26, 30]


def test_whole_video_spans_first_to_last_frame(videos, decoder):
    path, gt = videos["cfr"]
    got = _numbers(sample_frames(str(path), 0.0, gt["duration_s"], num_frames=8))
    assert got[0] == 0 and got[-1] == gt["num_frames"] - 1
    assert got == sorted(got) and len(set(got)) == 8


def test_target_fps(videos, decoder):
    path, _ = videos["cfr"]
    got = _numbers(sample_frames(str(path), start_frame=12, end_frame=48, source_fps=FPS,
                                 num_frames=None, fps=6))
    assert got == list(range(12, 48, 4))


def test_vfr_frames_by_presentation_time(videos, decoder):
    path, gt = videos["vfr"]
    kept = set(gt["frame_numbers"])
    assert 11 not in kept and 14 not in kept  # every 3rd frame is missing
    got = _numbers(sample_frames(str(path), start_frame=10, end_frame=31, source_fps=FPS,
                                 num_frames=4))
    # Targets 10, 16.7, 23.3, 30 (frame-number time); the nearest frames shown are 10, 16, 24,
    # 30. Counting decoded frames instead would start at decoded frame 10 = frame 15.
    assert got == [10, 16, 24, 30]
    assert set(got) <= kept


def test_rotation_is_applied(videos, decoder):
    path, gt = videos["rot"]
    frames = sample_frames(str(path), 0.0, 1.0, num_frames=4)
    assert frames.shape == (4, 128, 96, 3)  # coded 128x96, displayed rotated: 128 high, 96 wide
    assert _numbers(frames, rotation=-90) == [0, 8, 15, 23]


@pytest.mark.skipif(not (MEDIA / "decord").is_dir(), reason="../shared/media not present")
def test_decord_suite_rotated_mov(decoder):
    frames = sample_frames(str(MEDIA / "decord" / "video_90.mov"), 0.0, 1.0, num_frames=2)
    assert frames.shape == (2, 568, 320, 3)  # decord's own suite: 568 high, 320 wide


def test_resizing(videos):
    path, _ = videos["cfr"]
    exact = sample_frames(str(path), 0.0, 1.0, num_frames=2, size=(48, 64))
    assert exact.shape == (2, 48, 64, 3)
    assert _numbers(exact) == [0, 23]  # decode-time scaling keeps the frames' content
    assert sample_frames(str(path), 0.0, 1.0, num_frames=2, short_side=48).shape == (2, 48, 64, 3)
    crop = sample_frames(str(path), 0.0, 1.0, num_frames=2, size=(32, 32), crop=True)
    assert crop.shape == (2, 32, 32, 3)


def test_pyav_fallback_for_files_decord_misreads(videos):
    # decord 0.6 returns (1, 1, 96) "frames" for a 1x1 video; the fallback gives real ones.
    path, _ = videos["tiny"]
    assert sample_frames(str(path), 0.0, 5.0, num_frames=3).shape == (3, 1, 1, 3)


@pytest.mark.skipif(not (MEDIA / "moviepy").is_dir(), reason="../shared/media not present")
def test_pyav_fallback_when_decord_cannot_open():
    # decord refuses it ("broken metadata": no duration in the container).
    frames = sample_frames(str(MEDIA / "moviepy" / "no_duration.webm"), 0.0, 10.0, num_frames=4,
                           size=(36, 64))
    assert frames.shape == (4, 36, 64, 3)


@pytest.mark.skipif(not (MEDIA / "decord").is_dir(), reason="../shared/media not present")
def test_corrupt_frame_gives_frames_not_a_crash():
    frames = sample_frames(str(MEDIA / "decord" / "corrupted.mp4"), 0.0, 5.0, num_frames=50,
                           size=(36, 64))
    assert frames.shape == (50, 36, 64, 3)


def test_range_without_frames_is_an_error(videos):
    path, _ = videos["cfr"]
    with pytest.raises(ValueError, match="no frame"):
        sample_frames(str(path), 10.0, 11.0, num_frames=4)
    with pytest.raises(ValueError, match="empty"):
        sample_frames(str(path), 1.0, 1.0, num_frames=4)


def test_frame_prep_stage_errors_are_rows(videos, tmp_path):
    path, _ = videos["cfr"]
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    uris = [str(path), str(tmp_path / "missing.mp4"), str(garbage), str(path), str(path)]
    batch = {
        "clip_id": np.array(["a", "b", "c", "d", "e"], dtype=object),
        "uri": np.array(uris, dtype=object),
        "start_frame": np.array([0, 0, 0, 300, 30]),
        "end_frame": np.array([30, 30, 30, 330, 60]),
        "start_s": np.array([0, 0, 0, 300, 30]) / FPS,
        "end_s": np.array([30, 30, 30, 330, 60]) / FPS,
        "fps": np.full(5, float(FPS)),
        "error": np.array([None, None, None, None, "probe: bad"], dtype=object),
        "error_stage": np.array([None, None, None, None, "probe"], dtype=object),
    }
    stage = FramePrepStage(num_frames=4, frame_size=32)
    stage.setup()
    out = stage(batch)
    assert out["frames"].shape == (5, 4, 32, 32, 3) and out["frames"].dtype == np.uint8
    assert out["error"][0] is None and out["frames"][0].any()
    for i in (1, 2, 3):  # missing file, not a video, a range past the end
        assert isinstance(out["error"][i], str) and out["error"][i]
        assert out["error_stage"][i] == "caption:frames"
        assert not out["frames"][i].any()
    assert "missing.mp4" in out["error"][1] and "ValueError" in out["error"][3]
    assert out["error"][4] == "probe: bad" and out["error_stage"][4] == "probe"
    assert list(out["clip_id"]) == ["a", "b", "c", "d", "e"]
