"""open_clip by name or path: the image tower's preprocessing and embedding, and text-video CLIP scores.

Shared by curate's embedding/aesthetic measure, caption's `caption_score` and eval's CLIP score, so
every job embeds frames the same way: centre square, bicubic resize to the tower's input size,
the model's own mean/std, L2-normalised embeddings.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

log = logging.getLogger(__name__)


def is_random_clip(name: str, pretrained: str | None) -> bool:
    """No pretrained tag or file (and no hf-hub:/local-dir: model, which carries its weights)."""
    return not pretrained and not str(name).startswith(("hf-hub:", "local-dir:"))


def _pretrained_source(name: str, pretrained: str) -> dict:
    """The open_clip tag's config (a local file needs none); fails at once, clearly, when it cannot load."""
    import open_clip

    from training.models.hub import ensure_hub_file, hf_offline, unavailable

    if os.path.isfile(os.path.expanduser(pretrained)):
        return {}
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        if looks_like_path(pretrained):
            raise unavailable(f"open_clip {name} weights", pretrained)
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(f"open_clip {name} has no pretrained tag {pretrained!r}; known: {tags}")
    hub = cfg.get("hf_hub", "")
    if hub and hf_offline():  # open_clip would try the hub: check its cache first, for a clear message
        repo, filename = os.path.split(hub)  # "org/model/" -> ("org/model", ""): the default file names
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for i, file in enumerate(names):
            try:
                ensure_hub_file(f"open_clip {name} ({pretrained})", repo, file)
                break
            except OSError:
                if i == len(names) - 1:
                    raise
    return cfg


def check_clip(name: str, pretrained: str | None) -> None:
    """Fail now, clearly, when the open_clip weights cannot be found (nothing is built)."""
    if pretrained:
        _pretrained_source(Path(name).stem if name.endswith(".json") else name, pretrained)


def looks_like_path(text: str) -> bool:
    return os.sep in text or text.endswith((".pt", ".pth", ".bin", ".safetensors"))


def load_clip(name: str, pretrained: str | None = None, device: str = "cpu", *, purpose: str = "open_clip"):
    """An open_clip model by name (or a model-config .json path) with pretrained weights: an open_clip
    tag ("openai", "laion2b_s32b_b82k", ...) or a local checkpoint; random init (seeded) when None."""
    import open_clip

    if name.endswith(".json") and os.path.isfile(name):
        open_clip.add_model_config(name)  # a tiny config in tests: registered under its file stem
        name = Path(name).stem
    tag = _pretrained_source(name, pretrained) if pretrained else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # a random tower must embed alike on every worker
        # OpenAI's weights were trained with QuickGELU: build the tower to match the tag
        model = open_clip.create_model(name, pretrained=pretrained, device=device,
                                       force_quick_gelu=bool(tag.get("quick_gelu"))).eval()
    if is_random_clip(name, pretrained):
        log.warning("%s: open_clip %s is randomly initialised: its numbers mean nothing", purpose, name)
    return model, name


class ClipImages:
    """The image side: uint8 frames in, L2-normalised embeddings out."""

    def __init__(self, model, device: str = "cpu"):
        import open_clip

        self.model, self.device = model, device
        size = model.visual.image_size
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        cfg = getattr(model.visual, "preprocess_cfg", {})
        self.mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=device).view(1, 3, 1, 1)

    def pixels(self, frames: np.ndarray) -> torch.Tensor:
        """(..., H, W, 3) uint8 -> (N, 3, S, S) normalised model input, N = all leading dims."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = x.reshape(-1, *x.shape[-3:])
        x = rearrange(x, "n h w c -> n c h w").float() / 255.0
        side = min(x.shape[-2:])
        top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
        x = x[..., top : top + side, left : left + side]  # centre square, as CLIP's preprocessing
        x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True).clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def embed(self, frames: np.ndarray) -> torch.Tensor:
        """(..., H, W, 3) uint8 -> (N, D) L2-normalised image embeddings."""
        return self.model.encode_image(self.pixels(frames), normalize=True)


class ClipScorer:
    """open_clip text-video similarity: cosine of the caption with each frame, mean over frames."""

    def __init__(self, name: str, pretrained: str | None = None, device: str = "cpu"):
        import open_clip

        model, name = load_clip(name, pretrained, device, purpose="CLIP score")
        self.random = is_random_clip(name, pretrained)
        self.images = ClipImages(model, device)
        self.tokenizer = open_clip.get_tokenizer(name)

    @torch.inference_mode()
    def score(self, frames_batch, texts: list[str]) -> np.ndarray:
        """(B,) similarities for B clips of (N,H,W,3) uint8 frames and their captions."""
        frames = np.stack([np.asarray(f) for f in frames_batch])  # (B, N, H, W, 3)
        img = rearrange(self.images.embed(frames), "(b n) d -> b n d", b=frames.shape[0])
        tokens = self.tokenizer(texts).to(self.images.device)
        txt = self.images.model.encode_text(tokens, normalize=True)  # (B, D)
        return (img * txt[:, None]).sum(-1).mean(1).float().cpu().numpy()
