"""A multi-node Ray cluster on one machine, built the way a user builds one: `ray start` processes.

A head with 0 CPUs (it runs drivers, the dashboard and the Jobs API, never work, as in
ray_cluster.yaml) and worker nodes with 1 CPU each and custom resources (`cpu_node` on every one,
`gpu_node` on one). Each node is its own process group with its own Ray temp dir and its own
TMPDIR, so the only thing nodes share on purpose is the S3 endpoint in their environment (as a
real node has an instance role). `kill(name)` SIGKILLs every process of one worker node, as a
lost machine; `add_worker` brings a replacement. Nothing here calls `ray stop`: that would stop
every Ray on the machine, including other people's.

Used by tests/cluster/ (one cluster per test session) and bench/cluster.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """One `ray start` node: its name, process group, temp dirs and resources."""

    name: str
    pgid: int
    temp_dir: str  # Ray's --temp-dir (sockets, logs, session files)
    tmpdir: str  # the TMPDIR of every process on the node
    resources: dict = field(default_factory=dict)
    node_id: str | None = None

    def processes(self) -> list[psutil.Process]:
        """Every live process of this node: its process group (raylet, agents), processes with its
        temp dir in their command line, and their children (Ray's workers start sessions of their own)."""
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["cmdline"]):
            try:
                if os.getpgid(p.pid) == self.pgid or self.temp_dir in " ".join(p.info["cmdline"] or []):
                    found[p.pid] = p
                    found.update({c.pid: c for c in p.children(recursive=True)})
            except (ProcessLookupError, psutil.Error):
                continue
        found.pop(os.getpid(), None)
        return list(found.values())


class LocalCluster:
    """Head (0 CPUs, dashboard + Jobs API) plus worker nodes, each a `ray start` in its own session."""

    def __init__(self, env: dict[str, str] | None = None, root: str | None = None):
        # unix socket paths under a node's temp dir must stay short: not pytest's tmp_path
        self.root = tempfile.mkdtemp(prefix="rfc", dir=root or "/tmp")
        self.env = {**(env or os.environ), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        for key in ("RAY_ADDRESS", "RAY_JOB_ID"):
            self.env.pop(key, None)
        self.nodes: dict[str, Node] = {}
        self.lost: dict[str, Node] = {}  # killed nodes, by name
        self.address = ""
        self.dashboard_port = free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        # Ray's state API, asked from inside a worker (Ray Train's placement-group cleaner), finds
        # "the" cluster of the machine by default (/tmp/ray), which on a shared machine is another
        # one: point every process of every node at this cluster's dashboard, as on a real cluster
        # where each machine runs one Ray.
        self.env["RAY_API_SERVER_ADDRESS"] = self.dashboard
        self.env["RAY_MAX_LIMIT_FROM_API_SERVER"] = "1000000"  # bench/cluster.py counts every task of a job

    # ------------------------------------------------------------------------- start

    def _start(self, name: str, args: list[str], resources: dict) -> Node:
        temp_dir = os.path.join(self.root, name)
        tmpdir = os.path.join(temp_dir, "tmp")
        os.makedirs(tmpdir)
        ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
        cmd = [str(RAY), "start", *args, "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir,
               "--node-name", name, "--disable-usage-stats", "--object-store-memory", str(200 * 2**20),
               *[a for p in ports for a in (p, str(free_port()))]]
        if resources:
            cmd += ["--resources", json.dumps(resources)]
        env = {**self.env, "TMPDIR": tmpdir}
        # its own session: every process of the node shares a process group that only it has
        proc = subprocess.Popen(cmd, env=env, cwd=temp_dir, start_new_session=True, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start of {name} failed:\n{out[-4000:]}")
        node = Node(name, proc.pid, temp_dir, tmpdir, resources)
        self.nodes[name] = node
        return node

    def start_head(self) -> Node:
        # a lost node is declared dead after ~5 missed 1 s health checks (Ray's default: 5 x 3 s)
        checks = json.dumps({"health_check_period_ms": 1000, "health_check_failure_threshold": 5})
        head = self._start("head", ["--head", "--port", str(free_port()), "--num-cpus", "0", "--system-config", checks,
                                    "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                                    "--dashboard-port", str(self.dashboard_port),
                                    "--ray-client-server-port", str(free_port())], {})
        self.address = (Path(head.temp_dir) / "ray_current_cluster").read_text().strip()  # GCS ip:port
        self._wait_for_jobs_api()
        head.node_id = self._node_id("head")
        return head

    def add_worker(self, name: str, resources: dict, num_cpus: int = 1) -> Node:
        node = self._start(name, ["--address", self.address, "--num-cpus", str(num_cpus)], resources)
        node.node_id = self._node_id(name)
        return node

    def _wait_for_jobs_api(self, timeout: float = 120) -> None:
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + timeout
        while True:
            try:
                JobSubmissionClient(self.dashboard).list_jobs()
                return
            except Exception:  # noqa: BLE001 - not up yet
                if time.time() > deadline:
                    raise
                time.sleep(1)

    def _node_id(self, name: str, timeout: float = 60) -> str:
        """The id of the alive node called `name`, once the state API lists it."""
        deadline = time.time() + timeout
        while True:
            alive = self.alive_nodes()
            if name in alive:
                return alive[name]
            if time.time() > deadline:
                raise TimeoutError(f"node {name} never showed up alive: {alive}")
            time.sleep(0.5)

    # ------------------------------------------------------------------------- look

    def alive_nodes(self) -> dict[str, str]:
        """node name -> node id of every node the cluster sees alive."""
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
        return {n.node_name: n.node_id for n in nodes}

    def name_of(self, node_id: str) -> str | None:
        return next((n.name for n in self.nodes.values() if n.node_id == node_id), None)

    def workers(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.name != "head"]

    # ------------------------------------------------------------------------- kill / stop

    def kill(self, name: str, timeout: float = 60) -> None:
        """Lose a worker node: SIGKILL its raylet and every other process of it, then wait until
        the cluster marks it dead."""
        node = self.nodes.pop(name)
        self.lost[name] = node
        for p in node.processes():
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        deadline = time.time() + timeout
        while node.name in self.alive_nodes():
            if time.time() > deadline:
                raise TimeoutError(f"the cluster still lists {name} alive {timeout} s after the kill")
            time.sleep(0.5)

    def replace(self, name: str) -> Node:
        """A new worker node with the resources of the lost node `name` (named `name`+"r")."""
        return self.add_worker(f"{name}r", self.lost[name].resources)

    def stop(self) -> None:
        """End every process of every node (workers first), then remove the temp dirs."""
        for node in sorted(self.nodes.values(), key=lambda n: n.name == "head"):
            procs = node.processes()
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
        self.nodes.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(env: dict[str, str] | None = None, workers: int = 3) -> LocalCluster:
    """The standard harness: a 0-CPU head and `workers` 1-CPU nodes, `cpu_node` on each and
    `gpu_node` on the first (w1)."""
    cluster = LocalCluster(env)
    try:
        cluster.start_head()
        for i in range(1, workers + 1):
            cluster.add_worker(f"w{i}", {"cpu_node": 1, **({"gpu_node": 1} if i == 1 else {})})
    except BaseException:
        cluster.stop()
        raise
    return cluster
