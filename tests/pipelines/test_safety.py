"""The safety measure with the real NudeNet weights the `nudenet` wheel ships: real images this test
draws and encodes, the synthetic world's clips, and the `max_nsfw` filter's "unsafe" drops."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pytest

from infra.config import WorldConfig, load_config
from infra.video import sample_video
from infra.world import write_world, world_clips
from pipelines.filters import apply_filters, drop_counts
from pipelines.measures.safety import SafetyMeasure, model_path

FPS = 8
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def measure():
    m = SafetyMeasure()
    m.setup()
    return m


def drawn_figure(side: int = 160, bg=(200, 200, 200)) -> np.ndarray:
    """A crude skin-toned figure (ellipses and discs, blurred): no photograph, but the detector's
    'exposed' classes respond to it, so the filter can be shown dropping a clip for real."""
    img = np.full((side, side, 3), bg, np.uint8)
    c, s = side // 2, side / 320
    skin, dark = (224, 172, 138), (150, 90, 80)
    cv2.ellipse(img, (c, int(c + 40 * s)), (int(90 * s), int(120 * s)), 0, 0, 360, skin, -1)
    cv2.circle(img, (c, int(c - 90 * s)), int(45 * s), skin, -1)
    for dx in (-35, 35):
        cv2.circle(img, (int(c + dx * s), int(c + 10 * s)), int(25 * s), (214, 160, 125), -1)
        cv2.circle(img, (int(c + dx * s), int(c + 10 * s)), max(1, int(6 * s)), dark, -1)
    return cv2.GaussianBlur(img, (0, 0), 5 * s)


def _encode(path, frames: list[np.ndarray]) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def test_the_wheel_ships_the_model_and_it_scores_real_frames(measure, tmp_path):
    assert model_path().endswith("320n.onnx")
    rng = np.random.default_rng(0)
    plain = [np.zeros((96, 96, 3), np.uint8), rng.integers(0, 255, (96, 128, 3), dtype=np.uint8),
             np.full((120, 160, 3), (40, 90, 200), np.uint8)]
    plain_scores = measure.detector.scores(np.stack([cv2.resize(p, (128, 96)) for p in plain]))
    figure = drawn_figure()
    assert plain_scores.max() < 0.1 and measure.detector.scores(figure[None])[0] > 0.4, plain_scores
    # The same figure as an encoded clip, sampled the way curate's frames stage samples it.
    video = tmp_path / "figure.mp4"
    _encode(video, [np.roll(figure, i, axis=1) for i in range(16)] + [np.full((160, 160, 3), (40, 90, 200), np.uint8)] * 16)
    clips = [{"clip_id": "f-0000000", "start_frame": 0, "end_frame": 16, "fps": float(FPS)},
             {"clip_id": "f-0000016", "start_frame": 16, "end_frame": 32, "fps": float(FPS)}]
    anchors, _ = sample_video(str(video), clips, k=3, short_side=160, pairs=False)
    scores = [r["nsfw_score"] for r in measure.measure(anchors)]
    assert scores[0] > 0.3 and scores[1] < 0.1, scores


def test_max_nsfw_drops_with_reason_unsafe_before_any_other_filter():
    t = pa.table({"start_s": [0.0, 0.0, 0.0, 0.0], "end_s": [2.0, 2.0, 0.1, 2.0],
                  "nsfw_score": [0.9, 0.1, 0.95, None], "black_ratio": [0.0, 0.0, 0.0, 1.0]})
    cfg = load_config(None, ["curate.filters.min_duration_s=0.5"]).curate.filters
    keep, reason = apply_filters(t, cfg)
    assert list(reason) == ["unsafe", None, "unsafe", "max_black_ratio"]  # a missing score never fails
    assert drop_counts(reason) == {"unsafe": 2, "max_black_ratio": 1}
    assert cfg.max_nsfw == 0.5


def test_every_clip_of_the_synthetic_world_passes(measure, tmp_path):
    write_world(WorldConfig(videos=12, eval_videos=0, two_shapes=0.5, sizes=["64x64", "96x64"]), tmp_path)
    by_video: dict[str, list[dict]] = {}
    for r in world_clips(tmp_path):
        by_video.setdefault(r["uri"], []).append(r)
    scores = []
    for uri, clips in by_video.items():
        anchors, _ = sample_video(uri, clips, k=3, short_side=96, pairs=False)
        scores += [r["nsfw_score"] for r in measure.measure(anchors)]
    threshold = load_config(None).curate.filters.max_nsfw
    assert len(scores) > 30 and max(scores) < threshold, max(scores)


@pytest.mark.slow
def test_curate_drops_the_figure_as_unsafe_and_never_pictures_it(ray_local, s3_bucket, tmp_path):
    """The safety actor stage on Ray, every table on S3: the drawn figure's clip is dropped as unsafe,
    the plain clip is kept, and the report lists the first without a thumbnail."""
    from infra import storage
    from pipelines.runner import run_curate

    src = tmp_path / "src"
    src.mkdir()
    _encode(src / "figure.mp4", [np.roll(drawn_figure(), i, axis=1) for i in range(16)]
            + [np.full((160, 160, 3), (40, 90, 200), np.uint8)] * 16)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["safety.enabled=true", "curate.filters.max_nsfw=0.3",
                                                      "curate.measures.text=false"])
    out = f"{s3_bucket}/cur"
    m = run_curate(cfg, str(src), out)
    clips = storage.read_table(f"{out}/clips").to_pylist()
    assert m["counts"]["dropped_by_reason"].get("unsafe") == 1 and len(clips) == 2
    unsafe = next(c for c in clips if c["drop_reason"] == "unsafe")
    assert unsafe["nsfw_score"] > 0.3 and all(c["keep"] for c in clips if c is not unsafe)
    page = storage.read_text(f"{out}/report/index.html")
    thumbs = storage.list_files(f"{out}/report/thumbs")
    assert f"{unsafe['clip_id']} (nsfw" in page and not any(unsafe["clip_id"] in t for t in thumbs) and thumbs
