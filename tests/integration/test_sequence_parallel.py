"""`train.sequence_parallel` for real: 4 Ray Train workers on gloo as 2 data ranks x 2 sequence ranks
(Ulysses attention, DeepSpeed ZeRO-2 given the (data, sequence) mesh as its mpu) train like 2 data
ranks alone at the same global batch: the same losses step by step and the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from infra.config import load_config
from training.metrics import read_metrics
from training.synthetic import write_synthetic_latents
from training.train import run_train

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
BASE = ["train.model=VDiT-T/2", "train.batch_size=2", "train.lr=0.01", "train.warmup_steps=1", "train.steps=4",
        "train.log_every=1", "train.checkpoint_every=4", "train.seed=0", "train.zero_stage=2",
        "train.caption_dropout=0.0", "train.samples=false"]


def _run(latents, out, workers: int, sp: int) -> dict:
    cfg = load_config(ROOT / "configs" / "tiny.yaml", BASE + [f"train.num_workers={workers}",
                      f"train.sequence_parallel={sp}", f"train.cpus_per_worker={1.8 / workers:.2f}"])
    summary = run_train(cfg, latents, str(out))
    return {"summary": summary, "losses": [float(r["loss"]) for r in read_metrics(str(out))],
            "weights": load_file(str(Path(summary["checkpoint"]) / "dit" / "model.safetensors"))}


def test_two_data_ranks_by_two_sequence_ranks_train_like_two_data_ranks(ray_local, tmp_path):
    # 3x6x10 latents in 1x2x2 patches: 3 * 3 * 5 = 45 tokens, an odd count the 2 sequence ranks pad to 46
    latents = write_synthetic_latents(str(tmp_path / "pre"), {"3x6x10": 16}, rows_per_file=4, row_group_rows=2)
    sp = _run(latents, tmp_path / "sp", workers=4, sp=2)
    dp = _run(latents, tmp_path / "dp", workers=2, sp=1)
    assert sp["summary"]["step"] == dp["summary"]["step"] == 4
    assert sp["summary"]["global_batch"] == dp["summary"]["global_batch"] == 4  # 2 data ranks x 2 rows
    assert len(set(sp["summary"]["param_sha"])) == 1 and len(sp["summary"]["param_sha"]) == 4  # one model
    assert len(sp["losses"]) == 4 and sp["losses"] == pytest.approx(dp["losses"], rel=1e-3)
    assert sp["losses"][-1] < sp["losses"][0]  # it trains
    for name, w in dp["weights"].items():
        torch.testing.assert_close(sp["weights"][name], w, rtol=1e-3, atol=1e-5, msg=name)
