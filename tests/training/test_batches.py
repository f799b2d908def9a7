"""Training input without Ray: bucket batches, padding of captions, the row cache, the plan from
footers and the micro-batches each rank runs from its own row groups (tests/training/test_plan.py
has the 4-rank plan)."""

import collections

import pyarrow as pa
import pytest
import torch

from infra.config import load_config
from infra.schema import tensor_from_bytes
from training.data import (BucketBatcher, RankReader, RowCache, arrow_rows, bucket_batch_size, bucket_tokens,
                           collate, read_latents, row_tensors)
from training.synthetic import synthetic_rows, table, write_synthetic_latents
from training.train import plan_run, rank_steps

BUCKETS = {"3x8x8": 11, "2x8x12": 7, "1x12x8": 5}


@pytest.fixture(scope="module")
def rows():
    return list(arrow_rows([table(BUCKETS)]))


def test_synthetic_rows_decode_bit_exact_with_the_caption_embedding():
    raw = synthetic_rows({"2x4x6": 1}, dtype="bfloat16")[0]
    row = row_tensors(raw)
    assert row["latent"].shape == (4, 2, 4, 6) and row["latent"].dtype == torch.bfloat16
    assert row["text_tokens"].shape == (raw["text_len"], 32)
    assert tensor_from_bytes(raw["latent"], raw["latent_shape"], "bfloat16").view(torch.int16).equal(
        row["latent"].view(torch.int16))


def test_bucket_tokens_and_batch_sizes():
    assert bucket_tokens("5x8x8") == 5 * 4 * 4 and bucket_tokens("1x9x8") == 1 * 5 * 4
    assert bucket_batch_size("5x8x8", 8) == 8
    assert bucket_batch_size("5x8x8", 8, token_budget=200) == 2  # 200 // 80 tokens
    assert bucket_batch_size("1x8x8", 8, token_budget=200) == 12  # 200 // 16
    assert bucket_batch_size("5x8x8", 8, batch_sizes={"5x8x8": 3}, token_budget=200) == 3
    assert bucket_batch_size("9x64x64", 8, token_budget=10) == 1  # never zero


def test_plan_deals_every_row_group_to_one_rank_balanced_per_bucket(tmp_path):
    root = write_synthetic_latents(str(tmp_path / "pre"), BUCKETS, rows_per_file=4, row_group_rows=2)
    cfg = load_config(None, ["train.num_workers=2", "train.batch_size=2"])
    plan, _ = plan_run(cfg, root)
    assigned = sorted(i for rank in plan.rank_groups for i in rank)
    assert assigned == list(range(len(plan.groups)))  # every row group, to one rank
    for b, n in BUCKETS.items():
        per_rank = [plan.rank_rows(r).get(b, 0) for r in range(2)]
        assert sum(per_rank) == n and max(per_rank) - min(per_rank) <= 2  # 2 = one row group
    assert [sum(c.values()) for c in plan.rank_batches] == [plan.steps_per_epoch] * 2
    assert plan == plan_run(cfg, root)[0]  # the same footers give the same plan
    with pytest.raises(ValueError, match="rank 1 gets 0 rows"):
        plan_run(load_config(None, ["train.num_workers=2"]), write_synthetic_latents(
            str(tmp_path / "one"), {"1x8x8": 2}, row_group_rows=2))


def test_batcher_sees_every_row_once_per_epoch_and_never_mixes_buckets(rows):
    sizes = {"3x8x8": 4, "2x8x12": 3, "1x12x8": 2}
    batcher = BucketBatcher(sizes, shuffle_buffer=6, seed=1)
    orders = []
    for epoch in range(3):
        batches = list(batcher.batches(rows, epoch))
        seen = [r["clip_id"] for b in batches for r in b]
        assert sorted(seen) == sorted(r["clip_id"] for r in rows) and len(set(seen)) == len(seen)
        for b in batches:
            assert len({r["bucket"] for r in b}) == 1
            assert len(b) <= sizes[b[0]["bucket"]]
        counts = collections.Counter(b[0]["bucket"] for b in batches)
        assert counts == {k: -(-n // sizes[k]) for k, n in BUCKETS.items()}  # ceil(n / size) each
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled every epoch
    again = [r["clip_id"] for b in BucketBatcher(sizes, 6, seed=1).batches(rows, 0) for r in b]
    assert again == orders[0]  # same seed, same epoch, same batches


def test_batcher_refuses_a_bucket_missing_from_the_plan(rows):
    with pytest.raises(KeyError, match="not in the plan"):
        list(BucketBatcher({"3x8x8": 2}).batches(rows))


def test_batcher_follows_planned_sizes_and_checks_them(rows):
    rows3 = [r for r in rows if r["bucket"] == "3x8x8"]  # 11 rows
    sizes = [3, 3, 3, 2]
    batches = list(BucketBatcher({"3x8x8": sizes}, shuffle_buffer=4, seed=2).batches(rows3))
    assert [len(b) for b in batches] == sizes
    assert sorted(r["clip_id"] for b in batches for r in b) == sorted(r["clip_id"] for r in rows3)
    with pytest.raises(RuntimeError, match="fewer rows than the plan"):
        list(BucketBatcher({"3x8x8": [3, 3, 3, 3]}).batches(rows3))
    with pytest.raises(RuntimeError, match="more rows than the plan"):
        list(BucketBatcher({"3x8x8": [3, 3, 3]}).batches(rows3))


def test_collate_pads_captions_to_the_batch_max_with_a_mask(rows):
    batch_rows = [r for r in rows if r["bucket"] == "2x8x12"][:3]
    lengths = [r["text_tokens"].shape[0] for r in batch_rows]
    b = collate(batch_rows)
    assert b["latent"].shape == (3, 4, 2, 8, 12) and b["latent"].dtype == torch.float32
    assert b["text_tokens"].shape == (3, max(lengths), 32)
    assert b["text_mask"].sum(1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert torch.equal(b["text_tokens"][i, :n], batch_rows[i]["text_tokens"].float())
        assert not b["text_tokens"][i, n:].any()
    with pytest.raises(ValueError, match="mixes buckets"):
        collate([rows[0], next(r for r in rows if r["bucket"] != rows[0]["bucket"])])


def test_row_cache_keeps_row_groups_while_they_fit(rows):
    cache, off = RowCache(limit_mb=64), RowCache(0)
    cache.offer(0, rows[:3])
    off.offer(0, rows[:3])
    assert cache.get(0) == rows[:3] and off.get(0) is None
    small = RowCache(1)
    small.limit = 3000  # bytes: one small row group, not two
    small.offer("a", rows[:1])
    small.offer("b", rows[1:3])
    assert small.get("a") == rows[:1] and small.get("b") is None


def _reader_steps(plan, t, rank, start, count, cache_mb=0):
    reads = []
    reader = RankReader(plan, rank, t.seed, cache_mb)
    load = reader._load
    reader._load = lambda i: reads.append(i) or load(i)
    gen = rank_steps(reader, plan, t, rank, start)
    return [next(gen) for _ in range(count)], reads


def test_rank_steps_cover_the_rank_each_epoch_and_resume_mid_epoch_identically(tmp_path):
    root = write_synthetic_latents(str(tmp_path / "pre"), BUCKETS, row_group_rows=3)
    cfg = load_config(None, ["train.num_workers=2", "train.batch_size=3", "train.shuffle_buffer=4",
                             "train.grad_accum_steps=2"])
    t, (plan, _) = cfg.train, plan_run(cfg, root)
    spe = plan.steps_per_epoch
    assert spe % 2 == 0  # whole optimizer steps per epoch
    table_rows = read_latents(root, columns=["clip_id", "bucket"])
    bucket_of = dict(zip(table_rows["clip_id"].to_pylist(), table_rows["bucket"].to_pylist()))
    seen = []
    for rank in range(2):
        steps, reads = _reader_steps(plan, t, rank, 0, 2 * spe)
        assert sorted(reads) == sorted(list(range(len(plan.rank_groups[rank]))) * 2)  # own groups, once an epoch
        for epoch in range(2):
            chunk = steps[epoch * spe:(epoch + 1) * spe]
            ids = [cid for batch, _ in chunk for cid in batch["clip_ids"]]
            assert len(ids) == len(set(ids)) == sum(plan.rank_rows(rank).values())  # no row twice: no padding
            assert all(e == epoch for _, e in chunk)
            assert all({bucket_of[c] for c in b["clip_ids"]} == {b["bucket"]} for b, _ in chunk)
            if epoch == 0:
                seen += ids
        k = spe + 3  # resume inside epoch 1: the same batches follow
        resumed, _ = _reader_steps(plan, t, rank, k, spe - 3)
        assert [b["clip_ids"] for b, _ in resumed] == [b["clip_ids"] for b, _ in steps[k:]]
    assert sorted(seen) == sorted(bucket_of)  # the epoch covers the table once


def test_rank_steps_read_each_row_group_once_when_it_fits_the_cache(tmp_path):
    root = write_synthetic_latents(str(tmp_path / "pre"), {"1x8x8": 8}, row_group_rows=2)
    cfg = load_config(None, ["train.num_workers=1", "train.batch_size=2"])
    plan, _ = plan_run(cfg, root)
    _, reads = _reader_steps(plan, cfg.train, 0, 0, 5 * plan.steps_per_epoch, cache_mb=64)
    assert sorted(reads) == list(range(4))


def test_plan_run_reads_specs_and_dims_from_the_index(tmp_path):
    root = write_synthetic_latents(str(tmp_path / "pre"), {"3x8x8": 3, "1x8x8": 2})
    assert read_latents(root).num_rows == 5
    cfg = load_config(None, ["train.num_workers=2", "train.batch_sizes={'1x8x8': 1}", "train.batch_size=2"])
    plan, meta = plan_run(cfg, root)
    assert meta["vae"] == "tiny" and meta["text_encoder"] == "tiny"
    assert meta["channels"] == 4 and meta["text_dim"] == 32 and meta["rows"] == 5
    assert plan.batch_sizes == {"1x8x8": 1, "3x8x8": 2}


def test_plan_run_refuses_a_table_that_mixes_text_encoders(tmp_path):
    from infra import storage
    from infra.schema import LATENTS_SCHEMA, table_from_rows

    rows = synthetic_rows({"1x8x8": 2})
    rows[1]["text_encoder"] = "minilm"
    storage.write_table(table_from_rows(rows, LATENTS_SCHEMA), str(tmp_path / "latents" / "part-0.parquet"))
    with pytest.raises(ValueError, match="mixes text_encoder"):
        plan_run(load_config(None, []), str(tmp_path))



def test_a_precompute_root_named_latents_reads_only_its_table(tmp_path):
    """precompute's default output is CLIPS/../latents: its table is latents/latents, never failures/."""
    import pyarrow.parquet as pq

    from training.data import latents_dir, latents_files

    root = write_synthetic_latents(str(tmp_path / "latents"), {"2x4x6": 3})
    (tmp_path / "latents" / "failures").mkdir()
    pq.write_table(pa.table({"stage": ["precompute"]}), tmp_path / "latents" / "failures" / "part-0.parquet")
    assert latents_dir(root) == str(tmp_path / "latents" / "latents")
    assert latents_dir(str(tmp_path / "latents" / "latents")) == str(tmp_path / "latents" / "latents")
    assert all("/failures/" not in f for f in latents_files(root)) and read_latents(root).num_rows == 3
