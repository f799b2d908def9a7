"""Near-duplicate groups at dataset scale: what the dedup job runs inside each Ray Data partition.

Plain numpy over one partition's rows (no Ray here), so every step is tested with function calls:
- **rank keys**: one sortable string per clip, `"{16 hex of -score}:{clip_id}"`; the smallest key of a
  group is the clip it keeps (highest score, then the smallest clip_id), so components need no scores.
- **pairs**: perceptual rows share a pHash band bucket (dedup.phash_keys) and are checked by Hamming
  distance; semantic rows share a k-means cluster and are checked by cosine. With an index from
  earlier runs, only buckets that hold a new row are checked, and only pairs with a new member.
- **components**: a partition's pairs become star edges (node -> the best node of its local
  component); `large_star` / `small_star` (Kiveris et al., "Connected Components in MapReduce and
  Beyond") alternate over hash partitions of the edges until every node points at its component's
  root. No step needs all nodes in one place.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.dedup import bucket_pairs, components

KIND_BITS = {"perceptual": 1, "semantic": 2}
CHUNK = 1 << 22  # similarity-matrix entries computed at once


# ----------------------------------------------------------------------------- keys and hashing
def stable_hash(values) -> np.ndarray:
    """(n,) uint64 hash of strings, the same in every process (Python's hash() is salted)."""
    return pd.util.hash_array(np.asarray(values, dtype=object), categorize=False)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread uint64 per uint64 (bucketing integer keys)."""
    x = np.asarray(x, dtype=np.uint64).copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_part(values, n: int) -> np.ndarray:
    """(n,) int64 partition in [0, n) of each string."""
    return (stable_hash(values) % np.uint64(n)).astype(np.int64)


def rank_keys(scores: np.ndarray, clip_ids) -> np.ndarray:
    """Sortable keys: a higher score sorts first, a missing score (NaN) last, then clip_id."""
    neg = -np.asarray(scores, dtype=np.float64)
    neg[np.isnan(neg)] = np.inf
    neg[neg == 0] = 0.0  # -0.0 and 0.0 get one key
    bits = neg.view(np.uint64)
    sign = (bits >> np.uint64(63)).astype(bool)
    order = np.where(sign, ~bits, bits | np.uint64(1 << 63))  # IEEE 754 bits as an unsigned order
    return np.array([f"{int(o):016x}:{c}" for o, c in zip(order, clip_ids)], dtype=object)


def key_clip_ids(keys) -> np.ndarray:
    return np.array([k[17:] for k in keys], dtype=object)


def key_scores(keys) -> np.ndarray:
    """Inverse of rank_keys for the score (NaN for a clip that had none)."""
    order = np.array([int(k[:16], 16) for k in keys], dtype=np.uint64)
    top = (order >> np.uint64(63)).astype(bool)
    bits = np.where(top, order & ~np.uint64(1 << 63), ~order)
    out = -bits.view(np.float64) + 0.0  # + 0.0: no -0.0
    out[np.isinf(out)] = np.nan
    return out


# ----------------------------------------------------------------------------- pairs
def _new_pairs(members: np.ndarray, is_new: np.ndarray, similar, leaders: bool) -> np.ndarray:
    """Similar pairs among `members` that have at least one new member (old pairs were found before).

    `leaders`: a bucket of new members only goes through dedup.bucket_pairs, linear for a huge bucket
    of identical items (pHash); otherwise new members are compared with all, a chunk at a time.
    """
    if leaders and is_new.all():
        found = bucket_pairs(members, similar)
        return np.concatenate(found) if found else np.empty((0, 2), np.int64)
    new = members[is_new]
    step = max(1, CHUNK // len(members))
    out = [np.empty((0, 2), np.int64)]
    for lo in range(0, len(new), step):
        a = new[lo : lo + step]
        i, j = np.nonzero(similar(a, members))
        p = np.stack([a[i], members[j]], axis=1)
        out.append(p[p[:, 0] != p[:, 1]])
    p = np.sort(np.concatenate(out), axis=1)  # a new-new pair was found from both ends
    return np.unique(p, axis=0) if len(p) else p


def grouped_pairs(groups: list[np.ndarray], rank: np.ndarray, is_new: np.ndarray, similar,
                  leaders: bool = True) -> np.ndarray:
    """(k, 2) row-index pairs within each group (bucket or cluster) that holds a new row."""
    found = [np.empty((0, 2), np.int64)]
    for g in groups:
        if len(g) > 1 and is_new[g].any():
            g = g[np.argsort(rank[g], kind="stable")]  # best first: a huge bucket's leaders are its best
            found.append(_new_pairs(g, is_new[g], similar, leaders))
    return np.concatenate(found).astype(np.int64)


def split_groups(*key_columns: np.ndarray) -> list[np.ndarray]:
    """Row indices of each distinct key (the tuple of `key_columns`), for keys held by more than one row."""
    order = np.lexsort(key_columns[::-1])
    keys = [k[order] for k in key_columns]
    change = np.zeros(len(order), dtype=bool)
    change[0:1] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(change)
    sizes = np.diff(np.r_[starts, len(order)])
    return [order[s : s + n] for s, n in zip(starts[sizes > 1], sizes[sizes > 1])]


def hamming_similar(bits: np.ndarray, max_hamming: int):
    return lambda a, b: np.bitwise_count(bits[a][:, None] ^ bits[b][None, :]) <= max_hamming


def cosine_similar(emb: np.ndarray, min_cosine: float):
    return lambda a, b: emb[a] @ emb[b].T >= min_cosine


# ----------------------------------------------------------------------------- components
def local_stars(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of rank keys -> (node, root) for every node in them: root = the best key of its component."""
    if len(a) == 0:
        return np.empty(0, object), np.empty(0, object)
    keys, inv = np.unique(np.concatenate([a, b]).astype(str), return_inverse=True)  # sorted: best first
    labels = components(len(keys), inv.reshape(2, -1).T)
    return keys.astype(object), keys[labels].astype(object)


def _dedup_sorted(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique (src, dst) pairs sorted by src then dst."""
    src, dst = np.asarray(src, dtype=str), np.asarray(dst, dtype=str)
    order = np.lexsort((dst, src))
    s, d = src[order], dst[order]
    keep = np.r_[True, (s[1:] != s[:-1]) | (d[1:] != d[:-1])] if len(s) else np.zeros(0, bool)
    return s[keep], d[keep]


def _group_min(s: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Per row, min(src, smallest dst of that src) for (src, dst) sorted by src then dst."""
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    first = np.where(s[starts] < d[starts], s[starts], d[starts])
    return np.repeat(first, np.diff(np.r_[starts, len(s)]))


def large_star(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges given both ways, grouped by src: link every larger neighbour v of u to m = min(u, N(u))."""
    s, d = _dedup_sorted(src, dst)
    if len(s) == 0:
        return s.astype(object), d.astype(object)
    m = _group_min(s, d)
    sel = d > s
    return d[sel].astype(object), m[sel].astype(object)


def small_star(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges given as (larger, smaller), grouped by src: link u and its smaller neighbours to their min."""
    s, d = _dedup_sorted(src, dst)
    if len(s) == 0:
        return s.astype(object), d.astype(object)
    m = _group_min(s, d)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    nodes = np.concatenate([d, s[starts]])  # each neighbour, and u itself once
    roots = np.concatenate([m, m[starts]])
    sel = nodes != roots
    return nodes[sel].astype(object), roots[sel].astype(object)


def orient(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(larger, smaller) of each edge: the map side of small_star."""
    u, v = np.asarray(u, dtype=str), np.asarray(v, dtype=str)
    return np.where(u > v, u, v).astype(object), np.where(u > v, v, u).astype(object)


def edges_fingerprint(u: np.ndarray, v: np.ndarray) -> int:
    """Order-free sum (mod 2**64) of edge hashes: equal edge multisets give equal sums."""
    h = stable_hash(np.char.add(np.char.add(np.asarray(u, dtype=str), "|"), np.asarray(v, dtype=str)))
    return int(h.sum(dtype=np.uint64)) if len(h) else 0
