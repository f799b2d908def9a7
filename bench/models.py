"""Model benchmarks: print JSON lines.

1. params and forward FLOPs per token (from the config) of every preset at a reference grid;
2. forward+backward time and tokens/s of VDiT-S/2 on CPU at two latent grids;
3. with CUDA: bf16 (autocast) training-step throughput and MFU of VDiT-B/2;
4. `--vae`: encode clips/s and peak RSS of every diffusers VAE family (tiny random instances of the
   real classes, loaded by path as precompute loads them) at one size, with tiling on and off; each
   configuration runs in a fresh process so its peak RSS is its own.

MFU counts training as 3x forward FLOPs, attention included (flops_per_token).
    python bench/models.py --threads 1
    PYTHONPATH=. python bench/models.py --vae --frames-k 4 --size 128 --tile-px 64
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


def vae_encode_bench(family: str, tiling: bool, k: int, size: int, tile_px: int, clips: int, threads: int) -> dict:
    """One VAE family, one setting: encode `clips` clips of 1 + k*temporal frames at size x size (child process)."""
    import resource
    import tempfile

    from tests.tiny_models import VAE_FAMILIES, save_vae
    from training.models.vae import load_vae

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        vae = load_vae(f"diffusers:{save_vae(family, d)}", tiling=tiling, tile_px=tile_px)
    frames = 1 + k * VAE_FAMILIES[family][3]
    x = torch.rand(1, 3, frames, size, size) * 2 - 1
    with torch.no_grad():
        vae.encode(x).mode()  # warm-up
        start = time.perf_counter()
        for _ in range(clips):
            z = vae.encode(x).mode()
        seconds = time.perf_counter() - start
    return {"bench": "vae_encode", "family": family, "class": type(vae.model).__name__, "tiling": tiling,
            "tile_px": tile_px if tiling else None, "clip": [frames, size, size], "latent": list(z.shape[1:]),
            "clips_per_s": round(clips / seconds, 3), "peak_rss_mb": round(resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "threads": threads}


def vae_benches(args) -> None:
    import multiprocessing

    from tests.tiny_models import VAE_FAMILIES

    ctx = multiprocessing.get_context("spawn")  # a fresh process per setting: its own peak RSS
    for family in VAE_FAMILIES:
        for tiling in (False, True):
            with ctx.Pool(1) as pool:
                emit(**pool.apply(vae_encode_bench, (family, tiling, args.frames_k, args.size, args.tile_px,
                                                     args.clips, args.threads)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--ref-grid", type=int, nargs=3, default=[5, 32, 32], help="latent T H W for the FLOPs table")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--gpu-batch", type=int, default=8)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--vae", action="store_true", help="only the VAE family encode benchmark")
    parser.add_argument("--frames-k", type=int, default=4, help="VAE clips: 1 + k * temporal frames")
    parser.add_argument("--size", type=int, default=128, help="VAE clips: size x size pixels")
    parser.add_argument("--tile-px", type=int, default=64, help="tile side when tiling is on")
    parser.add_argument("--clips", type=int, default=3, help="VAE clips timed per setting")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.vae:
        vae_benches(args)
        return

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
