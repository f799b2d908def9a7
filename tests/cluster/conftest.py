"""Fixtures of the multi-node tests: one harness cluster for the session (cluster_harness.py), the
reference chain on one node (cluster_reference.py), a runner for `reelforge` jobs on the cluster
(with RAY_ADDRESS, or through `reelforge submit`), what Ray's state API says about where a job's
work ran, and value-for-value comparison of outputs."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from cluster_chain import WORLD, argv  # noqa: E402
from cluster_harness import LocalCluster, start_cluster  # noqa: E402


# ----------------------------------------------------------------------------- the cluster and S3


@pytest.fixture(scope="session")
def bucket(s3_server) -> str:
    """One bucket for the session's cluster tests: the reference under ref/, each run beside it."""
    import boto3

    name = f"rf-cluster-{uuid.uuid4().hex[:8]}"
    boto3.resource("s3", endpoint_url=s3_server, region_name="us-east-1").Bucket(name).create()
    return f"s3://{name}"


@pytest.fixture(scope="session")
def cluster(s3_server):
    """A 0-CPU head and three 1-CPU worker nodes (w1 also has gpu_node). Every node's environment
    holds the S3 endpoint and keys, as a real node's instance role would, and this checkout on
    PYTHONPATH, as a real node has the project installed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    c = start_cluster(env)
    yield c
    c.stop()


@pytest.fixture(scope="session")
def reference(bucket) -> str:
    """The world on S3 and the whole chain run on one node: s3://BUCKET/ref/{world,curated,...}."""
    from infra import storage
    from infra.config import load_config
    from infra.world import write_world

    root = f"{bucket}/ref"
    with tempfile.TemporaryDirectory() as local:
        write_world(load_config(ROOT / "configs" / "tiny.yaml", WORLD).world, local)
        storage.upload_dir(local, f"{root}/world")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, str(HERE / "cluster_reference.py"), root], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return root


# ----------------------------------------------------------------------------- running jobs


@dataclass
class Run:
    job: str
    mode: str
    out: str  # the output root of this run (s3://)
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    ray_job_id: str | None = None
    extra: dict = field(default_factory=dict)

    def check(self) -> Run:
        assert self.returncode == 0, f"{self.job} ({self.mode}) failed:\n{self.stdout[-3000:]}\n{self.stderr[-5000:]}"
        return self


class Jobs:
    """Runs the chain's jobs on the harness cluster and finds them in Ray's state API."""

    def __init__(self, cluster: LocalCluster, reference: str, bucket: str):
        self.cluster, self.reference, self.bucket = cluster, reference, bucket
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            self.env.pop(key, None)

    def out(self, name: str) -> str:
        return f"{self.bucket}/{name}"

    def start(self, job: str, name: str, fault: str | None = None, sets: list[str] = (),
              args: list[str] | None = None) -> subprocess.Popen:
        """`python -m infra.cli JOB ...` with RAY_ADDRESS set to the cluster, as a user's shell has it
        (`sets`: more --set overrides; `args`: other arguments altogether)."""
        env = {**self.env, "RAY_ADDRESS": self.cluster.address, **({"REELFORGE_FAULT": fault} if fault else {})}
        args = args or [*argv(job, self.reference, self.out(name), on_cluster=True),
                        *[a for s in sets for a in ("--set", s)]]
        cmd = [sys.executable, "-m", "infra.cli", *args]
        return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)

    def finish(self, proc: subprocess.Popen, job: str, name: str, timeout: float = 600) -> Run:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        run = Run(job, "address", self.out(name), proc.returncode, stdout, stderr)
        run.ray_job_id = self.job_id_of(proc)
        return run

    def job_id_of(self, proc: subprocess.Popen) -> str | None:
        """The Ray job whose driver is this CLI process."""
        return self._job_id(lambda j: j.driver_info is not None and str(j.driver_info.pid) == str(proc.pid))

    def address(self, job: str, name: str, **kw) -> Run:
        return self.finish(self.start(job, name, **kw), job, name)

    def submit(self, job: str, name: str, timeout: float = 600) -> Run:
        """`reelforge submit --wait -- JOB ...` through the head's Jobs API (the job's driver runs on the head)."""
        cmd = [sys.executable, "-m", "infra.cli", "submit", "--address", self.cluster.dashboard, "--wait",
               "--python", sys.executable, "--working-dir", str(ROOT), "--",
               *argv(job, self.reference, self.out(name), on_cluster=True)]
        res = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        run = Run(job, "submit", self.out(name), res.returncode, res.stdout, res.stderr)
        lines = res.stdout.strip().splitlines()
        submission = lines[0].strip() if lines else ""
        run.ray_job_id = self._job_id(lambda j: j.submission_id == submission)
        return run

    def _job_id(self, match) -> str | None:
        from ray.util.state import list_jobs

        jobs = list_jobs(address=self.cluster.dashboard, raise_on_missing_output=False)
        return next((j.job_id for j in jobs if match(j)), None)

    # ------------------------------------------------------------------------- where work ran

    def tasks(self, ray_job_id: str) -> list:
        from ray.util.state import list_tasks

        return list_tasks(address=self.cluster.dashboard, filters=[("job_id", "=", ray_job_id)], detail=True,
                          limit=10_000, raise_on_missing_output=False)

    def actors(self, ray_job_id: str) -> list:
        from ray.util.state import list_actors

        return list_actors(address=self.cluster.dashboard, filters=[("job_id", "=", ray_job_id)], detail=True,
                           limit=10_000, raise_on_missing_output=False)

    def worker_nodes_used(self, run: Run, names: dict[str, str]) -> dict[str, int]:
        """Worker node name -> task attempts of this job that ran there (tasks and actor tasks)."""
        assert run.ray_job_id, f"{run.job} ({run.mode}): the state API does not list its job"
        used: dict[str, int] = {}
        for t in self.tasks(run.ray_job_id):
            name = names.get(t.node_id or "")
            if name and name != "head":
                used[name] = used.get(name, 0) + 1
        return used


@pytest.fixture(scope="session")
def node_names(cluster) -> dict[str, str]:
    """node id -> harness node name, for every node the session ever started (kept across kills)."""
    return {n.node_id: n.name for n in cluster.nodes.values()}


@pytest.fixture(scope="session")
def jobs(cluster, reference, bucket) -> Jobs:
    return Jobs(cluster, reference, bucket)
