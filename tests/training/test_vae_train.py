"""CLI errors that come before any Ray starts (train-vae itself: tests/integration/test_train_vae.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_train_cli_names_a_missing_latents_table(tmp_path, cli_env):
    res = subprocess.run([sys.executable, "-m", "infra.cli", "train", "--latents", str(tmp_path / "nope"),
                          "--output", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, env=cli_env)
    assert res.returncode == 2 and "no Parquet files" in res.stderr
