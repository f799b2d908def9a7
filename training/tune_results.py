"""What `reelforge tune` leaves behind: trials.csv, best.yaml, metric.png and tune_summary.json."""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
import re

from infra import storage
from infra.config import ReelForgeConfig
from training.tune_space import apply_trial, plain


def _history(result, metric: str) -> list[tuple[int, float]]:
    df = result.metrics_dataframe
    if df is None or metric not in df.columns or "step" not in df.columns:
        return []
    rows = df[["step", metric]].dropna()
    return [(int(s), float(m)) for s, m in zip(rows["step"], rows[metric])]


def trial_rows(cfg: ReelForgeConfig, grid) -> list[dict]:
    """One row per trial: its values, steps reached, best and last metric, status."""
    metric, better = cfg.tune.metric, (min if cfg.tune.mode == "min" else max)
    rows = []
    for result in grid:
        params = {k: plain(v) for k, v in (result.config or {}).items()}
        history = _history(result, metric)
        named = re.search(r"[0-9a-f]{5}_\d{5}", posixpath.basename(str(result.path)))
        steps = max((s for s, _ in history), default=0)
        target = apply_trial(cfg, params).train
        target_steps = min(target.steps, target.stop_at_step or target.steps)
        if result.error is not None:
            status = "error"
        elif steps >= target_steps:
            status = "completed"
        else:
            status = "stopped early"
        rows.append({"trial": (result.metrics or {}).get("trial_id") or (named.group(0) if named else str(result.path)),
                     **params, "status": status, "steps": steps,
                     f"best_{metric}": better((m for _, m in history), default=None),
                     f"last_{metric}": history[-1][1] if history else None,
                     "resumed_from": (result.metrics or {}).get("resumed_from"),  # > 0: restarted from a checkpoint
                     "error": str(result.error).splitlines()[0][:200] if result.error is not None else None,
                     "_history": history})
    return rows


def best_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    """The trial that ran its whole schedule with the best last metric (any trial when none did)."""
    scored = [r for r in rows if r[f"last_{metric}"] is not None and not math.isnan(r[f"last_{metric}"])]
    pool = [r for r in scored if r["status"] == "completed"] or scored
    if not pool:
        return None
    sign = 1 if mode == "min" else -1
    return min(pool, key=lambda r: sign * r[f"last_{metric}"])


def _csv(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if not k.startswith("_")] if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _label(row: dict, keys: list[str]) -> str:
    values = ", ".join(f"{k.rsplit('.', 1)[-1]}={row[k]:.3g}" if isinstance(row[k], float) else
                       f"{k.rsplit('.', 1)[-1]}={row[k]}" for k in keys if k in row)
    return f"{row['trial']} {values} ({row['status']})"


def _plot(rows: list[dict], metric: str, best: dict | None, keys: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for r in rows:
        if r["_history"]:
            steps, values = zip(*r["_history"])
            ax.plot(steps, values, marker=".", lw=2.5 if r is best else 1.2,
                    label=_label(r, keys))
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial" + (f" (best: {best['trial']})" if best else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_results(cfg: ReelForgeConfig, grid, output: str, wall_s: float) -> dict:
    """trials.csv, best.yaml, metric.png and tune_summary.json under OUTPUT; returns the summary."""
    metric = cfg.tune.metric
    rows = sorted(trial_rows(cfg, grid), key=lambda r: r["trial"])
    best = best_row(rows, metric, cfg.tune.mode)
    storage.write_text(storage.join(output, "trials.csv"), _csv(rows))
    storage.write_bytes(storage.join(output, "metric.png"), _plot(rows, metric, best, cfg.tune.space_keys()))
    best_yaml = None
    if best is not None:
        params = {k: best[k] for k in cfg.tune.space_keys()}
        best_cfg = apply_trial(cfg, params)
        header = (f"# best trial {best['trial']} of `reelforge tune` ({cfg.tune.mode} {metric}: "
                  f"{best[f'last_{metric}']:.6g} at step {best['steps']}); values: {json.dumps(params, default=str)}\n"
                  "# train with: reelforge train --config best.yaml --latents ...\n")
        best_yaml = storage.join(output, "best.yaml")
        storage.write_text(best_yaml, header + best_cfg.to_yaml())
    summary = {"output": output, "metric": metric, "mode": cfg.tune.mode, "scheduler": cfg.tune.scheduler,
               "trials": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
               "best": {k: v for k, v in best.items() if not k.startswith("_")} if best else None,
               "best_config": best_yaml, "trials_csv": storage.join(output, "trials.csv"),
               "plot": storage.join(output, "metric.png"), "wall_s": round(wall_s, 1)}
    storage.write_text(storage.join(output, "tune_summary.json"), json.dumps(summary, indent=2, default=str))
    return summary
