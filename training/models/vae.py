"""VideoVAE: a causal 3D convolutional autoencoder with a diagonal Gaussian latent.

Pixels (B, 3, T, H, W) in [-1, 1] with T = 1 + k * tc frames map to latents
(B, C, 1 + k, H / sc, W / sc) for temporal compression tc and spatial compression sc. Every
temporal operation is causal (convolutions pad on the left, norms are per frame), and the first
frame is never paired with another, so latent frame 0 depends on pixel frame 0 alone: an image is
a 1-frame video. Causality also makes tiling over time exact: chunks are run one after another
with each causal layer keeping the last frames of the previous chunk (`cache`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from infra import storage
from training.models.io import PretrainedMixin, from_preset
from training.models.latents import LatentNorm, LatentSpec, describe_vae


@dataclass(frozen=True)
class VideoVAEConfig:
    """Architecture of a VideoVAE; saved as config.json beside the weights."""

    in_channels: int = 3
    latent_channels: int = 16
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)  # one level each, 2x spatial down between
    num_res_blocks: int = 2
    spatial_compression: int = 8  # must be 2 ** (len(channel_mult) - 1)
    temporal_compression: int = 4  # time halves at the first log2(tc) downsamples
    scaling_factor: float = 1.0  # latents for the DiT are z * scaling_factor
    tile_frames: int = 16  # pixel frames per chunk after the first frame; multiple of tc

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        levels = len(self.channel_mult) - 1
        if self.spatial_compression != 2**levels:
            raise ValueError(
                f"spatial_compression={self.spatial_compression} needs len(channel_mult) = "
                f"log2(spatial_compression) + 1, got {len(self.channel_mult)} levels"
            )
        tc = self.temporal_compression
        if tc < 1 or tc & (tc - 1) or tc > self.spatial_compression:
            raise ValueError(f"temporal_compression={tc} must be a power of 2, <= spatial")
        if self.tile_frames % tc:
            raise ValueError(f"tile_frames={self.tile_frames} must be a multiple of {tc}")

    @property
    def temporal_levels(self) -> int:
        return int(math.log2(self.temporal_compression))


#################################################################################
#                             Causal building blocks                            #
#################################################################################


def _groups(channels: int) -> int:
    """SD's 32 groups on wide layers; narrow ones keep 4 channels a group. One channel a group is an
    instance norm, which maps a flat frame (a plain background) to zeros whatever its colour."""
    return math.gcd(32, channels) if channels >= 64 else max(1, channels // 4)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over each frame on its own: statistics across time would break causality."""

    def forward(self, x):
        b = x.shape[0]
        x = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(x, "(b t) c h w -> b c t h w", b=b)


class CausalConv3d(nn.Module):
    """Conv3d padded on the left in time: by the previous chunk's frames, else frame 0 repeated."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        self.pad_t = kernel - 1
        self.conv = nn.Conv3d(cin, cout, kernel, padding=(0, kernel // 2, kernel // 2))
        self.cache = None

    def forward(self, x):
        if self.pad_t:
            prev = self.cache
            if prev is None:
                prev = x[:, :, :1].expand(-1, -1, self.pad_t, -1, -1)
            x = torch.cat([prev, x], dim=2)  # (B, C, pad_t + T, H, W)
            self.cache = x[:, :, -self.pad_t :]
        return self.conv(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = FrameGroupNorm(_groups(cin), cin)
        self.conv1 = CausalConv3d(cin, cout)
        self.norm2 = FrameGroupNorm(_groups(cout), cout)
        self.conv2 = CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """2x spatial (strided conv per frame); optionally 2x time by folding frame pairs into channels."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.spatial = nn.Conv2d(channels, channels, 3, stride=2)
        self.temporal = CausalConv3d(2 * channels, channels) if temporal else None
        self.seen_first = False  # streaming state: frame 0 of the video was already consumed

    def forward(self, x):
        b = x.shape[0]
        x = F.pad(rearrange(x, "b c t h w -> (b t) c h w"), (0, 1, 0, 1))  # SD's asymmetric pad
        x = rearrange(self.spatial(x), "(b t) c h w -> b c t h w", b=b)  # (B, C, T, H/2, W/2)
        if self.temporal is None:
            return x
        parts = []
        if not self.seen_first:
            parts.append(torch.cat([x[:, :, :1], x[:, :, :1]], dim=1))  # frame 0 pairs with itself
            x, self.seen_first = x[:, :, 1:], True
        if x.shape[2]:
            parts.append(rearrange(x, "b c (t two) h w -> b (two c) t h w", two=2))
        return self.temporal(torch.cat(parts, dim=2))  # (B, C, 1 + (T-1)/2, H/2, W/2)


class Upsample(nn.Module):
    """2x spatial (nearest + conv per frame); optionally 2x time by unfolding channels into frames."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.spatial = nn.Conv2d(channels, channels, 3, padding=1)
        self.temporal = CausalConv3d(channels, 2 * channels) if temporal else None
        self.seen_first = False

    def forward(self, x):
        if self.temporal is not None:
            x = rearrange(self.temporal(x), "b (two c) t h w -> b c (t two) h w", two=2)
            if not self.seen_first:
                x, self.seen_first = x[:, :, 1:], True  # latent frame 0 stands for one frame
        b = x.shape[0]
        x = F.interpolate(rearrange(x, "b c t h w -> (b t) c h w"), scale_factor=2.0, mode="nearest")
        return rearrange(self.spatial(x), "(b t) c h w -> b c t h w", b=b)  # (B, C, T, 2H, 2W)


#################################################################################
#                             Encoder and decoder                               #
#################################################################################


class Encoder(nn.Module):
    def __init__(self, c: VideoVAEConfig):
        super().__init__()
        chans = [c.base_channels * m for m in c.channel_mult]
        self.conv_in = CausalConv3d(c.in_channels, chans[0])
        layers, prev = [], chans[0]
        for i, ch in enumerate(chans):
            for _ in range(c.num_res_blocks):
                layers.append(ResBlock(prev, ch))
                prev = ch
            if i < len(chans) - 1:
                layers.append(Downsample(ch, temporal=i < c.temporal_levels))
        self.down = nn.Sequential(*layers)
        self.mid = nn.Sequential(ResBlock(prev, prev), ResBlock(prev, prev))
        self.norm_out = FrameGroupNorm(_groups(prev), prev)
        self.conv_out = CausalConv3d(prev, 2 * c.latent_channels)

    def forward(self, x):
        x = self.mid(self.down(self.conv_in(x)))  # (B, C', T', H', W')
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, 2 * latent, T', H', W')


class Decoder(nn.Module):
    def __init__(self, c: VideoVAEConfig):
        super().__init__()
        chans = [c.base_channels * m for m in c.channel_mult]
        prev = chans[-1]
        self.conv_in = CausalConv3d(c.latent_channels, prev)
        self.mid = nn.Sequential(ResBlock(prev, prev), ResBlock(prev, prev))
        layers = []
        for i in reversed(range(len(chans))):
            for _ in range(c.num_res_blocks):
                layers.append(ResBlock(prev, chans[i]))
                prev = chans[i]
            if i > 0:  # mirrors the encoder: time doubles at the last ups
                layers.append(Upsample(prev, temporal=i - 1 < c.temporal_levels))
        self.up = nn.Sequential(*layers)
        self.norm_out = FrameGroupNorm(_groups(prev), prev)
        self.conv_out = CausalConv3d(prev, c.in_channels)

    def forward(self, z):
        x = self.up(self.mid(self.conv_in(z)))  # (B, C0, T, H, W)
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, 3, T, H, W)


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) over latents (B, C, T, H, W)."""

    def __init__(self, params: torch.Tensor):
        self.mean, logvar = params.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator=None) -> torch.Tensor:
        gen_device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=gen_device)
        return self.mean + self.std * eps.to(self.mean.device, self.mean.dtype)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) per sample, averaged (not summed) over latent elements: shape (B,)."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).mean(1)


#################################################################################
#                                 The Model                                     #
#################################################################################


class VideoVAE(PretrainedMixin, nn.Module):
    """Causal video VAE; `encode(x) -> DiagonalGaussian`, `decode(z) -> x` in [-1, 1]."""

    config_class = VideoVAEConfig

    def __init__(self, config: VideoVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    family_class = "VideoVAE"
    family = "reelforge"

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    @property
    def latent_norm(self) -> LatentNorm:
        return LatentNorm(scale=self.config.scaling_factor)  # z_norm = z * scaling_factor

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def identity_config(self) -> dict:
        return dataclasses.asdict(self.config)

    @property
    def temporal_compression(self) -> int:
        return self.config.temporal_compression

    @property
    def spatial_compression(self) -> int:
        return self.config.spatial_compression

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames for a clip of num_frames pixel frames (1 + (T - 1) / tc)."""
        tc = self.config.temporal_compression
        if num_frames < 1 or (num_frames - 1) % tc:
            lo = 1 + (max(num_frames, 1) - 1) // tc * tc
            raise ValueError(f"num_frames={num_frames} must be 1 + k*{tc} (e.g. {lo} or {lo + tc})")
        return 1 + (num_frames - 1) // tc

    def _reset_streams(self):
        for m in self.modules():
            if isinstance(m, CausalConv3d):
                m.cache = None
            elif isinstance(m, (Downsample, Upsample)):
                m.seen_first = False

    def _chunked(self, net: nn.Module, x: torch.Tensor, tile: int) -> torch.Tensor:
        """Run net over frame 0, then chunks of `tile` frames (tile <= 0: all at once)."""
        self._reset_streams()
        try:
            if tile <= 0 or x.shape[2] <= 1 + tile:
                return net(x)
            chunks = [x[:, :, :1]] + list(x[:, :, 1:].split(tile, dim=2))
            return torch.cat([net(chunk) for chunk in chunks], dim=2)
        finally:
            self._reset_streams()  # drop cached activations

    def encode(self, x: torch.Tensor, tile_frames: int | None = None) -> DiagonalGaussian:
        """x (B, 3, T, H, W) in [-1, 1], T = 1 + k * tc, H and W multiples of sc."""
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected (B, {self.config.in_channels}, T, H, W), got {tuple(x.shape)}")
        self.latent_frames(x.shape[2])
        sc = self.config.spatial_compression
        if x.shape[3] % sc or x.shape[4] % sc:
            raise ValueError(f"height and width must be multiples of {sc}, got {tuple(x.shape[3:])}")
        tile = self.config.tile_frames if tile_frames is None else tile_frames
        if tile > 0 and tile % self.config.temporal_compression:
            raise ValueError(f"tile_frames={tile} must be a multiple of {self.config.temporal_compression}")
        return DiagonalGaussian(self._chunked(self.encoder, x, tile))

    def decode(self, z: torch.Tensor, tile_frames: int | None = None) -> torch.Tensor:
        """z (B, C, T', H', W') (unscaled) -> x (B, 3, 1 + (T'-1) tc, H' sc, W' sc)."""
        tile = self.config.tile_frames if tile_frames is None else tile_frames
        latent_tile = tile // self.config.temporal_compression if tile > 0 else 0
        return self._chunked(self.decoder, z, latent_tile)

    def forward(self, x, sample_posterior: bool = True, generator=None):
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


VAE_PRESETS = {
    "tiny": VideoVAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 2, 2, 2), num_res_blocks=1),
    # 4x spatial: small frames (32 px -> 8 x 8 latents), e.g. the synthetic world (configs/learn-shapes.yaml)
    "tiny-s4": VideoVAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                              spatial_compression=4),
    "base": VideoVAEConfig(latent_channels=16, base_channels=64, channel_mult=(1, 2, 4, 4), num_res_blocks=2),
}


def build_vae(preset_or_config: str | VideoVAEConfig, **overrides) -> VideoVAE:
    return from_preset(VideoVAE, VAE_PRESETS, preset_or_config, "VAE preset", **overrides)


#################################################################################
#                          Loading by spec (preset, dir, diffusers)             #
#################################################################################


# Trained VAEs that ship with the code (each < 1 MB; how to remake one: training/assets/README.md).
SHIPPED_VAES = {"shapes-s4": Path(__file__).resolve().parents[1] / "assets" / "shapes-s4"}


def is_random_vae(spec: str) -> bool:
    """A preset name builds a randomly initialised VAE (a directory or a diffusers model is trained)."""
    return spec in VAE_PRESETS


def load_vae(spec: str, device="cpu", seed: int = 0, dtype: torch.dtype | None = None, tiling: bool = True,
             slicing: bool = True, tile_px: int | None = None):
    """A VAE by spec: a preset name ("tiny", "base": random init from `seed`), a directory written by
    `save_pretrained` (train-vae), or "diffusers:NAME_OR_PATH[:subfolder]" for a pretrained diffusers VAE
    (training/models/diffusers_vae.py; tiling, slicing and tile_px apply to those)."""
    if spec.startswith("diffusers:"):
        from training.models.diffusers_vae import load_diffusers_vae

        return load_diffusers_vae(spec, device=device, dtype=dtype, tiling=tiling, slicing=slicing, tile_px=tile_px)
    if storage.is_s3(spec):  # a save_pretrained directory on S3: loaded from a temporary copy
        with storage.local_copy(spec) as local:
            return load_vae(local, device=device, seed=seed, dtype=dtype)
    if spec in SHIPPED_VAES:
        if not (SHIPPED_VAES[spec] / "model.safetensors").is_file():
            raise FileNotFoundError(f"the shipped VAE {spec!r} is missing from {SHIPPED_VAES[spec]}: remake it with "
                                    "the command in training/assets/README.md")
        return VideoVAE.from_pretrained(SHIPPED_VAES[spec], device=device).to(dtype=dtype)
    if Path(spec).is_dir():
        return VideoVAE.from_pretrained(spec, device=device).to(dtype=dtype)
    if spec.startswith("pool"):  # a weight-free codec (training/models/pool_vae.py)
        from training.models.pool_vae import load_pool_vae

        codec = load_pool_vae(spec)
        if codec is not None:
            return codec.to(device, dtype=dtype)
    if spec in VAE_PRESETS:
        with torch.random.fork_rng(devices=[]):  # same seed, same weights, global RNG untouched
            torch.manual_seed(seed)
            return build_vae(spec).to(device, dtype=dtype)
    raise ValueError(f"unknown VAE {spec!r}: expected one of {sorted(VAE_PRESETS)}, "
                     f"{sorted(SHIPPED_VAES)} (trained, shipped), poolN, a directory saved "
                     "with save_pretrained, or diffusers:NAME_OR_PATH[:subfolder]")


def refuse_random_models(vae_spec: str, text_spec: str, section: str, allowed: bool) -> list[str]:
    """Random-weights notes for a VAE and text encoder pair (sample, eval); refused unless `allowed`."""
    from training.models.hub import random_note, refuse_random
    from training.models.text import is_random_text_encoder

    notes = [random_note("VAE", vae_spec)] if is_random_vae(vae_spec) else []
    notes += [random_note("text encoder", text_spec)] if is_random_text_encoder(text_spec) else []
    return refuse_random(notes, section, allowed)


def load_decoding_vae(spec: str, meta: dict, device="cpu", dtype: torch.dtype | None = None):
    """The VAE that decodes a checkpoint's latents (its meta.json records the VAE that made them):
    a different VAE is refused; returns (vae, the latent normalisation to invert)."""
    vae = load_vae(spec, device=device, dtype=dtype).eval()
    given = describe_vae(vae, spec, random=is_random_vae(spec))
    made = LatentSpec.from_meta(meta)
    if made is None:  # a run from before the latents table recorded its VAE
        return vae, given.norm
    made.check_compatible(given)
    return vae, made.norm
