"""Every job on a real multi-node Ray cluster (cluster_harness.py: a 0-CPU head, three 1-CPU
worker nodes, S3 the only shared storage), sent through `reelforge submit` (the Ray Jobs API; the
driver runs on the head) and, for tune and train-captioner, also run with RAY_ADDRESS set (the
other jobs' RAY_ADDRESS runs are the lost-node runs of test_lost_node.py).

Each run must (1) have run its work on more than one worker node, by Ray's state API, and
(2) write what the same job writes on one node (the reference chain), value for value. The caption
and precompute runs also show placement: the stages configs/cluster.yaml puts on `gpu_node` ran
only on the one node that has it, the decode stages on `cpu_node` nodes.
"""

from __future__ import annotations

import pytest

from cluster_checks import assert_same_output, read_json

pytestmark = pytest.mark.slow
_RUNS: dict = {}


@pytest.fixture
def submitted(jobs):
    """The job run once through `reelforge submit` (cached: the placement test reuses the runs)."""

    def run(job: str):
        if job not in _RUNS:
            _RUNS[job] = jobs.submit(job, f"submit/{job}")
        return _RUNS[job].check()

    return run


@pytest.mark.parametrize("job", ["curate", "train-captioner", "caption", "precompute", "train", "tune"])
def test_submitted_job_runs_across_nodes_and_equals_one_node(job, submitted, jobs, node_names):
    run = submitted(job)
    used = jobs.worker_nodes_used(run, node_names)
    assert len(used) >= 2, f"{job}: work ran on {used} only"
    assert_same_output(job, run.out, jobs.reference)


@pytest.mark.parametrize("job", ["train-captioner", "tune"])
def test_job_with_ray_address_runs_across_nodes_and_equals_one_node(job, jobs, node_names):
    run = jobs.address(job, f"address/{job}").check()
    # the CLI joined the cluster in RAY_ADDRESS (Ray's words and ours) and started no Ray of its own
    assert "Connecting to existing Ray cluster" in run.stderr and f"joined Ray at {jobs.cluster.address}" in run.stderr
    assert "Started a local Ray instance" not in run.stderr
    used = jobs.worker_nodes_used(run, node_names)
    assert len(used) >= 2, f"{job}: work ran on {used} only"
    assert_same_output(job, run.out, jobs.reference)


def test_train_workers_ran_on_two_nodes(submitted, jobs, node_names):
    """train (ZeRO-2, 2 workers asking for `cpu_node` with train.placement_strategy STRICT_SPREAD):
    one Ray Train worker on each of two nodes."""
    run = submitted("train")
    workers = [a for a in jobs.actors(run.ray_job_id) if "RayTrainWorker" in a.class_name]
    nodes = sorted(node_names[a.node_id] for a in workers)
    assert len(workers) == 2 and len(set(nodes)) == 2, nodes
    assert len(set(read_json(f"{run.out}/train/summary.json")["param_sha"])) == 1  # ranks agree


@pytest.mark.parametrize("job, gpu_stage, cpu_stage", [("caption", "CaptionActor", "prep_batch"),
                                                       ("precompute", "EncodeStage", "_prep_batch")])
def test_gpu_node_stages_ran_only_on_the_gpu_node(job, gpu_stage, cpu_stage, submitted, jobs, node_names):
    run = submitted(job)
    gpu_nodes = {name for name, node in jobs.cluster.nodes.items() if "gpu_node" in node.resources}
    tasks = jobs.tasks(run.ray_job_id)
    on_gpu = {node_names[t.node_id] for t in tasks if gpu_stage in t.name and t.node_id}
    decode = {node_names[t.node_id] for t in tasks if cpu_stage in t.name and t.node_id}
    assert on_gpu and on_gpu <= gpu_nodes, (on_gpu, gpu_nodes)
    assert decode and len(decode) >= 2, decode  # the decode stage spread over the cpu_node nodes
