"""Near-duplicate clips over a whole table without comparing all pairs: LSH buckets, then exact checks.

Each clip gets one key per band: for 64-bit perceptual hashes the hash is cut into
`max_hamming + 1` bands, so two hashes within `max_hamming` bits always share a band
(pigeonhole); for embeddings each band is `lsh_rows` random-hyperplane signs (SimHash), so a pair
of cosine c shares a band with probability 1 - (1 - (1 - acos(c)/pi)^rows)^bands. Only clips that
share a bucket are compared, with the exact Hamming distance or cosine. Linked clips form groups;
each group keeps its longest clip (then the smallest clip_id) and the others point to it.

This runs in one process over one curate output (`curate.dedup`); `reelforge dedup` (dedup_job.py)
runs the same band keys, bucket checks and components on Ray Data across many outputs.
"""

from __future__ import annotations

import numpy as np

SMALL_BUCKET = 256  # buckets up to this size are compared all-pairs in one matrix


# ----------------------------------------------------------------------------- band keys
def hash_bits(phashes: list[str]) -> np.ndarray:
    """16-hex-digit hashes -> (n,) uint64."""
    return np.array([int(h, 16) for h in phashes], dtype=np.uint64)


def phash_keys(bits: np.ndarray, bands: int) -> np.ndarray:
    """(n, bands) int64 keys: contiguous bit ranges of each 64-bit hash."""
    edges = np.linspace(0, 64, bands + 1).round().astype(int)
    keys = []
    for lo, hi in zip(edges, edges[1:]):
        mask = np.uint64((1 << (hi - lo)) - 1)
        keys.append(((bits >> np.uint64(lo)) & mask).astype(np.int64))
    return np.stack(keys, axis=1)


def simhash_keys(emb: np.ndarray, bands: int, rows: int, seed: int = 0) -> np.ndarray:
    """(n, bands) int64 keys: the signs of `rows` seeded random projections per band."""
    planes = np.random.default_rng(seed).standard_normal((emb.shape[1], bands * rows)).astype(np.float32)
    signs = (emb @ planes > 0).reshape(len(emb), bands, rows).astype(np.int64)  # (n, bands, rows)
    return signs @ (np.int64(1) << np.arange(rows, dtype=np.int64))


# ----------------------------------------------------------------------------- grouping
def bucket_pairs(members: np.ndarray, similar) -> list[np.ndarray]:
    """Similar pairs (k, 2) among one bucket's members (given in priority order)."""
    if members.size <= SMALL_BUCKET:
        sim = similar(members, members)  # (s, s) bool
        i, j = np.nonzero(np.triu(sim, k=1))
        return [np.stack([members[i], members[j]], axis=1)]
    # A huge bucket (thousands of black frames, a repeated logo): each leader takes everything
    # similar to it out of the bucket, so identical items cost one pass instead of s^2.
    out, rest = [], members
    while rest.size > 1:
        hit = similar(rest[:1], rest[1:])[0]
        out.append(np.stack([np.full(hit.sum(), rest[0]), rest[1:][hit]], axis=1))
        rest = rest[1:][~hit]
    return out


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label (smallest member index) of each of n nodes given edges."""
    labels = np.arange(n)
    if pairs.size == 0:
        return labels
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        low = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        labels = labels[labels]  # pointer jumping
        if np.array_equal(labels, before):
            return labels


def group(keys: np.ndarray, similar, priority: np.ndarray) -> np.ndarray:
    """For each item, the index of the item it duplicates (itself when kept).

    `keys` (n, bands); `similar(rows_a, rows_b) -> (len a, len b) bool`; `priority` (n,) where
    a lower value wins the group.
    """
    n = len(priority)
    found = [np.empty((0, 2), dtype=np.int64)]
    for band in keys.T:
        order = np.lexsort((priority, band))  # by key, then priority inside each bucket
        k = band[order]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        sizes = np.diff(np.r_[starts, n])
        for s, size in zip(starts[sizes > 1], sizes[sizes > 1]):
            found += bucket_pairs(order[s : s + size], similar)
    pairs = np.concatenate(found).astype(np.int64)
    # Relabel by priority so each component's smallest label is its winner.
    by_rank = np.argsort(priority, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[by_rank] = np.arange(n)
    labels = components(n, rank[pairs]) if pairs.size else np.arange(n)
    return by_rank[labels[rank]]


# ----------------------------------------------------------------------------- the entry point
def find_duplicates(clip_ids: list[str], durations: np.ndarray, *, embeddings: np.ndarray | None = None,
                    phashes: list[str] | None = None, min_cosine: float = 0.95, max_hamming: int = 4,
                    lsh_bands: int = 16, lsh_rows: int = 12, seed: int = 0) -> list[str | None]:
    """`dup_of` per clip: the clip_id of the kept clip it near-duplicates, or None.

    Give `embeddings` (n, D) (cosine >= min_cosine) or `phashes` (Hamming <= max_hamming).
    """
    n = len(clip_ids)
    if n < 2:
        return [None] * n
    # Longest first, then the smallest clip_id: the same winner on every run.
    priority = np.empty(n, dtype=np.int64)
    priority[np.lexsort((np.array(clip_ids), -np.asarray(durations, dtype=np.float64)))] = np.arange(n)
    if embeddings is not None:
        e = np.asarray(embeddings, dtype=np.float32)
        e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        keys = simhash_keys(e, lsh_bands, lsh_rows, seed)
        similar = lambda a, b: e[a] @ e[b].T >= min_cosine  # noqa: E731
    elif phashes is not None:
        bits = hash_bits(phashes)
        keys = phash_keys(bits, min(64, max_hamming + 1))
        similar = lambda a, b: np.bitwise_count(bits[a][:, None] ^ bits[b][None, :]) <= max_hamming  # noqa: E731
    else:
        raise ValueError("give embeddings or phashes")
    winner = group(keys, similar, priority)
    return [clip_ids[w] if w != i else None for i, w in enumerate(winner)]
