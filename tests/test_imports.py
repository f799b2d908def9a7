"""The non-runner modules are plain Python/PyTorch: importing them must not import Ray."""

import subprocess
import sys

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

PLAIN_MODULES = [
    "pipelines", "captioning", "training", "infra",
    "infra.schema", "infra.tables", "infra.video", "infra.faults", "infra.worldcheck", "pipelines.ingest",
    "pipelines.manifest", "pipelines.probe",
    "pipelines.split", "infra.config", "infra.storage", "infra.videogen",
    "pipelines.measures", "pipelines.measures.frames", "pipelines.measures.motion", "pipelines.measures.quality",
    "pipelines.measures.ocr", "pipelines.measures.embed", "pipelines.measures.aesthetic", "pipelines.filters",
    "pipelines.dedup", "pipelines.refilter", "pipelines.materialize", "pipelines.report",
    "infra.world", "captioning.sidecar", "captioning.train_captioner", "training.evaluate",
]


def test_plain_modules_do_not_import_ray():
    code = ("import importlib, sys\n"
            f"for m in {PLAIN_MODULES!r}:\n"
            "    importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
            "assert not bad, bad\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]
