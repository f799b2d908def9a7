"""The latents table, read back: bytes <-> tensors bit-exact, a plain reader over a local or S3
dataset, and the training input: a per-rank plan, a bucket batcher and a padding collator.

Tensors are stored as their raw bytes (`tensor.contiguous().view(uint8)`), with shape and dtype in
sibling columns; bfloat16 has no numpy dtype, so the codec goes through torch only. Ray is only
imported inside the last section's functions, which the launcher (training/train.py) calls.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import torch

from infra import storage
from infra.schema import LATENTS_SCHEMA, tensor_from_bytes

def read_latents(uri: str, columns: list[str] | None = None) -> pa.Table:
    """The latents table under `uri` (a precompute output root or its latents/ folder)."""
    return storage.read_table(latents_dir(uri), schema=LATENTS_SCHEMA, columns=columns)


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


# ----------------------------------------------------------------------------- the index and the plan
# Columns the launcher reads to plan an epoch: small, so reading them for every row is cheap.
INDEX_COLUMNS = ["clip_id", "bucket", "latent_shape", "text_emb_shape", "vae", "text_encoder"]


def latents_dir(uri: str) -> str:
    """The latents/ folder of a precompute output root (or the folder itself)."""
    root = uri.rstrip("/")
    table = storage.join(root, "latents")
    # A precompute root is often itself named .../latents (precompute's default output): its table
    # is the latents/ inside it, never the root with its failures/ beside the shards.
    if not root.endswith("latents") or storage.exists(table):
        return table
    return root


def latents_files(uri: str) -> list[str]:
    """The table's Parquet files in name order (the order every epoch reads them in)."""
    files = [f for f in storage.list_files(latents_dir(uri)) if f.endswith(".parquet")
             and not f.rsplit("/", 1)[-1].startswith(".")]
    if not files:
        raise FileNotFoundError(f"no Parquet files under {latents_dir(uri)}")
    return files


def bucket_tokens(bucket: str, patch=(1, 2, 2)) -> int:
    """Latent tokens the DiT sees for a bucket "TxHxW": T' * H' * W' after patching."""
    dims = [int(n) for n in bucket.split("x")]
    return math.prod(math.ceil(n / p) for n, p in zip(dims, patch))


def bucket_batch_size(bucket: str, batch_size: int, batch_sizes: dict[str, int] | None = None,
                      token_budget: int | None = None, patch=(1, 2, 2)) -> int:
    """Rows per batch of a bucket: its own size, else what fits the token budget, else batch_size."""
    if batch_sizes and bucket in batch_sizes:
        return int(batch_sizes[bucket])
    if token_budget:
        return max(1, token_budget // bucket_tokens(bucket, patch))
    return batch_size


@dataclass(frozen=True)
class DataPlan:
    """Which rows each rank trains on, the batch size per bucket, and the steps in an epoch."""

    rank_ids: list[list[str]]  # clip_ids per rank
    batch_sizes: dict[str, int]
    rank_batches: list[int]  # batches per epoch on each rank
    rows_per_bucket: dict[str, int]

    @property
    def steps_per_epoch(self) -> int:
        # Every rank runs this many steps (collectives need the same count); a rank whose
        # batches run out first pads with zero-weight steps.
        return max(self.rank_batches)

    @property
    def rows(self) -> int:
        return sum(self.rows_per_bucket.values())


def plan_data(clip_ids: list[str], buckets: list[str], world_size: int, batch_size_for) -> DataPlan:
    """Deal each bucket's rows round-robin over the ranks (sorted by clip_id, so the same table
    gives the same plan), rotating the start so leftover rows spread over ranks."""
    by_bucket: dict[str, list[str]] = {}
    for cid, b in zip(clip_ids, buckets):
        by_bucket.setdefault(b, []).append(cid)
    if len(set(clip_ids)) != len(clip_ids):  # rows are keyed by clip_id when each rank reads its own
        dup = next(c for c, n in Counter(clip_ids).items() if n > 1)
        raise ValueError(f"clip_id {dup!r} appears more than once in the latents table")
    if len(clip_ids) < world_size:
        raise ValueError(f"{len(clip_ids)} latent rows cannot feed {world_size} workers")
    rank_ids: list[list[str]] = [[] for _ in range(world_size)]
    counts = [dict() for _ in range(world_size)]
    start = 0
    for b in sorted(by_bucket):
        ids = sorted(by_bucket[b])
        for j, cid in enumerate(ids):
            r = (start + j) % world_size
            rank_ids[r].append(cid)
            counts[r][b] = counts[r].get(b, 0) + 1
        start = (start + len(ids)) % world_size
    sizes = {b: batch_size_for(b) for b in by_bucket}
    rank_batches = [sum(math.ceil(n / sizes[b]) for b, n in c.items()) for c in counts]
    return DataPlan(rank_ids, sizes, rank_batches, {b: len(v) for b, v in sorted(by_bucket.items())})


# ----------------------------------------------------------------------------- batching


class BucketBatcher:
    """Rows -> batches of one bucket each: every row lands in exactly one batch per pass.

    Rows are shuffled in windows of `shuffle_buffer` (seeded by seed, epoch and rank), then
    queued per bucket; a bucket's queue is emitted as a batch when it holds that bucket's batch
    size, and the remainders are emitted (smaller) at the end, in bucket order. Same rows in
    the same order and the same seed give the same batches.
    """

    def __init__(self, batch_sizes: dict[str, int], shuffle_buffer: int = 1024, seed: int = 0):
        self.batch_sizes, self.shuffle_buffer, self.seed = dict(batch_sizes), shuffle_buffer, seed

    def _generator(self, epoch: int, rank: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 65_537 + rank)

    def batches(self, rows: Iterable[dict], epoch: int = 0, rank: int = 0) -> Iterator[list[dict]]:
        gen = self._generator(epoch, rank)
        queues: dict[str, list[dict]] = {}
        window: list[dict] = []

        def drain():
            for i in torch.randperm(len(window), generator=gen).tolist():
                row = window[i]
                q = queues.setdefault(row["bucket"], [])
                q.append(row)
                if len(q) == self.batch_sizes[row["bucket"]]:
                    yield q[:]
                    q.clear()
            window.clear()

        for row in rows:
            if row["bucket"] not in self.batch_sizes:
                raise KeyError(f"row {row.get('clip_id')} has bucket {row['bucket']!r} not in the plan")
            window.append(row)
            if len(window) >= self.shuffle_buffer:
                yield from drain()
        yield from drain()
        for bucket in sorted(queues):
            if queues[bucket]:
                yield queues[bucket]


class RowCache:
    """Keeps one complete pass of decoded rows when they fit in `limit_mb`, so later epochs replay
    them instead of re-reading the table (same rows, same order); 0 turns it off."""

    def __init__(self, limit_mb: int):
        self.limit, self.rows = limit_mb * 2**20, None

    def epoch(self, read) -> Iterator[dict]:
        """The rows of one epoch: replayed when cached, else read() (and cached if it fits)."""
        if self.rows is not None:
            yield from self.rows
            return
        kept, size = ([] if self.limit else None), 0
        for row in read():
            if kept is not None:
                size += sum(row[k].numel() * row[k].element_size() for k in ("latent", "text_tokens"))
                if size <= self.limit:
                    kept.append(row)
                else:
                    kept, self.limit = None, 0  # too big: every epoch streams from the table
            yield row
        self.rows = kept  # reached only when the pass completed


def collate(rows: list[dict]) -> dict:
    """Decoded rows of one bucket -> latent (B,C,T,H,W), text_tokens (B,L,D) padded to the
    batch's longest caption, text_mask (B,L) (True = real token), clip_ids, bucket."""
    buckets = {r["bucket"] for r in rows}
    if len(buckets) != 1:
        raise ValueError(f"a batch mixes buckets {sorted(buckets)}")
    latent = torch.stack([r["latent"].float() for r in rows])  # (B, C, T, H, W)
    length = max(r["text_tokens"].shape[0] for r in rows)
    dim = rows[0]["text_tokens"].shape[1]
    tokens = torch.zeros(len(rows), length, dim)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        n = r["text_tokens"].shape[0]
        tokens[i, :n], mask[i, :n] = r["text_tokens"].float(), True
    return {"latent": latent, "text_tokens": tokens, "text_mask": mask,
            "clip_ids": [r["clip_id"] for r in rows], "bucket": rows[0]["bucket"]}


def arrow_rows(batches: Iterable[pa.Table | pa.RecordBatch]) -> Iterator[dict]:
    """Arrow batches of latents rows -> decoded rows (row_tensors), in order."""
    for batch in batches:
        for row in batch.to_pylist():
            yield row_tensors(row)


# ----------------------------------------------------------------------------- Ray Data (launcher only)


def ray_dataset(uri: str):
    """The latents table as a Ray Dataset (`read_parquet` through infra.storage's filesystem)."""
    import ray

    fs, _ = storage.filesystem(uri)
    files = [f[len("s3://"):] if storage.is_s3(f) else f for f in latents_files(uri)]
    return ray.data.read_parquet(files, filesystem=fs)


def rank_shards(rank_ids: list[list[str]]):
    """A Ray Train DataConfig that gives rank r the rows of rank_ids[r], in file order.

    Ray's default split (streaming_split) assigns rows dynamically and truncates to equal
    counts; training here needs every row once per epoch and the same batches after a
    restart, so each rank reads its own deterministic subset instead.
    """
    from ray.data.expressions import col
    from ray.train import DataConfig

    class RankShards(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            if world_size != len(rank_ids):
                raise ValueError(f"data planned for {len(rank_ids)} workers, got {world_size}")
            out = []
            for ids in rank_ids:
                shard = {}
                for name, ds in datasets.items():
                    ds = ds.filter(expr=col("clip_id").is_in(ids))
                    ds.context.execution_options = self._resolve_execution_options(name)
                    ds.context.execution_options.preserve_order = True  # deterministic batches
                    shard[name] = ds.iterator()
                out.append(shard)
            return out

    return RankShards(datasets_to_split=[])


def iter_shard_rows(shard, batch_rows: int = 64) -> Iterator[dict]:
    """Decoded rows of a Ray Train dataset shard (a DataIterator), in order."""
    return arrow_rows(shard.iter_batches(batch_size=batch_rows, batch_format="pyarrow", prefetch_batches=2))
