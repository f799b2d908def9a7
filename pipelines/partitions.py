"""Partitioned outputs with completion markers: the unit of resume for every ReelForge job.

A job splits its sorted inputs into partitions of N. Partition `p` writes one Parquet file per
table (`{root}/{table}/part-{p}.parquet`) and then a marker (`{root}/_markers/{p}.json`) holding
its counts and the config fingerprint. A partition is complete only when its marker exists and
matches; a re-run skips complete partitions and rewrites partial ones under the same names, so
the final tables equal an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import signal
from dataclasses import dataclass

import pyarrow as pa

from infra import storage

MARKERS = "_markers"


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
        digest = hashlib.sha1("\n".join(chunk).encode()).hexdigest()[:8]
        parts.append(Partition(pid=f"{i // size:05d}-{digest}", uris=chunk))
    return parts


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


def completed(root: str, partitions: list[Partition], fingerprint: str) -> dict[str, dict]:
    """Markers of the partitions already complete under this config fingerprint."""
    done = {}
    existing = {posixpath.basename(u)[: -len(".json")] for u in storage.list_files(storage.join(root, MARKERS))
                if u.endswith(".json")}
    for p in partitions:
        if p.pid in existing:
            marker = read_marker(root, p.pid)
            if marker and marker.get("fingerprint") == fingerprint:
                done[p.pid] = marker
    return done


def write_partition(root: str, pid: str, tables: dict[str, pa.Table], fingerprint: str, counts: dict) -> dict:
    """Write each table's part file, then the marker last (the marker is the commit)."""
    for name, table in tables.items():
        storage.write_table(table, part_uri(root, name, pid))
    marker = {"pid": pid, "fingerprint": fingerprint, "counts": counts,
              "rows": {name: t.num_rows for name, t in tables.items()}}
    storage.write_text(marker_uri(root, pid), json.dumps(marker, sort_keys=True))
    _maybe_crash()
    return marker


_commits = 0


def _maybe_crash() -> None:
    """Fault injection for the reliability suite: REELFORGE_FAULT_CRASH_AFTER_COMMITS=N SIGKILLs this
    process group right after the N-th partition commit, exactly as a killed driver would die."""
    global _commits
    limit = os.environ.get("REELFORGE_FAULT_CRASH_AFTER_COMMITS")
    if not limit:
        return
    _commits += 1
    if _commits >= int(limit):
        os.killpg(os.getpgid(0), signal.SIGKILL)


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
