"""The bad-input corpus: every kind of broken, hostile or odd file a 10M-clip job will meet."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from infra.videogen import Scene, write_bad_inputs, write_video

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "media"


def _patch_box_durations(data: bytes, seconds: float) -> bytes:
    """Rewrite mvhd/mdhd/tkhd durations (version 0 boxes) so the header claims `seconds`."""
    out = bytearray(data)
    for box in (b"mvhd", b"mdhd"):
        i = out.find(box)
        while i != -1:
            if out[i + 4] == 0:  # version 0: creation(4) modification(4) timescale(4) duration(4)
                timescale = struct.unpack(">I", out[i + 16 : i + 20])[0]
                out[i + 20 : i + 24] = struct.pack(">I", int(seconds * timescale) & 0xFFFFFFFF)
            i = out.find(box, i + 4)
    i = out.find(b"tkhd")
    if i != -1 and out[i + 4] == 0:  # tkhd v0: ... track_id(4) reserved(4) duration(4) in movie timescale
        mv = out.find(b"mvhd")
        timescale = struct.unpack(">I", out[mv + 16 : mv + 20])[0]
        out[i + 24 : i + 28] = struct.pack(">I", int(seconds * timescale) & 0xFFFFFFFF)
    return bytes(out)


def build_corpus(d: Path) -> dict[str, str]:
    """Write every corpus file under d; returns {relative path: what it is}."""
    kinds: dict[str, str] = {}
    good = d / "good.mp4"
    write_video(good, [Scene(24), Scene(24, kind="static")], fps=24, seed=7)
    kinds["good.mp4"] = "a normal two-scene video"
    for name, kind in write_bad_inputs(d / "bad").items():
        kinds[f"bad/{name}"] = kind
    data = good.read_bytes()
    for frac in (0.1, 0.5, 0.9):
        (d / f"truncated_{int(frac * 100)}.mp4").write_bytes(data[: int(len(data) * frac)])
        kinds[f"truncated_{int(frac * 100)}.mp4"] = f"cut at {int(frac * 100)}%"
    moov = data.find(b"moov")
    (d / "no_moov.mp4").write_bytes(data[: moov - 4] if moov > 4 else data[:100])
    kinds["no_moov.mp4"] = "moov atom missing"
    ok, png = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))
    (d / "still_image.mp4").write_bytes(png.tobytes())
    kinds["still_image.mp4"] = "a PNG named .mp4"
    write_video(d / "huge_8k_1frame.mp4", [Scene(1, kind="static")], fps=24, width=7680, height=4320, seed=1,
                draw_frame_number=False)
    kinds["huge_8k_1frame.mp4"] = "8K, one frame"
    write_video(d / "tiny_0.04s.mp4", [Scene(1)], fps=25, seed=2)
    kinds["tiny_0.04s.mp4"] = "0.04 s long"
    write_video(d / "liar.mp4", [Scene(48)], fps=24, seed=3)
    (d / "liar.mp4").write_bytes(_patch_box_durations((d / "liar.mp4").read_bytes(), 3 * 3600))
    kinds["liar.mp4"] = "header says 3 hours, 2 s of frames"
    write_video(d / "rotated.mp4", [Scene(30), Scene(30)], fps=24, rotation=90, seed=4)
    kinds["rotated.mp4"] = "rotation metadata"
    write_video(d / "vfr.mp4", [Scene(36), Scene(36)], fps=24, vfr_drop_every=3, seed=5)
    kinds["vfr.mp4"] = "variable frame rate"
    corrupt = bytearray(data)
    mid = len(corrupt) // 2
    corrupt[mid : mid + 2000] = os.urandom(2000)
    (d / "corrupt_middle.mp4").write_bytes(bytes(corrupt))
    kinds["corrupt_middle.mp4"] = "garbage in the middle of the frames"
    (d / "unknown_codec.mp4").write_bytes(data.replace(b"avc1", b"zzz9", 1).replace(b"avcC", b"zzzC", 1))
    kinds["unknown_codec.mp4"] = "a codec no decoder knows"
    odd = d / "ünï cödé 🎬 dir"
    odd.mkdir()
    write_video(odd / "spaces & ünïcode 🎬.mp4", [Scene(30)], fps=24, seed=6)
    kinds["ünï cödé 🎬 dir/spaces & ünïcode 🎬.mp4"] = "unicode and spaces in names"
    write_video(d / "..evil..name.mp4", [Scene(30)], fps=24, seed=8)
    kinds["..evil..name.mp4"] = "dots that look like a parent path"
    os.symlink(d, d / "loop")
    kinds["(symlink loop)"] = "a symlink back to the input folder"
    for name in ("corrupted.mp4", "unordered.mov"):
        src = SHARED / "decord" / name
        if src.exists():
            os.symlink(src, d / f"shared_{name}")
            kinds[f"shared_{name}"] = f"../shared/media/decord/{name}"
    return kinds


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    kinds = build_corpus(d)
    return d, kinds
