"""Storage faults during a real job: throttling is retried; an endpoint that dies mid-job gives a clear
error and never a partial output that looks complete; the re-run resumes to the same tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import storage
from infra.config import load_config
from infra.videogen import Scene, write_video
from infra import tables as partitions
from pipelines.runner import run_curate

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TABLES = ("videos", "clips", "failures")


def _cfg():
    return load_config(ROOT / "configs/tiny.yaml", ["curate.partition_size=2"])


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    src = tmp_path_factory.mktemp("faults-src")
    for i in range(6):
        write_video(src / f"v{i}.mp4", [Scene(30 + i), Scene(30, kind="static")], fps=24, seed=20 + i)
    (src / "broken.mp4").write_bytes(b"nope")
    return src


def _key(root):
    out = {}
    for t in TABLES:
        rows = storage.read_table(storage.join(root, t)).to_pylist()
        cols = sorted(k for k in (rows[0] if rows else {}) if k not in ("uri", "video_id", "clip_id", "dup_of", "clip_uri"))
        out[t] = sorted((Path(r["uri"]).name, *[repr(r[c]) for c in cols]) for r in rows)
    return out


def test_throttled_endpoint_job_completes(ray_local, sources, s3_bucket, faulty_s3, tmp_path):
    faulty_s3.fail_next = 3  # the first three connections get 503 SlowDown
    run_curate(_cfg(), str(sources), f"{s3_bucket}/throttled")
    assert faulty_s3.failed == 3
    run_curate(_cfg(), str(sources), str(tmp_path / "clean"))
    assert _key(f"{s3_bucket}/throttled") == _key(str(tmp_path / "clean"))


def test_endpoint_dies_mid_job_then_resume(ray_local, sources, s3_bucket, faulty_s3, monkeypatch, tmp_path):
    out = f"{s3_bucket}/dies"
    real = partitions.write_partition
    calls = {"n": 0}

    def write_then_die(*args, **kwargs):
        marker = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:  # the endpoint goes dark right after the first commit
            faulty_s3.mode, faulty_s3.fail_next = "drop", 10**9
            storage.configure(endpoint=faulty_s3.endpoint)  # fresh connections meet the outage
        return marker

    monkeypatch.setattr(partitions, "write_partition", write_then_die)
    with pytest.raises(OSError):
        run_curate(_cfg(), str(sources), out)
    monkeypatch.setattr(partitions, "write_partition", real)
    faulty_s3.fail_next = 0
    storage.configure(endpoint=faulty_s3.endpoint)
    # nothing half-written is counted: every marker's part files exist and hold its rows
    markers = [u for u in storage.list_files(f"{out}/_markers")]
    assert len(markers) == 1
    for m in markers:
        pid = Path(m).stem
        for t in TABLES:
            assert storage.exists(partitions.part_uri(out, t, pid))
    again = run_curate(_cfg(), str(sources), out)
    assert again["resume"]["skipped_complete"] == 1
    run_curate(_cfg(), str(sources), str(tmp_path / "clean"))
    assert _key(out) == _key(str(tmp_path / "clean"))
