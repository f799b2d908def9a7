"""Images as one-frame clips: ingest, probe, split, measures, sampling, caption's image path, T=1 buckets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infra.config import load_config
from infra.schema import VIDEOS_SCHEMA
from infra.video import read_image, sample_frames, sample_video
from infra.videogen import Scene, write_image, write_video
from pipelines import ingest
from pipelines.measures import MeasureStage, build_stage
from pipelines.measures.frames import FramesStage
from pipelines.probe import ProbeStage, probe_image
from pipelines.split import SplitStage


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    scene = Scene(1, kind="static", color=(220, 40, 40), bg=(128, 128, 128), shape="circle", textured=False)
    for ext in ("png", "jpg", "webp"):
        write_image(d / f"still.{ext}", scene, width=48, height=32)
    write_video(d / "clip.mp4", [Scene(12)], fps=8, width=48, height=32)
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("not an image")
    (d / "cut.png").write_bytes((d / "still.png").read_bytes()[:60])
    (d / "video.png").write_bytes((d / "clip.mp4").read_bytes())
    (d / "notes.txt").write_text("ignored")
    return d


def test_ingest_lists_images_with_their_media_type(media):
    cfg = load_config(None)
    uris = ingest.list_inputs(str(media), cfg.curate.extensions + cfg.curate.image_extensions)
    names = sorted(u.rsplit("/", 1)[-1] for u in uris)
    assert names == ["clip.mp4", "cut.png", "empty.png", "still.jpg", "still.png", "still.webp", "text.png", "video.png"]
    kinds = {u.rsplit("/", 1)[-1]: ingest.media_type(u, cfg.curate.image_extensions) for u in uris}
    assert kinds["clip.mp4"] == "video" and kinds["still.webp"] == kinds["still.jpg"] == "image"
    assert "clip.mp4" not in [u.rsplit("/", 1)[-1] for u in ingest.list_inputs(str(media), cfg.curate.image_extensions)]


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_probe_image(media, ext):
    row = probe_image(str(media / f"still.{ext}"))
    assert row["status"] == "ok", row["error"]
    assert (row["width"], row["height"], row["num_frames"], row["media_type"]) == (48, 32, 1, "image")
    assert row["container"] == {"jpg": "jpeg"}.get(ext, ext) and row["fps"] is None and row["duration_s"] is None
    assert set(VIDEOS_SCHEMA.names) <= set(row)


@pytest.mark.parametrize("name,code", [("empty.png", "zero_byte"), ("text.png", "not_an_image"),
                                       ("cut.png", "undecodable_image"), ("video.png", "not_an_image"),
                                       ("missing.png", "FileNotFoundError")])
def test_bad_images_become_failure_rows(media, name, code):
    row = probe_image(str(media / name))
    assert row["status"] == "failed" and row["error_stage"] == "probe" and row["error_type"] == code
    assert row["error"]


def _rows(media, names):
    batch = {"uri": np.array([str(media / n) for n in names], dtype=object),
             "media_type": np.array(["image" if not n.endswith(".mp4") else "video" for n in names], dtype=object)}
    return ProbeStage()(batch)


def test_split_keeps_an_image_whole_and_measures_skip_motion(media):
    probed = _rows(media, ["still.png", "clip.mp4"])
    split = SplitStage(min_scene_len=3, min_clip_s=0.1)(probed)
    clips = [json.loads(c) for c in split["clips"]]
    assert clips[0] == [{**clips[0][0], "start_frame": 0, "end_frame": 1, "num_frames": 1, "fps": None,
                         "start_s": None, "end_s": None, "split_method": "image", "media_type": "image"}]
    assert clips[1] and all(c["media_type"] == "video" for c in clips[1])
    m = load_config(None).curate.measures
    framed = FramesStage(frames_per_clip=3, short_side=32, pairs=True)(split)
    measured = MeasureStage(build_stage("cheap", m).measures)(framed)
    image_clip, video_clip = (json.loads(c)[0] for c in measured["clips"])
    assert image_clip.get("motion") is None and image_clip.get("static") is None  # an image has no motion
    assert image_clip["sharpness"] is not None and image_clip["phash"]
    assert video_clip["motion"] is not None and video_clip["motion"] > 0


def test_samplers_serve_an_image_as_one_frame(media):
    img = read_image(str(media / "still.png"))
    assert img.shape == (32, 48, 3) and tuple(img[0, 0]) == (128, 128, 128)
    frames = sample_frames(str(media / "still.png"), num_frames=4, size=(16, 16), crop=True)
    assert frames.shape == (4, 16, 16, 3) and (frames == frames[:1]).all()
    anchors, nexts = sample_video(str(media / "still.jpg"), [{"start_frame": 0, "end_frame": 1, "fps": None}], k=3,
                                  short_side=16)
    assert anchors.shape == (1, 1, 16, 24, 3) and nexts is None


def test_caption_stage_gives_an_image_one_frame(media):
    from captioning.captioner import CaptionStage

    seen = []

    class Fake:
        def generate(self, frames, prompts, **kwargs):
            seen.extend(len(f) for f in frames)
            return ["a red circle."] * len(frames), [3] * len(frames)

    stage = CaptionStage("fake", batch_size=4)
    stage.captioner = Fake()
    frames = np.zeros((2, 6, 8, 8, 3), np.uint8)
    out = stage({"frames": frames, "media_type": np.array(["image", "video"], dtype=object),
                 "clip_id": np.array(["a", "b"], dtype=object)})
    assert seen == [1, 6] and list(out["caption"]) == ["a red circle."] * 2


def test_images_get_one_frame_buckets():
    from pipelines import precompute

    buckets = precompute.image_buckets([32], ["1:1"], multiple=8)
    assert [(b.frames, b.height, b.width) for b in buckets] == [(1, 32, 32)]
    bucket, _ = precompute.assign_bucket(48, 32, 1, buckets)
    assert bucket.name(4, 4) == "1x8x8"
    videos = precompute.make_buckets([32], [9], ["1:1"], multiple=8)
    assert precompute.assign_bucket(48, 32, 1, videos)[0] is None  # a video bucket never takes an image
