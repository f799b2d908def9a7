"""Plain-torch VideoVAE training: L1 reconstruction + kl_weight * KL (no Ray here)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
import torch.nn as nn


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of pixels in [-1, 1] (peak-to-peak 2)."""
    mse = (x.float().clamp(-1, 1) - y.float()).pow(2).mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def vae_loss(vae, x: torch.Tensor, kl_weight: float = 1e-6, generator=None) -> dict:
    """L1 between x and its reconstruction from a posterior sample, plus kl_weight * KL.

    KL is averaged over latent elements (DiagonalGaussian.kl), so kl_weight does not depend on
    the clip size.
    """
    recon, posterior = vae(x, sample_posterior=True, generator=generator)
    rec = (recon.float() - x.float()).abs().mean()
    kl = posterior.kl().mean()
    return {"loss": rec + kl_weight * kl, "recon": rec, "kl": kl, "x_hat": recon}


def train_step(vae, optimizer, x, *, kl_weight=1e-6, grad_clip=1.0, generator=None) -> dict:
    """One optimizer step on the batch x (B, 3, T, H, W); returns float metrics."""
    vae.train()
    out = vae_loss(vae, x, kl_weight, generator)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    grad_norm = nn.utils.clip_grad_norm_(vae.parameters(), grad_clip if grad_clip else float("inf"))
    optimizer.step()
    return {
        "loss": out["loss"].item(), "recon": out["recon"].item(), "kl": out["kl"].item(),
        "grad_norm": float(grad_norm), "psnr": psnr(out["x_hat"].detach(), x),
    }


def train_vae(
    vae, videos: Iterable[torch.Tensor], steps: int, *, lr=1e-3, kl_weight=1e-6, grad_clip=1.0,
    device="cpu", seed=0, log_every=0, optimizer=None,
) -> dict:
    """Train on up to `steps` batches from `videos` (each (B, 3, T, H, W) or (3, T, H, W)).

    Returns steps done, seconds, the history of per-step metrics and the last step's metrics.
    """
    vae.to(device)
    optimizer = optimizer or torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    generator = torch.Generator("cpu").manual_seed(seed)
    history, start = [], time.perf_counter()
    for step, x in enumerate(videos):
        if step >= steps:
            break
        x = (x if x.ndim == 5 else x.unsqueeze(0)).to(device)
        metrics = train_step(vae, optimizer, x, kl_weight=kl_weight, grad_clip=grad_clip, generator=generator)
        history.append(metrics)
        if log_every and step % log_every == 0:
            print({"step": step, **{k: round(v, 5) for k, v in metrics.items()}}, flush=True)
    last = history[-1] if history else {}
    return {"steps": len(history), "seconds": time.perf_counter() - start, "history": history, "last": last}


@torch.no_grad()
def estimate_scaling_factor(vae, videos: Iterable[torch.Tensor], max_batches: int = 8) -> float:
    """1 / std of the posterior means over a few batches (SD's recipe for unit-variance latents).

    Store it with `vae.config = dataclasses.replace(vae.config, scaling_factor=s)` before
    save_pretrained, so precompute and sampling scale latents the same way.
    """
    vae.eval()
    device = next(vae.parameters()).device
    means = []
    for i, x in enumerate(videos):
        if i >= max_batches:
            break
        x = (x if x.ndim == 5 else x.unsqueeze(0)).to(device)
        means.append(vae.encode(x).mode().float().flatten())
    return 1.0 / torch.cat(means).std().clamp(min=1e-6).item()
