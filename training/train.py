"""`reelforge train`: the VideoDiT on a latents table with Ray Train + DeepSpeed ZeRO.

`train_loop_per_worker` runs on every Ray Train worker in DiT's order (setup, model + EMA,
optimizer, data, loop, checkpoint); the Ray and DeepSpeed touch points are marked [1]-[3].
`run_train` is the launcher: it plans which row groups each worker reads (training/plan.py, from the
shards' footers), starts a TorchTrainer and returns a summary. Checkpoint layout: training/zero.py;
metrics files: training/metrics.py.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from infra import storage
from infra.config import ReelForgeConfig
from infra.progress import report_step, step_progress
from infra.runtime import cluster_address, ray_session
from training import zero
from training.data import BucketBatcher, RankReader, bucket_batch_size, bucket_tokens, collate, latents_files
from training.metrics import Meter, MetricsLog, memory_gb, rates, read_metrics
from training.models.dit import VDIT_PRESETS, build_dit, flops_per_token
from training.models.latents import LatentSpec, check_resume
from training.plan import DataPlan, plan_data, read_footers, row_groups, table_facts
from training.step import EMA, batch_loss, ema_decay_at, lr_at, set_lr

log = logging.getLogger(__name__)


def _quiet() -> None:
    # DeepSpeed on CPU triggers many torch.distributed FutureWarnings; they are not ours to fix.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"deepspeed")


# ----------------------------------------------------------------------------- the data, per rank


def rank_steps(reader: RankReader, plan: DataPlan, t, rank: int, start: int) -> Iterator[tuple[dict, int]]:
    """(batch, epoch) for each micro-batch from micro-batch `start` on; `reader.epoch(e)` gives the rows.

    Every rank makes plan.steps_per_epoch micro-batches per epoch by construction (the plan splits
    batches of a rank with fewer rows), so no rank pads and no optimizer step sees repeated data.
    A resumed run skips the micro-batches of the epoch it already did: same rows, same order, same
    batches.
    """
    batcher = BucketBatcher(plan.batch_plan(rank), t.shuffle_buffer, t.seed)
    spe, micro = plan.steps_per_epoch, start
    while True:
        epoch, skip = divmod(micro, spe)
        made = 0
        for made, rows in enumerate(batcher.batches(reader.epoch(epoch), epoch, rank), 1):
            if made > skip:
                yield collate(rows), epoch
        if made != spe:
            raise RuntimeError(f"rank {rank} made {made} batches in epoch {epoch}; the plan says {spe}")
        micro = (epoch + 1) * spe


def _trace(t, rank: int, step: int, micro: int, epoch: int, batch: dict, data_s: float,
           timings: dict | None = None) -> None:
    if t.debug_dir:
        line = {"step": step, "micro": micro, "rank": rank, "epoch": epoch, "bucket": batch["bucket"],
                "clip_ids": batch["clip_ids"], "data_s": round(data_s, 4), "time": round(time.time(), 3),
                **{k: round(v, 4) for k, v in (timings or {}).items()}}
        with open(Path(t.debug_dir) / f"trace-rank{rank}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


# ----------------------------------------------------------------------------- the worker


def _setup(t) -> tuple[int, int, torch.device]:
    """Environment, rank, world size and device of this worker."""
    import ray.train

    _quiet()
    if not t.use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"  # before deepspeed is imported in this process
        torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if t.use_gpu else torch.device("cpu")
    if t.debug_dir:
        Path(t.debug_dir).mkdir(parents=True, exist_ok=True)
        (Path(t.debug_dir) / f"rank{rank}.pid").write_text(str(os.getpid()))
    return rank, world, device


def _resume(engine, ema: EMA, gen: torch.Generator, stage: int) -> dict:
    """The train state of ray.train.get_checkpoint(), restored into engine/EMA/RNG; {} when none."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as directory:
        state = zero.load_checkpoint(directory, engine, ema, stage)
    gen.set_state(state["generator"])
    return state


def _log_point(engine, meter: Meter, t, step: int, epoch: int, lr: float, device, world: int) -> dict:
    """Metrics over all workers since the last log point (a collective)."""
    totals = torch.tensor(meter.totals(), dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    totals /= t.sequence_parallel  # the ranks of a sequence group count the same batch (and 1/P of its work)
    grad_norm = engine.get_global_grad_norm()
    out = {"step": step, "epoch": epoch, "lr": lr, "global_batch": global_batch(t),
           "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
           **rates(totals.tolist(), time.perf_counter() - meter.since, world, t.peak_tflops),
           "mem_gb": memory_gb(device)}
    meter.reset()
    return out


def _checkpoint(cfg: ReelForgeConfig, engine, ema: EMA, gen, metrics: dict, meta: dict, data: dict,
                logger: MetricsLog | None) -> dict:
    """[3] report + checkpoint: every rank writes its part to a local dir that Ray uploads."""
    import ray.train

    t, step, rank = cfg.train, metrics["step"], dist.get_rank()
    directory = tempfile.mkdtemp(prefix=f"rf-ckpt-{rank}-")
    state = {"step": step, **data, "generator": gen.get_state()}  # data: epoch, micro-batches done
    ckpt_meta = {**meta, "step": step, "world_size": dist.get_world_size(), "zero_stage": t.zero_stage,
                 "grad_accum_steps": t.grad_accum_steps, "model": t.model}
    metrics.update(zero.save_checkpoint(directory, engine, ema, t.zero_stage, state, ckpt_meta, cfg.to_yaml()))
    if rank == 0 and t.samples:
        _sample(cfg, directory)
    if logger:
        logger.sync()
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                     checkpoint_dir_name=f"checkpoint_{step:08d}")
    shutil.rmtree(directory, ignore_errors=True)
    return metrics


def _sample(cfg: ReelForgeConfig, directory: str) -> None:
    """Sample the prompts from the checkpoint's EMA weights into CKPT/samples/ (rank 0)."""
    from training.sample import sample_to_files

    try:
        with torch.random.fork_rng(devices=[]):  # building the sampling model draws from the global RNG
            sample_to_files(cfg, directory, list(cfg.train.sample_prompts), Path(directory) / "samples")
    except Exception as exc:  # noqa: BLE001 - a failed preview must not stop training
        log.warning("sampling at %s failed: %s", directory, exc)


def _step(engine, optimizer, ema: EMA, gen, t, step: int, micro: Iterator, device, meter: Meter,
          rank: int) -> tuple[float, int]:
    """One optimizer step over t.grad_accum_steps micro-batches (DeepSpeed scales each loss by
    1/accumulation and steps the optimizer at the last one), then the EMA; returns (LR, epoch)."""
    lr = lr_at(step, t.lr, t.warmup_steps, t.steps, t.min_lr)
    set_lr(optimizer, lr)  # the torch AdamW's param groups, which DeepSpeed's wrapper steps
    config, accum = engine.module.config, t.grad_accum_steps
    for i in range(accum):
        waited = time.perf_counter()
        batch, epoch = next(micro)
        waited, timings = time.perf_counter() - waited, {}
        loss = zero.micro_step(engine, lambda: batch_loss(engine, batch, caption_dropout=t.caption_dropout,
                                                          generator=gen, device=device, conditioning=t.conditioning,
                                                          shift=t.time_shift),
                                boundary=i == accum - 1, timings=timings)
        n, length, b = bucket_tokens(batch["bucket"], config.patch), batch["text_tokens"].shape[1], len(batch["clip_ids"])
        meter.add(loss.item(), b, b * n, 3 * flops_per_token(config, n, length) * n * b)
        _trace(t, rank, step, step * accum + i, epoch, batch, waited, timings)
    ema.update(zero.ema_sources(engine.module, t.zero_stage), ema_decay_at(step, t.ema_decay))
    return lr, epoch


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: setup, model + EMA, optimizer, data, loop, checkpoint."""
    import ray.train

    cfg: ReelForgeConfig = config["config"]
    t, plan, meta = cfg.train, config["plan"], config["meta"]
    # 1. setup
    rank, world, device = _setup(t)
    prec = zero.precision(t.use_gpu, t.precision)
    mesh = zero.sequence_mesh(t)  # sequence parallelism: the ranks of a sequence group read one batch
    data_rank, data_world = (mesh.dp_rank, mesh.dp_size) if mesh else (rank, world)
    # 2. model + EMA: the same seed on every rank gives the same initial weights
    torch.manual_seed(t.seed)
    model = build_dit(t.model, in_channels=meta["channels"], text_dim=meta["text_dim"],
                      frame_cond=t.conditioning.enabled)  # conditioning frames in training: the mask input
    model.gradient_checkpointing = t.gradient_checkpointing
    model.sequence_parallel = mesh.sequence_parallel() if mesh else None  # Ulysses attention over the group
    # 3. optimizer: a torch AdamW handed to DeepSpeed
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    # [2] deepspeed.initialize: ZeRO partitions optimizer state (1), gradients (2), parameters (3)
    import deepspeed  # after _setup: DS_ACCELERATOR must be set before the import

    zero.skip_inference_shm_op()
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, mpu=mesh,
                                           config=zero.ds_config(t, data_world, prec))
    ema = EMA(zero.ema_sources(engine.module, t.zero_stage))
    gen = torch.Generator().manual_seed(t.seed * 7919 + data_rank)  # noise, t, dropout: one per sequence group
    state = _resume(engine, ema, gen, t.zero_stage)
    start = state.get("step", 0)
    # 4. data [1]: this rank's row groups (training/plan.py), read ahead, from the micro-batch it stands at
    position = state.get("micro", start * t.grad_accum_steps)
    micro = rank_steps(RankReader(plan, data_rank, t.seed, t.cache_mb, t.prefetch), plan, t, data_rank, position)
    # 5. loop
    stop = min(t.steps, t.stop_at_step or t.steps)
    logger = MetricsLog(config["run_dir"], resume_step=start) if rank == 0 else None
    meter, began = Meter(), time.perf_counter()
    engine.train()
    for step in range(start, stop):
        lr, epoch = _step(engine, optimizer, ema, gen, t, step, micro, device, meter, rank)
        done, position = step + 1, position + t.grad_accum_steps
        if rank == 0:  # the driver's live line (infra/progress.py): rank 0's mean loss since the last log point
            report_step(config.get("progress"), done, meter.loss_sum / max(meter.loss_n, 1))
        # 6. checkpoint
        if done % t.log_every and done % t.checkpoint_every and done != stop:
            continue
        metrics = {**_log_point(engine, meter, t, done, epoch, lr, device, world), "resumed_from": start}
        if logger:
            logger.write({**metrics, "wall_s": round(time.perf_counter() - began, 3)})
        if done % t.checkpoint_every == 0 or done == stop:
            metrics = _checkpoint(cfg, engine, ema, gen, metrics, meta, {"epoch": epoch, "micro": position}, logger)
        else:
            ray.train.report(metrics)  # [3] report
    if logger:
        logger.close()
    if start >= stop:  # nothing left to do (a re-run of a finished run): report where it stands
        ray.train.report({"step": start, "resumed_from": start})


# ----------------------------------------------------------------------------- the launcher


def plan_run(cfg: ReelForgeConfig, latents_uri: str) -> tuple[DataPlan, dict]:
    """The data plan and the facts the workers need (specs, channels, text width), from the
    shards' footers: no row of the table is read (but for one row group's shape columns)."""
    t = cfg.train
    files = latents_files(latents_uri)
    footers = read_footers(files)
    groups = row_groups(files, footers)
    if not groups:
        raise ValueError(f"the latents table under {latents_uri} is empty")
    facts = table_facts(files, footers, groups)
    spec = LatentSpec.from_row(facts["vae"], facts.pop("vae_id", None), facts.pop("latent_norm", None))
    facts.update(spec.to_meta() if spec else {})  # the VAE's identity and normalisation, for sample
    patch = VDIT_PRESETS[t.model].patch if t.model in VDIT_PRESETS else (1, 2, 2)
    size_for = partial(bucket_batch_size, batch_size=t.batch_size, batch_sizes=t.batch_sizes,
                       token_budget=t.token_budget, patch=patch)
    data_ranks, model = zero.data_ranks(t), VDIT_PRESETS.get(t.model)  # sequence_parallel divides the workers
    if model is not None and model.heads % t.sequence_parallel:
        raise ValueError(f"train.sequence_parallel={t.sequence_parallel} must divide {t.model}'s {model.heads} heads")
    plan = plan_data(files, groups, data_ranks, size_for, t.grad_accum_steps, t.image_ratio)
    unknown = sorted(set(t.batch_sizes) - set(plan.rows_per_bucket))
    if unknown:
        log.warning("train.batch_sizes names buckets not in the data: %s", unknown)
    log.info("train: %d rows in %d row groups of %d files; %d data ranks x batch %d x accumulation %d = global "
             "batch %d; %d micro-batches (%d optimizer steps, %.0f%% image batches) per epoch on every worker",
             plan.rows, len(groups), len(files), data_ranks, t.batch_size, t.grad_accum_steps,
             global_batch(t), plan.steps_per_epoch, plan.optimizer_steps_per_epoch, 100 * plan.image_batch_share)
    return plan, {**facts, "rows": plan.rows, "buckets": plan.rows_per_bucket}


def global_batch(t) -> int:
    """Rows per optimizer step at the nominal batch size: data ranks x batch x accumulation (the ranks
    of a sequence-parallel group share a batch)."""
    return zero.data_ranks(t) * t.batch_size * t.grad_accum_steps


def _check_cpus(cfg: ReelForgeConfig) -> None:
    """Fail fast when a local Ray cannot hold the workers at all (a cluster may still grow)."""
    import ray

    t = cfg.train
    total, need = ray.cluster_resources().get("CPU", 0), t.num_workers * t.cpus_per_worker
    if need > total and not cluster_address(cfg):
        raise ValueError(f"{t.num_workers} workers x {t.cpus_per_worker} CPU need {need:g} CPUs; this local Ray "
                         f"has {total:g}: lower train.cpus_per_worker or train.num_workers, or raise ray.num_cpus")


def _run_config(t, output: str, callbacks: list | None = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    kwargs = dict(failure_config=FailureConfig(max_failures=t.max_failures),
                  checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints), callbacks=callbacks or None)
    parent, name, fs = run_location(output)
    return RunConfig(name=name, storage_path=parent, storage_filesystem=fs, **kwargs)


def run_location(output: str):
    """(storage_path, name, filesystem or None) of a Ray run directory, local or s3:// (train and tune)."""
    if storage.is_s3(output):
        fs, path = storage.filesystem(output)
        parent, name = posixpath.split(path)
        if not parent:
            raise ValueError(f"--output {output}: give s3://bucket/prefix, not a bare bucket")
        return parent, name, fs
    parent, name = os.path.split(os.path.abspath(output))
    return parent, name, None


def prepare_output(cfg: ReelForgeConfig, output: str | None) -> tuple[ReelForgeConfig, str]:
    """The run directory (absolute when local: workers run in their own directories) and the config."""
    output = (output or cfg.train.storage_path or "runs/train").rstrip("/")
    if not storage.is_s3(output):
        output = os.path.abspath(output)
    if cfg.train.debug_dir:
        cfg = cfg.model_copy(deep=True)
        cfg.train.debug_dir = os.path.abspath(cfg.train.debug_dir)
    return cfg, output


def build_trainer(cfg: ReelForgeConfig, latents_uri: str, output: str, callbacks: list | None = None,
                  planned: tuple[DataPlan, dict] | None = None, progress=None):
    """The TorchTrainer of a run (Ray must be up): `run_train` fits it, each `reelforge tune` trial too.

    Returns (trainer, plan). `callbacks` are Ray Train user callbacks (Tune's TuneReportCallback);
    `planned` is `plan_run`'s answer when the caller has it already.
    """
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    plan, meta = planned or plan_run(cfg, latents_uri)
    _check_cpus(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        # the plan is row groups per rank and batch counts: each worker reads its own row groups
        train_loop_config={"config": cfg, "plan": plan, "meta": meta, "run_dir": output, "progress": progress},
        scaling_config=scaling_config(t),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=_run_config(t, output, callbacks),
    )
    return trainer, plan


def scaling_config(t):
    """Ray Train's ScalingConfig of a train section: CPUs, a GPU, custom resources (`train.resources`,
    e.g. {gpu_node: 0.01}) per worker, and how the workers' bundles spread over nodes."""
    from ray.train import ScalingConfig

    resources = {"CPU": t.cpus_per_worker, **t.resources, **({"GPU": 1} if t.use_gpu else {})}
    return ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources,
                         placement_strategy=t.placement_strategy)


def finish_run(cfg: ReelForgeConfig, result, plan: DataPlan, output: str, wall_s: float) -> dict:
    """Write the run's config.yaml and summary.json next to its checkpoints; returns the summary."""
    summary = _summary(cfg, result, plan, output, wall_s)
    storage.write_text(storage.join(output, "config.yaml"), cfg.to_yaml())
    storage.write_text(storage.join(output, "summary.json"), json.dumps(summary, indent=2))
    return summary


def run_train(cfg: ReelForgeConfig, latents_uri: str, output: str | None = None) -> dict:
    """Train the DiT on a latents table (local or s3://) into `output`; returns a summary dict."""
    _quiet()
    cfg, output = prepare_output(cfg, output)
    planned = plan_run(cfg, latents_uri)  # a missing or mixed latents table fails before Ray starts
    check_resume(output, planned[1])  # a run never continues on latents of a different VAE
    t0 = time.time()
    stop = min(cfg.train.steps, cfg.train.stop_at_step or cfg.train.steps)
    # every worker reads the latents and writes checkpoints: on a cluster neither may be local
    with (ray_session(cfg, paths={"--latents": latents_uri, "--output": output}),
          step_progress("train", stop, global_batch(cfg.train)) as progress):
        trainer, plan = build_trainer(cfg, latents_uri, output, planned=planned, progress=progress)
        result = trainer.fit()
    return finish_run(cfg, result, plan, output, time.time() - t0)


def _summary(cfg: ReelForgeConfig, result, plan: DataPlan, output: str, wall_s: float) -> dict:
    """The run in a few numbers: where it ended, how fast, and the newest checkpoint."""
    metrics = result.metrics or {}
    if "loss" not in metrics:  # a re-run of a finished run trains nothing: its last logged row
        rows = read_metrics(output)
        metrics = {**(rows[-1] if rows else {}), **metrics}
    checkpoint = None
    if result.checkpoint is not None:
        path = result.checkpoint.path
        checkpoint = "s3://" + path.lstrip("/") if storage.is_s3(output) else path
    keys = ("step", "epoch", "loss", "grad_norm", "lr", "samples_per_s", "tokens_per_s", "mfu", "mem_gb",
            "resumed_from", "param_sha")
    return {"output": output, **{k: metrics.get(k) for k in keys}, "checkpoint": checkpoint,
            "rows": plan.rows, "buckets": plan.rows_per_bucket, "batch_sizes": plan.batch_sizes,
            "global_batch": global_batch(cfg.train), "grad_accum_steps": plan.accum,
            "steps_per_epoch": plan.optimizer_steps_per_epoch, "micro_batches_per_epoch": plan.steps_per_epoch,
            "image_batch_share": round(plan.image_batch_share, 4), "sequence_parallel": cfg.train.sequence_parallel,
            "wall_s": round(wall_s, 1)}
