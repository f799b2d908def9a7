"""`reelforge tune` end to end on a real local Ray (its own, with the dashboard) and the tiny DiT.

One search of 4 trials (a grid over lr: two that learn, two that barely move), ASHA with a rung
at step 10 of 40. The driver is SIGKILLed once Tune has saved two trials as ended, then
`reelforge tune --resume` finishes the search. Checked: ASHA stopped the low-lr trials early, the
finished trials were not run again, the trials table / plot / best config are written, and the
best config loads and trains. Separately, a one-trial search whose whole trial (Tune actor + train
workers) is SIGKILLed after its step-20 checkpoint is retried from that checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from infra.config import load_config
from training.synthetic import write_synthetic_latents
from training.train import run_train
from infra.faults import persisted_statuses

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
GOOD, BAD = (3e-3, 2e-3), (1e-7, 2e-7)
SETS = ["train.steps=40", "train.warmup_steps=2", "train.log_every=10", "train.checkpoint_every=20",
        "tune.grace_period=10", "tune.num_samples=1",
        # the whole space (tiny.yaml has its own); 1.0e-07, not 1e-07, which YAML reads as a string
        "tune.space={train.lr: {grid: [%s]}}" % ", ".join(f"{v:.1e}" for v in (GOOD[0], BAD[0], GOOD[1], BAD[1]))]


def _tune(args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "infra.cli", "tune", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _kill_first_trial(debug: Path, out: Path, killed: dict) -> None:
    """SIGKILL the whole first trial (its Tune actor and both train workers; its Train controller
    dies with the actor that owns it) once its step-20 checkpoint is registered and it trained on."""
    deadline = time.time() + 400
    while time.time() < deadline and not killed:
        time.sleep(0.2)
        trials = sorted(debug.glob("*/trial.pid"))
        if not trials:
            continue
        trial = trials[0].parent
        trace = trial / "trace-rank0.jsonl"
        # the snapshot is written once Ray Train has registered the step-20 checkpoint: a retry restores it
        if not (trace.exists() and (out / "runs" / trial.name / "checkpoint_manager_snapshot.json").exists()):
            continue
        steps = [json.loads(line)["step"] for line in trace.read_text().splitlines() if line.strip()]
        if steps and max(steps) >= 22:
            pids = [int((trial / n).read_text()) for n in ("trial.pid", "rank0.pid", "rank1.pid")]
            # only Ray's own processes of this trial (never a pid the system has since reused)
            assert all(b"ray::" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids), pids
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed.update(trial=trial.name, at_step=max(steps), pids=pids)


def _args(latents: str, out: Path, *sets: str) -> list[str]:
    args = ["--latents", latents, "--output", str(out), "--config", "configs/tiny.yaml"]
    for s in (*SETS, *sets):
        args += ["--set", s]
    return args


@pytest.fixture(scope="module")
def env():
    return dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return write_synthetic_latents(str(tmp_path_factory.mktemp("tune-pre")), {"3x8x8": 16, "2x8x12": 8})


@pytest.fixture(scope="module")
def searched(tmp_path_factory, latents, env):
    """(experiment dir, finished-run stamps before the resume, resume output)."""
    out = tmp_path_factory.mktemp("tune") / "search"
    crashed = _tune(_args(latents, out), dict(env, REELFORGE_FAULT="crash_after_trials=2"),
                    start_new_session=True)
    log, _ = crashed.communicate(timeout=540)
    assert crashed.returncode == -signal.SIGKILL, log[-3000:]
    # killed once Tune's saved state had two trials ended (the third may have been running)
    done = [t for t, status in persisted_statuses(str(out)).items() if status == "TERMINATED"]
    assert len(done) == 2, (persisted_statuses(str(out)), log[-3000:])
    finished = {p: (p.stat().st_mtime_ns, p.stat().st_size) for t in done for p in (out / "runs" / t).glob("**/*")
                if p.is_file()}
    assert any(p.name == "metrics.csv" for p in finished) and any("checkpoint_" in str(p) for p in finished)
    # config and latents come from the run; its own session, like the crashed run (a fault here must
    # never reach pytest's process group)
    resumed = _tune(["--output", str(out), "--resume"], env, start_new_session=True)
    log, _ = resumed.communicate(timeout=540)
    assert resumed.returncode == 0, log[-3000:]
    return out, finished, log


def test_a_killed_trial_is_retried_from_its_checkpoint(tmp_path, latents, env):
    """One trial (FIFO): its Tune actor and both workers SIGKILLed after the step-20 checkpoint."""
    out, debug = tmp_path / "search", tmp_path / "debug"
    proc = _tune(_args(latents, out, "tune.space={train.lr: {grid: [3.0e-3]}}", "tune.scheduler=fifo",
                       "tune.max_failures=1", f"train.debug_dir={debug}"), env, start_new_session=True)
    killed: dict = {}
    watcher = threading.Thread(target=_kill_first_trial, args=(debug, out, killed), daemon=True)
    watcher.start()
    log, _ = proc.communicate(timeout=540)
    watcher.join(timeout=5)
    assert proc.returncode == 0 and killed and killed["at_step"] > 20, (killed, log[-3000:])
    trial = json.loads((out / "tune_summary.json").read_text())["trials"][0]
    # the retry resumed the trial's own train run from its step-20 checkpoint and finished it
    assert trial["trial"] == killed["trial"] and trial["status"] == "completed", trial
    assert trial["steps"] == 40 and trial["resumed_from"] == 20, trial


def test_asha_stops_the_bad_trials_and_resume_keeps_finished_ones(searched):
    out, finished, log = searched
    summary = json.loads((out / "tune_summary.json").read_text())
    trials = {t["train.lr"]: t for t in summary["trials"]}
    assert sorted(trials) == sorted(GOOD + BAD), summary["trials"]
    best = summary["best"]
    assert best["train.lr"] in GOOD and best["status"] == "completed" and best["steps"] == 40
    for lr in BAD:  # ASHA compared them with a good trial at the step-10 rung and stopped them
        assert trials[lr]["status"] == "stopped early" and trials[lr]["steps"] < best["steps"], trials[lr]
        assert trials[lr]["last_loss"] > best["last_loss"]
    # the two trials that had finished before the kill were not run again: their runs are untouched
    first_two = {p.parts[len(out.parts) + 1] for p in finished}
    now = {p: (p.stat().st_mtime_ns, p.stat().st_size) for t in first_two for p in (out / "runs" / t).glob("**/*")
           if p.is_file()}
    assert len(first_two) == 2 and now == finished
    assert len(list(out.glob("runs/*/config.yaml"))) == 4
    # the table on the terminal, the CSV, the plot
    assert "stopped" in log and "completed" in log and "best:" in log  # (rich may fold a cell)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 4 and {"trial", "train.lr", "status", "steps", "best_loss", "last_loss"} <= set(rows[0])
    assert (out / "metric.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_config_loads_and_trains(searched, latents, ray_local, tmp_path):
    out, _, _ = searched
    text = (out / "best.yaml").read_text()
    assert text.startswith("# best trial")
    cfg = load_config(out / "best.yaml")
    best = json.loads((out / "tune_summary.json").read_text())["best"]
    assert cfg.train.lr == best["train.lr"] and cfg.tune.space  # the whole config, the search kept
    summary = run_train(load_config(out / "best.yaml", ["train.stop_at_step=10"]), latents, str(tmp_path / "run"))
    assert summary["step"] == 10 and summary["loss"] is not None and summary["checkpoint"]
