"""Arrow schemas and column names of every ReelForge table (see DESIGN.md: Tables), and the
latents table's tensor codec.

Tensors are stored as their raw bytes (`tensor.contiguous().view(uint8)`), with shape and dtype in
sibling columns; bfloat16 has no numpy dtype, so the codec goes through torch only.
"""

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
        ("media_type", pa.string()),  # "video" or "image" (a one-frame clip); null in tables made before
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
    ("split_method", pa.string()),  # "image" for a still image's one clip
    ("media_type", pa.string()),  # "video" or "image": an image is one frame (no fps, no seconds, no motion)
]
# Measures: filled by the measure stages (pipelines/measures/), null when a measure is off.
CLIP_MEASURE_FIELDS = [
    ("motion", pa.float64()),  # mean optical-flow magnitude, px/frame at curate.measures.short_side
    ("static", pa.bool_()),  # motion below curate.measures.static_motion
    ("sharpness", pa.float64()),  # variance of the Laplacian at the measure size
    ("brightness", pa.float64()),  # mean luma, 0..255
    ("black_ratio", pa.float64()),  # share of sampled frames that are black
    ("washed_ratio", pa.float64()),  # share of sampled frames that are washed out
    ("text_ratio", pa.float64()),  # share of the frame covered by detected text (mean over frames)
    ("aesthetic", pa.float64()),  # open_clip + linear/MLP head score, when weights are given
    ("embedding", pa.list_(pa.float16())),  # L2-normalised open_clip image embedding, for dedup
    ("phash", pa.string()),  # 64-bit perceptual hash of the sampled frames, 16 hex digits
    ("nsfw_score", pa.float64()),  # highest NudeNet unsafe-class score over the sampled frames (safety)
]
# Decisions: rewritten at the end of every curate job and by `curate --refilter`.
CLIP_DECISION_FIELDS = [
    ("dup_of", pa.string()),  # clip_id of the kept clip this one duplicates
    ("keep", pa.bool_()),
    ("drop_reason", pa.string()),  # the first failing filter's key, "unsafe" (max_nsfw) or "duplicate"
    ("clip_uri", pa.string()),  # the materialized mp4, when curate.materialize.enabled
]
CLIPS_SCHEMA = pa.schema(CLIP_CORE_FIELDS + CLIP_MEASURE_FIELDS + CLIP_DECISION_FIELDS)

# ----------------------------------------------------------------------------- dataset-scale curation
# `reelforge dedup`: one row per clip in a near-duplicate group, across every indexed curate output.
DUPLICATES_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("group_id", pa.string()),  # the clip_id of the group's kept clip
        ("kept", pa.bool_()),  # false: caption and precompute skip it (selection.duplicates)
        ("kind", pa.string()),  # what linked it: "perceptual", "semantic" or "perceptual+semantic"
        ("source", pa.string()),  # the curate output root it came from
        ("score", pa.float64()),  # dedup.score's value (duration, sharpness or aesthetic); null: none
        ("rank_key", pa.string()),  # sortable (score desc, clip_id): the smallest in a group is kept
        ("group_key", pa.string()),  # the kept clip's rank_key
    ]
)
# `reelforge balance`: one row per clip it clustered.
WEIGHTS_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("cluster", pa.int32()),  # k-means cluster of its embedding (a concept)
        ("cluster_size", pa.int64()),  # clips in the cluster before the cap
        ("sample_weight", pa.float64()),  # training sampler weight, mean 1 over the clips kept after the cap
        ("keep_prob", pa.float64()),  # min(1, cap / cluster_size): joins precompute's keep draw
        ("source", pa.string()),
    ]
)

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


# ----------------------------------------------------------------------------- latents
LATENTS_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("caption", pa.string()),
        ("latent", pa.binary()),  # raw little-endian tensor bytes, see training/data.py
        ("latent_shape", pa.list_(pa.int32())),  # (C, T, H, W)
        ("latent_dtype", pa.string()),  # "bfloat16" | "float16" | "float32"
        ("text_emb", pa.binary()),
        ("text_emb_shape", pa.list_(pa.int32())),  # (L, D): only the real tokens, L == text_len
        ("text_len", pa.int32()),
        ("vae", pa.string()),  # the VAE spec that encoded it (decode with the same)
        ("vae_id", pa.string()),  # class:config hash-weights fingerprint (training/models/latents.py)
        ("latent_norm", pa.string()),  # JSON: family, compression, normalisation (mean, std, scale), random
        ("text_encoder", pa.string()),
        ("bucket", pa.string()),  # latent "TxHxW", e.g. "5x8x8"
        ("fps", pa.float64()),  # of the pixels that were encoded (after frame stride)
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("num_frames", pa.int32()),
        ("sample_weight", pa.float64()),  # from selection.weights (reelforge balance); null: none given
    ]
)
# The latents columns with min/max statistics in Parquet footers: the training plan reads `bucket`,
# `vae` and `text_encoder` there (training/plan.py). The tensor bytes get none: as min/max they
# would copy two blobs into the footer for every row group.
LATENTS_STATISTICS = ["clip_id", "caption", "latent_dtype", "text_len", "vae", "text_encoder", "bucket", "fps",
                      "height", "width", "num_frames", "vae_id", "latent_norm"]


# ----------------------------------------------------------------------------- the tensor codec
LATENT_DTYPES = ("bfloat16", "float16", "float32")


def _torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def tensor_to_bytes(x, dtype: str) -> bytes:
    """Cast a torch tensor to `dtype` and return the raw bytes (C order)."""
    import torch

    return x.detach().to("cpu", _torch_dtype(dtype)).contiguous().view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(data: bytes, shape, dtype: str):
    """Inverse of tensor_to_bytes: the exact stored values, as a new torch tensor of `shape`."""
    import torch

    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return raw.view(_torch_dtype(dtype)).reshape(tuple(int(s) for s in shape)).clone()
