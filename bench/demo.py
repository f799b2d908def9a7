"""Times `reelforge demo` stage by stage: one JSON line with each stage's seconds, the total and the eval.

    python bench/demo.py [--output DIR] [--set section.key=value ...]

Runs the demo as `make demo` does (configs/demo.yaml, a local Ray with ray.num_cpus CPUs) into a
fresh DIR (default: a temporary folder, removed afterwards), so no stage is reused, and writes the
same JSON to DIR/bench.json when DIR is given. `stages` maps each stage (world, ray, curate,
train-captioner, caption, precompute, train, sample, eval, report) to its seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.demo import demo_config, run_demo  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", help="demo folder (must not hold an earlier demo); default: a temporary one")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override (repeatable)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    out = Path(args.output or tempfile.mkdtemp(prefix="rf-bench-demo-")) / "demo"
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty: a re-run would reuse its stages")
    t0 = time.perf_counter()
    try:
        summary = run_demo(demo_config(None, args.sets), str(out))
        wall = time.perf_counter() - t0
        ev = summary["stages"]["eval"]
        result = {"bench": "demo", "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                  "stages": {name: r["seconds"] for name, r in summary["stages"].items()},
                  "total_s": summary["total_seconds"], "wall_s": round(wall, 1),
                  "eval": {"prompts": ev["prompts"], **ev["accuracy"]}, "sets": args.sets}
        if args.output:
            (out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result))
    finally:
        if not args.output:
            shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
