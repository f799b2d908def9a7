"""Arrow schemas and column names of every ReelForge table (see DESIGN.md: Tables)."""

from __future__ import annotations

import hashlib

import pyarrow as pa

# ----------------------------------------------------------------------------- videos
VIDEOS_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),  # stable hash of the URI
        ("uri", pa.string()),
        ("status", pa.string()),  # "ok" or "failed"
        ("error", pa.string()),
        ("size_bytes", pa.int64()),
        ("container", pa.string()),
        ("codec", pa.string()),
        ("width", pa.int32()),  # as displayed, after rotation
        ("height", pa.int32()),
        ("rotation", pa.int32()),
        ("fps", pa.float64()),  # average
        ("vfr", pa.bool_()),
        ("num_frames", pa.int64()),  # counted by decoding when the header is missing or wrong
        ("duration_s", pa.float64()),
        ("has_audio", pa.bool_()),
    ]
)

# ----------------------------------------------------------------------------- clips
CLIP_CORE_FIELDS = [
    ("clip_id", pa.string()),  # f"{video_id}-{start_frame:07d}"
    ("video_id", pa.string()),
    ("uri", pa.string()),
    ("start_frame", pa.int64()),
    ("end_frame", pa.int64()),  # exclusive
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("num_frames", pa.int64()),
    ("fps", pa.float64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("split_method", pa.string()),
]
CLIPS_SCHEMA = pa.schema(CLIP_CORE_FIELDS)

# ----------------------------------------------------------------------------- failures
FAILURES_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("video_id", pa.string()),
        ("clip_id", pa.string()),
        ("stage", pa.string()),  # ingest, probe, split, measure:<name>, caption, precompute, ...
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)


def video_id_for(uri: str) -> str:
    """Stable 16-hex-digit id of a video URI."""
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:16]


def clip_id_for(video_id: str, start_frame: int) -> str:
    return f"{video_id}-{int(start_frame):07d}"


def table_from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) to a table with exactly `schema`; extra keys are an error, missing are null."""
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise KeyError(f"columns not in schema: {sorted(extra)}")
    cols = {f.name: pa.array([r.get(f.name) for r in rows], type=f.type) for f in schema}
    return pa.table(cols, schema=schema)
