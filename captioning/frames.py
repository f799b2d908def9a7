"""Caption frame prep: the CPU stage that samples each clip's frames for a captioner (infra/video.py decodes)."""

from __future__ import annotations

import logging

import numpy as np

from infra.tables import value
from infra.video import sample_frames

log = logging.getLogger(__name__)

ERROR_STAGE = "caption:frames"


# ----------------------------------------------------------------------------- the stage
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
            str(value(batch, "uri", i)),
            value(batch, "start_s", i), value(batch, "end_s", i),
            num_frames=self.num_frames, size=(self.frame_size, self.frame_size), crop=self.crop,
            start_frame=value(batch, "start_frame", i),
            end_frame=value(batch, "end_frame", i),
            source_fps=value(batch, "fps", i), num_threads=self.num_threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["uri"])
        s = self.frame_size
        frames = np.zeros((n, self.num_frames, s, s, 3), dtype=np.uint8)
        errors = [value(batch, "error", i) or None for i in range(n)]  # "" and null: no error
        stages = [value(batch, "error_stage", i) if errors[i] else None for i in range(n)]
        for i in range(n):
            if errors[i]:
                continue
            try:
                frames[i] = self._row_frames(batch, i)
            except Exception as e:  # every failure becomes the row's error, never the batch's
                errors[i] = f"{type(e).__name__}: {e}"
                stages[i] = ERROR_STAGE
                log.warning("frames failed for %s: %s", value(batch, "uri", i), errors[i])
        out = dict(batch)
        out["frames"] = frames
        out["error"] = np.array(errors, dtype=object)
        out["error_stage"] = np.array(stages, dtype=object)
        return out
