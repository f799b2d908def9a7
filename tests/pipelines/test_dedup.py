"""Dedup: real copies and re-encodes found among distinct clips; LSH scales without all pairs."""

from __future__ import annotations

import shutil
import time
from fractions import Fraction

import av

import numpy as np
import pytest

from infra.videogen import Scene, write_video
from pipelines.dedup import find_duplicates, group, phash_keys
from pipelines.measures.embed import phash
from infra.video import sample_video

FPS = 24


def _reencode(src, dst, width: int, height: int, crf: int) -> None:
    """Decode `src` and encode its frames again, smaller and at a lower quality (a typical re-upload)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"crf": str(crf), "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            f = frame.reformat(width=width, height=height, format="yuv420p")
            f.pts, f.time_base = i, Fraction(1, FPS)
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))


def _clip_hashes(path, truth, video: str):
    clips = [{"clip_id": f"{video}-{a:07d}", "start_frame": a, "end_frame": b, "fps": float(FPS)}
             for a, b in truth["scene_ranges"]]
    anchors, _ = sample_video(str(path), clips, k=4, short_side=96, pairs=False)
    return [c["clip_id"] for c in clips], [phash(a) for a in anchors], [(b - a) / FPS for a, b in truth["scene_ranges"]]


def test_exact_copy_and_reencode_are_duplicates_distinct_clips_are_not(tmp_path):
    scenes = [Scene(36), Scene(30, kind="static"), Scene(40, kind="text"), Scene(30, kind="blur")]
    a = tmp_path / "a.mp4"
    truth = write_video(a, scenes, fps=FPS, width=160, height=96, seed=5)
    shutil.copy(a, tmp_path / "copy.mp4")
    _reencode(a, tmp_path / "reenc.mp4", width=128, height=80, crf=34)
    other = write_video(tmp_path / "b.mp4", [Scene(36, direction="down"), Scene(30, kind="noise"),
                                            Scene(40, kind="static", text="OTHER")], fps=FPS, width=160, height=96, seed=9)
    ids, hashes, durs = [], [], []
    for name, tr in (("a", truth), ("copy", truth), ("reenc", truth), ("b", other)):
        i, h, d = _clip_hashes(tmp_path / f"{name}.mp4", tr, name)
        ids, hashes, durs = ids + i, hashes + h, durs + d
    dup_of = dict(zip(ids, find_duplicates(ids, np.array(durs), phashes=hashes, max_hamming=4)))
    for a_id in [i for i in ids if i.startswith("a-")]:
        frame = a_id.split("-")[1]
        assert dup_of[a_id] is None  # "a-..." sorts first among equal durations: it is kept
        assert dup_of[f"copy-{frame}"] == a_id and dup_of[f"reenc-{frame}"] == a_id
    assert all(dup_of[i] is None for i in ids if i.startswith("b-"))


def test_winner_is_longest_then_smallest_clip_id():
    h = ["0f0f0f0f0f0f0f0f"] * 4
    assert find_duplicates(["d", "c", "b", "a"], np.array([1.0, 3.0, 3.0, 2.0]), phashes=h) == ["b", "b", None, "b"]
    e = np.array([[1, 0, 0], [0.999, 0.04, 0], [0, 1, 0]], dtype=np.float16)
    assert find_duplicates(["x", "y", "z"], np.ones(3), embeddings=e, min_cosine=0.99) == [None, "x", None]


def test_hamming_band_guarantee():
    """Every pair within max_hamming shares a band: none is missed, whatever bits differ."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    flipped = base.copy()
    for i in range(len(base)):
        for b in rng.choice(64, 5, replace=False):
            flipped[i] ^= np.uint64(1) << np.uint64(b)
    hashes = [f"{int(x):016x}" for x in np.concatenate([base, flipped])]
    ids = [f"{i:04d}" for i in range(600)]
    dup = find_duplicates(ids, np.ones(600), phashes=hashes, max_hamming=5)
    assert dup[300:] == ids[:300] and dup[:300] == [None] * 300
    assert phash_keys(base[:1], 6).shape == (1, 6)


@pytest.mark.parametrize("kind", ["phash", "embedding"])
def test_scales_to_many_clips_without_all_pairs(kind):
    rng = np.random.default_rng(1)
    n, planted = (200_000, 2000) if kind == "phash" else (50_000, 500)
    src = rng.choice(n // 2, planted, replace=False)
    dst = n // 2 + rng.choice(n // 2, planted, replace=False)
    ids = [f"c{i:07d}" for i in range(n)]
    if kind == "phash":
        bits = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
        bits[dst] = bits[src] ^ (np.uint64(1) << rng.integers(0, 64, planted).astype(np.uint64))  # 1 bit off
        data = {"phashes": [f"{int(b):016x}" for b in bits]}
    else:
        e = rng.standard_normal((n, 64)).astype(np.float32)
        e[dst] = e[src] + 0.05 * rng.standard_normal((planted, 64)).astype(np.float32)  # cosine ~0.998
        data = {"embeddings": e.astype(np.float16)}
    t0 = time.perf_counter()
    dup = find_duplicates(ids, np.ones(n), **data)
    elapsed = time.perf_counter() - t0
    assert [dup[d] for d in dst] == [ids[s] for s in src]
    assert sum(d is not None for d in dup) == planted  # random clips are never merged
    assert elapsed < 30, elapsed  # an all-pairs pass over 2e10 (or 1.25e9) pairs would not finish


def test_a_huge_bucket_of_identical_clips_is_linear():
    n = 100_000
    keys = np.zeros((n, 4), dtype=np.int64)  # everything in one bucket per band
    calls = []

    def similar(a, b):
        calls.append(len(a) * len(b))
        return np.ones((len(a), len(b)), dtype=bool)

    winner = group(keys, similar, np.arange(n))
    assert (winner == 0).all() and sum(calls) <= 4 * n
