"""What a latent is: the VAE that made it (identity) and the normalisation the DiT sees.

Every VAE family stores its latent statistics differently (Wan: latents_mean/std; CogVideoX and
HunyuanVideo: scaling_factor; LTX-Video: mean/std buffers and scaling_factor; SD3/Flux image VAEs:
shift_factor and scaling_factor; Cosmos: a mean/std per channel and latent frame). All of them are
one formula, the one their diffusers pipelines invert before decoding:

    z_norm = (z - mean) * scale / std          z = z_norm * std / scale + mean

with mean and std per channel (or per channel and frame) and scale a number. Precompute applies
`normalize`, sample applies `denormalize`, and the latents table records both the normalisation and
the VAE's identity (class, a hash of its config and a fingerprint of its weights), so train and
sample can refuse latents made by a different VAE than the one they are given.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import torch


@dataclass(frozen=True)
class LatentNorm:
    """z_norm = (z - mean) * scale / std; mean and std hold C values, or C x F (per latent frame)."""

    mean: tuple[float, ...] = ()  # () = 0
    std: tuple[float, ...] = ()  # () = 1
    scale: float = 1.0

    def _stat(self, values: tuple[float, ...], z: torch.Tensor, default: float) -> torch.Tensor:
        """(1, C, T or 1, 1, 1) statistics for z (B, C, T, H, W); per-frame ones repeat their last frame."""
        if not values:
            return torch.full((1, 1, 1, 1, 1), default, device=z.device)
        c, t = z.shape[1], z.shape[2]
        v = torch.tensor(values, dtype=torch.float32, device=z.device)
        if v.numel() % c:
            raise ValueError(f"latent statistics of {v.numel()} values do not fit {c} channels")
        v = v.view(c, -1)  # (C, F)
        if v.shape[1] > 1:
            v = v[:, torch.arange(t, device=z.device).clamp(max=v.shape[1] - 1)]  # (C, T)
        return v.view(1, c, -1, 1, 1)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents (B, C, T, H, W) -> what the DiT trains on (float32)."""
        z = z.float()
        return (z - self._stat(self.mean, z, 0.0)) * self.scale / self._stat(self.std, z, 1.0)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse: DiT latents (B, C, T, H, W) -> what the VAE decodes (float32)."""
        z = z.float()
        return z * self._stat(self.std, z, 1.0) / self.scale + self._stat(self.mean, z, 0.0)


def fingerprint(config: dict, module: torch.nn.Module) -> str:
    """Class-independent identity: a hash of the config and of 16 values of every weight tensor.

    Values are rounded to bfloat16 first, so the same weights loaded in float32 or bfloat16 (CPU
    driver vs. GPU encoder) give the same fingerprint; different weights of one architecture do not.
    """
    cfg = {k: v for k, v in sorted(config.items()) if not str(k).startswith("_")}
    h = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode())
    weights = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        if t.is_floating_point():
            sample = t.detach().flatten()[:16].to("cpu", torch.bfloat16).float()
            weights.update(name.encode() + repr(tuple(t.shape)).encode() + sample.numpy().tobytes())
    return f"{h.hexdigest()[:10]}-{weights.hexdigest()[:10]}"


@dataclass(frozen=True)
class LatentSpec:
    """A VAE as the latents table records it: identity, geometry and normalisation."""

    vae: str  # the spec it was loaded by ("diffusers:Wan-AI/...:vae", a directory, a preset)
    vae_id: str  # "{class}:{config hash}-{weights fingerprint}"
    family: str
    latent_channels: int
    temporal: int  # pixel frames per latent frame after the first: clips are 1 + k * temporal frames
    spatial: int
    norm: LatentNorm = field(default_factory=LatentNorm)
    random: bool = False  # randomly initialised (a preset): allowed only with allow_random_weights

    def frames_ok(self, num_frames: int) -> bool:
        return num_frames >= 1 and (num_frames - 1) % self.temporal == 0

    def norm_json(self) -> str:
        """The `latent_norm` column: everything but the spec and the id, as JSON."""
        d = asdict(self)
        return json.dumps({k: v for k, v in d.items() if k not in ("vae", "vae_id")}, sort_keys=True)

    @classmethod
    def from_row(cls, vae: str, vae_id: str | None, latent_norm: str | None) -> LatentSpec | None:
        """From the latents table's vae, vae_id and latent_norm columns; None for a table made before them."""
        if not vae_id or not latent_norm:
            return None
        d = json.loads(latent_norm)
        norm = LatentNorm(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("norm").items()})
        return cls(vae=vae, vae_id=vae_id, norm=norm, **d)

    def to_meta(self) -> dict:
        """For a checkpoint's meta.json (and back with from_meta)."""
        return {"vae": self.vae, "vae_id": self.vae_id, "latent_norm": self.norm_json()}

    @classmethod
    def from_meta(cls, meta: dict) -> LatentSpec | None:
        return cls.from_row(meta.get("vae", ""), meta.get("vae_id"), meta.get("latent_norm"))

    def check_compatible(self, given: LatentSpec, made: str = "the latents", use: str = "given") -> None:
        """Refuse to mix latents of this VAE with a different one (another class, config or weights)."""
        if given.vae_id != self.vae_id:
            raise ValueError(
                f"{made} were made by VAE {self.vae!r} ({self.vae_id}); the VAE {use} is {given.vae!r} "
                f"({given.vae_id}), a different model: its latents mean something else. Use {self.vae!r} "
                "(sample: --vae), or re-run precompute (and train) with the new VAE.")


def describe_vae(vae, spec: str, random: bool = False) -> LatentSpec:
    """The LatentSpec of a loaded VAE (VideoVAE or DiffusersVAE: both expose these attributes)."""
    return LatentSpec(vae=spec, vae_id=f"{vae.family_class}:{fingerprint(vae.identity_config(), vae)}",
                      family=vae.family, latent_channels=int(vae.latent_channels),
                      temporal=int(vae.temporal_compression), spatial=int(vae.spatial_compression),
                      norm=vae.latent_norm, random=random)


def check_resume(run_dir: str, meta: dict) -> None:
    """Refuse to continue a run whose newest checkpoint was trained on latents of a different VAE."""
    import json as _json
    import posixpath

    from infra import storage

    if not meta.get("vae_id"):
        return
    metas = [f for f in storage.list_files(run_dir) if posixpath.basename(f) == "meta.json"
             and posixpath.basename(posixpath.dirname(f)).startswith("checkpoint_")]
    if not metas:
        return
    before = LatentSpec.from_meta(_json.loads(storage.read_text(max(metas))))
    if before is not None:
        before.check_compatible(LatentSpec.from_meta(meta), made=f"the checkpoints in {run_dir}",
                                use="of this run's latents")
