"""`reelforge train` for real: Ray Train with 2 CPU workers on gloo, real DeepSpeed ZeRO-2/3 engines,
latents and checkpoints on local disk and on the S3 endpoint, a resumed run, a killed worker."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
import torch
from safetensors.torch import load_file

from infra import storage
from infra.config import load_config
from training.data import read_latents
from training.metrics import read_metrics
from training.sample import checkpoint_meta, load_checkpoint_for_sampling
from training.synthetic import write_synthetic_latents
from training.train import run_train

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
BUCKETS = {"3x8x8": 10, "2x8x12": 8, "1x12x8": 6}  # three shapes in one run
# Skewed: dealt to 2 ranks at batch 2, one rank would need a batch more than the other (the old
# plan padded it with zero-loss steps that AdamW's weight decay and momentum still applied).
SKEWED = {"3x8x8": 11, "2x8x12": 7, "1x12x8": 5}
# 2 workers x 0.5 CPU: the session cluster has 2 CPUs.
BASE = ["train.model=VDiT-T/2", "train.num_workers=2", "train.cpus_per_worker=0.5", "train.batch_size=2",
        "train.lr=0.003", "train.warmup_steps=3", "train.max_failures=1", "train.keep_checkpoints=2", "train.seed=0"]


def _cfg(*sets):
    return load_config(ROOT / "configs" / "tiny.yaml", BASE + list(sets))


def _weights(ckpt, sub):
    return load_file(str(Path(ckpt) / sub / "model.safetensors"))


@pytest.fixture(scope="module")
def local_latents(tmp_path_factory):
    return write_synthetic_latents(str(tmp_path_factory.mktemp("pre")), BUCKETS)


# ----------------------------------------------------------------------------- ZeRO-3, resume


def test_zero3_resumed_run_continues_like_an_uninterrupted_one(ray_local, local_latents, tmp_path, cli_env):
    sets = ["train.zero_stage=3", "train.steps=24", "train.checkpoint_every=8", "train.log_every=4",
            "train.ema_decay=0.5"]
    # A: 24 steps in one go, through the CLI (its own local Ray)
    args = [a for s in sets + BASE for a in ("--set", s)]
    res = subprocess.run([sys.executable, "-m", "infra.cli", "train", "--config", "configs/tiny.yaml",
                          "--latents", local_latents, "--output", str(tmp_path / "a"), *args],
                         capture_output=True, text=True, cwd=ROOT, env=cli_env, timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "checkpoint_00000024" in res.stdout and "tokens per s" in res.stdout
    # not a terminal: rank 0's progress arrives as plain lines (infra/progress.py), the last step included
    assert re.search(r"^train  step 24/24  loss \d+\.\d{4}  [\d.]+ samples/s  ETA 0s$", res.stderr, re.M), res.stderr[-3000:]
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    # B: stopped at 12 (as if preempted), then re-run: Ray hands the step-12 checkpoint back.
    # B recomputes activations (gradient checkpointing): the same numbers, less memory.
    sets_b = [*sets, "train.gradient_checkpointing=true"]
    b1 = run_train(_cfg(*sets_b, "train.stop_at_step=12"), local_latents, str(tmp_path / "b"))
    assert b1["step"] == 12 and Path(b1["checkpoint"]).name == "checkpoint_00000012"
    b2 = run_train(_cfg(*sets_b, "train.samples=true", "sample.steps=2"), local_latents, str(tmp_path / "b"))
    assert b2["step"] == 24 and b2["resumed_from"] == 12 and a["resumed_from"] == 0

    # same parameters, EMA, LR schedule and losses at equal steps
    for sub in ("dit", "ema"):
        wa, wb = _weights(a["checkpoint"], sub), _weights(b2["checkpoint"], sub)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wb[k].float(), wa[k].float(), atol=1e-6, rtol=1e-5)
    ma, mb = read_metrics(str(tmp_path / "a")), read_metrics(str(tmp_path / "b"))
    assert [r["step"] for r in ma] == [r["step"] for r in mb] == [4, 8, 12, 16, 20, 24]
    assert [r["lr"] for r in mb] == pytest.approx([r["lr"] for r in ma], rel=1e-12)
    assert [r["loss"] for r in mb] == pytest.approx([r["loss"] for r in ma], rel=1e-4)
    assert ma[-1]["loss"] < 0.9 * ma[0]["loss"], [r["loss"] for r in ma]

    # ZeRO-3: ranks agree after gathering; the EMA partitions gather into a smoothed copy
    assert len(set(a["param_sha"])) == 1 and len(set(b2["param_sha"])) == 1
    dit, ema = _weights(a["checkpoint"], "dit"), _weights(a["checkpoint"], "ema")
    gap = max((ema[k].float() - dit[k].float()).abs().max().item() for k in dit)
    assert 0 < gap < 0.05  # a mis-ordered gather would be off by the weights' own scale

    # the sampling layout: what `reelforge sample` loads, and the preview mp4s
    meta = checkpoint_meta(a["checkpoint"])
    assert (meta["vae"], meta["text_encoder"], meta["step"], meta["zero_stage"]) == ("tiny", "tiny", 24, 3)
    assert load_checkpoint_for_sampling(a["checkpoint"]).config.in_channels == 4
    assert len(list((Path(b2["checkpoint"]) / "samples").glob("*.mp4"))) == 2
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint_0*")) == ["checkpoint_00000016",
                                                                            "checkpoint_00000024"]


# ----------------------------------------------------------------------------- ZeRO-2 on S3, a killed worker


def _kill_rank1_after_first_checkpoint(debug_dir: Path, run_uri: str, killed: dict, first: int) -> None:
    """SIGKILL rank 1 once Ray has registered a checkpoint and rank 1 trained past it."""
    deadline = time.time() + 400
    trace, pid_file = debug_dir / "trace-rank1.jsonl", debug_dir / "rank1.pid"
    snapshot = storage.join(run_uri, "checkpoint_manager_snapshot.json")
    while time.time() < deadline:
        time.sleep(0.2)
        if not (trace.exists() and pid_file.exists()):
            continue
        steps = [json.loads(line)["step"] for line in trace.read_text().splitlines() if line.strip()]
        if steps and max(steps) >= first + 1 and storage.exists(snapshot):
            killed["pid"], killed["at_step"] = int(pid_file.read_text()), max(steps)
            os.kill(killed["pid"], signal.SIGKILL)
            return


def _last_attempt(trace_lines: list[dict]) -> dict:
    """(rank, micro-batch) -> the trace line of the attempt that counted (the last one written)."""
    out = {}
    for line in trace_lines:
        out[(line["rank"], line["micro"])] = line
    return out


def test_zero2_on_s3_survives_a_killed_worker_and_sees_every_row_once_per_epoch(ray_local, s3_bucket, tmp_path):
    latents = write_synthetic_latents(f"{s3_bucket}/pre", SKEWED, row_group_rows=3)
    run_uri, debug = f"{s3_bucket}/runs/zero2", tmp_path / "debug"
    # AdamW with weight decay and 2 micro-batches per optimizer step
    sets = ["train.zero_stage=2", "train.steps=50", "train.checkpoint_every=25", "train.log_every=5",
            "train.grad_accum_steps=2", "train.weight_decay=0.05", f"train.debug_dir={debug}"]
    killed: dict = {}
    killer = threading.Thread(target=_kill_rank1_after_first_checkpoint, args=(debug, run_uri, killed, 25),
                              daemon=True)
    killer.start()
    summary = run_train(_cfg(*sets), latents, run_uri)
    killer.join(timeout=1)

    # a worker died mid-run; Ray Train restarted the group from a checkpoint and it finished
    assert killed, "the killer never fired"
    assert summary["step"] == 50 and 25 <= summary["resumed_from"] <= killed["at_step"] + 1
    assert int((debug / "rank1.pid").read_text()) != killed["pid"]
    assert len(set(summary["param_sha"])) == 1  # both ranks hold the same parameters
    assert summary["global_batch"] == 2 * 2 * 2 and summary["grad_accum_steps"] == 2

    # checkpoints in the S3 endpoint: the newest two, each complete
    bucket, prefix = s3_bucket[len("s3://"):], "runs/zero2/"
    keys = [o["Key"] for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
    ckpts = sorted({k[len(prefix):].split("/")[0] for k in keys if k[len(prefix):].startswith("checkpoint_0")})
    assert ckpts == ["checkpoint_00000025", "checkpoint_00000050"]
    assert summary["checkpoint"] == f"{run_uri}/checkpoint_00000050"
    last = f"{prefix}checkpoint_00000050/"
    for name in ("dit/model.safetensors", "ema/model.safetensors", "meta.json", "config.yaml",
                 "deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                 "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt",
                 "train_state/rank-0.pt", "train_state/rank-1.pt"):
        assert last + name in keys, name
    meta = json.loads(storage.read_text(f"{summary['checkpoint']}/meta.json"))
    assert meta["vae"] == "tiny" and meta["text_encoder"] == "tiny" and meta["step"] == 50

    # metrics on S3: every log step once (the restart dropped the rows it redid), loss falls
    rows = read_metrics(run_uri)
    assert [r["step"] for r in rows] == list(range(5, 51, 5)) and {r["global_batch"] for r in rows} == {8}
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], [r["loss"] for r in rows]
    _check_trace(debug, latents, summary)


def _check_trace(debug: Path, latents: str, summary: dict) -> None:
    """No batch mixes buckets, every optimizer step has 2 micro-batches on each rank, and each epoch
    covers every row exactly once: no rank repeats a batch, so no padding step exists."""
    table = read_latents(latents, columns=["clip_id", "bucket"])
    bucket_of = dict(zip(table["clip_id"].to_pylist(), table["bucket"].to_pylist()))
    lines = [json.loads(x) for r in (0, 1) for x in (debug / f"trace-rank{r}.jsonl").read_text().splitlines()]
    counted = _last_attempt(lines)
    micro_per_epoch = summary["micro_batches_per_epoch"]
    for rank in (0, 1):
        steps = collections.Counter(line["step"] for (r, _), line in counted.items() if r == rank)
        assert steps == {s: 2 for s in range(50)}  # the planned optimizer steps, 2 micro-batches each
    per_epoch = collections.defaultdict(list)
    for (rank, micro), line in counted.items():
        assert {bucket_of[c] for c in line["clip_ids"]} == {line["bucket"]}
        assert line["epoch"] == micro // micro_per_epoch
        per_epoch[line["epoch"]].extend(line["clip_ids"])
    for epoch in range(100 // micro_per_epoch):  # complete epochs
        assert sorted(per_epoch[epoch]) == sorted(bucket_of), epoch  # every row once, none twice
    assert len({line["bucket"] for line in counted.values()}) == 3
