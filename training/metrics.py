"""Training metrics without Ray: throughput, MFU and memory between log points, and a CSV +
TensorBoard log under RUN/logs/ (rank 0 writes it; on S3 it is written locally and uploaded whole).
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
from pathlib import Path

import torch

from infra import storage

COLUMNS = ["step", "epoch", "loss", "grad_norm", "lr", "samples_per_s", "tokens_per_s", "mfu", "mem_gb",
           "global_batch", "wall_s"]


def memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated, or this process's resident memory on CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


class Meter:
    """Sums one worker's work between log points: loss, samples, latent tokens, model FLOPs."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.loss_n, self.samples, self.tokens, self.flops = 0.0, 0, 0, 0, 0.0
        self.since = time.perf_counter()

    def add(self, loss: float, samples: int, tokens: int, flops: float) -> None:
        """One micro-batch's loss and work."""
        self.loss_sum, self.loss_n = self.loss_sum + loss, self.loss_n + 1
        self.samples, self.tokens, self.flops = self.samples + samples, self.tokens + tokens, self.flops + flops

    def totals(self) -> list[float]:
        return [self.loss_sum, float(self.loss_n), float(self.samples), float(self.tokens), self.flops]


def rates(totals: list[float], seconds: float, world_size: int, peak_tflops: float) -> dict:
    """Loss and global throughput from totals summed over all workers."""
    loss_sum, loss_n, samples, tokens, flops = totals
    seconds = max(seconds, 1e-9)
    return {"loss": loss_sum / max(loss_n, 1), "samples_per_s": samples / seconds,
            "tokens_per_s": tokens / seconds,
            "mfu": flops / seconds / (world_size * peak_tflops * 1e12)}


class MetricsLog:
    """metrics.csv and TensorBoard events under RUN/logs/; rows past `resume_step` are dropped
    first, so a run resumed after a failure does not repeat steps."""

    def __init__(self, run_dir: str, resume_step: int = 0):
        self.remote = storage.join(run_dir, "logs") if storage.is_s3(run_dir) else None
        self.dir = Path(tempfile.mkdtemp(prefix="rf-logs-")) if self.remote else Path(run_dir) / "logs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.dir / "metrics.csv"
        rows = self._existing_rows()
        rows = [r for r in rows if int(r["step"]) <= resume_step]
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.dir / "tb"))

    def _existing_rows(self) -> list[dict]:
        if self.remote and storage.exists(storage.join(self.remote, "metrics.csv")):
            text = storage.read_text(storage.join(self.remote, "metrics.csv"))
        elif not self.remote and self.csv_path.exists():
            text = self.csv_path.read_text()
        else:
            return []
        return list(csv.DictReader(io.StringIO(text)))

    def write(self, row: dict) -> None:
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore").writerow(row)
        for key in COLUMNS[2:]:
            if row.get(key) is not None:
                self.tb.add_scalar(f"train/{key}", row[key], row["step"])

    def sync(self) -> None:
        """Flush, and upload the log files when the run directory is on S3."""
        self.tb.flush()
        if not self.remote:
            return
        for path in sorted(self.dir.rglob("*")):
            if path.is_file():
                rel = path.relative_to(self.dir).as_posix()
                storage.write_bytes(storage.join(self.remote, rel), path.read_bytes())

    def close(self) -> None:
        self.sync()
        self.tb.close()
        if self.remote:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)


def read_metrics(run_dir: str) -> list[dict]:
    """RUN/logs/metrics.csv as rows of floats (local or S3); [] when there is none."""
    uri = storage.join(run_dir, "logs", "metrics.csv")
    if not storage.exists(uri):
        return []
    rows = csv.DictReader(io.StringIO(storage.read_text(uri)))
    return [{k: float(v) if v not in ("", None) else None for k, v in r.items()} for r in rows]

