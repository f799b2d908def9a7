"""Training input without Ray: the per-rank plan, bucket batches, padding, the row cache and the
steps each rank runs (a fake shard stands in for Ray Train's DataIterator)."""

import collections

import pyarrow as pa
import pytest
import torch

from infra.config import load_config
from infra.schema import tensor_from_bytes
from training.data import (BucketBatcher, RowCache, arrow_rows, bucket_batch_size, bucket_tokens, collate,
                           iter_shard_rows, plan_data, read_latents, row_tensors)
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


def test_plan_deals_every_row_to_one_rank_balanced_per_bucket(rows):
    ids, buckets = [r["clip_id"] for r in rows], [r["bucket"] for r in rows]
    plan = plan_data(ids, buckets, 2, lambda b: 2)
    assigned = [cid for rank in plan.rank_ids for cid in rank]
    assert sorted(assigned) == sorted(ids) and len(set(assigned)) == len(ids)
    by_bucket = dict(zip(ids, buckets))
    for b, n in BUCKETS.items():
        per_rank = [sum(by_bucket[c] == b for c in rank) for rank in plan.rank_ids]
        assert max(per_rank) - min(per_rank) <= 1 and sum(per_rank) == n
    assert abs(len(plan.rank_ids[0]) - len(plan.rank_ids[1])) <= 1  # leftovers spread over ranks
    assert plan.steps_per_epoch == max(plan.rank_batches) and plan.rows == len(ids)
    assert plan_data(list(reversed(ids)), list(reversed(buckets)), 2, lambda b: 2) == plan  # order-free
    with pytest.raises(ValueError, match="cannot feed"):
        plan_data(ids[:1], buckets[:1], 2, lambda b: 2)
    with pytest.raises(ValueError, match="appears more than once"):
        plan_data(ids + ids[:1], buckets + buckets[:1], 2, lambda b: 2)


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


def test_row_cache_replays_a_complete_pass_and_gives_up_when_too_big(rows):
    reads = []

    def read():
        reads.append(1)
        return iter(rows)

    cache = RowCache(limit_mb=64)
    assert list(cache.epoch(read)) == rows and list(cache.epoch(read)) == rows and len(reads) == 1
    partial = RowCache(64)
    next(partial.epoch(read))  # an unfinished pass is not cached
    assert partial.rows is None
    off, tiny = RowCache(0), RowCache(1)
    tiny.limit = 1000  # bytes: a few rows only
    for c in (off, tiny):
        for _ in range(2):
            assert list(c.epoch(read)) == rows
        assert c.rows is None
    assert len(reads) == 6


class FakeShard:
    """Ray Train's DataIterator, as far as rank_steps uses it: iter_batches over Arrow tables."""

    def __init__(self, tbl: pa.Table):
        self.table, self.passes = tbl, 0

    def iter_batches(self, batch_size, batch_format, prefetch_batches):
        self.passes += 1
        yield from self.table.to_batches(max_chunksize=batch_size)


def _rank_tables(tbl, plan):
    ids = tbl["clip_id"].to_pylist()
    return [tbl.take([i for i, c in enumerate(ids) if c in set(rank)]) for rank in plan.rank_ids]


def test_rank_steps_pad_short_ranks_and_resume_mid_epoch_identically():
    tbl = table(BUCKETS)
    t = load_config(None, ["train.batch_size=3", "train.shuffle_buffer=4", "train.cache_mb=0"]).train
    plan = plan_data(tbl["clip_id"].to_pylist(), tbl["bucket"].to_pylist(), 2, lambda b: 3)
    spe = plan.steps_per_epoch
    assert min(plan.rank_batches) < spe  # one rank must pad: the case under test
    tables = _rank_tables(tbl, plan)
    per_rank = []
    for rank in range(2):
        shard = FakeShard(tables[rank])
        gen = rank_steps(lambda: iter_shard_rows(shard), plan, t, rank, 0)
        steps = [next(gen) for _ in range(2 * spe)]
        per_rank.append(steps)
        for epoch in range(2):
            chunk = steps[epoch * spe:(epoch + 1) * spe]
            real = [cid for batch, w, _ in chunk if w > 0 for cid in batch["clip_ids"]]
            assert sorted(real) == sorted(plan.rank_ids[rank])  # every row of the rank, once
            assert sum(w == 0 for _, w, _ in chunk) == spe - plan.rank_batches[rank]
            assert all(e == epoch for _, _, e in chunk)
        # resume at a step inside epoch 1: the same batches follow
        k = spe + 2
        again = FakeShard(tables[rank])
        resumed = rank_steps(lambda: iter_shard_rows(again), plan, t, rank, k)
        for i in range(k, 2 * spe):
            batch, w, e = next(resumed)
            assert batch["clip_ids"] == steps[i][0]["clip_ids"] and w == steps[i][1] and e == steps[i][2]
    seen = [cid for steps in per_rank for b, w, _ in steps[:spe] if w > 0 for cid in b["clip_ids"]]
    assert sorted(seen) == sorted(tbl["clip_id"].to_pylist())  # the epoch covers the table once


def test_rank_steps_read_the_shard_once_when_it_fits_the_cache():
    tbl = table({"1x8x8": 4})
    t = load_config(None, ["train.batch_size=2"]).train
    plan = plan_data(tbl["clip_id"].to_pylist(), tbl["bucket"].to_pylist(), 1, lambda b: 2)
    shard = FakeShard(tbl)
    gen = rank_steps(lambda: iter_shard_rows(shard), plan, t, 0, 0)
    batches = [next(gen) for _ in range(5 * plan.steps_per_epoch)]
    assert shard.passes == 1 and all(w == 1.0 for _, w, _ in batches)


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
