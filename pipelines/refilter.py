"""Decisions over the whole clips table: filters, then dedup among the clips that pass.

Run at the end of every curate job and by `reelforge curate --refilter`: it reads only the
columns the filters and dedup need (never video), and rewrites each clips part file with
`keep`, `drop_reason`, `dup_of` (and `clip_uri` after materializing). A part whose decisions did
not change is not rewritten, so downstream jobs that key on part files see no change.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infra import storage
from infra.config import CurateConfig, ReelForgeConfig, load_config
from pipelines import dedup, filters
from infra.schema import CLIPS_SCHEMA

log = logging.getLogger(__name__)
READ_COLUMNS = list(dict.fromkeys(["clip_id", "video_id", "uri", "start_frame", "end_frame", *filters.COLUMNS,
                                   "embedding", "phash", "clip_uri"]))


@dataclass
class Decisions:
    parts: list[str]
    offsets: list[int]  # row offset of each part in `table`
    table: pa.Table  # READ_COLUMNS of every part, concatenated
    keep: np.ndarray
    drop_reason: np.ndarray
    dup_of: np.ndarray
    dedup_method: str | None = None
    counts: dict = field(default_factory=dict)


def clip_parts(output: str) -> list[str]:
    return [u for u in storage.list_files(storage.join(output, "clips"), recursive=False)
            if posixpath.basename(u).startswith("part-") and u.endswith(".parquet")]


def _read_decision_columns(part: str) -> pa.Table:
    """READ_COLUMNS of one part; a part written before a column existed (e.g. nsfw_score) reads without it."""
    fs, path = storage.filesystem(part)
    names = set(storage.with_retries(lambda: pq.read_schema(path, filesystem=fs), f"read schema {part}").names)
    return storage.read_table(part, columns=[c for c in READ_COLUMNS if c in names])


def _dedup_inputs(table: pa.Table, idx: np.ndarray, method: str) -> tuple[str, np.ndarray, dict]:
    """Which method dedup uses and on which rows (clips without the value cannot be compared)."""
    emb = table["embedding"].combine_chunks()
    has_emb = ~np.asarray(emb.is_null().to_numpy(zero_copy_only=False), dtype=bool)[idx]
    if method == "embedding" or (method == "auto" and idx.size and has_emb.all()):
        rows = idx[has_emb]
        # Flattened in Arrow, not through Python lists: a million 512-d embeddings stay one array.
        flat = emb.take(pa.array(rows)).flatten().to_numpy(zero_copy_only=False)
        e = flat.astype(np.float32).reshape(len(rows), -1) if len(rows) else np.zeros((0, 1), np.float32)
        return "embedding", rows, {"embeddings": e}
    ph = table["phash"].to_pylist()
    rows = idx[np.array([ph[i] is not None for i in idx], dtype=bool)] if idx.size else idx
    return "phash", rows, {"phashes": [ph[i] for i in rows]}


def decide(output: str, cfg: CurateConfig) -> Decisions:
    """Read the clips table's decision columns and compute keep / drop_reason / dup_of."""
    parts = clip_parts(output)
    tables = [_read_decision_columns(p) for p in parts]
    offsets = list(np.cumsum([0] + [t.num_rows for t in tables]))
    empty = CLIPS_SCHEMA.empty_table().select(READ_COLUMNS)
    table = pa.concat_tables(tables, promote_options="default") if tables else empty
    keep, reason = filters.apply_filters(table, cfg.filters)
    dup_of = np.full(table.num_rows, None, dtype=object)
    method = None
    if cfg.dedup.enabled and keep.any():
        d = cfg.dedup
        method, rows, data = _dedup_inputs(table, np.flatnonzero(keep), d.method)
        ids = table["clip_id"].to_pylist()
        dur = filters.derived_values(table)["duration_s"]
        found = dedup.find_duplicates([ids[i] for i in rows], np.nan_to_num(dur[rows]), min_cosine=d.min_cosine,
                                      max_hamming=d.max_hamming, lsh_bands=d.lsh_bands, lsh_rows=d.lsh_rows,
                                      seed=d.seed, **data)
        for i, of in zip(rows, found):
            if of is not None:
                dup_of[i], keep[i], reason[i] = of, False, "duplicate"
    counts = {"clips": table.num_rows, "kept": int(keep.sum()), "dropped": int((~keep).sum()),
              "dropped_by_reason": filters.drop_counts(reason), "dedup_method": method}
    return Decisions(parts, offsets, table, keep, reason, dup_of, method, counts)


def _set(table: pa.Table, name: str, values) -> pa.Table:
    col = pa.array(list(values), type=CLIPS_SCHEMA.field(name).type)
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, col) if i >= 0 else table.append_column(CLIPS_SCHEMA.field(name), col)


def write(output: str, d: Decisions, clip_uris: dict[str, str | None] | None = None) -> int:
    """Rewrite the parts whose decisions changed; `clip_uris` (when given) sets clip_uri. Returns parts written."""
    written = 0
    for part, lo, hi in zip(d.parts, d.offsets, d.offsets[1:]):
        t = storage.read_table(part)
        new = _set(_set(_set(t, "keep", d.keep[lo:hi]), "drop_reason", d.drop_reason[lo:hi]), "dup_of", d.dup_of[lo:hi])
        if clip_uris is not None:
            new = _set(new, "clip_uri", [clip_uris.get(c) for c in t["clip_id"].to_pylist()])
        if not new.equals(t):
            storage.write_table(new, part)
            written += 1
    return written


def run_refilter(cfg: ReelForgeConfig, output: str) -> dict:
    """Re-apply curate.filters and curate.dedup to an existing output: no video is decoded."""
    t0 = time.perf_counter()
    storage.configure(cfg.storage.s3_endpoint, cfg.storage.region, cfg.storage.retries, cfg.storage.backoff_s)
    if not clip_parts(output):
        raise FileNotFoundError(f"no clips table under {output}: run `reelforge curate` first")
    d = decide(output, cfg.curate)
    written = write(output, d)
    manifest_uri = storage.join(output, "manifest.json")
    manifest = json.loads(storage.read_text(manifest_uri)) if storage.exists(manifest_uri) else {"output": output}
    manifest.setdefault("counts", {}).update(kept=d.counts["kept"], dropped_by_reason=d.counts["dropped_by_reason"])
    manifest.setdefault("stages", {})["filters"] = {"in": d.counts["clips"], "kept": d.counts["kept"],
                                                    "dropped_by_reason": d.counts["dropped_by_reason"],
                                                    "dedup_method": d.dedup_method}
    manifest.setdefault("config", {}).setdefault("curate", {}).update(
        filters=cfg.curate.filters.model_dump(mode="json"), dedup=cfg.curate.dedup.model_dump(mode="json"))
    manifest["refiltered"] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parts_rewritten": written,
                              "wall_s": round(time.perf_counter() - t0, 3), "dedup_method": d.dedup_method}
    storage.write_text(manifest_uri, json.dumps(manifest, indent=2))
    storage.write_text(storage.join(output, "config.yaml"), cfg.to_yaml())
    if cfg.curate.report:
        from pipelines.report import write_report

        write_report(output, cfg, decode=False)
    log.info("refilter: %d clips, %d kept, %d parts rewritten", d.counts["clips"], d.counts["kept"], written)
    return {**d.counts, "parts_rewritten": written, "wall_s": round(time.perf_counter() - t0, 3)}


def load_output_config(output: str, path: str | None, overrides: list[str]) -> ReelForgeConfig:
    """`path` when given, else the config `output` was curated with (its config.yaml), then `--set` overrides."""
    if path:
        return load_config(path, overrides)
    uri = storage.join(output, "config.yaml")
    if not storage.exists(uri):
        return load_config(None, overrides)
    with tempfile.TemporaryDirectory() as d:
        local = os.path.join(d, "config.yaml")
        with open(local, "w") as f:
            f.write(storage.read_text(uri))
        return load_config(local, overrides)
