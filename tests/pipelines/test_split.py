"""pipelines.split: cuts found where they are, clips that follow them, goldens reproduced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from infra.videogen import Scene, write_bad_inputs, write_video
from pipelines.probe import ProbeStage
from infra.schema import CLIP_CORE_FIELDS, clip_id_for
from pipelines.split import SplitStage, detect_cuts

MEDIA = Path(__file__).resolve().parents[2].parent / "shared" / "media"
GOLDENS = MEDIA / "pyscenedetect" / "goldens"
needs_media = pytest.mark.skipif(not MEDIA.is_dir(), reason=f"{MEDIA} is absent (a fresh clone "
                                 "has no ../shared); generated clips cover the same paths")
# Hard cuts only: every scene starts with a new background, none fades.
HARD_CUT_SCENES = [Scene(36), Scene(30, direction="left", speed=3), Scene(40, kind="static"),
                   Scene(24, kind="text"), Scene(30, kind="blur", direction="down")]


@pytest.fixture(scope="module")
def hard_cuts(tmp_path_factory) -> tuple[str, dict]:
    path = str(tmp_path_factory.mktemp("split") / "cuts.mp4")
    return path, write_video(path, HARD_CUT_SCENES, fps=24, width=160, height=96, seed=1)


def probed(*uris: str) -> dict[str, np.ndarray]:
    return ProbeStage()({"uri": np.array(uris, dtype=object)})


def clips_of(out: dict, i: int = 0) -> list[dict]:
    return json.loads(out["clips"][i])


def assert_cuts_close(found: list[int], truth: list[int], tol: int) -> None:
    assert len(found) == len(truth), (found, truth)
    assert all(abs(f - t) <= tol for f, t in zip(found, truth)), (found, truth)


# ----------------------------------------------------------------------------- generated
@pytest.mark.parametrize("method", ["content", "adaptive"])
def test_every_hard_cut_found_within_a_frame(hard_cuts, method):
    path, truth = hard_cuts
    threshold = {"content": 27.0, "adaptive": 3.0}[method]
    found = detect_cuts(path, method, threshold)
    assert_cuts_close(found.cuts, truth["cuts"], tol=1)
    assert (found.num_decoded, found.end_frame) == (160, 160)
    assert found.rate == 24 and (found.width, found.height) == (160, 96)


def test_clips_follow_the_scenes(hard_cuts):
    path, truth = hard_cuts
    out = SplitStage(min_clip_s=0.5, max_clip_s=10.0)(probed(path))
    clips = clips_of(out)
    assert out["status"][0] == "ok" and out["num_frames"][0] == 160
    assert out["duration_s"][0] == pytest.approx(160 / 24)
    assert [list(c) for c in clips] == [[k for k, _ in CLIP_CORE_FIELDS]] * len(clips)
    bounds = [(c["start_frame"], c["end_frame"]) for c in clips]
    assert len(bounds) == len(truth["scene_ranges"])
    for (s, e), (ts, te) in zip(bounds, truth["scene_ranges"]):
        assert abs(s - ts) <= 1 and abs(e - te) <= 1
    vid = out["video_id"][0]
    for c in clips:
        assert c["clip_id"] == clip_id_for(vid, c["start_frame"]) and c["uri"] == path
        assert (c["fps"], c["width"], c["height"], c["split_method"]) == (24.0, 160, 96, "content")
        assert c["num_frames"] == c["end_frame"] - c["start_frame"]
        assert c["start_s"] == pytest.approx(c["start_frame"] / 24)
        assert c["end_s"] == pytest.approx(c["end_frame"] / 24)


def test_min_max_clip_length_and_trim(tmp_path):
    path = str(tmp_path / "long.mp4")
    write_video(path, [Scene(100), Scene(8, kind="static"), Scene(40, kind="text")], fps=20)
    clips = clips_of(SplitStage(min_clip_s=1.0, max_clip_s=2.0, trim_frames=2,
                                min_scene_len=5)(probed(path)))
    spans = [(c["start_frame"], c["end_frame"]) for c in clips]
    # Scene 1 (0-100, trimmed to 98) in 2 s windows with a 0.9 s tail dropped; scene 2 (8
    # frames) below 1 s is dropped; scene 3 (108-148) trimmed at its cut only.
    assert spans == [(0, 40), (40, 80), (110, 148)]
    assert all(c["num_frames"] / c["fps"] <= 2.0 for c in clips)


def test_video_without_cuts_is_one_clip(tmp_path):
    path = str(tmp_path / "one.mp4")
    write_video(path, [Scene(48)])
    assert [(c["start_frame"], c["end_frame"]) for c in clips_of(SplitStage()(probed(path)))] == [
        (0, 48)]


def test_vfr_numbered_by_presentation_time(tmp_path):
    path = str(tmp_path / "vfr.mp4")
    truth = write_video(path, [Scene(45), Scene(45, kind="text"), Scene(45)], vfr_drop_every=3)
    out = SplitStage()(probed(path))
    assert_cuts_close([c["start_frame"] for c in clips_of(out)][1:], truth["cuts"], tol=1)
    assert out["num_frames"][0] == truth["num_frames"] == 90  # decoded, not the numbering span
    assert clips_of(out)[-1]["end_frame"] == 134  # last kept presentation frame + 1


def test_rotated_clips_have_displayed_size(tmp_path):
    path = str(tmp_path / "rot.mp4")
    write_video(path, [Scene(24), Scene(24, kind="text")], rotation=90, width=128, height=96)
    clips = clips_of(SplitStage()(probed(path)))
    assert {(c["width"], c["height"]) for c in clips} == {(96, 128)}


def test_transnetv2_finds_hard_cuts(hard_cuts):
    path, truth = hard_cuts
    stage = SplitStage(method="transnetv2")
    stage.setup()
    out = stage(probed(path))
    starts = [c["start_frame"] for c in clips_of(out)]
    assert_cuts_close(starts[1:], truth["cuts"], tol=2)
    assert {c["split_method"] for c in clips_of(out)} == {"transnetv2"}


def test_failed_rows_pass_through_and_split_failures_are_rows(tmp_path):
    kinds = write_bad_inputs(tmp_path / "bad")
    good = str(tmp_path / "good.mp4")
    write_video(good, [Scene(24)])
    batch = probed(good, *[str(tmp_path / "bad" / n) for n in kinds])
    batch["extra"] = np.arange(len(batch["uri"]))
    Path(good).write_bytes(b"not a video any more")  # probed ok, broken before the split
    out = SplitStage()(batch)
    assert list(out["extra"]) == list(range(len(kinds) + 1))
    assert list(out["clips"]) == ["[]"] * (len(kinds) + 1)
    assert set(out["status"]) == {"failed"}
    assert out["error_stage"][0] == "split" and "split failed" in out["error"][0]
    assert list(out["error_stage"][1:]) == ["probe"] * len(kinds)


def test_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown split method"):
        SplitStage(method="histogram")


# ----------------------------------------------------------------------------- goldens
def golden(video: str, detector: str) -> list[int]:
    return json.loads((GOLDENS / f"{video}.{detector}.default.json").read_text())["cuts"]


@needs_media
@pytest.mark.parametrize("method,threshold,want,detector", [
    ("content", 27.0, [30, 180, 394], "ContentDetector"),
    ("adaptive", 3.0, [30, 180, 394, 691], "AdaptiveDetector"),
])
def test_testvideo_goldens_with_default_downscale(method, threshold, want, detector):
    found = detect_cuts(str(MEDIA / "pyscenedetect/testvideo.mp4"), method, threshold)
    assert found.cuts == want == golden("testvideo.mp4", detector)
    assert found.num_decoded == 720


@needs_media
def test_testvideo_content_golden_holds_at_other_downscales():
    found = detect_cuts(str(MEDIA / "pyscenedetect/testvideo.mp4"), "content", 27.0, downscale=8)
    assert found.cuts == [30, 180, 394]


@needs_media
@pytest.mark.parametrize("video,method,threshold,detector", [
    ("goldeneye-vfr-drop3.mp4", "content", 27.0, "ContentDetector"),
    ("counter.mp4", "adaptive", 3.0, "AdaptiveDetector"),
    ("fades.mp4", "threshold", 12.0, "ThresholdDetector"),
])
def test_small_goldens(video, method, threshold, detector):
    found = detect_cuts(str(MEDIA / "pyscenedetect" / video), method, threshold)
    assert found.cuts == golden(video, detector)


@needs_media
def test_goldeneye_vfr_clips_and_counts():
    out = SplitStage()(probed(str(MEDIA / "pyscenedetect/goldeneye-vfr-drop3.mp4")))
    assert [c["start_frame"] for c in clips_of(out)] == [0, 90, 210]
    assert out["num_frames"][0] == 160 and out["vfr"][0]


@needs_media
def test_rotated_golden_clips_are_portrait():
    clips = clips_of(SplitStage()(probed(str(MEDIA / "pyscenedetect/issue-134-rotate.mp4"))))
    assert clips and {(c["width"], c["height"]) for c in clips} == {(544, 1280)}


@needs_media
def test_awkward_media_never_raises():
    names = ["decord/corrupted.mp4", "moviepy/bitmap.mp4", "pyscenedetect/delayed_start.mp4",
             "decord/unordered.mov", "decord/video_90.mov", "moviepy/fire2.mp4",
             "moviepy/no_duration.webm"]
    out = SplitStage()(probed(*[str(MEDIA / n) for n in names]))
    got = dict(zip(names, zip(out["status"], out["num_frames"], out["clips"], out["error"])))
    for name, (status, _, clips, error) in got.items():
        assert status in ("ok", "failed") and (status == "ok" or error), name
        assert clips == "[]" or status == "ok"
    assert got["decord/corrupted.mp4"][1] == 49  # header says 50; one frame is corrupt
    assert got["pyscenedetect/delayed_start.mp4"][0] == "ok"
    assert json.loads(got["pyscenedetect/delayed_start.mp4"][2])[0]["start_frame"] == 0
    assert got["moviepy/no_duration.webm"][0] == "ok"
    vid90 = json.loads(got["decord/video_90.mov"][2])
    assert got["decord/video_90.mov"][0] == "ok" and vid90 == []  # 3 frames: under min_clip_s
