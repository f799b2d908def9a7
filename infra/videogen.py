"""Encode small real H.264 videos with known ground truth (cuts, frame numbers) for tests/demos."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

# Consecutive defaults differ strongly in hue and brightness so hard cuts score far above
# ContentDetector's default threshold (27) even with the frame-number strip drawn.
PALETTE = [
    (30, 40, 140),  # dark blue
    (235, 215, 50),  # yellow
    (40, 150, 60),  # green
    (210, 60, 170),  # magenta
    (20, 20, 20),  # near black
    (230, 120, 30),  # orange
    (90, 200, 230),  # light cyan
    (120, 30, 30),  # dark red
]
KINDS = ("moving", "static", "black", "fade_out", "fade_in", "noise", "blur", "text")
SHAPES = ("square", "circle", "triangle")
NUM_BITS = 12  # frame numbers 0..4095 (Gray-coded, so one block flips per frame)
_DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def _check_shape(shape: str, direction: str) -> None:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if direction not in _DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected {list(_DIRECTIONS)}")


@dataclass
class Sprite:
    """A further moving shape painted over a scene; `start` is its top-left as fractions of W, H."""

    color: tuple[int, int, int]
    shape: str = "square"
    direction: str = "right"
    speed: float = 2.0
    start: tuple[float, float] | None = None
    size: float = 0.25

    def __post_init__(self):
        _check_shape(self.shape, self.direction)


@dataclass
class Scene:
    """One shot of a generated video; `bg=None` picks a palette colour unlike its neighbours.

    The shape (`size` of the short side) starts at `start` (fractions of W, H; default W/4, H/3)
    and moves `speed` px per frame, wrapping around the frame; `textured=False` paints a plain bg.
    """

    num_frames: int
    kind: str = "moving"
    color: tuple[int, int, int] = (250, 250, 250)
    bg: tuple[int, int, int] | None = None
    text: str | None = None
    direction: str = "right"
    speed: float = 2.0
    shape: str = "square"
    size: float = 0.25
    start: tuple[float, float] | None = None
    textured: bool = True
    sprites: tuple[Sprite, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown scene kind {self.kind!r}; expected one of {KINDS}")
        _check_shape(self.shape, self.direction)
        if self.num_frames < 1:
            raise ValueError("a scene needs at least one frame")


# ----------------------------------------------------------------------------- frame numbers
def _strip_height(height: int) -> int:
    return max(4, height // 10)


def stamp_frame_number(img: np.ndarray, n: int) -> None:
    """Draw `n` as a row of NUM_BITS black/white blocks (Gray code, MSB left) along the top edge."""
    h, w = img.shape[:2]
    sh = _strip_height(h)
    gray = n ^ (n >> 1)
    edges = np.linspace(0, w, NUM_BITS + 1).round().astype(int)
    for i in range(NUM_BITS):
        bit = (gray >> (NUM_BITS - 1 - i)) & 1
        img[:sh, edges[i] : edges[i + 1]] = 255 if bit else 0


def read_frame_number(rgb: np.ndarray, rotation: int = 0) -> int:
    """Decode the number drawn by stamp_frame_number; `rotation` undoes a display rotation first."""
    img = np.asarray(rgb)
    if rotation % 360:
        # A frame shown rotated by `rotation` degrees counter-clockwise: rotate it back.
        img = np.rot90(img, k=-(rotation // 90) % 4)
    lum = img.mean(axis=2) if img.ndim == 3 else img.astype(np.float32)
    h, w = lum.shape
    sh = _strip_height(h)
    y0, y1 = sh // 4, max(sh // 4 + 1, (3 * sh) // 4)
    edges = np.linspace(0, w, NUM_BITS + 1)
    gray = 0
    for i in range(NUM_BITS):
        # Sample the middle half of each block: block edges blur under H.264 and resizing.
        x0 = int(edges[i] + (edges[i + 1] - edges[i]) / 4)
        x1 = max(x0 + 1, int(edges[i + 1] - (edges[i + 1] - edges[i]) / 4))
        gray = (gray << 1) | int(lum[y0:y1, x0:x1].mean() > 127)
    n, shift = gray, gray >> 1
    while shift:
        n ^= shift
        shift >>= 1
    return n


# ----------------------------------------------------------------------------- scene painting
def _texture(h: int, w: int, bg, rng: np.random.Generator) -> np.ndarray:
    """A background colour with soft stripes and grain, so motion and sharpness are measurable."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy = rng.uniform(0.08, 0.2, size=2)
    stripes = 18.0 * np.sin(xx * fx + yy * fy)
    grain = rng.normal(0.0, 4.0, size=(h, w)).astype(np.float32)
    out = np.asarray(bg, np.float32)[None, None, :] + (stripes + grain)[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def _shape_xy(obj: Scene | Sprite, i: int, h: int, w: int, moving: bool = True) -> tuple[int, int]:
    """Top-left of a scene's (or sprite's) shape at frame `i` of the scene (wraps around the frame)."""
    dx, dy = _DIRECTIONS[obj.direction]
    step = obj.speed * i if moving else 0.0
    x0, y0 = (w // 4, h // 3) if obj.start is None else (obj.start[0] * w, obj.start[1] * h)
    x = (x0 + dx * step) % w
    y = (y0 + dy * step) % h
    return int(x), int(y)


def draw_shape(img: np.ndarray, shape: str, x: int, y: int, side: int, color) -> None:
    """Paint a filled square, circle or upward triangle with top-left (x, y) and size `side`."""
    color = tuple(int(c) for c in color)
    if shape == "square":
        img[y : y + side, x : x + side] = color
    elif shape == "circle":
        r = side / 2
        cv2.circle(img, (int(x + r), int(y + r)), max(1, int(r)), color, -1, cv2.LINE_8)
    else:
        pts = np.array([[x + side // 2, y], [x, y + side - 1], [x + side - 1, y + side - 1]], np.int32)
        cv2.fillPoly(img, [pts], color, cv2.LINE_8)


def _paint(scene: Scene, i: int, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = base.shape[:2]
    if scene.kind == "black":
        return np.zeros_like(base)
    if scene.kind == "noise":
        return rng.integers(0, 256, size=base.shape, dtype=np.uint8)
    img = base.copy()
    moving = scene.kind not in ("static", "text")
    for obj in (scene, *scene.sprites):
        side = max(1, int(min(h, w) * obj.size))
        x, y = _shape_xy(obj, i, h, w, moving)
        draw_shape(img, obj.shape, x, y, side, obj.color)
    if scene.kind == "text" or scene.text:
        scale = max(0.3, w / 160)
        cv2.putText(img, scene.text or "REELFORGE", (max(1, w // 16), int(h * 0.7)),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, int(scale * 2)),
                    cv2.LINE_AA)
    if scene.kind == "blur":
        k = max(3, (min(h, w) // 6) | 1)
        img = cv2.GaussianBlur(img, (k, k), 0)
    if scene.kind in ("fade_out", "fade_in"):
        t = i / max(1, scene.num_frames - 1)
        gain = 1.0 - t if scene.kind == "fade_out" else t
        img = (img.astype(np.float32) * gain).astype(np.uint8)
    return img


def _scene_backgrounds(scenes: list[Scene]) -> list[tuple[int, int, int]]:
    """Each scene's bg: its own, or the next palette colour unlike the previous scene's."""
    out: list[tuple[int, int, int]] = []
    k = 0
    for s in scenes:
        if s.bg is not None:
            out.append(tuple(s.bg))
            continue
        while out and PALETTE[k % len(PALETTE)] == out[-1]:
            k += 1
        out.append(PALETTE[k % len(PALETTE)])
        k += 1
    return out


# ----------------------------------------------------------------------------- writers
def _add_audio(container, seconds: float, rate: int = 16000):
    """An AAC mono tone stream; returns a function that encodes `seconds` of it."""
    stream = container.add_stream("aac", rate=rate, layout="mono")

    def write() -> None:
        n = max(1, int(round(seconds * rate)))
        t = np.arange(n, dtype=np.float32) / rate
        pcm = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        for start in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(pcm[None, start : start + 1024], format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))

    return write


def _open_video_stream(container, codec: str, fps, width: int, height: int, crf: int,
                       gop: int | None, rotation: int):
    opts = {"preset": "veryfast", "crf": str(crf)} if codec == "libx264" else {}
    stream = container.add_stream(codec, rate=fps, options=opts)
    stream.width, stream.height = width, height
    # 4:2:0 needs even sizes; odd test sizes (a 1x1 video) fall back to 4:4:4.
    stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    stream.codec_context.time_base = 1 / fps
    if gop:
        stream.codec_context.gop_size = gop
    if rotation:
        stream.set_display_rotation(rotation)
    return stream


def write_video(path, scenes: list[Scene], *, fps=24, width: int = 128, height: int = 96,
                rotation: int = 0, vfr_drop_every: int = 0, draw_frame_number: bool = True,
                codec: str = "libx264", crf: int = 18, gop: int | None = None,
                audio: bool = False, seed: int = 0, faststart: bool = False) -> dict:
    """Encode `scenes` into `path` and return the ground truth (presentation frame numbers).

    `width`/`height` are the coded size; `rotation` (degrees counter-clockwise, as PyAV's
    VideoFrame.rotation reads it back) only sets the display matrix. `vfr_drop_every=k` drops
    presentation frames k-1, 2k-1, ... keeping the others' timestamps.
    """
    fps = Fraction(fps).limit_denominator(1001)
    rng = np.random.default_rng(seed)
    bgs = _scene_backgrounds(scenes)
    options = {"movflags": "faststart"} if faststart else {}
    ranges, kept, n = [], [], 0
    with av.open(str(path), "w", options=options) as container:
        stream = _open_video_stream(container, codec, fps, width, height, crf, gop, rotation)
        total = sum(s.num_frames for s in scenes)
        write_audio = _add_audio(container, float(total / fps)) if audio else None
        for scene, bg in zip(scenes, bgs):
            base = (_texture(height, width, bg, rng) if scene.textured
                    else np.full((height, width, 3), bg, np.uint8))
            ranges.append((n, n + scene.num_frames))
            for i in range(scene.num_frames):
                idx = n + i
                if vfr_drop_every and (idx + 1) % vfr_drop_every == 0:
                    continue
                img = _paint(scene, i, base, rng)
                if draw_frame_number:
                    stamp_frame_number(img, idx)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                frame.pts, frame.time_base = idx, 1 / fps
                container.mux(stream.encode(frame))
                kept.append(idx)
            n += scene.num_frames
        container.mux(stream.encode(None))
        if write_audio:
            write_audio()
    swap = abs(rotation) % 180 == 90
    return {
        "cuts": [r[0] for r in ranges[1:]],
        "num_frames": len(kept),
        "fps": float(fps),
        "width": width,
        "height": height,
        "display_width": height if swap else width,
        "display_height": width if swap else height,
        "rotation": rotation,
        "scene_ranges": ranges,
        "frame_numbers": kept,
        "duration_s": float(n / fps),
        "vfr": bool(vfr_drop_every),
        "has_audio": audio,
    }


def write_image(path, scene: Scene, *, width: int = 128, height: int = 96, seed: int = 0, quality: int = 95) -> Path:
    """A still of `scene`'s first frame as PNG, JPEG or WebP (by the suffix): a one-frame clip."""
    rng = np.random.default_rng(seed)
    bg = _scene_backgrounds([scene])[0]
    base = _texture(height, width, bg, rng) if scene.textured else np.full((height, width, 3), bg, np.uint8)
    img = _paint(scene, 0, base, rng)
    path = Path(path)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else (
        [cv2.IMWRITE_WEBP_QUALITY, quality] if path.suffix.lower() == ".webp" else [])
    ok, data = cv2.imencode(path.suffix.lower(), np.ascontiguousarray(img[..., ::-1]), params)
    if not ok:
        raise ValueError(f"OpenCV cannot encode {path.suffix} images")
    path.write_bytes(data.tobytes())
    return path


def write_audio_only(path, seconds: float = 1.0) -> dict:
    """An AAC-only file (.m4a/.mp4): a media file with no video stream."""
    with av.open(str(path), "w") as container:
        _add_audio(container, seconds)()
    return {"duration_s": seconds, "has_audio": True}


def write_bad_inputs(directory, seed: int = 0) -> dict[str, str]:
    """Write one file per bad-input kind into `directory`; returns {file name: kind}."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (d / "zero_byte.mp4").write_bytes(b"")
    (d / "random_bytes.mp4").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "text_file.mp4").write_text("this is not a video\n" * 20)
    good_scenes = [Scene(24), Scene(24, kind="static")]
    for name, faststart in (("truncated.mp4", False), ("truncated_faststart.mp4", True)):
        # Moov at the end (the default) loses the index; faststart keeps a header that lies.
        full = d / f".full-{name}"
        write_video(full, good_scenes, seed=seed, faststart=faststart)
        data = full.read_bytes()
        (d / name).write_bytes(data[: int(len(data) * 0.4)])
        os.remove(full)
    write_audio_only(d / "audio_only.m4a")
    write_video(d / "one_pixel.mp4", [Scene(5, kind="static")], width=1, height=1,
                draw_frame_number=False, seed=seed)
    return {
        "zero_byte.mp4": "zero-byte",
        "random_bytes.mp4": "random-bytes",
        "text_file.mp4": "text",
        "truncated.mp4": "truncated",
        "truncated_faststart.mp4": "truncated",
        "audio_only.m4a": "audio-only",
        "one_pixel.mp4": "1x1",
    }
