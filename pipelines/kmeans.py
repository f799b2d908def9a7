"""Spherical k-means over clip embeddings on Ray Data, for semantic dedup and concept balancing.

Lloyd's algorithm with the centroids broadcast to every task: each block returns its clusters'
partial sums and counts (k x D, small) and the driver adds them up, so the driver never holds the
embeddings. Embeddings and centroids are L2-normalised; the nearest centroid is the highest cosine.
Initial centroids: greedy k-means++ (as scikit-learn's: the best of 2 + log k D²-sampled candidates
per step) over a seeded sample of max(4096, 16 k) rows, drawn by a hash of each clip_id: a filter,
never a sort or a shuffle, and the only rows that reach the driver.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.dedup_graph import stable_hash


# ----------------------------------------------------------------------------- numpy
def embeddings(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float16|float32> column (no nulls) -> (n, D) float32, L2-normalised rows."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(col)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    e = flat.reshape(n, -1) if n else np.zeros((0, 1), np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def seeded_draw(clip_ids, seed: int) -> np.ndarray:
    """(n,) float in [0, 1): a uniform draw per clip_id, the same in every process and run."""
    h = stable_hash([f"{seed}:{c}" for c in clip_ids])
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def nearest(e: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n,) index of each row's nearest centroid (highest cosine)."""
    if len(e) == 0:
        return np.zeros(0, np.int64)
    return np.argmax(e @ centroids.T, axis=1).astype(np.int64)


def partial_sums(e: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, D) sums and (k,) counts of the rows nearest to each centroid."""
    k = len(centroids)
    labels = nearest(e, centroids)
    sums = np.zeros((k, e.shape[1]), np.float64)
    np.add.at(sums, labels, e)
    return sums, np.bincount(labels, minlength=k)


def kmeans_pp(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k rows of unit vectors `x` spread by greedy k-means++ (|a - b|^2 = 2 - 2 cos for unit vectors)."""
    rng = np.random.default_rng(seed)
    trials = 2 + int(np.log(k))
    first = int(rng.integers(len(x)))
    picked, d2 = [first], np.maximum(0.0, 2 - 2 * x @ x[first])
    for _ in range(1, k):
        total = d2.sum()
        cand = rng.choice(len(x), trials, p=d2 / total) if total > 0 else rng.choice(len(x), trials)
        cd2 = np.maximum(0.0, 2 - 2 * x @ x[cand].T)  # (n, trials)
        best = int(np.argmin(np.minimum(d2[:, None], cd2).sum(axis=0)))
        picked.append(int(cand[best]))
        d2 = np.minimum(d2, cd2[:, best])
    return x[picked].astype(np.float32)


def update(centroids: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """New unit centroids; an empty cluster keeps its old centroid."""
    new = np.where(counts[:, None] > 0, sums, centroids)
    return (new / np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# ----------------------------------------------------------------------------- Ray Data
def _sample_batch(batch: pa.Table, seed: int, frac: float) -> pa.Table:
    draw = seeded_draw(batch["clip_id"].to_pylist(), seed)
    picked = np.flatnonzero(draw < frac)
    return pa.table({"draw": draw[picked], "embedding": batch["embedding"].take(pa.array(picked, pa.int64()))})


def _sums_batch(batch: pa.Table, centroids: np.ndarray) -> dict:
    sums, counts = partial_sums(embeddings(batch["embedding"]), centroids)
    return {"sums": sums[None], "counts": counts[None]}


def initial_centroids(ds, k: int, seed: int, n: int) -> np.ndarray:
    """k centroids (fewer when n < k) by greedy k-means++ over a seeded sample of `ds` (clip_id, embedding)."""
    want = min(k, n)
    frac = min(1.0, max(4096, 16 * want) / max(n, 1))
    while True:
        sample = ds.map_batches(_sample_batch, fn_kwargs={"seed": seed, "frac": frac}, batch_format="pyarrow")
        rows = sample.take_all()  # about max(4096, 16 k) rows: bounded by the config, not by the data
        if len(rows) >= want or frac >= 1.0:
            break
        frac = min(1.0, frac * 4)
    rows.sort(key=lambda r: r["draw"])
    e = np.stack([np.asarray(r["embedding"], np.float32) for r in rows])
    return kmeans_pp(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12), want, seed)


def fit(ds, k: int, iters: int, seed: int, n: int) -> tuple[np.ndarray, list[float]]:
    """Centroids (k', D) after `iters` Lloyd steps over `ds` (materialize it first), and the
    mean cosine to the nearest centroid after each step."""
    centroids = initial_centroids(ds, k, seed, n)
    history = []
    for _ in range(iters):
        sums, counts = None, None
        for row in ds.map_batches(_sums_batch, fn_kwargs={"centroids": centroids}, batch_format="pyarrow",
                                  batch_size=16384).iter_rows():
            sums = row["sums"] if sums is None else sums + row["sums"]
            counts = row["counts"] if counts is None else counts + row["counts"]
        if sums is None:
            break
        history.append(float(np.linalg.norm(sums, axis=1).sum() / max(counts.sum(), 1)))
        centroids = update(centroids, sums, counts)
    return centroids, history
