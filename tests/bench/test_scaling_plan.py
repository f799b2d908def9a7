"""`bench/learn.py --scaling`'s plan: three budgets whose params x steps are 1x, 4x and 16x, bigger models
at bigger budgets, and FLOPs that grow with the budget (no training here)."""

from __future__ import annotations

import json

import pytest

from bench.scaling import scaling_plan, train_flops, write_scaling


@pytest.mark.parametrize("base_steps", [100, 250])
def test_budgets_scale_as_stated(base_steps):
    plan = scaling_plan(in_channels=3, text_dim=384, base_steps=base_steps)
    assert [r["budget"] for r in plan] == [1, 4, 16]
    assert plan[0]["steps"] == base_steps
    for r in plan:
        assert r["params"] * r["steps"] / (plan[0]["params"] * base_steps) == pytest.approx(r["budget"], rel=0.03)
    assert plan[0]["params"] < plan[1]["params"] < plan[2]["params"]
    assert plan[0]["steps"] < plan[1]["steps"] < plan[2]["steps"]
    flops = [train_flops(r["model"], 3, 384, tokens=48, text_len=12, samples=32 * r["steps"]) for r in plan]
    assert flops[0] < flops[1] < flops[2]


def test_write_scaling_writes_jsonl_and_png(tmp_path):
    rows = [{"budget": b, "model": m, "params": p, "steps": s, "train_flops": f, "prompts": 12, "color": c,
             "direction": d, "shape": 0.3, "loss_curve": [[10, 1.0], [s, l]]}
            for b, m, p, s, f, c, d, l in [(1, "a", 4e5, 250, 1e12, 0.5, 0.25, 0.4),
                                           (4, "b", 9e5, 470, 4e12, 1.0, 0.5, 0.2)]]
    write_scaling(rows, tmp_path)
    assert [json.loads(x)["budget"] for x in (tmp_path / "scaling.jsonl").read_text().splitlines()] == [1, 4]
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
