"""Image quality: sharpness (variance of the Laplacian), brightness, black and washed-out frames."""

from __future__ import annotations

import cv2
import numpy as np


def frame_stats(rgb: np.ndarray) -> tuple[float, float, float, float]:
    """(sharpness, mean luma, 10th and 90th luma percentiles) of one RGB frame."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    sharp = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    p10, p90 = np.percentile(gray, (10, 90))
    return sharp, float(gray.mean()), float(p10), float(p90)


class QualityMeasure:
    """`sharpness`, `brightness` (mean luma 0..255), `black_ratio` and `washed_ratio` (shares of frames).

    A frame is black when 90% of its pixels are darker than `black_luma`, washed out when 90% are
    brighter than `washed_luma`: percentiles, so a logo or a timecode on a black frame still counts.
    """

    name = "quality"

    def __init__(self, black_luma: float = 20.0, washed_luma: float = 235.0):
        self.black_luma, self.washed_luma = float(black_luma), float(washed_luma)

    def measure(self, anchors: np.ndarray, nexts: np.ndarray | None = None) -> list[dict]:
        out = []
        for clip in anchors:
            s = np.array([frame_stats(f) for f in clip])  # (K, 4)
            out.append({"sharpness": float(s[:, 0].mean()), "brightness": float(s[:, 1].mean()),
                        "black_ratio": float((s[:, 3] < self.black_luma).mean()),
                        "washed_ratio": float((s[:, 2] > self.washed_luma).mean())})
        return out
