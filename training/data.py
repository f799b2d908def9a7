"""The latents table, read back: bytes <-> tensors bit-exact, a plain reader over a local or S3
dataset, and the training input of one rank: its row groups read ahead in a background thread
(training/plan.py says which), a bucket batcher and a padding collator. No Ray here.

Tensors are stored as their raw bytes (`tensor.contiguous().view(uint8)`), with shape and dtype in
sibling columns; bfloat16 has no numpy dtype, so the codec goes through torch only.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa
import torch

from infra import storage
from infra.schema import LATENTS_SCHEMA, tensor_from_bytes
from training.plan import read_row_group

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


# ----------------------------------------------------------------------------- the table's files


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


# ----------------------------------------------------------------------------- batching


class BucketBatcher:
    """Rows -> batches of one bucket each: every row lands in exactly one batch per pass.

    Rows are shuffled in windows of `shuffle_buffer` (seeded by seed, epoch and rank), then
    queued per bucket; a bucket's queue is emitted as a batch when it holds that bucket's next
    batch size. A size is an int (every batch that size, the remainder emitted smaller at the
    end, in bucket order) or the planned list of sizes (training/plan.py `DataPlan.batch_plan`:
    they add up to the bucket's rows, so nothing remains). Same rows in the same order and the
    same seed give the same batches.
    """

    def __init__(self, batch_sizes: dict[str, int | list[int]], shuffle_buffer: int = 1024, seed: int = 0):
        self.batch_sizes, self.shuffle_buffer, self.seed = dict(batch_sizes), shuffle_buffer, seed

    def _generator(self, epoch: int, rank: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 65_537 + rank)

    def _sizes(self) -> dict[str, Iterator[int]]:
        def forever(n: int) -> Iterator[int]:
            while True:
                yield n

        return {b: forever(v) if isinstance(v, int) else iter(v) for b, v in self.batch_sizes.items()}

    def batches(self, rows: Iterable[dict], epoch: int = 0, rank: int = 0) -> Iterator[list[dict]]:
        gen, sizes = self._generator(epoch, rank), self._sizes()
        queues: dict[str, list[dict]] = {}
        targets: dict[str, int] = {}
        window: list[dict] = []

        def drain():
            for i in torch.randperm(len(window), generator=gen).tolist():
                row = window[i]
                b = row["bucket"]
                q = queues.setdefault(b, [])
                if b not in targets:
                    targets[b] = next(sizes[b], 0)
                    if not targets[b]:
                        raise RuntimeError(f"bucket {b} has more rows than the plan's batches (rank {rank})")
                q.append(row)
                if len(q) == targets[b]:
                    yield q[:]
                    q.clear()
                    del targets[b]
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
                if not isinstance(self.batch_sizes[bucket], int):
                    raise RuntimeError(f"bucket {bucket} has fewer rows than the plan's batches (rank {rank})")
                yield queues[bucket]


class RowCache:
    """Keeps decoded row groups in memory while they fit in `limit_mb` (0: off), so later epochs
    replay them instead of reading the table again; the rows are the same either way."""

    def __init__(self, limit_mb: int):
        self.limit, self.size, self.groups = limit_mb * 2**20, 0, {}

    def get(self, key) -> list[dict] | None:
        return self.groups.get(key)

    def offer(self, key, rows: list[dict]) -> None:
        size = sum(r[k].numel() * r[k].element_size() for r in rows for k in ("latent", "text_tokens"))
        if self.size + size <= self.limit:
            self.groups[key], self.size = rows, self.size + size


def prefetched(items: list, load: Callable, depth: int = 2) -> Iterator:
    """load(item) for each item in order, computed up to `depth` items ahead in a background thread
    (reading and decoding overlap the training step); an error is raised where its item is due."""
    out: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                out.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(("item", load(item))):
                    return
            put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(("error", exc))

    threading.Thread(target=work, daemon=True, name="rf-prefetch").start()
    try:
        while True:
            kind, value = out.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


class RankReader:
    """One rank's rows for an epoch: its row groups (DataPlan.rank_groups) in an order shuffled per
    epoch (seeded by seed, epoch and rank), each read directly with pyarrow through infra.storage's
    filesystem (local or S3) ahead of use, or replayed from the RowCache."""

    def __init__(self, plan, rank: int, seed: int = 0, cache_mb: int = 0, prefetch: int = 2):
        self.files, self.groups = plan.files, [plan.groups[i] for i in plan.rank_groups[rank]]
        self.rank, self.seed, self.prefetch = rank, seed, prefetch
        self.cache = RowCache(cache_mb)

    def order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed((self.seed * 7_368_787 + epoch) * 104_729 + self.rank)
        return torch.randperm(len(self.groups), generator=gen).tolist()

    def _load(self, i: int) -> list[dict]:
        g = self.groups[i]
        return list(arrow_rows([read_row_group(self.files[g.file], g.index)]))

    def epoch(self, epoch: int) -> Iterator[dict]:
        order = self.order(epoch)
        loaded = prefetched([i for i in order if self.cache.get(i) is None], self._load, self.prefetch)
        for i in order:
            rows = self.cache.get(i)
            if rows is None:
                rows = next(loaded)
                self.cache.offer(i, rows)
            yield from rows


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
