"""The precompute section: `reelforge precompute` (VAE latents and text embeddings)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import Resources, _Section


_DTYPES = Literal["auto", "float32", "bfloat16", "float16"]  # auto: bfloat16 on a GPU, float32 on the CPU


class PrecomputeConfig(_Section):
    # a preset ("tiny", "base": random init), a train-vae directory, or diffusers:NAME_OR_PATH[:subfolder]
    vae: str = "tiny"
    # "tiny" (random), "minilm", "openclip:MODEL[:PRETRAINED]", hf:NAME_OR_PATH[:subfolder] or a HF name/path
    text_encoder: str = "tiny"
    allow_random_weights: bool = Field(False, description="run with a random VAE or text encoder (tests, demos); "
                                       "summaries and the manifest say so in capitals")
    vae_dtype: _DTYPES = "auto"
    vae_tiling: bool = Field(True, description="diffusers VAEs: encode large frames in overlapping tiles")
    vae_slicing: bool = Field(True, description="diffusers VAEs: one clip of a batch at a time")
    vae_tile_px: int | None = Field(None, ge=16, description="tile side in pixels (None: the family's default)")
    text_max_length: int | None = Field(None, ge=1, description="caption tokens kept (None: the tokenizer's max)")
    text_dtype: _DTYPES = "auto"
    latent_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    resolutions: list[int] = [64]
    frame_counts: list[int] = [17]
    aspect_ratios: list[str] = ["1:1", "4:3", "16:9"]
    keep_prob: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}  # bucket -> probability a clip is kept
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
    # Ray custom resources (where the job runs, not what it writes): the encoder actors ask for
    # `resources` (e.g. {gpu_node: 0.01}), the decode tasks for `prep_resources`
    resources: Resources = {}
    prep_resources: Resources = {}
