"""The one place ReelForge starts or joins Ray: every job, the demo and the benches go through here.

Where to run comes from `ray.address` in the config, else `RAY_ADDRESS` (set by `ray start`
users and by Ray Jobs inside a submitted job), else a new local Ray with `ray.num_cpus` CPUs.
Inside a submitted job the job's runtime_env already reaches every worker, so no second one is
passed (Ray rejects a conflicting one). `init_ray` says whether it started Ray, so only the
starter stops it: `ray_session` pairs the two.

On a cluster of more than one node, a path the job reads or writes must be one every node sees:
`require_shared_paths` (run right after joining, when a runner passes its `paths`) refuses a local
path unless `storage.shared_filesystem: true` says every node mounts the same filesystem.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator

from infra import faults, storage
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


class SharedStorageError(ValueError):
    """A multi-node job was given a local path that the other nodes cannot see."""


def init_ray(cfg: ReelForgeConfig, *, state_api: bool = False, paths: dict[str, str | None] | None = None) -> bool:
    """Start or join Ray as the config says; True when this call started it (and should stop it).

    `paths` (flag or key -> path) are checked with `require_shared_paths` once Ray is up.

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
    env = {**storage.storage_env(), **faults.armed_env()}
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
    if paths:
        try:
            require_shared_paths(cfg, paths)
        except SharedStorageError:
            ray.shutdown()
            raise
    return True


@contextlib.contextmanager
def ray_session(cfg: ReelForgeConfig, *, state_api: bool = False,
                paths: dict[str, str | None] | None = None) -> Iterator[bool]:
    """Ray up for the block (started or joined); stopped afterwards only if this block started it."""
    started = init_ray(cfg, state_api=state_api, paths=paths)
    try:
        yield started
    finally:
        if started:
            import ray

            ray.shutdown()


@contextlib.contextmanager
def ray_when_needed(cfg: ReelForgeConfig, *, state_api: bool = False,
                    paths: dict[str, str | None] | None = None) -> Iterator[Callable[[], None]]:
    """Yields `ensure()`, which brings Ray up the first time a step needs it (a fully resumed job
    never starts a local Ray); Ray is stopped afterwards only if this block started it.

    With `paths`, a job that joins a running cluster joins at once (cheap) so that
    `require_shared_paths` refuses a local path before the job writes anything.
    """
    started: list[bool] = []

    def ensure() -> None:
        if init_ray(cfg, state_api=state_api, paths=paths):
            started.append(True)

    try:
        if paths and cluster_address(cfg):
            ensure()
        yield ensure
    finally:
        if started:
            import ray

            ray.shutdown()


def cluster_cpus() -> float:
    """CPUs the joined cluster has in all (0 when Ray is not up)."""
    import ray

    return float(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else 0.0


def placement(resources: dict[str, float]) -> dict:
    """Ray remote args that place a stage by the custom resources of its config section
    (`curate.resources`, `caption.resources`, ...): {} when none are asked for."""
    return {"resources": dict(resources)} if resources else {}


def compute_nodes() -> int:
    """Alive nodes that can run work (CPUs or GPUs): a 0-CPU head does not count."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive")
               and (n.get("Resources", {}).get("CPU", 0) > 0 or n.get("Resources", {}).get("GPU", 0) > 0))


def model_path(spec: str | None) -> str | None:
    """`spec` when it names a model by filesystem path (checked as a path), else None: hub names
    (`org/name`), presets (`tiny`) and URIs are not local paths."""
    if not spec or "://" in spec:
        return None
    path = spec.split(":", 1)[1] if spec.startswith("diffusers:") else spec
    return path if path.startswith(("/", "./", "../", "~")) or os.path.isdir(path) else None


def require_shared_paths(cfg: ReelForgeConfig, paths: dict[str, str | None]) -> None:
    """Refuse local paths on a cluster of more than one node (Ray must be up).

    `paths` maps what the user set (a CLI flag like "--output", or a config key) to a path or URI;
    None and s3:// (any URI) pass. Runners pass model specs through `model_path`, so hub names and
    presets never get here. With `storage.shared_filesystem: true` every path passes.
    """
    if cfg.storage.shared_filesystem:
        return
    local = {key: value for key, value in paths.items() if value and "://" not in value}
    if not local:
        return
    nodes = compute_nodes()
    if nodes <= 1:
        return
    listed = "\n".join(f"  {key} {value}" for key, value in local.items())
    raise SharedStorageError(
        f"this Ray cluster has {nodes} nodes that run work, and these paths are local to this machine:\n"
        f"{listed}\nThe other nodes cannot see them. Give s3:// URIs instead, or, if every node mounts the "
        "same filesystem at these paths (NFS, FSx, ...), set storage.shared_filesystem: true "
        "(--set storage.shared_filesystem=true).")
