"""The synthetic world's checker: what colour is the moving thing, where does it go, what shape is it.

`check_video(frames, palette)` reads a video (T, H, W, 3) uint8 the way a person would: the
background is the frames' dominant colour, the foreground the pixels far from it (and nearer a
shape colour than the background when a palette is given), its colour the nearest palette entry to
the foreground's median, its direction the sign of the foreground centroid's track, its shape the
fill ratio of its bounding box. `parse_caption` reads the same attributes from caption text, so
one `score` compares generated videos and generated captions with the ground truth. Eval
(training/evaluate.py), train-captioner and the demo all score with it.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

ATTRIBUTES = ("color", "direction", "shape")
DIRECTIONS = ("left", "right", "up", "down")
SHAPES = ("square", "circle", "triangle")
_MIN_PIXELS = 4  # a frame's foreground smaller than this is noise, not the shape


# ----------------------------------------------------------------------------- the video checker
def _rgb(palette: dict, names) -> np.ndarray:
    return np.array([palette[n] for n in names], np.float32).reshape(-1, 3)


def foreground(frames: np.ndarray, palette: dict | None = None, colors: list[str] | None = None,
               threshold: float = 48.0) -> tuple[np.ndarray, np.ndarray]:
    """(masks (T, H, W) bool, background RGB): pixels far from the dominant colour of the clip."""
    x = frames.astype(np.float32)
    bg = np.median(x.reshape(-1, 3), axis=0)  # the shape covers a few percent of the pixels
    d_bg = np.linalg.norm(x - bg, axis=-1)  # (T, H, W)
    masks = d_bg > threshold
    if palette and colors:
        # Stripes and grain stay nearer the background than to any shape colour: not foreground.
        ref = _rgb(palette, colors)
        d_shape = np.linalg.norm(x[..., None, :] - ref, axis=-1).min(-1)
        masks &= d_shape < d_bg
    return masks, bg


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    """The largest 8-connected blob of a frame's mask, or None when it is too small."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n < 2:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == k if stats[k, cv2.CC_STAT_AREA] >= _MIN_PIXELS else None


def direction_of(centroids: np.ndarray, min_move: float = 1.5) -> str:
    """'left'/'right'/'up'/'down' from a (T, 2) x, y track by a least-squares slope; 'none' if still."""
    if len(centroids) < 2:
        return "none"
    t = np.arange(len(centroids), dtype=np.float64)
    slope = np.polyfit(t, centroids, 1)[0]  # (2,) px per step for x, y
    move = slope * (len(centroids) - 1)
    if np.abs(move).max() < min_move:
        return "none"
    if abs(move[0]) >= abs(move[1]):
        return "right" if move[0] > 0 else "left"
    return "down" if move[1] > 0 else "up"


def shape_of(fill: float) -> str:
    """Fill ratio of the bounding box: square ~1, circle ~pi/4, triangle ~1/2."""
    return "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"


def check_video(frames: np.ndarray, palette: dict[str, list[int]] | None = None,
                colors: list[str] | None = None) -> dict:
    """{color, direction, shape} of the moving region of frames (T, H, W, 3) uint8.

    color is the nearest of `colors` (names in `palette`) to the foreground's median RGB, or
    None without a palette; direction and shape are 'none' when nothing moves.
    """
    frames = np.asarray(frames)
    masks, _ = foreground(frames, palette, colors)
    centroids, pixels, fills = [], [], []
    for f, m in zip(frames, masks):
        blob = _largest_component(m)
        if blob is None:
            continue
        ys, xs = np.nonzero(blob)
        centroids.append((xs.mean(), ys.mean()))
        pixels.append(f[blob])
        fills.append(blob.sum() / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1)))
    if not centroids:
        return {"color": None, "direction": "none", "shape": "none"}
    rgb = np.median(np.concatenate(pixels).astype(np.float32), axis=0)
    color = None
    if palette:
        names = list(colors or palette)
        color = names[int(np.argmin(np.linalg.norm(_rgb(palette, names) - rgb, axis=-1)))]
    return {"color": color, "direction": direction_of(np.array(centroids)), "shape": shape_of(float(np.median(fills)))}


# ----------------------------------------------------------------------------- captions and scores
def parse_caption(text: str, colors, directions=DIRECTIONS, shapes=SHAPES) -> dict:
    """{color, direction, shape} named in caption text: the first colour word that is not the
    background's ('... on a gray background'), the first direction and shape words; None if absent."""
    words = re.findall(r"[a-z]+", (text or "").lower())
    out = {"color": None, "direction": None, "shape": None}
    for i, w in enumerate(words):
        if out["color"] is None and w in colors and not (i + 1 < len(words) and words[i + 1] == "background"):
            out["color"] = w
        if out["direction"] is None and w in directions:
            out["direction"] = w
        if out["shape"] is None and w in shapes:
            out["shape"] = w
    return out


def score(predicted: list[dict], truth: list[dict], keys=ATTRIBUTES) -> dict:
    """Per-attribute accuracy of `predicted` against `truth` (attributes missing in truth skipped)."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} ground truths")
    out: dict = {"n": len(truth)}
    for k in keys:
        pairs = [(p.get(k), t[k]) for p, t in zip(predicted, truth) if t.get(k) is not None]
        out[k] = round(sum(p == t for p, t in pairs) / len(pairs), 4) if pairs else None
    return out


def score_videos(videos, truth: list[dict], palette: dict, colors: list[str]) -> dict:
    """Accuracy of check_video on each video against its ground-truth attributes."""
    return score([check_video(v, palette, colors) for v in videos], truth)


def score_captions(texts: list[str], truth: list[dict], colors, directions=DIRECTIONS, shapes=SHAPES) -> dict:
    """Accuracy of the attributes named in each caption against its ground truth."""
    return score([parse_caption(t, colors, directions, shapes) for t in texts], truth)
