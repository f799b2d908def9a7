"""Filters: thresholds from curate.filters applied to clips that keep their measures.

A clip that fails stays in the table with keep=false and drop_reason = the key of the first
filter it fails (in FILTERS order; `max_nsfw` says "unsafe" and comes first, so an unsafe clip is
always reported as unsafe), so thresholds can be re-tuned later without decoding video.
A missing measure (the measure was off, or the clip has no value) never fails a filter.
"""

from __future__ import annotations

import collections

import numpy as np
import pyarrow as pa

from infra.config import FiltersConfig

# (config key, derived value, "min" or "max"): the order decides which reason a clip gets.
FILTERS = [
    ("max_nsfw", "nsfw_score", "max"),
    ("min_duration_s", "duration_s", "min"), ("max_duration_s", "duration_s", "max"),
    ("min_short_side", "short_side", "min"),
    ("min_aspect", "aspect", "min"), ("max_aspect", "aspect", "max"),
    ("min_fps", "fps", "min"), ("max_fps", "fps", "max"),
    ("max_black_ratio", "black_ratio", "max"), ("max_washed_ratio", "washed_ratio", "max"),
    ("min_brightness", "brightness", "min"), ("max_brightness", "brightness", "max"),
    ("min_sharpness", "sharpness", "min"),
    ("min_motion", "motion", "min"), ("max_motion", "motion", "max"),
    ("max_text_ratio", "text_ratio", "max"),
    ("min_aesthetic", "aesthetic", "min"),
]
# The clips columns the filters read (nothing else is needed to re-filter).
COLUMNS = ["start_s", "end_s", "width", "height", "fps", "black_ratio", "washed_ratio", "brightness",
           "sharpness", "motion", "text_ratio", "aesthetic", "nsfw_score"]
# The drop_reason a filter writes, where it is not the filter's own key.
REASONS = {"max_nsfw": "unsafe"}


def _floats(table: pa.Table, name: str) -> np.ndarray:
    """A column as float64 with NaN for nulls (and for a column the table lacks)."""
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    col = table[name].cast(pa.float64())
    return np.asarray(col.fill_null(np.nan).to_numpy(), dtype=np.float64)


def derived_values(table: pa.Table) -> dict[str, np.ndarray]:
    """The values the filters compare: measure columns plus duration, short side and aspect."""
    v = {c: _floats(table, c) for c in COLUMNS}
    with np.errstate(divide="ignore", invalid="ignore"):
        v["duration_s"] = v["end_s"] - v["start_s"]
        v["short_side"] = np.fmin(v["width"], v["height"])
        v["aspect"] = v["width"] / v["height"]
    return v


def apply_filters(table: pa.Table, cfg: FiltersConfig) -> tuple[np.ndarray, np.ndarray]:
    """(keep (n,) bool, drop_reason (n,) object: None or the first failing filter's key)."""
    values = derived_values(table)
    reason = np.full(table.num_rows, None, dtype=object)
    for key, name, kind in FILTERS:
        threshold = getattr(cfg, key)
        if threshold is None:
            continue
        x = values[name]
        with np.errstate(invalid="ignore"):
            fails = (x < threshold) if kind == "min" else (x > threshold)  # NaN compares False: passes
        reason[fails & (reason == None)] = REASONS.get(key, key)  # noqa: E711 - elementwise on an object array
    return reason == None, reason  # noqa: E711


def drop_counts(reasons) -> dict[str, int]:
    """{reason: clips dropped for it}, in filter order then "duplicate"."""
    counts = collections.Counter(r for r in reasons if r is not None)
    order = [REASONS.get(k, k) for k, _, _ in FILTERS] + ["duplicate"]
    return {k: counts[k] for k in order if counts.get(k)}
