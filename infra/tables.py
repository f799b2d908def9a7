"""Partitioned tables with completion markers, failures rows and manifests: the machinery every job shares.

A job splits its inputs into partitions. Partition `p` writes one Parquet file per table
(`{root}/{table}/part-{p}.parquet`) and then a marker (`{root}/_markers/{p}.json`) holding its
counts and the config fingerprint. A partition is complete only when its marker exists and
matches; a re-run skips complete partitions and rewrites partial ones under the same names, so
the final tables equal an uninterrupted run's. Rows stream back from Ray in any order:
`commit_as_complete` commits each partition the moment its last row arrives.

Ray Data hands stages numpy batches; stages think in rows. `batch_rows`/`rows_batch` are the one
adapter between the two, and `map_rows` turns a row function into a batch function.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import logging
import math
import posixpath
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from infra import storage
from infra.config import ReelForgeConfig
from infra.faults import fault_point
from infra.schema import FAILURES_SCHEMA, table_from_rows

log = logging.getLogger(__name__)
MARKERS = "_markers"
Progress = Callable[[str, int, int], None]


# ----------------------------------------------------------------------------- rows <-> batches


def scalar(v: Any) -> Any:
    """A numpy scalar as the Python value (Arrow and JSON want plain types)."""
    return v.item() if isinstance(v, np.generic) else v


def none_if_nan(v: Any) -> Any:
    """Arrow<->numpy round trips turn a missing value into NaN; the tables want null."""
    return None if isinstance(v, float) and math.isnan(v) else v


def value(batch: dict[str, np.ndarray], key: str, i: int) -> Any:
    """Row i of a batch column as a Python value; None for a missing column, null or NaN."""
    column = batch.get(key)
    return None if column is None else none_if_nan(scalar(column[i]))


def batch_rows(batch: dict[str, np.ndarray]) -> list[dict]:
    """A Ray-style numpy batch as a list of row dicts of Python values."""
    names = list(batch)
    n = len(batch[names[0]]) if names else 0
    return [{k: scalar(batch[k][i]) for k in names} for i in range(n)]


def column(values: list) -> np.ndarray:
    """A 1-D object column; np.array would turn equal-length lists into a 2-D array."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def rows_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Row dicts back to a numpy batch; a key missing from a row is None there."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: column([r.get(k) for r in rows]) for k in keys}


def map_rows(batch: dict[str, np.ndarray], fn: Callable[[dict], dict]) -> dict[str, np.ndarray]:
    """Apply a row function to every row of a batch (the stage contract: batch in, batch out)."""
    return rows_batch([fn(r) for r in batch_rows(batch)])


# ----------------------------------------------------------------------------- partitions


@dataclass(frozen=True)
class Partition:
    pid: str
    uris: tuple[str, ...]


def plan(uris: list[str], size: int) -> list[Partition]:
    """Deterministic partitions of sorted URIs; the id hashes its members so a changed input set
    never reuses a stale partition."""
    parts = []
    for i in range(0, len(uris), size):
        chunk = tuple(uris[i : i + size])
        parts.append(Partition(pid=f"{i // size:05d}-{digest(chunk)}", uris=chunk))
    return parts


def digest(items: Iterable[str], n: int = 8) -> str:
    """Short sha1 of newline-joined strings: a partition id's content part."""
    return hashlib.sha1("\n".join(items).encode()).hexdigest()[:n]


def marker_uri(root: str, pid: str) -> str:
    return storage.join(root, MARKERS, f"{pid}.json")


def part_uri(root: str, table: str, pid: str) -> str:
    return storage.join(root, table, f"part-{pid}.parquet")


def read_marker(root: str, pid: str) -> dict | None:
    uri = marker_uri(root, pid)
    if not storage.exists(uri):
        return None
    try:
        return json.loads(storage.read_text(uri))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a marker we cannot read is not a completion


def completed(root: str, partitions: list[Partition], fingerprint: str | dict[str, str]) -> dict[str, dict]:
    """Markers of the partitions already complete under their fingerprint (one for all, or per pid)."""
    done = {}
    existing = {posixpath.basename(u)[: -len(".json")] for u in storage.list_files(storage.join(root, MARKERS))
                if u.endswith(".json")}
    for p in partitions:
        want = fingerprint[p.pid] if isinstance(fingerprint, dict) else fingerprint
        if p.pid in existing:
            marker = read_marker(root, p.pid)
            if marker and marker.get("fingerprint") == want:
                done[p.pid] = marker
    return done


def write_partition(root: str, pid: str, tables: dict[str, pa.Table], fingerprint: str, counts: dict,
                    parquet: dict | None = None) -> dict:
    """Write each table's part file, then the marker last (the marker is the commit); `parquet`:
    pyarrow write options for the table of that name."""
    for name, table in tables.items():
        storage.write_table(table, part_uri(root, name, pid), **(parquet or {}).get(name, {}))
    marker = {"pid": pid, "fingerprint": fingerprint, "counts": counts,
              "rows": {name: t.num_rows for name, t in tables.items()}}
    storage.write_text(marker_uri(root, pid), json.dumps(marker, sort_keys=True))
    fault_point("commit")
    return marker


def remove_stale(root: str, tables: list[str], keep: set[str]) -> int:
    """Delete part files and markers of partitions not in the current plan; returns how many."""
    removed = 0
    for name in tables:
        for uri in storage.list_files(storage.join(root, name)):
            base = posixpath.basename(uri)
            if base.startswith("part-") and base.endswith(".parquet") and base[5:-8] not in keep:
                storage.delete(uri)
                removed += 1
    for uri in storage.list_files(storage.join(root, MARKERS)):
        if posixpath.basename(uri)[:-5] not in keep:
            storage.delete(uri)
    return removed


def commit_as_complete(rows: Iterable[dict], expected: dict[str, int], commit: Callable[[str, list[dict]], Any],
                       key: str = "partition", progress: Progress | None = None, unit: str = "item") -> None:
    """Buffer streamed rows by `row[key]` and commit a partition as soon as all its rows are in.

    `expected` maps partition id -> rows it will get; a partition expecting none is not waited for.
    Raises when the stream ends with a partition still short of rows (a lost row is an error).
    """
    waiting = {pid: n for pid, n in expected.items() if n}
    buffers: dict[str, list[dict]] = collections.defaultdict(list)
    for row in rows:
        pid = row[key]
        buffers[pid].append({k: none_if_nan(v) for k, v in row.items()})
        if progress:
            progress(unit, 1, 0)
        if len(buffers[pid]) == waiting.get(pid):
            commit(pid, buffers.pop(pid))
            del waiting[pid]
    if waiting:
        raise RuntimeError(f"the dataset ended without every row of partitions {sorted(waiting)}")


def open_output(cfg: ReelForgeConfig, output: str) -> None:
    """Point storage at the config's S3 settings, create `output` and write its config.yaml."""
    configure_storage(cfg)
    storage.makedirs(output)
    storage.write_text(storage.join(output, "config.yaml"), cfg.to_yaml())


def configure_storage(cfg: ReelForgeConfig) -> None:
    s = cfg.storage
    storage.configure(s.s3_endpoint, s.region, s.retries, s.backoff_s)


# ----------------------------------------------------------------------------- failures


def split_error(message: str) -> tuple[str, str]:
    """'RuntimeError: cannot decode ...' -> ('RuntimeError', 'cannot decode ...')."""
    head, sep, rest = message.partition(": ")
    return (head, rest) if sep and head.isidentifier() else ("Error", message)


def failure_row(uri: str | None, stage: str, message: str, *, error_type: str | None = None,
                video_id: str | None = None, clip_id: str | None = None) -> dict:
    """One failures-table row; without `error_type` it is read from a 'Type: message' text."""
    etype, text = (error_type, message) if error_type else split_error(message)
    return {"uri": uri, "video_id": video_id, "clip_id": clip_id, "stage": stage, "error_type": etype,
            "message": text}


def failures_table(rows: list[dict]) -> pa.Table:
    return table_from_rows(rows, FAILURES_SCHEMA)


# ----------------------------------------------------------------------------- manifests

_PACKAGES = ("reelforge", "ray", "torch", "pyarrow", "av", "scenedetect", "decord", "deepspeed",
             "transformers", "open_clip_torch")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_sha() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def sum_counts(markers: dict[str, dict]) -> dict:
    """Add up the per-partition counts of every committed partition."""
    total: collections.Counter = collections.Counter()
    by_stage: collections.Counter = collections.Counter()
    by_type: collections.Counter = collections.Counter()
    for m in markers.values():
        c = m["counts"]
        by_stage.update(c.get("failed_by_stage", {}))
        by_type.update(c.get("failed_by_type", {}))
        total.update({k: v for k, v in c.items() if isinstance(v, (int, float))})
    return {**total, "failed": sum(by_stage.values()), "failed_by_stage": dict(by_stage),
            "failed_by_type": dict(by_type)}


def manifest_header(job: str, source: str, output: str, started: float) -> dict:
    """The fields every manifest opens with: what ran, on what, into where, and when."""
    finished = time.time()
    return {"job": job, "input": source, "output": output, "started": iso(started), "finished": iso(finished),
            "wall_s": round(finished - started, 3)}


def manifest_footer(cfg: ReelForgeConfig, plan_size: int, skipped: int, removed_stale: int) -> dict:
    """The fields every manifest closes with: resume accounting, the config, versions and git sha."""
    return {"resume": {"partitions": plan_size, "skipped_complete": skipped, "processed": plan_size - skipped,
                       "stale_parts_removed": removed_stale},
            "config": cfg.to_dict(), "versions": package_versions(), "git_sha": git_sha()}


def write_manifest(output: str, manifest: dict) -> None:
    storage.write_text(storage.join(output, "manifest.json"), json.dumps(manifest, indent=2, sort_keys=False))
