"""The precompute section: `reelforge precompute` (VAE latents and text embeddings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import _Section


class PrecomputeConfig(_Section):
    vae: str = "tiny"
    text_encoder: str = "tiny"
    latent_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    resolutions: list[int] = [64]
    frame_counts: list[int] = [17]
    aspect_ratios: list[str] = ["1:1", "4:3", "16:9"]
    keep_prob: dict[str, float] = {}
    frame_stride: int = Field(1, ge=1, description="take every k-th source frame (lower fps, longer span)")
    batch_invariant: bool = Field(True, description="encode clip by clip so outputs never depend on batching "
                                  "(bit-equal resume); false batches the VAE for throughput")
    seed: int = 0  # for the per-bucket keep draws
    shard_rows: int = Field(256, ge=1)
    shard_bytes: int = Field(256 * 2**20, ge=1)
    row_group_rows: int = Field(32, ge=1, description="rows per Parquet row group (at most; also <= 64 MiB, and "
                                "a shard gets >= 16 groups when it has the rows): the unit a training rank reads")
    batch_size: int = Field(4, ge=1)
    prep_cpus: float = Field(1.0, gt=0)
    prep_concurrency: int = Field(4, ge=1, description="max decode tasks at once")
    encode_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int = Field(1, ge=1, description="encoder actors")
