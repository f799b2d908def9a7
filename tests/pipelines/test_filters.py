"""Filters move clips between kept and dropped exactly as configured; --refilter never decodes video."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra import storage
from infra.config import FiltersConfig, load_config
from infra import tables as partitions
from pipelines.filters import FILTERS, REASONS, apply_filters, drop_counts
from pipelines.refilter import run_refilter
from infra.schema import CLIPS_SCHEMA, table_from_rows

ROOT = Path(__file__).resolve().parents[2]


def _clip(i: int, **kw) -> dict:
    base = dict(clip_id=f"v{i // 10}-{i:07d}", video_id=f"v{i // 10}", uri=f"/nowhere/v{i // 10}.mp4",
                start_frame=0, end_frame=48, start_s=0.0, end_s=2.0, num_frames=48, fps=24.0, width=320,
                height=180, split_method="content", motion=1.0, static=False, sharpness=500.0, brightness=120.0,
                black_ratio=0.0, washed_ratio=0.0, text_ratio=0.0, aesthetic=5.0, phash=f"{i * 0x9E3779B97F4A7C15 % 2**64:016x}")
    return {**base, **kw}


def _table(rows):
    return table_from_rows(rows, CLIPS_SCHEMA)


# Each row fails exactly one threshold of THRESHOLDS, named in the third column.
CASES = [
    (dict(nsfw_score=0.9), "max_nsfw"), (dict(end_s=0.4), "min_duration_s"), (dict(end_s=30.0), "max_duration_s"),
    (dict(width=200, height=100), "min_short_side"), (dict(width=200, height=500), "min_aspect"),
    (dict(width=1200, height=200), "max_aspect"), (dict(fps=5.0), "min_fps"), (dict(fps=120.0), "max_fps"),
    (dict(black_ratio=0.75), "max_black_ratio"), (dict(washed_ratio=1.0), "max_washed_ratio"),
    (dict(brightness=10.0), "min_brightness"), (dict(brightness=250.0), "max_brightness"),
    (dict(sharpness=3.0), "min_sharpness"), (dict(motion=0.01), "min_motion"), (dict(motion=40.0), "max_motion"),
    (dict(text_ratio=0.3), "max_text_ratio"), (dict(aesthetic=2.0), "min_aesthetic"),
]
THRESHOLDS = FiltersConfig(max_nsfw=0.5, min_duration_s=1.0, max_duration_s=20.0, min_short_side=144, min_aspect=0.5,
                           max_aspect=3.0, min_fps=12.0, max_fps=60.0, max_black_ratio=0.5, max_washed_ratio=0.5,
                           min_brightness=20.0, max_brightness=240.0, min_sharpness=50.0, min_motion=0.1,
                           max_motion=20.0, max_text_ratio=0.1, min_aesthetic=4.5)


def test_each_filter_drops_exactly_its_clips():
    assert [k for _, k in CASES] == [k for k, _, _ in FILTERS]  # every filter is covered
    rows = [_clip(0)] + [_clip(i + 1, **kw) for i, (kw, _) in enumerate(CASES)]
    keep, reason = apply_filters(_table(rows), THRESHOLDS)
    assert keep.tolist() == [True] + [False] * len(CASES)
    assert reason.tolist() == [None] + [REASONS.get(k, k) for _, k in CASES]  # max_nsfw drops as "unsafe"
    # With every threshold off nothing is dropped; a missing measure never fails a filter.
    keep, reason = apply_filters(_table(rows), FiltersConfig(max_black_ratio=None, max_washed_ratio=None, max_nsfw=None))
    assert keep.all() and (reason == None).all()  # noqa: E711
    none = _clip(99, motion=None, aesthetic=None, text_ratio=None)
    assert apply_filters(_table([none]), THRESHOLDS)[0].tolist() == [True]


def test_the_first_failing_filter_is_the_reason_and_counts_follow():
    rows = [_clip(1, end_s=0.4, motion=0.0, text_ratio=0.9), _clip(2, motion=0.0, text_ratio=0.9), _clip(3, text_ratio=0.9)]
    keep, reason = apply_filters(_table(rows), THRESHOLDS)
    assert reason.tolist() == ["min_duration_s", "min_motion", "max_text_ratio"]
    assert drop_counts(list(reason) + ["duplicate"]) == {"min_duration_s": 1, "min_motion": 1, "max_text_ratio": 1,
                                                         "duplicate": 1}
    keep, reason = apply_filters(_table(rows), FiltersConfig(max_text_ratio=0.95))  # re-tuned: all back
    assert keep.all()


@pytest.fixture
def curated(tmp_path):
    """An output root as curate leaves it (two partitions), whose source videos do not exist."""
    out = tmp_path / "out"
    parts = [[_clip(i) for i in range(5)], [_clip(10 + i) for i in range(5)]]
    parts[0][1].update(text_ratio=0.3)  # text
    parts[0][2].update(motion=0.01, static=True)  # static
    parts[1][0].update(phash=parts[0][0]["phash"], end_s=1.0)  # a shorter duplicate of the first clip
    for n, rows in enumerate(parts):
        partitions.write_partition(str(out), f"0000{n}-x", {"clips": _table(rows)}, "fp", {"clips": len(rows)})
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["curate.report=false"])
    (out / "config.yaml").write_text(cfg.to_yaml())
    (out / "manifest.json").write_text(json.dumps({"counts": {"clips": 10}, "config": cfg.to_dict()}))
    return out, cfg


def _no_decoding(monkeypatch):
    import av
    import decord

    def refuse(*a, **k):
        raise AssertionError("refilter decoded video")

    monkeypatch.setattr(av, "open", refuse)
    monkeypatch.setattr(decord, "VideoReader", refuse)


def test_refilter_retunes_keep_without_decoding(curated, monkeypatch):
    out, cfg = curated
    _no_decoding(monkeypatch)
    before = storage.read_table(str(out / "clips"))
    res = run_refilter(load_config(ROOT / "configs" / "tiny.yaml", ["curate.report=false", "curate.filters.max_text_ratio=0.1",
                                                                    "curate.filters.min_motion=0.1"]), str(out))
    t = storage.read_table(str(out / "clips")).to_pylist()
    by_id = {r["clip_id"]: r for r in t}
    assert by_id["v0-0000001"]["drop_reason"] == "max_text_ratio" and by_id["v0-0000002"]["drop_reason"] == "min_motion"
    assert by_id["v1-0000010"]["drop_reason"] == "duplicate" and by_id["v1-0000010"]["dup_of"] == "v0-0000000"
    assert res["kept"] == 7 and res["dropped_by_reason"] == {"min_motion": 1, "max_text_ratio": 1, "duplicate": 1}
    measures = ["motion", "sharpness", "text_ratio", "phash", "aesthetic"]
    assert before.select(measures).equals(storage.read_table(str(out / "clips")).select(measures))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["dropped_by_reason"]["max_text_ratio"] == 1
    assert manifest["config"]["curate"]["filters"]["min_motion"] == 0.1

    # Thresholds loosened again: the text clip comes back; an unchanged re-run rewrites nothing.
    loose = load_config(ROOT / "configs" / "tiny.yaml", ["curate.report=false", "curate.filters.min_motion=0.1"])
    assert run_refilter(loose, str(out))["parts_rewritten"] == 1
    mtimes = [os.stat(p).st_mtime_ns for p in sorted((out / "clips").glob("part-*"))]
    assert run_refilter(loose, str(out))["parts_rewritten"] == 0
    assert mtimes == [os.stat(p).st_mtime_ns for p in sorted((out / "clips").glob("part-*"))]
    assert {r["clip_id"]: r["keep"] for r in storage.read_table(str(out / "clips")).to_pylist()}["v0-0000001"]


def test_cli_refilter_uses_the_outputs_config(curated, cli_env):
    out, _ = curated
    exe = [sys.executable, "-m", "infra.cli", "curate", "--refilter", "--output", str(out)]
    res = subprocess.run(exe + ["--set", "curate.filters.max_text_ratio=0.2"], capture_output=True, text=True,
                         cwd=ROOT, env=cli_env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "'max_text_ratio': 1" in res.stdout and "'duplicate': 1" in res.stdout
    reasons = storage.read_table(str(out / "clips"))["drop_reason"].to_pylist()
    assert reasons.count("max_text_ratio") == 1
    bad = subprocess.run(exe[:-1] + [str(out / "nothing-here")], capture_output=True, text=True, cwd=ROOT,
                         env=cli_env, timeout=120)
    assert bad.returncode == 2 and "no clips table" in bad.stderr


def test_thresholds_are_not_in_the_resume_fingerprint_and_config_is_checked():
    from infra.config import ConfigError
    from pipelines.runner import RECOMPUTE_FREE

    base = load_config(None, [])
    retuned = load_config(None, ["curate.filters.min_motion=0.5", "curate.dedup.min_cosine=0.9",
                                 "curate.materialize.enabled=true"])
    measured = load_config(None, ["curate.measures.short_side=64"])
    fp = base.fingerprint("curate", exclude=RECOMPUTE_FREE)
    assert retuned.fingerprint("curate", exclude=RECOMPUTE_FREE) == fp  # re-applied, never recomputed
    assert measured.fingerprint("curate", exclude=RECOMPUTE_FREE) != fp
    assert base.fingerprint("curate") != retuned.fingerprint("curate")  # exclude leaves the config intact
    with pytest.raises(ConfigError, match="aesthetic_weights needs clip_model"):
        load_config(None, ["curate.measures.aesthetic_weights=head.safetensors"])
    with pytest.raises(ConfigError, match="curate.filters.min_motoin"):
        load_config(None, ["curate.filters.min_motoin=1"])
