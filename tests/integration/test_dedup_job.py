"""`reelforge dedup` on a real local Ray with every table on the S3 endpoint: duplicates across curate
outputs (perceptual and semantic), an incremental run that reads only the index it needs, resume,
and a driver whose memory stays flat while 200k hashes go through."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from infra import storage
from infra.config import load_config
from pipelines.dedup import find_duplicates
from pipelines.dedup_job import run_dedup

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
D = 32


class World:
    """Synthetic clips with planted near-duplicates: pHash bit flips and embedding noise."""

    def __init__(self, n: int, seed: int = 0, planted: int = 0, semantic: bool = True):
        rng = np.random.default_rng(seed)
        self.ids = np.array([f"v{seed}{i:07d}-0000000" for i in range(n)])
        self.bits = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
        # Embeddings around 6 concepts (as real ones cluster): k-means finds them, so no planted pair
        # sits on a cluster boundary (a pair split across clusters is missed, by design, as in NeMo).
        concept = np.eye(6, D, dtype=np.float32)[rng.integers(0, 6, n)] * 4
        self.emb = (concept + rng.standard_normal((n, D))).astype(np.float32) if semantic else None
        self.dur = rng.uniform(1, 5, n).round(3)
        self.src = rng.choice(n // 2, planted, replace=False)
        self.dst = n // 2 + rng.choice(n // 2, planted, replace=False)
        self.bits[self.dst] = self.bits[self.src] ^ (np.uint64(1) << rng.integers(0, 64, planted).astype(np.uint64))
        if semantic:  # half of the planted pairs are semantic only: their hashes stay far apart
            sem = self.dst[: planted // 2]
            self.bits[sem] = rng.integers(0, 2**63, len(sem), dtype=np.int64).astype(np.uint64)
            self.emb[self.dst] = self.emb[self.src] + 0.003 * rng.standard_normal((planted, D)).astype(np.float32)

    def write(self, root: str, rows: np.ndarray, parts: int = 2) -> str:
        for j, idx in enumerate(np.array_split(rows, parts)):
            cols = {"clip_id": self.ids[idx], "start_s": np.zeros(len(idx)), "end_s": self.dur[idx],
                    "keep": np.ones(len(idx), bool), "phash": [f"{int(b):016x}" for b in self.bits[idx]]}
            if self.emb is not None:
                cols["embedding"] = pa.array(list(self.emb[idx].astype(np.float16)), pa.list_(pa.float16()))
            storage.write_table(pa.table(cols), storage.join(root, "clips", f"part-{j:05d}.parquet"))
        return root

    def removed(self) -> set[str]:
        """What dedup must remove: the shorter clip of each planted pair (ties: the larger clip_id)."""
        return {self.ids[d] if (self.dur[d], self.ids[s]) < (self.dur[s], self.ids[d]) else self.ids[s]
                for s, d in zip(self.src, self.dst)}


def _removed(table: pa.Table) -> set[str]:
    return {c for c, k in zip(table["clip_id"].to_pylist(), table["kept"].to_pylist()) if not k}


DEDUP_SETS = ["dedup.kinds=[perceptual,semantic]", "dedup.clusters=6", "dedup.kmeans_iters=3", "dedup.partitions=2",
              "dedup.index_buckets=64"]


def _cfg(*sets):
    return load_config(ROOT / "configs" / "tiny.yaml", [*DEDUP_SETS, *sets])


def test_dedup_across_outputs_then_an_increment_then_resume(ray_local, s3_bucket, cli_env):
    w = World(1200, planted=60)
    order = np.random.default_rng(1).permutation(1200)
    first, late = order[:1150], order[1150:]
    outs = [w.write(f"{s3_bucket}/curate{i}", rows) for i, rows in enumerate(np.array_split(first, 3))]
    dst = f"{s3_bucket}/dedup"
    m = run_dedup(_cfg(), outs, dst)
    dup = storage.read_table(f"{dst}/duplicates")
    in_first = set(w.ids[first])
    want = {c for c in w.removed() if c in in_first and _partner(w, c) in in_first}
    assert _removed(dup) == want and m["counts"]["removed"] == len(want)
    kinds = dict(zip(dup["clip_id"].to_pylist(), dup["kind"].to_pylist()))
    assert {"perceptual+semantic", "semantic"} <= set(kinds.values())
    assert m["counts"]["removed_by_kind"]["semantic"] >= m["counts"]["removed_by_kind"]["perceptual"] > 0

    # An increment: a new output, checked against the index; the first outputs are never read again.
    late_out = w.write(f"{s3_bucket}/curate-late", late, parts=1)
    for out in outs:
        for f in storage.list_files(f"{out}/clips"):
            storage.delete(f)
    m2 = run_dedup(_cfg(), [late_out], dst)
    dup2 = storage.read_table(f"{dst}/duplicates")
    assert _removed(dup2) == w.removed()  # pairs across the old outputs and the late one are found
    idx = m2["index"]["perceptual"]
    assert m2["counts"]["parts_new"] == 1 and 0 < idx["index_files_read"] < idx["index_files"]
    assert m2["counts"]["dataset_clips"] == 1200

    # Re-running resumes: every input part is indexed, nothing is recomputed, the table is unchanged.
    res = subprocess.run([sys.executable, "-m", "infra.cli", "dedup", "--input", late_out, "--output", dst,
                          "--config", "configs/tiny.yaml", *[a for s in DEDUP_SETS for a in ("--set", s)]],
                         cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "nothing to do" in res.stdout and storage.read_table(f"{dst}/duplicates").equals(dup2)
    assert json.loads(storage.read_text(f"{dst}/manifest.json"))["resume"]["processed"] == 0


def _partner(w: World, clip: str) -> str:
    i = int(np.flatnonzero(w.ids == clip)[0])
    pairs = dict(zip(w.src, w.dst)) | dict(zip(w.dst, w.src))
    return w.ids[pairs[i]]


def test_the_driver_never_holds_all_hashes(ray_local, tmp_path):
    w = World(200_000, seed=7, planted=400, semantic=False)
    outs = [w.write(str(tmp_path / f"curate{i}"), rows) for i, rows in enumerate(np.array_split(np.arange(200_000), 3))]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["dedup.partitions=2"])
    tracemalloc.start()
    m = run_dedup(cfg, outs, str(tmp_path / "dedup"))
    job_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert m["counts"]["removed"] == 400 and m["counts"]["clips_read"] == 200_000
    # What one process holding the same hashes needs (curate.dedup's way), measured the same way.
    tracemalloc.start()
    hashes = [f"{int(b):016x}" for b in w.bits]
    dup = find_duplicates(list(w.ids), w.dur, phashes=hashes)
    naive_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sum(d is not None for d in dup) == 400
    print(f"driver peak: job {job_peak / 2**20:.1f} MiB, one process {naive_peak / 2**20:.1f} MiB")
    assert job_peak < naive_peak / 4, (job_peak, naive_peak)
