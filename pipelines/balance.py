"""`reelforge balance`: concept balancing over curate outputs, on Ray Data.

Spherical k-means (kmeans.py, `balance.clusters`) over the embeddings of the kept clips (minus the
duplicates `selection.duplicates` removes) gives each clip a concept cluster. Web video is
dominated by a few concepts, so each cluster c of n_c clips gets, under an optional cap C:
- `keep_prob` = min(1, C / n_c): precompute keeps a clip with that probability, so a cluster keeps
  about min(n_c, C) clips (the HunyuanVideo-style resampling of over-represented clusters);
- `sample_weight` proportional to min(n_c, C) ** -power, normalised to mean 1 over the clips kept:
  a weighted sampler then sees every concept about equally (power 1) or partly evened (power < 1).
The `weights` table (one partition per hash of clip_id, with markers) is resumable: a re-run with
the same inputs and settings finds every partition complete and starts no Ray.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infra import selection, storage, tables
from infra.config import ReelForgeConfig
from infra.runtime import ray_session
from infra.schema import WEIGHTS_SCHEMA
from pipelines import kmeans
from pipelines.dedup_graph import hash_part
from pipelines.dedup_index import DedupInputError, IndexState, plan_inputs
from pipelines.dedup_job import data_context, grouped, map_arrow, read_parquet, reduce_blocks

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the weights
def cluster_weights(sizes: np.ndarray, power: float, cap: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(keep_prob, sample_weight) per cluster from its size; empty clusters get (1, 0)."""
    sizes = np.asarray(sizes, np.float64)
    after = np.minimum(sizes, cap) if cap else sizes.copy()
    keep = np.where(sizes > 0, after / np.maximum(sizes, 1), 1.0)
    w = np.where(after > 0, np.maximum(after, 1) ** -power, 0.0)
    total = (after * w).sum()
    return keep, (w * after.sum() / total if total > 0 else w)


# ----------------------------------------------------------------------------- batch functions
def _rows(batch: pa.Table, only_kept: bool, s3: bool, removed_from: tuple[str, str] | None) -> pa.Table:
    """clip_id, keep, embedding, path -> clip_id, source, embedding of kept, embedded clips that no
    duplicates table removes (each worker reads `removed_from`'s removed ids once, never the driver)."""
    ok = pc.is_valid(batch["embedding"])
    if only_kept:
        ok = pc.and_(ok, pc.fill_null(batch["keep"], True))
    if removed_from:
        gone = selection.removed_ids(*removed_from)
        ok = pc.and_(ok, pa.array([c not in gone for c in batch["clip_id"].to_pylist()], pa.bool_()))
    b = batch.filter(ok)
    roots = [("s3://" if s3 else "") + posixpath.dirname(posixpath.dirname(p)) for p in b["path"].to_pylist()]
    return pa.table({"clip_id": b["clip_id"], "source": pa.array(roots, pa.string()), "embedding": b["embedding"]})


def _sizes(batch: pa.Table, k: int) -> dict:
    return {"sizes": [np.bincount(batch["cluster"].to_numpy(), minlength=k)]}


def _assign(batch: pa.Table, centroids: np.ndarray, parts: int) -> pa.Table:
    cluster = kmeans.nearest(kmeans.embeddings(batch["embedding"]), centroids).astype(np.int32)
    return pa.table({"clip_id": batch["clip_id"], "source": batch["source"], "cluster": cluster,
                     "part": hash_part(batch["clip_id"].to_pylist(), parts)})


def _write_part(batch: pa.Table, output: str, fingerprint: str, sizes: np.ndarray, keep: np.ndarray,
                weight: np.ndarray, done: frozenset) -> pa.Table:
    """One partition of the weights table (skipped when a marker says it is complete)."""
    pid = f"{int(batch['part'][0].as_py()):05d}"
    if pid not in done:
        c = batch["cluster"].to_numpy()
        t = pa.table({"clip_id": batch["clip_id"], "cluster": c, "cluster_size": sizes[c], "sample_weight": weight[c],
                      "keep_prob": keep[c], "source": batch["source"]}, schema=WEIGHTS_SCHEMA).sort_by("clip_id")
        tables.write_partition(output, pid, {"weights": t}, fingerprint, {"rows": t.num_rows})
    return pa.table({"pid": [pid], "rows": [batch.num_rows]})


# ----------------------------------------------------------------------------- the job
def _clips(cfg: ReelForgeConfig, parts: dict[str, dict]):
    """Kept, embedded clips of the inputs, less the duplicates selection.duplicates removes (materialized)."""
    dup = cfg.selection.duplicates
    ds = read_parquet(sorted(parts), ["clip_id", "keep", "embedding"], include_paths=True)
    return map_arrow(ds, _rows, only_kept=cfg.balance.only_kept, s3=storage.is_s3(next(iter(parts))),
                     removed_from=(dup, selection.run_of(dup)) if dup else None).materialize()


def _fit_and_write(cfg: ReelForgeConfig, ds, n: int, output: str, fingerprint: str, done: frozenset) -> dict:
    b = cfg.balance
    centroids, history = kmeans.fit(ds, b.clusters, b.iters, b.seed, n)
    labelled = map_arrow(ds, _assign, centroids=centroids, parts=b.partitions).materialize()
    sizes = np.sum([r["sizes"] for r in reduce_blocks(labelled, _sizes, k=len(centroids))], axis=0).astype(np.int64)
    keep, weight = cluster_weights(sizes, b.power, b.cap_per_cluster)
    written = grouped(labelled, _write_part, b.partitions, output=output, fingerprint=fingerprint, sizes=sizes,
                      keep=keep, weight=weight, done=done)
    pids = {r["pid"] for r in written.iter_rows()}
    for p in range(b.partitions):  # a partition no clip hashed to is complete too (and empty)
        if f"{p:05d}" not in pids and f"{p:05d}" not in done:
            tables.write_partition(output, f"{p:05d}", {"weights": WEIGHTS_SCHEMA.empty_table()}, fingerprint,
                                   {"rows": 0})
    return {"sizes": sizes.tolist(), "kept_expected": (sizes * keep).round(3).tolist(),
            "keep_prob": keep.round(6).tolist(), "sample_weight": weight.round(6).tolist(),
            "mean_cosine": [round(h, 5) for h in history]}


def run_balance(cfg: ReelForgeConfig, inputs: list[str], output: str) -> dict:
    """Cluster the kept clips of `inputs` and write OUTPUT/weights (sample_weight, keep_prob per clip)."""
    started = time.time()
    tables.configure_storage(cfg)
    output = output if storage.is_s3(output) else os.path.abspath(output)
    parts, _ = plan_inputs(inputs, IndexState(output, []))
    fingerprint = tables.digest([cfg.fingerprint("balance"), selection.identity(cfg),
                                 *(f"{u}={p['identity']}" for u, p in sorted(parts.items()))], 12)
    plan = [tables.Partition(f"{p:05d}", ()) for p in range(cfg.balance.partitions)]
    done = tables.completed(output, plan, fingerprint)
    manifest_uri = storage.join(output, "manifest.json")
    if len(done) == len(plan) and storage.exists(manifest_uri):
        manifest = json.loads(storage.read_text(manifest_uri))
        if manifest.get("run") == fingerprint:
            manifest["resume"] = {"partitions": len(plan), "skipped_complete": len(plan), "processed": 0,
                                  "stale_parts_removed": 0}
            tables.write_manifest(output, manifest)
            log.info("balance: every partition of %s is complete; nothing to do", output)
            return manifest
    tables.open_output(cfg, output)
    with ray_session(cfg), data_context(cfg.balance.shuffle):
        ds = _clips(cfg, parts)
        n = ds.count()
        if not n:
            raise DedupInputError("no kept clip with an embedding in the inputs: curate with "
                                  "curate.measures.clip_model set (balance clusters the open_clip embeddings)")
        clusters = _fit_and_write(cfg, ds, n, output, fingerprint, frozenset(done))
    removed = tables.remove_stale(output, ["weights"], {p.pid for p in plan})
    manifest = {**tables.manifest_header("balance", ",".join(inputs), output, started), "run": fingerprint,
                "counts": {"inputs": len(inputs), "parts": len(parts), "clips": n, "clusters": len(clusters["sizes"]),
                           "kept_expected": round(float(sum(clusters["kept_expected"])), 1)},
                "clusters": clusters, **tables.manifest_footer(cfg, len(plan), len(done), removed)}
    tables.write_manifest(output, manifest)
    from pipelines.report_dataset import write_balance_report

    write_balance_report(output, manifest)
    return manifest
