"""Training-step benchmark: prints JSON lines.

1. plain single-process torch (training.step.train_step, AdamW + EMA) at the global batch, with 1
   thread and with as many threads as the distributed run uses in all;
2. the real job (`run_train`: Ray Train, 2 CPU workers x 1 thread, gloo, DeepSpeed ZeRO-2) on the
   same model, the same one-bucket synthetic latents and the same global batch; step times come
   from the workers' batch traces (steady state, no checkpoint or log step inside);
3. with CUDA: the real job on every GPU in bf16 with VDiT-B/2, and its MFU (train.peak_tflops).

`per_sample_cost_vs_plain` = (workers x threads x distributed step time) / (1-thread plain step
time, the faster of a run before and after the job): the core-seconds a sample costs distributed,
relative to plain torch (target <= 1.15). On a shared machine compare runs only at similar load_avg.
    python bench/train.py --model VDiT-S/2 --batch 8 --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.config import load_config  # noqa: E402
from infra.runtime import init_ray  # noqa: E402
from training.data import arrow_rows, bucket_tokens, collate  # noqa: E402
from training.models.dit import build_dit, flops_per_token, num_params  # noqa: E402
from training.step import EMA, batch_loss, train_step  # noqa: E402
from training.synthetic import table, write_synthetic_latents  # noqa: E402
from spans import Spans, emit as emit_result, ratio, result, shares  # noqa: E402


def emit(**row):
    print(json.dumps(row), flush=True)


def plain_step_time(model_name, bucket, global_batch, steps, threads, channels) -> float:
    """Median seconds of one plain-torch train_step over the global batch (after 2 warm-up steps)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_dit(model_name, in_channels=channels, text_dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ema = EMA(list(model.parameters()))
    rows = list(arrow_rows([table({bucket: global_batch}, channels=channels)]))
    batch, gen, times = collate(rows), torch.Generator().manual_seed(0), []
    for i in range(steps + 2):
        start = time.perf_counter()
        train_step(model, opt, batch, lr=1e-4, grad_clip=1.0, caption_dropout=0.1, generator=gen, ema=ema,
                   ema_decay=0.999)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_parts(model_name, bucket, batch_size, steps, channels) -> dict[str, float]:
    """Mean seconds per part of a plain 1-thread step (train_step's calls, timed one by one) after a
    warm-up step: the loss (forward), backward, clipping + AdamW, and the EMA update."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_dit(model_name, in_channels=channels, text_dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ema = EMA(list(model.parameters()))
    batch = collate(list(arrow_rows([table({bucket: batch_size}, channels=channels)])))
    gen, spans = torch.Generator().manual_seed(0), [Spans() for _ in range(steps + 1)]
    for sp in spans:
        with sp.span("forward (loss)"):
            loss = batch_loss(model, batch, caption_dropout=0.1, generator=gen)
        opt.zero_grad(set_to_none=True)
        with sp.span("backward"):
            loss.backward()
        with sp.span("clip + AdamW"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        with sp.span("EMA"):
            ema.update(list(model.parameters()), 0.999)
    return {k: statistics.mean(sp.seconds[k] for sp in spans[1:]) for k in spans[0].seconds}


def traced_step_times(debug_dir: Path, skip: int) -> tuple[list[float], dict[str, float]]:
    """Seconds between consecutive steps of rank 0's batch trace, after `skip` warm-up steps, and
    the median seconds of each traced part of those steps (data_s, forward_s, backward_s, step_s)."""
    lines = [json.loads(x) for x in (debug_dir / "trace-rank0.jsonl").read_text().splitlines()]
    lines = sorted(lines, key=lambda x: x["step"])
    stamps = [line["time"] for line in lines]
    parts = {k: statistics.median(x.get(k, 0.0) for x in lines[skip + 1:])
             for k in ("data_s", "forward_s", "backward_s", "step_s")} if len(lines) > skip + 1 else {}
    return [b - a for a, b in zip(stamps[skip:], stamps[skip + 1:])], parts


def distributed(model_name, bucket, per_worker, steps, workers, channels, use_gpu=False, extra=()) -> dict:
    """The real job on synthetic one-bucket latents; returns its summary and steady step times."""
    with tempfile.TemporaryDirectory() as tmp:
        latents = write_synthetic_latents(f"{tmp}/pre", {bucket: per_worker * workers * 4}, channels=channels)
        debug = Path(tmp) / "debug"
        sets = [f"train.model={model_name}", f"train.num_workers={workers}", f"train.batch_size={per_worker}",
                f"train.steps={steps}", f"train.log_every={steps}", f"train.checkpoint_every={steps}",
                "train.zero_stage=2", "train.warmup_steps=2", f"train.debug_dir={debug}",
                f"train.use_gpu={str(use_gpu).lower()}", "train.cpus_per_worker=1", "train.max_failures=0", *extra]
        # logical CPUs: one per worker (each reads its own row groups; a Ray already up is joined)
        cfg = load_config(None, sets + [f"ray.num_cpus={workers}"])
        init_ray(cfg)
        from training.train import run_train

        summary = run_train(cfg, latents, f"{tmp}/run")
        times, parts = traced_step_times(debug, skip=3)
    return {"summary": summary, "step_s": statistics.median(times), "steps_timed": len(times), "parts": parts}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="VDiT-S/2")
    parser.add_argument("--bucket", default="3x16x16", help="latent TxHxW of every row")
    parser.add_argument("--batch", type=int, default=8, help="rows per worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="fewer steps (6)")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="a config line for the job, e.g. --set train.zero.reduce_scatter=false")
    parser.add_argument("--result-json", default=None, help="also write the result record here")
    args = parser.parse_args()
    if args.quick:
        args.steps = 8
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    global_batch, channels = args.batch * args.workers, 4
    tokens = bucket_tokens(args.bucket)
    model = build_dit(args.model, in_channels=channels, text_dim=32)
    flops = 3 * flops_per_token(model.config, tokens, 8) * tokens * global_batch  # per step, text ~8 tokens
    emit(bench="train", model=args.model, params=num_params(model), bucket=args.bucket, tokens_per_sample=tokens,
         global_batch=global_batch, workers=args.workers, cpu_count=os.cpu_count(),
         load_avg=[round(x, 2) for x in os.getloadavg()])
    plain = {}
    for threads in [1] if args.quick else sorted({1, args.workers}):
        plain[threads] = plain_step_time(args.model, args.bucket, global_batch, args.steps, threads, channels)
        emit(bench="train", run=f"plain torch, 1 process x {threads} thread(s)", step_s=round(plain[threads], 4),
             samples_per_s=round(global_batch / plain[threads], 3),
             tokens_per_s=round(global_batch * tokens / plain[threads], 1),
             gflops_per_s=round(flops / plain[threads] / 1e9, 2))
    dist = distributed(args.model, args.bucket, args.batch, args.steps, args.workers, channels, extra=args.sets)
    step = dist["step_s"]
    # The baseline again after the job: on a shared machine the load moves; the faster of the two
    # is the less disturbed one (and the stricter baseline for the distributed run).
    parts_global = plain_parts(args.model, args.bucket, global_batch, args.steps, channels)
    again = sum(parts_global.values())
    emit(bench="train", run="plain torch, 1 process x 1 thread(s), measured again", step_s=round(again, 4))
    plain[1] = min(plain[1], again)
    emit(bench="train", run=f"Ray Train + DeepSpeed ZeRO-2, {args.workers} workers x 1 thread (gloo)",
         step_s=round(step, 4), steps_timed=dist["steps_timed"], samples_per_s=round(global_batch / step, 3),
         tokens_per_s=round(global_batch * tokens / step, 1), gflops_per_s=round(flops / step / 1e9, 2),
         per_sample_cost_vs_plain=round(args.workers * step / plain[1], 3),
         wall_vs_plain_same_cores=round(step / plain[args.workers], 3) if args.workers in plain else None,
         target_per_sample_cost=1.15,
         job_wall_s=dist["summary"]["wall_s"])
    # The work one worker does alone: a plain step at the per-worker batch, 1 thread.
    parts_local = plain_parts(args.model, args.bucket, args.batch, args.steps, channels)
    emit_result(record(args, plain[1], parts_global, parts_local, dist), args.result_json)
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        run = distributed("VDiT-B/2", "5x32x32", 8, args.steps, gpus, 16, use_gpu=True)
        s = run["summary"]
        emit(bench="train", run=f"Ray Train + DeepSpeed ZeRO-2, {gpus} GPU(s), bf16, VDiT-B/2",
             step_s=round(run["step_s"], 4), samples_per_s=s["samples_per_s"], tokens_per_s=s["tokens_per_s"],
             mfu=s["mfu"], device=torch.cuda.get_device_name(0))
    else:
        emit(bench="train", run="GPU MFU of VDiT-B/2", skipped="no CUDA device here")


def record(args, plain_1: float, parts_global: dict, parts_local: dict, dist: dict) -> dict:
    """Per-sample core-seconds of the job over plain torch, and where a distributed step goes (rank
    0's trace): waiting for data, forward, backward (with ZeRO-2's gradient reduce over gloo),
    DeepSpeed's step (partitioned clip + AdamW, parameter all-gather) and the rest (EMA, metrics,
    Ray Train). Beside it the plain 1-thread step's parts at the per-worker and the global batch."""
    step, local = dist["step_s"], sum(parts_local.values())
    traced = {k: v for k, v in dist["parts"].items()}
    parts = {"data wait": traced.get("data_s", 0.0), "forward": traced.get("forward_s", 0.0),
             "backward + gradient reduce": traced.get("backward_s", 0.0),
             "DeepSpeed step (AdamW + all-gather)": traced.get("step_s", 0.0)}
    parts["EMA + other"] = max(0.0, step - sum(parts.values()))
    profile = {"step_s": round(step, 4), "plain_step_s_global_batch": round(plain_1, 4),
               "plain_step_s_per_worker_batch": round(local, 4), "parts": shares(parts),
               "plain_parts_global_batch": shares(parts_global), "plain_parts_per_worker_batch": shares(parts_local),
               "dist_step_over_plain_per_worker_batch": round(step / local, 3),
               "job_wall_s": dist["summary"]["wall_s"], "steps_timed": dist["steps_timed"]}
    return result("train", {"per_sample_cost_vs_plain": ratio(args.workers * step / plain_1, 1.15, "lower")},
                  profile, model=args.model, global_batch=args.batch * args.workers, workers=args.workers,
                  sets=args.sets)


if __name__ == "__main__":
    main()
