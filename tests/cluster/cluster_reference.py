"""The reference for the cluster tests: the chain of cluster_chain.py on ONE node.

    python tests/cluster/cluster_reference.py s3://BUCKET/ref

Starts one local Ray (3 CPUs, the dashboard's state API for tune; no RAY_ADDRESS) and runs each
job's `reelforge` command line in this process, one after another, into s3://BUCKET/ref (whose
world/ is already there). The commands are the CLI's own; they join this Ray instead of starting
one each, which saves a Ray start per job.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_chain import JOBS, argv  # noqa: E402
from infra.cli import app  # noqa: E402
from infra.config import load_config  # noqa: E402
from infra.runtime import ray_session  # noqa: E402


def main(root: str) -> None:
    os.environ.pop("RAY_ADDRESS", None)
    cfg = load_config(None, ["ray.num_cpus=3"])
    with ray_session(cfg, state_api=True):
        for job in JOBS:
            t0 = time.time()
            code = app(argv(job, root, root, on_cluster=False), standalone_mode=False)  # typer.Exit -> its code
            if code:
                raise SystemExit(f"reference {job} failed with exit code {code}")
            print(f"reference {job}: {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
