"""The live progress line (infra/progress.py): its numbers, a terminal's redraw, plain lines elsewhere, --quiet."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

from infra.progress import StepPrinter, data_progress, format_duration, format_step_line, quiet, set_quiet


def test_durations_read_like_a_clock():
    assert [format_duration(s) for s in (0, 9.6, 65, 3599, 3720)] == ["0s", "10s", "1m05s", "59m59s", "1h02m"]
    assert format_duration(None) == format_duration(float("inf")) == format_duration(-1) == "?"


def test_step_line_has_step_loss_rate_and_eta():
    line = format_step_line("train", 40, 120, 0.63412, 12.46, 65)
    assert line == "train  step 40/120  loss 0.6341  12.5 samples/s  ETA 1m05s"
    assert format_step_line("train", 1, 120, None, None, None).endswith("loss ?  ? samples/s  ETA ?")


def test_rate_and_eta_come_from_the_steps_seen():
    out = io.StringIO()
    p = StepPrinter("train", total=100, samples_per_step=8, stream=out, every_s=0, tty=False)
    p.update(10, 1.0, at=100.0)  # a resumed run: the first step seen is 10
    p.update(20, 0.5, at=105.0)  # 10 steps in 5 s: 2 steps/s = 16 samples/s; 80 steps left = 40 s
    assert out.getvalue().splitlines()[-1] == "train  step 20/100  loss 0.5000  16.0 samples/s  ETA 40s"


def test_plain_lines_are_rate_limited_and_the_last_step_is_always_printed():
    out = io.StringIO()
    p = StepPrinter("train-vae", total=50, samples_per_step=2, stream=out, every_s=3600, tty=False)
    for step in range(1, 50):
        p.update(step, 0.1, at=float(step))
    p.close()
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["1/50", "49/50"]  # the first, then the last at close
    assert "\r" not in out.getvalue()


def test_a_terminal_gets_one_line_redrawn_in_place():
    out = io.StringIO()
    p = StepPrinter("train", total=3, samples_per_step=1, stream=out, tty=True)
    for step in (1, 2, 3):
        p.update(step, 0.2, at=float(step))
    p.close()
    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("step 3/3  loss 0.2000  1.0 samples/s  ETA 0s\n")
    assert text.count("\n") == 1


def test_quiet_turns_ray_data_bars_off(monkeypatch):
    monkeypatch.delenv("REELFORGE_QUIET", raising=False)
    ctx = SimpleNamespace(enable_progress_bars=False)
    data_progress(ctx)
    assert ctx.enable_progress_bars and not quiet()
    level = logging.getLogger("ray.data").level
    set_quiet(True)
    try:
        data_progress(ctx)
        assert quiet() and not ctx.enable_progress_bars
    finally:
        set_quiet(False)
        logging.getLogger("ray.data").setLevel(level)
