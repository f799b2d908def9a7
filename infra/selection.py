"""What caption and precompute honour from dataset-scale curation (the `selection:` config section).

- `selection.duplicates`: a `reelforge dedup` output; its clips with kept=false are skipped.
- `selection.weights`: a `reelforge balance` output; a clip is kept with its `keep_prob` (a
  deterministic draw per clip_id, the same in caption and precompute) and carries `sample_weight`
  into the latents table for the training sampler.
Clips the selection does not mention pass unchanged (weight 1).
"""

from __future__ import annotations

import functools
import hashlib
import json

import numpy as np
import pyarrow as pa

from infra import storage
from infra.config import ReelForgeConfig
from infra.schema import DUPLICATES_SCHEMA, WEIGHTS_SCHEMA


@functools.lru_cache(maxsize=4)
def removed_ids(root: str, run: str) -> frozenset[str]:
    """clip_ids a dedup output removes (kept=false); cached per process and run."""
    t = storage.read_table(storage.join(root, "duplicates"), schema=DUPLICATES_SCHEMA, columns=["clip_id", "kept"])
    return frozenset(c for c, k in zip(t["clip_id"].to_pylist(), t["kept"].to_pylist()) if k is False)


@functools.lru_cache(maxsize=4)
def _weights(root: str, run: str) -> dict[str, tuple[float, float]]:
    t = storage.read_table(storage.join(root, "weights"), schema=WEIGHTS_SCHEMA,
                           columns=["clip_id", "keep_prob", "sample_weight"])
    return dict(zip(t["clip_id"].to_pylist(), zip(t["keep_prob"].to_pylist(), t["sample_weight"].to_pylist())))


def run_of(root: str) -> str:
    """The finished run of a dedup/balance output (its manifest's run and finish time)."""
    uri = storage.join(root, "manifest.json")
    if not storage.exists(uri):
        raise FileNotFoundError(f"{root} has no manifest.json: run `reelforge dedup` / `reelforge balance` into it first")
    m = json.loads(storage.read_text(uri))
    return f"{m.get('run', '')}@{m.get('finished', '')}"


def identity(cfg: ReelForgeConfig) -> str:
    """"" without a selection, else what changes when a selected output is rebuilt (for fingerprints)."""
    s = cfg.selection
    if not (s.duplicates or s.weights):
        return ""
    text = "|".join(f"{root}={run_of(root)}" for root in (s.duplicates, s.weights) if root)
    return "-sel" + hashlib.sha1(text.encode()).hexdigest()[:8]


def keep_draw(clip_id: str) -> float:
    """A uniform draw in [0, 1) per clip, independent of precompute's per-bucket draw."""
    return int(hashlib.sha1(f"balance:{clip_id}".encode()).hexdigest()[:13], 16) / 16**13


def _skipped(table: pa.Table, cfg: ReelForgeConfig) -> tuple[np.ndarray, dict[str, int], dict]:
    """(n,) True where the selection skips a clip curate kept, the skips per reason, and the weights."""
    s = cfg.selection
    ids = table["clip_id"].to_pylist()
    kept = [k is not False for k in table["keep"].to_pylist()] if "keep" in table.column_names else [True] * len(ids)
    removed = removed_ids(s.duplicates, run_of(s.duplicates)) if s.duplicates else frozenset()
    weights = _weights(s.weights, run_of(s.weights)) if s.weights else {}
    skip = np.zeros(len(ids), bool)
    counts = {"duplicate": 0, "balance_cap": 0}
    for i, (cid, k) in enumerate(zip(ids, kept)):
        reason = None
        if k and cid in removed:
            reason = "duplicate"
        elif k and cid in weights and keep_draw(cid) >= weights[cid][0]:
            reason = "balance_cap"
        if reason:
            skip[i], counts[reason] = True, counts[reason] + 1
    return skip, {k: v for k, v in counts.items() if v}, weights


def apply(table: pa.Table, cfg: ReelForgeConfig) -> tuple[pa.Table, dict[str, int]]:
    """The rows the selection keeps (+ `sample_weight` with weights), and how many it skipped per reason.

    Only clips curate kept are skipped here; a clip with keep=false passes on for the caller to count.
    """
    if not (cfg.selection.duplicates or cfg.selection.weights):
        return table, {}
    skip, counts, weights = _skipped(table, cfg)
    out = table.filter(pa.array(~skip))
    if cfg.selection.weights:
        w = [weights.get(c, (1.0, 1.0))[1] for c in out["clip_id"].to_pylist()]
        out = out.append_column("sample_weight", pa.array(w, pa.float64()))
    return out, counts


def unselect(table: pa.Table, cfg: ReelForgeConfig) -> pa.Table:
    """The same rows in the same order, with keep=false where the selection skips a clip."""
    if not (cfg.selection.duplicates or cfg.selection.weights):
        return table
    skip, _, _ = _skipped(table, cfg)
    if not skip.any():
        return table
    old = table["keep"].to_pylist() if "keep" in table.column_names else [None] * table.num_rows
    keep = pa.array([False if s else k for s, k in zip(skip, old)], pa.bool_())
    i = table.schema.get_field_index("keep")
    return table.set_column(i, "keep", keep) if i >= 0 else table.append_column("keep", keep)
