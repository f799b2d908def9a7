"""Precompute: buckets for clips, then clip pixels -> VAE latents and captions -> text embeddings.

Two stages (no Ray here; pipelines/runner_precompute.py maps them onto Ray Data):
`PixelPrepStage` (CPU) decodes each clip's frames once, resized and centre-cropped to its bucket;
`EncodeStage` (GPU share) holds the VAE and the text encoder and writes `latents` rows.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

import numpy as np

from infra.tables import column, value

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
    """Every resolution x aspect (both orientations) x frame count, sides rounded to `multiple`."""
    for f in frame_counts:
        if (f - 1) % temporal:
            raise ValueError(f"precompute.frame_counts: {f} frames is not 1 + k*{temporal} (the VAE's causal layout)")
    buckets = set()
    for r in resolutions:
        for text in aspect_ratios:
            a = _ratio(text)
            for aspect in {a, 1 / a}:
                w = max(multiple, round(r * math.sqrt(aspect) / multiple) * multiple)
                h = max(multiple, round(r / math.sqrt(aspect) / multiple) * multiple)
                buckets.update(Bucket(f, h, w, round(aspect, 6)) for f in frame_counts)
    return sorted(buckets, key=lambda b: (b.height * b.width, b.frames, b.width))


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
    writes the LATENTS_SCHEMA columns plus `error`, `error_stage`; drops `pixels`.
    """

    def __init__(self, vae: str, text_encoder: str, latent_dtype: str = "bfloat16", device: str = "cpu",
                 batch_invariant: bool = True):
        self.vae_spec, self.text_spec, self.dtype, self.device = vae, text_encoder, latent_dtype, device
        self.batch_invariant = batch_invariant

    def setup(self) -> None:
        import torch

        from training.models.text import build_text_encoder
        from training.models.vae import load_vae

        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.vae = load_vae(self.vae_spec, device=self.device).eval()
        self.text = build_text_encoder(self.text_spec)
        if hasattr(self.text, "to"):
            self.text = self.text.to(self.device) if self.device != "cpu" else self.text

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

    def _encode_group(self, batch, rows, shape, idx) -> None:
        import torch

        from infra.schema import tensor_to_bytes

        t, h, w = (int(s) for s in shape)
        pix = np.stack([np.frombuffer(batch["pixels"][i], dtype=np.uint8).reshape(t, h, w, 3) for i in idx])
        x = torch.from_numpy(pix).to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # (B,3,T,H,W)
        captions = [str(rows[i]["caption"]) for i in idx]
        with torch.no_grad():
            if self.batch_invariant:
                # Conv kernels pick algorithms by batch size, so the same clip encodes to slightly
                # different bits in different batches; one clip at a time keeps resumed runs bit-equal.
                z = torch.cat([self.vae.encode(x[j : j + 1]).mode() for j in range(len(idx))])
                enc = [self.text.encode([c]) for c in captions]
                tokens = [e[0][0] for e in enc]
                mask = [e[1][0] for e in enc]
            else:
                z = self.vae.encode(x).mode()
                tokens, mask, _ = self.text.encode(captions)
            z = z * self.vae.scaling_factor  # (B,C,T',H',W')
        for j, i in enumerate(idx):
            length = int(mask[j].sum())
            emb = tokens[j][:length]
            tc, sc = self.vae.temporal_compression, self.vae.spatial_compression
            rows[i].update(
                latent=tensor_to_bytes(z[j], self.dtype), latent_shape=list(z[j].shape), latent_dtype=self.dtype,
                text_emb=tensor_to_bytes(emb, self.dtype), text_emb_shape=list(emb.shape), text_len=length,
                vae=self.vae_spec, text_encoder=self.text_spec,
                bucket=f"{1 + (t - 1) // tc}x{h // sc}x{w // sc}", height=h, width=w, num_frames=t,
                fps=None if rows[i]["fps"] is None else float(rows[i]["fps"]) / int(rows[i].get("stride") or 1),
                error="", error_stage="")
