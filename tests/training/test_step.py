"""The plain-torch training pieces: LR schedule, EMA, the step itself, the DeepSpeed config, metrics."""

import math

import pytest
import torch

from infra.config import load_config
from training import zero
from training.data import BucketBatcher, arrow_rows, collate
from training.metrics import Meter, MetricsLog, rates, read_metrics
from training.models.dit import build_dit
from training.step import EMA, ema_decay_at, lr_at, set_lr, train_step
from training.synthetic import table


def test_lr_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    lrs = [lr_at(s, 1e-3, warmup_steps=10, total_steps=110, min_lr=1e-5) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half way: the cosine's midpoint
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[110] == pytest.approx(1e-5) and lr_at(500, 1e-3, 10, 110, 1e-5) == pytest.approx(1e-5)
    assert lr_at(0, 1e-3, 0, 100) == pytest.approx(1e-3)  # no warmup starts at the peak


def test_set_lr_reaches_every_param_group():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias]}], lr=1.0)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]


def test_ema_is_a_float32_moving_average_with_an_early_cap():
    p = torch.zeros(3, dtype=torch.bfloat16)
    ema = EMA([p])
    assert ema.shadow[0].dtype == torch.float32
    ema.update([torch.ones(3)], decay=0.75)
    assert torch.allclose(ema.shadow[0], torch.full((3,), 0.25))
    ema.update([torch.ones(3)], decay=0.0)
    assert torch.equal(ema.shadow[0], torch.ones(3))
    assert ema_decay_at(0, 0.9999) == pytest.approx(0.1) and ema_decay_at(10**6, 0.9999) == 0.9999
    other = EMA([torch.zeros(3)])
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow[0], ema.shadow[0])


def test_train_step_loss_falls_on_bucket_batches_and_ema_lags():
    torch.manual_seed(0)
    model = build_dit("VDiT-T/2", in_channels=4, text_dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ema = EMA(list(model.parameters()))
    rows = list(arrow_rows([table()]))
    batcher = BucketBatcher({"3x8x8": 4, "2x8x12": 4, "1x12x8": 4}, seed=0)
    gen, losses, step = torch.Generator().manual_seed(0), [], 0
    for epoch in range(7):
        for batch in batcher.batches(rows, epoch):
            m = train_step(model, opt, collate(batch), lr=lr_at(step, 3e-3, 5, 40), grad_clip=1.0,
                           caption_dropout=0.1, generator=gen, ema=ema, ema_decay=ema_decay_at(step, 0.99))
            losses.append(m["loss"])
            assert math.isfinite(m["grad_norm"])
            step += 1
    assert step >= 40
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    drift = sum((s - p.detach()).abs().sum() for s, p in zip(ema.shadow, model.parameters()))
    assert drift > 0  # the EMA lags the raw weights


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_follows_the_train_section(stage):
    t = load_config(None, [f"train.zero_stage={stage}", "train.batch_size=3", "train.grad_clip=0.5"]).train
    c = zero.ds_config(t, world_size=4, prec=zero.precision(False, "auto"))
    assert c["zero_optimization"] == {"stage": stage}
    assert c["train_batch_size"] == 12 and c["gradient_clipping"] == 0.5 and not c["bf16"]["enabled"]
    assert "optimizer" not in c  # the torch AdamW is passed in: no CPU-Adam JIT build
    accum = zero.ds_config(load_config(None, ["train.batch_size=3", "train.grad_accum_steps=4"]).train, 2, "fp32")
    assert accum["gradient_accumulation_steps"] == 4 and accum["train_batch_size"] == 3 * 2 * 4


def test_train_zero_keys_reach_deepspeed_and_bad_ones_fail():
    t = load_config(None, ["train.zero.reduce_scatter=false", "train.zero.overlap_comm=true",
                           "train.zero.bucket_mb=64"]).train
    z = zero.ds_config(t, 2, "fp32")["zero_optimization"]
    assert z["reduce_scatter"] is False and z["overlap_comm"] is True
    assert z["reduce_bucket_size"] == z["allgather_bucket_size"] == 64 * 2**20 // 4
    with pytest.raises(Exception, match="bucket_mb"):
        load_config(None, ["train.zero.bucket_mb=0"])
    with pytest.raises(Exception, match="reduce_scater"):
        load_config(None, ["train.zero.reduce_scater=false"])


def test_deepspeed_config_offload_and_precision():
    t = load_config(None, ["train.zero_stage=3", "train.offload_optimizer=true", "train.offload_param=true",
                           "train.use_gpu=true"]).train
    c = zero.ds_config(t, 1, zero.precision(t.use_gpu, t.precision))
    assert c["bf16"]["enabled"]
    assert c["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert c["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert zero.precision(True, "fp32") == "fp32" and zero.precision(False, "bf16") == "bf16"


def test_rates_and_mfu_from_summed_work():
    meter = Meter()
    meter.add(2.0, samples=4, tokens=400, flops=1e12)
    meter.add(1.0, samples=4, tokens=400, flops=1e12)
    r = rates(meter.totals(), seconds=2.0, world_size=2, peak_tflops=1.0)
    assert r["loss"] == pytest.approx(1.5) and r["samples_per_s"] == pytest.approx(4.0)
    assert r["tokens_per_s"] == pytest.approx(400.0) and r["mfu"] == pytest.approx(0.5)


def test_metrics_log_drops_rows_past_the_resumed_step(tmp_path):
    run = str(tmp_path / "run")
    log = MetricsLog(run)
    for step in (2, 4, 6):
        log.write({"step": step, "epoch": 0, "loss": 1.0 / step, "lr": 0.1})
    log.close()
    assert [r["step"] for r in read_metrics(run)] == [2, 4, 6]
    log = MetricsLog(run, resume_step=4)  # a restart from the step-4 checkpoint
    log.write({"step": 6, "epoch": 0, "loss": 0.5, "lr": 0.1})
    log.close()
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [2, 4, 6] and rows[-1]["loss"] == 0.5
    assert any((tmp_path / "run" / "logs" / "tb").iterdir())


def test_config_refuses_inconsistent_train_settings():
    from infra.config import ConfigError

    with pytest.raises(ConfigError, match="offload_param needs zero_stage 3"):
        load_config(None, ["train.offload_param=true"])
    with pytest.raises(ConfigError, match="min_lr"):
        load_config(None, ["train.lr=1e-4", "train.min_lr=1e-3"])
    with pytest.raises(ConfigError, match="betas"):
        load_config(None, ["train.betas=[0.9]"])


def test_training_modules_import_neither_ray_nor_deepspeed():
    import subprocess
    import sys
    from pathlib import Path

    modules = ["training.step", "training.data", "training.plan", "training.zero", "training.metrics", "training.synthetic",
               "training.vae_train", "training.train", "training.flow", "training.models.dit"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'deepspeed'))\n"
            "assert not bad, bad[:5]\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr[-2000:]
