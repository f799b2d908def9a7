"""`bench/learn.py --scaling`: the same data at three compute budgets, model size x steps = 1x, 4x, 16x.

The data is the demo's (configs/demo.yaml: its world, pool8 latents, MiniLM text), prepared once under
`--work`. Each budget trains one DiT through the train job (Ray Train + DeepSpeed, 2 CPU workers):
VDiT-3XS/2, VDiT-2XS/2 and VDiT-XS/2 (width 64, 96, 128 at depth 4), with steps chosen so that
params x steps is 1x, 4x and 16x of the smallest run's. Each gives its train-loss curve (metrics.csv)
and the held-out accuracy of its last checkpoint (`sample_and_score`: colour, direction, shape of
videos sampled for held-out prompts). `--out DIR` writes scaling.jsonl and scaling.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SIZES = ("VDiT-3XS/2", "VDiT-2XS/2", "VDiT-XS/2")
BUDGETS = (1, 4, 16)


def scaling_plan(in_channels: int, text_dim: int, base_steps: int) -> list[dict]:
    """One row per budget: model, params, steps (a multiple of 10) and the achieved params x steps ratio."""
    from training.models.dit import build_dit
    from training.models.flops import num_params

    with torch.device("meta"):
        params = [num_params(build_dit(name, in_channels=in_channels, text_dim=text_dim)) for name in SIZES]
    base = params[0] * base_steps
    plan = []
    for budget, name, p in zip(BUDGETS, SIZES, params):
        steps = max(10, round(budget * base / p / 10) * 10)
        plan.append({"budget": budget, "model": name, "params": p, "steps": steps,
                     "compute": round(p * steps / base, 3)})
    return plan


def train_flops(model: str, in_channels: int, text_dim: int, tokens: int, text_len: int, samples: int) -> float:
    """Training FLOPs (forward + backward = 3x forward) of `samples` clips of `tokens` latent tokens."""
    from training.models.dit import VDIT_PRESETS
    from training.models.flops import flops_per_token
    import dataclasses

    config = dataclasses.replace(VDIT_PRESETS[model], in_channels=in_channels, text_dim=text_dim)
    return 3 * flops_per_token(config, tokens, text_len) * tokens * samples


def first_latent_row(pre: Path) -> dict:
    """The latents table's first row: latent_shape, text_emb_shape, vae, text_encoder."""
    from infra import storage
    from training.data import latents_dir

    table = storage.read_table(latents_dir(str(pre)), columns=["latent_shape", "text_emb_shape", "vae", "text_encoder"])
    return table.slice(0, 1).to_pylist()[0]


def _budget_cfg(cfg, row: dict, override):
    steps = row["steps"]
    return override(cfg, [f"train.model={row['model']}", f"train.steps={steps}",
                          f"train.warmup_steps={min(cfg.train.warmup_steps, steps // 5)}",
                          f"train.checkpoint_every={steps}", "train.keep_checkpoints=1",
                          f"train.log_every={max(1, steps // 25)}"])


def run_scaling(cfg, work: Path, base_steps: int, prepare, override, log=print) -> list[dict]:
    """Prepare the data once, train every budget, then score each last checkpoint; one row per budget.
    `prepare(cfg, work, log)` and `override(cfg, sets)` are bench/learn.py's stage runner and --set."""
    import time

    import ray

    from infra.runtime import init_ray
    from training.train import run_train

    init_ray(cfg if cfg.ray.num_cpus else override(cfg, ["ray.num_cpus=2"]))
    runs = []
    try:
        cfg, _ = prepare(cfg, work, log)
        row0 = first_latent_row(work / "pre")
        latent, text = list(row0["latent_shape"]), list(row0["text_emb_shape"])
        tokens = latent[1] * (latent[2] // 2) * (latent[3] // 2)  # patch (1, 2, 2)
        for row in scaling_plan(latent[0], text[1], base_steps):
            run_cfg = _budget_cfg(cfg, row, override)
            t = time.perf_counter()
            summary = run_train(run_cfg, str(work / "pre"), str(work / f"scale-{row['budget']}x"))
            samples = row["steps"] * summary["global_batch"]
            row = {**row, "train_flops": train_flops(row["model"], latent[0], text[1], tokens, text[0], samples),
                   "train_wall_s": round(time.perf_counter() - t, 1), "checkpoint": summary["checkpoint"]}
            runs.append((run_cfg, row))
            log(json.dumps({"bench": "learn", "scaling": True, "stage": "train", **row}))
    finally:
        ray.shutdown()
    return [_score(run_cfg, row, work, log) for run_cfg, row in runs]


def _score(cfg, row: dict, work: Path, log) -> dict:
    from training.evaluate import sample_and_score
    from training.metrics import read_metrics

    metrics = read_metrics(str(Path(row["checkpoint"]).parent))
    curve = [[int(m["step"]), round(m["loss"], 4)] for m in metrics]
    tail = [m["loss"] for m in metrics[-3:]]  # the last logged windows, each itself a mean over log_every steps
    acc = sample_and_score(cfg, row["checkpoint"], work / "samples" / f"scale-{row['budget']}x")["accuracy"]
    out = {"bench": "learn", "scaling": True, **{k: v for k, v in row.items() if k != "checkpoint"},
           "final_loss": round(sum(tail) / len(tail), 4), **{k: acc[k] for k in ("color", "direction", "shape")},
           "prompts": acc["n"], "loss_curve": curve}
    log(json.dumps(out))
    return out


def plot_scaling(rows: list[dict], path: Path) -> None:
    """Left: train loss against step per budget; right: held-out accuracy against training FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    for r in rows:
        steps, losses = zip(*r["loss_curve"])
        left.plot(steps, losses, label=f"{r['budget']}x: {r['model']} {r['params'] / 1e6:.2f}M, {r['steps']} steps")
    left.set(xlabel="step", ylabel="train loss (flow matching)", yscale="log", title="loss per budget")
    left.legend(fontsize=7)
    flops = [r["train_flops"] for r in rows]
    for key, marker in (("color", "o"), ("direction", "s"), ("shape", "^")):
        right.plot(flops, [r[key] for r in rows], marker=marker, label=key)
    right.axhline(0.25, color="gray", linestyle=":", linewidth=1, label="chance (colour, direction)")
    right.set(xlabel="training FLOPs", ylabel="held-out accuracy", xscale="log", ylim=(0, 1.05),
              title=f"held-out prompts ({rows[0]['prompts']})")
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_scaling(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_scaling(rows, out / "scaling.png")
