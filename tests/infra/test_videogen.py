"""infra.videogen: real H.264 files whose frames, timestamps and metadata match the ground truth."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from infra.videogen import Scene, read_frame_number, write_audio_only, write_bad_inputs, write_video


def decode_rgb(path, **size) -> list[tuple[int, np.ndarray, int]]:
    """(pts, rgb frame, rotation) of every frame, optionally resized in libswscale."""
    with av.open(str(path)) as c:
        return [(f.pts, f.to_ndarray(format="rgb24", **size), f.rotation)
                for f in c.decode(c.streams.video[0])]


def test_ground_truth_matches_the_file(tmp_path):
    scenes = [Scene(20), Scene(15, kind="static"), Scene(10, kind="noise"), Scene(12, kind="text")]
    truth = write_video(tmp_path / "a.mp4", scenes, fps=24)
    assert truth["cuts"] == [20, 35, 45]
    assert truth["scene_ranges"] == [(0, 20), (20, 35), (35, 45), (45, 57)]
    assert truth["num_frames"] == 57 and truth["duration_s"] == pytest.approx(57 / 24)
    with av.open(str(tmp_path / "a.mp4")) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.width, s.height) == ("h264", 128, 96)
        assert s.average_rate == 24 and s.frames == 57


@pytest.mark.parametrize("size", [{}, {"width": 32, "height": 24}, {"width": 480, "height": 360}])
def test_frame_numbers_survive_h264_and_resizing(tmp_path, size):
    scenes = [Scene(30), Scene(20, kind="noise"), Scene(20, kind="blur"), Scene(10, kind="black")]
    write_video(tmp_path / "n.mp4", scenes, crf=28)
    frames = decode_rgb(tmp_path / "n.mp4", **size)
    assert [read_frame_number(rgb) for _, rgb, _ in frames] == list(range(80))


def test_vfr_drops_frames_but_keeps_timestamps(tmp_path):
    truth = write_video(tmp_path / "v.mp4", [Scene(30), Scene(30)], fps=24, vfr_drop_every=3)
    kept = [i for i in range(60) if (i + 1) % 3]
    assert truth["frame_numbers"] == kept and truth["num_frames"] == 40 and truth["vfr"]
    with av.open(str(tmp_path / "v.mp4")) as c:
        frames = list(c.decode(c.streams.video[0]))
        numbers = [round(f.pts * f.time_base * 24) for f in frames]
        drawn = [read_frame_number(f.to_ndarray(format="rgb24")) for f in frames]
    assert numbers == kept and drawn == kept


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_round_trips(tmp_path, rotation):
    truth = write_video(tmp_path / "r.mp4", [Scene(6)], rotation=rotation, width=64, height=48)
    frames = decode_rgb(tmp_path / "r.mp4")
    assert {rot % 360 for _, _, rot in frames} == {rotation % 360}  # 180 reads back as -180
    swapped = abs(rotation) == 90
    assert (truth["display_width"], truth["display_height"]) == ((48, 64) if swapped else (64, 48))
    # A player that applies the rotation shows the frame turned; the number still reads back.
    shown = np.rot90(frames[3][1], k=rotation // 90)
    assert read_frame_number(shown, rotation=rotation) == 3


def test_audio_tracks(tmp_path):
    write_video(tmp_path / "av.mp4", [Scene(24)], audio=True)
    write_audio_only(tmp_path / "a.m4a", seconds=0.5)
    with av.open(str(tmp_path / "av.mp4")) as c:
        assert sorted(s.type for s in c.streams) == ["audio", "video"]
        assert c.streams.audio[0].codec_context.name == "aac"
    with av.open(str(tmp_path / "a.m4a")) as c:
        assert [s.type for s in c.streams] == ["audio"]


def test_scene_kinds_look_like_their_names(tmp_path):
    scenes = [Scene(8, kind="static"), Scene(8, kind="black"), Scene(8, kind="noise"),
              Scene(10, kind="fade_out"), Scene(10, kind="fade_in"), Scene(8, kind="moving")]
    write_video(tmp_path / "k.mp4", scenes, draw_frame_number=False, crf=10)
    f = [rgb.astype(np.float32) for _, rgb, _ in decode_rgb(tmp_path / "k.mp4")]
    assert np.abs(f[1] - f[5]).mean() < 2  # static: nothing moves
    assert f[12].mean() < 20  # black
    assert np.abs(f[18] - f[19]).mean() > 40  # noise changes every frame
    assert f[24].mean() > 4 * f[33].mean() + 1  # fade out ends darker than it starts
    assert f[43].mean() > 4 * f[34].mean() + 1  # fade in ends brighter than it starts
    assert np.abs(f[42] - f[47]).mean() > 1  # moving


def test_same_seed_same_bytes(tmp_path):
    scenes = [Scene(12), Scene(12, kind="noise")]
    write_video(tmp_path / "1.mp4", scenes, seed=7, audio=True)
    write_video(tmp_path / "2.mp4", scenes, seed=7, audio=True)
    write_video(tmp_path / "3.mp4", scenes, seed=8, audio=True)
    data = [(tmp_path / f"{i}.mp4").read_bytes() for i in (1, 2, 3)]
    assert data[0] == data[1] != data[2]


def test_non_integer_fps_and_gop(tmp_path):
    truth = write_video(tmp_path / "ntsc.mp4", [Scene(30)], fps=30000 / 1001, gop=10)
    assert truth["fps"] == pytest.approx(29.97, abs=1e-3)
    with av.open(str(tmp_path / "ntsc.mp4")) as c:
        s = c.streams.video[0]
        assert s.average_rate == Fraction(30000, 1001)
        keyframes = sum(p.is_keyframe for p in c.demux(s) if p.size)
    assert keyframes >= 3


def test_bad_inputs_are_what_they_say(tmp_path):
    kinds = write_bad_inputs(tmp_path)
    assert set(kinds.values()) == {"zero-byte", "random-bytes", "text", "truncated", "audio-only",
                                   "1x1"}
    assert all((tmp_path / name).is_file() for name in kinds)
    assert (tmp_path / "zero_byte.mp4").stat().st_size == 0
    assert (tmp_path / "text_file.mp4").read_text().startswith("this is not a video")
    assert 0 < (tmp_path / "truncated.mp4").stat().st_size < 8000
    with av.open(str(tmp_path / "one_pixel.mp4")) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (1, 1)
    assert write_bad_inputs(tmp_path / "again") == kinds
    assert (tmp_path / "again" / "random_bytes.mp4").read_bytes() == (
        tmp_path / "random_bytes.mp4").read_bytes()


def test_rejects_unknown_scene_kind():
    with pytest.raises(ValueError, match="unknown scene kind"):
        Scene(10, kind="sparkles")
