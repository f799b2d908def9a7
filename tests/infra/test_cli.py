import subprocess
import sys

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
JOBS = ["curate", "caption", "precompute", "train-vae", "train", "tune", "sample", "submit", "demo"]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_help_lists_every_job_in_the_design():
    res = _run("--help")
    assert res.returncode == 0
    for job in JOBS:
        assert job in res.stdout, job


def test_version():
    res = _run("--version")
    assert res.returncode == 0 and res.stdout.startswith("reelforge ")


def test_tune_refuses_a_bad_search_space_naming_the_key():
    res = _run("tune", "--latents", "nowhere", "--config", "configs/tiny.yaml",
               "--set", "tune.space.train.lrr={loguniform: [1.0e-4, 1.0e-2]}")
    assert res.returncode == 2 and "'train.lrr' is not a config key" in res.stderr.replace("\n", " ")
    res = _run("tune", "--config", "configs/tiny.yaml")
    assert res.returncode == 2 and "--latents is required" in res.stderr
