"""Probe stage: container/stream facts of each video (or image), every failure turned into a readable row."""

from __future__ import annotations

import os
import statistics
import struct
from typing import BinaryIO

import av
import numpy as np

from infra.storage import open_seekable, read_bytes
from infra.schema import VIDEOS_SCHEMA, video_id_for
from infra.video import decode_image, image_format

# Top-level ISO-BMFF (mp4/mov) box types a file may start with; others are not walked.
_MP4_FIRST_BOXES = {b"ftyp", b"wide", b"free", b"skip", b"moov", b"mdat"}
_INTERNAL = ("error_stage", "error_type")


class ProbeError(Exception):
    """A probe failure with a short code and a message a person can act on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------- file checks
def _file_size(f: BinaryIO) -> int:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(0)
    return size


def _mp4_truncation(f: BinaryIO, size: int) -> str | None:
    """Why an mp4/mov file is cut short (a box runs past the end, or no index), else None."""
    f.seek(0)
    head = f.read(8)
    if len(head) < 8 or head[4:8] not in _MP4_FIRST_BOXES:
        return None
    offset, seen = 0, set()
    while offset + 8 <= size and len(seen) < 10_000:
        f.seek(offset)
        box_size, kind = struct.unpack(">I4s", f.read(8))
        if box_size == 1:
            box_size = struct.unpack(">Q", f.read(8))[0]
        elif box_size == 0:  # "extends to the end of the file"
            box_size = size - offset
        if box_size < 8:
            return None  # not a box structure we understand: let the demuxer judge
        name = kind.decode("latin-1")
        seen.add(name)
        if offset + box_size > size:
            return (f"'{name}' box at byte {offset} needs {box_size} bytes but the file ends "
                    f"after {size - offset} ({size} bytes in all): the upload or copy was cut "
                    "short")
        offset += box_size
    if "mdat" in seen and "moov" not in seen and "moof" not in seen:
        return "the file ends after the media data, before the 'moov' index (incomplete upload?)"
    return None


def _container_name(container, uri: str) -> str:
    """The demuxer name matching the file's extension ("mp4" of "mov,mp4,m4a,...")."""
    names = container.format.name.split(",")
    ext = os.path.splitext(uri)[1].lstrip(".").lower()
    return ext if ext in names else names[0]


# ----------------------------------------------------------------------------- streams
def _timestamps_from_index(stream, size: int) -> list[int] | None:
    """Sample timestamps from a complete container index, or None when it is not complete."""
    entries = [e for e in stream.index_entries if not e.is_discard]
    if not stream.frames or len(entries) != stream.frames:
        return None
    inside = [e for e in entries if e.pos + e.size <= size]
    if len(inside) < len(entries):
        raise ProbeError("truncated", f"truncated: the header lists {len(entries)} frames but only "
                         f"{len(inside)} are in the file (incomplete upload or copy?)")
    return [e.timestamp for e in entries]


def _demux(container, stream, need_timestamps: bool):
    """One pass: decode until the first frame; collect every packet's timestamp if asked."""
    first, stamps, errors = None, [], 0
    try:
        for packet in container.demux(stream):
            if packet.size and need_timestamps:
                ts = packet.pts if packet.pts is not None else packet.dts
                stamps.append(ts if ts is not None else len(stamps))
            if first is None and (packet.size or packet.dts is None):
                try:
                    frames = stream.decode(packet if packet.size else None)
                    first = frames[0] if frames else None
                except av.error.FFmpegError:
                    errors += 1  # a damaged frame: keep looking for a good one
            if first is not None and not need_timestamps:
                break
    except av.error.FFmpegError:
        pass  # damaged tail: count what demuxed before it
    if first is None and errors:
        raise ProbeError("no_decodable_frames", "cannot decode: no video frame decodes "
                         f"({errors} damaged packets); the file is corrupt")
    return first, stamps


def _timing(stream, stamps: list[int]) -> tuple[float | None, bool]:
    """Duration from timestamps (span plus one typical frame) and whether frame spacing varies."""
    if len(stamps) < 2:
        return None, False
    ts = sorted(stamps)
    deltas = [b - a for a, b in zip(ts, ts[1:]) if b > a]
    if not deltas:
        return None, False
    med = statistics.median(deltas)
    # One tick of jitter is rounding (29.97 fps in a 1/1000 time base is 33/34 ms), not VFR.
    vfr = any(abs(d - med) > max(1.0, 0.1 * med) for d in deltas)
    return float((ts[-1] - ts[0] + med) * stream.time_base), vfr


def normalize_rotation(degrees: float) -> int:
    """Counter-clockwise degrees in (-180, 180]: FFmpeg reads a 180 turn back as -180."""
    r = int(round(degrees)) % 360
    return r - 360 if r > 180 else r


def _header_duration(container, stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    return None


def _probe_container(container, uri: str, size: int, row: dict, min_side: int) -> None:
    """Fill `row` with the facts of an opened container; raise ProbeError for a bad one."""
    kinds = [s.type for s in container.streams]
    row.update(container=_container_name(container, uri), has_audio="audio" in kinds)
    if not container.streams.video:
        what = "audio only" if "audio" in kinds else f"streams: {', '.join(kinds) or 'none'}"
        raise ProbeError("no_video_stream", f"not a video: no video stream ({what})")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    row["codec"] = stream.codec_context.name
    stamps = _timestamps_from_index(stream, size)
    first, demuxed = _demux(container, stream, need_timestamps=stamps is None)
    if stamps is None:
        stamps = demuxed
    if first is None and not stamps:
        raise ProbeError("no_video_frames", "empty video: the video stream has no frames")
    rotation = normalize_rotation(first.rotation) if first is not None else 0
    w = first.width if first is not None else stream.codec_context.width
    h = first.height if first is not None else stream.codec_context.height
    swap = abs(rotation) % 180 == 90
    row.update(rotation=rotation, width=h if swap else w, height=w if swap else h)
    span, vfr = _timing(stream, stamps)
    num = len(stamps) if stamps else (stream.frames or 1)
    duration = span or _header_duration(container, stream)
    fps = float(stream.average_rate) if stream.average_rate else None
    if duration and (not fps or abs(fps - num / duration) > 0.02 * fps):
        fps = num / duration  # the header's average disagrees with what the file holds
    row.update(num_frames=num, duration_s=duration, fps=fps, vfr=vfr)
    if min(w, h) < min_side:
        raise ProbeError("too_small", f"too small: {w}x{h} pixels (under {min_side} px a side "
                         "is no usable video)")


# ----------------------------------------------------------------------------- entry points
def _open_message(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, av.error.InvalidDataError):
        return type(exc).__name__, ("cannot open: invalid data found when processing input "
                                    "(corrupt or not a media file)")
    if isinstance(exc, FileNotFoundError):
        return type(exc).__name__, f"cannot open: file not found ({exc.filename or exc})"
    if isinstance(exc, PermissionError):
        return type(exc).__name__, f"cannot open: permission denied ({exc.filename or exc})"
    return type(exc).__name__, f"cannot open: {type(exc).__name__}: {exc}"


def _new_row(uri: str, media_type: str) -> dict:
    row: dict = {f.name: None for f in VIDEOS_SCHEMA}
    row.update(video_id=video_id_for(uri), uri=uri, status="ok", error="", error_stage="", error_type="",
               media_type=media_type)
    return row


def _failed(row: dict, exc: Exception) -> dict:
    """The row of an input that raised: its ProbeError, or what opening it said."""
    if isinstance(exc, ProbeError):
        return dict(row, status="failed", error=str(exc), error_stage="probe", error_type=exc.code)
    code, msg = _open_message(exc) if isinstance(exc, OSError) else (
        type(exc).__name__, f"probe failed: {type(exc).__name__}: {exc}")
    return dict(row, status="failed", error=msg, error_stage="probe", error_type=code)


def probe_image(uri: str, min_side: int = 16) -> dict:
    """The VIDEOS_SCHEMA row of a still image: one frame, no rate, no duration; never raises."""
    row = _new_row(uri, "image")
    try:
        data = read_bytes(uri)
        row["size_bytes"] = len(data)
        if not data:
            raise ProbeError("zero_byte", "zero-byte file (empty upload or copy?)")
        fmt = image_format(data)
        if fmt is None:
            raise ProbeError("not_an_image", "not an image: no PNG, JPEG, WebP or BMP signature (wrong extension?)")
        try:
            h, w = decode_image(data).shape[:2]
        except ValueError as exc:
            raise ProbeError("undecodable_image", f"{exc}") from exc
        row.update(container=fmt, codec=fmt, width=w, height=h, rotation=0, vfr=False, num_frames=1,
                   has_audio=False)
        if min(w, h) < min_side:
            raise ProbeError("too_small", f"too small: {w}x{h} pixels (under {min_side} px a side is no usable image)")
    except TimeoutError:
        raise  # the runner's per-video deadline
    except Exception as exc:  # noqa: BLE001 - a bad file must become a row, not a crash
        return _failed(row, exc)
    return row


def probe_video(uri: str, min_side: int = 16) -> dict:
    """Every VIDEOS_SCHEMA column (plus error_stage/error_type) for one video; never raises."""
    row = _new_row(uri, "video")
    try:
        with open_seekable(uri) as f:
            size = row["size_bytes"] = _file_size(f)
            if size == 0:
                raise ProbeError("zero_byte", "zero-byte file (empty upload or copy?)")
            why = _mp4_truncation(f, size)
            if why:
                raise ProbeError("truncated", f"truncated: {why}")
            f.seek(0)
            try:
                container = av.open(f, metadata_errors="replace")
            except TimeoutError:
                raise  # the runner's per-video deadline, not a property of the file
            except (av.error.FFmpegError, OSError) as exc:
                raise ProbeError(*_open_message(exc)) from exc
            with container:
                _probe_container(container, uri, size, row, min_side)
    except TimeoutError:
        raise  # the runner's per-video deadline: it records the failure itself
    except Exception as exc:  # noqa: BLE001 - a bad file must become a row, not a crash
        return _failed(row, exc)
    return row


class ProbeStage:
    """Probe each video.

    Reads `uri` (and `video_id`, `media_type` when present: "image" rows are probed as stills);
    passes every other column through; writes every VIDEOS_SCHEMA column plus `error_stage` and
    `error_type` ("" when status is "ok").
    """

    def __init__(self, min_side: int = 16):
        self.min_side = min_side

    def setup(self) -> None:
        """Nothing heavy to load: PyAV is imported with the module."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        uris = [str(u) for u in batch["uri"]]
        kinds = [str(k) for k in batch["media_type"]] if "media_type" in batch else ["video"] * len(uris)
        rows = [(probe_image if k == "image" else probe_video)(u, self.min_side) for u, k in zip(uris, kinds)]
        if "video_id" in batch:
            for row, vid in zip(rows, batch["video_id"]):
                row["video_id"] = str(vid)
        out = {k: np.asarray(v) for k, v in batch.items()}
        for name in [*VIDEOS_SCHEMA.names, *_INTERNAL]:
            out[name] = np.array([r[name] for r in rows], dtype=object)
        return out
