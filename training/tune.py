"""`reelforge tune`: Ray Tune over the train job's own TorchTrainer (training/train.py).

Each trial is a function trainable that applies its sampled values to the config (dotted keys of
`tune.space`, e.g. `train.lr`), builds the trainer `run_train` builds (`build_trainer`, with
Tune's `TuneReportCallback`) and fits it into `OUTPUT/runs/TRIAL_ID`. This is Ray 2.60's Train V2
pattern: `Tuner(TorchTrainer(...))` is no longer accepted (DESIGN-STACK.md). The trial actor holds
`TRIAL_CPUS`; the trainer's workers take the resources of `train.num_workers` x
`train.cpus_per_worker` (+ a GPU each with `train.use_gpu`) like a plain train run.

The scheduler sees every report of the train loop (each `train.log_every` steps and each
checkpoint) with `step` as its clock: ASHA stops trials whose metric trails at a rung (steps
`grace_period * reduction_factor**k`). At the end: `OUTPUT/trials.csv` (one row per trial),
`OUTPUT/best.yaml` (the whole config with the best trial's values: `reelforge train --config`
takes it as is), `OUTPUT/metric.png` (metric vs step per trial) and `OUTPUT/tune_summary.json`.
`reelforge tune --resume` continues an interrupted search with `Tuner.restore`: finished trials
are kept, unfinished ones resume from their last train checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time

from infra import storage
from infra.config import ConfigError, ReelForgeConfig
from infra.faults import fault_point
from infra.progress import quiet
from infra.runtime import cluster_address, ray_session
from training.train import run_location
from training.tune_results import write_results
from training.tune_space import apply_trial, categorical_values, check_space, search_space

log = logging.getLogger(__name__)

TRIAL_CPUS = 0.01  # the trial's function actor only waits on its trainer (Tune rejects 0)
RESULT_FILES = ("trials.csv", "best.yaml", "metric.png", "tune_summary.json")


# ----------------------------------------------------------------------------- the trial


def tune_trial(params: dict, base: ReelForgeConfig, latents_uri: str, runs_dir: str) -> None:
    """One trial (runs in a Tune actor): the train job's TorchTrainer with this trial's values."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from training.train import _quiet, build_trainer, finish_run

    _quiet()
    cfg = apply_trial(base, params)
    trial_id = tune.get_context().get_trial_id()
    output = storage.join(runs_dir, trial_id)
    if cfg.train.debug_dir:  # ops and fault tests: this trial's pid beside its workers' pid files and traces
        cfg.train.debug_dir = os.path.join(cfg.train.debug_dir, trial_id)
        os.makedirs(cfg.train.debug_dir, exist_ok=True)
        with open(os.path.join(cfg.train.debug_dir, "trial.pid"), "w") as f:
            f.write(str(os.getpid()))
    # Written first: a trial the scheduler stops (or that reaches max_t) is ended inside fit().
    storage.write_text(storage.join(output, "config.yaml"), cfg.to_yaml())
    t0 = time.time()
    trainer, plan = build_trainer(cfg, latents_uri, output, callbacks=[TuneReportCallback()])
    result = trainer.fit()  # a restored trial finds its run's checkpoint here and resumes from it
    finish_run(cfg, result, plan, output, time.time() - t0)


class _Progress:
    """A Tune callback on every step of the search: the one fault-injection point of a tune driver."""

    def __new__(cls, experiment_dir: str):
        from ray.tune import Callback

        class Progress(Callback):
            def on_step_end(self, iteration, trials, **info):
                fault_point("tune:step", trials=trials, experiment_dir=experiment_dir)

        return Progress()


# ----------------------------------------------------------------------------- the Tuner


def _scheduler(cfg: ReelForgeConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule

    tc = cfg.tune
    max_t = max([cfg.train.steps] + [int(v) for k, v in categorical_values(tc.space) if k == "train.steps"])
    if tc.scheduler == "asha":
        return ASHAScheduler(time_attr="step", max_t=max_t, grace_period=tc.grace_period,
                             reduction_factor=tc.reduction_factor)
    if tc.scheduler == "hyperband":
        return HyperBandScheduler(time_attr="step", max_t=max_t, reduction_factor=tc.reduction_factor)
    if tc.scheduler == "median":
        return MedianStoppingRule(time_attr="step", grace_period=tc.grace_period)
    return FIFOScheduler()


def _searcher(cfg: ReelForgeConfig):
    name = cfg.tune.searcher
    if name == "random":
        return None  # Tune's BasicVariantGenerator: random samples, grid points expanded
    if any("grid" in spec for spec in cfg.tune.space.values()):
        raise ConfigError(f"tune.searcher: {name} cannot take 'grid' entries in tune.space: use 'choice'")
    try:
        if name == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch()
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch()
    except (ImportError, AssertionError) as exc:
        raise ConfigError(f"tune.searcher: {name} needs its package (pip install {name}): {exc}") from None


def _run_config(cfg: ReelForgeConfig, output: str):
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig

    kwargs = dict(failure_config=FailureConfig(max_failures=cfg.tune.max_failures),
                  checkpoint_config=CheckpointConfig(num_to_keep=None), callbacks=[_Progress(output)],
                  verbose=0 if quiet() else 1)  # 1: Tune's trial table every 30 s while it runs
    parent, name, fs = run_location(output)
    return RunConfig(name=name, storage_path=parent, storage_filesystem=fs, **kwargs)


def _check_cpus(cfg: ReelForgeConfig) -> None:
    """Concurrent trials x their workers must fit a local Ray, or trials wait forever."""
    import ray

    t, total = cfg.train, ray.cluster_resources().get("CPU", 0)
    per_trial = t.num_workers * t.cpus_per_worker + TRIAL_CPUS
    need = cfg.tune.max_concurrent_trials * per_trial
    if need > total + 1e-9:
        msg = (f"{cfg.tune.max_concurrent_trials} concurrent trials x ({t.num_workers} workers x "
               f"{t.cpus_per_worker} CPU + {TRIAL_CPUS} for the trial) need {need:.2f} of {total:g} CPUs: lower "
               "tune.max_concurrent_trials or train.cpus_per_worker")
        if cluster_address(cfg):
            log.warning(msg)
        else:
            raise ValueError(msg)


def read_run(output: str) -> dict:
    """What a search started with: {"config": a local YAML path, "latents": URI} (for --resume)."""
    import tempfile

    output = output.rstrip("/")
    try:
        started = json.loads(storage.read_text(storage.join(output, "tune_run.json")))
        text = storage.read_text(storage.join(output, "tune_config.yaml"))
    except FileNotFoundError:
        raise FileNotFoundError(f"--resume: {output} holds no tune run (no tune_run.json)") from None
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="reelforge-tune-", delete=False) as f:
        f.write(text)
    return {"config": f.name, "latents": started["latents"]}


def _experiment_exists(output: str) -> bool:
    from ray.tune import Tuner

    parent, name, fs = run_location(output)
    path = posixpath.join(parent, name) if fs is not None else output
    return Tuner.can_restore(path, storage_filesystem=fs)


def run_tune(cfg: ReelForgeConfig, latents_uri: str, output: str | None = None, resume: bool = False) -> dict:
    """Search `tune.space` over train runs on a latents table; returns the summary (also written to OUTPUT)."""
    from ray import tune

    from training.train import _quiet, plan_run

    _quiet()
    output = (output or cfg.tune.storage_path or "runs/tune").rstrip("/")
    if not storage.is_s3(output):
        output = os.path.abspath(output)
    if not cfg.tune.space:
        raise ConfigError("tune.space is empty: nothing to search (see README 'Hyperparameter search')")
    check_space(cfg)
    if cfg.train.debug_dir:
        cfg = cfg.model_copy(deep=True)
        cfg.train.debug_dir = os.path.abspath(cfg.train.debug_dir)
    plan_run(cfg, latents_uri)  # a missing or mixed latents table fails before Ray starts
    t0 = time.time()
    # the state API: a stopped trial's workers are freed only when Ray Train can ask it (runtime.py)
    with ray_session(cfg, state_api=True, paths={"--latents": latents_uri, "--output": output}):
        _check_cpus(cfg)
        exists = _experiment_exists(output)
        if exists and not resume:
            raise ValueError(f"{output} already holds a tune run: pass --resume to continue it, or another --output")
        if resume and not exists:
            raise ValueError(f"--resume: no tune run to restore under {output}")
        runs_dir = storage.join(output, "runs")
        trainable = tune.with_resources(
            tune.with_parameters(tune_trial, base=cfg, latents_uri=latents_uri, runs_dir=runs_dir),
            {"CPU": TRIAL_CPUS})
        if resume:
            parent, name, fs = run_location(output)
            path = posixpath.join(parent, name) if fs is not None else output
            # finished trials stay finished; unfinished and errored ones resume from their checkpoints
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                       storage_filesystem=fs)
        else:
            storage.write_text(storage.join(output, "tune_config.yaml"), cfg.to_yaml())
            storage.write_text(storage.join(output, "tune_run.json"), json.dumps({"latents": latents_uri}))
            tuner = tune.Tuner(
                trainable, param_space=search_space(cfg.tune.space),
                tune_config=tune.TuneConfig(metric=cfg.tune.metric, mode=cfg.tune.mode,
                                            num_samples=cfg.tune.num_samples,
                                            max_concurrent_trials=cfg.tune.max_concurrent_trials,
                                            scheduler=_scheduler(cfg), search_alg=_searcher(cfg),
                                            reuse_actors=False),
                run_config=_run_config(cfg, output))
        grid = tuner.fit()
    return write_results(cfg, grid, output, time.time() - t0)
