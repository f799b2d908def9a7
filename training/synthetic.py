"""Small synthetic latents tables (LATENTS_SCHEMA rows) for tests, benchmarks and offline trials.

Latents are a smooth pattern chosen by the caption plus noise, so a DiT can learn something (the
loss falls) without a VAE; text embeddings come from the tiny text encoder (dim 32) of the
captions, so the condition matches the caption as precompute's would.
"""

from __future__ import annotations

import math

import pyarrow as pa
import torch

from infra import storage
from infra.schema import tensor_to_bytes

CAPTIONS = ("a red square moves left", "a blue circle grows", "green stripes scroll up",
            "a white dot bounces", "an orange ring spins", "purple waves rise")
DEFAULT_BUCKETS = {"3x8x8": 10, "2x8x12": 8, "1x12x8": 6}


def _pattern(kind: int, channels: int, t: int, h: int, w: int) -> torch.Tensor:
    """A smooth (C, T, H, W) pattern per caption kind, roughly unit variance."""
    axes = torch.arange(t, dtype=torch.float32), torch.linspace(0, 1, h), torch.linspace(0, 1, w)
    ct, yy, xx = torch.meshgrid(*axes, indexing="ij")
    chans = []
    for c in range(channels):
        phase = 0.7 * kind + 1.3 * c
        chans.append(torch.sin(2 * math.pi * (xx * (1 + kind % 3) + yy * (c % 2)) + phase + 0.4 * ct))
    return math.sqrt(2) * torch.stack(chans).float()


def synthetic_rows(buckets: dict[str, int] | None = None, channels: int = 4, dtype: str = "bfloat16",
                   text_encoder: str = "tiny", vae: str = "tiny", seed: int = 0) -> list[dict]:
    """LATENTS_SCHEMA rows: `buckets` maps a latent "TxHxW" to its number of rows."""
    from training.models.text import build_text_encoder

    encoder = build_text_encoder(text_encoder)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b, (bucket, count) in enumerate(sorted((buckets or DEFAULT_BUCKETS).items())):
        t, h, w = (int(n) for n in bucket.split("x"))
        for i in range(count):
            kind = (i + b) % len(CAPTIONS)
            caption = CAPTIONS[kind]
            latent = _pattern(kind, channels, t, h, w) + 0.3 * torch.randn(channels, t, h, w, generator=gen)
            tokens, mask, _ = encoder.encode([caption])
            text = tokens[0, : int(mask[0].sum())]  # (L, D): only the real tokens
            rows.append({
                "clip_id": f"syn{b}{i:05d}-0000000", "caption": caption,
                "latent": tensor_to_bytes(latent, dtype), "latent_shape": [channels, t, h, w],
                "latent_dtype": dtype, "text_emb": tensor_to_bytes(text, dtype),
                "text_emb_shape": list(text.shape), "text_len": int(text.shape[0]), "vae": vae,
                "text_encoder": text_encoder, "bucket": bucket, "fps": 8.0, "height": h * 8,
                "width": w * 8, "num_frames": 1 + 4 * (t - 1),
            })
    return rows


def write_synthetic_latents(root: str, buckets: dict[str, int] | None = None, rows_per_file: int = 8,
                            row_group_rows: int = 4, mixed: bool = False, **kwargs) -> str:
    """Write synthetic rows as ROOT/latents/part-*.parquet (local or s3://); returns ROOT.

    Like precompute: each file holds one bucket, in row groups of `row_group_rows`. `mixed` writes
    the older layout instead (buckets interleaved across files and row groups)."""
    from infra.schema import LATENTS_SCHEMA, LATENTS_STATISTICS, table_from_rows

    rows = synthetic_rows(buckets, **kwargs)
    if mixed:
        rows = [rows[i] for i in sorted(range(len(rows)), key=lambda i: (i % 3, i))]
        files = [rows[s:s + rows_per_file] for s in range(0, len(rows), rows_per_file)]
    else:
        files = []
        for bucket in sorted({r["bucket"] for r in rows}):
            mine = [r for r in rows if r["bucket"] == bucket]
            files += [mine[s:s + rows_per_file] for s in range(0, len(mine), rows_per_file)]
    for part, chunk in enumerate(files):
        uri = storage.join(root, "latents", f"part-{part:05d}.parquet")
        storage.write_table(table_from_rows(chunk, LATENTS_SCHEMA), uri, row_group_size=row_group_rows,
                            write_statistics=LATENTS_STATISTICS)
    return root


def table(buckets: dict[str, int] | None = None, **kwargs) -> pa.Table:
    """The synthetic rows as one in-memory table."""
    from infra.schema import LATENTS_SCHEMA, table_from_rows

    return table_from_rows(synthetic_rows(buckets, **kwargs), LATENTS_SCHEMA)
