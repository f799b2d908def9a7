"""Precompute: buckets for clips, then clip pixels -> VAE latents and captions -> text embeddings.

Two stages (no Ray here; pipelines/runner_precompute.py maps them onto Ray Data):
`PixelPrepStage` (CPU) decodes each clip's frames once, resized and centre-cropped to its bucket;
`EncodeStage` (GPU share) holds the VAE and the text encoder and writes `latents` rows.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from infra.config import PrecomputeConfig
from infra.tables import column, value

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- buckets


@dataclass(frozen=True)
class Bucket:
    """A pixel target (frames x height x width) that clips are resized/cropped into."""

    frames: int
    height: int
    width: int
    ratio: float = 1.0  # the nominal aspect (w/h) from config; sides are rounded, this is not

    def latent_shape(self, temporal: int, spatial: int) -> tuple[int, int, int]:
        return 1 + (self.frames - 1) // temporal, self.height // spatial, self.width // spatial

    def name(self, temporal: int, spatial: int) -> str:
        return "x".join(str(d) for d in self.latent_shape(temporal, spatial))


def _ratio(text: str) -> float:
    a, b = (float(x) for x in text.split(":"))
    return a / b


def make_buckets(resolutions: list[int], frame_counts: list[int], aspect_ratios: list[str],
                 multiple: int = 16, temporal: int = 4) -> list[Bucket]:
    """Every resolution x aspect (both orientations) x frame count, sides rounded to `multiple`.

    Frame counts follow the VAE's rule, 1 + k * temporal (Wan, CogVideoX: 4k+1; LTX-Video: 8k+1;
    Mochi: 6k+1; image VAEs: any): a count off the rule becomes the largest valid count below it.
    """
    frame_counts = follow_frame_rule(frame_counts, temporal)
    buckets = set()
    for r in resolutions:
        for text in aspect_ratios:
            a = _ratio(text)
            for aspect in {a, 1 / a}:
                w = max(multiple, round(r * math.sqrt(aspect) / multiple) * multiple)
                h = max(multiple, round(r / math.sqrt(aspect) / multiple) * multiple)
                buckets.update(Bucket(f, h, w, round(aspect, 6)) for f in frame_counts)
    return sorted(buckets, key=lambda b: (b.height * b.width, b.frames, b.width))


def follow_frame_rule(frame_counts: list[int], temporal: int) -> list[int]:
    """Each count rounded down to 1 + k * temporal (duplicates dropped); said once when any changed."""
    if any(f < 1 for f in frame_counts):
        raise ValueError(f"precompute.frame_counts must be >= 1, got {frame_counts}")
    fitted = sorted({1 + (f - 1) // temporal * temporal for f in frame_counts})
    if fitted != sorted(set(frame_counts)):
        log.warning("precompute.frame_counts %s -> %s: the VAE takes 1 + k*%d frames", frame_counts, fitted, temporal)
    return fitted


def assign_bucket(width: int, height: int, num_frames: int, buckets: list[Bucket],
                  frame_stride: int = 1) -> tuple[Bucket | None, str]:
    """The largest bucket of the nearest aspect that the clip fills without upscaling, or (None, why)."""
    if not width or not height:
        return None, "no_bucket: unknown size"
    aspect = width / height
    nearest = min({b.ratio for b in buckets}, key=lambda a: abs(math.log(a / aspect)))
    fits = [b for b in buckets if b.ratio == nearest
            and max(b.height / height, b.width / width) <= 1.0  # cover-resize factor: never upscale
            and (b.frames - 1) * frame_stride + 1 <= num_frames]
    if not fits:
        return None, f"no_bucket: {width}x{height}x{num_frames}f fits no bucket without upscaling"
    return max(fits, key=lambda b: (b.height * b.width, b.frames)), ""


def image_buckets(resolutions: list[int], aspect_ratios: list[str], multiple: int = 16) -> list[Bucket]:
    """One-frame buckets (latent T = 1) at the same resolutions and aspects: where images go."""
    return make_buckets(resolutions, [1], aspect_ratios, multiple=multiple)


def _rate(fps) -> float | None:
    """A clip's frame rate as a float; None for an image (it has none)."""
    return float(fps) if fps is not None else None


def keep_draw(clip_id: str, seed: int = 0) -> float:
    """A deterministic uniform draw in [0, 1) per clip, for per-bucket keep probabilities."""
    return int(hashlib.sha1(f"{seed}:{clip_id}".encode()).hexdigest()[:13], 16) / 16**13


def frame_window(start_frame: int, end_frame: int, frames: int, stride: int) -> tuple[int, int]:
    """The centred [start, end) window of (frames-1)*stride+1 source frames inside a clip."""
    span = (frames - 1) * stride + 1
    s0 = start_frame + max(0, (end_frame - start_frame - span) // 2)
    return s0, s0 + span


# ----------------------------------------------------------------------------- stages


class PixelPrepStage:
    """Decode each clip's bucket window to uint8 pixels.

    Reads `uri` (or `clip_uri`), `win_start`, `win_end`, `fps`, `b_frames`, `b_height`, `b_width`;
    writes `pixels` (bytes of a (T, H, W, 3) uint8 array), `error`, `error_stage`, `prep_s`.
    """

    def __init__(self, num_threads: int = 1):
        self.num_threads = num_threads

    def setup(self) -> None:
        pass

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from infra.video import sample_frames

        n = len(batch["clip_id"])
        pixels, errors, stages, took = [], [], [], []
        for i in range(n):
            t0 = time.perf_counter()
            try:
                frames = sample_frames(
                    str(value(batch, "uri", i)), start_frame=int(value(batch, "win_start", i)),
                    end_frame=int(value(batch, "win_end", i)), source_fps=_rate(value(batch, "fps", i)),
                    num_frames=int(value(batch, "b_frames", i)),
                    size=(int(value(batch, "b_height", i)), int(value(batch, "b_width", i))), crop=True,
                    num_threads=self.num_threads)
                if frames.shape[0] != int(value(batch, "b_frames", i)):
                    raise ValueError(f"decoded {frames.shape[0]} frames, the bucket needs {value(batch, 'b_frames', i)}")
                pixels.append(np.ascontiguousarray(frames, dtype=np.uint8).tobytes())
                errors.append("")
                stages.append("")
            except Exception as exc:  # noqa: BLE001 - a clip that cannot be read is a failure row
                pixels.append(b"")
                errors.append(f"cannot decode clip frames: {type(exc).__name__}: {exc}")
                stages.append("precompute:decode")
            took.append(time.perf_counter() - t0)
        out = {k: v for k, v in batch.items()}
        out.update(pixels=np.array(pixels, dtype=object), error=np.array(errors, dtype=object),
                   error_stage=np.array(stages, dtype=object), prep_s=np.array(took))
        return out


class EncodeStage:
    """Encode pixels with the VAE and captions with the text encoder, grouped by bucket.

    Reads `pixels`, `b_frames`, `b_height`, `b_width`, `caption`, `clip_id`, `fps`, `stride`, `error`;
    writes the LATENTS_SCHEMA columns (the VAE's identity and normalisation in `vae_id` and
    `latent_norm`) plus `error`, `error_stage`; drops `pixels`. Latents are normalised as the VAE
    family's own pipeline does (training/models/latents.py), so sample can invert it exactly.
    """

    def __init__(self, precompute: PrecomputeConfig, device: str = "cpu"):
        self.p, self.device = precompute, device
        self.batch_invariant = precompute.batch_invariant

    def setup(self) -> None:
        import torch

        from training.models.hub import torch_dtype
        from training.models.latents import describe_vae
        from training.models.text import build_text_encoder
        from training.models.vae import is_random_vae, load_vae

        p = self.p
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.vae = load_vae(p.vae, device=self.device, dtype=torch_dtype(p.vae_dtype, self.device),
                            tiling=p.vae_tiling, slicing=p.vae_slicing, tile_px=p.vae_tile_px).eval()
        self.spec = describe_vae(self.vae, p.vae, random=is_random_vae(p.vae))
        self.text = build_text_encoder(p.text_encoder, max_length=p.text_max_length,
                                       dtype=torch_dtype(p.text_dtype, self.device))
        if self.device != "cpu":
            self.text = self.text.to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not hasattr(self, "vae"):
            self.setup()
        n = len(batch["clip_id"])
        rows = [{k: value(batch, k, i) for k in batch if k != "pixels"} for i in range(n)]
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            if not r.get("error"):
                groups.setdefault((r["b_frames"], r["b_height"], r["b_width"]), []).append(i)
        for shape, idx in groups.items():
            try:
                self._encode_group(batch, rows, shape, idx)
            except Exception as exc:  # noqa: BLE001 - the group's clips become failure rows
                for i in idx:
                    rows[i].update(error=f"encode failed: {type(exc).__name__}: {exc}", error_stage="precompute:encode")
        keys = list(dict.fromkeys(k for r in rows for k in r))
        return {k: column([r.get(k) for r in rows]) for k in keys}

    def _encode(self, x, captions: list[str]):
        """Normalised latents (B, C, T', H', W') float32 and per-clip text tokens and masks."""
        import torch

        x = x.to(next(self.vae.parameters()).dtype)
        if self.batch_invariant:
            # Conv kernels pick algorithms by batch size, so the same clip encodes to slightly
            # different bits in different batches; one clip at a time keeps resumed runs bit-equal.
            z = torch.cat([self.vae.encode(x[j : j + 1]).mode() for j in range(x.shape[0])])
            enc = [self.text.encode([c]) for c in captions]
            tokens, mask = [e[0][0] for e in enc], [e[1][0] for e in enc]
        else:
            z = self.vae.encode(x).mode()
            tokens, mask, _ = self.text.encode(captions)
        return self.spec.norm.normalize(z), tokens, mask  # z: (B, C, T', H', W')

    def _encode_group(self, batch, rows, shape, idx) -> None:
        import torch

        from infra.schema import tensor_to_bytes

        t, h, w = (int(s) for s in shape)
        pix = np.stack([np.frombuffer(batch["pixels"][i], dtype=np.uint8).reshape(t, h, w, 3) for i in idx])
        x = torch.from_numpy(pix).to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # (B,3,T,H,W)
        with torch.no_grad():
            z, tokens, mask = self._encode(x, [str(rows[i]["caption"]) for i in idx])
        dtype, spec = self.p.latent_dtype, self.spec
        expected = (spec.latent_channels, 1 + (t - 1) // spec.temporal, h // spec.spatial, w // spec.spatial)
        if tuple(z.shape[1:]) != expected:  # e.g. a family's tiled encode at an odd tile size
            raise ValueError(f"the VAE gave latents {tuple(z.shape[1:])} for {t}x{h}x{w} pixels, expected {expected}: "
                             "set precompute.vae_tiling: false or a larger precompute.vae_tile_px")
        for j, i in enumerate(idx):
            length = int(mask[j].sum())
            emb = tokens[j][:length]
            rows[i].update(
                latent=tensor_to_bytes(z[j], dtype), latent_shape=list(z[j].shape), latent_dtype=dtype,
                text_emb=tensor_to_bytes(emb, dtype), text_emb_shape=list(emb.shape), text_len=length,
                vae=self.p.vae, vae_id=spec.vae_id, latent_norm=spec.norm_json(), text_encoder=self.p.text_encoder,
                bucket="x".join(str(d) for d in z[j].shape[1:]), height=h, width=w, num_frames=t,
                fps=None if rows[i]["fps"] is None else float(rows[i]["fps"]) / int(rows[i].get("stride") or 1),
                error="", error_stage="")
