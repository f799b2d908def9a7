"""Existing captions for clips: sidecar files next to the videos, or a manifest file (no Ray here).

Sidecars: `VIDEO.json` beside `VIDEO.mp4` is a list of scenes {start_frame, end_frame (exclusive),
start_s, end_s, caption, attributes} (what `reelforge demo-data` writes); a clip takes the caption
of the scene it overlaps most (frames when both sides have them, else seconds). `VIDEO.txt` holds
one caption for the whole file. A manifest is a Parquet or CSV file with `caption` and `uri` (the
whole file's caption) or `clip_id` (one clip's) columns.

`apply_existing_captions` is the caption job's extra step (caption.source != "model"): it fills
`caption` from these sources and adds `caption_source` (and `caption_model_text`, the model's text,
for "sidecar+model").
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import posixpath

import pyarrow as pa
import pyarrow.csv as pacsv

from infra import storage
from infra.schema import FAILURES_SCHEMA, table_from_rows

ERROR_STAGE = "caption:existing"


# ----------------------------------------------------------------------------- sidecars
def sidecar_uris(uri: str) -> tuple[str, str]:
    """(VIDEO.json, VIDEO.txt) beside a video URI (local path or s3://)."""
    stem = posixpath.splitext(uri)[0]
    return stem + ".json", stem + ".txt"


@functools.lru_cache(maxsize=4096)
def read_sidecar(uri: str) -> list[dict] | str | None:
    """The scenes of VIDEO.json, else the text of VIDEO.txt, else None (cached per video)."""
    json_uri, txt_uri = sidecar_uris(uri)
    for candidate in (json_uri, txt_uri):
        try:
            data = storage.read_bytes(candidate)
        except FileNotFoundError:
            continue
        if candidate == txt_uri:
            return data.decode("utf-8").strip() or None
        scenes = json.loads(data)
        if not isinstance(scenes, list):
            raise ValueError(f"{json_uri}: expected a list of scenes, got {type(scenes).__name__}")
        return scenes
    return None


def _overlap(a0, a1, b0, b1) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def best_scene(scenes: list[dict], start_s=None, end_s=None, start_frame=None, end_frame=None) -> dict | None:
    """The scene overlapping the clip most (frames when both have them, else seconds); None if none."""
    best, best_overlap = None, 0.0
    for s in scenes:
        if start_frame is not None and end_frame is not None and s.get("start_frame") is not None:
            o = _overlap(start_frame, end_frame, s["start_frame"], s["end_frame"])
        elif start_s is not None and end_s is not None:
            o = _overlap(start_s, end_s, s["start_s"], s["end_s"])
        else:
            raise ValueError("a clip needs start_s/end_s or start_frame/end_frame to find its scene")
        if o > best_overlap:
            best, best_overlap = s, o
    return best


def sidecar_caption(uri: str, start_s=None, end_s=None, start_frame=None, end_frame=None) -> str | None:
    """The caption of a clip of `uri` from its sidecar, or None when there is none for it."""
    data = read_sidecar(uri)
    if data is None or isinstance(data, str):
        return data
    scene = best_scene(data, start_s, end_s, start_frame, end_frame)
    return scene["caption"] if scene else None


# ----------------------------------------------------------------------------- manifests
@functools.lru_cache(maxsize=8)
def read_manifest(uri: str) -> tuple[dict[str, str], dict[str, str]]:
    """({uri: caption}, {clip_id: caption}) from a Parquet or CSV manifest."""
    data = storage.read_bytes(uri)
    if uri.lower().endswith((".csv", ".tsv")):
        opts = pacsv.ParseOptions(delimiter="\t" if uri.lower().endswith(".tsv") else ",")
        table = pacsv.read_csv(pa.BufferReader(data), parse_options=opts)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(pa.BufferReader(data))
    cols = table.column_names
    if "caption" not in cols or not ({"uri", "clip_id"} & set(cols)):
        raise ValueError(f"caption manifest {uri}: needs a 'caption' column and 'uri' or 'clip_id', has {cols}")
    rows = table.to_pylist()
    by_uri = {r["uri"]: r["caption"] for r in rows if r.get("uri") and r.get("caption")}
    by_clip = {r["clip_id"]: r["caption"] for r in rows if r.get("clip_id") and r.get("caption")}
    return by_uri, by_clip


def manifest_caption(manifest: str, uri: str, clip_id: str | None = None) -> str | None:
    """A clip's caption from the manifest: its clip_id row first, then its video's uri row."""
    by_uri, by_clip = read_manifest(manifest)
    return (clip_id and by_clip.get(clip_id)) or by_uri.get(uri)


def existing_caption(row: dict, source: str, manifest: str | None = None) -> tuple[str | None, str | None]:
    """(caption, 'sidecar' | 'manifest') for a clip row (uri, start/end seconds and frames), or (None, None)."""
    uri = row["uri"]
    if source in ("sidecar", "sidecar+model"):
        text = sidecar_caption(uri, row.get("start_s"), row.get("end_s"), row.get("start_frame"), row.get("end_frame"))
        if text:
            return text, "sidecar"
    if manifest:
        text = manifest_caption(manifest, uri, row.get("clip_id"))
        if text:
            return text, "manifest"
    return None, None


# ----------------------------------------------------------------------------- the caption job's step
@contextlib.contextmanager
def no_model(cfg, model: str | None = None):
    """The caption runner's resolve_model when only existing captions are used: nothing to load."""
    yield (model or cfg.caption.model), "", False


def _set(table: pa.Table, name: str, values: list) -> pa.Table:
    col = pa.array(values, type=pa.string())
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), pa.field(name, pa.string()), col)
    return table.append_column(pa.field(name, pa.string()), col)


def _failure(r: dict, error_type: str, message: str) -> dict:
    return {"uri": r.get("uri"), "video_id": r.get("video_id"), "clip_id": r.get("clip_id"),
            "stage": ERROR_STAGE, "error_type": error_type, "message": message[:500]}


def _lookup(rows: list[dict], source: str, manifest: str | None, model_name: str) -> tuple[list, list, list]:
    """(caption, where it came from) per row, and failure rows for kept clips left without one."""
    captions, sources, failures = [], [], []
    for r in rows:
        text = where = None
        if r.get("keep") is not False:
            try:
                text, where = existing_caption(r, source, manifest)
                if text is None and source != "sidecar+model":
                    failures.append(_failure(r, "NoExistingCaption", f"no {source} caption for this clip "
                                             f"(looked for {sidecar_uris(r['uri'])[0]}, .txt, caption.manifest)"))
            except (ValueError, KeyError, UnicodeDecodeError) as e:  # a bad sidecar fails its clip only
                failures.append(_failure(r, type(e).__name__, str(e)))
            if text is None and source == "sidecar+model" and r.get("caption"):
                text, where = r["caption"], model_name
        captions.append(text)
        sources.append(where)
    return captions, sources, failures


def apply_existing_captions(tables: dict, counts: dict, source: str, manifest: str | None,
                            model_name: str) -> tuple[dict, dict]:
    """Fill one partition's captions from sidecars or the manifest (caption.source != "model").

    "sidecar"/"manifest": no model ran; a kept clip without an existing caption is a failure row.
    "sidecar+model": `caption` is the sidecar text where there is one, else the model's, and
    `caption_model_text` keeps the model's. `caption_source` says where each `caption` came from.
    """
    read_sidecar.cache_clear()  # a sidecar edited between runs of one process is read again
    clips = tables["clips"]
    cols = ("clip_id", "video_id", "uri", "start_s", "end_s", "start_frame", "end_frame", "keep", "caption")
    rows = clips.select([c for c in cols if c in clips.column_names]).to_pylist()
    captions, sources, failures = _lookup(rows, source, manifest, model_name)
    out = _set(clips, "caption", captions)
    if source == "sidecar+model":
        out = _set(out, "caption_model_text", [r.get("caption") for r in rows])
    out = _set(out, "caption_source", sources)
    failed = tables["failures"]
    if failures:
        failed = pa.concat_tables([failed, table_from_rows(failures, FAILURES_SCHEMA).cast(failed.schema)])
    counts = dict(counts)
    by_stage = collections.Counter(counts.get("failed_by_stage", {}))
    by_type = collections.Counter(counts.get("failed_by_type", {}))
    by_stage.update(f["stage"] for f in failures)
    by_type.update(f["error_type"] for f in failures)
    if source != "sidecar+model":  # the model did not run, so the runner counted no clip as kept
        counts["kept"] = sum(r.get("keep") is not False for r in rows)
    counts["captioned"] = sum(c is not None for c in captions)
    for name in ("sidecar", "manifest"):
        counts[f"captioned_{name}"] = sources.count(name)
    counts["failed_by_stage"], counts["failed_by_type"] = dict(by_stage), dict(by_type)
    return {**tables, "clips": out, "failures": failed}, counts
