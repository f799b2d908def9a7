"""`reelforge curate` end to end: real Ray, real H.264 files, real S3 endpoint, a killed driver."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from infra import storage
from infra.config import load_config
from infra.videogen import Scene, write_bad_inputs, write_video
from pipelines.runner import run_curate

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _cfg(*sets):
    return load_config(ROOT / "configs" / "tiny.yaml", list(sets))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Good videos with known cuts (one VFR, one rotated, one with audio) + every bad-input kind."""
    d = tmp_path_factory.mktemp("mixed")
    (d / "good").mkdir()
    truth = {}
    truth["good/a.mp4"] = write_video(d / "good" / "a.mp4", [Scene(30), Scene(40), Scene(36, kind="static")], fps=24, seed=1)
    truth["good/b.mov"] = write_video(d / "good" / "b.mov", [Scene(48), Scene(30)], fps=25, width=160, height=96,
                                      rotation=90, seed=2)
    truth["good/c d é.mp4"] = write_video(d / "good" / "c d é.mp4", [Scene(36), Scene(36)], fps=30, audio=True, seed=3)
    truth["good/vfr.mp4"] = write_video(d / "good" / "vfr.mp4", [Scene(45), Scene(45)], fps=24, vfr_drop_every=3, seed=4)
    (d / "good" / "notes.txt").write_text("not an input: no video extension")
    bad = write_bad_inputs(d / "bad")
    os.symlink(d, d / "good" / "loop")  # a symlink loop must not hang the walk
    return d, truth, bad


def _tables(root):
    return {t: storage.read_table(storage.join(root, t)) for t in ("videos", "clips", "failures")}


def test_mixed_folder_accounts_for_every_input(ray_local, mixed_folder, tmp_path):
    folder, truth, bad = mixed_folder
    manifest = run_curate(_cfg(), str(folder), str(tmp_path / "out"))
    t = _tables(str(tmp_path / "out"))
    n_inputs = len(truth) + len([b for b in bad if b.endswith((".mp4", ".mov", ".mkv", ".webm", ".m4a"))
                                 and b.rsplit(".", 1)[-1] in ("mp4", "mov", "mkv", "webm")])
    ok = t["videos"].filter(pc.equal(t["videos"]["status"], "ok"))
    assert ok.num_rows + t["failures"].num_rows == manifest["counts"]["inputs"] == n_inputs
    assert ok.num_rows == len(truth)
    assert all(m.strip() for m in t["failures"]["message"].to_pylist())
    assert set(t["failures"]["stage"].to_pylist()) <= {"probe", "split"}
    # cuts found within one frame, boundaries contiguous, sizes as displayed
    clips = t["clips"].to_pylist()
    for name, tr in truth.items():
        uri = str(folder / name)
        mine = sorted((c for c in clips if c["uri"] == uri), key=lambda c: c["start_frame"])
        found = [c["start_frame"] for c in mine[1:]]
        assert len(found) == len(tr["cuts"]), (name, found, tr["cuts"])
        assert all(abs(a - b) <= 1 for a, b in zip(found, tr["cuts"])), (name, found, tr["cuts"])
        assert mine[0]["start_frame"] == 0
        assert abs(mine[-1]["end_frame"] - tr["scene_ranges"][-1][1]) <= 1
        for c in mine:
            assert (c["width"], c["height"]) == (tr["display_width"], tr["display_height"])
            assert c["fps"] == pytest.approx(tr["fps"], rel=0.02)
            assert c["clip_id"] == f"{c['video_id']}-{c['start_frame']:07d}"
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["counts"]["clips"] == len(clips) and on_disk["config"]["curate"]["partition_size"] == 4
    assert (tmp_path / "out" / "config.yaml").exists()


def test_s3_in_and_out_equals_local(ray_local, s3_bucket, mixed_folder, tmp_path):
    folder, truth, _ = mixed_folder
    for name in truth:
        storage.write_bytes(f"{s3_bucket}/raw/{name}", (folder / name).read_bytes())
        shutil.copy(folder / name, tmp_path / Path(name).name)
    run_curate(_cfg(), f"{s3_bucket}/raw", f"{s3_bucket}/curated")
    run_curate(_cfg(), str(tmp_path), str(tmp_path / "out"))
    remote, local = _tables(f"{s3_bucket}/curated"), _tables(str(tmp_path / "out"))
    cols = ["start_frame", "end_frame", "start_s", "end_s", "num_frames", "fps", "width", "height"]

    def key(t):
        rows = t.to_pylist()
        return sorted((Path(r["uri"]).name, *[r[c] for c in cols]) for r in rows)

    assert key(remote["clips"]) == key(local["clips"])
    assert remote["videos"].num_rows == local["videos"].num_rows == len(truth)
    assert storage.exists(f"{s3_bucket}/curated/manifest.json")


def _cli(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "infra.cli", "curate", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_killed_driver_resumes_to_the_same_tables(tmp_path, cli_env):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        write_video(src / f"v{i}.mp4", [Scene(30 + i), Scene(40, kind="static")], fps=24, seed=10 + i)
    write_bad_inputs(src / "bad")
    common = ["--input", str(src), "--config", "configs/tiny.yaml", "--set", "curate.partition_size=2"]
    clean = _cli([*common, "--output", str(tmp_path / "clean")], cli_env)
    out, _ = clean.communicate(timeout=300)
    assert clean.returncode == 0, out[-3000:]
    assert re.search(r"^curate: (\d+)/\1 videos done$", out, re.M), out[-3000:]  # not a terminal: plain lines
    assert "concurrency" not in out and "Token authentication" not in out, out[-3000:]  # Ray's noise is off

    crashed = tmp_path / "crashed"
    proc = _cli([*common, "--output", str(crashed)], cli_env, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        markers = list((crashed / "_markers").glob("*.json")) if (crashed / "_markers").exists() else []
        if markers:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-run
    proc.wait()
    done_before = len(list((crashed / "_markers").glob("*.json")))
    total = len(json.loads((tmp_path / "clean" / "manifest.json").read_text())["resume"] and
                list((tmp_path / "clean" / "_markers").glob("*.json")))
    assert 1 <= done_before < total

    again = _cli([*common, "--output", str(crashed)], cli_env)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    manifest = json.loads((crashed / "manifest.json").read_text())
    assert manifest["resume"]["skipped_complete"] == done_before
    a, b = _tables(str(tmp_path / "clean")), _tables(str(crashed))
    for name in ("videos", "clips", "failures"):
        sort = {"videos": "uri", "clips": "clip_id", "failures": "uri"}[name]
        assert a[name].sort_by(sort).equals(b[name].sort_by(sort)), name
    assert not list(crashed.rglob(".tmp-*")), "a half-written temp file survived"


def test_rerun_skips_everything_and_config_change_recomputes(ray_local, mixed_folder, tmp_path):
    folder, truth, _ = mixed_folder
    out = str(tmp_path / "out")
    first = run_curate(_cfg(), str(folder / "good"), out)
    again = run_curate(_cfg(), str(folder / "good"), out)
    assert again["resume"]["skipped_complete"] == again["resume"]["partitions"] == first["resume"]["partitions"]
    assert again["counts"] == first["counts"]
    changed = run_curate(_cfg("curate.min_clip_s=1.4"), str(folder / "good"), out)
    assert changed["resume"]["skipped_complete"] == 0
    clips = storage.read_table(storage.join(out, "clips"))
    assert min(e - s for s, e in zip(clips["start_s"].to_pylist(), clips["end_s"].to_pylist())) >= 1.4 - 1e-6


def test_shared_media_traps_never_crash(ray_local, shared_media, tmp_path):
    files = [shared_media / "pyscenedetect" / f for f in ("goldeneye-vfr-drop3.mp4", "issue-134-rotate.mp4",
                                                           "delayed_start.mp4", "issue-236-split-copy.mkv")]
    files += [shared_media / "decord" / f for f in ("corrupted.mp4", "unordered.mov", "video_90.mov")]
    files += [shared_media / "moviepy" / f for f in ("no_duration.webm", "bitmap.mp4", "fire2.mp4")]
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(str(f) for f in files) + "\n" + str(tmp_path / "missing.mp4") + "\n")
    manifest = run_curate(_cfg(), str(listing), str(tmp_path / "out"))
    t = _tables(str(tmp_path / "out"))
    ok = t["videos"].filter(pc.equal(t["videos"]["status"], "ok"))
    assert ok.num_rows + t["failures"].num_rows == len(files) + 1 == manifest["counts"]["inputs"]
    by_name = {Path(r["uri"]).name: r for r in t["videos"].to_pylist()}
    assert (by_name["issue-134-rotate.mp4"]["width"], by_name["issue-134-rotate.mp4"]["height"]) == (544, 1280)
    assert by_name["no_duration.webm"]["duration_s"] and by_name["no_duration.webm"]["duration_s"] > 0
    assert by_name["missing.mp4"]["status"] == "failed"
    vfr = sorted((c for c in t["clips"].to_pylist() if c["uri"].endswith("goldeneye-vfr-drop3.mp4")),
                 key=lambda c: c["start_frame"])
    assert [c["start_frame"] for c in vfr[1:]] == [90, 210]
