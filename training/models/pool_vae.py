"""A codec with no learned weights, for small synthetic worlds: latents are the pixels themselves,
average-pooled s x s in space and kept every `t`-th frame in time (frame 0 alone, as VideoVAE
numbers them); decoding repeats them back. `bench/vae_roundtrip.py` measured what it keeps on the
demo's world (8x: colour 0.97, direction 1.00), where the untrained `tiny` VAE keeps nothing, so a
DiT trained on its latents can be judged by what it samples without training a VAE first.

Specs: "pool8", "pool4" (spatial factor; temporal 4), "pool8t2" (every 2nd frame: more latent frames),
"pool8stack" (no frame dropped: the t frames a latent frame covers are stacked in its channels, 3 x t of
them, so each latent pixel carries its own few frames of motion, as a learned video VAE's do).
Same interface as VideoVAE for precompute and sample: encode(x).mode(), decode(z), latent_frames,
compressions, latent_norm, identity_config.
"""

from __future__ import annotations

import dataclasses
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from training.models.latents import LatentNorm
from training.models.vae import DiagonalGaussian

SPEC = re.compile(r"^pool(\d+)(?:t(\d+))?(stack)?$")  # pool8: 8x8, every 4th frame; pool8t2: every 2nd


@dataclasses.dataclass(frozen=True)
class PoolVAEConfig:
    spatial_compression: int = 8
    temporal_compression: int = 4
    scale: float = 1.5  # pixels in [-1, 1] pooled over a plain scene have std ~0.6: about unit variance
    stack: bool = False  # keep every frame: a latent frame's t frames side by side in its channels


class PoolVAE(nn.Module):
    family_class = "PoolVAE"
    family = "reelforge"

    def __init__(self, config: PoolVAEConfig = PoolVAEConfig()):
        super().__init__()
        self.config = config
        # no weights: one frozen scalar so callers can ask next(vae.parameters()) for device and dtype
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)

    @property
    def latent_channels(self) -> int:
        return 3 * self.temporal_compression if self.config.stack else 3

    @property
    def spatial_compression(self) -> int:
        return self.config.spatial_compression

    @property
    def temporal_compression(self) -> int:
        return self.config.temporal_compression

    @property
    def latent_norm(self) -> LatentNorm:
        return LatentNorm(scale=self.config.scale)

    def identity_config(self) -> dict:
        return dataclasses.asdict(self.config)

    def latent_frames(self, num_frames: int) -> int:
        tc = self.temporal_compression
        if num_frames < 1 or (num_frames - 1) % tc:
            raise ValueError(f"num_frames={num_frames} must be 1 + k*{tc}")
        return 1 + (num_frames - 1) // tc

    def encode(self, x: torch.Tensor, tile_frames: int | None = None) -> DiagonalGaussian:
        """x (B, 3, T, H, W) in [-1, 1] -> a point posterior over (B, 3, T', H/s, W/s)."""
        self.latent_frames(x.shape[2])
        t, s = self.temporal_compression, self.spatial_compression
        if self.config.stack:  # frame 0 repeated t times, then frames 1..t, t+1..2t, ... in channels
            x = torch.cat([x[:, :, :1].expand(-1, -1, t, -1, -1), x[:, :, 1:]], dim=2)
            x = rearrange(x, "b c (n t) h w -> b (t c) n h w", t=t)
        else:
            x = x[:, :, ::t]  # (B, 3, T', H, W): frames 0, t, 2t, ...
        z = F.avg_pool3d(x, kernel_size=(1, s, s))  # (B, C, T', H/s, W/s)
        return DiagonalGaussian(torch.cat([z, torch.full_like(z, -30.0)], dim=1))  # std ~0: sample == mode

    def decode(self, z: torch.Tensor, tile_frames: int | None = None) -> torch.Tensor:
        """z (B, 3, T', h, w) -> (B, 3, 1 + (T'-1)*t, h*s, w*s): frame i shows latent frame ceil(i / t)."""
        t, s = self.temporal_compression, self.spatial_compression
        if self.config.stack:  # unstack; frame 0 is the mean of its t copies
            x = rearrange(z, "b (t c) n h w -> b c (n t) h w", t=t)
            x = torch.cat([x[:, :, :t].mean(dim=2, keepdim=True), x[:, :, t:]], dim=2)
        else:
            frames = [z[:, :, :1]] + [z[:, :, i : i + 1].expand(-1, -1, t, -1, -1) for i in range(1, z.shape[2])]
            x = torch.cat(frames, dim=2)  # (B, 3, T, h, w)
        b = x.shape[0]
        x = F.interpolate(rearrange(x, "b c t h w -> (b t) c h w"), scale_factor=s, mode="nearest")
        return rearrange(x, "(b t) c h w -> b c t h w", b=b)


def load_pool_vae(spec: str) -> PoolVAE | None:
    """The codec a spec names ("pool8"), or None when the spec is not one."""
    m = SPEC.match(spec)
    if not m:
        return None
    return PoolVAE(PoolVAEConfig(spatial_compression=int(m.group(1)), temporal_compression=int(m.group(2) or 4),
                                 stack=bool(m.group(3))))
