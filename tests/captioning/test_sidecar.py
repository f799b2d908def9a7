"""captioning.sidecar: existing captions found per clip (scene sidecars, whole-file .txt, manifests)
and the caption job's step that fills the clips table from them."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from captioning.sidecar import (apply_existing_captions, best_scene, existing_caption, manifest_caption,
                                read_sidecar, sidecar_caption)
from infra.schema import FAILURES_SCHEMA

SCENES = [
    {"start_frame": 0, "end_frame": 24, "start_s": 0.0, "end_s": 1.0, "caption": "a red square moves left"},
    {"start_frame": 24, "end_frame": 40, "start_s": 1.0, "end_s": 40 / 24, "caption": "a blue circle moves up"},
    {"start_frame": 40, "end_frame": 72, "start_s": 40 / 24, "end_s": 3.0, "caption": "a green triangle moves down"},
]


@pytest.fixture
def videos(tmp_path):
    """a.mp4 with a per-scene JSON sidecar, b.mp4 with a whole-file .txt, c.mp4 with neither."""
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.mp4").write_bytes(b"not decoded by these tests")
    (tmp_path / "a.json").write_text(json.dumps(SCENES))
    (tmp_path / "b.txt").write_text("a white dot bounces\n")
    read_sidecar.cache_clear()
    return tmp_path


def test_a_clip_takes_the_scene_it_overlaps_most(videos):
    uri = str(videos / "a.mp4")
    assert sidecar_caption(uri, start_frame=0, end_frame=24) == "a red square moves left"
    # a detector that cut one frame late, or early: the overlap still names the right scene
    assert sidecar_caption(uri, start_frame=25, end_frame=40) == "a blue circle moves up"
    assert sidecar_caption(uri, start_frame=23, end_frame=41) == "a blue circle moves up"
    # seconds when the clip has no frame numbers; a clip spanning a cut takes the larger share
    assert sidecar_caption(uri, start_s=1.6, end_s=2.9) == "a green triangle moves down"
    assert sidecar_caption(uri, start_s=0.2, end_s=1.2) == "a red square moves left"
    assert sidecar_caption(uri, start_s=5.0, end_s=6.0) is None  # past the last scene
    with pytest.raises(ValueError, match="start_s"):
        best_scene(SCENES)


def test_txt_captions_the_whole_file_and_no_sidecar_is_none(videos):
    assert sidecar_caption(str(videos / "b.mp4"), start_s=3.0, end_s=4.0) == "a white dot bounces"
    assert sidecar_caption(str(videos / "c.mp4"), start_s=0.0, end_s=1.0) is None


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_manifest_maps_uri_and_clip_id_to_captions(tmp_path, fmt):
    table = pa.table({"uri": ["/v/a.mp4", "/v/b.mp4", None], "clip_id": [None, None, "vid-0000024"],
                      "caption": ["a whole file", "another file", "just this clip"]})
    path = tmp_path / f"captions.{fmt}"
    _write(table, path)
    assert manifest_caption(str(path), "/v/a.mp4") == "a whole file"
    assert manifest_caption(str(path), "/v/a.mp4", "vid-0000024") == "just this clip"  # clip_id first
    assert manifest_caption(str(path), "/v/zzz.mp4") is None
    row = {"uri": "/v/b.mp4", "clip_id": "x", "start_s": 0.0, "end_s": 1.0}
    assert existing_caption(row, "manifest", str(path)) == ("another file", "manifest")
    bad = tmp_path / f"bad.{fmt}"
    _write(pa.table({"path": ["x"]}), bad)
    with pytest.raises(ValueError, match="needs a 'caption' column"):
        manifest_caption(str(bad), "x")


def _write(table: pa.Table, path) -> None:
    if path.suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)


def _partition(videos, model_captions):
    """What partition_tables hands the step: clips with caption columns, no failures yet."""
    uris = [str(videos / "a.mp4"), str(videos / "a.mp4"), str(videos / "b.mp4"), str(videos / "c.mp4"),
            str(videos / "c.mp4")]
    clips = pa.table({
        "clip_id": [f"c{i}" for i in range(5)], "video_id": ["a", "a", "b", "c", "c"], "uri": uris,
        "start_frame": [0, 40, 0, 0, 24], "end_frame": [24, 72, 24, 24, 48],
        "start_s": [0.0, 40 / 24, 0.0, 0.0, 1.0], "end_s": [1.0, 3.0, 1.0, 1.0, 2.0],
        "keep": [True, True, True, True, False],
        "caption": model_captions, "caption_model": ["m" if c else None for c in model_captions],
    })
    failures = FAILURES_SCHEMA.empty_table()
    return {"clips": clips, "failures": failures}, {"clips_in": 5, "kept": 4 if any(model_captions) else 0,
                                                   "failed_by_stage": {}, "failed_by_type": {}}


def test_sidecar_only_fills_captions_and_fails_clips_without_one(videos):
    tables, counts = apply_existing_captions(*_partition(videos, [None] * 5), "sidecar", None, "tiny-random")
    clips = tables["clips"].to_pylist()
    assert [c["caption"] for c in clips] == ["a red square moves left", "a green triangle moves down",
                                             "a white dot bounces", None, None]
    assert [c["caption_source"] for c in clips] == ["sidecar"] * 3 + [None, None]
    assert "caption_model_text" not in tables["clips"].column_names
    failures = tables["failures"].to_pylist()
    assert [(f["clip_id"], f["stage"], f["error_type"]) for f in failures] == [
        ("c3", "caption:existing", "NoExistingCaption")]  # c4 is not kept: not attempted, not failed
    assert (counts["kept"], counts["captioned"], counts["captioned_sidecar"]) == (4, 3, 3)
    assert counts["failed_by_type"] == {"NoExistingCaption": 1}


def test_sidecar_plus_model_keeps_both_texts(videos):
    model = ["vlm says a", "vlm says b", "vlm says c", "vlm says d", None]
    tables, counts = apply_existing_captions(*_partition(videos, model), "sidecar+model", None, "tiny-random")
    clips = tables["clips"].to_pylist()
    assert [c["caption"] for c in clips] == ["a red square moves left", "a green triangle moves down",
                                             "a white dot bounces", "vlm says d", None]
    assert [c["caption_source"] for c in clips] == ["sidecar", "sidecar", "sidecar", "tiny-random", None]
    assert [c["caption_model_text"] for c in clips] == model
    assert tables["failures"].num_rows == 0 and counts["captioned"] == 4 and counts["kept"] == 4


def test_a_malformed_sidecar_fails_its_clips_not_the_job(videos):
    (videos / "c.json").write_text(json.dumps({"not": "a list"}))
    tables, counts = apply_existing_captions(*_partition(videos, [None] * 5), "sidecar", None, "m")
    failures = tables["failures"].to_pylist()
    assert [(f["clip_id"], f["error_type"]) for f in failures] == [("c3", "ValueError")]
    assert "expected a list of scenes" in failures[0]["message"]
    assert counts["captioned"] == 3
