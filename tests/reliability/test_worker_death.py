"""A Ray worker dies mid-stage (killed like an OOM kill): Ray retries the task and the job completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from infra import storage
from infra.videogen import Scene, write_video

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stage", ["split"])
def test_dead_worker_is_retried_and_nothing_is_lost(tmp_path, cli_env, stage):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        write_video(src / f"v{i}.mp4", [Scene(30 + i), Scene(30, kind="static")], fps=24, seed=i)
    marker = tmp_path / "died.pid"
    env = dict(cli_env, REELFORGE_FAULT=f"kill_once={stage}:{marker}")
    res = subprocess.run([sys.executable, "-m", "infra.cli", "curate", "--input", str(src), "--output",
                          str(tmp_path / "out"), "--config", "configs/tiny.yaml"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert marker.exists(), "no worker was killed: the fault was not injected"
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # that worker really is gone
    videos = storage.read_table(str(tmp_path / "out" / "videos"))
    assert pc.sum(pc.equal(videos["status"], "ok")).as_py() == 4
    clips = storage.read_table(str(tmp_path / "out" / "clips"))
    assert len(set(clips["clip_id"].to_pylist())) == clips.num_rows >= 8  # no row lost, none doubled
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["inputs"] == 4 and manifest["counts"]["failed"] == 0
