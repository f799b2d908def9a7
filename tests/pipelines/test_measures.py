"""Measures on real generated clips built to have the property each measure looks for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infra.config import MeasuresConfig
from infra.videogen import Scene, read_frame_number, write_video
from pipelines.measures import MeasureStage, build_stage, pack_frames, stage_kinds
from pipelines.measures.aesthetic import AestheticHead, load_head
from pipelines.measures.embed import ClipMeasure, phash
from infra.video import sample_video
from pipelines.measures.frames import FramesStage
from pipelines.measures.motion import MotionMeasure
from pipelines.measures.ocr import TextMeasure
from pipelines.measures.quality import QualityMeasure

FPS = 24
KINDS = ["moving", "static", "black", "blur", "text", "noise"]
TINY_CLIP = {  # a 1-layer open_clip config keeps the actor tests fast
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _clips(truth: dict) -> list[dict]:
    return [{"clip_id": f"c-{a:07d}", "start_frame": a, "end_frame": b, "fps": float(FPS)}
            for a, b in truth["scene_ranges"]]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """One video, one scene per kind (no frame-number strip: it would be motion and text itself)."""
    path = tmp_path_factory.mktemp("measures") / "kinds.mp4"
    truth = write_video(path, [Scene(30, kind=k) for k in KINDS], fps=FPS, width=160, height=96,
                        draw_frame_number=False, seed=3)
    anchors, nexts = sample_video(str(path), _clips(truth), k=4, short_side=96)
    return path, truth, anchors, nexts


def _by_kind(values: list[dict], key: str) -> dict:
    return {k: v[key] for k, v in zip(KINDS, values)}


def test_frames_are_sampled_inside_each_clip_by_time(tmp_path):
    path = tmp_path / "numbered.mp4"
    truth = write_video(path, [Scene(40), Scene(50)], fps=FPS, width=160, height=96, vfr_drop_every=4)
    clips = _clips(truth)
    anchors, nexts = sample_video(str(path), clips, k=4, short_side=400)  # no resize: numbers stay readable
    assert anchors.shape == nexts.shape == (2, 4, 96, 160, 3)
    for c, clip_a, clip_n in zip(clips, anchors, nexts):
        a = [read_frame_number(f) for f in clip_a]
        n = [read_frame_number(f) for f in clip_n]
        assert all(c["start_frame"] <= x < c["end_frame"] for x in a + n), (c, a, n)
        assert a == sorted(a) and a[0] <= c["start_frame"] + 1 and a[-1] >= c["end_frame"] - 2
        assert all(0 < abs(y - x) <= 2 for x, y in zip(a, n))  # the neighbour shown, across a dropped frame


def test_frames_downscale_rotation_and_pyav_fallback(tmp_path, monkeypatch):
    path = tmp_path / "rot.mp4"
    truth = write_video(path, [Scene(30)], fps=FPS, width=160, height=96, rotation=90)
    a, _ = sample_video(str(path), _clips(truth), k=3, short_side=48)
    assert a.shape == (1, 3, 80, 48, 3)  # displayed portrait, short side 48
    from infra import video as frames_mod

    def no_decord(*args, **kwargs):
        raise RuntimeError("decord unavailable")

    monkeypatch.setattr(frames_mod, "_DecordReader", no_decord)
    b, _ = sample_video(str(path), _clips(truth), k=3, short_side=48)
    assert b.shape == a.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 3


def test_motion_tells_static_from_moving(scenes):
    _, _, anchors, nexts = scenes
    values = MotionMeasure(static_motion=0.05).measure(anchors, nexts)
    motion, static = _by_kind(values, "motion"), _by_kind(values, "static")
    assert motion["moving"] > 0.1 and motion["static"] < 0.02 and motion["black"] < 0.02
    assert motion["moving"] > 10 * motion["static"]
    assert static["static"] and static["black"] and not static["moving"] and not static["noise"]


def test_quality_sharp_vs_blurred_and_dark_vs_bright(scenes):
    _, _, anchors, _ = scenes
    values = QualityMeasure(black_luma=20, washed_luma=235).measure(anchors)
    sharp, bright, black = (_by_kind(values, k) for k in ("sharpness", "brightness", "black_ratio"))
    assert sharp["moving"] > 10 * sharp["blur"] and sharp["noise"] > sharp["moving"]
    assert bright["black"] < 5 < 40 < bright["moving"] and black["black"] == 1.0
    assert all(black[k] == 0.0 for k in KINDS if k != "black")
    white = np.full((1, 2, 32, 32, 3), 250, np.uint8)
    white[0, 0, :2] = 0  # a thin dark bar does not stop a frame being washed out
    washed = QualityMeasure().measure(white)[0]
    assert washed["washed_ratio"] == 1.0 and washed["black_ratio"] == 0.0


def test_text_ratio_with_the_real_ocr_model(scenes):
    _, _, anchors, _ = scenes
    ratios = _by_kind(TextMeasure(side=256).measure(anchors), "text_ratio")
    assert ratios["text"] > 0.08, ratios
    assert all(ratios[k] < 0.01 for k in KINDS if k != "text"), ratios


def test_phash_is_stable_and_tells_scenes_apart(scenes):
    _, _, anchors, _ = scenes
    hashes = [int(phash(c), 16) for c in anchors]
    assert phash(anchors[0]) == phash(anchors[0].copy()) and len(phash(anchors[0])) == 16
    dist = [[bin(a ^ b).count("1") for b in hashes] for a in hashes]
    assert min(d for i, row in enumerate(dist) for j, d in enumerate(row) if i != j) > 8, dist


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("clipcfg")
    cfg = d / "rf-tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(1)
    head = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
    state = {f"layers.{k}": v for k, v in head.state_dict().items()}  # LAION's key layout
    from safetensors.torch import save_file

    save_file(state, str(d / "head.safetensors"))
    torch.save(state, d / "head.pth")
    return str(cfg), d, head


def test_aesthetic_head_loads_both_formats_and_matches(tiny_clip):
    _, d, head = tiny_clip
    x = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    want = head.eval()(x)[:, 0]
    for name in ("head.safetensors", "head.pth"):
        got = load_head(str(d / name))(x)
        assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="chain"):
        AestheticHead.from_state_dict({"a.weight": torch.zeros(4, 16), "b.weight": torch.zeros(1, 3)})


def test_clip_measure_embeds_and_scores(tiny_clip, scenes):
    cfg, d, _ = tiny_clip
    _, _, anchors, _ = scenes
    m = ClipMeasure(cfg, None, str(d / "head.safetensors"))
    out = m.measure(anchors)
    emb = np.array([o["embedding"] for o in out], dtype=np.float32)
    assert emb.shape == (len(KINDS), 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-2)
    assert all(np.isfinite(o["aesthetic"]) for o in out)
    again = ClipMeasure(cfg, None, None).measure(anchors[:2])  # another worker: same seeded tower
    assert np.allclose(again[0]["embedding"], out[0]["embedding"], atol=1e-3) and "aesthetic" not in again[0]


def test_stages_update_clips_in_video_rows(scenes):
    path, truth, _, _ = scenes
    clips = _clips(truth)
    batch = {"uri": np.array([str(path), "missing.mp4", str(path)], dtype=object),
             "status": np.array(["ok", "ok", "failed"], dtype=object),
             "clips": np.array([json.dumps(clips), json.dumps(clips[:1]), "[]"], dtype=object)}
    out = FramesStage(frames_per_clip=2, short_side=64)(batch)
    assert out["frames"][0] is not None and out["frames"][2] is None
    assert out["status"][1] == "failed" and out["error_stage"][1] == "measure:frames" and out["clips"][1] == "[]"
    m = MeasuresConfig()
    assert stage_kinds(m) == ["cheap", "ocr"]
    res = build_stage("cheap", m)(out)
    got = json.loads(res["clips"][0])
    assert len(got) == len(clips) and {"motion", "static", "sharpness", "black_ratio", "phash"} <= set(got[0])
    assert got[KINDS.index("black")]["black_ratio"] == 1.0


def test_a_measure_that_raises_fails_only_its_video():
    class Broken:
        name = "broken"

        def measure(self, anchors, nexts):
            raise RuntimeError("model exploded")

    frames = pack_frames(np.zeros((1, 2, 8, 8, 3), np.uint8))
    row = {"uri": "a.mp4", "status": "ok", "clips": json.dumps([{"clip_id": "x"}]), "frames": frames}
    out = MeasureStage([Broken()]).measure_row(row)
    assert out["status"] == "failed" and out["error_stage"] == "measure:broken" and "exploded" in out["error"]
