"""Materialize: write each kept clip as its own H.264 mp4 (video only), decoding each source once.

Source frames are numbered as split.py numbers them (presentation time x the guessed rate), so a
clip's [start_frame, end_frame) cuts exactly what the clips table says. Output frame j shows the
latest source frame at or before the clip's start + j / fps, so a lower fps drops frames evenly
and a variable-frame-rate source comes out at a constant rate (gaps repeat the frame before). Each clip is encoded in memory and
written as one whole object (local or S3) named from its clip_id only.
"""

from __future__ import annotations

import io
import json
import logging
import math
from fractions import Fraction

import av
import cv2
import numpy as np

from infra import storage
from infra.tables import map_rows
from pipelines.split import _frame_rate

log = logging.getLogger(__name__)
CLIP_FILES = "clip_files"


def clip_file_uri(output: str, clip_id: str) -> str:
    """Where a clip's mp4 goes: from its clip_id only (a 2-character prefix spreads S3 keys)."""
    return storage.join(output, CLIP_FILES, clip_id[:2], f"{clip_id}.mp4")


def _even_size(h: int, w: int, short_side: int | None) -> tuple[int, int]:
    scale = min(1.0, short_side / min(h, w)) if short_side else 1.0
    return max(2, round(h * scale / 2) * 2), max(2, round(w * scale / 2) * 2)  # yuv420p needs even sizes


class _ClipWriter:
    """One clip's in-memory mp4 encoder, fed source frames in presentation order."""

    def __init__(self, clip: dict, rate: Fraction, fps: float | None, max_frames: int | None, crf: int,
                 short_side: int | None):
        self.clip, self.rate = clip, rate
        self.out_fps = Fraction(fps).limit_denominator(1001) if fps else rate
        span = (clip["end_frame"] - clip["start_frame"]) / rate
        self.n_out = max(1, math.floor(span * self.out_fps + 1e-6))
        self.n_out = min(self.n_out, max_frames) if max_frames else self.n_out
        self.crf, self.short_side = crf, short_side
        self.j, self.buf, self.container, self.stream, self.prev = 0, io.BytesIO(), None, None, None

    def _open(self, h: int, w: int) -> None:
        self.container = av.open(self.buf, "w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=self.out_fps,
                                                options={"crf": str(self.crf), "preset": "veryfast"})
        self.stream.height, self.stream.width = _even_size(h, w, self.short_side)
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.time_base = 1 / self.out_fps

    def _target(self, j: int) -> int:
        """The source frame number output frame j shows (the latest one at or before it)."""
        return self.clip["start_frame"] + math.floor(j * self.rate / self.out_fps)

    def _encode(self, img: np.ndarray) -> None:
        if self.container is None:
            self._open(*img.shape[:2])
        h, w = self.stream.height, self.stream.width
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        frame.pts = self.j
        self.container.mux(self.stream.encode(frame))
        self.j += 1

    def feed(self, num: int, rgb) -> None:
        """Source frame `num` (a thunk giving its RGB array) arrives: fill every output slot up to it."""
        while self.j < self.n_out and self.prev is not None and self._target(self.j) < num:
            self._encode(self.prev())  # slots in a timestamp gap show the frame before the gap
        while self.j < self.n_out and self._target(self.j) <= num:
            self._encode(rgb())
        self.prev = rgb

    @property
    def done(self) -> bool:
        return self.j >= self.n_out

    def finish(self) -> bytes | None:
        while self.j < self.n_out and self.prev is not None:
            self._encode(self.prev())  # a gap at the clip's end
        if self.container is None:
            return None
        self.container.mux(self.stream.encode(None))
        self.container.close()
        return self.buf.getvalue()


def _rgb(frame) -> np.ndarray:
    img = frame.to_ndarray(format="rgb24")
    k = (int(getattr(frame, "rotation", 0) or 0) // 90) % 4  # PyAV: counter-clockwise degrees
    return np.ascontiguousarray(np.rot90(img, k=k)) if k else img


def cut_clips(uri: str, clips: list[dict], fps: float | None = None, short_side: int | None = None,
              max_frames: int | None = None, crf: int = 23, threads: int = 1) -> dict[str, bytes | None]:
    """Decode `uri` once and return {clip_id: mp4 bytes (None when no frame was found)}."""
    clips = sorted(clips, key=lambda c: c["start_frame"])
    last = max(c["end_frame"] for c in clips)
    out: dict[str, bytes | None] = {}
    with storage.open_seekable(uri) as f, av.open(f, metadata_errors="replace") as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "AUTO", threads
        rate, start = _frame_rate(stream), stream.start_time or 0
        writers = [_ClipWriter(c, rate, fps, max_frames, crf, short_side) for c in clips]
        active: list[_ClipWriter] = []
        num = -1
        for packet in container.demux(stream):
            try:
                frames = stream.decode(packet)
            except av.error.FFmpegError:
                continue  # a damaged packet: the next frame covers its output slots
            for frame in frames:
                if frame.pts is None:
                    continue
                num = round(float((frame.pts - start) * frame.time_base) * rate)
                while writers and writers[0].clip["start_frame"] <= num:
                    active.append(writers.pop(0))
                img: dict = {}

                def rgb(frame=frame, img=img):  # convert once per frame, only when some clip needs it
                    if "rgb" not in img:
                        img["rgb"] = _rgb(frame)
                    return img["rgb"]

                for w in active:
                    if w.clip["end_frame"] > num:
                        w.feed(num, rgb)
                for w in [w for w in active if w.done or w.clip["end_frame"] <= num]:
                    out[w.clip["clip_id"]] = w.finish()
                    active.remove(w)
            if num >= last and not active and not writers:
                break
        for w in active + writers:
            out[w.clip["clip_id"]] = w.finish()
    return out


class MaterializeStage:
    """Write clip files.

    Reads `uri` and `clips` (JSON list of {clip_id, start_frame, end_frame, target}); writes
    `clip_uris` (JSON {clip_id: target, or null when that clip could not be written}) and
    `error` (None, or why the video could not be read).
    """

    def __init__(self, fps: float | None = None, short_side: int | None = None, max_frames: int | None = None,
                 crf: int = 23, threads: int = 1):
        self.kw = dict(fps=fps, short_side=short_side, max_frames=max_frames, crf=crf, threads=threads)

    def materialize_row(self, row: dict) -> dict:
        clips = json.loads(row["clips"])
        uris: dict[str, str | None] = {c["clip_id"]: None for c in clips}
        try:
            encoded = cut_clips(row["uri"], clips, **self.kw)
        except TimeoutError:
            raise
        except Exception as exc:  # noqa: BLE001 - the video's clips stay without files
            log.warning("materialize: cannot read %s: %s", row["uri"], exc)
            return dict(row, clip_uris=json.dumps(uris), error=f"{type(exc).__name__}: {exc}")
        for c in clips:
            data = encoded.get(c["clip_id"])
            if data:
                storage.write_bytes(c["target"], data)
                uris[c["clip_id"]] = c["target"]
        return dict(row, clip_uris=json.dumps(uris), error=None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return map_rows(batch, self.materialize_row)
