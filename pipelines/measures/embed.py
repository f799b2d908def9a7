"""Embeddings for dedup: an open_clip image embedding when a model is configured, and a perceptual hash.

The hash needs no model, so dedup works offline too. The open_clip actor also scores aesthetics
when a head is given, sharing one image-tower forward pass.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- perceptual hash
def phash(frames: np.ndarray) -> str:
    """64-bit pHash of (K, H, W, 3) RGB frames: 8x8 low DCT frequencies averaged over frames, vs their median."""
    coeffs = []
    for f in frames:
        g = cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
        coeffs.append(cv2.dct(g.astype(np.float32))[:8, :8])
    c = np.mean(coeffs, axis=0).ravel()
    bits = c > np.median(c[1:])  # the DC term would dominate the median
    return f"{int(np.packbits(bits).view('>u8')[0]):016x}"


class PhashMeasure:
    """`phash`: 16 hex digits per clip."""

    name = "phash"

    def measure(self, anchors: np.ndarray, nexts: np.ndarray | None = None) -> list[dict]:
        return [{"phash": phash(clip)} for clip in anchors]


# ----------------------------------------------------------------------------- open_clip
def models_at_start(m) -> list[str]:
    """Random-weights notes for the open_clip tower the curate job would load (curate.measures);
    refused unless allow_random_weights, and missing weights or head file reported, before Ray starts."""
    from pathlib import Path

    from training.models.clip import check_clip, is_random_clip
    from training.models.hub import random_note, refuse_random

    if not m.clip_model or not (m.embedding or m.aesthetic_weights):
        return []
    notes = [random_note("open_clip image tower", m.clip_model)] if is_random_clip(m.clip_model, m.clip_pretrained) else []
    notes = refuse_random(notes, "curate.measures", m.allow_random_weights)
    check_clip(m.clip_model, m.clip_pretrained)
    if m.aesthetic_weights and not Path(m.aesthetic_weights).expanduser().is_file():
        raise FileNotFoundError(f"curate.measures.aesthetic_weights: no file {m.aesthetic_weights!r} (the LAION "
                                "aesthetic head: a .safetensors or .pth state dict)")
    return notes


class ClipMeasure:
    """`embedding` (L2-normalised mean of the frames' open_clip embeddings) and `aesthetic` (head score, mean over frames)."""

    name = "clip"

    def __init__(self, clip_model: str, clip_pretrained: str | None = None, aesthetic_weights: str | None = None,
                 embedding: bool = True, device: str = "cpu"):
        self.clip_model, self.clip_pretrained, self.weights = clip_model, clip_pretrained, aesthetic_weights
        self.embedding, self.device = embedding, device
        self.model = None

    def setup(self) -> None:
        import torch

        from training.models.clip import ClipImages, load_clip

        if self.model is not None:
            return
        if self.device == "cuda" and not torch.cuda.is_available():
            self.device = "cpu"
        self.model, _ = load_clip(self.clip_model, self.clip_pretrained, self.device, purpose="curate embedding")
        self.images = ClipImages(self.model, self.device)
        self.head = None
        if self.weights:
            from pipelines.measures.aesthetic import load_head

            self.head = load_head(self.weights).to(self.device)

    def measure(self, anchors: np.ndarray, nexts: np.ndarray | None = None) -> list[dict]:
        import torch
        import torch.nn.functional as F
        from einops import rearrange

        self.setup()
        n = anchors.shape[0]
        with torch.inference_mode():
            emb = self.images.embed(anchors)  # (n*K, D)
            score = self.head(emb.float()) if self.head is not None else None  # (n*K,)
            emb = F.normalize(rearrange(emb.float(), "(n k) d -> n k d", n=n).mean(1), dim=-1)  # (n, D)
        out = []
        for i in range(n):
            v = {"embedding": emb[i].cpu().numpy().astype(np.float16).tolist()} if self.embedding else {}
            if score is not None:
                v["aesthetic"] = float(rearrange(score, "(n k) -> n k", n=n)[i].mean())
            out.append(v)
        return out
