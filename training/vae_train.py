"""Plain-torch VideoVAE training: L1 reconstruction + kl_weight * KL, and the `reelforge train-vae`
job over frames of a curate output's kept clips: `train_vae_job` is the whole job in one process,
`run_train_vae` runs it as ONE Ray Train worker (so on a cluster it lands on a GPU node). Ray is
imported only inside the launcher's functions."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterable

import torch
import torch.nn as nn

from infra.progress import report_step


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of pixels in [-1, 1] (peak-to-peak 2)."""
    mse = (x.float().clamp(-1, 1) - y.float()).pow(2).mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def vae_loss(vae, x: torch.Tensor, kl_weight: float = 1e-6, generator=None, recon_loss: str = "l1") -> dict:
    """L1 (or MSE) between x and its reconstruction from a posterior sample, plus kl_weight * KL.

    KL is averaged over latent elements (DiagonalGaussian.kl), so kl_weight does not depend on
    the clip size.
    """
    recon, posterior = vae(x, sample_posterior=True, generator=generator)
    diff = recon.float() - x.float()
    rec = diff.pow(2).mean() if recon_loss == "mse" else diff.abs().mean()
    kl = posterior.kl().mean()
    return {"loss": rec + kl_weight * kl, "recon": rec, "kl": kl, "x_hat": recon}


def train_step(vae, optimizer, x, *, kl_weight=1e-6, grad_clip=1.0, generator=None, recon_loss="l1") -> dict:
    """One optimizer step on the batch x (B, 3, T, H, W); returns float metrics."""
    vae.train()
    out = vae_loss(vae, x, kl_weight, generator, recon_loss)
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
    device="cpu", seed=0, log_every=0, optimizer=None, recon_loss="l1", on_step=None,
) -> dict:
    """Train on up to `steps` batches from `videos` (each (B, 3, T, H, W) or (3, T, H, W));
    `on_step(step, loss)` after each step.

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
        metrics = train_step(vae, optimizer, x, kl_weight=kl_weight, grad_clip=grad_clip, generator=generator,
                             recon_loss=recon_loss)
        history.append(metrics)
        if on_step:
            on_step(step + 1, metrics["loss"])
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


# ----------------------------------------------------------------------------- the train-vae job


def clip_videos(clips_uri: str, vc) -> tuple[list[torch.Tensor], list[str]]:
    """Pixels (3, T, H, W) in [-1, 1] of the kept clips of a curate output (or its clips/ folder),
    T = vc.num_frames spread over each clip (stills only with train.vae.images); returns (videos, errors of
    clips that did not decode)."""
    from infra.video import sample_frames
    from infra import storage

    root = clips_uri.rstrip("/")
    table = storage.read_table(root if root.endswith("clips") else storage.join(root, "clips"))
    rows = sorted((r for r in table.to_pylist() if r.get("keep") is not False
                   and (vc.images or r.get("media_type", "video") != "image")), key=lambda r: r["clip_id"])
    videos, errors = [], []
    for r in rows[: vc.max_clips]:
        try:
            frames = sample_frames(r["uri"], r["start_s"], r["end_s"], num_frames=vc.num_frames,
                                   size=(vc.height, vc.width), crop=True, start_frame=r["start_frame"],
                                   end_frame=r["end_frame"], source_fps=r["fps"])
        except (ValueError, RuntimeError) as exc:
            errors.append(f"{r['clip_id']}: {exc}")
            continue
        videos.append(torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1)  # (3, T, H, W)
    return videos, errors


def _random_batches(videos: list[torch.Tensor], batch_size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(len(videos), (min(batch_size, len(videos)),), generator=gen).tolist()
        yield torch.stack([videos[i] for i in idx])  # (B, 3, T, H, W)


def train_vae_job(cfg, clips_uri: str, output: str, on_step=None) -> dict:
    """The train-vae job in this process: decode, train, save OUTPUT/vae/ (local or s3://) with the
    summary and config beside it; returns the summary."""
    import dataclasses
    import json
    from pathlib import Path

    from infra import storage
    from training.models.vae import VideoVAE, load_vae

    vc = cfg.train.vae
    device = ("cuda" if torch.cuda.is_available() else "cpu") if vc.device == "auto" else vc.device
    vae = load_vae(vc.preset, device=device, seed=vc.seed)
    if not isinstance(vae, VideoVAE):
        raise ValueError(f"train.vae.preset={vc.preset!r} is not a trainable VideoVAE")
    vae.latent_frames(vc.num_frames)  # a frame count the VAE cannot take fails before decoding
    videos, errors = clip_videos(clips_uri, vc)
    if not videos:
        raise ValueError(f"no kept clip under {clips_uri} could be decoded ({len(errors)} failed)")
    result = train_vae(vae, _random_batches(videos, vc.batch_size, vc.seed), vc.steps, lr=vc.lr,
                       kl_weight=vc.kl_weight, grad_clip=vc.grad_clip, device=device, seed=vc.seed,
                       log_every=vc.log_every, recon_loss=vc.recon_loss, on_step=on_step)
    scale = estimate_scaling_factor(vae, (v[None] for v in videos))
    vae.config = dataclasses.replace(vae.config, scaling_factor=scale)
    last = result["last"]
    summary = {"output": output, "checkpoint": storage.join(output, "vae"), "clips": len(videos),
               "failed_clips": len(errors), "errors": errors[:20], "steps": result["steps"],
               "final_loss": last["loss"], "psnr": last["psnr"], "seconds": round(result["seconds"], 2),
               "samples_per_s": result["steps"] * vc.batch_size / max(result["seconds"], 1e-9),
               "scaling_factor": scale, "device": device, "host": socket.gethostname(), "pid": os.getpid()}
    with storage.staged_dir(storage.join(output, "vae")) as local:  # uploaded whole when on S3
        vae.save_pretrained(Path(local))
    storage.write_text(storage.join(output, "config.yaml"), cfg.to_yaml())
    storage.write_text(storage.join(output, "summary.json"), json.dumps(summary, indent=2))
    return summary


def _vae_worker(config: dict) -> None:
    """The one Ray Train worker of train-vae."""
    import ray.train

    cfg = config["config"]
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    progress = config.get("progress")
    summary = train_vae_job(cfg, config["clips"], config["output"], on_step=lambda s, loss: report_step(progress, s, loss))
    ray.train.report({"steps": summary["steps"], "final_loss": summary["final_loss"]})


def _worker_error(exc: BaseException) -> BaseException | None:
    """The user-facing error a failed Ray Train worker raised (ValueError, FileNotFoundError), if any."""
    for err in getattr(exc, "worker_failures", {}).values():
        while err is not None:
            if isinstance(err, (ValueError, FileNotFoundError)) and "ray" not in type(err).__module__:
                return err
            err = getattr(err, "cause", None) or err.__cause__
    return None


def run_train_vae(cfg, clips_uri: str, output: str | None = None) -> dict:
    """Train the video VAE on frames of the kept clips as ONE Ray Train worker (train.cpus_per_worker,
    train.use_gpu, train.resources) on the cluster the config points at; save OUTPUT/vae/."""
    import json
    import shutil
    import tempfile

    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from infra import storage
    from infra.progress import step_progress
    from infra.runtime import ray_session

    t = cfg.train
    output = (output or storage.join(clips_uri, "vae-train")).rstrip("/")
    if not storage.is_s3(output):
        output = os.path.abspath(output)  # the worker runs in its own directory
    resources = {"CPU": t.cpus_per_worker, **t.resources, **({"GPU": 1} if t.use_gpu else {})}
    runs = tempfile.mkdtemp(prefix="rf-train-vae-")  # Ray Train's own run state; no checkpoint is kept there
    try:
        with (ray_session(cfg, paths={"--clips": clips_uri, "--output": output}),
              step_progress("train-vae", t.vae.steps, t.vae.batch_size) as progress):
            trainer = TorchTrainer(
                _vae_worker, train_loop_config={"config": cfg, "clips": clips_uri, "output": output, "progress": progress},
                scaling_config=ScalingConfig(num_workers=1, use_gpu=t.use_gpu, resources_per_worker=resources),
                run_config=RunConfig(name="train-vae", storage_path=runs, failure_config=FailureConfig(max_failures=0)))
            try:
                trainer.fit()
            except Exception as exc:  # noqa: BLE001 - a bad input is the worker's ValueError: say it plainly
                cause = _worker_error(exc)
                if cause is None:
                    raise
                raise type(cause)(str(cause)) from None
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    return json.loads(storage.read_text(storage.join(output, "summary.json")))
