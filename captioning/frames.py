"""Sample a clip's frames for a captioner: decord first, PyAV when decord cannot read the file.

Frames are chosen by presentation time, so a variable-frame-rate file gives the frames shown at
the sampled times (not the n-th decoded frame), and a clip given as frame numbers
[start_frame, end_frame) at `source_fps` maps to times start_frame / source_fps onwards, as
DESIGN.md numbers frames. Times are relative to the first frame, as decord reports them.
"""

from __future__ import annotations

import logging

import av
import cv2
import numpy as np

from infra.storage import is_s3, open_seekable

log = logging.getLogger(__name__)

ERROR_STAGE = "caption:frames"
_TIE = 1e-5  # nearest-frame ties (within float32 timestamp error) go to the earlier frame


# ----------------------------------------------------------------------------- selection
def _clip_times(start_s, end_s, start_frame, end_frame, source_fps) -> tuple[float, float]:
    """[start, end) in seconds; frame numbers win when given with the source fps (no rounding)."""
    if start_frame is not None and end_frame is not None and source_fps:
        return float(start_frame) / float(source_fps), float(end_frame) / float(source_fps)
    if start_s is None or end_s is None:
        raise ValueError("give start_s/end_s, or start_frame/end_frame with source_fps")
    return float(start_s), float(end_s)


def select_indices(ts: np.ndarray, start_t: float, end_t: float, num_frames: int | None = 8,
                   fps: float | None = None) -> np.ndarray:
    """Indices into `ts` (frame times, s) sampled uniformly, or at `fps`, in [start, end)."""
    ts = np.asarray(ts, dtype=np.float64)
    # Container timestamps are rounded (float32 in decord): half a millisecond of slack.
    tol = 5e-4
    cand = np.flatnonzero((ts >= start_t - tol) & (ts < end_t - tol))
    if cand.size == 0:
        last = float(ts.max()) if ts.size else float("nan")
        raise ValueError(f"no frame in [{start_t:.3f}, {end_t:.3f}) s; the video's frames end "
                         f"at {last:.3f} s ({ts.size} frames)")
    cand = cand[np.argsort(ts[cand], kind="stable")]
    ct = ts[cand]
    if fps:
        n = max(1, int(np.ceil((end_t - ct[0]) * fps - 1e-6)))
        targets = ct[0] + np.arange(n) / fps
    else:
        if not num_frames or num_frames < 1:
            raise ValueError("num_frames must be >= 1 when fps is not given")
        targets = np.linspace(ct[0], ct[-1], num_frames)
    right = np.clip(np.searchsorted(ct, targets, side="left"), 0, ct.size - 1)
    left = np.clip(right - 1, 0, ct.size - 1)
    take_right = np.abs(ct[right] - targets) < np.abs(targets - ct[left]) - _TIE
    return cand[np.where(take_right, right, left)]


# ----------------------------------------------------------------------------- resizing
def _resize(frames: np.ndarray, size, short_side, crop: bool) -> np.ndarray:
    """Resize (N,H,W,3) frames to `size`=(h,w) (stretch, or cover + centre crop) or a short side."""
    h, w = frames.shape[1:3]
    if size is not None:
        th, tw = int(size[0]), int(size[1])
        if crop:
            scale = max(th / h, tw / w)
            rh, rw = max(th, round(h * scale)), max(tw, round(w * scale))
        else:
            rh, rw = th, tw
    elif short_side is not None:
        scale = short_side / min(h, w)
        rh, rw, th, tw = round(h * scale), round(w * scale), None, None
    else:
        return frames
    if (rh, rw) != (h, w):
        # INTER_AREA when shrinking avoids aliasing; it falls back to bilinear when enlarging.
        interp = cv2.INTER_AREA if rh < h else cv2.INTER_LINEAR
        frames = np.stack([cv2.resize(f, (rw, rh), interpolation=interp) for f in frames])
    if size is not None and crop:
        y0, x0 = (rh - th) // 2, (rw - tw) // 2
        frames = frames[:, y0 : y0 + th, x0 : x0 + tw]
    return np.ascontiguousarray(frames)


# ----------------------------------------------------------------------------- decoders
def _read_decord(src, start_t, end_t, num_frames, fps, size, crop, num_threads) -> np.ndarray:
    import decord

    # decord scales in its filter graph (after its own rotation) when asked for an exact size.
    wh = (int(size[1]), int(size[0])) if size is not None and not crop else (-1, -1)
    vr = decord.VideoReader(src, ctx=decord.cpu(0), width=wh[0], height=wh[1],
                            num_threads=num_threads)
    ts = vr.get_frame_timestamp(range(len(vr)))[:, 0]
    idx = select_indices(ts, start_t, end_t, num_frames, fps)
    uniq, inv = np.unique(idx, return_inverse=True)
    frames = vr.get_batch(uniq.tolist()).asnumpy()[inv]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        # decord 0.6 returns (1, 1, 96) for a 1x1 video: not frames, let PyAV try.
        raise RuntimeError(f"decord returned frames of shape {frames.shape}")
    return frames


def _rotated(frame: av.VideoFrame) -> np.ndarray:
    """An RGB array as displayed: PyAV's rotation is counter-clockwise degrees."""
    img = frame.to_ndarray(format="rgb24")
    k = (int(getattr(frame, "rotation", 0) or 0) // 90) % 4
    return np.ascontiguousarray(np.rot90(img, k=k)) if k else img


def _decode_tolerant(container, stream):
    """Decoded frames with timestamps, skipping packets the decoder rejects (corrupt data)."""
    for packet in container.demux(stream):
        try:
            decoded = packet.decode()
        except av.error.InvalidDataError:
            continue
        yield from (f for f in decoded if f.pts is not None)


def _read_pyav(src, start_t, end_t, num_frames, fps) -> np.ndarray:
    """PyAV fallback: demux packet times, pick frames, then decode keeping the nearest per pick."""
    with av.open(src) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
        if not pts:
            raise RuntimeError("no video packets with timestamps")
        t0 = pts[0]
        ts = np.array([(p - t0) * tb for p in pts], dtype=np.float64)
        targets = ts[select_indices(ts, start_t, end_t, num_frames, fps)]
        best: list[tuple[float, np.ndarray | None]] = [(np.inf, None)] * len(targets)
        container.seek(int(t0 + start_t / tb), stream=stream, backward=True, any_frame=False)
        for frame in _decode_tolerant(container, stream):
            t = float((frame.pts - t0) * tb)
            if t > targets[-1] + 1.0:
                break
            # Nearest decoded frame per target: a frame that fails to decode is replaced by its
            # neighbour instead of failing the clip.
            img = None
            for i, target in enumerate(targets):
                d = abs(t - target)
                if d < best[i][0] - _TIE:
                    img = _rotated(frame) if img is None else img
                    best[i] = (d, img)
        if any(img is None for _, img in best):
            raise RuntimeError("could not decode the sampled frames")
        return np.stack([img for _, img in best])


def _read_any(src, start_t, end_t, num_frames, fps, size, crop, num_threads, uri) -> np.ndarray:
    try:
        return _read_decord(src, start_t, end_t, num_frames, fps, size, crop, num_threads)
    except ValueError:
        raise  # an empty range is the clip's fault, not decord's: PyAV would say the same
    except Exception as e:  # decord raises its own DECORDError and RuntimeError
        last_line = (str(e).strip().splitlines() or [""])[-1]  # decord prefixes a C++ trace
        decord_error = f"{type(e).__name__}: {last_line[:300]}"
        log.info("decord failed on %s (%s); trying PyAV", uri, decord_error)
    if hasattr(src, "seek"):
        src.seek(0)
    try:
        return _read_pyav(src, start_t, end_t, num_frames, fps)
    except ValueError:
        raise
    except Exception as e:
        raise RuntimeError(f"cannot decode {uri}: decord: {decord_error}; "
                           f"PyAV: {type(e).__name__}: {e}") from e


def sample_frames(uri: str, start_s: float | None = None, end_s: float | None = None, *,
                  num_frames: int | None = 8, fps: float | None = None,
                  size: tuple[int, int] | None = None, short_side: int | None = None,
                  crop: bool = False, start_frame: int | None = None,
                  end_frame: int | None = None, source_fps: float | None = None,
                  num_threads: int = 1) -> np.ndarray:
    """Frames (N,H,W,3) uint8 of [start, end): `num_frames` uniform (first to last) or at `fps`.

    `size`=(h, w) resizes exactly (`crop=True`: keep the aspect, cover and centre-crop);
    `short_side` keeps the aspect. Rotation metadata is applied. Raises ValueError for a range
    with no frames and RuntimeError when neither decord nor PyAV can decode the file.
    """
    if size is not None and short_side is not None:
        raise ValueError("give size or short_side, not both")
    start_t, end_t = _clip_times(start_s, end_s, start_frame, end_frame, source_fps)
    if end_t <= start_t:
        raise ValueError(f"empty clip range [{start_t}, {end_t}) s")
    if is_s3(uri):
        # decord reads a file object whole into memory; PyAV's fallback does ranged reads.
        with open_seekable(uri) as f:
            frames = _read_any(f, start_t, end_t, num_frames, fps, size, crop, num_threads, uri)
    else:
        frames = _read_any(uri, start_t, end_t, num_frames, fps, size, crop, num_threads, uri)
    return _resize(frames, size, short_side, crop)


# ----------------------------------------------------------------------------- the stage
def _present(values, i):
    """Row i of an optional column as a Python value, None for missing/null/NaN."""
    if values is None:
        return None
    v = values[i]
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def _has_error(values, i) -> bool:
    v = _present(values, i)
    return isinstance(v, str) and v != ""


class FramePrepStage:
    """CPU prep stage for captioning.

    Reads `uri`, `start_s`, `end_s` (and `start_frame`, `end_frame`, `fps` when present; rows that
    already carry an `error` are passed through). Writes `frames` (B,N,S,S,3) uint8 (zeros on a
    failed row), `error` and `error_stage`. Failures are data: nothing is raised for a bad clip.
    """

    def __init__(self, num_frames: int = 6, frame_size: int = 224, crop: bool = True,
                 num_threads: int = 1):
        self.num_frames = int(num_frames)
        self.frame_size = int(frame_size)
        self.crop = bool(crop)
        self.num_threads = int(num_threads)

    def setup(self) -> None:
        """Nothing heavy to load: decoders open per clip."""

    def _row_frames(self, batch: dict, i: int) -> np.ndarray:
        return sample_frames(
            str(_present(batch.get("uri"), i)),
            _present(batch.get("start_s"), i), _present(batch.get("end_s"), i),
            num_frames=self.num_frames, size=(self.frame_size, self.frame_size), crop=self.crop,
            start_frame=_present(batch.get("start_frame"), i),
            end_frame=_present(batch.get("end_frame"), i),
            source_fps=_present(batch.get("fps"), i), num_threads=self.num_threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["uri"])
        s = self.frame_size
        frames = np.zeros((n, self.num_frames, s, s, 3), dtype=np.uint8)
        errors = [_present(batch.get("error"), i) if _has_error(batch.get("error"), i) else None
                  for i in range(n)]
        stages = [_present(batch.get("error_stage"), i) if errors[i] else None for i in range(n)]
        for i in range(n):
            if errors[i]:
                continue
            try:
                frames[i] = self._row_frames(batch, i)
            except Exception as e:  # every failure becomes the row's error, never the batch's
                errors[i] = f"{type(e).__name__}: {e}"
                stages[i] = ERROR_STAGE
                log.warning("frames failed for %s: %s", _present(batch.get("uri"), i), errors[i])
        out = dict(batch)
        out["frames"] = frames
        out["error"] = np.array(errors, dtype=object)
        out["error_stage"] = np.array(stages, dtype=object)
        return out
