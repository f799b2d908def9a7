"""Text ratio: the share of a frame covered by text boxes from the PP-OCR detection model.

The weights ship inside the `rapidocr-onnxruntime` wheel, so this runs offline. Only the
detection model runs: the area ratio needs boxes, not the words.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml


def load_detector(side: int = 320, threads: int = 1, use_cuda: bool = False):
    """rapidocr's TextDetector with its shipped config, sized so the long side is `side`."""
    import rapidocr_onnxruntime
    from rapidocr_onnxruntime.ch_ppocr_det.text_detect import TextDetector

    root = Path(rapidocr_onnxruntime.__file__).parent
    cfg = yaml.safe_load((root / "config.yaml").read_text())["Det"]
    cfg.update(model_path=str(root / cfg["model_path"]), intra_op_num_threads=threads,
               inter_op_num_threads=1, use_cuda=use_cuda,
               # "max": never enlarge past `side` (the shipped "min" 736 upscales small frames ~6x)
               limit_type="max", limit_side_len=side)
    return TextDetector(cfg)


def text_area(detector, rgb: np.ndarray, side: int) -> float:
    """Share of the frame inside detected text boxes (overlaps counted once)."""
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    img = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                     interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    boxes, _ = detector(np.ascontiguousarray(img[..., ::-1]))  # the model was trained on BGR
    if boxes is None or len(boxes) == 0:
        return 0.0
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(b).astype(np.int32) for b in boxes], 1)
    return float(mask.mean())


class TextMeasure:
    """`text_ratio`: mean over a clip's K frames of the share covered by detected text."""

    name = "text"

    def __init__(self, side: int = 320, threads: int = 1, use_cuda: bool = False):
        self.side, self.threads, self.use_cuda = int(side), int(threads), bool(use_cuda)
        self.detector = None

    def setup(self) -> None:
        if self.detector is None:
            self.detector = load_detector(self.side, self.threads, self.use_cuda)

    def measure(self, anchors: np.ndarray, nexts: np.ndarray | None = None) -> list[dict]:
        self.setup()
        return [{"text_ratio": float(np.mean([text_area(self.detector, f, self.side) for f in clip]))}
                for clip in anchors]
