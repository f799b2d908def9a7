"""Motion: mean optical-flow magnitude (OpenCV Farneback) between sampled frames and their successors."""

from __future__ import annotations

import cv2
import numpy as np

# Farneback settings from OpenCV's own sample (fb.py); the frames are already small.
_FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def flow_magnitude(a: np.ndarray, b: np.ndarray) -> float:
    """Mean flow magnitude (pixels) from RGB frame `a` to RGB frame `b`."""
    ga, gb = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (a, b))
    flow = cv2.calcOpticalFlowFarneback(ga, gb, None, **_FARNEBACK)  # (H, W, 2)
    return float(np.linalg.norm(flow, axis=-1).mean())


class MotionMeasure:
    """`motion`: px/frame at the measure size, averaged over a clip's K frame pairs; `static`: motion < static_motion."""

    name = "motion"
    video_only = True  # MeasureStage skips it for images

    def __init__(self, static_motion: float = 0.05):
        self.static_motion = float(static_motion)

    def measure(self, anchors: np.ndarray, nexts: np.ndarray | None) -> list[dict]:
        if nexts is None:
            raise ValueError("motion needs each anchor's next frame (FramesStage pairs=True)")
        out = []
        for clip_a, clip_n in zip(anchors, nexts):
            motion = float(np.mean([flow_magnitude(a, n) for a, n in zip(clip_a, clip_n)]))
            out.append({"motion": motion, "static": motion < self.static_motion})
        return out
