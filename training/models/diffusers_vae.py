"""Pretrained diffusers VAEs behind VideoVAE's interface, by hub name or path.

`load_diffusers_vae("diffusers:NAME_OR_PATH[:subfolder]")` loads any diffusers autoencoder; the
families below are tested with tiny instances of their real classes. Each gets its latent
normalisation from its own config (training/models/latents.py), its compression ratios and frame
rule (1 + k * temporal) from the model, and tiling/slicing for large clips. A 2D image VAE
(`AutoencoderKL`: SD, SDXL, SD3, Flux) runs frame by frame: an image is a 1-frame video.
"""

from __future__ import annotations

import inspect
import logging
import os

import torch
import torch.nn as nn
from einops import rearrange

from training.models.hub import ensure_hub_file, hf_offline, unavailable
from training.models.latents import LatentNorm

log = logging.getLogger(__name__)

# diffusers class -> family (what the README lists and the latents table records)
FAMILIES = {
    "AutoencoderKLWan": "wan",  # Wan 2.1 / 2.2: latents_mean/std per channel
    "AutoencoderKLCogVideoX": "cogvideox",  # scaling_factor
    "AutoencoderKLHunyuanVideo": "hunyuanvideo",  # scaling_factor
    "AutoencoderKLLTXVideo": "ltx-video",  # latents_mean/std buffers + scaling_factor
    "AutoencoderKLMochi": "mochi",  # latents_mean/std + scaling_factor
    "AutoencoderKLCosmos": "cosmos",  # latents_mean/std per channel and latent frame
    "AutoencoderKL": "image",  # SD/SDXL: scaling_factor; SD3/Flux: + shift_factor; frame by frame
}


def parse_spec(spec: str) -> tuple[str, str | None]:
    """"diffusers:NAME_OR_PATH[:subfolder]" -> (name or path, subfolder or None)."""
    rest = spec.removeprefix("diffusers:")
    if not rest:
        raise ValueError("diffusers VAE spec needs a name or path: diffusers:NAME_OR_PATH[:subfolder]")
    name, sep, sub = rest.rpartition(":")
    if not sep or os.path.exists(os.path.expanduser(rest)) or "/" in sub:
        return rest, None
    return name, sub


def latent_norm_of(model) -> LatentNorm:
    """The normalisation the family's diffusers pipeline uses, read from the model's config (and buffers)."""
    cfg = model.config
    channels = int(cfg.get("z_dim") or cfg.get("latent_channels"))
    mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
    buffers = dict(model.named_buffers())
    if "latents_mean" in buffers:  # LTX-Video keeps them as buffers, saved with the weights
        mean, std = buffers["latents_mean"].tolist(), buffers["latents_std"].tolist()
    if mean is None or std is None:
        shift = cfg.get("shift_factor")
        mean, std = ([float(shift)] * channels if shift else []), []
    return LatentNorm(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                      scale=float(cfg.get("scaling_factor") or 1.0))


class _Posterior:
    """The family's posterior, reshaped back to (B, C, T, H, W) float32 for image VAEs."""

    def __init__(self, dist, unfold):
        self.dist, self.unfold = dist, unfold

    def mode(self) -> torch.Tensor:
        return self.unfold(self.dist.mode()).float()

    def sample(self, generator=None) -> torch.Tensor:
        return self.unfold(self.dist.sample(generator)).float()


class DiffusersVAE(nn.Module):
    """A diffusers autoencoder: `encode(x) -> posterior` (mode/sample), `decode(z) -> x` in [-1, 1]."""

    def __init__(self, model, tiling: bool = True, slicing: bool = True, tile_px: int | None = None):
        super().__init__()
        self.model = model
        cfg = model.config
        self.family_class = type(model).__name__
        self.family = FAMILIES.get(self.family_class, self.family_class)
        self.image = isinstance(getattr(model.encoder, "conv_in", None), nn.Conv2d)
        self.latent_channels = int(cfg.get("z_dim") or cfg.get("latent_channels"))
        # what the model computed in __init__ (LTX: from its patch sizes), else its config, else SD's rule
        own = vars(model)
        self.temporal_compression = 1 if self.image else int(
            own.get("temporal_compression_ratio") or cfg.get("temporal_compression_ratio")
            or cfg.get("scale_factor_temporal") or 4)
        self.spatial_compression = int(
            own.get("spatial_compression_ratio") or cfg.get("spatial_compression_ratio")
            or cfg.get("scale_factor_spatial") or 2 ** (len(cfg["block_out_channels"]) - 1))
        self.latent_norm = latent_norm_of(model)
        self.timestep_conditioning = bool(cfg.get("timestep_conditioning", False))
        if tiling:
            _enable_tiling(model, tile_px)  # bounds memory on large frames; small clips run untiled
        if slicing:
            model.enable_slicing()  # one clip (or frame, for image VAEs) of a batch at a time

    def identity_config(self) -> dict:
        return dict(self.model.config)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def latent_frames(self, num_frames: int) -> int:
        tc = self.temporal_compression
        if num_frames < 1 or (num_frames - 1) % tc:
            raise ValueError(f"{self.family} VAE needs 1 + k*{tc} frames, got {num_frames}")
        return 1 + (num_frames - 1) // tc

    def encode(self, x: torch.Tensor) -> _Posterior:
        """x (B, 3, T, H, W) in [-1, 1]; T = 1 + k * temporal, H and W multiples of spatial."""
        self.latent_frames(x.shape[2])
        b = x.shape[0]
        x = x.to(self.dtype)
        if self.image:
            dist = self.model.encode(rearrange(x, "b c t h w -> (b t) c h w")).latent_dist
            return _Posterior(dist, lambda z: rearrange(z, "(b t) c h w -> b c t h w", b=b))
        return _Posterior(self.model.encode(x).latent_dist, lambda z: z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, T', H', W') unnormalised -> pixels (B, 3, T, H, W) float32."""
        b = z.shape[0]
        z = z.to(self.dtype)
        if self.image:
            x = self.model.decode(rearrange(z, "b c t h w -> (b t) c h w")).sample
            return rearrange(x, "(b t) c h w -> b c t h w", b=b).float()
        extra = {"temb": torch.zeros(b, device=z.device, dtype=z.dtype)} if self.timestep_conditioning else {}
        return self.model.decode(z, **extra).sample.float()  # LTX 0.9.1+: decode_timestep 0, as its pipeline


def _enable_tiling(model, tile_px: int | None) -> None:
    """Tiling with the family's default tile, or `tile_px` square tiles (75% stride) where it takes sizes."""
    params = inspect.signature(model.enable_tiling).parameters
    sizes = {"tile_sample_min_height": tile_px, "tile_sample_min_width": tile_px,
             "tile_sample_stride_height": tile_px and tile_px * 3 // 4,
             "tile_sample_stride_width": tile_px and tile_px * 3 // 4}
    model.enable_tiling(**{k: v for k, v in sizes.items() if tile_px and k in params})


def load_diffusers_vae(spec: str, device="cpu", dtype: torch.dtype | None = None, tiling: bool = True,
                       slicing: bool = True, tile_px: int | None = None) -> DiffusersVAE:
    """A pretrained diffusers VAE by "diffusers:NAME_OR_PATH[:subfolder]" (hub name, HF cache or directory)."""
    import diffusers

    name, subfolder = parse_spec(spec)
    ensure_hub_file("VAE", name, "config.json", subfolder)  # one clear message when missing
    try:
        model = diffusers.AutoModel.from_pretrained(name, subfolder=subfolder, local_files_only=hf_offline(),
                                                    torch_dtype=dtype)
    except (OSError, ValueError) as e:
        raise unavailable("VAE", name, e) from None
    if type(model).__name__ not in FAMILIES:
        log.warning("%s is a %s: not one of the tested VAE families %s", spec, type(model).__name__, sorted(FAMILIES))
    return DiffusersVAE(model.eval(), tiling=tiling, slicing=slicing, tile_px=tile_px).to(device)
