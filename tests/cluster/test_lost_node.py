"""A worker node lost in the middle of curate, caption, precompute and train, each run from a shell
with RAY_ADDRESS set (the CLI joins the harness cluster).

While a task of the job runs on a worker node (curate: once a partition is committed; train: once
Ray Train has registered a checkpoint on S3), every process of that node is SIGKILLed: its raylet,
object store and workers, as a machine that dies. The job must still finish on the remaining
nodes, with every input accounted for, no row twice, and an output equal to the same job's on one
node. Ray Data retries the lost tasks (the state API shows the failed attempt on the lost node and
the retry); Ray Train restarts its worker group from the last checkpoint (train.max_failures).
`REELFORGE_FAULT=slow=STAGE:S` makes each task of one stage last a few seconds, so the kill lands
while one runs. The gpu_node is never the one lost (caption and precompute need their actor stage
there); a replacement node joins afterwards for the next test.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from cluster_checks import assert_same_output, read_json, rows
from infra import storage

pytestmark = pytest.mark.slow

CASES = {  # job -> (fault that slows one stage, that stage's Ray task name, what on S3 shows progress)
    "curate": ("slow=cheap:4", "run_stage_batch", "curated/_markers"),  # probe..cheap run fused as one task
    "caption": ("slow=caption-prep:4", "prep_batch", None),
    "precompute": ("slow=precompute-prep:4", "_prep_batch", None),
    # registered by Ray Train once a reported checkpoint is on S3: a restart restores it
    "train": (None, None, "train/checkpoint_manager_snapshot.json"),
}
# train: both workers of 0.5 CPU on one node (Ray Train packs them), so losing that node loses the
# whole worker group, which restarts on the two nodes left (the read tasks need a CPU beside it)
TRAIN_SETS = ["train.cpus_per_worker=0.5", "train.placement_strategy=PACK"]


def _progress(uri: str | None) -> bool:
    if uri is None:
        return True
    if uri.endswith(".json"):
        return storage.exists(uri)
    return any(f.endswith(".json") for f in storage.list_files(uri))


def _victim(jobs, job: str, ray_job_id: str | None) -> str | None:
    """The worker node to lose now, or None: train's workers' node; else a node (not the gpu_node)
    running a task of the slowed stage."""
    if ray_job_id is None:
        return None
    names = {n.node_id: n.name for n in jobs.cluster.nodes.values()}
    if job == "train":
        nodes = {names.get(a.node_id) for a in jobs.actors(ray_job_id)
                 if "RayTrainWorker" in a.class_name and a.state == "ALIVE"}
        assert len(nodes) == 1 and None not in nodes, nodes
        return nodes.pop()
    fault, stage, _ = CASES[job]
    # a task that started less than SLOW - 2 s ago still runs when the kill lands
    young = time.time() * 1000 - (float(fault.rsplit(":", 1)[1]) - 2) * 1000
    for t in jobs.tasks(ray_job_id):
        name = names.get(t.node_id)
        if (t.state == "RUNNING" and stage in t.name and (t.start_time_ms or 0) > young and name
                and "gpu_node" not in jobs.cluster.nodes[name].resources):
            return name
    return None


def _accounted(job: str, out: str, reference: str) -> None:
    """Every input of the job is in its output exactly once (beyond equality with one node's)."""
    if job == "curate":
        inputs = sorted(f for f in storage.list_files(f"{reference}/world/train") if f.endswith(".mp4"))
        assert sorted(r["uri"] for r in rows(f"{out}/curated/videos", "uri")) == inputs
        failed = rows(f"{out}/curated/failures", "uri")
        ok = [r for r in rows(f"{out}/curated/videos", "uri") if r["status"] == "ok"]
        assert len(ok) + len(failed) == len(inputs)
    elif job == "caption":
        curated = [r["clip_id"] for r in rows(f"{reference}/curated/clips", "clip_id")]
        captioned = rows(f"{out}/captioned/clips", "clip_id")
        assert [r["clip_id"] for r in captioned] == curated
        assert all(r["caption_model_text"] for r in captioned if r["keep"] is not False)
    elif job == "precompute":
        manifest = read_json(f"{out}/latents/manifest.json")
        assert manifest["counts"]["encoded"] == manifest["counts"]["eligible"] == len(rows(f"{out}/latents/latents", "clip_id"))
    else:
        summary = read_json(f"{out}/train/summary.json")
        assert summary["step"] == 20 and summary["resumed_from"] == 10, summary  # restored, then finished


@pytest.mark.parametrize("job", list(CASES))
def test_a_lost_worker_node(job, jobs, node_names):
    fault, _, progress = CASES[job]
    name = f"lost/{job}"
    out = jobs.out(name)
    started = time.time()
    proc = jobs.start(job, name, fault=fault, sets=TRAIN_SETS if job == "train" else ())
    victim = None
    while victim is None:
        if proc.poll() is not None or time.time() - started > 300:
            stdout, stderr = proc.communicate(timeout=60) if proc.poll() is not None else ("", "timed out")
            pytest.fail(f"{job} ended (or stalled) before a node could be lost mid-job:\n{stdout[-2000:]}\n{stderr[-4000:]}")
        time.sleep(0.3)
        ray_job_id = jobs.job_id_of(proc)
        victim = _victim(jobs, job, ray_job_id) if _progress(progress and f"{out}/{progress}") else None
    victim_id = jobs.cluster.nodes[victim].node_id
    killed_at = time.time() - started
    jobs.cluster.kill(victim)
    try:
        run = jobs.finish(proc, job, name)
    finally:
        node = jobs.cluster.replace(victim)  # the next test has three worker nodes again
        node_names[node.node_id] = node.name
    run.check()
    tasks = jobs.tasks(ray_job_id)
    lost = [t for t in tasks if t.node_id == victim_id]
    print(f"\nlost node: {job}: {victim} killed {killed_at:.1f} s after start, job done in "
          f"{time.time() - started:.1f} s; its task attempts there: {Counter(t.state for t in lost)}; "
          f"retried attempts: {sum(1 for t in tasks if t.attempt_number > 0)}")
    assert any(t.state == "FAILED" for t in lost), f"{job}: no work of the job was lost with {victim}: {lost}"
    if job != "train":  # Ray Data ran the lost task again (train restarts actors, not tasks)
        assert any(t.attempt_number > 0 and t.state == "FINISHED" for t in tasks), "no task was retried"
    remaining = {node_names.get(t.node_id) for t in tasks if t.node_id != victim_id and t.state == "FINISHED"}
    assert remaining - {None, "head"}, f"{job}: nothing finished on the remaining nodes"
    _accounted(job, out, jobs.reference)
    assert_same_output(job, out, jobs.reference)
    if job == "train":  # the CLI joined the cluster in RAY_ADDRESS; it started no Ray of its own
        assert "Connecting to existing Ray cluster" in run.stderr, run.stderr[-3000:]
        assert f"joined Ray at {jobs.cluster.address}" in run.stderr, run.stderr[-3000:]
        assert "Started a local Ray instance" not in run.stderr
