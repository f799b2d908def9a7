"""The job chain the cluster tests run: the same `reelforge` command lines on one node (the
reference, cluster_reference.py) and on the multi-node harness.

Every job reads the reference's upstream output, so each cluster job is compared with the same
job on one node over the same input: curate (world videos on S3) -> train-captioner (the curated
clips, captions from the world's sidecars) -> caption (that captioner beside the sidecars) ->
precompute -> train and tune. Settings are identical on both sides except where a job runs:
the `resources` placement keys of configs/cluster.yaml (a one-node local Ray has no cpu_node or
gpu_node) and `train.cpus_per_worker` (layout only: a worker's torch threads stay 1).
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
JOBS = ("curate", "train-captioner", "caption", "precompute", "train", "tune")

# Small and fast: 6 short world videos, partitions of one video, OCR and the report off.
WORLD = ["world.videos=6", "world.eval_videos=0", "world.scenes=[2, 3]", "world.frames=[16, 20]",
         "world.sizes=[64x64]", "world.textured=0.0"]
COMMON = [
    "curate.partition_size=1", "curate.measures.text=false", "curate.report=false",
    "caption_train.steps=12", "caption_train.batch_size=4", "caption_train.log_every=4",
    "caption.source=sidecar+model",
    # 8 steps an epoch (16 clips, 1 per worker batch), a checkpoint every 10 on S3
    "train.steps=20", "train.warmup_steps=2", "train.batch_size=1", "train.checkpoint_every=10",
    "train.log_every=5", "train.keep_checkpoints=2",
    "tune.scheduler=fifo", "tune.num_samples=1", "tune.space={train.lr: {grid: [3.0e-3, 1.0e-3]}}",
]
TUNE = ["train.steps=10", "train.checkpoint_every=10"]  # each trial: a short train run
# train: one worker per 1-CPU node (2 nodes); tune: both workers of a trial on one node (0.5 + 0.5)
CPUS = {"train": ["train.cpus_per_worker=1"], "tune": ["train.cpus_per_worker=0.5"]}


def placement_sets() -> list[str]:
    """The `resources` / `prep_resources` keys of configs/cluster.yaml's curate, caption and
    precompute sections as --set overrides: the placement the harness checks."""
    cfg = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    out = []
    for section in ("curate", "caption", "precompute"):
        for key in ("resources", "prep_resources"):
            if key in cfg[section]:
                value = ", ".join(f"{k}: {v}" for k, v in cfg[section][key].items())
                out.append(f"{section}.{key}={{{value}}}")
    return out


def argv(job: str, upstream: str, out: str, on_cluster: bool) -> list[str]:
    """The `reelforge JOB ...` arguments: inputs under `upstream` (the reference's outputs, and
    the world under upstream/world), outputs under `out`."""
    paths = {
        "curate": ["--input", f"{upstream}/world/train", "--output", f"{out}/curated"],
        "train-captioner": ["--clips", f"{upstream}/curated", "--output", f"{out}/captioner"],
        "caption": ["--clips", f"{upstream}/curated", "--output", f"{out}/captioned",
                    "--model", f"{upstream}/captioner"],
        "precompute": ["--clips", f"{upstream}/captioned", "--output", f"{out}/latents"],
        "train": ["--latents", f"{upstream}/latents", "--output", f"{out}/train"],
        "tune": ["--latents", f"{upstream}/latents", "--output", f"{out}/tune"],
    }[job]
    sets = [*COMMON, *(TUNE if job == "tune" else []), *CPUS.get(job, [])]
    if on_cluster:
        sets += placement_sets()
        if job == "train":  # train.resources and STRICT_SPREAD: one worker on each cpu_node node
            sets += ["train.resources={cpu_node: 0.01}", "train.placement_strategy=STRICT_SPREAD"]
    return [job, *paths, "--config", "configs/tiny.yaml", *[a for s in sets for a in ("--set", s)]]
