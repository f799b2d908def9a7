"""The Sora capabilities scored on the synthetic world (infra/worldcheck.py reads every result):

- image-to-video: a still of each held-out prompt's shape (drawn by the world's painter, written
  as PNG and read back through `--image`'s path) animated with the prompt; the colour and shape of
  the generated frames (the conditioning frame left out) against the still's;
- extension: the first 1 + tc frames of each held-out eval clip (two latent frames) extended by
  one latent frame with the clip's caption (`frames_only`: with the null text, cfg_scale 0);
  the direction of the generated frames only (the tc pixel frames of the new latent frame) against
  the clip's; beside it the checker on the clip's real next frames (`real`) and on them after the
  VAE's round trip (`vae_round_trip`, the ceiling the VAE leaves the DiT);
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


def _clips_to_extend(cfg, sampler, clips: list[dict]) -> tuple[list, list[str], list[dict], list[np.ndarray]]:
    """(conditions, prompts, truths, real frames) of the clips with a whole 3-latent-frame window: the
    condition is the window's first 1 + tc frames (two latent frames, as training's extend with k = 2
    places them: latent frames 0..1 clean under the mask), the prompt the clip's caption (as training's
    extend items have theirs; a caption without "moves ..." is a still's caption, which the joint
    image+video model draws still)."""
    from infra.video import sample_frames
    from infra.world import caption_text

    s, vae = cfg.sample, sampler.vae
    window = conditioning.pixel_frames(vae, 3)
    conds, prompts, truths, reals = [], [], [], []
    for c in clips:
        frames = sample_frames(c["uri"], start_frame=c["start_frame"], end_frame=c["end_frame"], source_fps=c["fps"],
                               fps=c["fps"], size=(s.height, s.width), crop=True)
        if len(frames) < window:
            continue
        z = conditioning.encode(vae, sampler.norm, frames[: 1 + vae.temporal_compression])  # two latent frames
        conds.append(FrameCondition(*conditioning.placed(z, z.shape[2] + 1, at_end=False), mode="extend"))
        prompts.append(c.get("caption") or caption_text(c["attributes"]))
        truths.append({"direction": c["attributes"]["direction"], "color": c["attributes"]["color"]})
        reals.append(frames[:window])
    return conds, prompts, truths, reals


def round_trip(vae, norm, frames: np.ndarray) -> np.ndarray:
    """uint8 frames (T, H, W, 3) encoded and decoded by the checkpoint's VAE (what the DiT can at best give)."""
    from training.sample import to_uint8

    z = (norm or vae.latent_norm).denormalize(conditioning.encode(vae, norm, frames))
    p = next(vae.parameters())
    return to_uint8(vae.decode(z.to(p.device, p.dtype)))[0].numpy()


def new_frames_score(videos, truths: list[dict], tc: int, world) -> dict:
    """Direction and colour of the frames after the given 1 + tc (the new latent frame's tc frames)."""
    checks = [check_video(v[1 + tc:], world.colors, world.shape_colors) for v in videos]
    return score(checks, truths, keys=("direction", "color"))


def extension(cfg, sampler, clips: list[dict], seed: int = 0) -> dict:
    """`accuracy` of the generated frames (prompted with the clip's caption); `frames_only`: the same
    sampled on the null text alone (cfg_scale 0: the motion can come from the given frames only);
    the checker on the clip's real continuation (`real`: 1.0 when the motion is measurable in tc
    frames) and on it after the VAE's round trip (`vae_round_trip`: the most the DiT can score)."""
    w, tc, frames = cfg.world, sampler.vae.temporal_compression, conditioning.pixel_frames(sampler.vae, 3)
    conds, prompts, truths, reals = _clips_to_extend(cfg, sampler, clips)
    videos = _run(sampler, prompts, conds, cfg.sample, frames, seed)
    null = _run(sampler, prompts, conds, cfg.sample.model_copy(update={"cfg_scale": 0.0}), frames, seed)
    return {"clips": len(truths), "accuracy": new_frames_score(videos, truths, tc, w),
            "frames_only": new_frames_score(null, truths, tc, w),
            "real": new_frames_score(reals, truths, tc, w),
            "vae_round_trip": new_frames_score([round_trip(sampler.vae, sampler.norm, r) for r in reals], truths, tc, w),
            "videos": videos}


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
