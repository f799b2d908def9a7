"""The training data plan, from Parquet footers alone: which row groups each rank reads and how many
batches of each bucket it makes, so that every rank runs the same number of micro-batches per epoch.

The driver reads only the footers of the latents shards (file, row group, rows, and the `bucket`
column's min/max statistics: precompute writes one bucket per shard, so min == max). Its memory
grows with the number of files and row groups, never with rows, and no clip id crosses the wire.
Older tables whose row groups mix buckets still plan: the small `bucket` column of just those
row groups is read (and a log line says so). No Ray here.
"""

from __future__ import annotations

import collections
import heapq
import logging
import math
from bisect import bisect_left
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow.parquet as pq

from infra import storage

log = logging.getLogger(__name__)
MIXED = "<mixed>"  # the group key of row groups that hold several buckets (older tables)


@dataclass(frozen=True)
class RowGroup:
    """One row group of one shard: the unit a rank reads."""

    file: int  # index into DataPlan.files
    index: int  # row group number inside the file
    rows: int
    buckets: tuple[tuple[str, int], ...]  # (bucket, rows): one entry unless an older table mixes them

    @property
    def key(self) -> str:
        return self.buckets[0][0] if len(self.buckets) == 1 else MIXED


# ----------------------------------------------------------------------------- footers


def read_row_group(uri: str, index: int, columns: list[str] | None = None):
    """One row group of a Parquet file (local or s3://) as an Arrow table: its footer and that
    group's column chunks are all that is read."""
    fs, path = storage.filesystem(uri)

    def _read():
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).read_row_group(index, columns=columns)

    return storage.with_retries(_read, f"read {uri} row group {index}")


# What the plan reads from each row group's statistics; the VAE's identity and normalisation
# (OPTIONAL_KEYS) only exist in tables made since they were recorded.
STAT_KEYS = ("bucket", "vae", "text_encoder")
OPTIONAL_KEYS = ("vae_id", "latent_norm")


@dataclass(frozen=True)
class Footer:
    """What one row group's footer entry says: its rows and the single value of each of STAT_KEYS
    (None when the statistics are missing or the row group holds several values)."""

    rows: int
    values: tuple[str | None, ...]
    optional: tuple[tuple[str, str | None], ...] = ()  # (key, value) of the OPTIONAL_KEYS the file has


def read_footers(files: list[str], threads: int = 16) -> list[list[Footer]]:
    """Per file, a Footer per row group, from the Parquet footers of `files` (local or s3://, several
    at once); no row is read and only these small summaries are kept, never the footers themselves."""
    def footer(uri: str) -> list[Footer]:
        fs, path = storage.filesystem(uri)
        meta = storage.with_retries(lambda: pq.read_metadata(path, filesystem=fs), f"read footer {uri}")
        names = [meta.schema.column(j).path for j in range(meta.num_columns)]  # leaf columns, in order
        missing = [k for k in STAT_KEYS if k not in names]
        if missing:
            raise ValueError(f"{uri} has no column {missing[0]!r}: not a latents table")
        at = [names.index(k) for k in STAT_KEYS]
        extra = [(k, names.index(k)) for k in OPTIONAL_KEYS if k in names]
        return [Footer(meta.row_group(i).num_rows, tuple(column_value(meta.row_group(i).column(j)) for j in at),
                       tuple((k, column_value(meta.row_group(i).column(j))) for k, j in extra
                             if not all_null(meta.row_group(i).column(j))))
                for i in range(meta.num_row_groups)]

    with ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
        return list(pool.map(footer, files))


def all_null(chunk: pq.ColumnChunkMetaData) -> bool:
    """True when the statistics say every value of the chunk is null (a column not filled in)."""
    stats = chunk.statistics
    return stats is not None and stats.has_null_count and stats.null_count == chunk.num_values


def column_value(chunk: pq.ColumnChunkMetaData):
    """The single value of a column chunk from its statistics, or None when the statistics are
    missing or the chunk holds several values."""
    stats = chunk.statistics
    if stats is not None and stats.has_min_max and stats.min == stats.max:
        return stats.min.decode() if isinstance(stats.min, bytes) else stats.min
    return None


def row_groups(files: list[str], footers: list[list[Footer]]) -> list[RowGroup]:
    """Every non-empty row group with its bucket(s): from statistics, else by reading that row
    group's `bucket` column (older tables that mix buckets in a row group)."""
    groups, mixed = [], 0
    for f, entries in enumerate(footers):
        for i, entry in enumerate(entries):
            if entry.rows == 0:
                continue
            bucket = entry.values[STAT_KEYS.index("bucket")]
            if bucket is not None:
                counts = ((bucket, entry.rows),)
            else:
                mixed += 1
                col = read_row_group(files[f], i, columns=["bucket"])["bucket"].to_pylist()
                counts = tuple(sorted(collections.Counter(col).items()))
            groups.append(RowGroup(f, i, entry.rows, counts))
    if mixed:
        log.warning("latents: %d of %d row groups mix buckets (an older precompute layout): read their bucket "
                    "column to plan; re-run precompute to plan from footers alone", mixed, len(groups))
    return groups


def _single(files, footers, groups, key: str, value_of) -> object:
    """The one value of `key` over every row group (statistics, else that row group's column)."""
    values = set()
    for g in groups:
        value = value_of(footers[g.file][g.index])
        if value is None:  # no statistics, or several values in this row group
            values.update(read_row_group(files[g.file], g.index, columns=[key])[key].to_pylist())
        else:
            values.add(value)
    if len(values) != 1:
        raise ValueError(f"the latents table mixes {key} values {sorted(values, key=str)[:5]}: train on one")
    return values.pop()


def table_facts(files: list[str], footers: list[list[Footer]], groups: list[RowGroup]) -> dict:
    """vae, text_encoder (one each, from statistics), the VAE's vae_id and latent_norm when the table
    records them, latent channels and text width (one row group's shape columns): a table that mixes
    specs is refused."""
    facts: dict = {}
    for key in STAT_KEYS[1:]:
        facts[key] = _single(files, footers, groups, key, lambda f, key=key: f.values[STAT_KEYS.index(key)])
    first = groups[0]
    recorded = dict(footers[first.file][first.index].optional)
    for key in OPTIONAL_KEYS:
        if key in recorded:
            facts[key] = _single(files, footers, groups, key, lambda f, key=key: dict(f.optional).get(key))
    shapes = read_row_group(files[first.file], first.index, columns=["latent_shape", "text_emb_shape"])
    facts["channels"] = shapes["latent_shape"][0].as_py()[0]
    facts["text_dim"] = shapes["text_emb_shape"][0].as_py()[1]
    return facts


# ----------------------------------------------------------------------------- assignment


def contiguous_blocks(weights: list[int], parts: int) -> list[tuple[int, int]]:
    """Cut a sequence into `parts` contiguous blocks (start, end) of about equal total weight."""
    cum = [0]
    for w in weights:
        cum.append(cum[-1] + w)
    cuts, prev = [0], 0
    for j in range(1, parts):
        target = cum[-1] * j / parts
        k = bisect_left(cum, target, lo=prev)
        if k > prev and (k == len(cum) or target - cum[k - 1] <= cum[k] - target):
            k -= 1
        prev = min(k, len(weights))
        cuts.append(prev)
    cuts.append(len(weights))
    return [(cuts[j], cuts[j + 1]) for j in range(parts)]


def assign(groups: list[RowGroup], world: int, batch_size_for) -> list[list[int]]:
    """Row group indices per rank: each bucket's row groups (file order) cut into `world` contiguous
    blocks balanced by rows (so a rank opens few files), the biggest block to the rank with the
    fewest batches so far. Deterministic: the same footers give the same plan."""
    by_key: dict[str, list[int]] = collections.defaultdict(list)
    for i, g in enumerate(groups):
        by_key[g.key].append(i)
    ranks: list[list[int]] = [[] for _ in range(world)]
    load = [0.0] * world  # estimated batches per rank
    for key in sorted(by_key):
        idx = by_key[key]
        blocks = contiguous_blocks([groups[i].rows for i in idx], world)
        block_rows = [sum(groups[i].rows for i in idx[s:e]) for s, e in blocks]
        order = sorted(range(world), key=lambda j: (-block_rows[j], j))
        takers = sorted(range(world), key=lambda r: (load[r], r))
        for j, r in zip(order, takers):
            s, e = blocks[j]
            ranks[r].extend(idx[s:e])
            load[r] += sum(n / batch_size_for(b) for i in idx[s:e] for b, n in groups[i].buckets)
    return [sorted(r, key=lambda i: (groups[i].file, groups[i].index)) for r in ranks]


def split_batches(rows: dict[str, int], sizes: dict[str, int], total: int) -> dict[str, int]:
    """Batches per bucket for one rank: ceil(rows / size) each, then split the largest batches
    (by mean rows per batch) until the rank has `total` batches."""
    counts = {b: math.ceil(n / sizes[b]) for b, n in rows.items()}
    heap = [(-n / counts[b], b) for b, n in rows.items() if counts[b] < n]
    heapq.heapify(heap)
    for _ in range(total - sum(counts.values())):
        _, b = heapq.heappop(heap)  # never empty: the caller checked rows >= total
        counts[b] += 1
        if counts[b] < rows[b]:
            heapq.heappush(heap, (-rows[b] / counts[b], b))
    return counts


def batch_sizes(rows: int, batches: int) -> list[int]:
    """`rows` cut into `batches` sizes that differ by at most one (larger first)."""
    q, extra = divmod(rows, batches)
    return [q + 1] * extra + [q] * (batches - extra)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class DataPlan:
    """Which row groups each rank reads and how many batches of each bucket it makes per epoch.

    Every rank has the same number of micro-batches per epoch (`steps_per_epoch`, a multiple of
    `accum`) by construction, so no rank ever pads; it is small (row groups, never clip ids).
    """

    files: list[str]
    groups: list[RowGroup]
    rank_groups: list[list[int]]  # indices into groups, per rank
    rank_batches: list[dict[str, int]]  # batches per bucket, per rank
    batch_sizes: dict[str, int]  # the largest batch of each bucket
    accum: int = 1

    @property
    def steps_per_epoch(self) -> int:
        """Micro-batches per epoch, the same on every rank."""
        return sum(self.rank_batches[0].values())

    @property
    def optimizer_steps_per_epoch(self) -> int:
        return self.steps_per_epoch // self.accum

    def rank_rows(self, rank: int) -> dict[str, int]:
        rows: collections.Counter = collections.Counter()
        for i in self.rank_groups[rank]:
            rows.update(dict(self.groups[i].buckets))
        return dict(sorted(rows.items()))

    @property
    def rows_per_bucket(self) -> dict[str, int]:
        rows: collections.Counter = collections.Counter()
        for g in self.groups:
            rows.update(dict(g.buckets))
        return dict(sorted(rows.items()))

    @property
    def rows(self) -> int:
        return sum(g.rows for g in self.groups)

    @property
    def image_batch_share(self) -> float:
        """The share of image (T=1) batches in an epoch (every rank has the same; rank 0's)."""
        counts = self.rank_batches[0] if self.rank_batches else {}
        return sum(n for b, n in counts.items() if is_image(b)) / max(1, sum(counts.values()))

    def batch_plan(self, rank: int) -> dict[str, list[int]]:
        """The sizes of this rank's batches of each bucket, in the order BucketBatcher emits them."""
        rows = self.rank_rows(rank)
        return {b: batch_sizes(n, self.rank_batches[rank][b]) for b, n in rows.items()}


def plan_data(files: list[str], groups: list[RowGroup], world: int, batch_size_for, accum: int = 1,
              image_ratio: float | None = None) -> DataPlan:
    """Row groups per rank (`assign`) and batches per rank and bucket: every rank gets K batches,
    K = the most any rank needs at full batch sizes, rounded up to a multiple of `accum`; a rank
    with fewer splits some of its batches. Fails at once when a rank has fewer than K rows.
    `image_ratio` (train.image_ratio) fixes the share of image (T=1) batches instead (`ratio_batches`)."""
    sizes = {b: int(batch_size_for(b)) for g in groups for b, _ in g.buckets}
    rank_groups = assign(groups, world, batch_size_for)
    plan = DataPlan(files, groups, rank_groups, [], dict(sorted(sizes.items())), accum)
    rank_rows = [plan.rank_rows(r) for r in range(world)]
    if image_ratio is not None and mixes_images(rank_rows):
        return DataPlan(files, groups, rank_groups, ratio_batches(rank_rows, sizes, image_ratio, accum),
                        plan.batch_sizes, accum)
    natural = max(sum(math.ceil(n / sizes[b]) for b, n in rows.items()) for rows in rank_rows)
    k = max(1, math.ceil(natural / accum)) * accum
    for r, rows in enumerate(rank_rows):
        if sum(rows.values()) < k:
            raise ValueError(
                f"{world} workers need {k} batches each per epoch (train.batch_size, batch_sizes or token_budget, "
                f"grad_accum_steps={accum}), but rank {r} gets {sum(rows.values())} rows ({len(rank_groups[r])} of "
                f"the table's {len(groups)} row groups, {plan.rows} rows): use fewer workers (train.num_workers), "
                "or precompute smaller row groups (precompute.row_group_rows)")
    return DataPlan(files, groups, rank_groups, [split_batches(rows, sizes, k) for rows in rank_rows],
                    plan.batch_sizes, accum)


# ----------------------------------------------------------------------------- images and videos


def is_image(bucket: str) -> bool:
    """An image bucket: one latent frame ("1x8x8"), where precompute puts stills."""
    return bucket.split("x", 1)[0] == "1"


def mixes_images(rank_rows: list[dict[str, int]]) -> bool:
    """True when the table has both image and video rows (only then does a ratio mean anything)."""
    buckets = {b for rows in rank_rows for b in rows}
    return any(is_image(b) for b in buckets) and not all(is_image(b) for b in buckets)


def _natural(rows: dict[str, int], sizes: dict[str, int], image: bool) -> tuple[int, int]:
    """(batches at full sizes, rows) of a rank's image or video buckets: the fewest and the most
    batches those rows can make."""
    part = {b: n for b, n in rows.items() if is_image(b) == image}
    return sum(math.ceil(n / sizes[b]) for b, n in part.items()), sum(part.values())


def ratio_batches(rank_rows: list[dict[str, int]], sizes: dict[str, int], ratio: float,
                  accum: int) -> list[dict[str, int]]:
    """Batches per bucket per rank with round(ratio * K) of each rank's K batches from image buckets.

    Every row is still used once an epoch and no batch exceeds its size: the ratio is met by
    splitting image or video batches (smaller batches), K being the smallest multiple of `accum`
    at which every rank can; it fails, naming the key, when a rank's rows cannot make that many
    batches (a batch needs a row)."""
    image = [_natural(rows, sizes, True) for rows in rank_rows]
    video = [_natural(rows, sizes, False) for rows in rank_rows]
    if not 0 < ratio < 1:
        raise ValueError(f"train.image_ratio={ratio}: the table has image and video rows; give a share in (0, 1) "
                         "or leave it unset (as many image batches as the rows make)")
    need = max(max(math.ceil(i / ratio), math.ceil(v / (1 - ratio))) for (i, _), (v, _) in zip(image, video))
    k = max(1, math.ceil(need / accum)) * accum
    while any(round(ratio * k) < i or k - round(ratio * k) < v for (i, _), (v, _) in zip(image, video)):
        k += accum  # rounding left a rank short of the batches its rows need
    n_img = round(ratio * k)
    for r, ((_, rows_i), (_, rows_v)) in enumerate(zip(image, video)):
        if rows_i < n_img or rows_v < k - n_img:
            raise ValueError(
                f"train.image_ratio={ratio}: every rank needs {n_img} image and {k - n_img} video batches an epoch, "
                f"but rank {r} has {rows_i} image and {rows_v} video rows: bring the ratio nearer the data's mix, "
                "or use fewer workers")
    out = []
    for rows in rank_rows:
        imgs = {b: n for b, n in rows.items() if is_image(b)}
        vids = {b: n for b, n in rows.items() if not is_image(b)}
        out.append(dict(sorted({**split_batches(imgs, sizes, n_img), **split_batches(vids, sizes, k - n_img)}.items())))
    return out
