"""The Sora capabilities scored on the synthetic world (infra/worldcheck.py reads every result):

- image-to-video: a still of each held-out prompt's shape (drawn by the world's painter, written
  as PNG and read back through `--image`'s path) animated with the prompt; the colour and shape of
  the generated frames (the conditioning frame left out) against the still's;
- extension: the first 1 + tc frames of each held-out eval clip (two latent frames) extended by
  one latent frame with a prompt that names no direction ("a red square on a gray background");
  the direction of the generated frames only against the clip's;
  (`extension_seen`: the same on training clips, whose colour-direction pairs the model saw);
- images: one-frame samples of "a {colour} {shape} on a {background} background" prompts; their
  colour and shape against the prompt's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from infra.worldcheck import check_video, score
from training import conditioning
from training.conditioning import FrameCondition


def _still(world, attrs: dict, path: Path, seed: int) -> Path:
    """A PNG of the prompt's shape at a random place, painted as the world paints its frames."""
    from infra.videogen import Scene, write_image

    rng = np.random.default_rng(seed)
    w, h = (int(x) for x in world.sizes[0].split("x"))
    side = max(1, int(min(h, w) * world.shape_size))
    start = ((rng.uniform(0, w - side) + 0.25) / w, (rng.uniform(0, h - side) + 0.25) / h)
    scene = Scene(1, kind="static", color=tuple(world.colors[attrs["color"]]), bg=tuple(world.colors[attrs["background"]]),
                  shape=attrs["shape"], size=world.shape_size, start=start, textured=False)
    return write_image(path, scene, width=w, height=h, seed=seed)


def _run(sampler, prompts: list[str], conditions: list[FrameCondition] | None, s, frames: int, seed: int):
    """uint8 videos (B, T, H, W, 3) of the prompts, each with its own condition."""
    from training.sample import sample_video

    out = []
    for i, prompt in enumerate(prompts):
        cond = conditions[i] if conditions else None
        out.append(sample_video(sampler.dit, sampler.vae, sampler.text_encoder, [prompt], num_frames=frames,
                                height=s.height, width=s.width, steps=s.steps, cfg_scale=s.cfg_scale, seed=seed + i,
                                latent_norm=sampler.norm, condition=cond)[0].numpy())
    return out


def image_to_video(cfg, sampler, prompts: list[dict]) -> dict:
    w, s = cfg.world, cfg.sample
    with tempfile.TemporaryDirectory() as tmp:
        conds = [conditioning.animate(sampler.vae, sampler.norm, str(_still(w, p["attributes"], Path(tmp) / f"{i}.png",
                                                                            w.seed + i)), s)
                 for i, p in enumerate(prompts)]
    videos = _run(sampler, [p["prompt"] for p in prompts], conds, s, s.num_frames, s.seed)
    checks = [check_video(v[1:], w.colors, w.shape_colors) for v in videos]  # generated frames only
    return {"prompts": len(prompts), "accuracy": score(checks, [p["attributes"] for p in prompts]),
            "videos": videos}


def extension(cfg, sampler, clips: list[dict], seed: int = 0) -> dict:
    from infra.video import sample_frames
    from infra.world import caption_text

    w, s, vae = cfg.world, cfg.sample, sampler.vae
    tc = vae.temporal_compression
    conds, prompts, kept = [], [], []
    for c in clips:
        frames = sample_frames(c["uri"], start_frame=c["start_frame"], end_frame=c["end_frame"], source_fps=c["fps"],
                               fps=c["fps"], size=(s.height, s.width), crop=True)
        if len(frames) < 1 + tc:
            continue
        z = conditioning.encode(vae, sampler.norm, frames[: 1 + tc])  # two latent frames
        conds.append(FrameCondition(*conditioning.placed(z, z.shape[2] + 1, at_end=False), mode="extend"))
        prompts.append(caption_text({**c["attributes"], "direction": None}))  # the text names no direction
        kept.append(c)
    frames_out = conditioning.pixel_frames(vae, 3)
    videos = _run(sampler, prompts, conds, s, frames_out, seed)
    checks = [check_video(v[1 + tc:], w.colors, w.shape_colors) for v in videos]  # the new frames only
    truth = [{"direction": c["attributes"]["direction"], "color": c["attributes"]["color"]} for c in kept]
    return {"clips": len(kept), "accuracy": score(checks, truth, keys=("direction", "color")), "videos": videos}


def images(cfg, sampler, n: int | None = None) -> dict:
    from infra.world import caption_text

    w, s = cfg.world, cfg.sample
    every = [{"color": c, "shape": sh, "background": b, "direction": None}
             for c in w.shape_colors for sh in w.shapes for b in w.backgrounds if b != c]
    picked = [every[i] for i in np.random.default_rng(w.seed).permutation(len(every))[: n or len(every)]]
    videos = _run(sampler, [caption_text(a) for a in picked], None, s, 1, s.seed)
    checks = [check_video(v, w.colors, w.shape_colors) for v in videos]
    return {"prompts": len(picked), "accuracy": score(checks, picked, keys=("color", "shape")), "videos": videos}


def _videos(clips: list[dict]) -> list[dict]:
    """The moving clips of a split (stills have no direction to continue), spread over its files."""
    moving = [c for c in clips if c.get("media_type", "video") == "video" and c["attributes"].get("direction")]
    return moving[::max(1, len(moving) // 36)]


@torch.no_grad()
def score_capabilities(cfg, checkpoint: str, world_dir: str, out_dir: Path | None = None, extend_clips: int = 36) -> dict:
    """The three scores above for a checkpoint, on a world's held-out prompts and eval clips."""
    from infra.world import world_clips
    from training.evaluate import heldout_prompts
    from training.sample import load_sampler, write_mp4, write_png

    sampler = load_sampler(cfg, checkpoint)
    report = {"image_to_video": image_to_video(cfg, sampler, heldout_prompts(cfg.world, seed=cfg.world.seed)),
              "extension": extension(cfg, sampler, world_clips(world_dir, "eval")[:extend_clips]),
              # the same on training clips (their colour-direction pairs seen in training): tells a model
              # that continues motion from one that draws the direction it learned for the colour
              "extension_seen": extension(cfg, sampler, _videos(world_clips(world_dir, "train"))[:extend_clips]),
              "images": images(cfg, sampler)}
    for name, part in report.items():
        videos = part.pop("videos")
        if out_dir is not None:
            for i, v in enumerate(videos[:8]):
                if len(v) == 1:
                    write_png(v[0], out_dir / name / f"{i:03d}.png")
                else:
                    write_mp4(v, out_dir / name / f"{i:03d}.mp4", fps=cfg.sample.fps)
    return report
