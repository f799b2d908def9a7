"""pipelines.probe: one VIDEOS_SCHEMA row per real file; every failure is a readable row."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from infra.videogen import Scene, write_bad_inputs, write_video
from pipelines.probe import ProbeStage, probe_video
from infra.schema import VIDEOS_SCHEMA, table_from_rows, video_id_for

MEDIA = Path(__file__).resolve().parents[2].parent / "shared" / "media"
needs_media = pytest.mark.skipif(not MEDIA.is_dir(), reason=f"{MEDIA} is absent (a fresh clone "
                                 "has no ../shared); generated clips cover the same paths")
SCENES = [Scene(24), Scene(24, kind="static"), Scene(12, kind="text")]


def make(tmp_path, name="v.mp4", scenes=SCENES, **kwargs) -> tuple[str, dict]:
    path = str(tmp_path / name)
    return path, write_video(path, scenes, **kwargs)


def schema_row(row: dict) -> dict:
    return {k: row[k] for k in VIDEOS_SCHEMA.names}


def test_generated_video_facts(tmp_path):
    path, truth = make(tmp_path, audio=True, fps=25)
    row = probe_video(path)
    assert row["status"] == "ok" and row["error"] == "" and row["error_type"] == ""
    assert row["video_id"] == video_id_for(path) and row["uri"] == path
    assert (row["container"], row["codec"]) == ("mp4", "h264")
    assert (row["width"], row["height"], row["rotation"]) == (128, 96, 0)
    assert row["fps"] == pytest.approx(25) and row["vfr"] is False
    assert row["num_frames"] == truth["num_frames"] == 60
    assert row["duration_s"] == pytest.approx(60 / 25, abs=0.01)
    assert row["has_audio"] is True and row["size_bytes"] == Path(path).stat().st_size
    table_from_rows([schema_row(row)], VIDEOS_SCHEMA)  # types fit the table


@pytest.mark.parametrize("rotation,shown", [(90, (96, 128)), (-90, (96, 128)), (180, (128, 96))])
def test_rotation_gives_displayed_size(tmp_path, rotation, shown):
    path, _ = make(tmp_path, rotation=rotation)
    row = probe_video(path)
    assert (row["rotation"], (row["width"], row["height"])) == (rotation, shown)


def test_vfr_detected_and_frames_counted(tmp_path):
    path, truth = make(tmp_path, scenes=[Scene(30), Scene(30)], vfr_drop_every=3)
    row = probe_video(path)
    assert row["vfr"] is True and row["num_frames"] == truth["num_frames"] == 40
    assert row["duration_s"] == pytest.approx(2.5, abs=0.05)
    assert probe_video(make(tmp_path, "cfr.mp4")[0])["vfr"] is False


EXPECTED_ERRORS = {
    "zero-byte": ("zero_byte", "zero-byte file"),
    "random-bytes": ("InvalidDataError", "cannot open: invalid data found when processing input"),
    "text": ("InvalidDataError", "(corrupt or not a media file)"),
    "truncated": ("truncated", "truncated: "),
    "audio-only": ("no_video_stream", "not a video: no video stream (audio only)"),
    "1x1": ("too_small", "too small: 1x1 pixels"),
}


def test_every_bad_input_is_a_failed_row(tmp_path):
    kinds = write_bad_inputs(tmp_path)
    for name, kind in kinds.items():
        row = probe_video(str(tmp_path / name))
        code, words = EXPECTED_ERRORS[kind]
        assert row["status"] == "failed", name
        assert (row["error_stage"], row["error_type"]) == ("probe", code), name
        assert words in row["error"], (name, row["error"])
        table_from_rows([schema_row(row)], VIDEOS_SCHEMA)


def test_header_that_lists_missing_frames_does_not_survive(tmp_path):
    path, _ = make(tmp_path, faststart=True)
    data = bytearray(Path(path).read_bytes())
    # mdat size 0 means "to the end of the file": the box walk passes, only the index knows.
    mdat = data.index(b"mdat") - 4
    data[mdat : mdat + 4] = struct.pack(">I", 0)
    Path(path).write_bytes(bytes(data[: int(len(data) * 0.5)]))
    row = probe_video(path)
    assert row["status"] == "failed" and row["error_type"] == "truncated"
    assert "header lists 60 frames but only" in row["error"]


def test_missing_file(tmp_path):
    row = probe_video(str(tmp_path / "nope.mp4"))
    assert row["status"] == "failed" and "file not found" in row["error"]


def test_stage_batch_contract(tmp_path):
    good, _ = make(tmp_path)
    bad = str(tmp_path / "empty.mp4")
    Path(bad).write_bytes(b"")
    batch = {"uri": np.array([good, bad], dtype=object), "video_id": np.array(["a", "b"]),
             "partition": np.array([3, 3])}
    out = ProbeStage()(batch)
    assert set(out) >= {*VIDEOS_SCHEMA.names, "error_stage", "error_type", "partition"}
    assert all(len(v) == 2 for v in out.values())
    assert list(out["video_id"]) == ["a", "b"] and list(out["partition"]) == [3, 3]
    assert list(out["status"]) == ["ok", "failed"]
    assert list(out["error_stage"]) == ["", "probe"]
    rows = [{k: out[k][i] for k in VIDEOS_SCHEMA.names} for i in range(2)]
    assert table_from_rows(rows, VIDEOS_SCHEMA).num_rows == 2


# ----------------------------------------------------------------------------- real media
@needs_media
@pytest.mark.parametrize("name,want", [
    ("pyscenedetect/issue-134-rotate.mp4", dict(width=544, height=1280, rotation=-90,
                                                num_frames=240, has_audio=True)),
    ("decord/video_90.mov", dict(width=320, height=568, rotation=-90, num_frames=3)),
    ("moviepy/fire2.mp4", dict(width=1280, height=720, rotation=180, num_frames=25)),
    ("pyscenedetect/goldeneye-vfr-drop3.mp4", dict(vfr=True, num_frames=160, width=1280)),
    ("pyscenedetect/testvideo.mp4", dict(vfr=False, num_frames=720, height=720)),
    ("decord/unordered.mov", dict(num_frames=4, width=50)),
    ("pyscenedetect/delayed_start.mp4", dict(num_frames=24, codec="mpeg4")),
    ("pyscenedetect/issue-236-split-copy.mkv", dict(container="matroska", num_frames=48)),
])
def test_real_media_facts(name, want):
    row = probe_video(str(MEDIA / name))
    assert row["status"] == "ok", row["error"]
    assert {k: row[k] for k in want} == want


@needs_media
def test_no_duration_webm_gets_a_real_duration():
    row = probe_video(str(MEDIA / "moviepy/no_duration.webm"))
    assert row["status"] == "ok" and row["codec"] == "vp9" and row["container"] == "webm"
    assert row["duration_s"] == pytest.approx(74 / (15000 / 1001), rel=0.02)
    assert row["num_frames"] == 74


@needs_media
@pytest.mark.parametrize("name", ["decord/corrupted.mp4", "moviepy/bitmap.mp4",
                                  "pyscenedetect/delayed_start.mp4", "decord/unordered.mov",
                                  "decord/video_90.mov", "moviepy/fire2.mp4",
                                  "moviepy/no_duration.webm", "decord/flipping_a_pancake.mkv"])
def test_awkward_media_gives_a_clean_row(name):
    row = probe_video(str(MEDIA / name))
    assert row["status"] in ("ok", "failed")
    if row["status"] == "failed":
        assert row["error"] and row["error_stage"] == "probe"
    else:
        assert row["num_frames"] > 0 and row["duration_s"] > 0 and row["fps"] > 0
    table_from_rows([schema_row(row)], VIDEOS_SCHEMA)
