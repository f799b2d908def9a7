"""The one place ReelForge starts or joins Ray: every job, the demo and the benches go through here.

Where to run comes from `ray.address` in the config, else `RAY_ADDRESS` (set by `ray start`
users and by Ray Jobs inside a submitted job), else a new local Ray with `ray.num_cpus` CPUs.
Inside a submitted job the job's runtime_env already reaches every worker, so no second one is
passed (Ray rejects a conflicting one). `init_ray` says whether it started Ray, so only the
starter stops it: `ray_session` pairs the two.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator

from infra import storage
from infra.config import ReelForgeConfig

log = logging.getLogger(__name__)

# Ray's own notices that are not the user's business: usage stats, and (loggers) the banner saying a
# new local Ray uses token auth (it still does) and Ray Data's note that it shortens long stage names.
_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
_QUIET_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress.utils")


def _quiet_ray() -> None:
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def in_submitted_job() -> bool:
    """True inside a job started by Ray Jobs (`reelforge submit`)."""
    return bool(os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def cluster_address(cfg: ReelForgeConfig) -> str | None:
    """The cluster this job joins (config first, then RAY_ADDRESS), or None for a new local Ray."""
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    return None if address in (None, "", "local") else address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_ray(cfg: ReelForgeConfig, *, state_api: bool = False) -> bool:
    """Start or join Ray as the config says; True when this call started it (and should stop it).

    `state_api`: a new local Ray also runs the dashboard's state API, which Ray Train's
    placement-group cleaner asks whether a stopped Tune trial's controller is alive (without an
    answer its workers' CPUs are never given back). The cleaner finds the API through
    RAY_API_SERVER_ADDRESS, set for every worker: its own lookup takes the machine's last
    `ray start` cluster, which is another (or a dead) one wherever several run.
    """
    import ray

    if ray.is_initialized():
        return False
    _quiet_ray()
    address = cluster_address(cfg)
    env = storage.storage_env()
    kwargs: dict = dict(include_dashboard=cfg.ray.include_dashboard, log_to_driver=False)
    if address is None:
        kwargs.update(num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory)
        if state_api:
            port = _free_port()
            env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
            kwargs.update(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port)
    if not in_submitted_job():
        kwargs["runtime_env"] = {"env_vars": env}
    ray.init(address=address or "local", **kwargs)
    log.info("%s Ray at %s", "joined" if address else "started a local", address or "local")
    return True


@contextlib.contextmanager
def ray_session(cfg: ReelForgeConfig, *, state_api: bool = False) -> Iterator[bool]:
    """Ray up for the block (started or joined); stopped afterwards only if this block started it."""
    started = init_ray(cfg, state_api=state_api)
    try:
        yield started
    finally:
        if started:
            import ray

            ray.shutdown()


@contextlib.contextmanager
def ray_when_needed(cfg: ReelForgeConfig, *, state_api: bool = False) -> Iterator[Callable[[], None]]:
    """Yields `ensure()`, which brings Ray up the first time a step needs it (a fully resumed job
    never starts Ray); Ray is stopped afterwards only if this block started it."""
    started: list[bool] = []

    def ensure() -> None:
        if init_ray(cfg, state_api=state_api):
            started.append(True)

    try:
        yield ensure
    finally:
        if started:
            import ray

            ray.shutdown()


def cluster_cpus() -> float:
    """CPUs the joined cluster has in all (0 when Ray is not up)."""
    import ray

    return float(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else 0.0
