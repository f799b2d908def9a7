"""Curate part 2 end to end on Ray and S3: measures, filters, dedup, materialized clips, report, refilter."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import av
import pytest
import torch

from infra import storage
from infra.config import load_config
from infra.videogen import Scene, write_video
from pipelines.refilter import run_refilter
from pipelines.runner import run_curate

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """a.mp4 (moving, text, black, static), an exact copy of it, b.mp4 (other content), a broken file."""
    d = tmp_path_factory.mktemp("part2")
    src = d / "src"
    src.mkdir()
    write_video(src / "a.mp4", [Scene(36), Scene(30, kind="text"), Scene(30, kind="black"), Scene(36, kind="static")],
                fps=24, width=160, height=96, draw_frame_number=False, seed=1)
    shutil.copy(src / "a.mp4", src / "a copy.mp4")
    write_video(src / "b.mp4", [Scene(40, direction="down"), Scene(36, kind="blur")], fps=24, width=160, height=96,
                draw_frame_number=False, seed=2)
    (src / "broken.mp4").write_bytes(b"not a video")
    (d / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 1)
    torch.save({"layers.0.weight": head.weight.data, "layers.0.bias": head.bias.data}, d / "head.pth")
    return d


def _cfg(d: Path, *sets):
    return load_config(ROOT / "configs" / "tiny.yaml", [
        f"curate.measures.clip_model={d / 'tiny-clip.json'}", f"curate.measures.aesthetic_weights={d / 'head.pth'}",
        "curate.measures.allow_random_weights=true",  # a random tiny open_clip tower
        "curate.dedup.method=phash", "curate.filters.max_text_ratio=0.05", "curate.materialize.enabled=true",
        "curate.materialize.fps=12", "curate.materialize.short_side=64", *sets])


def _clips(root: str) -> list[dict]:
    return sorted(storage.read_table(storage.join(root, "clips")).to_pylist(), key=lambda c: c["clip_id"])


def _kind(c: dict) -> str:
    """Which input and scene a clip is: ("a"|"copy"|"b", start frame)."""
    name = Path(c["uri"]).name
    return ("copy" if name == "a copy.mp4" else name[0]) + f"@{c['start_frame']}"


def test_curate_measures_filters_dedups_materializes_and_refilters(ray_local, s3_bucket, inputs, monkeypatch):
    for f in sorted((inputs / "src").iterdir()):
        storage.write_bytes(f"{s3_bucket}/raw/{f.name}", f.read_bytes())
    out = f"{s3_bucket}/cur"
    manifest = run_curate(_cfg(inputs), f"{s3_bucket}/raw", out)
    clips = _clips(out)
    by = {_kind(c): c for c in clips}
    assert sorted(by) == ["a@0", "a@36", "a@66", "a@96", "b@0", "b@40", "copy@0", "copy@36", "copy@66", "copy@96"]
    for c in clips:  # every measure is in every clip
        assert None not in (c["motion"], c["static"], c["sharpness"], c["brightness"], c["black_ratio"],
                            c["text_ratio"], c["phash"], c["aesthetic"]), c
        assert len(c["embedding"]) == 16
    assert by["a@96"]["static"] and not by["a@0"]["static"] and by["a@36"]["text_ratio"] > 0.05

    # Filters first (black, text), then dedup among what passed: the copy's clips point to a.mp4's
    # or the other way round, decided by clip_id (equal durations), and the same for every scene.
    reasons = {k: c["drop_reason"] for k, c in by.items()}
    assert reasons["a@36"] == reasons["copy@36"] == "max_text_ratio"
    assert reasons["a@66"] == reasons["copy@66"] == "max_black_ratio"
    winner = "a" if by["a@0"]["clip_id"] < by["copy@0"]["clip_id"] else "copy"
    loser = "copy" if winner == "a" else "a"
    for s in (0, 96):
        assert by[f"{winner}@{s}"]["keep"] and by[f"{loser}@{s}"]["drop_reason"] == "duplicate"
        assert by[f"{loser}@{s}"]["dup_of"] == by[f"{winner}@{s}"]["clip_id"]
    assert by["b@0"]["keep"] and by["b@40"]["keep"]
    counts = manifest["counts"]
    assert counts["kept"] == 4 and counts["dropped_by_reason"] == {"max_black_ratio": 2, "max_text_ratio": 2,
                                                                     "duplicate": 2}
    assert counts["inputs"] == 4 and counts["failed"] == 1

    # Kept clips are mp4 files on S3 named by clip_id, at the configured fps and size; dropped have none.
    for c in clips:
        if not c["keep"]:
            assert c["clip_uri"] is None
            continue
        assert c["clip_uri"].startswith(f"{out}/clip_files/") and c["clip_uri"].endswith(f"/{c['clip_id']}.mp4")
        with av.open(io.BytesIO(storage.read_bytes(c["clip_uri"]))) as f:
            s = f.streams.video[0]
            frames = list(f.decode(s))
            assert float(s.average_rate) == 12 and min(frames[0].width, frames[0].height) == 64
            assert len(frames) == c["num_frames"] // 2
    assert manifest["stages"]["materialize"] == {"kept": 4, "written": 4, "reused": 0, "images": 0, "failed": 0}
    report = storage.read_text(f"{out}/report/index.html")
    assert all(storage.exists(f"{out}/report/{png}") for png in __import__("re").findall(r'src="([^"]+)"', report))

    # --refilter: thresholds re-tuned without decoding anything; the text clips come back (one a dup).
    import decord

    def refuse(*a, **k):
        raise AssertionError("refilter decoded video")

    monkeypatch.setattr(av, "open", refuse)
    monkeypatch.setattr(decord, "VideoReader", refuse)
    res = run_refilter(_cfg(inputs, "curate.filters.max_text_ratio=null"), out)
    assert res["dropped_by_reason"] == {"max_black_ratio": 2, "duplicate": 3}
    again = {_kind(c): c for c in _clips(out)}
    assert again[f"{winner}@36"]["keep"] and again[f"{loser}@36"]["dup_of"] == again[f"{winner}@36"]["clip_id"]
    assert all(again[k]["motion"] == by[k]["motion"] and again[k]["phash"] == by[k]["phash"] for k in by)
    monkeypatch.undo()

    # A re-run with the first config computes nothing, reuses the files and restores the decisions.
    rerun = run_curate(_cfg(inputs), f"{s3_bucket}/raw", out)
    assert rerun["resume"]["skipped_complete"] == rerun["resume"]["partitions"]
    assert rerun["stages"]["materialize"]["reused"] == 4 and rerun["stages"]["materialize"]["written"] == 0
    assert _clips(out) == clips
