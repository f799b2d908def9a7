"""The training data plan with 4 ranks and no Ray: the driver plans from footers, each rank's reader
opens only its own shard files (counted by a filesystem that records every open and byte read), the
ranks together read every row exactly once per epoch, and every rank makes the same number of
micro-batches although the table is skewed (so nothing pads)."""

from __future__ import annotations

import collections
import logging
import math

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from infra import storage
from infra.config import load_config
from training.data import RankReader, read_latents
from training.plan import contiguous_blocks
from training.synthetic import write_synthetic_latents
from training.train import plan_run, rank_steps

# skewed: one big bucket, one middling, one with a single row group; rows of 50-100 KB, so a row
# group (4 rows) is larger than the 64 KB pyarrow reads at a file's end to find its footer
SKEWED = {"5x48x48": 40, "4x48x64": 13, "2x64x48": 3}
FOOTER_READ = 64 * 1024
WORLD = 4


class _Counting:
    """A file object that counts the bytes read through it."""

    def __init__(self, f, log: collections.Counter):
        self.f, self.log = f, log

    def read(self, n=-1):
        data = self.f.read(n)
        self.log["bytes"] += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self.f, name)


class CountingHandler(pafs.FileSystemHandler):
    """The local filesystem, recording which files each reader opens and how many bytes it reads."""

    def __init__(self):
        self.local, self.who = pafs.LocalFileSystem(), "driver"
        self.opened: dict[str, set] = collections.defaultdict(set)
        self.read: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def _input(self, path):
        self.opened[self.who].add(path)
        return pa.PythonFile(_Counting(open(path, "rb"), self.read[self.who]), mode="r")

    open_input_file = open_input_stream = _input

    def get_type_name(self):
        return "counting"

    def equals(self, other):
        return self is other

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def _unused(self, *args, **kwargs):  # training never writes or deletes here
        raise NotImplementedError

    copy_file = create_dir = delete_dir = delete_dir_contents = delete_file = _unused
    delete_root_dir_contents = move = open_append_stream = open_output_stream = _unused


@pytest.fixture
def counting(monkeypatch):
    handler = CountingHandler()
    fs = pafs.PyFileSystem(handler)
    real = storage.filesystem
    monkeypatch.setattr(storage, "filesystem", lambda uri: (fs, real(uri)[1]) if not storage.is_s3(uri) else real(uri))
    return handler


def _group_bytes(plan, i) -> int:
    g = plan.groups[i]
    meta = pq.read_metadata(storage.filesystem(plan.files[g.file])[1])
    rg = meta.row_group(g.index)
    return sum(rg.column(j).total_compressed_size for j in range(rg.num_columns))


def _epochs(plan, t, rank, epochs, start=0):
    steps = rank_steps(RankReader(plan, rank, t.seed, cache_mb=0), plan, t, rank, start)
    return [next(steps) for _ in range(epochs * plan.steps_per_epoch - start)]


def test_four_ranks_read_only_their_own_files_and_cover_the_table_once(tmp_path, counting):
    root = write_synthetic_latents(str(tmp_path / "pre"), SKEWED, rows_per_file=8, row_group_rows=4)
    cfg = load_config(None, [f"train.num_workers={WORLD}", "train.batch_size=3", "train.grad_accum_steps=2",
                             "train.shuffle_buffer=5"])
    t = cfg.train
    plan, meta = plan_run(cfg, root)
    assert meta["rows"] == sum(SKEWED.values()) and meta["buckets"] == dict(sorted(SKEWED.items()))
    table_bytes = sum((p.stat().st_size for p in (tmp_path / "pre" / "latents").glob("*.parquet")))

    # the skew is real: at full batch sizes the ranks would need different batch counts (the old
    # code padded the short ones with zero-loss steps that AdamW still applied)
    natural = [sum(math.ceil(n / plan.batch_sizes[b]) for b, n in plan.rank_rows(r).items()) for r in range(WORLD)]
    assert len(set(natural)) > 1, natural
    spe = plan.steps_per_epoch
    assert spe % 2 == 0 and spe == math.ceil(max(natural) / 2) * 2
    assert [sum(c.values()) for c in plan.rank_batches] == [spe] * WORLD

    seen = []
    for rank in range(WORLD):
        counting.who = rank
        steps = _epochs(plan, t, rank, 2)
        own_files = {storage.filesystem(plan.files[plan.groups[i].file])[1] for i in plan.rank_groups[rank]}
        assert counting.opened[rank] == own_files  # only its own files
        # two epochs of its own row groups, each with a footer read: about a quarter of the table each
        own = sum(_group_bytes(plan, i) + FOOTER_READ for i in plan.rank_groups[rank])
        assert 0 < counting.read[rank]["bytes"] <= 2 * own < 2 * 0.5 * table_bytes
        for epoch in range(2):
            ids = [c for batch, e in steps[epoch * spe:(epoch + 1) * spe] for c in batch["clip_ids"]]
            assert len(ids) == len(set(ids)) == sum(plan.rank_rows(rank).values())  # no row twice in an epoch
            if epoch == 0:
                seen += ids
        # a restart inside epoch 1 resumes at the same batch
        k = spe + spe // 2 + 1
        assert [b["clip_ids"] for b, _ in _epochs(plan, t, rank, 2, start=k)] == [b["clip_ids"] for b, _ in steps[k:]]
    # contiguous blocks: a rank opens few files (a reader of the whole table would open all 8 each)
    assert sum(len(counting.opened[r]) for r in range(WORLD)) <= len(plan.files) + WORLD
    table = read_latents(root, columns=["clip_id"])["clip_id"].to_pylist()
    assert sorted(seen) == sorted(table)  # together: every row exactly once per epoch


def test_the_driver_reads_footers_not_rows(tmp_path, counting):
    root = write_synthetic_latents(str(tmp_path / "pre"), {"5x48x48": 64}, rows_per_file=16, row_group_rows=4)
    plan, _ = plan_run(load_config(None, [f"train.num_workers={WORLD}", "train.batch_size=2"]), root)
    table_bytes = sum((p.stat().st_size for p in (tmp_path / "pre" / "latents").glob("*.parquet")))
    assert len(plan.files) == 4 and len(plan.groups) == 16
    # 4 footers (pyarrow reads a file's last 64 KB) and one row group's shape columns
    assert 0 < counting.read["driver"]["bytes"] < 0.2 * table_bytes


def test_an_older_table_that_mixes_buckets_in_row_groups_still_plans(tmp_path, caplog):
    root = write_synthetic_latents(str(tmp_path / "old"), SKEWED, rows_per_file=8, row_group_rows=4, mixed=True)
    cfg = load_config(None, [f"train.num_workers={WORLD}", "train.batch_size=3"])
    with caplog.at_level(logging.WARNING, logger="training.plan"):
        plan, _ = plan_run(cfg, root)
    assert "mix buckets" in caplog.text
    assert plan.rows_per_bucket == dict(sorted(SKEWED.items()))
    seen = []
    for rank in range(WORLD):
        steps = _epochs(plan, cfg.train, rank, 1)
        assert len(steps) == plan.steps_per_epoch
        seen += [c for batch, _ in steps for c in batch["clip_ids"]]
    assert sorted(seen) == sorted(read_latents(root, columns=["clip_id"])["clip_id"].to_pylist())


def test_too_few_rows_for_the_workers_fails_at_start_naming_the_fix(tmp_path):
    root = write_synthetic_latents(str(tmp_path / "pre"), {"1x8x8": 6}, rows_per_file=8, row_group_rows=8)
    with pytest.raises(ValueError, match=r"rank 1 gets 0 rows .*precompute.row_group_rows"):
        plan_run(load_config(None, [f"train.num_workers={WORLD}"]), root)


def test_contiguous_blocks_balance_weights():
    assert contiguous_blocks([4, 4, 2], 2) == [(0, 1), (1, 3)]
    blocks = contiguous_blocks([1] * 10, 4)
    assert blocks[0][0] == 0 and blocks[-1][1] == 10 and all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert sorted(e - s for s, e in blocks) == [2, 2, 3, 3]
    assert contiguous_blocks([5], 3) == [(0, 0), (0, 1), (1, 1)]


@pytest.mark.parametrize("ratio", [0.25, 0.6])
def test_image_ratio_sets_the_share_of_image_batches_on_every_rank(tmp_path, ratio):
    # 2 ranks, 24 stills (1x8x8) beside 40 clips: at full batches the mix would be 3 image batches of 8
    root = write_synthetic_latents(str(tmp_path / "pre"), {"1x8x8": 24, "3x8x8": 40}, rows_per_file=8, row_group_rows=4)
    cfg = load_config(None, ["train.num_workers=2", "train.batch_size=4", f"train.image_ratio={ratio}"])
    plan, _ = plan_run(cfg, root)
    spe = plan.steps_per_epoch
    for rank in range(2):
        steps = _epochs(plan, cfg.train, rank, 1)
        images = sum(batch["bucket"] == "1x8x8" for batch, _ in steps)
        assert len(steps) == spe and images == round(ratio * spe)  # the same counts on both ranks
        assert max(len(b["clip_ids"]) for b, _ in steps) <= 4  # the ratio splits batches, never grows them
        ids = [c for batch, _ in steps for c in batch["clip_ids"]]
        assert len(ids) == len(set(ids)) == sum(plan.rank_rows(rank).values())  # every row once
    assert abs(plan.image_batch_share - ratio) < 0.1


def test_an_image_ratio_the_rows_cannot_make_fails_naming_the_key(tmp_path):
    root = write_synthetic_latents(str(tmp_path / "pre"), {"1x8x8": 8, "3x8x8": 64}, rows_per_file=8, row_group_rows=4)
    with pytest.raises(ValueError, match=r"train.image_ratio=0.9.*rank \d has 4 image"):
        plan_run(load_config(None, ["train.num_workers=2", "train.batch_size=4", "train.image_ratio=0.9"]), root)


def test_sequence_parallel_ranks_plan_per_data_rank(tmp_path):
    root = write_synthetic_latents(str(tmp_path / "pre"), {"3x8x8": 32}, rows_per_file=8, row_group_rows=4)
    cfg = load_config(None, ["train.num_workers=4", "train.sequence_parallel=2", "train.batch_size=4",
                             "train.model=VDiT-XS/2"])
    plan, _ = plan_run(cfg, root)
    assert len(plan.rank_groups) == 2 and plan.steps_per_epoch == 4  # 2 data ranks of 16 rows
    for workers, sp, message in ((4, 3, "must divide train.num_workers=4"), (8, 8, "must divide VDiT-XS/2's 4 heads")):
        with pytest.raises(ValueError, match=message):
            plan_run(load_config(None, [f"train.num_workers={workers}", f"train.sequence_parallel={sp}",
                                        "train.model=VDiT-XS/2"]), root)
