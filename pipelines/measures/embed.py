"""Embeddings for dedup: an open_clip image embedding when a model is configured, and a perceptual hash.

The hash needs no model, so dedup works offline too. The open_clip actor also scores aesthetics
when a head is given, sharing one image-tower forward pass.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

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
def load_clip(name: str, pretrained: str | None, device: str):
    """An open_clip model by name (or a model-config .json path); random init (seeded) when pretrained is None."""
    import open_clip
    import torch

    if name.endswith(".json") and os.path.isfile(name):
        open_clip.add_model_config(name)  # a tiny config in tests: registered under its file stem
        name = Path(name).stem
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # a random tower must embed alike on every worker
        model = open_clip.create_model(name, pretrained=pretrained, device=device).eval()
    if pretrained is None:
        log.warning("curate: open_clip %s is randomly initialised: embeddings and aesthetics mean nothing", name)
    return model


class ClipMeasure:
    """`embedding` (L2-normalised mean of the frames' open_clip embeddings) and `aesthetic` (head score, mean over frames)."""

    name = "clip"

    def __init__(self, clip_model: str, clip_pretrained: str | None = None, aesthetic_weights: str | None = None,
                 embedding: bool = True, device: str = "cpu"):
        self.clip_model, self.clip_pretrained, self.weights = clip_model, clip_pretrained, aesthetic_weights
        self.embedding, self.device = embedding, device
        self.model = None

    def setup(self) -> None:
        import open_clip
        import torch

        if self.model is not None:
            return
        if self.device == "cuda" and not torch.cuda.is_available():
            self.device = "cpu"
        self.model = load_clip(self.clip_model, self.clip_pretrained, self.device)
        size = self.model.visual.image_size
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        cfg = getattr(self.model.visual, "preprocess_cfg", {})
        self.mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=self.device).view(1, 3, 1, 1)
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
            x = torch.from_numpy(np.ascontiguousarray(anchors)).to(self.device)
            x = rearrange(x, "n k h w c -> (n k) c h w").float() / 255.0
            side = min(x.shape[-2:])
            top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
            x = x[..., top : top + side, left : left + side]  # centre square, as CLIP's preprocessing
            x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True).clamp(0, 1)
            emb = self.model.encode_image((x - self.mean) / self.std, normalize=True)  # (n*K, D)
            score = self.head(emb.float()) if self.head is not None else None  # (n*K,)
            emb = F.normalize(rearrange(emb.float(), "(n k) d -> n k d", n=n).mean(1), dim=-1)  # (n, D)
        out = []
        for i in range(n):
            v = {"embedding": emb[i].cpu().numpy().astype(np.float16).tolist()} if self.embedding else {}
            if score is not None:
                v["aesthetic"] = float(rearrange(score, "(n k) -> n k", n=n)[i].mean())
            out.append(v)
        return out
