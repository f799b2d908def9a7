"""`reelforge balance` on a real local Ray and the S3 endpoint: concepts found by k-means, weights that
even them out under a cap, resume, and precompute honouring the weights and a duplicates table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from infra import storage
from infra.config import load_config
from infra.schema import DUPLICATES_SCHEMA, table_from_rows
from pipelines.balance import run_balance
from pipelines.runner_precompute import plan_clips

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SIZES = (300, 60, 15)  # a dominant concept (talking heads), a common one, a rare one


def _write_concepts(root: str, seed: int, sizes=SIZES) -> list[str]:
    rng = np.random.default_rng(seed)
    centres = np.eye(len(sizes), 32, dtype=np.float32) * 3
    ids, emb = [], []
    for c, n in enumerate(sizes):
        ids += [f"c{c}s{seed}-{i:07d}" for i in range(n)]
        emb.append(centres[c] + 0.3 * rng.standard_normal((n, 32)).astype(np.float32))
    e = np.concatenate(emb)
    t = pa.table({"clip_id": ids, "keep": np.ones(len(ids), bool), "caption": ["a clip"] * len(ids),
                  "start_frame": np.zeros(len(ids), np.int64), "end_frame": np.full(len(ids), 24, np.int64),
                  "width": np.full(len(ids), 64, np.int32), "height": np.full(len(ids), 64, np.int32),
                  "fps": np.full(len(ids), 8.0), "uri": ["unused.mp4"] * len(ids),
                  "embedding": pa.array(list(e.astype(np.float16)), pa.list_(pa.float16()))})
    storage.write_table(t, storage.join(root, "clips", "part-00000.parquet"))
    return ids


def test_balance_evens_concepts_and_precompute_honours_it(ray_local, s3_bucket, cli_env):
    outs = [f"{s3_bucket}/curate{i}" for i in range(2)]
    ids = [c for i, out in enumerate(outs) for c in _write_concepts(out, i, SIZES if i == 0 else (20, 10, 5))]
    dedup = f"{s3_bucket}/dedup"  # a dedup output removing 20 clips of the dominant concept
    gone = [c for c in ids if c.startswith("c0s0")][:20]
    storage.write_table(table_from_rows([{"clip_id": c, "group_id": "c0s0-0000299", "kept": False} for c in gone],
                                        DUPLICATES_SCHEMA), f"{dedup}/duplicates/part-00000.parquet")
    storage.write_text(f"{dedup}/manifest.json", json.dumps({"job": "dedup", "run": "r1", "finished": "t"}))
    sets = ["balance.clusters=3", "balance.cap_per_cluster=50", "balance.partitions=3", f"selection.duplicates={dedup}"]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", sets)
    dst = f"{s3_bucket}/balance"
    m = run_balance(cfg, outs, dst)
    assert sorted(m["clusters"]["sizes"]) == [20, 70, 300]  # 320 - 20 duplicates, 70, 20: the concepts
    w = storage.read_table(f"{dst}/weights")
    assert w.num_rows == len(ids) - 20 and not set(gone) & set(w["clip_id"].to_pylist())
    by = {c: (s, k, x) for c, s, k, x in zip(w["clip_id"].to_pylist(), w["cluster_size"].to_pylist(),
                                            w["keep_prob"].to_pylist(), w["sample_weight"].to_pylist())}
    big, rare = by["c0s0-0000299"], by["c2s0-0000000"]
    assert big[:2] == (300, pytest.approx(50 / 300)) and rare[:2] == (20, 1.0)
    assert 50 * big[2] == pytest.approx(20 * rare[2])  # after the cap, each concept is sampled alike

    # Re-running resumes: every partition is complete, no Ray work, the same table.
    res = subprocess.run([sys.executable, "-m", "infra.cli", "balance", "--input", outs[0], "--input", outs[1],
                          "--output", dst, "--config", "configs/tiny.yaml", *[a for s in sets for a in ("--set", s)]],
                         cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "3 already complete" in res.stdout and storage.read_table(f"{dst}/weights").equals(w)

    # precompute: duplicates skipped, the cap drawn per clip, sample_weight carried into the rows.
    pcfg = load_config(ROOT / "configs" / "tiny.yaml", [f"selection.duplicates={dedup}", f"selection.weights={dst}"])
    rows, dropped, n = plan_clips(pcfg, outs[0])
    assert n == 375 and dropped["duplicate"] == 20
    assert 200 < dropped["balance_cap"] < 270  # about 1 - 50/300 of the dominant concept's 280 kept
    got = {r["clip_id"]: r["sample_weight"] for r in rows}
    assert got["c2s0-0000000"] == pytest.approx(rare[2]) and len(got) == 375 - 20 - dropped["balance_cap"]
