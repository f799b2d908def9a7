"""The latents table, read back: bytes <-> tensors bit-exact, and a plain reader over a local or S3 dataset.

Tensors are stored as their raw bytes (`tensor.contiguous().view(uint8)`), with shape and dtype in
sibling columns; bfloat16 has no numpy dtype, so the codec goes through torch only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import torch

from infra import storage

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def tensor_to_bytes(x: torch.Tensor, dtype: str) -> bytes:
    """Cast to `dtype` and return the raw bytes (C order)."""
    return x.detach().to("cpu", DTYPES[dtype]).contiguous().view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(data: bytes, shape, dtype: str) -> torch.Tensor:
    """Inverse of tensor_to_bytes: the exact stored values, as a new tensor of `shape`."""
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return raw.view(DTYPES[dtype]).reshape(tuple(int(s) for s in shape)).clone()


def read_latents(uri: str, columns: list[str] | None = None) -> pa.Table:
    """The latents table under `uri` (a precompute output root or its latents/ folder)."""
    from pipelines.schema import LATENTS_SCHEMA

    root = uri.rstrip("/")
    folder = root if root.endswith("latents") else storage.join(root, "latents")
    return storage.read_table(folder, schema=LATENTS_SCHEMA, columns=columns)


def row_tensors(row: dict) -> dict:
    """One latents row -> {"latent": (C,T,H,W), "text_tokens": (L,D), "text_len", "caption", "bucket", ...}."""
    latent = tensor_from_bytes(row["latent"], row["latent_shape"], row["latent_dtype"])
    text = tensor_from_bytes(row["text_emb"], row["text_emb_shape"], row["latent_dtype"])
    return {"clip_id": row["clip_id"], "caption": row["caption"], "bucket": row["bucket"],
            "latent": latent, "text_tokens": text, "text_len": int(row["text_len"])}


def iter_latents(uri: str) -> Iterator[dict]:
    """Every row of a latents dataset as tensors, in clip_id order within each shard."""
    table = read_latents(uri)
    for batch in table.to_batches(max_chunksize=64):
        for row in batch.to_pylist():
            yield row_tensors(row)
