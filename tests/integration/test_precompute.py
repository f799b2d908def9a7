"""`reelforge precompute` end to end on Ray: real clips -> tiny VAE + tiny text encoder -> shards on S3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from infra import storage
from infra.config import load_config
from infra.videogen import Scene, write_video
from pipelines.runner import run_curate
from pipelines.runner_precompute import run_precompute
from training.data import latents_files, read_latents, row_tensors
from training.models.text import build_text_encoder
from training.models.vae import load_vae
from training.plan import read_footers, row_groups

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _cfg(*sets):
    return load_config(ROOT / "configs" / "tiny.yaml",
                       ["precompute.resolutions=[32, 64]", "precompute.frame_counts=[5, 9]",
                        "precompute.shard_rows=3", *sets])


@pytest.fixture(scope="module")
def captioned(ray_local, tmp_path_factory):
    """A curate output whose clips got captions (ground truth text), plus one clip whose source is gone."""
    d = tmp_path_factory.mktemp("pre")
    (d / "src").mkdir()
    write_video(d / "src" / "a.mp4", [Scene(30, color=(230, 40, 40)), Scene(24, kind="static")], fps=24,
                width=128, height=96, seed=1)
    write_video(d / "src" / "b.mp4", [Scene(40, direction="left"), Scene(30)], fps=24, width=160, height=96, seed=2)
    write_video(d / "src" / "c.mp4", [Scene(36), Scene(30)], fps=24, width=96, height=128, seed=3)
    run_curate(load_config(ROOT / "configs" / "tiny.yaml"), str(d / "src"), str(d / "curated"))
    clips = storage.read_table(str(d / "curated" / "clips"))
    captions = [f"a clip number {i} with moving shapes" for i in range(clips.num_rows)]
    table = clips.append_column("caption", pa.array(captions))
    gone = d / "gone.mp4"
    gone.write_bytes(b"")  # a source that became unreadable after curate
    extra = table.slice(0, 1).to_pylist()[0] | {"clip_id": "ffffffffffffffff-0000000", "uri": str(gone)}
    table = pa.concat_tables([table, pa.Table.from_pylist([extra], schema=table.schema)])
    storage.write_table(table, str(d / "captioned" / "clips" / "part-00000.parquet"))
    return d, table


def test_precompute_to_s3_round_trips_latents_and_text(captioned, s3_bucket, tmp_path):
    d, clips = captioned
    out, vae_uri = f"{s3_bucket}/latents-run", f"{s3_bucket}/vae-train/vae"
    load_vae("tiny").save_pretrained(tmp_path / "vae")  # precompute.vae: a save_pretrained dir on S3
    storage.upload_dir(str(tmp_path / "vae"), vae_uri)
    manifest = run_precompute(_cfg(f"precompute.vae={vae_uri}"), str(d / "captioned"), out)
    table = read_latents(out)
    assert set(table["vae"].to_pylist()) == {vae_uri}
    failures = storage.read_table(f"{out}/failures")
    dropped = sum(manifest["counts"]["dropped"].values())
    assert table.num_rows + failures.num_rows + dropped == clips.num_rows
    assert failures.to_pylist()[0]["clip_id"] == "ffffffffffffffff-0000000"
    assert failures.to_pylist()[0]["stage"] == "precompute:decode"
    assert table.num_rows >= 4 and len(set(table["clip_id"].to_pylist())) == table.num_rows
    assert len(set(table["bucket"].to_pylist())) >= 2  # landscape, square and portrait sources
    assert manifest["bytes"]["per_clip"] > 0 and manifest["bytes"]["projection"]["10M_clips_GB"] > 0
    assert sum(manifest["counts"]["rows_per_bucket"].values()) == table.num_rows
    # one bucket per shard, named in its footer: training plans from footers alone (training/plan.py)
    files = latents_files(out)
    groups = row_groups(files, read_footers(files))
    assert all(len(g.buckets) == 1 for g in groups) and sum(g.rows for g in groups) == table.num_rows

    vae, text = load_vae("tiny").eval(), build_text_encoder("tiny")
    for row in table.to_pylist()[:3]:
        t = row_tensors(row)
        assert list(t["latent"].shape) == row["latent_shape"] and t["latent"].dtype == torch.bfloat16
        with torch.no_grad():
            video = vae.decode(t["latent"].float()[None])  # (1, 3, T, H, W)
        assert tuple(video.shape[2:]) == (row["num_frames"], row["height"], row["width"])
        assert row["bucket"] == "x".join(str(s) for s in row["latent_shape"][1:])
        fresh, mask, _ = text.encode([row["caption"]])
        n = int(mask[0].sum())
        assert n == t["text_len"]
        assert torch.equal(t["text_tokens"], fresh[0, :n].to(torch.bfloat16))


def test_resume_skips_complete_shards_and_keeps_bytes(captioned, tmp_path):
    d, _ = captioned
    out = str(tmp_path / "latents")
    first = run_precompute(_cfg(), str(d / "captioned"), out)
    assert first["resume"]["partitions"] >= 2  # shard_rows=3 cuts several shards
    before = read_latents(out)
    again = run_precompute(_cfg(), str(d / "captioned"), out)
    assert again["resume"]["skipped_complete"] == again["resume"]["partitions"] == first["resume"]["partitions"]
    assert read_latents(out).equals(before)
    # a keep probability of 0 for every bucket drops everything, counted with its reason
    none = run_precompute(_cfg("precompute.resolutions=[32]", "precompute.frame_counts=[5]",
                               "precompute.aspect_ratios=['1:1']", "precompute.keep_prob={'2x4x4': 0.0}"),
                          str(d / "captioned"), str(tmp_path / "z"))
    assert none["counts"]["encoded"] == 0 and none["counts"]["dropped"].get("bucket_keep_prob", 0) > 0


def test_cli_refuses_uncaptioned_clips(captioned, tmp_path):
    d, _ = captioned
    res = subprocess.run([sys.executable, "-m", "infra.cli", "precompute", "--clips", str(d / "curated"),
                          "--output", str(tmp_path / "x"), "--config", "configs/tiny.yaml"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "reelforge caption" in res.stderr
