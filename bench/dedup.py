"""Dedup at dataset scale: `reelforge dedup` (Ray Data) against one process holding every hash.

For each size (default 100k and 1M synthetic pHashes, 1% planted near-duplicates, spread over 3
curate outputs of 4 parts each), in a fresh process each (so peaks are not shared):
- `ray`: run_dedup (perceptual) on a local Ray (configs/tiny.yaml: 2 CPUs): wall, clips/s, and the
  driver's peak RSS (ru_maxrss of that process; Ray's workers are other processes);
- `one_process`: curate.dedup's find_duplicates over the same hashes read into one process.
Prints one JSON line per (size, mode).
Run:  OMP_NUM_THREADS=1 python bench/dedup.py [--sizes 100000 1000000] [--set dedup.key=value ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def write_outputs(root: Path, n: int, seed: int = 0) -> list[str]:
    """3 curate-like outputs (clip_id, start_s, end_s, keep, phash) with n // 100 planted 1-bit flips."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    planted = n // 100
    src, dst = rng.choice(n // 2, planted, replace=False), n // 2 + rng.choice(n // 2, planted, replace=False)
    bits[dst] = bits[src] ^ (np.uint64(1) << rng.integers(0, 64, planted).astype(np.uint64))
    outs = []
    for i, rows in enumerate(np.array_split(rng.permutation(n), 3)):
        out = root / f"curate{i}"
        (out / "clips").mkdir(parents=True)
        for j, idx in enumerate(np.array_split(rows, 4)):
            pq.write_table(pa.table({"clip_id": [f"v{k:08d}-0000000" for k in idx], "start_s": np.zeros(len(idx)),
                                     "end_s": rng.uniform(1, 5, len(idx)), "keep": np.ones(len(idx), bool),
                                     "phash": [f"{int(b):016x}" for b in bits[idx]]}),
                           out / "clips" / f"part-{j:05d}.parquet")
        outs.append(str(out))
    return outs


def child(mode: str, outs: list[str], dst: str, sets: list[str]) -> dict:
    """One measurement, inside its own process."""
    from infra.config import load_config

    t0 = time.perf_counter()
    if mode == "ray":
        from pipelines.dedup_job import run_dedup

        m = run_dedup(load_config(ROOT / "configs" / "tiny.yaml", sets), outs, dst)
        clips, removed, extra = m["counts"]["clips_read"], m["counts"]["removed"], {"rounds": m["component_steps"]}
    else:
        from pipelines.dedup import find_duplicates

        t = pa.concat_tables([pq.read_table(f, columns=["clip_id", "start_s", "end_s", "phash"])
                              for o in outs for f in sorted(Path(o, "clips").glob("*.parquet"))])
        dur = (t["end_s"].to_numpy() - t["start_s"].to_numpy())
        found = find_duplicates(t["clip_id"].to_pylist(), dur, phashes=t["phash"].to_pylist())
        clips, removed, extra = t.num_rows, sum(f is not None for f in found), {}
    wall = time.perf_counter() - t0
    return {"clips": clips, "removed": removed, "wall_s": round(wall, 2), "clips_per_s": round(clips / wall, 1),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **extra}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--modes", nargs="+", default=["ray", "one_process"])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # mode, outputs (json), dst
    args = ap.parse_args()
    if args.child:
        mode, outs, dst = args.child
        print(json.dumps(child(mode, json.loads(outs), dst, args.sets)))
        return
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as d:
            outs = write_outputs(Path(d), n)
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--child", mode, json.dumps(outs), str(Path(d, f"dedup-{mode}")),
                       *[a for s in args.sets for a in ("--set", s)]]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    sys.exit(res.stderr[-3000:])
                out = json.loads(res.stdout.strip().splitlines()[-1])
                print(json.dumps({"bench": "dedup", "mode": mode, "hashes": n, **out, "cpus": 2,
                                  "machine": platform.machine()}), flush=True)


if __name__ == "__main__":
    main()
