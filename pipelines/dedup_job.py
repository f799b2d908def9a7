"""`reelforge dedup`: near-duplicate clips across curate outputs, on Ray Data, with an index for later runs.

1. Read the clips tables of the new input parts (key, source, phash / embedding; kept clips only).
2. perceptual: one row per pHash band, grouped by hash bucket of the band value with the indexed
   rows of the buckets they touch, checked by Hamming distance. semantic: k-means (fitted on the
   first run, then kept), rows grouped by cluster with the indexed rows of those clusters, checked
   by cosine. Each partition writes this run's index rows and returns the pairs' local stars.
3. Connected components over all partitions' stars and the last run's groups (large/small star).
4. One duplicates partition per hash of clip_id: the best clip of each group (dedup.score) kept.
The driver only ever holds counts, fingerprints, bucket ids and (semantic) the centroids and the
bounded k-means++ sample (kmeans.py); every row of data stays in Ray's object store and workers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

from infra import storage, tables
from infra.config import ReelForgeConfig
from infra.runtime import ray_session
from pipelines import dedup_index as index
from pipelines import dedup_stages as st
from pipelines import kmeans
from pipelines.dedup_graph import KIND_BITS

log = logging.getLogger(__name__)
DedupInputError = index.DedupInputError


# ----------------------------------------------------------------------------- Ray Data plumbing
def read_parquet(uris: list[str], columns: list[str] | None = None, include_paths: bool = False):
    import ray

    fs, _ = storage.filesystem(uris[0])
    paths = [u[len("s3://"):] if storage.is_s3(u) else u for u in uris]
    ds = ray.data.read_parquet(paths, filesystem=fs, include_paths=include_paths)
    return ds.select_columns([*columns, *(["path"] if include_paths else [])]) if columns else ds


def map_arrow(ds, fn, **kwargs):
    return ds.map_batches(fn, fn_kwargs=kwargs or None, batch_format="pyarrow", zero_copy_batch=True)


def grouped(ds, fn, parts: int, **kwargs):
    """`fn` over each hash partition (column `part`): every row of a key meets in one call."""
    return ds.groupby("part", num_partitions=parts).map_groups(fn, fn_kwargs=kwargs or None, batch_format="pyarrow")


def reduce_blocks(ds, fn, **kwargs) -> list[dict]:
    """`fn` over each block, returning one small row each, brought to the driver (no shuffle)."""
    return list(ds.map_batches(fn, fn_kwargs=kwargs or None, batch_format="pyarrow", batch_size=None).iter_rows())


def _buckets(ds) -> list[int]:
    """The distinct buckets of `ds` (at most dedup.index_buckets or clusters ints)."""
    return sorted({int(b) for r in reduce_blocks(ds, st.distinct_buckets) for b in r["buckets"]})


@contextlib.contextmanager
def data_context(shuffle: str):
    """For the block: no progress bars; `sort` shuffles run as tasks, where Ray's hash shuffle starts a
    pool of aggregator actors per groupby (seconds each on a small cluster; worth it for huge shuffles).
    The driver's DataContext is restored afterwards (other jobs may share the process)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    before = ctx.enable_progress_bars, ctx.shuffle_strategy
    ctx.enable_progress_bars = False
    ctx.shuffle_strategy = "sort_shuffle_pull_based" if shuffle == "sort" else "hash_shuffle"
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.shuffle_strategy = before


def _empty(schema):
    import ray

    return ray.data.from_arrow(schema.empty_table())


# ----------------------------------------------------------------------------- steps
def read_new(cfg: ReelForgeConfig, parts: dict[str, dict]):
    """The new parts' clips: key, source and the values each kind needs (materialized once)."""
    d = cfg.dedup
    cols = ["clip_id", "keep", *st.SCORE_COLUMNS[d.score]]
    cols += ["phash"] if "perceptual" in d.kinds else []
    cols += ["embedding"] if "semantic" in d.kinds else []
    ds = read_parquet(sorted(parts), cols, include_paths=True)
    return map_arrow(ds, st.prepare, score=d.score, only_kept=d.only_kept,
                     s3=storage.is_s3(next(iter(parts)))).materialize()


def perceptual(cfg: ReelForgeConfig, new, state: index.IndexState, run: str, stats: dict):
    d = cfg.dedup
    rows = map_arrow(new.select_columns(["key", "source", "phash"]), st.band_rows, bands=d.max_hamming + 1,
                     buckets=d.index_buckets, parts=d.partitions).materialize()
    touched = _buckets(rows)
    old = state.bucket_files("perceptual", touched)
    stats["perceptual"] = {"buckets_touched": len(touched), "index_files_read": len(old),
                           "index_files": state.total_files("perceptual")}
    if old:
        rows = rows.union(map_arrow(read_parquet(old), st.indexed, parts=d.partitions))
    return grouped(rows, st.perceptual_part, d.partitions, max_hamming=d.max_hamming, output=state.output, run=run)


def semantic(cfg: ReelForgeConfig, new, state: index.IndexState, run: str, stats: dict):
    d = cfg.dedup
    emb = map_arrow(new.select_columns(["clip_id", "key", "source", "embedding"]), st.with_embedding).materialize()
    n = emb.count()
    if state.last and state.last.get("centroids"):
        centroids = index.read_centroids(state.last["centroids"])
        fitted = state.last["centroids"]
    else:
        centroids, _ = kmeans.fit(emb, d.clusters, d.kmeans_iters, d.seed, n) if n else (None, [])
        fitted = index.write_centroids(state.output, run, centroids) if n else None
    stats["centroids"] = fitted
    if not n:
        return None
    rows = map_arrow(emb, st.cluster_rows, centroids=centroids, parts=d.partitions).materialize()
    touched = _buckets(rows)
    old = state.bucket_files("semantic", touched)
    stats["semantic"] = {"clusters": len(centroids), "clusters_touched": len(touched), "index_files_read": len(old),
                         "index_files": state.total_files("semantic")}
    if old:
        rows = rows.union(map_arrow(read_parquet(old), st.indexed, parts=d.partitions))
    return grouped(rows, st.semantic_part, d.partitions, min_cosine=d.min_cosine, output=state.output, run=run)


def _fingerprint(edges) -> tuple[int, int]:
    h, n = 0, 0
    for row in reduce_blocks(edges, st.fingerprint):
        h, n = (h + int(row["h"])) % 2**64, n + int(row["n"])
    return h, n


def components(edges, parts: int, max_rounds: int) -> tuple[object, int]:
    """Alternate large and small star until neither changes the edge set: then every edge is node -> root.

    Local stars are often final already; checking after each half step stops there after two shuffles.
    """
    seen = _fingerprint(edges)
    steps, unchanged = 0, 0
    while seen[1] and unchanged < 2:
        if steps == 2 * max_rounds:
            raise RuntimeError(f"dedup: connected components did not settle in {max_rounds} rounds "
                               "(dedup.max_rounds)")
        prep, op = (st.both_ways, st.large) if steps % 2 == 0 else (st.oriented, st.small)
        edges = grouped(map_arrow(edges, prep, parts=parts), op, parts).materialize()
        now = _fingerprint(edges)
        steps, unchanged, seen = steps + 1, (unchanged + 1 if now == seen else 0), now
    return edges, steps


def resolve(cfg: ReelForgeConfig, nodes, output: str, run: str, stats: dict) -> list[dict]:
    """Components of the node rows' stars -> the duplicates table, one partition per call; their counts."""
    p = cfg.dedup.partitions
    edges, stats["component_steps"] = components(map_arrow(nodes, st.star_edges).materialize(), p,
                                                  cfg.dedup.max_rounds)
    rows = map_arrow(edges, st.resolve_rows, parts=p, final=True).union(
        map_arrow(nodes, st.resolve_rows, parts=p, final=False))
    return list(grouped(rows, st.resolve_part, p, output=output, run=run).iter_rows())  # one row per partition


# ----------------------------------------------------------------------------- the job
def _nodes(cfg: ReelForgeConfig, state: index.IndexState, run: str, stats: dict):
    """Node rows of every kind's pairs and of the last run's groups (materialized), and the clips read."""
    new = read_new(cfg, stats["new_parts"])
    stats["clips_read"] = new.count()
    found = []
    for kind, step in (("perceptual", perceptual), ("semantic", semantic)):
        if kind in cfg.dedup.kinds:
            ds = step(cfg, new, state, run, stats)
            ds = ds.materialize() if ds is not None else _empty(st.NODE_SCHEMA)
            stats.setdefault(kind, {})["pairs"] = sum(int(r["pairs"]) for r in reduce_blocks(ds, st.pair_count))
            found.append(ds)
    if state.last:
        found.append(map_arrow(read_parquet(storage.list_files(state.groups_uri())), st.previous_nodes))
    nodes = found[0].union(*found[1:]) if len(found) > 1 else found[0]
    return nodes.materialize()


def _funnel(parts: list[dict], stats: dict, state: index.IndexState) -> dict:
    total = {k: sum(int(p[k]) for p in parts) for k in ("rows", "groups", "removed",
                                                        *(f"removed_{k}" for k in KIND_BITS))}
    clips = stats["clips_read"] + sum(r["manifest"]["counts"]["clips_read"] for r in state.runs)
    return {"inputs": len(stats["inputs"]), "parts_new": len(stats["new_parts"]), "parts_skipped": stats["skipped"],
            "clips_read": stats["clips_read"], "dataset_clips": clips,
            "pairs": {k: stats.get(k, {}).get("pairs", 0) for k in KIND_BITS},
            "clips_in_groups": total["rows"], "groups": total["groups"], "removed": total["removed"],
            "removed_by_kind": {k: total[f"removed_{k}"] for k in KIND_BITS}, "dataset_kept": clips - total["removed"]}


def _manifest(cfg: ReelForgeConfig, inputs: list[str], output: str, started: float, run: str, funnel: dict,
              stats: dict) -> dict:
    m = {**tables.manifest_header("dedup", ",".join(inputs), output, started), "run": run, "counts": funnel,
         "index": {k: stats[k] for k in ("perceptual", "semantic", "centroids") if k in stats},
         "component_steps": stats.get("component_steps", 0)}
    m["throughput"] = {"clips_per_s": round(funnel["clips_read"] / m["wall_s"], 1) if m["wall_s"] else None}
    parts = len(stats["new_parts"]) + stats["skipped"]  # resume counts input parts: indexed ones are skipped
    return {**m, **tables.manifest_footer(cfg, parts, stats["skipped"], 0)}


def _nothing_new(cfg: ReelForgeConfig, state: index.IndexState, output: str, skipped: int) -> dict:
    """Every input part is indexed already: the last run's manifest again, saying so."""
    if not state.last:
        raise DedupInputError("no clips to deduplicate: the inputs hold no clips parts")
    manifest = dict(state.last["manifest"], resume={"partitions": skipped, "skipped_complete": skipped,
                                                    "processed": 0, "stale_parts_removed": 0})
    tables.write_manifest(output, manifest)
    log.info("dedup: all %d input parts are indexed already (run %s); nothing to do", skipped, state.last["run"])
    return manifest


def run_dedup(cfg: ReelForgeConfig, inputs: list[str], output: str,
              progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Deduplicate the clips of `inputs` (curate output roots) against each other and DST's index."""
    started = time.time()
    tables.configure_storage(cfg)
    output = output if storage.is_s3(output) else os.path.abspath(output)
    state = index.load_state(output)
    index.check_config(state, cfg)
    new_parts, skipped = index.plan_inputs(inputs, state)
    if not new_parts:
        return _nothing_new(cfg, state, output, skipped)
    run = index.run_id(state, cfg, new_parts)
    index.remove_uncommitted(state)
    tables.open_output(cfg, output)
    stats = {"inputs": inputs, "new_parts": new_parts, "skipped": skipped}
    log.info("dedup: %d new clips parts (%d indexed before), run %s", len(new_parts), skipped, run)
    with ray_session(cfg), data_context(cfg.dedup.shuffle):
        nodes = _nodes(cfg, state, run, stats)
        parts = resolve(cfg, nodes, output, run, stats) if nodes.count() else []
    funnel = _funnel(parts, stats, state)
    manifest = _manifest(cfg, inputs, output, started, run, funnel, stats)
    index.commit_run(output, {"run": run, "seq": int(run.split("-")[0]), "config_key": index.config_key(cfg),
                              "config": cfg.dedup.model_dump(mode="json"), "parts": {u: p["identity"] for u, p
                              in new_parts.items()}, "centroids": stats.get("centroids"), "manifest": manifest})
    index.drop_old_groups(state, run)
    manifest["resume"]["stale_parts_removed"] = tables.remove_stale(output, ["duplicates"], {p["pid"] for p in parts})
    tables.write_manifest(output, manifest)
    from pipelines.report_dataset import write_dedup_report

    write_dedup_report(output, manifest)
    return manifest
