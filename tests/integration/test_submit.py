"""`reelforge submit`: a real Ray head on 127.0.0.1, a curate job sent through the Ray Jobs API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml

from infra import storage
from infra import submit as sub
from infra.videogen import Scene, write_bad_inputs, write_video

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` with the dashboard (Jobs API) on a free port; killed at the end."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    dash = _free_port()
    log = open(tmp_path_factory.mktemp("head") / "head.log", "w")
    proc = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", "--port", str(_free_port()),
         "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
         "--include-dashboard", "true", "--num-cpus", "2", "--disable-usage-stats",
         # another Ray on this machine (the session's, CI's) holds the default agent ports
         "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
         "--metrics-export-port", str(_free_port()), "--runtime-env-agent-port", str(_free_port())],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while True:
        try:
            sub.client(address).list_jobs()
            break
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"ray head did not start: see {log.name}")
            time.sleep(1)
    yield address
    os.killpg(proc.pid, signal.SIGTERM)  # --block stops the head's processes when it exits
    try:
        proc.wait(timeout=10)  # its graceful stop can wait ~30 s on workers: the group is killed instead
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_build_submission_ships_project_and_resolved_config(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    cfg = tmp_path / "outside.yaml"
    cfg.write_text("curate:\n  partition_size: 3\n")
    kw = sub.build_submission(["curate", "--input", "in dir", "--output", "o", "--config", str(cfg),
                               "--set", "curate.min_clip_s=1.5"], working_dir=str(ROOT))
    assert kw["entrypoint"].startswith("python -m infra.cli curate --input 'in dir' --output o")
    assert kw["entrypoint"].endswith(f"--config env:{sub.CONFIG_ENV}")
    env = kw["runtime_env"]["env_vars"]
    shipped = yaml.safe_load(env[sub.CONFIG_ENV])
    assert shipped["curate"]["partition_size"] == 3 and shipped["curate"]["min_clip_s"] == 1.5
    assert "very-secret-value" not in repr(kw)  # credentials stay on this machine
    assert kw["runtime_env"]["working_dir"] == str(ROOT) and ".venv" in kw["runtime_env"]["excludes"]
    with pytest.raises(Exception, match="curate.nope"):
        sub.build_submission(["curate", "--set", "curate.nope=1"], working_dir=str(ROOT))


def test_submit_curate_to_a_real_head(ray_head, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    write_video(src / "a.mp4", [Scene(30), Scene(30, kind="static")], fps=24, seed=1)
    write_video(src / "b.mp4", [Scene(40)], fps=24, seed=2)
    bad = write_bad_inputs(src / "bad")
    n_bad = sum(1 for name in bad if name.endswith(".mp4"))  # .m4a is not a video extension: not an input
    out = tmp_path / "curated"
    res = subprocess.run(
        [sys.executable, "-m", "infra.cli", "submit", "--address", ray_head, "--wait", "--python", sys.executable,
         "--working-dir", str(ROOT), "--", "curate", "--input", str(src), "--output", str(out),
         "--config", "configs/tiny.yaml"],
        capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    job_id = res.stdout.strip().splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert "clips" in res.stdout  # the job's own summary, streamed back
    videos = storage.read_table(str(out / "videos"))
    failures = storage.read_table(str(out / "failures"))
    assert pc.sum(pc.equal(videos["status"], "ok")).as_py() == 2
    assert pc.sum(pc.equal(videos["status"], "ok")).as_py() + failures.num_rows == 2 + n_bad
    assert any(j["id"] == job_id and j["status"] == "SUCCEEDED" for j in sub.list_jobs(ray_head))
    logs = subprocess.run([sys.executable, "-m", "infra.cli", "jobs", "logs", job_id, "--address", ray_head],
                          capture_output=True, text=True, cwd=ROOT)
    assert logs.returncode == 0 and "videos ok" in logs.stdout


def test_failed_job_exits_non_zero(ray_head, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "infra.cli", "submit", "--address", ray_head, "--wait", "--python", sys.executable,
         "--working-dir", str(ROOT), "--", "curate", "--input", str(tmp_path / "missing"), "--output",
         str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 1 and "FAILED" in res.stderr
