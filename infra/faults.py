"""Fault injection for the reliability suite: one hook, inert unless REELFORGE_FAULT is set.

Production code calls `fault_point(where, **context)` at a few named points; nothing happens
unless the environment variable REELFORGE_FAULT arms a fault there. Its value is one or more
`kind=argument` entries separated by `;`:

- `kill_once=STAGE:MARKER`: the first task of curate stage STAGE (probe, split, frames, ...) to
  create the file MARKER kills its own worker process (exit 137, as an OOM kill), once; Ray must
  retry the task. Point: `stage:STAGE`, in the worker.
- `slow=STAGE:SECONDS`: every task of stage STAGE (a curate stage, `caption-prep`,
  `precompute-prep`) sleeps SECONDS first, so a test can lose a node while the stage is busy.
  Point: `stage:STAGE`, in the worker.
- `crash_after_commits=N`: SIGKILL the driver's process group right after its N-th partition
  commit, as a killed driver dies. Point: `commit`, in the driver.
- `crash_after_trials=N`: SIGKILL the tune driver's process group once N trials have ended and
  Tune's saved experiment state records them. Point: `tune:step`, in the tune driver.

The reliability tests set it on the subprocess they crash; nothing else ever should. A job that
joins a cluster forwards it to its workers (infra.runtime), as it forwards the storage settings.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import signal
import time

log = logging.getLogger(__name__)
ENV = "REELFORGE_FAULT"

_commits = 0


def armed_env() -> dict[str, str]:
    """{REELFORGE_FAULT: spec} when a fault is armed in this process, else {}: for the workers."""
    return {ENV: os.environ[ENV]} if os.environ.get(ENV) else {}


def _armed() -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    return dict(part.split("=", 1) for part in spec.split(";") if "=" in part)


def fault_point(where: str, **context) -> None:
    """The hook: act if REELFORGE_FAULT arms a fault at `where`; otherwise return at once."""
    armed = _armed()
    if not armed:
        return
    if where.startswith("stage:") and "slow" in armed:
        stage, _, seconds = armed["slow"].partition(":")
        if stage == where[len("stage:"):]:
            time.sleep(float(seconds))
    if where.startswith("stage:") and "kill_once" in armed:
        _kill_once(where[len("stage:"):], armed["kill_once"])
    elif where == "commit" and "crash_after_commits" in armed:
        _crash_after_commits(int(armed["crash_after_commits"]))
    elif where == "tune:step" and "crash_after_trials" in armed:
        _crash_after_trials(int(armed["crash_after_trials"]), context["trials"], context["experiment_dir"])


def _kill_process_group() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _kill_once(stage: str, argument: str) -> None:
    wanted, _, marker = argument.partition(":")
    if wanted != stage:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os._exit(137)


def _crash_after_commits(limit: int) -> None:
    global _commits
    _commits += 1
    if _commits >= limit:
        _kill_process_group()


def persisted_statuses(experiment_dir: str) -> dict[str, str]:
    """trial id -> status as Tune's last saved experiment state (a local dir) records it."""
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


def _crash_after_trials(limit: int, trials: list, experiment_dir: str) -> None:
    # Tune saves its experiment state every few seconds: a crash right after a trial ends but
    # before the save would re-run that trial on --resume, so wait until the save records it.
    if sum(t.status == "TERMINATED" for t in trials) < limit:
        return
    if list(persisted_statuses(experiment_dir).values()).count("TERMINATED") >= limit:
        log.warning("fault injection: killing the tune driver after %d trials", limit)
        _kill_process_group()
