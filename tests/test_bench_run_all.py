"""bench/run_all.py's JSON assembly and table, and bench/spans.py's profile helpers (no bench runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import run_all  # noqa: E402
import spans  # noqa: E402


def test_ratio_met_follows_the_direction_of_the_target():
    assert spans.ratio(1.2, 1.15, "lower")["met"] is False
    assert spans.ratio(1.1, 1.15, "lower")["met"] is True
    assert spans.ratio(0.95, 0.9, "higher")["met"] is True
    assert spans.ratio(0.25, 0.9, "higher") == {"value": 0.25, "target": 0.9, "better": "higher", "met": False}


def test_arrivals_split_startup_from_steady_state():
    # submitted at 10; the first batch (4 rows) lands at 15, then a row every 0.5 s
    stamps = [15.0] * 4 + [15.5, 16.0, 16.5, 17.0]
    a = spans.arrivals(10.0, stamps, warm=4)
    assert a["startup_s"] == 5.0 and a["steady_rows"] == 4 and a["steady_s"] == 2.0
    assert a["steady_s_per_row"] == 0.5 and a["total_s"] == 7.0


def test_spans_profile_counts_time_outside_spans_as_other():
    s = spans.Spans()
    s.add("decode", 1.0)
    s.add("model", 2.0)
    s.add("decode", 1.0)
    p = s.profile(total=5.0)
    assert p["decode"] == {"s": 2.0, "share": 0.4} and p["other"] == {"s": 1.0, "share": 0.2}
    assert s.calls == {"decode": 2, "model": 1}


def test_one_json_per_run_with_every_bench_its_ratios_and_a_table():
    good = spans.result("train", {"per_sample_cost_vs_plain": spans.ratio(1.3, 1.15, "lower")},
                        {"parts": spans.shares({"compute": 3.0, "all-reduce": 1.0})})
    doc = json.loads(json.dumps(run_all.assemble({"train": good, "split": {"bench": "split", "error": "exit 1",
                                                                            "met": False}}, quick=True)))
    assert doc["all_met"] is False and doc["quick"] is True
    rec = doc["benches"]["train"]
    assert rec["met"] is False and len(rec["load_avg"]) == 3 and rec["machine"]["cpus"] >= 1 and rec["date"]
    assert rec["profile"]["parts"]["compute"]["share"] == 0.75
    rows = run_all.table(doc).splitlines()
    assert "| train | per_sample_cost_vs_plain | 1.3 | <= 1.15 | no |" in rows[2]
    assert rows[3].startswith("| split | - | exit 1 |")


def test_only_and_skip_pick_benches_and_refuse_unknown_names():
    assert run_all.selected("split,train", None) == ["train", "split"]
    assert run_all.selected(None, "caption,train") == ["precompute", "split", "curate"]
    with pytest.raises(SystemExit, match="unknown bench"):
        run_all.selected("captions", None)
