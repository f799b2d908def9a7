"""Every job over the bad-input corpus: no crash, no hang, every input accounted for, readable messages."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from infra import storage
from infra.config import load_config
from pipelines.ingest import list_inputs
from pipelines.runner import run_curate

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
# words a person can act on; a raw exception dump has none of these shapes
_BAD_MESSAGE_SIGNS = ("Traceback", "object at 0x", "<class ")


def _cfg(*sets):
    return load_config(ROOT / "configs" / "tiny.yaml", ["curate.decode_timeout_s=60", *sets])


@pytest.fixture(scope="module")
def curated(ray_local, corpus, tmp_path_factory):
    d, kinds = corpus
    out = tmp_path_factory.mktemp("curated-corpus")
    manifest = run_curate(_cfg(), str(d), str(out))
    return d, kinds, out, manifest


def test_curate_accounts_for_every_input(curated):
    d, kinds, out, manifest = curated
    inputs = list_inputs(str(d), load_config(None).curate.extensions)
    videos = storage.read_table(str(out / "videos"))
    failures = storage.read_table(str(out / "failures"))
    ok = videos.filter(pc.equal(videos["status"], "ok"))
    assert videos.num_rows == len(inputs) == manifest["counts"]["inputs"]
    assert ok.num_rows + failures.num_rows == len(inputs)
    assert set(failures["uri"].to_pylist()).isdisjoint(ok["uri"].to_pylist())
    for msg in failures["message"].to_pylist():
        assert len(msg) > 12 and not any(s in msg for s in _BAD_MESSAGE_SIGNS), msg
    by_name = {Path(u).name: r for u, r in zip(videos["uri"].to_pylist(), videos.to_pylist())}
    assert by_name["good.mp4"]["status"] == "ok"
    assert by_name["liar.mp4"]["duration_s"] < 3  # the 3-hour header did not survive
    assert by_name["zero_byte.mp4"]["status"] == "failed" and "zero-byte" in by_name["zero_byte.mp4"]["error"]
    assert all(by_name[n]["status"] == "failed" for n in ("no_moov.mp4", "truncated_10.mp4", "truncated_50.mp4"))


def test_outputs_stay_under_the_output_root(curated):
    _, _, out, _ = curated
    root = os.path.realpath(out)
    for dirpath, _, files in os.walk(out):
        for f in files:
            assert os.path.realpath(os.path.join(dirpath, f)).startswith(root + os.sep)
            assert "evil" not in f and "🎬" not in f  # output names come from ids, never from input names


def test_caption_over_the_corpus_accounts_for_every_clip(curated, tmp_path):
    from captioning.runner import run_caption

    _, _, out, _ = curated
    clips = storage.read_table(str(out / "clips"))
    manifest = run_caption(_cfg(), str(out), str(tmp_path / "cap"))
    captioned = storage.read_table(str(tmp_path / "cap" / "clips"))
    failures = storage.read_table(str(tmp_path / "cap" / "failures"))
    assert captioned.num_rows == clips.num_rows  # every clip row kept (failed ones with no caption)
    kept = captioned.filter(pc.fill_null(captioned["keep"], True)) if "keep" in captioned.column_names else captioned
    with_caption = pc.sum(pc.invert(pc.is_null(kept["caption"]))).as_py()
    assert with_caption + failures.num_rows == kept.num_rows
    assert manifest is not None


def test_precompute_over_the_corpus_accounts_for_every_clip(curated, tmp_path):
    from pipelines.runner_precompute import run_precompute

    _, _, out, _ = curated
    clips = storage.read_table(str(out / "clips"))
    captioned = clips.append_column("caption", pa.array(["a shape moves"] * clips.num_rows))
    storage.write_table(captioned, str(tmp_path / "cap" / "clips" / "part-00000.parquet"))
    m = run_precompute(_cfg("precompute.resolutions=[32]", "precompute.frame_counts=[5]"),
                       str(tmp_path / "cap"), str(tmp_path / "lat"))
    dropped = sum(m["counts"]["dropped"].values())
    assert m["counts"]["encoded"] + m["counts"]["failed"] + dropped == clips.num_rows
