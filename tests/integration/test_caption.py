"""`reelforge caption` end to end: a real curate output, real Ray actors, the tiny captioner, S3."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from captioning.models import CaptionerNotAvailable, is_placeholder
from captioning.prompts import DEFAULT_PROMPT
from captioning.runner import run_caption
from infra import storage
from infra.config import load_config
from infra.videogen import Scene, write_video
from pipelines.runner import run_curate

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
CAPTION_COLUMNS = ["caption", "caption_model", "caption_prompt", "caption_score", "caption_tokens"]


def _cfg(*sets):
    return load_config(ROOT / "configs" / "tiny.yaml", ["curate.partition_size=2", *sets])


def _parts(root) -> dict[str, pa.Table]:
    """{file name: table} of a clips table, one entry per part file."""
    return {Path(u).name: storage.read_table(u) for u in storage.list_files(storage.join(str(root), "clips"))}


def _clips(root) -> pa.Table:
    return storage.read_table(storage.join(str(root), "clips")).sort_by("clip_id")


@pytest.fixture(scope="module")
def curated(ray_local, tmp_path_factory):
    """A curate output: 3 videos x 2 scenes (96x128) and one broken file, in 2 partitions."""
    d = tmp_path_factory.mktemp("caption_input")
    src = d / "src"
    src.mkdir()
    for i in range(3):
        write_video(src / f"v{i}.mp4", [Scene(24), Scene(24, kind="static")], fps=24, width=128, height=96, seed=i)
    (src / "broken.mp4").write_bytes(b"not a video: curate records it as a failure")
    manifest = run_curate(_cfg(), str(src), str(d / "curated"))
    assert manifest["counts"]["clips"] == 6 and manifest["counts"]["failed"] == 1
    return d / "curated"


@pytest.fixture(scope="module")
def captioned(curated):
    """The caption job over `curated` into its default output root."""
    return curated / "captioned", run_caption(_cfg(), str(curated))


def test_every_kept_clip_gets_a_caption_and_keeps_its_columns(curated, captioned):
    out, manifest = captioned
    assert out == curated / "captioned"
    inputs, outputs = _parts(curated), _parts(out)
    assert outputs.keys() == inputs.keys() and len(inputs) == 2  # one output part per input part
    for name, table in inputs.items():
        # every input row and column, in the input's order and types, then the caption columns
        assert outputs[name].column_names == table.column_names + CAPTION_COLUMNS
        assert outputs[name].select(table.column_names).equals(table), name
    all_clips = _clips(out).to_pylist()
    clips = [c for c in all_clips if c.get("keep") is not False]  # no keep value counts as kept
    assert len(all_clips) == 6 and len(clips) >= 4
    for c in clips:
        assert isinstance(c["caption"], str) and c["caption"].strip(), c
        assert c["caption_model"] == "tiny-random" and c["caption_prompt"] == DEFAULT_PROMPT
        assert c["caption_tokens"] > 0 and c["caption_score"] is None  # no CLIP model configured
    assert len({c["caption"] for c in clips}) > 1, "the captions do not depend on the clip"
    assert storage.read_table(str(out / "failures")).num_rows == 0
    c = manifest["counts"]
    assert (c["clips_in"], c["kept"], c["captioned"], c["failed"]) == (6, len(clips), len(clips), 0)
    assert c["output_tokens"] == sum(r["caption_tokens"] for r in clips)
    assert manifest["placeholder"] is True and manifest["model"] == "tiny-random"
    assert manifest["throughput"]["output_tokens_per_s"] > 0 and manifest["throughput"]["clips_per_s"] > 0
    assert manifest["resume"] == {"partitions": 2, "skipped_complete": 0, "processed": 2, "stale_parts_removed": 0}
    assert json.loads((out / "manifest.json").read_text())["counts"] == c
    assert "model: tiny-random" in (out / "config.yaml").read_text()
    assert len(list((out / "_markers").glob("*.json"))) == 2
    assert is_placeholder(out / "_models" / "tiny-captioner")


def test_same_seed_gives_the_same_captions(curated, captioned, tmp_path):
    again = run_caption(_cfg(), str(curated), str(tmp_path / "again"))
    assert again["counts"]["captioned"] == captioned[1]["counts"]["captioned"]
    assert _clips(tmp_path / "again").equals(_clips(captioned[0]))


def test_rerun_skips_complete_partitions_and_redoes_a_partial_one(curated, captioned, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(captioned[0], out)
    first = json.loads((out / "manifest.json").read_text())
    # resources are not part of the fingerprint: a different prep share still reuses everything
    again = run_caption(_cfg("caption.prep_cpus=0.5"), str(curated), str(out))
    assert again["resume"]["skipped_complete"] == again["resume"]["partitions"] == 2
    assert again["counts"] == first["counts"]
    assert _clips(out).equals(_clips(captioned[0]))
    # a crash after one part file was written but before its marker: that partition is redone
    marker = sorted((out / "_markers").glob("*.json"))[1]
    marker.unlink()
    (out / "clips" / f"part-{marker.stem}.parquet").write_bytes(b"half a parquet file")
    partial = run_caption(_cfg(), str(curated), str(out))
    assert (partial["resume"]["skipped_complete"], partial["resume"]["processed"]) == (1, 1)
    assert partial["counts"] == first["counts"]
    assert _clips(out).equals(_clips(captioned[0]))


def test_bad_sources_fail_per_clip_and_not_kept_rows_pass_through(curated, captioned, tmp_path):
    """After curate, v1's file is corrupted and v2's deleted; a `keep` column drops two clips;
    v0's first clip was materialized to its own file (`clip_uri`)."""
    root = tmp_path / "root"
    (root / "clips").mkdir(parents=True)
    corrupt, gone = tmp_path / "media" / "v1.mp4", tmp_path / "media" / "v2.mp4"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage " * 500)
    moved = {"v1.mp4": str(corrupt), "v2.mp4": str(gone)}
    clip_file = tmp_path / "media" / "v0-first-clip.mp4"
    not_kept = set()
    for name, table in _parts(curated).items():
        rows = table.to_pylist()
        for r in rows:
            base = Path(r["uri"]).name
            r["uri"] = moved.get(base, r["uri"])
            first = r["start_frame"] == 0
            r["keep"] = not ((base == "v0.mp4" and not first) or (base == "v1.mp4" and first))
            r["drop_reason"] = None if r["keep"] else "motion"
            if not r["keep"]:
                not_kept.add(r["clip_id"])
            if base == "v0.mp4" and first:
                # The clip file starts with the clip's frames; the range in the source is moved
                # past its end, so only reading the clip file gives this clip a caption.
                shutil.copy(r["uri"], clip_file)
                r["clip_uri"] = str(clip_file)
                r["start_frame"], r["end_frame"] = r["start_frame"] + 1000, r["end_frame"] + 1000
                r["start_s"], r["end_s"] = r["start_frame"] / r["fps"], r["end_frame"] / r["fps"]
        schema = table.schema
        for field in (pa.field("keep", pa.bool_()), pa.field("drop_reason", pa.string()),
                      pa.field("clip_uri", pa.string())):
            schema = schema if field.name in schema.names else schema.append(field)
        storage.write_table(pa.Table.from_pylist(rows, schema=schema), str(root / "clips" / name))
    manifest = run_caption(_cfg(), str(root))
    out = root / "captioned"

    for name, table in _parts(root).items():
        assert _parts(out)[name].select(table.column_names).equals(table), name
    clips = {c["clip_id"]: c for c in _clips(out).to_pylist()}
    assert len(not_kept) == 2
    for cid in not_kept:  # untouched: no caption, no model, not attempted (so not a failure either)
        assert all(clips[cid][k] is None for k in CAPTION_COLUMNS), clips[cid]
    failures = storage.read_table(str(out / "failures")).to_pylist()
    failed_ids = {f["clip_id"] for f in failures}
    expect_failed = {cid for cid, c in clips.items() if c["uri"] in moved.values()} - not_kept
    assert failed_ids == expect_failed and len(failures) == 3
    for f in failures:
        assert f["stage"] == "caption:frames" and f["message"].strip() and f["uri"] in moved.values()
        assert f["video_id"] == clips[f["clip_id"]]["video_id"] and clips[f["clip_id"]]["caption"] is None
    (good,) = set(clips) - not_kept - failed_ids  # the job went on past the bad files
    assert clips[good]["clip_uri"] == str(clip_file)  # and captioned the clip file's frames
    assert clips[good]["caption"] == {c["clip_id"]: c for c in _clips(captioned[0]).to_pylist()}[good]["caption"]
    c = manifest["counts"]
    assert (c["clips_in"], c["kept"], c["not_kept"], c["captioned"], c["failed"]) == (6, 4, 2, 1, 3)
    assert c["failed_by_stage"] == {"caption:frames": 3}


def test_s3_in_and_out(curated, captioned, s3_bucket):
    for path in sorted(curated.rglob("*")):
        rel = path.relative_to(curated).as_posix()
        if path.is_file() and not rel.startswith("captioned/"):
            storage.write_bytes(f"{s3_bucket}/curated/{rel}", path.read_bytes())
    manifest = run_caption(_cfg(), f"{s3_bucket}/curated")
    out = f"{s3_bucket}/curated/captioned"
    assert manifest["output"] == out and manifest["counts"] == captioned[1]["counts"]
    remote = storage.read_table(storage.join(out, "clips")).sort_by("clip_id")
    cols = ["clip_id", *CAPTION_COLUMNS]
    assert remote.select(cols).equals(_clips(captioned[0]).select(cols))
    for name in ("manifest.json", "config.yaml", "_models/tiny-captioner/reelforge_model.json"):
        assert storage.exists(f"{out}/{name}"), name
    assert len(storage.list_files(f"{out}/_markers")) == 2
    again = run_caption(_cfg(), f"{s3_bucket}/curated")  # reuses the saved model: nothing to redo
    assert again["resume"]["skipped_complete"] == 2


def test_a_model_that_is_not_there_fails_before_any_work(curated, tmp_path):
    with pytest.raises(CaptionerNotAvailable, match="no-such-org/no-such-captioner.*HF_HUB_OFFLINE"):
        run_caption(_cfg(), str(curated), str(tmp_path / "out"), model="no-such-org/no-such-captioner")
    with pytest.raises(CaptionerNotAvailable, match="does not exist"):
        run_caption(_cfg(), str(curated), str(tmp_path / "out"), model=str(tmp_path / "no-model-dir"))
    assert not (tmp_path / "out" / "_markers").exists()


def test_cli_captions_and_warns_about_placeholders(ray_local, curated, captioned, tmp_path, cli_env):
    # joins the test session's Ray (as a job on a running cluster would) instead of starting one
    address = ray_local.get_runtime_context().gcs_address
    res = subprocess.run([sys.executable, "-m", "infra.cli", "caption", "--clips", str(curated),
                          "--output", str(tmp_path / "cli"), "--config", "configs/tiny.yaml",
                          "--set", "curate.partition_size=2", "--set", f"ray.address={address}"],
                         cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "CAPTIONS ARE PLACEHOLDERS" in res.stdout and "CAPTIONS ARE PLACEHOLDERS" in res.stderr
    assert "captioned" in res.stdout and "output tokens/s" in res.stdout
    assert _clips(tmp_path / "cli").equals(_clips(captioned[0]))
    missing = subprocess.run([sys.executable, "-m", "infra.cli", "caption", "--clips", str(tmp_path / "nothing")],
                             cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no clips table" in missing.stderr
