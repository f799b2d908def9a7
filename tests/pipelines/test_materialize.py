"""Materialize: exact frame ranges, fps/size/length limits, one decode per source, names from clip_id."""

from __future__ import annotations

import io
import json

import av
import numpy as np

from infra import storage
from infra.videogen import Scene, read_frame_number, write_video
from pipelines import materialize
from pipelines.materialize import MaterializeStage, clip_file_uri, cut_clips

FPS = 24


def _frames(data: bytes) -> tuple[list[int], float, int, tuple[int, int]]:
    """(frame numbers, average fps, audio streams, (h, w)) of an mp4 in memory."""
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return [read_frame_number(f) for f in frames], float(s.average_rate), len(c.streams.audio), frames[0].shape[:2]


def test_clips_hold_exactly_their_frames(tmp_path):
    src = tmp_path / "src.mp4"
    write_video(src, [Scene(40), Scene(50, kind="static")], fps=FPS, width=160, height=96, audio=True)
    clips = [{"clip_id": "v-0000040", "start_frame": 40, "end_frame": 90},
             {"clip_id": "v-0000005", "start_frame": 5, "end_frame": 29}]
    out = cut_clips(str(src), clips)
    nums, fps, audio, size = _frames(out["v-0000005"])
    assert nums == list(range(5, 29)) and fps == FPS and audio == 0 and size == (96, 160)
    assert _frames(out["v-0000040"])[0] == list(range(40, 90))


def test_fps_short_side_and_max_frames(tmp_path):
    src = tmp_path / "src.mp4"
    write_video(src, [Scene(60)], fps=FPS, width=320, height=192)
    clip = [{"clip_id": "v-0000010", "start_frame": 10, "end_frame": 58}]
    nums, fps, _, size = _frames(cut_clips(str(src), clip, fps=12, short_side=96)["v-0000010"])
    assert nums == list(range(10, 58, 2)) and fps == 12 and size == (96, 160)
    nums, *_ = _frames(cut_clips(str(src), clip, max_frames=7)["v-0000010"])
    assert nums == list(range(10, 17))


def test_rotated_and_vfr_sources(tmp_path):
    rot = tmp_path / "rot.mp4"
    write_video(rot, [Scene(30)], fps=FPS, width=160, height=96, rotation=90)
    data = cut_clips(str(rot), [{"clip_id": "r", "start_frame": 0, "end_frame": 30}])["r"]
    with av.open(io.BytesIO(data)) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert frame.shape[:2] == (160, 96)  # portrait, as displayed
    vfr = tmp_path / "vfr.mp4"
    write_video(vfr, [Scene(48)], fps=FPS, width=160, height=96, vfr_drop_every=3)
    nums, fps, *_ = _frames(cut_clips(str(vfr), [{"clip_id": "f", "start_frame": 6, "end_frame": 30}])["f"])
    # Constant rate out: a dropped source frame is covered by the one shown before it.
    assert fps == FPS and len(nums) == 24 and nums[0] == 6
    assert nums == [i + 6 if (i + 7) % 3 else i + 5 for i in range(24)]


def test_stage_decodes_each_source_once_and_names_files_by_clip_id(tmp_path, monkeypatch):
    src = tmp_path / "Holiday Vidéo (final) #2.mp4"
    write_video(src, [Scene(30), Scene(30), Scene(30)], fps=FPS, width=160, height=96)
    opened = []
    real_open = av.open

    def counting_open(f, *a, **k):
        if a[:1] != ("w",) and k.get("format") != "mp4":
            opened.append(f)
        return real_open(f, *a, **k)

    monkeypatch.setattr(materialize.av, "open", counting_open)
    out = tmp_path / "out"
    clips = [{"clip_id": f"abcd-{s:07d}", "start_frame": s, "end_frame": s + 30, "target": clip_file_uri(str(out), f"abcd-{s:07d}")}
             for s in (0, 30, 60)]
    stage = MaterializeStage(fps=None)
    res = stage({"uri": np.array([str(src)], dtype=object), "clips": np.array([json.dumps(clips)], dtype=object)})
    uris = json.loads(res["clip_uris"][0])
    assert len(opened) == 1 and res["error"][0] is None
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4"))
    assert files == [f"clip_files/ab/abcd-{s:07d}.mp4" for s in (0, 30, 60)]
    assert all("Holiday" not in u for u in uris.values())
    assert _frames((out / files[1]).read_bytes())[0] == list(range(30, 60))


def test_unreadable_source_leaves_clips_without_files(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    clips = [{"clip_id": "x-0000000", "start_frame": 0, "end_frame": 10, "target": str(tmp_path / "o.mp4")}]
    res = MaterializeStage().materialize_row({"uri": str(bad), "clips": json.dumps(clips)})
    assert json.loads(res["clip_uris"]) == {"x-0000000": None} and res["error"]


def test_writes_whole_objects_to_s3(tmp_path, s3_bucket):
    src = tmp_path / "src.mp4"
    write_video(src, [Scene(24)], fps=FPS, width=160, height=96)
    target = clip_file_uri(f"{s3_bucket}/cur", "ffee-0000000")
    clips = [{"clip_id": "ffee-0000000", "start_frame": 0, "end_frame": 24, "target": target}]
    res = MaterializeStage().materialize_row({"uri": str(src), "clips": json.dumps(clips)})
    assert json.loads(res["clip_uris"]) == {"ffee-0000000": target}
    assert target == f"{s3_bucket}/cur/clip_files/ff/ffee-0000000.mp4"
    assert _frames(storage.read_bytes(target))[0] == list(range(24))
