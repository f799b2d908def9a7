"""Gradient accumulation under DeepSpeed ZeRO-2 with 2 real processes (gloo): 2 micro-batches of b
rows per optimizer step give the same weights as 1 batch of 2b rows, with AdamW and weight decay,
through the train job's own DeepSpeed config (`zero.ds_config`) and micro-step (`zero.micro_step`).

The flow objective draws its noise per call, so here each row's time and noise are fixed by its
clip id: the two runs then differ only in how the rows are cut into micro-batches."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
B = 3  # rows per micro-batch of the accumulating run; the other run takes 2B at once


def _loss(engine, batch):
    """Rectified-flow loss with each row's t and noise fixed by its clip id (mean over the batch)."""
    import zlib

    import torch

    from training import flow

    x0 = batch["latent"]
    gens = [torch.Generator().manual_seed(zlib.crc32(c.encode())) for c in batch["clip_ids"]]
    t = torch.stack([torch.rand((), generator=g) for g in gens])
    eps = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens])
    pred = engine(flow.interpolate(x0, eps, t), t, batch["text_tokens"], batch["text_mask"])
    return (pred.float() - (eps - x0)).pow(2).flatten(1).mean(1).mean()


def _engine(accum: int, world: int):
    import deepspeed
    import torch

    from infra.config import load_config
    from training import zero
    from training.models.dit import build_dit

    t = load_config(None, ["train.zero_stage=2", f"train.batch_size={2 * B // accum}", f"train.grad_accum_steps={accum}",
                           "train.weight_decay=0.1", "train.grad_clip=0.5"]).train
    torch.manual_seed(0)
    model = build_dit("VDiT-T/2", in_channels=4, text_dim=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=t.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=zero.ds_config(t, world, "fp32"))
    return engine


def worker(rank: int, world: int, out: str) -> None:
    """One of the two processes: two optimizer steps with accumulation 2 and with accumulation 1."""
    import torch
    from training import zero
    from training.data import arrow_rows, collate
    from training.synthetic import table

    torch.set_num_threads(1)
    import deepspeed

    zero.skip_inference_shm_op()  # no C++ build: training never uses that op
    deepspeed.init_distributed(dist_backend="gloo")
    rows = [r for i, r in enumerate(arrow_rows([table({"2x8x8": 8 * B})])) if i % world == rank]  # 4B rows
    result = {}
    for accum in (2, 1):
        engine = _engine(accum, world)
        for step in range(2):  # two steps: AdamW's moments and weight decay both matter
            mine = rows[step * 2 * B:(step + 1) * 2 * B]
            micro = [collate(mine[:B]), collate(mine[B:])] if accum == 2 else [collate(mine)]
            for i, batch in enumerate(micro):
                zero.micro_step(engine, lambda: _loss(engine, batch), boundary=i == len(micro) - 1)
        result[accum] = {n: p.detach().flatten()[:64].tolist() + [float(p.double().sum())]
                         for n, p in engine.module.named_parameters()}
        result[f"steps{accum}"] = engine.global_steps
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero2_accumulation_2_at_batch_b_equals_accumulation_1_at_batch_2b(tmp_path, cli_env):
    world, port = 2, _free_port()
    procs = []
    for rank in range(world):
        env = {**cli_env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, __file__, str(rank), str(world), str(tmp_path)], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for res in results:
        assert res["steps2"] == res["steps1"] == 2  # two optimizer steps each, whatever the accumulation
        accum2, accum1 = res["2"], res["1"]
        assert accum2.keys() == accum1.keys()
        for name in accum1:
            assert accum2[name] == pytest.approx(accum1[name], rel=1e-4, abs=1e-6), name
    assert results[0]["2"] == results[1]["2"]  # ZeRO-2: both ranks hold the same weights
    moved = sum(abs(a - b) for a, b in zip(results[0]["1"]["final_layer.linear.weight"], [0.0] * 64))
    assert moved > 0  # the steps changed the (zero-initialised) output layer


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
