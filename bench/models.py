"""VideoDiT benchmark: prints JSON lines.

1. params and forward FLOPs per token (from the config) of every preset at a reference grid;
2. forward+backward time and tokens/s of VDiT-S/2 on CPU at two latent grids;
3. with CUDA: bf16 (autocast) training-step throughput and MFU of VDiT-B/2.

MFU counts training as 3x forward FLOPs, attention included (flops_per_token).
    python bench/models.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from training.models.dit import VDIT_PRESETS, build_dit, flops_per_token, num_params


def grid_tokens(config, grid) -> int:
    return math.prod(math.ceil(n / p) for n, p in zip(grid, config.patch))


def time_train_step(model, grid, batch, text_len, iters, device, dtype=None) -> float:
    """Mean seconds of forward + backward (+ zero_grad) after one warm-up step."""
    c = model.config
    x = torch.randn(batch, c.in_channels, *grid, device=device)
    t = torch.rand(batch, device=device)
    tokens = torch.randn(batch, text_len, c.text_dim, device=device)
    mask = torch.ones(batch, text_len, dtype=torch.bool, device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x, t, tokens, mask).float().square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def emit(**row):
    print(json.dumps(row), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--ref-grid", type=int, nargs=3, default=[5, 32, 32], help="latent T H W for the FLOPs table")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--gpu-batch", type=int, default=8)
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    # 1. params and FLOPs per token from the config
    for name, config in VDIT_PRESETS.items():
        with torch.device("meta"):
            params = num_params(build_dit(config))
        n = grid_tokens(config, args.ref_grid)
        fpt = flops_per_token(config, n, args.text_len)
        emit(bench="dit_config", preset=name, params=params, ref_grid=args.ref_grid, tokens=n,
             text_len=args.text_len, fwd_flops_per_token=round(fpt), train_flops_per_token=round(3 * fpt))

    # 2. CPU forward + backward of VDiT-S/2
    if not args.skip_cpu:
        model = build_dit("VDiT-S/2")
        for grid in ([1, 16, 16], [5, 16, 24]):
            n = grid_tokens(model.config, grid)
            seconds = time_train_step(model, grid, 1, args.text_len, args.iters, torch.device("cpu"))
            fpt = flops_per_token(model.config, n, args.text_len)
            emit(bench="dit_cpu_fwd_bwd", preset="VDiT-S/2", threads=args.threads, batch=1, grid=grid,
                 tokens=n, seconds=round(seconds, 4), tokens_per_s=round(n / seconds, 1),
                 achieved_gflops=round(3 * fpt * n / seconds / 1e9, 2))

    # 3. GPU bf16 MFU of VDiT-B/2
    if torch.cuda.is_available():
        device = torch.device("cuda")
        model = build_dit("VDiT-B/2").to(device)
        grid = args.ref_grid
        n = grid_tokens(model.config, grid) * args.gpu_batch
        seconds = time_train_step(model, grid, args.gpu_batch, args.text_len, max(args.iters, 10), device, torch.bfloat16)
        fpt = flops_per_token(model.config, n // args.gpu_batch, args.text_len)
        mfu = 3 * fpt * n / seconds / (args.peak_tflops * 1e12)
        emit(bench="dit_gpu_bf16", preset="VDiT-B/2", device=torch.cuda.get_device_name(), batch=args.gpu_batch,
             grid=grid, tokens_per_s=round(n / seconds, 1), seconds=round(seconds, 4),
             peak_tflops=args.peak_tflops, mfu=round(mfu, 4))
    else:
        emit(bench="dit_gpu_bf16", skipped="no CUDA device")


if __name__ == "__main__":
    main()
