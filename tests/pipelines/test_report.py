"""The curate report: a self-contained page whose images exist, decode and load in a real headless browser."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from infra.config import load_config
from tests.browser import chromium, loaded_images, needs_chromium
from infra.videogen import Scene, write_video
from infra import tables as partitions
from pipelines.report import _label, write_report
from infra.schema import CLIPS_SCHEMA, FAILURES_SCHEMA, VIDEOS_SCHEMA, table_from_rows

ROOT = Path(__file__).resolve().parents[2]
FPS = 24


@pytest.fixture
def curated(tmp_path):
    """A curate output over one real video: 3 clips (one dropped), one failed input."""
    src = tmp_path / "src" / "v.mp4"
    src.parent.mkdir()
    truth = write_video(src, [Scene(30), Scene(30, kind="black"), Scene(36, kind="text")], fps=FPS, width=160, height=96)
    clips = []
    for n, (a, b) in enumerate(truth["scene_ranges"]):
        clips.append(dict(clip_id=f"aa11-{a:07d}", video_id="aa11", uri=str(src), start_frame=a, end_frame=b,
                          start_s=a / FPS, end_s=b / FPS, num_frames=b - a, fps=float(FPS), width=160, height=96,
                          split_method="content", motion=[0.4, 0.0, 0.1][n], static=n == 1, sharpness=[800.0, 0.0, 5000.0][n],
                          brightness=[60.0, 0.0, 50.0][n], black_ratio=[0.0, 1.0, 0.0][n], washed_ratio=0.0,
                          text_ratio=[0.0, 0.0, 0.2][n], keep=n != 1, drop_reason=None if n != 1 else "max_black_ratio"))
    a, b = truth["scene_ranges"][0]  # a clip the safety filter dropped: listed, never pictured
    clips.append(dict(clips[0], clip_id=f"aa11-{a + 1:07d}", start_frame=a + 1, nsfw_score=0.93, keep=False,
                      drop_reason="unsafe"))
    videos = [dict(video_id="aa11", uri=str(src), status="ok"), dict(video_id="bb22", uri="bad.mp4", status="failed")]
    failures = [dict(uri="bad.mp4", video_id="bb22", stage="probe", error_type="InvalidDataError", message="not a video")]
    out = tmp_path / "out"
    tables = {"videos": table_from_rows(videos, VIDEOS_SCHEMA), "clips": table_from_rows(clips, CLIPS_SCHEMA),
              "failures": table_from_rows(failures, FAILURES_SCHEMA)}
    partitions.write_partition(str(out), "00000-x", tables, "fp", {})
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["curate.filters.min_motion=0.05"])
    (out / "config.yaml").write_text(cfg.to_yaml())
    return out, cfg, src


def _referenced(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_report_is_self_contained_and_every_png_decodes(curated):
    out, cfg, src = curated
    uri = write_report(str(out), cfg)
    page = Path(uri).read_text()
    srcs = _referenced(page)
    assert {"funnel.png", "hist_motion.png", "hist_duration_s.png", "resolution.png", "kept.png", "dropped.png"} <= set(srcs)
    for s in srcs:
        assert "/" not in s and not s.startswith(("http", "file:"))  # relative, beside index.html
        img = cv2.imread(str(out / "report" / s))
        assert img is not None and min(img.shape[:2]) > 50, s
    assert "max_black_ratio" in page and "probe" in page
    assert "aa11-0000001 (nsfw 0.93, not shown)" in page
    # Thumbnails are cached: with the source gone and decoding off, the sheets still show them.
    thumbs = sorted(p.name for p in (out / "report" / "thumbs").glob("*.png"))
    assert thumbs == ["aa11-0000000.png", "aa11-0000030.png", "aa11-0000060.png"]
    kept_before = cv2.imread(str(out / "report" / "kept.png"))
    src.unlink()
    write_report(str(out), cfg, decode=False)
    assert np.array_equal(cv2.imread(str(out / "report" / "kept.png")), kept_before)


def test_labels_show_scores_reason_and_caption():
    row = {"clip_id": "abcdef-0000012", "motion": 0.25, "sharpness": 812.0, "text_ratio": 0.1, "aesthetic": None,
           "drop_reason": "max_text_ratio", "caption": "a red square slides to the right"}
    label = _label(row)
    assert "mot 0.25" in label and "sharp 812" in label and "dropped: max_text_ratio" in label
    assert "a red square slides" in label and "aes" not in label


@needs_chromium
def test_report_renders_in_headlesschromium(curated, tmp_path, cli_env):
    out, _, _ = curated
    res = subprocess.run([sys.executable, "-m", "infra.cli", "report", str(out)], capture_output=True, text=True,
                         cwd=ROOT, env=cli_env, timeout=120)  # the CLI path; it reads OUTPUT/config.yaml
    assert res.returncode == 0, res.stderr[-2000:]
    index = out / "report" / "index.html"
    shot = tmp_path / "shot.png"
    chromium(tmp_path, "--window-size=1200,2400", f"--screenshot={shot}", index.as_uri())
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (2400, 1200)
    non_white = (img.min(axis=2) < 200).mean()
    assert non_white > 0.05 and img.std() > 20, (non_white, img.std())  # charts and sheets drawn, not a blank page
    dom = chromium(tmp_path, "--dump-dom", index.as_uri()).stdout
    srcs = _referenced(index.read_text())
    assert dom.count("<img") == len(srcs) >= 6
    # Every image loads in the browser (a page beside the report loads each src and records its width).
    loaded = loaded_images(index, tmp_path)
    assert set(loaded) == set(srcs) and all(v != "ERR" and int(v) > 50 for v in loaded.values()), loaded


DEDUP_MANIFEST = {"job": "dedup", "run": "00001-abc", "component_steps": 2,
                  "counts": {"inputs": 1, "parts_new": 1, "parts_skipped": 6, "clips_read": 50, "dataset_clips": 1200,
                             "pairs": {"perceptual": 3, "semantic": 5}, "clips_in_groups": 120, "groups": 60,
                             "removed": 60, "removed_by_kind": {"perceptual": 30, "semantic": 60},
                             "dataset_kept": 1140},
                  "index": {"perceptual": {"buckets_touched": 40, "index_files_read": 38, "index_files": 64}}}
BALANCE_MANIFEST = {"job": "balance", "counts": {"inputs": 2, "clips": 415, "clusters": 3, "kept_expected": 140.0},
                    "clusters": {"sizes": [300, 70, 20], "kept_expected": [50.0, 50.0, 20.0],
                                 "keep_prob": [0.1667, 0.714, 1.0], "sample_weight": [0.8, 0.8, 2.0]}}


@needs_chromium
@pytest.mark.parametrize("manifest", [DEDUP_MANIFEST, BALANCE_MANIFEST], ids=["dedup", "balance"])
def test_dedup_and_balance_reports_render_in_headlesschromium(manifest, tmp_path, cli_env):
    out = tmp_path / manifest["job"]
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps(manifest))
    res = subprocess.run([sys.executable, "-m", "infra.cli", "report", str(out)], capture_output=True, text=True,
                         cwd=ROOT, env=cli_env, timeout=120)  # `reelforge report` picks the page by the job
    assert res.returncode == 0, res.stderr[-2000:]
    page = (out / "report" / "index.html").read_text()
    srcs = _referenced(page)
    assert srcs == (["dedup_funnel.png"] if manifest["job"] == "dedup" else ["balance.png"])
    assert ("clips removed" in page and "linked by semantic" in page) if manifest["job"] == "dedup" else \
        ("cluster" in page and "300 / 70 / 20" in page)
    loaded = loaded_images(out / "report" / "index.html", tmp_path)
    assert set(loaded) == set(srcs) and all(v != "ERR" and int(v) > 300 for v in loaded.values()), loaded
