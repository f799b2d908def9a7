"""The dedup job's batch functions: Arrow tables in, Arrow tables out, no Ray (dedup_job.py maps them).

Every function reads a few columns and says which. Node rows (NODE_SCHEMA) are the currency
between steps: one row per clip found in a pair, with the root of its group as far as the step
knows (`root`), the kinds that linked it (`bits`) and the curate output it came from (`source`).
The partition functions also write this run's index rows (dedup_index.py) beside their work.
"""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infra import storage, tables
from infra.schema import DUPLICATES_SCHEMA
from pipelines import dedup_graph as g
from pipelines import kmeans
from pipelines.dedup import hash_bits, phash_keys
from pipelines.dedup_index import bucket_uri

NODE_SCHEMA = pa.schema([("node", pa.string()), ("root", pa.string()), ("bits", pa.int64()),
                         ("source", pa.string()), ("pairs", pa.int64())])
EDGE_SCHEMA = pa.schema([("u", pa.string()), ("v", pa.string())])
SCORE_COLUMNS = {"longest": ["start_s", "end_s"], "sharpest": ["sharpness"], "aesthetic": ["aesthetic"]}


def _np(col) -> np.ndarray:
    return col.to_numpy(zero_copy_only=False)


def _floats(batch: pa.Table, name: str) -> np.ndarray:
    return np.asarray(pc.fill_null(batch[name].cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False))


# ----------------------------------------------------------------------------- inputs
def prepare(batch: pa.Table, score: str, only_kept: bool, s3: bool) -> pa.Table:
    """Clips rows (+ Ray's `path`) -> clip_id, key, source, phash, embedding. Reads keep, the score columns."""
    keep = np.ones(batch.num_rows, bool)
    if only_kept and "keep" in batch.column_names:
        keep = _np(pc.fill_null(batch["keep"], True)).astype(bool)
    if score == "longest":
        value = _floats(batch, "end_s") - _floats(batch, "start_s")
    else:
        value = _floats(batch, "sharpness" if score == "sharpest" else "aesthetic")
    roots = [("s3://" if s3 else "") + posixpath.dirname(posixpath.dirname(p)) for p in batch["path"].to_pylist()]
    out = {"clip_id": batch["clip_id"], "key": pa.array(g.rank_keys(value, batch["clip_id"].to_pylist()), pa.string()),
           "source": pa.array(roots, pa.string())}
    for name in ("phash", "embedding"):
        if name in batch.column_names:
            out[name] = batch[name]
    return pa.table(out).filter(pa.array(keep))


def _new_index_rows(batch: pa.Table, kind: str, output: str, run: str) -> None:
    """Write this run's new rows of each bucket in the batch to the index (idempotent names)."""
    new = batch.filter(batch["new"]).drop_columns(["part", "new"])
    for b in pc.unique(new["bucket"]).to_pylist():
        storage.write_table(new.filter(pc.equal(new["bucket"], b)), bucket_uri(output, kind, b, run))


def _node_table(keys: np.ndarray, a: np.ndarray, b: np.ndarray, bit: int, sources: np.ndarray) -> pa.Table:
    """Pairs (row indices a, b) -> node rows of their local stars."""
    node, root = g.local_stars(keys[a], keys[b])
    source_of = dict(zip(keys[np.r_[a, b]], sources[np.r_[a, b]]))
    pairs = np.zeros(len(node), np.int64)
    pairs[:1] = len(a)
    return pa.table({"node": pa.array(node, pa.string()), "root": pa.array(root, pa.string()),
                     "bits": np.full(len(node), bit, np.int64), "source": [source_of[k] for k in node],
                     "pairs": pairs}, schema=NODE_SCHEMA)


# ----------------------------------------------------------------------------- perceptual
def band_rows(batch: pa.Table, bands: int, buckets: int, parts: int) -> pa.Table:
    """key, source, phash -> one row per (clip, band): bucket, part, band, value, bits, key, source, new."""
    batch = batch.filter(pc.is_valid(batch["phash"]))
    bits = hash_bits(batch["phash"].to_pylist())
    keys = phash_keys(bits, bands)  # (n, bands)
    n = len(bits)
    band = np.tile(np.arange(bands, dtype=np.int64), n)
    value = keys.reshape(-1)
    bucket = (g.mix64(value.view(np.uint64) ^ g.mix64(band.view(np.uint64))) % np.uint64(buckets)).astype(np.int32)
    return pa.table({"bucket": bucket, "band": band.astype(np.int32), "value": value,
                     "bits": np.repeat(bits.view(np.int64), bands),
                     "key": pa.array(np.repeat(_np(batch["key"]), bands), pa.string()),
                     "source": pa.array(np.repeat(_np(batch["source"]), bands), pa.string()),
                     "part": bucket % np.int32(parts), "new": np.ones(n * bands, bool)})


def perceptual_part(batch: pa.Table, max_hamming: int, output: str, run: str) -> pa.Table:
    """One partition of band rows (new and indexed) -> node rows of pairs within max_hamming bits."""
    _new_index_rows(batch, "perceptual", output, run)
    keys, new = _np(batch["key"]), _np(batch["new"]).astype(bool)
    groups = g.split_groups(_np(batch["band"]), _np(batch["value"]))
    pairs = g.grouped_pairs(groups, keys.astype(str), new,
                            g.hamming_similar(_np(batch["bits"]).view(np.uint64), max_hamming), leaders=True)
    return _node_table(keys, pairs[:, 0], pairs[:, 1], g.KIND_BITS["perceptual"], _np(batch["source"]))


# ----------------------------------------------------------------------------- semantic
def with_embedding(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_valid(batch["embedding"]))


def cluster_rows(batch: pa.Table, centroids: np.ndarray, parts: int) -> pa.Table:
    """key, source, embedding -> bucket (= nearest centroid), part, key, source, embedding, new."""
    cluster = kmeans.nearest(kmeans.embeddings(batch["embedding"]), centroids).astype(np.int32)
    return pa.table({"bucket": cluster, "key": batch["key"], "source": batch["source"],
                     "embedding": batch["embedding"], "part": cluster % np.int32(parts),
                     "new": np.ones(batch.num_rows, bool)})


def semantic_part(batch: pa.Table, min_cosine: float, output: str, run: str) -> pa.Table:
    """One partition of cluster rows (new and indexed) -> node rows of pairs with cosine >= min_cosine."""
    _new_index_rows(batch, "semantic", output, run)
    keys, new = _np(batch["key"]), _np(batch["new"]).astype(bool)
    emb = kmeans.embeddings(batch["embedding"])
    pairs = g.grouped_pairs(g.split_groups(_np(batch["bucket"])), keys.astype(str), new,
                            g.cosine_similar(emb, min_cosine), leaders=False)
    return _node_table(keys, pairs[:, 0], pairs[:, 1], g.KIND_BITS["semantic"], _np(batch["source"]))


def indexed(batch: pa.Table, parts: int) -> pa.Table:
    """Index rows read back: + part, new=false (the columns of band_rows / cluster_rows, in order)."""
    part = pa.array(_np(batch["bucket"]).astype(np.int32) % np.int32(parts))
    return batch.append_column("part", part).append_column("new", pa.array(np.zeros(batch.num_rows, bool)))


def previous_nodes(batch: pa.Table) -> pa.Table:
    """The last run's duplicates rows -> node rows (its groups join this run's components)."""
    bits = np.array([sum(g.KIND_BITS[k] for k in (s or "").split("+") if k) for s in batch["kind"].to_pylist()],
                    np.int64)
    return pa.table({"node": batch["rank_key"], "root": batch["group_key"], "bits": bits,
                     "source": batch["source"], "pairs": np.zeros(batch.num_rows, np.int64)}, schema=NODE_SCHEMA)


# ----------------------------------------------------------------------------- components
def star_edges(batch: pa.Table) -> pa.Table:
    """Node rows -> (u, v) edges node -> root, for nodes that are not their own root."""
    return pa.table({"u": batch["node"], "v": batch["root"]}, schema=EDGE_SCHEMA).filter(
        pc.not_equal(batch["node"], batch["root"]))


def both_ways(batch: pa.Table, parts: int) -> pa.Table:
    u, v = _np(batch["u"]), _np(batch["v"])
    src, dst = np.concatenate([u, v]), np.concatenate([v, u])
    return pa.table({"src": pa.array(src, pa.string()), "dst": pa.array(dst, pa.string()),
                     "part": g.hash_part(src, parts)})


def oriented(batch: pa.Table, parts: int) -> pa.Table:
    src, dst = g.orient(_np(batch["u"]), _np(batch["v"]))
    return pa.table({"src": pa.array(src, pa.string()), "dst": pa.array(dst, pa.string()),
                     "part": g.hash_part(src, parts)})


def _star(batch: pa.Table, fn) -> pa.Table:
    u, v = fn(_np(batch["src"]), _np(batch["dst"]))
    return pa.table({"u": pa.array(u, pa.string()), "v": pa.array(v, pa.string())}, schema=EDGE_SCHEMA)


def large(batch: pa.Table) -> pa.Table:
    return _star(batch, g.large_star)


def small(batch: pa.Table) -> pa.Table:
    return _star(batch, g.small_star)


def distinct_buckets(batch: pa.Table) -> dict:
    return {"buckets": [np.unique(_np(batch["bucket"]))]}


def pair_count(batch: pa.Table) -> dict:
    return {"pairs": [int(_np(batch["pairs"]).sum()) if batch.num_rows else 0]}


def fingerprint(batch: pa.Table) -> dict:
    return {"h": np.array([g.edges_fingerprint(_np(batch["u"]), _np(batch["v"]))], np.uint64),
            "n": np.array([batch.num_rows], np.int64)}


# ----------------------------------------------------------------------------- the duplicates table
def resolve_rows(batch: pa.Table, parts: int, final: bool) -> pa.Table:
    """Final edges (v -> root) or node rows -> node, root ("" = unknown), bits, source, part by clip_id."""
    if final:
        u, v = _np(batch["u"]), _np(batch["v"])
        node, root = np.concatenate([u, v]), np.concatenate([v, v])
        bits, source = np.zeros(len(node), np.int64), np.full(len(node), "", object)
    else:
        node, bits, source = _np(batch["node"]), _np(batch["bits"]), _np(batch["source"])
        root = np.full(len(node), "", object)
    return pa.table({"node": pa.array(node, pa.string()), "root": pa.array(root, pa.string()), "bits": bits,
                     "source": pa.array(source, pa.string()), "part": g.hash_part(g.key_clip_ids(node), parts)})


def duplicates_table(batch: pa.Table) -> pa.Table:
    """Rows of one clip partition -> DUPLICATES_SCHEMA rows, one per clip, sorted by clip_id."""
    node, root = _np(batch["node"]).astype(str), _np(batch["root"]).astype(str)
    bits, source = _np(batch["bits"]), _np(batch["source"]).astype(str)
    order = np.lexsort((root, root == "", node))  # per node: known roots first, the smallest first
    node, root, bits, source = node[order], root[order], bits[order], source[order]
    starts = np.flatnonzero(np.r_[True, node[1:] != node[:-1]])
    keys, roots = node[starts], np.where(root[starts] == "", node[starts], root[starts])
    kind_bits = np.bitwise_or.reduceat(bits, starts) if len(starts) else bits
    src = [next((s for s in source[a:b] if s), None) for a, b in zip(starts, np.r_[starts[1:], len(node)])]
    kinds = ["+".join(k for k, b in g.KIND_BITS.items() if kb & b) or None for kb in kind_bits]
    scores = g.key_scores(keys)
    t = pa.table({"clip_id": g.key_clip_ids(keys), "group_id": g.key_clip_ids(roots), "kept": keys == roots,
                  "kind": kinds, "source": src, "score": np.where(np.isnan(scores), None, scores),
                  "rank_key": keys, "group_key": roots}, schema=DUPLICATES_SCHEMA)
    return t.sort_by("clip_id")


def resolve_part(batch: pa.Table, output: str, run: str) -> pa.Table:
    """Write one partition of the duplicates table (and its copy in index/groups); returns its counts."""
    part = int(batch["part"][0].as_py())
    t = duplicates_table(batch)
    kept = _np(t["kept"]).astype(bool)
    kinds = np.array([k or "" for k in t["kind"].to_pylist()], dtype=object)
    counts = {"rows": t.num_rows, "groups": int(kept.sum()), "removed": int((~kept).sum()),
              **{f"removed_{k}": int(((~kept) & np.array([k in s for s in kinds], bool)).sum())
                 for k in g.KIND_BITS}}
    pid = f"{part:05d}"
    storage.write_table(t, storage.join(output, "index", "groups", run, f"part-{pid}.parquet"))
    tables.write_partition(output, pid, {"duplicates": t}, run, counts)
    return pa.table({"pid": [pid], **{k: [v] for k, v in counts.items()}})
