"""Curation beyond one curate output: `safety:` (the NSFW measure curate runs), `dedup:` (reelforge
dedup), `balance:` (reelforge balance) and `selection:` (which of their outputs caption and precompute
honour). Sections of their own: turning safety on recomputes curate partitions, but adding these keys
leaves existing outputs' fingerprints, and so their resume, as they were."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import _Section


class SafetyConfig(_Section):
    """safety: a curate measure, `nsfw_score` per clip from the NudeNet detector in the `nudenet` wheel."""

    enabled: bool = False
    resolution: int = Field(320, ge=32, description="detector input side (the shipped 320n model)")
    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0, description="> 0: onnxruntime's CUDA provider when it is installed")
    concurrency: int = Field(1, ge=1, description="detector actors")


class DedupJobConfig(_Section):
    """dedup: near-duplicates across curate outputs on Ray Data (`curate.dedup` stays per output)."""

    kinds: list[Literal["perceptual", "semantic"]] = ["perceptual"]
    score: Literal["longest", "sharpest", "aesthetic"] = "longest"  # which clip of a group is kept
    max_hamming: int = Field(4, ge=0, le=31, description="perceptual: pHash bits of 64; bands = max_hamming + 1")
    min_cosine: float = Field(0.95, gt=0, le=1, description="semantic: embedding cosine")
    clusters: int = Field(64, ge=1, description="semantic: k-means clusters (pairs are checked inside each)")
    kmeans_iters: int = Field(5, ge=1, description="semantic: Lloyd iterations on the first run")
    seed: int = 0
    index_buckets: int = Field(256, ge=1, description="perceptual index files per kind: a later run reads "
                               "only the buckets its new clips' band keys fall in")
    partitions: int = Field(8, ge=1, description="hash partitions of every shuffle and of the duplicates table")
    max_rounds: int = Field(40, ge=1, description="connected-components rounds before giving up")
    only_kept: bool = True  # skip clips curate dropped (keep=false)
    shuffle: Literal["sort", "hash"] = "sort"  # Ray Data's groupby: sort (tasks) or hash (aggregator actors)

    @field_validator("kinds")
    @classmethod
    def _some_kind(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one kind: perceptual, semantic")
        return sorted(set(v))


class BalanceConfig(_Section):
    """balance: k-means over clip embeddings, then a per-clip sample_weight (and keep_prob under a cap)."""

    clusters: int = Field(100, ge=1, description="k-means clusters (concepts)")
    iters: int = Field(10, ge=1, description="Lloyd iterations")
    power: float = Field(1.0, ge=0, le=1, description="weight = cluster size ** -power (1: every concept equal)")
    cap_per_cluster: int | None = Field(None, ge=1, description="keep at most about this many clips per cluster "
                                        "(precompute's keep draw); None = no cap")
    seed: int = 0
    partitions: int = Field(8, ge=1, description="hash partitions of the weights table")
    only_kept: bool = True
    shuffle: Literal["sort", "hash"] = "sort"


class SelectionConfig(_Section):
    """selection: outputs of `reelforge dedup` / `reelforge balance` that caption and precompute honour."""

    duplicates: str | None = None  # a dedup output root: clips with kept=false in its duplicates table are skipped
    weights: str | None = None  # a balance output root: keep_prob joins precompute's keep draw, sample_weight
    # goes into the latents table for the training sampler
