"""Safety: `nsfw_score` per clip from the NudeNet detector, whose weights ship in the `nudenet` wheel.

The wheel carries `320n.onnx` (a YOLOv8n detector over 18 body-part classes, MIT) and runs offline on
onnxruntime. The score of a frame is the detector's highest raw class score for an *exposed* class
anywhere in the frame (NudeNet's own `detect` hides scores under 0.2; the raw score keeps the scale
continuous so a threshold can be tuned); a clip's score is its highest frame. `curate.filters.max_nsfw`
drops clips above it with drop_reason "unsafe".
"""

from __future__ import annotations

import os

import numpy as np

# NudeNet's classes that make a frame unsafe (the covered parts, faces, feet, belly and armpits do not).
UNSAFE = ("FEMALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "MALE_GENITALIA_EXPOSED", "BUTTOCKS_EXPOSED",
          "ANUS_EXPOSED")
PACKAGE = "nudenet==3.4.2"


class SafetyModelMissing(RuntimeError):
    """The `nudenet` wheel (and with it the bundled ONNX model) is not installed."""


def model_path() -> str:
    """The ONNX file inside the installed nudenet wheel; a clear error when it is not there."""
    try:
        import nudenet
    except ImportError:
        raise SafetyModelMissing(f"the safety measure needs the NudeNet detector: pip install {PACKAGE} "
                                 "(its wheel ships the 320n ONNX model; nothing is downloaded)") from None
    path = os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx")
    if not os.path.isfile(path):
        raise SafetyModelMissing(f"{path} is missing: reinstall {PACKAGE}, whose wheel ships it")
    return path


def _labels() -> list[str]:
    import nudenet.nudenet as nn

    return list(vars(nn)["__labels"])  # the class order of the model's outputs (a module-private list)


class NsfwDetector:
    """The shipped 320n model on onnxruntime: `scores(frames) -> (n,)` unsafe score per RGB frame."""

    def __init__(self, resolution: int = 320, use_cuda: bool = False, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = max(1, threads), 1
        providers = ["CPUExecutionProvider"]
        if use_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(model_path(), opts, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.resolution = int(resolution)
        labels = _labels()
        self.unsafe = np.array([4 + labels.index(c) for c in UNSAFE])  # rows 0..3 of the output are the box

    def _blob(self, rgb: np.ndarray) -> np.ndarray:
        from nudenet.nudenet import _read_image

        # NudeNet's own preprocessing (pad to square, resize, scale, BGR->RGB), so scores match `detect`.
        return _read_image(np.ascontiguousarray(rgb[..., ::-1]), self.resolution)[0]  # (1, 3, R, R)

    def scores(self, frames: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 RGB -> (n,) the highest unsafe class score in each frame, 0..1."""
        if len(frames) == 0:
            return np.zeros(0)
        blob = np.concatenate([self._blob(f) for f in frames])  # (n, 3, R, R)
        out = self.session.run(None, {self.input: blob})[0]  # (n, 4 + classes, anchors)
        return out[:, self.unsafe, :].max(axis=(1, 2)).astype(np.float64)


class SafetyMeasure:
    """`nsfw_score`: the highest unsafe score over a clip's K sampled frames."""

    name = "safety"

    def __init__(self, resolution: int = 320, use_cuda: bool = False, threads: int = 1):
        self.resolution, self.use_cuda, self.threads = int(resolution), bool(use_cuda), int(threads)
        self.detector: NsfwDetector | None = None

    def setup(self) -> None:
        if self.detector is None:
            self.detector = NsfwDetector(self.resolution, self.use_cuda, self.threads)

    def measure(self, anchors: np.ndarray, nexts: np.ndarray | None = None) -> list[dict]:
        self.setup()
        n, k = anchors.shape[:2]
        flat = self.detector.scores(anchors.reshape(n * k, *anchors.shape[2:]))  # (n*K,)
        return [{"nsfw_score": float(s)} for s in flat.reshape(n, k).max(axis=1)]
