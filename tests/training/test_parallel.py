"""Ulysses sequence parallelism: 2 gloo ranks give the single-rank forward and backward."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.models.parallel import padded

HERE = Path(__file__).resolve().parent


def _helper():
    spec = importlib.util.spec_from_file_location("sp_ranks", HERE / "sp_ranks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_padded():
    assert [padded(n, 2) for n in (1, 2, 27)] == [2, 2, 28]



def test_two_rank_sequence_parallel_equals_single_rank(tmp_path):
    helper = _helper()
    ref_out, ref_grads = helper.forward_backward(helper.model())  # one process, all 27 tokens
    out_file = tmp_path / "sp.pt"
    root = HERE.parents[1]
    res = subprocess.run([sys.executable, str(HERE / "sp_ranks.py"), str(out_file), _free_port()], cwd=root,
                         capture_output=True, text=True, timeout=240,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert res.returncode == 0, res.stderr[-3000:]
    got = torch.load(out_file, weights_only=True)
    for rank_out in got["out"]:  # every rank returns the whole output
        torch.testing.assert_close(rank_out, ref_out, rtol=1e-5, atol=1e-5)
    assert set(got["grads"]) == set(ref_grads)
    for name, g in ref_grads.items():
        assert g is not None and g.abs().sum() > 0, name
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
