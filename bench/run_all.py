"""Run every speed bench and write ONE JSON: per bench its ratios (value, target, met), profile,
load average, machine and date (bench/spans.py's result record).

Each bench runs in its own process (its own Ray), one after another, with OMP_NUM_THREADS=1 and
HF_HUB_OFFLINE=1. On a shared machine wrap it in the heavy-run lock:
    flock /tmp/rf-heavy.lock python bench/run_all.py --quick --out bench-results.json
    python bench/run_all.py --table bench-results.json   # the README's performance table
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from spans import machine  # noqa: E402

# name -> the script and its arguments (every one takes --quick and --result-json)
BENCHES: dict[str, list[str]] = {
    "caption": ["caption.py", "--mode", "ray"],
    "precompute": ["precompute.py"],
    "train": ["train.py"],
    "split": ["split.py"],
    "curate": ["curate.py"],
}


def selected(only: str | None, skip: str | None) -> list[str]:
    names = list(BENCHES)
    for given in (only, skip):
        unknown = [n for n in (given or "").split(",") if n and n not in BENCHES]
        if unknown:
            raise SystemExit(f"unknown bench {unknown}; choose from {names}")
    if only:
        names = [n for n in names if n in only.split(",")]
    if skip:
        names = [n for n in names if n not in skip.split(",")]
    return names


def run_one(name: str, quick: bool, timeout_s: float) -> dict:
    """Run one bench in a child process; its result record, or why there is none."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(BENCH / BENCHES[name][0]), *BENCHES[name][1:], "--result-json", str(out)]
        cmd += ["--quick"] if quick else []
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"bench": name, "error": f"timed out after {timeout_s:.0f} s", "met": False}
        wall = round(time.perf_counter() - t0, 1)
        if proc.returncode or not out.is_file():
            return {"bench": name, "error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:],
                    "met": False, "bench_wall_s": wall}
        return {**json.loads(out.read_text()), "bench_wall_s": wall}


def assemble(records: dict[str, dict], quick: bool) -> dict:
    """The one JSON of a run_all call."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "quick": quick, "load_avg_end": [round(x, 2) for x in os.getloadavg()],
            "all_met": all(r.get("met") for r in records.values()), "benches": records}


def table(doc: dict) -> str:
    """A Markdown table: one row per ratio (bench, ratio, measured, target, met, load average)."""
    lines = ["| bench | ratio | measured | target | met | load avg (1 min) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, rec in doc["benches"].items():
        if "error" in rec:
            lines.append(f"| {name} | - | {rec['error']} | - | no | - |")
            continue
        load = rec.get("load_avg", ["?"])[0]
        for key, r in rec["ratios"].items():
            sign = "<=" if r["better"] == "lower" else ">="
            lines.append(f"| {name} | {key} | {r['value']} | {sign} {r['target']} | {'yes' if r['met'] else 'no'} "
                         f"| {load} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help=f"comma list of {list(BENCHES)}")
    ap.add_argument("--skip", default=None, help="comma list of benches not to run")
    ap.add_argument("--quick", action="store_true", help="each bench's small size")
    ap.add_argument("--out", default="bench-results.json", help="the JSON to write")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per bench")
    ap.add_argument("--table", metavar="JSON", default=None, help="print the Markdown table of a written JSON")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    records: dict[str, dict] = {}
    doc = assemble(records, args.quick)
    for name in selected(args.only, args.skip):
        records[name] = run_one(name, args.quick, args.timeout)
        print(json.dumps({"bench": name, "met": records[name].get("met"), "error": records[name].get("error"),
                          "ratios": {k: v["value"] for k, v in records[name].get("ratios", {}).items()}}),
              flush=True)
        doc = assemble(records, args.quick)
        Path(args.out).write_text(json.dumps(doc, indent=1))  # after every bench: a partial run keeps its numbers
    print(table(doc))


if __name__ == "__main__":
    main()
