"""Buckets, windows and shards of precompute (plain functions, no Ray)."""

import pytest

from pipelines.precompute import Bucket, assign_bucket, frame_window, keep_draw, make_buckets
from pipelines.runner_precompute import plan_shards, row_group_rows


def test_buckets_cover_both_orientations_and_round_sides():
    bs = make_buckets([64], [9, 17], ["1:1", "16:9"], multiple=16)
    sizes = {(b.height, b.width) for b in bs}
    assert (64, 64) in sizes and (48, 80) in sizes and (80, 48) in sizes
    assert all(b.height % 16 == 0 and b.width % 16 == 0 for b in bs)
    assert {b.frames for b in bs} == {9, 17}
    with pytest.raises(ValueError, match="1 \\+ k"):
        make_buckets([64], [10], ["1:1"])


def test_assign_picks_largest_fitting_bucket_without_upscaling():
    bs = make_buckets([32, 64], [9, 17], ["1:1", "16:9"], multiple=16)
    b, _ = assign_bucket(160, 90, 100, bs)  # landscape 16:9, big enough for 64-res, long enough for 17
    assert (b.frames, b.height, b.width) == (17, 48, 80)
    b, _ = assign_bucket(160, 90, 12, bs)  # too short for 17 frames
    assert b.frames == 9
    b, _ = assign_bucket(60, 34, 40, bs)  # only the 32-res bucket fits
    assert b.height * b.width < 48 * 80 and b.height <= 34 and b.width <= 60
    b, why = assign_bucket(20, 20, 40, bs)  # smaller than every bucket
    assert b is None and "without upscaling" in why
    b, _ = assign_bucket(90, 160, 40, bs)  # portrait goes to a portrait bucket
    assert b.height > b.width


def test_window_is_centred_and_keep_draw_deterministic():
    assert frame_window(10, 50, 9, 1) == (25, 34)
    assert frame_window(0, 9, 9, 1) == (0, 9)
    assert frame_window(0, 40, 9, 2) == (policy := (11, 28)) and policy[1] - policy[0] == 17
    assert keep_draw("a-0000001") == keep_draw("a-0000001") != keep_draw("a-0000002")
    assert 0 <= keep_draw("x") < 1


def test_shards_are_bounded_and_named_deterministically():
    rows = [{"clip_id": f"c{i:03d}", "est_bytes": 100, "b_frames": 9, "b_height": 64, "b_width": 64} for i in range(10)]
    shards = plan_shards(rows, shard_rows=4, shard_bytes=10_000)
    assert [len(s) for _, s in shards] == [4, 4, 2]
    assert plan_shards(rows, 4, 10_000)[0][0] == shards[0][0]
    by_bytes = plan_shards(rows, shard_rows=100, shard_bytes=250)
    assert all(len(s) <= 2 for _, s in by_bytes)
    assert len({pid for pid, _ in by_bytes}) == len(by_bytes)


def test_every_shard_holds_one_bucket_so_training_plans_from_footers():
    rows = [{"clip_id": f"c{i:03d}", "est_bytes": 100, "b_frames": 9, "b_height": 64 if i % 3 else 32,
             "b_width": 64} for i in range(10)]
    shards = plan_shards(rows, shard_rows=3, shard_bytes=10_000)
    assert all(len({(r["b_height"], r["b_width"]) for r in s}) == 1 for _, s in shards)
    assert sorted(r["clip_id"] for _, s in shards for r in s) == [r["clip_id"] for r in rows]
    assert [len(s) for _, s in shards] == [3, 1, 3, 3]  # 4 rows of 32 px, then 6 of 64 px
    big = {"latent": b"x" * 1000, "text_emb": b"y" * 24}
    assert row_group_rows([big] * 500, 32) == 32 and row_group_rows([big] * 500, 32, max_bytes=4096) == 4
    assert row_group_rows([big] * 20, 32) == 2 and row_group_rows([big], 32) == 1  # >= 16 groups when it can
