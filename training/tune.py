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

import csv
import io
import json
import logging
import math
import os
import posixpath
import re
import signal
import time
from typing import Any

from infra import storage
from infra.config import ConfigError, ReelForgeConfig, _apply_override, space_key
from training.train import run_location

log = logging.getLogger(__name__)

TRIAL_CPUS = 0.01  # the trial's function actor only waits on its trainer (Tune rejects 0)
RESULT_FILES = ("trials.csv", "best.yaml", "metric.png", "tune_summary.json")


# ----------------------------------------------------------------------------- the space


def search_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`tune.space` (validated by TuneConfig) as Ray Tune domains, keyed by full dotted config keys."""
    from ray import tune

    out = {}
    for key, spec in space.items():
        (kind, args), = spec.items()
        if kind == "loguniform":
            out[space_key(key)] = tune.loguniform(*args)
        elif kind == "uniform":
            out[space_key(key)] = tune.uniform(*args)
        elif kind == "quniform":
            out[space_key(key)] = tune.quniform(*args)
        elif kind == "randint":  # both ends included, as a user reads [low, high]
            out[space_key(key)] = tune.randint(args[0], args[1] + 1)
        elif kind == "lograndint":
            out[space_key(key)] = tune.lograndint(args[0], args[1] + 1)
        elif kind == "choice":
            out[space_key(key)] = tune.choice(list(args))
        elif kind == "grid":
            out[space_key(key)] = tune.grid_search(list(args))
        else:  # TuneConfig rejects these at load
            raise ValueError(f"tune.space.{key}: unknown distribution {kind!r}")
    return out


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value  # numpy scalars from the samplers


def apply_trial(base: ReelForgeConfig, params: dict[str, Any]) -> ReelForgeConfig:
    """The base config with a trial's values (dotted keys) applied and validated."""
    from pydantic import ValidationError

    from infra.config import _format_errors

    data = base.to_dict()
    for key, value in params.items():
        _apply_override(data, key.split("."), _plain(value), f"{key}={value}")
    try:
        return ReelForgeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, "tune trial " + json.dumps(params, default=str))) from None


def _categorical_values(space: dict) -> list[tuple[str, Any]]:
    return [(space_key(k), v) for k, spec in space.items() for kind, args in spec.items()
            if kind in ("choice", "grid") for v in args]


def check_space(cfg: ReelForgeConfig) -> None:
    """Every choice/grid value must make a valid config: fail before any trial starts, naming the key."""
    for key, value in _categorical_values(cfg.tune.space):
        apply_trial(cfg, {key: value})


# ----------------------------------------------------------------------------- the trial


def tune_trial(params: dict, base: dict, latents_uri: str, runs_dir: str) -> None:
    """One trial (runs in a Tune actor): the train job's TorchTrainer with this trial's values."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from training.train import _quiet, build_trainer, finish_run

    _quiet()
    cfg = apply_trial(ReelForgeConfig.model_validate(base), params)
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


def persisted_statuses(experiment_dir: str) -> dict[str, str]:
    """trial id -> status as Tune's last saved experiment state (local dir) records it."""
    import glob

    states = sorted(glob.glob(os.path.join(experiment_dir, "experiment_state-*.json")), key=os.path.getmtime)
    if not states:
        return {}
    try:
        with open(states[-1]) as f:
            data = json.load(f)
    except (OSError, ValueError):  # being rewritten right now
        return {}
    out = {}
    for trial_json, _ in data.get("trial_data", []):
        trial = json.loads(trial_json)
        out[trial["trial_id"]] = trial.get("status")
    return out


class _CrashAfterTrials:
    """Fault injection for the reliability suite: REELFORGE_FAULT_TUNE_CRASH_AFTER_TRIALS=N SIGKILLs the
    driver's process group once N trials have ended and Tune's saved experiment state says so (it is
    saved every few seconds, so a crash right after a trial ends would re-run it on --resume)."""

    def __new__(cls, limit: int, experiment_dir: str):
        from ray.tune import Callback

        class CrashAfterTrials(Callback):
            def on_step_end(self, iteration, trials, **info):
                # Tune pickles its callbacks into the experiment: a restored run gets this one back,
                # so it acts only while the variable is set in this process.
                if not os.environ.get("REELFORGE_FAULT_TUNE_CRASH_AFTER_TRIALS"):
                    return
                if sum(t.status == "TERMINATED" for t in trials) < limit:
                    return
                if list(persisted_statuses(experiment_dir).values()).count("TERMINATED") >= limit:
                    log.warning("fault injection: killing the tune driver after %d trials", limit)
                    os.killpg(os.getpgid(0), signal.SIGKILL)

        return CrashAfterTrials()


# ----------------------------------------------------------------------------- the Tuner


def _scheduler(cfg: ReelForgeConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule

    tc = cfg.tune
    max_t = max([cfg.train.steps] + [int(v) for k, v in _categorical_values(tc.space) if k == "train.steps"])
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

    callbacks = []
    crash = os.environ.get("REELFORGE_FAULT_TUNE_CRASH_AFTER_TRIALS")
    if crash:
        callbacks.append(_CrashAfterTrials(int(crash), output))
    kwargs = dict(failure_config=FailureConfig(max_failures=cfg.tune.max_failures),
                  checkpoint_config=CheckpointConfig(num_to_keep=None), callbacks=callbacks, verbose=1)
    parent, name, fs = run_location(output)
    return RunConfig(name=name, storage_path=parent, storage_filesystem=fs, **kwargs)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_ray(cfg: ReelForgeConfig) -> bool:
    """Start or join Ray. A local one gets the dashboard: Ray Train's placement-group cleaner asks
    its state API whether a trial's controller is alive, and without an answer a stopped trial's
    workers' CPUs are never given back and the next trial hangs. The cleaner finds the API through
    RAY_API_SERVER_ADDRESS, set here for every worker: its own lookup takes the last `ray start`
    cluster of the machine, which is another cluster (or a dead one) wherever several run."""
    import ray

    if ray.is_initialized():
        return False
    env = storage.storage_env()
    port = None
    if not cfg.ray.address:
        port = _free_port()
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(address=cfg.ray.address or "local", num_cpus=None if cfg.ray.address else cfg.ray.num_cpus,
             include_dashboard=True if not cfg.ray.address else cfg.ray.include_dashboard,
             dashboard_host="127.0.0.1", dashboard_port=port,
             object_store_memory=cfg.ray.object_store_memory, runtime_env={"env_vars": env}, log_to_driver=False)
    return True


def _check_cpus(cfg: ReelForgeConfig) -> None:
    """Concurrent trials x their workers must leave a CPU for reading latents, or trials hang."""
    import ray

    t, total = cfg.train, ray.cluster_resources().get("CPU", 0)
    per_trial = t.num_workers * t.cpus_per_worker + TRIAL_CPUS
    left = total - cfg.tune.max_concurrent_trials * per_trial
    if left < 1:
        msg = (f"{cfg.tune.max_concurrent_trials} concurrent trials x ({t.num_workers} workers x "
               f"{t.cpus_per_worker} CPU + {TRIAL_CPUS} for the trial) leave {left:.2f} of {total:g} CPUs for "
               "reading latents (Ray Data needs 1): lower tune.max_concurrent_trials or train.cpus_per_worker")
        if cfg.ray.address:
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
    started, t0 = _init_ray(cfg), time.time()
    try:
        _check_cpus(cfg)
        exists = _experiment_exists(output)
        if exists and not resume:
            raise ValueError(f"{output} already holds a tune run: pass --resume to continue it, or another --output")
        if resume and not exists:
            raise ValueError(f"--resume: no tune run to restore under {output}")
        runs_dir = storage.join(output, "runs")
        trainable = tune.with_resources(
            tune.with_parameters(tune_trial, base=cfg.to_dict(), latents_uri=latents_uri, runs_dir=runs_dir),
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
    finally:
        if started:
            import ray

            ray.shutdown()
    return write_results(cfg, grid, output, time.time() - t0)


# ----------------------------------------------------------------------------- the results


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
        params = {k: _plain(v) for k, v in (result.config or {}).items()}
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
