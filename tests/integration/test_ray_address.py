"""`reelforge train` on a cluster started apart with `ray start --head` (and a second node joined with
`ray start --address`), found through RAY_ADDRESS as a user's shell or a Ray Jobs entrypoint has it:
the training workers run on that cluster, one on each node (train.resources asks for the nodes'
`gpu_node` resource, train.placement_strategy STRICT_SPREAD), and the CLI joins it rather than
starting a private local Ray."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from training.synthetic import write_synthetic_latents

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_processes(pgid: int, temp_dir: str) -> list[psutil.Process]:
    """The processes of the cluster started here: its own process group, or its temp dir in argv."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(p.pid) == pgid or temp_dir in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return [p for p in found if p.pid != os.getpid()]


def _stop_cluster(pgid: int, temp_dir: str) -> None:
    """`ray stop` would stop every Ray on the machine: end only this cluster's processes, by pid."""
    procs = _cluster_processes(pgid, temp_dir)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def ray_cluster():
    """A separate 3-CPU head node with the dashboard (for the state API), in its own temp dir."""
    # unix socket paths under the temp dir must stay short: not pytest's tmp_path
    temp_dir = tempfile.mkdtemp(prefix="rf", dir="/tmp")
    dashboard = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(RAY), "start", "--head", "--port", str(_free_port()), "--num-cpus", "3", "--resources", '{"gpu_node": 1}',
           "--object-store-memory", str(300 * 2**20), "--temp-dir", temp_dir, "--disable-usage-stats",
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
           # fixed defaults (10001, 52365) would collide with any other cluster on the machine
           "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port())]
    # a new session: every process of the cluster shares a process group only this fixture owns
    proc = subprocess.Popen(cmd, env=env, cwd=temp_dir, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    node = None
    try:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-4000:]
        address = (Path(temp_dir) / "ray_current_cluster").read_text().strip()  # GCS ip:port
        # a second node; both carry the gpu_node resource that train.resources asks for
        node = subprocess.Popen(
            [str(RAY), "start", "--address", address, "--num-cpus", "1", "--resources", '{"gpu_node": 1}',
             "--object-store-memory", str(200 * 2**20), "--temp-dir", temp_dir, "--disable-usage-stats",
             "--dashboard-agent-listen-port", str(_free_port())],
            env=env, cwd=temp_dir, start_new_session=True, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = node.communicate(timeout=300)
        assert node.returncode == 0, out[-4000:]
        yield SimpleNamespace(address=address, dashboard=f"http://127.0.0.1:{dashboard}", temp_dir=temp_dir)
    finally:
        for p in (proc, node):
            if p is not None and p.poll() is None:
                p.kill()
        if node is not None:
            _stop_cluster(node.pid, temp_dir)
        _stop_cluster(proc.pid, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_train_cli_runs_its_workers_on_the_cluster_in_ray_address(ray_cluster, tmp_path, cli_env):
    from ray.util.state import list_actors, list_jobs

    latents = write_synthetic_latents(str(tmp_path / "pre"), {"3x8x8": 8, "2x8x12": 8})
    debug, run = tmp_path / "debug", tmp_path / "run"
    sets = ["train.steps=4", "train.warmup_steps=1", "train.num_workers=2", "train.cpus_per_worker=0.5",
            "train.batch_size=2", "train.checkpoint_every=4", "train.log_every=2", f"train.debug_dir={debug}",
            "train.resources={gpu_node: 0.01}", "train.placement_strategy=STRICT_SPREAD"]
    env = {**cli_env, "RAY_ADDRESS": ray_cluster.address}
    env.pop("RAY_API_SERVER_ADDRESS", None)
    driver = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "train", "--latents", latents, "--output", str(run),
         "--config", "configs/tiny.yaml", *[a for s in sets for a in ("--set", s)]],
        cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr[-4000:]
    assert json.loads((run / "summary.json").read_text())["step"] == 4
    assert "checkpoint_00000004" in stdout

    # the driver joined the cluster (Ray's own words and ours) and started no local Ray
    assert "Connecting to existing Ray cluster" in stderr, stderr[-4000:]
    assert f"joined Ray at {ray_cluster.address}" in stderr, stderr[-4000:]
    assert "Started a local Ray instance" not in stderr and "started a local Ray" not in stderr

    # the cluster saw this CLI process as a driver job, and ran both Ray Train workers of it
    jobs = list_jobs(address=ray_cluster.dashboard, raise_on_missing_output=False)
    drivers = {(j.driver_info.pid if j.driver_info else None): j for j in jobs}
    assert str(driver.pid) in {str(pid) for pid in drivers}, [(j.job_id, j.driver_info) for j in jobs]
    job_id = next(j.job_id for pid, j in drivers.items() if str(pid) == str(driver.pid))
    actors = list_actors(address=ray_cluster.dashboard, detail=True, limit=10_000,
                         filters=[("job_id", "=", job_id)], raise_on_missing_output=False)
    workers = {a.pid: a.node_id for a in actors if "RayTrainWorker" in a.class_name}
    rank_pids = {int((debug / f"rank{r}.pid").read_text()) for r in (0, 1)}
    assert len(rank_pids) == 2 and rank_pids <= set(workers), (rank_pids, [(a.class_name, a.pid) for a in actors])
    assert len({workers[pid] for pid in rank_pids}) == 2  # STRICT_SPREAD: one worker on each node
