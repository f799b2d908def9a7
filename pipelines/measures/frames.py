"""Frames stage: open each video once and sample K frames per clip for every measure.

Frames are picked by presentation time (a clip's [start_frame, end_frame) at its fps, as split.py
numbers them) by `infra.video.sample_video`, and resized to the measure short side right away, so
memory stays at the small size.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from infra.tables import map_rows
from infra.video import sample_video
from pipelines.measures import pack_frames

log = logging.getLogger(__name__)


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
        return map_rows(batch, self.frames_row)
