"""The dedup job's partition steps and the balance weights, as plain function calls (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from infra import selection, storage
from infra.config import load_config
from infra.schema import DUPLICATES_SCHEMA, WEIGHTS_SCHEMA, table_from_rows
from pipelines import dedup_graph as g
from pipelines import kmeans
from pipelines.balance import cluster_weights
from pipelines.dedup import components, phash_keys
from pipelines.dedup_stages import duplicates_table


def test_rank_keys_sort_best_first_and_round_trip():
    scores = np.array([3.0, np.nan, 5.0, 3.0, -1.0, 0.0])
    keys = g.rank_keys(scores, ["b", "x", "c", "a", "z", "y"])
    assert list(g.key_clip_ids(sorted(keys))) == ["c", "a", "b", "y", "z", "x"]  # score desc, clip_id, NaN last
    back = g.key_scores(keys)
    assert np.array_equal(back[~np.isnan(back)], scores[~np.isnan(scores)]) and np.isnan(back[1])


def _contract(u, v, parts=3):
    """large/small star over hash partitions, as the job runs them, until the edge set stops changing."""
    seen = None
    for rounds in range(1, 30):
        s, d = np.concatenate([u, v]), np.concatenate([v, u])
        p = g.hash_part(s, parts)
        out = [g.large_star(s[p == i], d[p == i]) for i in range(parts)]
        s, d = g.orient(np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out]))
        p = g.hash_part(s, parts)
        out = [g.small_star(s[p == i], d[p == i]) for i in range(parts)]
        u, v = np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])
        now = (g.edges_fingerprint(u, v), len(u))
        if now == seen:
            return sorted(zip(u, v)), rounds
        seen = now
    raise AssertionError("did not settle")


def test_star_contraction_finds_the_components_union_find_finds():
    rng = np.random.default_rng(0)
    n = 400
    names = np.array([f"{i:04d}" for i in range(n)], dtype=object)
    a, b = rng.integers(0, n, 330), rng.integers(0, n, 330)
    a, b = a[a != b], b[a != b]
    got, rounds = _contract(names[a], names[b])
    labels = components(n, np.stack([a, b], axis=1))
    assert got == sorted((names[i], names[labels[i]]) for i in range(n) if labels[i] != i)
    assert rounds < 12


def test_pairs_of_an_increment_are_only_those_with_a_new_member():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**63, 60, dtype=np.int64).astype(np.uint64)
    bits[10], bits[20], bits[40] = bits[3] ^ np.uint64(1), bits[3] ^ np.uint64(6), bits[30] ^ np.uint64(8)
    band, value = np.tile(np.arange(5), 60), phash_keys(bits, 5).reshape(-1)
    row = np.repeat(np.arange(60), 5)
    similar = g.hamming_similar(np.repeat(bits, 5), 4)
    rank = np.array([f"{r:03d}" for r in row])

    def found(new_rows):
        pairs = g.grouped_pairs(g.split_groups(band, value), rank, np.isin(row, new_rows), similar)
        return {tuple(sorted((int(row[i]), int(row[j])))) for i, j in pairs}

    assert found(np.arange(60)) == {(3, 10), (3, 20), (10, 20), (30, 40)}
    assert found(np.arange(15, 60)) == {(3, 20), (10, 20), (30, 40)}  # (3, 10) was found by an earlier run
    assert found(np.arange(50, 60)) == set()


def test_duplicates_table_keeps_the_best_of_each_group():
    keys = g.rank_keys(np.array([2.0, 5.0, 1.0]), ["a", "b", "c"])  # b is best
    batch = pa.table({"node": [keys[0], keys[2], keys[1], keys[0], keys[1]],
                      "root": [keys[1], keys[1], keys[1], "", ""], "bits": [0, 0, 0, 1, 2],
                      "source": ["", "", "", "s3://x/o1", "s3://x/o2"], "part": [0] * 5})
    t = duplicates_table(batch).to_pylist()
    assert [(r["clip_id"], r["group_id"], r["kept"]) for r in t] == [("a", "b", False), ("b", "b", True),
                                                                      ("c", "b", False)]
    assert t[0]["kind"] == "perceptual" and t[1]["kind"] == "semantic" and t[0]["source"] == "s3://x/o1"
    assert t[1]["score"] == 5.0


def test_kmeans_steps_recover_separated_clusters():
    rng = np.random.default_rng(2)
    centres = np.eye(4, 16, dtype=np.float32)
    e = np.concatenate([c + 0.05 * rng.standard_normal((170, 16)) for c in centres]).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    sizes = [170, 20, 6, 4]  # a dominant concept and rare ones: k-means++ still seeds one in each
    skewed = np.concatenate([e[i * 170 : i * 170 + n] for i, n in enumerate(sizes)])
    assert sorted(np.bincount(kmeans.nearest(skewed, kmeans.kmeans_pp(skewed, 4, seed=0)))) == sorted(sizes)
    e = e[np.r_[0:50, 170:220, 340:390, 510:560]]
    c = e[[0, 50, 100, 150]] + 0.2 * rng.standard_normal((4, 16)).astype(np.float32)
    for _ in range(3):
        c = kmeans.update(c, *kmeans.partial_sums(e, c))
    assert np.array_equal(kmeans.nearest(e, c), np.repeat(np.arange(4), 50))
    draws = kmeans.seeded_draw(["a", "b", "c"], 0)
    assert np.array_equal(draws, kmeans.seeded_draw(["a", "b", "c"], 0)) and ((draws >= 0) & (draws < 1)).all()


def test_cluster_weights_even_out_concepts_under_a_cap():
    keep, w = cluster_weights(np.array([1000, 100, 10, 0]), power=1.0, cap=200)
    assert np.allclose(keep[:3], [0.2, 1.0, 1.0]) and keep[3] == 1.0
    after = np.array([200, 100, 10])
    assert np.isclose((after * w[:3]).sum(), after.sum())  # mean weight 1 over the clips kept
    assert np.allclose(after * w[:3], (after * w[:3])[0])  # every concept sampled equally
    _, half = cluster_weights(np.array([400, 100]), power=0.5, cap=None)
    assert np.isclose(half[1] / half[0], 2.0)


def test_selection_skips_removed_duplicates_and_applies_keep_prob(tmp_path):
    dup, bal = str(tmp_path / "dd"), str(tmp_path / "bal")
    storage.write_table(table_from_rows([{"clip_id": "a", "group_id": "b", "kept": False},
                                         {"clip_id": "b", "group_id": "b", "kept": True}], DUPLICATES_SCHEMA),
                        f"{dup}/duplicates/part-00000.parquet")
    ids = [f"c{i:03d}" for i in range(200)]
    storage.write_table(table_from_rows([{"clip_id": c, "keep_prob": 0.25, "sample_weight": 2.0} for c in ids],
                                        WEIGHTS_SCHEMA), f"{bal}/weights/part-00000.parquet")
    for root, run in ((dup, "d1"), (bal, "b1")):
        storage.write_text(f"{root}/manifest.json", f'{{"run": "{run}", "finished": "t"}}')
    clips = pa.table({"clip_id": ["a", "b", "z", *ids], "keep": [True, True, False] + [True] * 200})
    cfg = load_config(None, [f"selection.duplicates={dup}", f"selection.weights={bal}"])
    out, skipped = selection.apply(clips, cfg)
    assert "a" not in out["clip_id"].to_pylist() and {"b", "z"} <= set(out["clip_id"].to_pylist())
    assert skipped["duplicate"] == 1 and 25 < skipped["balance_cap"] < 175  # about 3 in 4 of 200 dropped
    weights = dict(zip(out["clip_id"].to_pylist(), out["sample_weight"].to_pylist()))
    assert {weights[c] for c in ids if c in weights} == {2.0} and weights["b"] == 1.0  # unbalanced clips: 1
    marked = selection.unselect(clips, cfg)
    assert marked["clip_id"].to_pylist() == clips["clip_id"].to_pylist()  # same rows, same order
    assert marked["keep"].to_pylist()[:3] == [False, True, False]
    assert selection.identity(cfg).startswith("-sel") and selection.identity(load_config(None)) == ""
