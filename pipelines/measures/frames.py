"""Frames stage: open each video once and sample K frames per clip for every measure.

Frames are picked by presentation time (a clip's [start_frame, end_frame) at its fps, as split.py
numbers them), so variable-frame-rate files sample the frames shown at those times. decord reads
first; PyAV takes over where decord cannot (one demux for timestamps, then one decode pass).
Frames are resized to the measure short side right away, so memory stays at the small size.
"""

from __future__ import annotations

import json
import logging

import av
import cv2
import numpy as np

from captioning.frames import select_indices
from infra.storage import is_s3, open_seekable
from pipelines.measures import _scalar, pack_frames

log = logging.getLogger(__name__)
_TOL = 5e-4  # container timestamps are rounded (float32 in decord)


def target_size(h: int, w: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the short side at most `short_side`, aspect kept (never upscaled)."""
    scale = short_side / min(h, w)
    if scale >= 1:
        return h, w
    return max(1, round(h * scale)), max(1, round(w * scale))


def clip_indices(ts: np.ndarray, clips: list[dict], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_clips, K) anchor indices into `ts` and the index of the frame shown right after each."""
    order = np.argsort(ts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    anchors, nexts = [], []
    for c in clips:
        start_t, end_t = c["start_frame"] / c["fps"], c["end_frame"] / c["fps"]
        a = select_indices(ts, start_t, end_t, k)
        # The successor in time inside the clip; the predecessor at the clip's last frame.
        r = rank[a]
        after = order[np.minimum(r + 1, order.size - 1)]
        before = order[np.maximum(r - 1, 0)]
        inside = (ts[after] < end_t - _TOL) & (r + 1 < order.size)
        back_ok = ts[before] >= start_t - _TOL
        anchors.append(a)
        nexts.append(np.where(inside, after, np.where(back_ok, before, a)))
    return np.stack(anchors), np.stack(nexts)


# ----------------------------------------------------------------------------- readers
class _DecordReader:
    def __init__(self, src, threads: int):
        import decord

        self.vr = decord.VideoReader(src, ctx=decord.cpu(0), num_threads=threads)

    def timestamps(self) -> np.ndarray:
        return self.vr.get_frame_timestamp(range(len(self.vr)))[:, 0].astype(np.float64)

    def frames(self, groups: list[np.ndarray], resize) -> list[np.ndarray]:
        out = []
        for idx in groups:  # one clip at a time: full-size frames never pile up
            uniq, inv = np.unique(idx, return_inverse=True)
            batch = self.vr.get_batch(uniq.tolist()).asnumpy()
            if batch.ndim != 4 or batch.shape[-1] != 3:
                raise RuntimeError(f"decord returned frames of shape {batch.shape}")
            out.append(np.stack([resize(f) for f in batch])[inv])
        return out


class _PyAVReader:
    def __init__(self, src):
        self.src = src

    def _open(self):
        if hasattr(self.src, "seek"):
            self.src.seek(0)
        return av.open(self.src)

    def timestamps(self) -> np.ndarray:
        with self._open() as c:
            s = c.streams.video[0]
            pts = sorted(p.pts for p in c.demux(s) if p.pts is not None)
            if not pts:
                raise RuntimeError("no video packets with timestamps")
            self.pts, self.tb = pts, s.time_base
        return np.array([float((p - pts[0]) * self.tb) for p in pts])

    def frames(self, groups: list[np.ndarray], resize) -> list[np.ndarray]:
        wanted = {self.pts[i]: i for i in np.unique(np.concatenate(groups)).tolist()}
        got: dict[int, np.ndarray] = {}
        with self._open() as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for packet in c.demux(s):
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError:
                    continue  # a damaged packet: neighbours still decode
                for f in decoded:
                    if f.pts in wanted:
                        img = f.to_ndarray(format="rgb24")
                        k = (int(getattr(f, "rotation", 0) or 0) // 90) % 4  # counter-clockwise
                        got[wanted[f.pts]] = resize(np.rot90(img, k=k) if k else img)
                if len(got) == len(wanted):
                    break
        missing = set(wanted.values()) - set(got)
        if missing:
            raise RuntimeError(f"{len(missing)} sampled frames did not decode")
        return [np.stack([got[i] for i in idx.tolist()]) for idx in groups]


def _sample(reader, clips: list[dict], k: int, short_side: int, pairs: bool):
    ts = reader.timestamps()
    anchors, nexts = clip_indices(ts, clips, k)
    size: dict = {}

    def resize(img: np.ndarray) -> np.ndarray:
        if "hw" not in size:
            size["hw"] = target_size(img.shape[0], img.shape[1], short_side)
        h, w = size["hw"]
        if img.shape[:2] == (h, w):
            return np.ascontiguousarray(img)
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)  # INTER_AREA: no aliasing

    groups = [np.concatenate([a, n]) for a, n in zip(anchors, nexts)] if pairs else list(anchors)
    frames = np.stack(reader.frames(groups, resize))  # (n_clips, K or 2K, H, W, 3)
    return (frames[:, :k], frames[:, k:]) if pairs else (frames, None)


def sample_video(uri: str, clips: list[dict], k: int = 4, short_side: int = 160, pairs: bool = True,
                 threads: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """Anchors (n_clips, K, H, W, 3) uint8 RGB and, with `pairs`, each anchor's next frame."""

    def run(src):
        try:
            return _sample(_DecordReader(src, threads), clips, k, short_side, pairs)
        except ValueError:
            raise  # a clip range with no frame: PyAV would say the same
        except Exception as exc:  # decord raises its own DECORDError and RuntimeError
            log.info("decord failed on %s (%s); trying PyAV", uri, str(exc).strip().splitlines()[-1:])
        return _sample(_PyAVReader(src), clips, k, short_side, pairs)

    if is_s3(uri):
        with open_seekable(uri) as f:  # decord reads a file object whole; PyAV reads ranges
            return run(f)
    return run(uri)


# ----------------------------------------------------------------------------- the stage
class FramesStage:
    """Sample frames for the measures.

    Reads `uri`, `status`, `clips` (JSON, from SplitStage); passes every column through and adds
    `frames` (pack_frames bytes; None for rows without clips). A video whose frames cannot be
    read becomes a failed row (`error_stage`="measure:frames").
    """

    def __init__(self, frames_per_clip: int = 4, short_side: int = 160, pairs: bool = True,
                 threads: int = 1):
        self.k, self.short_side, self.pairs, self.threads = frames_per_clip, short_side, pairs, threads

    def frames_row(self, row: dict) -> dict:
        clips = json.loads(row.get("clips") or "[]")
        if row.get("status") != "ok" or not clips:
            return dict(row, frames=None)
        try:
            anchors, nexts = sample_video(row["uri"], clips, self.k, self.short_side, self.pairs, self.threads)
        except TimeoutError:
            raise  # the runner's per-video deadline records it
        except Exception as exc:  # noqa: BLE001 - a bad video becomes a failed row
            return dict(row, frames=None, clips="[]", status="failed", error_stage="measure:frames",
                        error=f"measure frames failed: {type(exc).__name__}: {exc}", error_type=type(exc).__name__)
        return dict(row, frames=pack_frames(anchors, nexts))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(batch)
        rows = [{k: _scalar(batch[k][i]) for k in names} for i in range(len(batch[names[0]]))]
        out = [self.frames_row(r) for r in rows]
        keys = list(dict.fromkeys(k for r in out for k in r))
        return {k: np.array([r.get(k) for r in out], dtype=object) for k in keys}
