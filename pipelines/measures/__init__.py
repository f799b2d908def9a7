"""Per-clip measures computed on sampled frames, applied to one-row-per-video batches.

FramesStage (frames.py) decodes each video once and adds a `frames` column: the bytes of an .npz
archive with `anchors` (n_clips, K, H, W, 3) uint8 RGB at the measure downscale and, when motion
is on, `nexts` (the frame right after each anchor). A measure is a small object with a `name`, an
optional `setup()` and `measure(anchors, nexts) -> list[dict]` (one dict of column values per
clip); MeasureStage runs a list of them and writes their values into each clip dict of the
`clips` JSON column, so rows stay one per video and partitions commit as before.
"""

from __future__ import annotations

import io
import json
import logging
import numpy as np

from infra.config import MeasuresConfig, SafetyConfig
from infra.tables import map_rows

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the frames column
def pack_frames(anchors: np.ndarray, nexts: np.ndarray | None = None) -> bytes:
    """(n_clips, K, H, W, 3) uint8 arrays -> bytes (uncompressed: they live one stage long)."""
    buf = io.BytesIO()
    arrays = {"anchors": anchors} if nexts is None else {"anchors": anchors, "nexts": nexts}
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack_frames(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(io.BytesIO(data)) as z:
        return z["anchors"], (z["nexts"] if "nexts" in z.files else None)


# ----------------------------------------------------------------------------- the stage
class MeasureStage:
    """Run measures on video rows.

    Reads `status`, `media_type`, `clips` (JSON list of clip dicts) and `frames` (pack_frames bytes); passes
    every column through and adds each measure's values to every clip dict in `clips`. A measure
    that raises fails its video row (`status`="failed", `error`, `error_stage`="measure:<name>",
    `error_type`), so one bad video never stops a batch.
    """

    def __init__(self, measures: list):
        self.measures = list(measures)
        self._ready = False

    def setup(self) -> None:
        """Load each measure's model once per worker."""
        if not self._ready:
            for m in self.measures:
                if hasattr(m, "setup"):
                    m.setup()
            self._ready = True

    def measure_row(self, row: dict) -> dict:
        clips = json.loads(row.get("clips") or "[]")
        if row.get("status") != "ok" or not clips or not row.get("frames"):
            return row
        anchors, nexts = unpack_frames(row["frames"])
        image = row.get("media_type") == "image"
        for m in self.measures:
            if image and getattr(m, "video_only", False):
                continue  # motion: an image has none (its columns stay null, so motion filters pass it)
            try:
                values = m.measure(anchors, nexts)
            except TimeoutError:
                raise  # the runner's per-video deadline records it
            except Exception as exc:  # noqa: BLE001 - a bad video becomes a failed row
                log.warning("measure %s failed on %s: %s", m.name, row.get("uri"), exc)
                return dict(row, status="failed", error=f"measure {m.name} failed: {type(exc).__name__}: {exc}",
                            error_stage=f"measure:{m.name}", error_type=type(exc).__name__, clips="[]")
            for clip, v in zip(clips, values, strict=True):
                clip.update(v)
        return dict(row, clips=json.dumps(clips))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.setup()
        return map_rows(batch, self.measure_row)


# ----------------------------------------------------------------------------- building stages
def build_stage(kind: str, m: MeasuresConfig, safety: SafetyConfig | None = None) -> MeasureStage:
    """The measure stage of one kind ("cheap", "ocr", "clip", "safety") from its config section."""
    if kind == "cheap":
        from pipelines.measures.embed import PhashMeasure
        from pipelines.measures.motion import MotionMeasure
        from pipelines.measures.quality import QualityMeasure

        ms = [MotionMeasure(m.static_motion)] if m.motion else []
        ms += [QualityMeasure(m.black_luma, m.washed_luma)] if m.quality else []
        ms += [PhashMeasure()] if m.embedding else []
        return MeasureStage(ms)
    if kind == "ocr":
        from pipelines.measures.ocr import TextMeasure

        return MeasureStage([TextMeasure(m.ocr_side, threads=max(1, int(m.ocr_cpus)), use_cuda=m.ocr_gpus > 0)])
    if kind == "clip":
        from pipelines.measures.embed import ClipMeasure

        return MeasureStage([ClipMeasure(m.clip_model, m.clip_pretrained, m.aesthetic_weights,
                                         embedding=m.embedding, device="cuda" if m.clip_gpus > 0 else "cpu")])
    if kind == "safety":
        from pipelines.measures.safety import SafetyMeasure

        s = safety or SafetyConfig()
        return MeasureStage([SafetyMeasure(s.resolution, use_cuda=s.gpus > 0, threads=max(1, int(s.cpus)))])
    raise ValueError(f"unknown measure stage {kind!r}")


def stage_kinds(m: MeasuresConfig, safety: SafetyConfig | None = None) -> list[str]:
    """Which measure stages the settings switch on, in pipeline order."""
    kinds = ["cheap"] if (m.motion or m.quality or m.embedding) else []
    kinds += ["ocr"] if m.text else []
    kinds += ["clip"] if m.clip_model and (m.embedding or m.aesthetic_weights) else []
    kinds += ["safety"] if safety is not None and safety.enabled else []
    return kinds


def safety_model() -> str:
    """The safety measure's ONNX file (raises SafetyModelMissing, naming the package, when absent)."""
    from pipelines.measures.safety import model_path

    return model_path()
