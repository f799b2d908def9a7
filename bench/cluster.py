"""Cluster: curate and train on the multi-node harness of tests/cluster (a 0-CPU head, three 1-CPU
worker nodes on this machine, moto's S3 server as the only shared storage). Prints JSON lines.

    python bench/cluster.py --videos 2000            # the full run
    python bench/cluster.py --videos 300 --train-steps 60

1. `reelforge curate` (RAY_ADDRESS set) over N synthetic-world videos on S3: videos/s, the driver's
   peak RSS, and task attempts per worker node (Ray's state API).
2. `reelforge train` (ZeRO-2, synthetic latents on S3): steps/s with its 2 workers on 1 worker node
   (0.5 CPU each), on 2 worker nodes (1 CPU each), and 1 worker on 1 node, from the run's own
   metrics (after the first log point, so start-up is not counted).
All on the same 2 shared cores: the numbers show overheads and scaling shape, not a real
network or GPUs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "cluster"))

from cluster_harness import start_cluster  # noqa: E402
from infra import storage  # noqa: E402
from infra.config import load_config  # noqa: E402

CURATE_SETS = ["curate.partition_size=50", "curate.measures.text=false", "curate.report=false",
               "curate.resources={cpu_node: 0.01}"]
TRAIN_SETS = ["train.warmup_steps=2", "train.batch_size=4", "train.log_every=10", "train.checkpoint_every=1000"]


def _s3() -> tuple[object, str]:
    """moto's S3 server on a free port, this process's AWS environment pointed at it, a bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    from cluster_harness import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint})
    storage.configure(endpoint=endpoint, region="us-east-1")
    bucket = f"rf-bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return server, f"s3://{bucket}"


def _run(cluster, args: list[str]) -> dict:
    """A CLI job on the cluster; the driver's peak RSS sampled every 0.2 s."""
    env = {**cluster.env, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": cluster.address}
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak, t0 = [0], time.perf_counter()

    def sample():
        while proc.poll() is None:
            try:
                peak[0] = max(peak[0], psutil.Process(proc.pid).memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, stderr = proc.communicate()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{args[0]} failed:\n{stdout[-2000:]}\n{stderr[-4000:]}")
    return {"wall_s": time.perf_counter() - t0, "driver_peak_rss_mib": round(peak[0] / 2**20), "pid": proc.pid}


def _tasks_per_node(cluster, pid: int) -> dict[str, int]:
    from ray.util.state import list_jobs, list_tasks

    job = next(j for j in list_jobs(address=cluster.dashboard) if j.driver_info and str(j.driver_info.pid) == str(pid))
    names = {n.node_id: n.name for n in cluster.nodes.values()}
    counts: dict[str, int] = {}
    for t in list_tasks(address=cluster.dashboard, filters=[("job_id", "=", job.job_id)], limit=1_000_000,
                        detail=True, raise_on_missing_output=False):
        name = names.get(t.node_id, "unscheduled")
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def bench_curate(cluster, bucket: str, videos: int) -> dict:
    from infra.world import write_world

    world = load_config(ROOT / "configs" / "tiny.yaml", [f"world.videos={videos}", "world.eval_videos=0"]).world
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as local:
        write_world(world, local)
        storage.upload_dir(f"{local}/train", f"{bucket}/world/train")
    prep_s = time.perf_counter() - t0
    args = ["curate", "--input", f"{bucket}/world/train", "--output", f"{bucket}/curated",
            "--config", "configs/tiny.yaml", *[a for s in CURATE_SETS for a in ("--set", s)]]
    res = _run(cluster, args)
    manifest = json.loads(storage.read_text(f"{bucket}/curated/manifest.json"))
    return {"bench": "curate", "videos": videos, "world_and_upload_s": round(prep_s, 1),
            "wall_s": round(res["wall_s"], 1), "videos_per_s": round(videos / res["wall_s"], 2),
            "clips": manifest["counts"].get("clips"), "failed": manifest["counts"].get("failed"),
            "driver_peak_rss_mib": res["driver_peak_rss_mib"], "tasks_per_node": _tasks_per_node(cluster, res["pid"])}


def bench_train(cluster, bucket: str, steps: int) -> list[dict]:
    from training.synthetic import write_synthetic_latents

    latents = write_synthetic_latents(f"{bucket}/latents", {"3x8x8": 64, "2x8x12": 32})
    out = []
    for label, workers, cpus in (("2 workers on 1 node", 2, 0.5), ("2 workers on 2 nodes", 2, 1),
                                 ("1 worker on 1 node", 1, 1)):
        run = f"{bucket}/train-{workers}-{cpus}"
        sets = [*TRAIN_SETS, f"train.steps={steps}", f"train.num_workers={workers}", f"train.cpus_per_worker={cpus}"]
        res = _run(cluster, ["train", "--latents", latents, "--output", run, "--config", "configs/tiny.yaml",
                             *[a for s in sets for a in ("--set", s)]])
        log = list(csv.DictReader(io.StringIO(storage.read_text(f"{run}/logs/metrics.csv"))))
        first, last = log[0], log[-1]  # steps/s after the first log point: no start-up in it
        rate = (float(last["step"]) - float(first["step"])) / (float(last["wall_s"]) - float(first["wall_s"]))
        out.append({"bench": "train", "layout": label, "workers": workers, "cpus_per_worker": cpus,
                    "steps": steps, "steps_per_s": round(rate, 2), "samples_per_s": round(rate * 4 * workers, 1),
                    "wall_s": round(res["wall_s"], 1), "driver_peak_rss_mib": res["driver_peak_rss_mib"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=2000)
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--skip", choices=["curate", "train"], default=None)
    args = ap.parse_args()
    server, bucket = _s3()
    t0 = time.perf_counter()
    cluster = start_cluster({**os.environ, "PYTHONPATH": str(ROOT)})
    print(json.dumps({"bench": "cluster start", "workers": 3, "s": round(time.perf_counter() - t0, 1)}), flush=True)
    try:
        if args.skip != "curate":
            print(json.dumps(bench_curate(cluster, bucket, args.videos)), flush=True)
        if args.skip != "train":
            for line in bench_train(cluster, bucket, args.train_steps):
                print(json.dumps(line), flush=True)
    finally:
        cluster.stop()
        server.stop()


if __name__ == "__main__":
    main()
