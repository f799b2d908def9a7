"""Decoding and frame sampling, shared by every job that reads pixels: curate's measures, caption's
frame prep, precompute's pixel prep, train-vae and eval.

decord reads first; PyAV takes over where decord cannot read a file. Frames are chosen by
presentation time, so a variable-frame-rate file gives the frames shown at the sampled times (not
the n-th decoded frame), and a clip given as frame numbers [start_frame, end_frame) at
`source_fps` maps to times start_frame / source_fps onwards, as DESIGN.md numbers frames. Times
are relative to the first frame, as decord reports them. Rotation metadata is applied.

- `sample_frames`: N frames of one clip range (uniform or at an fps), resized or cropped.
- `sample_video`: K frames per clip for many clips of one video, opened once (curate's measures).
- `read_image`: a still image (an image is a one-frame video: both samplers serve it as one).
"""

from __future__ import annotations

import logging

import av
import cv2
import numpy as np

from infra.storage import is_s3, open_seekable, read_bytes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")  # what the samplers read as stills
_TIE = 1e-5  # nearest-frame ties (within float32 timestamp error) go to the earlier frame
_TOL = 5e-4  # container timestamps are rounded (float32 in decord)


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


# ----------------------------------------------------------------------------- images
def is_image(uri: str, suffixes=IMAGE_SUFFIXES) -> bool:
    return str(uri).lower().endswith(tuple(suffixes))


def image_format(data: bytes) -> str | None:
    """"png", "jpeg", "webp" or "bmp" from a file's first bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bmp" if data.startswith(b"BM") else None


def decode_image(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an encoded image (EXIF orientation applied, alpha dropped); ValueError
    when it is not an image OpenCV decodes. Decoded with OpenCV's own pixel limit, never by pickle."""
    if image_format(data) is None:
        raise ValueError("not an image: the file starts with neither a PNG, JPEG, WebP nor BMP signature")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ValueError(f"cannot decode the {image_format(data)} image (truncated or corrupt)")
    return np.ascontiguousarray(img[..., ::-1])


def read_image(uri: str) -> np.ndarray:
    """A local or s3:// image as (H, W, 3) uint8 RGB."""
    return decode_image(read_bytes(uri))


def read_frames(uri: str, size: tuple[int, int] | None = None, max_frames: int | None = None,
                last: bool = False) -> np.ndarray:
    """Every frame (N,H,W,3) uint8 of a video in presentation order (an image: its one frame),
    cover-resized and centre-cropped to `size`; at most `max_frames`, the first or the `last` ones."""
    import collections

    if is_image(uri):
        return _resize(read_image(uri)[None], size, None, True)

    def run(src):
        with av.open(src) as container:
            kept = collections.deque(maxlen=max_frames if last else None)
            for frame in _decode_tolerant(container, container.streams.video[0]):
                kept.append(_rotated(frame))
                if max_frames and not last and len(kept) == max_frames:
                    break
        if not kept:
            raise RuntimeError(f"no frame of {uri} decodes")
        return np.stack(kept)

    return _resize(_with_source(uri, run), size, None, True)


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
    if is_image(uri):  # a one-frame clip: its frame, num_frames times (once at an fps)
        frame = read_image(uri)[None]
        return _resize(np.repeat(frame, 1 if fps or not num_frames else num_frames, axis=0), size, short_side, crop)
    start_t, end_t = _clip_times(start_s, end_s, start_frame, end_frame, source_fps)
    if end_t <= start_t:
        raise ValueError(f"empty clip range [{start_t}, {end_t}) s")
    frames = _with_source(uri, lambda src: _read_any(src, start_t, end_t, num_frames, fps, size, crop,
                                                     num_threads, uri))
    return _resize(frames, size, short_side, crop)


def _with_source(uri: str, read):
    """read(src) on a local path, or on a seekable S3 object (decord reads a file object whole
    into memory; PyAV's fallback does ranged reads)."""
    if is_s3(uri):
        with open_seekable(uri) as f:
            return read(f)
    return read(uri)


# ----------------------------------------------------------------------------- many clips of one video
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
            for f in _decode_tolerant(c, s):  # a damaged packet: neighbours still decode
                if f.pts in wanted:
                    got[wanted[f.pts]] = resize(_rotated(f))
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
    """Anchors (n_clips, K, H, W, 3) uint8 RGB and, with `pairs`, each anchor's next frame (an
    image: its one frame as a single anchor of its one clip, and no pairs)."""
    if is_image(uri):
        img = read_image(uri)
        h, w = target_size(img.shape[0], img.shape[1], short_side)
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) if (h, w) != img.shape[:2] else img
        return np.repeat(img[None, None], len(clips), axis=0), None

    def run(src):
        try:
            return _sample(_DecordReader(src, threads), clips, k, short_side, pairs)
        except ValueError:
            raise  # a clip range with no frame: PyAV would say the same
        except Exception as exc:  # decord raises its own DECORDError and RuntimeError
            log.info("decord failed on %s (%s); trying PyAV", uri, str(exc).strip().splitlines()[-1:])
        return _sample(_PyAVReader(src), clips, k, short_side, pairs)

    return _with_source(uri, run)
