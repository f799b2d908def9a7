"""What the harness gives each node, and the storage guard of multi-node jobs.

Each worker node's processes see only their own TMPDIR, so nothing but S3 is shared by accident.
On a cluster of more than one node a job refuses a local output, input or model path at start,
naming it and the fix, unless `storage.shared_filesystem: true` declares a shared mount.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

_PER_NODE = r'''
import json, os, tempfile, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init()
@ray.remote(num_cpus=0)
def where():
    return {"node": ray.get_runtime_context().get_node_id(), "tmpdir": os.environ.get("TMPDIR"),
            "gettempdir": tempfile.gettempdir()}
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
print(json.dumps(ray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
                          for n in nodes])))
'''


def test_each_worker_node_has_its_own_temp_dir(jobs):
    import json

    env = {**jobs.env, "RAY_ADDRESS": jobs.cluster.address}
    res = subprocess.run([sys.executable, "-c", _PER_NODE], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = {r["node"]: r for r in json.loads(res.stdout.strip().splitlines()[-1])}
    workers = jobs.cluster.workers()
    assert sorted(seen) == sorted(n.node_id for n in workers)
    for node in workers:
        assert seen[node.node_id]["tmpdir"] == seen[node.node_id]["gettempdir"] == node.tmpdir
    assert len({n.tmpdir for n in workers}) == len(workers)


def _cli(jobs, args: list[str]) -> subprocess.CompletedProcess:
    env = {**jobs.env, "RAY_ADDRESS": jobs.cluster.address, "COLUMNS": "400"}  # no wrapped paths
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("job, args, named", [
    ("curate", ["--input", "{ref}/world/train", "--output", "{tmp}/curated"], "--output {tmp}/curated"),
    ("curate", ["--input", "{world}", "--output", "{bucket}/guard/curated"], "--input {world}"),
    ("caption", ["--clips", "{ref}/curated", "--output", "{bucket}/guard/cap", "--model", "{tmp}/model"],
     "--model {tmp}/model"),
    ("precompute", ["--clips", "{ref}/captioned", "--output", "{tmp}/latents"], "--output {tmp}/latents"),
    ("train-captioner", ["--clips", "{ref}/curated", "--output", "{tmp}/captioner"], "--output {tmp}/captioner"),
    ("train", ["--latents", "{ref}/latents", "--output", "{tmp}/train"], "--output {tmp}/train"),
    ("tune", ["--latents", "{ref}/latents", "--output", "{tmp}/tune", "--set", "tune.space={{train.lr: {{grid: [1.0e-3]}}}}"],
     "--output {tmp}/tune"),
    ("train-vae", ["--clips", "{ref}/curated", "--output", "{tmp}/vae"], "--output {tmp}/vae"),
])
def test_local_paths_are_refused_on_a_multi_node_cluster(job, args, named, jobs, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "a.mp4").write_bytes(b"not read: the job stops before")
    fill = dict(ref=jobs.reference, tmp=tmp_path, bucket=jobs.bucket, world=tmp_path / "world")
    res = _cli(jobs, [job, *[a.format(**fill) for a in args], "--config", "configs/tiny.yaml"])
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    text = " ".join(res.stderr.split())  # rich may wrap lines
    assert named.format(**fill) in text and "3 nodes" in text, text[-2000:]
    assert "s3://" in text and "storage.shared_filesystem" in text
    for name in ("curated", "latents", "train", "tune", "vae", "captioner"):  # nothing written
        assert not (tmp_path / name).exists(), name


def test_a_declared_shared_filesystem_allows_local_paths(jobs, tmp_path):
    """On this machine every node does see the same disk: declared, a local output works."""
    out = tmp_path / "curated"
    res = _cli(jobs, ["curate", "--input", f"{jobs.reference}/world/train", "--output", str(out),
                      "--config", "configs/tiny.yaml", "--set", "storage.shared_filesystem=true",
                      "--set", "curate.partition_size=6", "--set", "curate.measures.text=false",
                      "--set", "curate.measures.motion=false", "--set", "curate.report=false"])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert (out / "manifest.json").exists() and list((out / "videos").glob("part-*.parquet"))
