"""`reelforge submit` and `reelforge jobs`: run any reelforge job on a Ray cluster through the Ray Jobs API.

The job's runtime_env carries the project (`working_dir`, with virtualenvs, outputs and VCS data
excluded) and the resolved config (as YAML in an environment variable, so a config file that lives
outside the project still travels, with every --set already applied). Only the working dir given
is uploaded. On the cluster the job joins the running Ray cluster (RAY_ADDRESS, set by Ray Jobs).
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable

from infra.config import load_config

CONFIG_ENV = "REELFORGE_CONFIG_YAML"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never upload these: they are big, machine-specific, or secrets.
EXCLUDES = [".venv", "venv", ".git", "**/__pycache__", "*.pyc", "demo-output", "bench-output", ".pytest_cache",
            "*.egg-info", ".env", "*.pem", ".aws"]
_FORWARD_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _split_config(args: list[str]) -> tuple[list[str], str | None, list[str]]:
    """Take --config/-c and --set out of a job's args: (rest, config path, overrides)."""
    rest, config, sets = [], None, []
    it = iter(range(len(args)))
    for i in it:
        a = args[i]
        if a in ("--config", "-c") and i + 1 < len(args):
            config = args[i + 1]
            next(it)
        elif a.startswith("--config="):
            config = a.split("=", 1)[1]
        elif a == "--set" and i + 1 < len(args):
            sets.append(args[i + 1])
            next(it)
        elif a.startswith("--set="):
            sets.append(a.split("=", 1)[1])
        else:
            rest.append(a)
    return rest, config, sets


def build_submission(job_args: list[str], working_dir: str, python: str = "python",
                     forward_env: bool = True) -> dict:
    """The kwargs for JobSubmissionClient.submit_job: entrypoint and runtime_env."""
    if not job_args:
        raise ValueError("nothing to submit: give a job after --, e.g. `reelforge submit -- curate --input ...`")
    if job_args[0] in ("submit", "jobs"):
        raise ValueError(f"`{job_args[0]}` cannot be submitted")
    rest, config, sets = _split_config(job_args)
    cfg = load_config(config, sets)  # validate here: a bad key fails before anything is sent
    env = {CONFIG_ENV: cfg.to_yaml()}
    if forward_env:
        env.update({k: os.environ[k] for k in _FORWARD_ENV if os.environ.get(k)})
    # Credentials are not forwarded: the cluster uses its own role / secrets.
    entrypoint = " ".join([python, "-m", "infra.cli", *map(shlex.quote, rest), "--config", f"env:{CONFIG_ENV}"])
    return {"entrypoint": entrypoint,
            "runtime_env": {"working_dir": os.path.abspath(working_dir), "excludes": EXCLUDES, "env_vars": env}}


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address or os.environ.get("RAY_JOBS_ADDRESS") or DEFAULT_ADDRESS)


def submit(job_args: list[str], address: str | None = None, working_dir: str = ".", python: str = "python") -> str:
    """Submit a reelforge job; returns the Ray job (submission) id."""
    kwargs = build_submission(job_args, working_dir, python)
    c = client(address)
    deadline = time.time() + 120
    while True:
        try:
            return c.submit_job(**kwargs, metadata={"reelforge_job": job_args[0]})
        except RuntimeError as exc:
            # A head that just started has its dashboard up before its job agent: wait for it.
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            time.sleep(2)


def wait(job_id: str, address: str | None = None, on_logs: Callable[[str], None] | None = None,
         timeout_s: float | None = None, poll_s: float = 1.0) -> str:
    """Follow a job until it ends (printing new log text); returns its final status name."""
    from ray.job_submission import JobStatus

    c = client(address)
    seen, start = 0, time.time()
    while True:
        status = c.get_job_status(job_id)
        logs = c.get_job_logs(job_id)
        if on_logs and len(logs) > seen:
            on_logs(logs[seen:])
            seen = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status.value
        if timeout_s is not None and time.time() - start > timeout_s:
            raise TimeoutError(f"job {job_id} still {status.value} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def list_jobs(address: str | None = None) -> list[dict]:
    return [{"id": j.submission_id, "status": j.status.value, "entrypoint": j.entrypoint,
             "start": j.start_time, "end": j.end_time} for j in client(address).list_jobs()]


def logs(job_id: str, address: str | None = None) -> str:
    return client(address).get_job_logs(job_id)


def stop(job_id: str, address: str | None = None) -> bool:
    return client(address).stop_job(job_id)
