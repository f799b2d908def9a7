"""Kill the caption and precompute drivers mid-run (SIGKILL of the whole process group) at a
seed-chosen point, re-run, and compare with a clean run: same rows, same values, no duplicates."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from infra import storage
from infra.config import load_config
from infra.videogen import Scene, write_video
from pipelines.runner import run_curate

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def curated(ray_local, tmp_path_factory):
    d = tmp_path_factory.mktemp("crash")
    (d / "src").mkdir()
    for i in range(5):
        write_video(d / "src" / f"v{i}.mp4", [Scene(30 + 2 * i, color=(200, 40 * i, 40)), Scene(30, direction="left")],
                    fps=24, width=128, height=96, seed=40 + i)
    run_curate(load_config(ROOT / "configs/tiny.yaml", ["curate.partition_size=1"]), str(d / "src"), str(d / "cur"))
    clips = storage.read_table(str(d / "cur" / "clips"))
    cap = clips.append_column("caption", pa.array([f"clip {i}" for i in range(clips.num_rows)]))
    storage.write_table(cap, str(d / "capd" / "clips" / "part-00000.parquet"))
    return d


def _run(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "infra.cli", *args, "--config", "configs/tiny.yaml"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _crash_after_commits(args, out: Path, n_commits: int, env) -> int:
    """Run the job in its own process group; the driver SIGKILLs that group after n commits."""
    proc = _run(args, dict(env, REELFORGE_FAULT=f"crash_after_commits={n_commits}"), start_new_session=True)
    proc.communicate(timeout=400)
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    return len(list((out / "_markers").glob("*.json")))


def _equal(a: Path, b: Path, table: str, key: str):
    ta, tb = storage.read_table(str(a / table)), storage.read_table(str(b / table))
    assert ta.num_rows == tb.num_rows and len(set(tb[key].to_pylist())) == tb.num_rows
    ta, tb = ta.sort_by(key), tb.sort_by(key)
    assert {c: ta[c].equals(tb[c]) for c in ta.column_names} == {c: True for c in ta.column_names}, table


@pytest.mark.parametrize("job,seed", [("precompute", 0), ("precompute", 1), ("caption", 0)])
def test_killed_driver_resumes_to_clean_tables(curated, tmp_path, cli_env, job, seed):
    if job == "precompute":
        args = lambda out: ["precompute", "--clips", str(curated / "capd"), "--output", str(out),  # noqa: E731
                            "--set", "precompute.shard_rows=2", "--set", "precompute.resolutions=[32]",
                            "--set", "precompute.frame_counts=[5]"]
        table, key = "latents", "clip_id"
    else:
        args = lambda out: ["caption", "--clips", str(curated / "cur"), "--output", str(out)]  # noqa: E731
        table, key = "clips", "clip_id"
    # the clean reference run in-process (on the session's Ray): same library call the CLI makes
    cfg = load_config(ROOT / "configs/tiny.yaml", [a for a in args(tmp_path) if "=" in a and not a.startswith("-")])
    if job == "precompute":
        from pipelines.runner_precompute import run_precompute

        run_precompute(cfg, str(curated / "capd"), str(tmp_path / "clean"))
    else:
        from captioning.runner import run_caption

        run_caption(cfg, str(curated / "cur"), str(tmp_path / "clean"))
    total = len(list((tmp_path / "clean" / "_markers").glob("*.json")))
    assert total >= 3
    at = random.Random(seed).randint(1, total - 1)
    done = _crash_after_commits(args(tmp_path / "crashed"), tmp_path / "crashed", at, cli_env)
    assert done == at < total
    again = _run(args(tmp_path / "crashed"), cli_env)
    log, _ = again.communicate(timeout=400)
    assert again.returncode == 0, log[-3000:]
    _equal(tmp_path / "clean", tmp_path / "crashed", table, key)
    _equal(tmp_path / "clean", tmp_path / "crashed", "failures", "clip_id")
    assert not list((tmp_path / "crashed").rglob(".tmp-*"))
