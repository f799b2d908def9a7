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
    # frame counts follow the VAE's rule, 1 + k*temporal: off-rule counts round down to a valid one
    assert {b.frames for b in make_buckets([64], [10, 17], ["1:1"])} == {9, 17}
    assert {b.frames for b in make_buckets([64], [17, 33], ["1:1"], temporal=6)} == {13, 31}  # Mochi: 6k+1
    assert {b.frames for b in make_buckets([64], [17, 33], ["1:1"], temporal=8)} == {17, 33}  # LTX-Video: 8k+1
    assert {b.frames for b in make_buckets([64], [1, 5], ["1:1"], temporal=1)} == {1, 5}  # image VAEs: any
    with pytest.raises(ValueError, match=">= 1"):
        make_buckets([64], [0], ["1:1"])


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


def test_encode_stage_normalises_and_records_the_diffusers_vae(tmp_path):
    """EncodeStage with a Wan-class VAE and a T5 by path: the family's normalisation, its identity and
    geometry in every row, and a clip that cannot be encoded becomes an error row."""
    import json

    import numpy as np
    import torch

    from infra.config import load_config
    from infra.schema import tensor_from_bytes
    from pipelines.precompute import EncodeStage
    from tests.tiny_models import save_text_encoder, save_vae
    from training.models.latents import LatentSpec
    from training.models.vae import load_vae

    vae_dir, t5_dir = save_vae("wan", tmp_path / "wan"), save_text_encoder("t5", tmp_path / "t5")
    p = load_config(None, [f"precompute.vae=diffusers:{vae_dir}", f"precompute.text_encoder={t5_dir}",
                           "precompute.latent_dtype=float32", "precompute.text_max_length=4"]).precompute
    rng = np.random.default_rng(0)
    pix = [rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8).tobytes() for _ in range(2)] + [b"short"]
    batch = {"clip_id": np.array(["a-0000000", "b-0000000", "c-0000000"], dtype=object),
             "pixels": np.array(pix, dtype=object), "b_frames": np.array([9, 9, 9]),
             "b_height": np.array([32, 32, 32]), "b_width": np.array([32, 32, 32]),
             "caption": np.array(["a red square moves left", "a circle", "x"], dtype=object),
             "fps": np.array([12.0, 12.0, 12.0]), "stride": np.array([1, 1, 1]),
             "error": np.array(["", "", ""], dtype=object)}
    stage = EncodeStage(p)
    out = stage({k: v[:2] for k, v in batch.items()})
    spec = LatentSpec.from_row(out["vae"][0], out["vae_id"][0], out["latent_norm"][0])
    assert spec.family == "wan" and out["bucket"][0] == "3x4x4" and not any(out["error"])
    assert list(out["text_len"]) == [4, 3]  # precompute.text_max_length caps the tokens
    x = torch.from_numpy(np.frombuffer(pix[0], np.uint8).reshape(1, 9, 32, 32, 3).copy()).permute(0, 4, 1, 2, 3)
    with torch.no_grad():
        z = load_vae(f"diffusers:{vae_dir}").encode(x.float() / 127.5 - 1).mode()
    stored = tensor_from_bytes(out["latent"][0], out["latent_shape"][0], "float32")
    torch.testing.assert_close(stored, spec.norm.normalize(z)[0])
    mean = torch.tensor(json.loads(out["latent_norm"][0])["norm"]["mean"]).view(4, 1, 1, 1)
    std = torch.tensor([1.5, 0.5, 2.0, 1.2]).view(4, 1, 1, 1)
    torch.testing.assert_close(stored, (z[0] - mean) / std)  # Wan: (z - latents_mean) / latents_std
    bad = stage({k: v[2:] for k, v in batch.items()})
    assert bad["error_stage"][0] == "precompute:encode" and "encode failed" in bad["error"][0]


def test_encode_stage_refuses_latents_of_the_wrong_shape(tmp_path):
    """CogVideoX's tiled encode at a 64 px tile gives a 17-wide latent for 128 px: rows fail, clearly."""
    import numpy as np

    from infra.config import load_config
    from pipelines.precompute import EncodeStage
    from tests.tiny_models import save_vae

    vae = save_vae("cogvideox", tmp_path / "cog")
    sets = [f"precompute.vae=diffusers:{vae}", "precompute.vae_tile_px=64", "precompute.allow_random_weights=true"]
    batch = {"clip_id": np.array(["a-0000000"], dtype=object), "b_frames": np.array([5]),
             "pixels": np.array([np.zeros((5, 128, 128, 3), np.uint8).tobytes()], dtype=object),
             "b_height": np.array([128]), "b_width": np.array([128]), "caption": np.array(["x"], dtype=object),
             "fps": np.array([12.0]), "stride": np.array([1]), "error": np.array([""], dtype=object)}
    out = EncodeStage(load_config(None, sets).precompute)(dict(batch))
    assert "expected (4, 2, 16, 16)" in out["error"][0] and "vae_tiling" in out["error"][0]
    plain = EncodeStage(load_config(None, [*sets, "precompute.vae_tiling=false"]).precompute)(dict(batch))
    assert not plain["error"][0] and plain["bucket"][0] == "2x16x16"


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
