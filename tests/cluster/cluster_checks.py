"""What the cluster tests compare: each job's output on the cluster against the same job's output
on one node (the reference), value for value.

Tables are compared row by row in id order, every column; nothing is excluded, because nothing
in these tables depends on where or when the work ran (timings live in manifests, which are not
compared). Train and tune runs are compared by what training produced: the step, the loss and the
sha of every rank's parameters (`param_sha`); the captioner by its saved weights.
"""

from __future__ import annotations

import json
import math

from infra import storage

TABLES = {  # job -> (output folder, [(table, id column)])
    "curate": ("curated", [("videos", "video_id"), ("clips", "clip_id"), ("failures", "uri")]),
    "caption": ("captioned", [("clips", "clip_id"), ("failures", "clip_id")]),
    "precompute": ("latents", [("latents", "clip_id"), ("failures", "clip_id")]),
}


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def rows(uri: str, key: str) -> list[dict]:
    return sorted(storage.read_table(uri).to_pylist(), key=lambda r: str(r[key]))


def assert_same_table(got_uri: str, want_uri: str, key: str) -> list[dict]:
    """Every row and every column of two Parquet datasets, in `key` order; returns the rows."""
    got, want = rows(got_uri, key), rows(want_uri, key)
    assert len({str(r[key]) for r in got}) == len(got), f"{got_uri}: duplicate {key}s"
    assert [r[key] for r in got] == [r[key] for r in want], f"{got_uri}: other {key}s than {want_uri}"
    for g, w in zip(got, want):
        assert sorted(g) == sorted(w), f"{got_uri}: columns {sorted(g)} != {sorted(w)}"
        diff = [c for c in w if not _same(g[c], w[c])]
        assert not diff, f"{got_uri} {key}={g[key]}: {[(c, g[c], w[c]) for c in diff][:3]}"
    return got


def read_json(uri: str) -> dict:
    return json.loads(storage.read_text(uri))


def _same_run(got: str, want: str) -> dict:
    g, w = read_json(f"{got}/summary.json"), read_json(f"{want}/summary.json")
    for key in ("step", "epoch", "loss", "param_sha", "rows", "steps_per_epoch"):
        assert g[key] == w[key], f"{got}: {key} {g[key]} != {w[key]} (one node)"
    return g


def _same_tune(got: str, want: str) -> None:
    g, w = read_json(f"{got}/tune_summary.json"), read_json(f"{want}/tune_summary.json")
    by_lr = {t["train.lr"]: t for t in w["trials"]}
    assert sorted(t["train.lr"] for t in g["trials"]) == sorted(by_lr)
    for t in g["trials"]:
        ref = by_lr[t["train.lr"]]
        for key in ("status", "steps", "last_loss", "best_loss"):
            assert t[key] == ref[key], f"trial lr={t['train.lr']}: {key} {t[key]} != {ref[key]} (one node)"
        _same_run(f"{got}/runs/{t['trial']}", f"{want}/runs/{ref['trial']}")


def _same_captioner(got: str, want: str) -> None:
    from safetensors.numpy import load

    g, w = load(storage.read_bytes(f"{got}/model.safetensors")), load(storage.read_bytes(f"{want}/model.safetensors"))
    assert sorted(g) == sorted(w)
    diff = [k for k in w if not (g[k].shape == w[k].shape and (g[k] == w[k]).all())]
    assert not diff, f"{got}: weights differ from one node's in {diff[:5]}"
    gs, ws = read_json(f"{got}/train_summary.json"), read_json(f"{want}/train_summary.json")
    assert (gs["steps"], gs["loss"], gs["clips"]) == (ws["steps"], ws["loss"], ws["clips"])


def assert_same_output(job: str, got_root: str, want_root: str) -> None:
    """The job's output under got_root equals the reference's under want_root."""
    if job in TABLES:
        folder, tables = TABLES[job]
        for table, key in tables:
            assert_same_table(f"{got_root}/{folder}/{table}", f"{want_root}/{folder}/{table}", key)
    elif job == "train":
        _same_run(f"{got_root}/train", f"{want_root}/train")
    elif job == "tune":
        _same_tune(f"{got_root}/tune", f"{want_root}/tune")
    else:
        _same_captioner(f"{got_root}/captioner", f"{want_root}/captioner")
