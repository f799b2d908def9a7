"""Sampling conditioned on images and videos: the clean latent frames to keep and where they go.

Each mode encodes its inputs with the VAE the checkpoint's latents came from, normalised as they
were, and places them in a latent clip with a per-frame mask (training.flow.sample keeps those
frames fixed). The VAE is causal (latent frame 0 is pixel frame 0 alone, then `tc` pixel frames a
latent), so a clip of T latent frames decodes to 1 + tc (T - 1) pixel frames.
- animate (`--image IMG`): the image is latent frame 0 of a `sample.num_frames` clip.
- extend (`--video VID --extend N`): the video's last frames (up to `sample.num_frames`), then N new
  latent frames; `--backward`: its first frames at the end, N new ones before them.
- connect (`--connect A B`): A's last frame first, B's first frames last, the rest generated.
- edit (`--video VID --strength s`): the video noised to t = s and denoised again (SDEdit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infra.video import read_frames


@dataclass
class FrameCondition:
    """Clean latents (1, C, T, H, W) to keep where `mask` (1, T) is True, or to start from (strength < 1)."""

    clean: torch.Tensor
    mask: torch.Tensor | None
    strength: float = 1.0
    mode: str = "animate"

    @property
    def latent_frames(self) -> int:
        return self.clean.shape[2]

    def batch(self, n: int) -> dict:
        """flow.sample's keyword arguments for a batch of n prompts."""
        mask = None if self.mask is None else self.mask.expand(n, -1)
        return {"clean": self.clean.expand(n, -1, -1, -1, -1), "frame_mask": mask, "strength": self.strength}


def causal_window(n: int, tc: int) -> int:
    """The longest 1 + k * tc frames within n (what a causal VAE encodes whole)."""
    return 1 + (max(1, n) - 1) // tc * tc


@torch.no_grad()
def encode(vae, norm, frames) -> torch.Tensor:
    """uint8 frames (F, H, W, 3) -> normalised latents (1, C, T, H', W') as precompute made them."""
    p = next(vae.parameters())
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].to(p.device, torch.float32) / 127.5 - 1.0
    z = vae.encode(x.to(p.dtype)).mode().float()
    return (norm or vae.latent_norm).normalize(z)  # the normalisation the checkpoint's latents were made with


def _pixels(uri: str, s, max_frames: int | None = None, last: bool = False):
    return read_frames(uri, size=(s.height, s.width), max_frames=max_frames, last=last)


def placed(z: torch.Tensor, total: int, at_end: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """z (1, C, T, H, W) at the start (or end) of `total` latent frames, zeros elsewhere, and the mask."""
    clean = torch.zeros(*z.shape[:2], total, *z.shape[3:])
    mask = torch.zeros(1, total, dtype=torch.bool)
    span = slice(total - z.shape[2], total) if at_end else slice(0, z.shape[2])
    clean[:, :, span], mask[:, span] = z, True
    return clean, mask


def animate(vae, norm, image: str, s) -> FrameCondition:
    z = encode(vae, norm, _pixels(image, s)[:1])  # (1, C, 1, H', W')
    return FrameCondition(*placed(z, vae.latent_frames(s.num_frames), at_end=False), mode="animate")


def extend(vae, norm, video: str, new_frames: int, s, backward: bool = False) -> FrameCondition:
    if new_frames < 1:
        raise ValueError(f"--extend must add at least one latent frame, got {new_frames}")
    tc = vae.temporal_compression
    frames = _pixels(video, s, max_frames=causal_window(s.num_frames, tc), last=not backward)
    z = encode(vae, norm, frames[: causal_window(len(frames), tc)])
    return FrameCondition(*placed(z, z.shape[2] + new_frames, at_end=backward),
                          mode="extend backward" if backward else "extend")


def connect(vae, norm, first: str, second: str, s) -> FrameCondition:
    total = vae.latent_frames(s.num_frames)
    if total < 3:
        raise ValueError(f"connecting needs at least 3 latent frames; sample.num_frames={s.num_frames} gives {total}")
    tc = vae.temporal_compression
    z_a = encode(vae, norm, _pixels(first, s, max_frames=1, last=True))  # A's last frame, alone
    b = _pixels(second, s, max_frames=1 + tc)
    z_b = encode(vae, norm, b[: causal_window(len(b), tc)])[:, :, -1:]  # B's opening frames
    clean, mask = placed(z_a, total, at_end=False)
    clean[:, :, -1:], mask[:, -1] = z_b, True
    return FrameCondition(clean, mask, mode="connect")


def edit(vae, norm, video: str, strength: float, s) -> FrameCondition:
    frames = _pixels(video, s, max_frames=causal_window(s.num_frames, vae.temporal_compression))
    z = encode(vae, norm, frames[: causal_window(len(frames), vae.temporal_compression)])
    return FrameCondition(z, None, strength=strength, mode="edit")


@dataclass(frozen=True)
class ConditionSpec:
    """What `reelforge sample` was asked to condition on (its flags), before any file is read."""

    image: str | None = None
    video: str | None = None
    extend: int | None = None
    backward: bool = False
    connect: tuple[str, str] | None = None
    strength: float | None = None

    def check(self) -> ConditionSpec:
        """Exactly one mode, with the inputs it needs; a ValueError that names the flags otherwise."""
        modes = [self.image is not None, self.extend is not None, self.connect is not None, self.strength is not None]
        if sum(modes) > 1:
            raise ValueError("give one of --image, --video with --extend, --connect A B, --video with --strength")
        if (self.extend is not None or self.strength is not None) and not self.video:
            raise ValueError("--extend and --strength need --video VID")
        if self.video and self.extend is None and self.strength is None:
            raise ValueError("--video needs --extend N (add N latent frames) or --strength s (edit)")
        if self.backward and self.extend is None:
            raise ValueError("--backward goes with --video VID --extend N")
        return self

    @property
    def active(self) -> bool:
        return any([self.image, self.video, self.connect])

    def build(self, vae, norm, s) -> FrameCondition | None:
        """The FrameCondition of these flags, its inputs encoded with `vae` (sample settings `s`)."""
        if self.image:
            return animate(vae, norm, self.image, s)
        if self.connect:
            return connect(vae, norm, self.connect[0], self.connect[1], s)
        if self.video and self.extend is not None:
            return extend(vae, norm, self.video, self.extend, s, backward=self.backward)
        if self.video:
            return edit(vae, norm, self.video, self.strength, s)
        return None


def pixel_frames(vae, latent_frames: int) -> int:
    """Pixel frames a clip of `latent_frames` decodes to."""
    return 1 + vae.temporal_compression * (latent_frames - 1)
