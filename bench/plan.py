"""The training data plan at scale: time, memory growth and plan size of the driver planning from the
shards' footers (training/plan.py), against the per-row index the launcher used to read (clip_id,
bucket, shapes, specs of every row, and clip-id lists per rank sent to the workers).

    python bench/plan.py --files 400 --rows-per-file 256 [--workers 64] [--work /tmp/rf-plan]

Writes a latents table of FILES shards (one bucket each, row groups of 32 rows; the latent bytes are
a constant blob, which changes nothing here: neither reader touches them), then runs each variant
in a fresh process and prints one JSON line: rows, files, row groups, seconds, growth of the peak RSS over the process after its imports (MiB) and
the pickled size of what reaches the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BUCKETS = ["3x8x8", "2x8x12", "1x12x8"]
INDEX_COLUMNS = ["clip_id", "bucket", "latent_shape", "text_emb_shape", "vae", "text_encoder"]


def write_table(work: Path, files: int, rows_per_file: int) -> str:
    import pyarrow as pa

    from infra import storage
    from infra.schema import LATENTS_SCHEMA, LATENTS_STATISTICS

    root = work / f"pre-{files}x{rows_per_file}"
    if (root / "latents" / f"part-{files - 1:05d}.parquet").exists():
        return str(root)
    for f in range(files):
        bucket = BUCKETS[f % len(BUCKETS)]
        t, h, w = (int(x) for x in bucket.split("x"))
        n = rows_per_file
        cols = {"clip_id": [f"v{f:06d}{i:04d}-0000000" for i in range(n)], "caption": ["a red square"] * n,
                "latent": [b"\0" * (4 * t * h * w * 2)] * n, "latent_shape": [[4, t, h, w]] * n,
                "latent_dtype": ["bfloat16"] * n, "text_emb": [b"\0" * 384] * n, "text_emb_shape": [[6, 32]] * n,
                "text_len": [6] * n, "vae": ["tiny"] * n, "text_encoder": ["tiny"] * n, "bucket": [bucket] * n,
                "fps": [8.0] * n, "height": [h * 8] * n, "width": [w * 8] * n, "num_frames": [1 + 4 * (t - 1)] * n}
        table = pa.table({k: cols[k] for k in LATENTS_SCHEMA.names}, schema=LATENTS_SCHEMA)
        storage.write_table(table, str(root / "latents" / f"part-{f:05d}.parquet"), row_group_size=32,
                            write_statistics=LATENTS_STATISTICS)
    return str(root)


def run_variant(mode: str, root: str, workers: int) -> dict:
    """One variant, in this process: 'plan' (footers) or 'index' (every row's small columns)."""
    import psutil

    from infra import storage
    from infra.config import load_config
    from training.train import plan_run

    before = psutil.Process().memory_info().rss  # after the imports: torch is large, and both pay it
    t0 = time.perf_counter()
    if mode == "plan":
        cfg = load_config(None, [f"train.num_workers={workers}", "train.batch_size=8"])
        plan, _ = plan_run(cfg, root)
        out = {"row_groups": len(plan.groups), "payload_bytes": len(pickle.dumps(plan))}
    else:
        index = storage.read_table(os.path.join(root, "latents"), columns=INDEX_COLUMNS)
        ids, buckets = index["clip_id"].to_pylist(), index["bucket"].to_pylist()
        rank_ids = [[] for _ in range(workers)]
        for i, (cid, _) in enumerate(sorted(zip(ids, buckets), key=lambda x: (x[1], x[0]))):
            rank_ids[i % workers].append(cid)
        out = {"rows": index.num_rows, "payload_bytes": len(pickle.dumps(rank_ids))}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["peak_rss_growth_mib"] = round(max(0, peak - before) / 2**20, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--rows-per-file", type=int, default=256)
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--work", default="/tmp/rf-bench-plan")
    ap.add_argument("--variant", choices=["plan", "index"])
    ap.add_argument("--root")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.root, args.workers)))
        return
    root = write_table(Path(args.work), args.files, args.rows_per_file)
    result = {"files": args.files, "rows": args.files * args.rows_per_file, "workers": args.workers}
    for variant in ("plan", "index"):
        res = subprocess.run([sys.executable, __file__, "--variant", variant, "--root", root,
                              "--workers", str(args.workers)], capture_output=True, text=True, check=True)
        result[variant] = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
