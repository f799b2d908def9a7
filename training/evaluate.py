"""Scripted evaluation on the synthetic world, scored by its checker (infra/worldcheck.py).

`run_eval` (`reelforge eval`) samples a DiT checkpoint on held-out prompts and scores the videos;
with a VAE and clips it also reports reconstruction PSNR/SSIM.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from infra import storage
from infra.worldcheck import check_video, score


# ----------------------------------------------------------------------------- reconstruction
def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of two image batches (N, C, H, W) in [0, 1] (Gaussian window, Wang et al. 2004)."""
    g = torch.exp(-((torch.arange(window) - window // 2) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    c = x.shape[1]
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window)
    pad = window // 2

    def blur(t):
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect"), k, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def eval_clips(root: str, split: str = "eval") -> list[dict]:
    """Clip rows to evaluate: a world's `split` scenes, or a curate output's kept clips (local or s3://)."""
    if storage.exists(storage.join(root, "world.json")):
        from infra.world import world_clips

        return world_clips(root, split)
    rows = storage.read_table(storage.join(root, "clips")).to_pylist()
    return [r for r in rows if r.get("keep") is not False]


@torch.no_grad()
def vae_metrics(vae, clips: list[dict], num_frames: int, height: int, width: int) -> dict:
    """PSNR (dB) and SSIM of VAE reconstructions of the first `num_frames` of each clip."""
    from infra.video import sample_frames
    from training.vae_train import psnr

    psnrs, ssims = [], []
    for c in clips:
        frames = sample_frames(c["uri"], c.get("start_s"), c.get("end_s"), num_frames=None, fps=c["fps"],
                               size=(height, width), start_frame=c.get("start_frame"),
                               end_frame=c.get("end_frame"), source_fps=c.get("fps"))
        if len(frames) < num_frames:
            continue  # shorter than one VAE window
        x = torch.from_numpy(frames[:num_frames]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        recon = vae.decode(vae.encode(x).mode()).clamp(-1, 1)  # (1, 3, T, H, W)
        psnrs.append(psnr(recon, x))
        as_images = lambda t: (t[0].permute(1, 0, 2, 3) + 1) / 2  # noqa: E731  (T, 3, H, W)
        ssims.append(ssim(as_images(recon), as_images(x)))
    if not psnrs:
        return {"clips": 0, "psnr": None, "ssim": None}
    return {"clips": len(psnrs), "psnr": round(float(np.mean(psnrs)), 3), "ssim": round(float(np.mean(ssims)), 4)}


# ----------------------------------------------------------------------------- `reelforge eval`
def heldout_prompts(world, n: int | None = None, seed: int = 0) -> list[dict]:
    """`n` prompts (caption + attributes) over the eval split's combos, shapes and backgrounds."""
    from infra.world import caption_text, combos, split_backgrounds, split_shapes

    every = [{"color": c, "shape": s, "direction": d, "background": b} for c, d in combos(world, "eval")
             for s in split_shapes(world, "eval", c, d) for b in split_backgrounds(world, "eval", c, d, s)]
    rng = np.random.default_rng(seed)
    picked = [every[i] for i in rng.permutation(len(every))[: n or world.eval_prompts]]
    return [{"prompt": caption_text(a), "attributes": a} for a in picked]


def sample_and_score(cfg, checkpoint: str, out_dir: Path | None = None, batch: int = 4) -> dict:
    """Sample the checkpoint on held-out prompts; per-attribute accuracy (and CLIP score if configured)."""
    from training.models.text import build_text_encoder
    from training.models.vae import load_decoding_vae, refuse_random_models
    from training.sample import (checkpoint_meta, load_checkpoint_for_sampling, local_checkpoint, sample_video,
                                 write_mp4)

    w, s = cfg.world, cfg.sample
    with local_checkpoint(checkpoint) as ckpt:  # a checkpoint on S3: dit/, ema/, meta.json only
        meta = checkpoint_meta(ckpt)
        vae_spec = meta.get("vae") or cfg.precompute.vae
        text_spec = meta.get("text_encoder") or cfg.precompute.text_encoder
        notes = refuse_random_models(vae_spec, text_spec, "eval", cfg.eval.allow_random_weights)
        clip, clip_notes = _clip_for_eval(cfg)  # a missing or refused scorer fails here, before any sampling
        dit = load_checkpoint_for_sampling(ckpt)
    vae, norm = load_decoding_vae(vae_spec, meta)
    text_encoder = build_text_encoder(text_spec)
    prompts = heldout_prompts(w, seed=w.seed)
    videos = []
    for i in range(0, len(prompts), batch):
        chunk = [p["prompt"] for p in prompts[i : i + batch]]
        videos += list(sample_video(dit, vae, text_encoder, chunk, num_frames=s.num_frames, height=s.height,
                                    width=s.width, steps=s.steps, cfg_scale=s.cfg_scale, seed=s.seed + i,
                                    latent_norm=norm, shift=s.time_shift).numpy())
    checks = [check_video(v, w.colors, w.shape_colors) for v in videos]
    report = {"prompts": len(prompts), "accuracy": score(checks, [p["attributes"] for p in prompts]),
              "per_prompt": [{**p, "checked": c} for p, c in zip(prompts, checks)], "clip_score": None,
              "random_weights": notes + clip_notes}
    if out_dir is not None:
        for i, v in enumerate(videos):
            write_mp4(v, out_dir / f"eval-{i:03d}.mp4", fps=s.fps)
    if clip:
        from training.models.clip import ClipScorer

        scorer = ClipScorer(*clip)
        report["clip_score"] = round(float(np.mean(scorer.score(videos, [p["prompt"] for p in prompts]))), 4)
    return report


def _clip_for_eval(cfg) -> tuple[tuple[str, str | None] | None, list[str]]:
    """(open_clip model, pretrained) of eval.clip_model, else of caption.clip_model (None: no CLIP score),
    and its random-weights note; a random one is refused unless eval.allow_random_weights."""
    from training.models.clip import check_clip, is_random_clip
    from training.models.hub import random_note, refuse_random

    e, c = cfg.eval, cfg.caption
    name, pretrained = (e.clip_model, e.clip_pretrained) if e.clip_model else (c.clip_model, c.clip_pretrained)
    if not name:
        return None, []
    notes = refuse_random([random_note("CLIP scorer", name)] if is_random_clip(name, pretrained) else [], "eval",
                          e.allow_random_weights)
    check_clip(name, pretrained)
    return (name, pretrained), notes


def run_eval(cfg, checkpoint: str | None = None, vae: str | None = None, clips: str | None = None,
             output: str | None = None, max_clips: int = 16) -> dict:
    """`reelforge eval`: held-out prompt accuracy of a DiT checkpoint and/or VAE PSNR/SSIM on clips."""
    if not checkpoint and not (vae and clips):
        raise ValueError("give --checkpoint, or --vae with --clips (or all three)")
    started = time.time()
    with storage.staged_dir(output) if output else contextlib.nullcontext(None) as local_out:
        out_dir = Path(local_out) if local_out else None
        report: dict = {"checkpoint": checkpoint, "vae": vae, "clips": clips}
        if checkpoint:
            report["sample"] = sample_and_score(cfg, checkpoint, out_dir)
        if vae and clips:
            report["reconstruction"] = _reconstruction(cfg, vae, clips, max_clips)
        report["wall_s"] = round(time.time() - started, 2)
        if out_dir is not None:  # OUT (local or s3://) gets eval.json beside the mp4s
            (out_dir / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _reconstruction(cfg, vae: str, clips: str, max_clips: int) -> dict:
    from training.models.vae import load_vae

    v = cfg.train.vae
    model = load_vae(vae).eval()
    tc = model.temporal_compression
    frames = 1 + (v.num_frames - 1) // tc * tc  # causal VAE: 1 + k * its temporal compression
    return vae_metrics(model, eval_clips(clips)[:max_clips], frames, v.height, v.width)
