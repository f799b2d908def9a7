"""The dedup job's index under DST/index: what earlier runs saw, so a later run reads only what it needs.

```
index/runs/{run}.json                 one per committed run: its input parts (URI -> size:mtime), counts
index/perceptual/{bucket}/{run}.parquet   a run's pHash band rows, by hash bucket of (band, value)
index/semantic/{cluster}/{run}.parquet    a run's embeddings, by k-means cluster
index/semantic/centroids-{run}.parquet    the centroids, fitted by the first semantic run and kept
index/groups/{run}/part-*.parquet      the duplicates table after the run: the next run's groups
```
A run is committed when its runs/{run}.json exists (written last); files of runs that never
committed are ignored and removed. A later run lists only the --input roots it is given, skips
parts already indexed with the same size and mtime, and reads index rows only from the buckets
(or clusters) that its new clips fall in.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from infra import storage, tables
from infra.config import ReelForgeConfig

RUNS = ("index", "runs")
KINDS = ("perceptual", "semantic")


class DedupInputError(ValueError):
    """An input that cannot be deduplicated as given (no clips table, or one that changed after indexing)."""


@dataclass
class IndexState:
    output: str
    runs: list[dict]  # committed runs, oldest first
    files: set[str] = field(default_factory=set)  # every file under index/ (one listing)

    @property
    def last(self) -> dict | None:
        return self.runs[-1] if self.runs else None

    def known_parts(self) -> dict[str, str]:
        return {uri: ident for r in self.runs for uri, ident in r["parts"].items()}

    def bucket_files(self, kind: str, buckets) -> list[str]:
        """Index files of committed runs in the given buckets (clusters), and no others."""
        want = [bucket_uri(self.output, kind, int(b), r["run"]) for b in buckets for r in self.runs]
        return [u for u in want if u in self.files]

    def total_files(self, kind: str) -> int:
        committed = {r["run"] for r in self.runs}
        prefix = storage.join(self.output, "index", kind) + "/"
        return sum(1 for u in self.files if u.startswith(prefix) and _run_of(u) in committed
                   and not posixpath.basename(u).startswith("centroids"))

    def groups_uri(self) -> str | None:
        return storage.join(self.output, "index", "groups", self.last["run"]) if self.last else None


def _run_of(uri: str) -> str:
    """The run that wrote an index file: groups/{run}/..., centroids-{run}.parquet or {bucket}/{run}.parquet."""
    if "/index/groups/" in uri:
        return uri.split("/index/groups/", 1)[1].split("/", 1)[0]
    base = posixpath.basename(uri)
    return base[: -len(".parquet")].rsplit("centroids-", 1)[-1]


def bucket_uri(output: str, kind: str, bucket: int, run: str) -> str:
    return storage.join(output, "index", kind, f"{bucket:05d}", f"{run}.parquet")


def centroids_uri(output: str, run: str) -> str:
    return storage.join(output, "index", "semantic", f"centroids-{run}.parquet")


def config_key(cfg: ReelForgeConfig) -> str:
    """The dedup settings an index is bound to (partitions and rounds only shape the work, not the rows)."""
    return cfg.fingerprint("dedup", exclude=("dedup.partitions", "dedup.max_rounds", "dedup.shuffle"))


def load_state(output: str) -> IndexState:
    runs_dir = storage.join(output, *RUNS)
    runs = [json.loads(storage.read_text(u)) for u in storage.list_files(runs_dir) if u.endswith(".json")]
    runs.sort(key=lambda r: r["seq"])
    return IndexState(output, runs, set(storage.list_files(storage.join(output, "index"))))


def check_config(state: IndexState, cfg: ReelForgeConfig) -> None:
    if state.last and state.last["config_key"] != config_key(cfg):
        raise DedupInputError(f"the index under {state.output} was built with other dedup settings "
                              f"({state.last['config']}); dedup into a new --output to use these")


def plan_inputs(roots: list[str], state: IndexState) -> tuple[dict[str, dict], int]:
    """({part URI: {"identity", "source"}} not indexed yet, parts already indexed) over the --input roots."""
    known = state.known_parts()
    new, skipped = {}, 0
    for root in roots:
        parts = {u: i for u, i in storage.file_identities(storage.join(root, "clips")).items()
                 if posixpath.basename(u).startswith("part-") and u.endswith(".parquet")}
        if not parts:
            raise DedupInputError(f"no clips table under {root}: expected {storage.join(root, 'clips', 'part-*.parquet')}"
                                  " (the output root of `reelforge curate`)")
        for uri, ident in parts.items():
            if uri not in known:
                new[uri] = {"identity": ident, "source": root.rstrip("/")}
            elif known[uri] == ident:
                skipped += 1
            else:
                raise DedupInputError(f"{uri} changed after an earlier dedup run indexed it (re-curated?); "
                                      "its old rows cannot be taken out of the index: dedup into a new --output")
    return new, skipped


def run_id(state: IndexState, cfg: ReelForgeConfig, parts: dict[str, dict]) -> str:
    """`{seq}-{digest}`: the same new parts on the same index get the same id, so a crashed run redoes itself."""
    seq = (state.last["seq"] + 1) if state.last else 0
    prev = state.last["run"] if state.last else ""
    items = [config_key(cfg), prev, *(f"{u}={p['identity']}" for u, p in sorted(parts.items()))]
    return f"{seq:05d}-{tables.digest(items, 10)}"


def remove_uncommitted(state: IndexState) -> int:
    """Delete index files of runs that never committed (a crash left them); returns how many."""
    committed = {r["run"] for r in state.runs}
    stale = [u for u in state.files if "/index/runs/" not in u and _run_of(u) not in committed]
    for u in stale:
        storage.delete(u)
    state.files -= set(stale)
    return len(stale)


def commit_run(output: str, marker: dict) -> None:
    storage.write_text(storage.join(output, *RUNS, f"{marker['run']}.json"), json.dumps(marker, indent=2))


def drop_old_groups(state: IndexState, keep_run: str) -> None:
    """Only the newest committed groups are ever read again."""
    for u in state.files:
        if "/index/groups/" in u and _run_of(u) != keep_run:
            storage.delete(u)


def write_centroids(output: str, run: str, centroids: np.ndarray) -> str:
    uri = centroids_uri(output, run)
    storage.write_table(pa.table({"centroid": pa.array(list(centroids.astype(np.float32)),
                                                      pa.list_(pa.float32()))}), uri)
    return uri


def read_centroids(uri: str) -> np.ndarray:
    col = storage.read_table(uri)["centroid"].combine_chunks()
    return col.flatten().to_numpy().astype(np.float32).reshape(len(col), -1)
