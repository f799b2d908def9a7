"""Sampling: prompts -> latents (rectified-flow Euler with CFG) -> pixels -> mp4 (PNG for one frame),
optionally conditioned on images and videos (training/conditioning.py: animate, extend, connect, edit).

Checkpoint layout read by `load_checkpoint_for_sampling` (the training job writes it):
    CKPT/dit/   config.json + model.safetensors  (VideoDiT.save_pretrained of the raw weights)
    CKPT/ema/   the same for the EMA weights; optional (config.json may be left out there)
EMA weights are used when ema/ exists, since they sample better than the raw ones.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from safetensors.torch import load_file

from infra import storage
from training import flow
from training.models.dit import VideoDiT

log = logging.getLogger(__name__)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, T, H, W) in [-1, 1] -> uint8 frames (B, T, H, W, 3)."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "b c t h w -> b t h w c").cpu()


@torch.no_grad()
def sample_video(
    dit, vae, text_encoder, prompts: list[str], num_frames: int = 17, height: int = 256,
    width: int = 256, steps: int = 30, cfg_scale: float = 5.0, seed: int = 0, shift: float | None = None,
    latent_norm=None, condition=None,
) -> torch.Tensor:
    """Generate one video per prompt; returns uint8 frames (B, T, H, W, 3).

    num_frames must be 1 + k * (the VAE's temporal compression), height and width multiples of
    its spatial compression. The noise comes from a CPU generator seeded with `seed`, so a seed
    gives the same video on any device (up to kernel numerics). `condition` (a FrameCondition)
    sets the latent frame count and the frames kept fixed (or the start of an edit).
    """
    device = next(dit.parameters()).device
    if text_encoder.dim != dit.config.text_dim:
        raise ValueError(f"text encoder {text_encoder.name} has dim {text_encoder.dim}, "
                         f"the DiT expects text_dim={dit.config.text_dim}")
    sc = vae.spatial_compression
    if height % sc or width % sc:
        raise ValueError(f"height and width must be multiples of {sc}, got {height}x{width}")
    tokens, mask, _ = text_encoder.encode(list(prompts))
    # Training conditions on the caption tokens alone (the latents table stores no pooled vector), so
    # pooled text is their masked mean there; the encoder's own pooled (L2-normalised for MiniLM, the
    # EOT projection for open_clip) is a different vector the model never saw.
    cond = {"text_tokens": tokens.to(device), "text_mask": mask.to(device)}
    frames = condition.latent_frames if condition is not None else vae.latent_frames(num_frames)
    shape = (len(prompts), dit.config.in_channels, frames, height // sc, width // sc)
    generator = torch.Generator("cpu").manual_seed(seed)
    fixed = condition.batch(len(prompts)) if condition is not None else {}
    z = flow.sample(dit, shape, cond, None, steps=steps, cfg_scale=cfg_scale, generator=generator, shift=shift,
                    **fixed)
    vae_param = next(vae.parameters())
    z = (latent_norm or vae.latent_norm).denormalize(z)  # the normalisation the latents were made with, inverted
    x = vae.decode(z.to(vae_param.device, vae_param.dtype))  # (B, 3, T, H, W)
    return to_uint8(x)


def write_png(frame, path) -> Path:
    """One uint8 frame (H, W, 3) as a PNG (what a one-frame sample is: an image)."""
    import cv2

    ok, data = cv2.imencode(".png", np.ascontiguousarray(np.asarray(frame, dtype=np.uint8)[..., ::-1]))
    if not ok:
        raise ValueError("OpenCV could not encode the frame as PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())
    return path


def write_mp4(frames, path, fps: float = 24, crf: int = 18) -> Path:
    """Encode uint8 frames (T, H, W, 3) as H.264/yuv420p; odd sizes are padded by edge pixels."""
    import av

    frames = np.asarray(frames.cpu() if isinstance(frames, torch.Tensor) else frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3), got {frames.shape}")
    # yuv420p subsamples chroma 2x2, so libx264 needs even width and height.
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder
    return path


def load_checkpoint_for_sampling(ckpt_dir, device="cpu") -> VideoDiT:
    """The VideoDiT of a checkpoint directory, with its EMA weights when ema/ exists; eval mode."""
    ckpt = Path(ckpt_dir)
    if not (ckpt / "dit" / "config.json").exists():
        raise FileNotFoundError(f"{ckpt} has no dit/config.json (expected dit/ from save_pretrained)")
    model = VideoDiT.from_pretrained(ckpt / "dit", device=device)
    ema_weights = ckpt / "ema" / "model.safetensors"
    if ema_weights.exists():
        model.load_state_dict(load_file(str(ema_weights), device=str(device)))
        log.info("loaded EMA weights from %s", ema_weights)
    else:
        log.info("no ema/ in %s: sampling with the raw weights", ckpt)
    return model.eval()


def checkpoint_meta(ckpt_dir) -> dict:
    """`meta.json` of a checkpoint (vae/text encoder specs the training used), or {}."""
    import json

    path = Path(ckpt_dir) / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


def resolve_device(device: str = "auto") -> str:
    """"auto" is cuda when a GPU is there, else cpu; "cuda" without one fails with a clear message."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    return device


@contextlib.contextmanager
def local_checkpoint(ckpt: str) -> Iterator[str]:
    """A checkpoint directory on local disk: itself, or of an s3:// one only what sampling reads
    (dit/, ema/, meta.json; not the optimizer shards) in a temporary folder removed afterwards."""
    with storage.local_copy(str(ckpt), only=("dit", "ema", "meta.json")) as local:
        yield local


@dataclass
class Sampler:
    """What sampling needs from a checkpoint: the DiT, the VAE its latents came from (and their
    normalisation) and the text encoder."""

    dit: VideoDiT
    vae: object
    norm: object
    text_encoder: object


def load_sampler(cfg, ckpt_dir, vae_spec: str | None = None, text_encoder_spec: str | None = None,
                 device: str = "cpu") -> Sampler:
    """The checkpoint (local or s3://), its VAE and text encoder on `device` (auto, cpu or cuda)."""
    from training.models.text import build_text_encoder
    from training.models.vae import load_decoding_vae, refuse_random_models

    device = resolve_device(device)
    with local_checkpoint(ckpt_dir) as ckpt:
        meta = checkpoint_meta(ckpt)
        dit = load_checkpoint_for_sampling(ckpt, device=device)
    vae_spec = vae_spec or meta.get("vae") or cfg.precompute.vae
    text_spec = text_encoder_spec or meta.get("text_encoder") or cfg.precompute.text_encoder
    for note in refuse_random_models(vae_spec, text_spec, "sample", cfg.sample.allow_random_weights):
        log.warning(note)
    vae, norm = load_decoding_vae(vae_spec, meta, device=device)  # refuses a VAE other than the latents'
    return Sampler(dit, vae, norm, build_text_encoder(text_spec))


def prepare_prompts(cfg, prompts: list[str], scores: bool = False) -> list[str]:
    """The prompts as sampled: extended (sample.prompt_extension) and with target scores (--scores)."""
    from training.prompt_extension import build_extender, with_scores

    extend = build_extender(cfg, image=cfg.sample.num_frames == 1)
    prompts = extend(list(prompts)) if extend else list(prompts)
    return with_scores(cfg, prompts) if scores else prompts


def sample_to_files(cfg, ckpt_dir, prompts: list[str], out_dir, vae_spec: str | None = None,
                    text_encoder_spec: str | None = None, device: str = "cpu", condition=None) -> list[str]:
    """Load checkpoint + VAE + text encoder, sample one mp4 per prompt into out_dir (a PNG when
    sample.num_frames is 1); `condition` (a conditioning.ConditionSpec) animates, extends, connects or
    edits. Returns the paths. The checkpoint, the VAE directory and out_dir may each be local or s3://."""
    sampler = load_sampler(cfg, ckpt_dir, vae_spec, text_encoder_spec, device)
    s = cfg.sample
    frame_cond = condition.build(sampler.vae, sampler.norm, s) if condition is not None and condition.active else None
    if frame_cond is not None and frame_cond.mask is not None and not sampler.dit.config.frame_cond:
        log.warning("%s: this checkpoint was trained without frame conditioning (train.conditioning); the given "
                    "frames are imposed by re-noising them at every step instead", frame_cond.mode)
    frames = sample_video(sampler.dit, sampler.vae, sampler.text_encoder, prompts, num_frames=s.num_frames,
                          height=s.height, width=s.width, steps=s.steps, cfg_scale=s.cfg_scale, seed=s.seed,
                          latent_norm=sampler.norm, condition=frame_cond, shift=s.time_shift)
    names = [f"sample-{s.seed}-{i:03d}" + (".png" if len(video) == 1 else ".mp4") for i, video in enumerate(frames)]
    with storage.staged_dir(str(out_dir)) as local:
        for name, video in zip(names, frames):
            if len(video) == 1:
                write_png(video[0], Path(local) / name)
            else:
                write_mp4(video, Path(local) / name, fps=s.fps)
    return [storage.join(str(out_dir), name) for name in names]
