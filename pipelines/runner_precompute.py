"""The precompute job on Ray Data: captioned clips -> bucketed pixels (CPU tasks) -> latents (actor pool).

The driver plans everything cheap and deterministic up front (which clips are eligible, their
bucket, the shards), so shards have deterministic names and a re-run skips complete ones; it then
gathers each shard's rows (latent bytes, small) and commits it with a marker, as curate does.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import time
from collections.abc import Callable

import numpy as np

from infra import selection, storage, tables
from infra.config import ReelForgeConfig
from infra.faults import fault_point
from infra.progress import data_progress
from infra.runtime import model_path, placement, ray_when_needed
from infra.schema import LATENTS_SCHEMA, LATENTS_STATISTICS, table_from_rows
from pipelines import precompute

log = logging.getLogger(__name__)
ROW_GROUP_BYTES = 64 * 2**20  # a row group is the unit one training rank reads
_CLIP_COLS = ["clip_id", "uri", "start_frame", "end_frame", "fps", "width", "height", "num_frames", "caption", "keep",
              "sample_weight", "media_type"]


class PrecomputeError(ValueError):
    """The input cannot be precomputed at all (no clips table, no captions)."""


def models_at_start(cfg: ReelForgeConfig):
    """The VAE's LatentSpec (loaded once here, on the driver) and the random-weights notes; a missing
    model or random weights without precompute.allow_random_weights fail here, before Ray starts."""
    from training.models.latents import describe_vae
    from training.models.text import check_text_encoder
    from training.models.vae import is_random_vae, load_vae, refuse_random_models

    p = cfg.precompute
    notes = refuse_random_models(p.vae, p.text_encoder, "precompute", p.allow_random_weights)
    check_text_encoder(p.text_encoder)
    return describe_vae(load_vae(p.vae), p.vae, random=is_random_vae(p.vae)), notes


def plan_clips(cfg: ReelForgeConfig, clips_root: str, spec=None) -> tuple[list[dict], dict[str, int], int]:
    """Eligible clip rows with their bucket window, drop counts per reason, and the clips read."""
    p = cfg.precompute
    folder = storage.join(clips_root, "clips")
    table = storage.read_table(folder)
    if "caption" not in table.column_names:
        raise PrecomputeError(f"{folder} has no caption column: run `reelforge caption` first")
    spec = spec or models_at_start(cfg)[0]
    temporal, spatial = spec.temporal, spec.spatial
    buckets = {"video": precompute.make_buckets(p.resolutions, p.frame_counts, p.aspect_ratios,
                                                multiple=spatial * 2, temporal=temporal),
               "image": precompute.image_buckets(p.resolutions, p.aspect_ratios, multiple=spatial * 2)}
    dropped: dict[str, int] = collections.Counter()
    selected, skipped = selection.apply(table, cfg)  # selection.duplicates / selection.weights
    dropped.update(skipped)
    rows = []
    for r in sorted(selected.select([c for c in _CLIP_COLS if c in selected.column_names]).to_pylist(),
                    key=lambda r: r["clip_id"]):
        if r.get("keep") is False:
            dropped["not_kept"] += 1
            continue
        if not (r.get("caption") or "").strip():
            dropped["no_caption"] += 1
            continue
        kind = "image" if r.get("media_type") == "image" else "video"  # images: T = 1 buckets only
        bucket, why = precompute.assign_bucket(r["width"], r["height"], r["end_frame"] - r["start_frame"],
                                               buckets[kind], p.frame_stride)
        if bucket is None:
            dropped["no_bucket"] += 1
            continue
        name = bucket.name(temporal, spatial)
        if precompute.keep_draw(r["clip_id"], p.seed) >= p.keep_prob.get(name, 1.0):
            dropped["bucket_keep_prob"] += 1
            continue
        ws, we = precompute.frame_window(r["start_frame"], r["end_frame"], bucket.frames, p.frame_stride)
        latent = bucket.latent_shape(temporal, spatial)
        rows.append({**{k: r.get(k) for k in ("clip_id", "uri", "fps", "caption", "sample_weight")}, "win_start": ws,
                     "win_end": we, "b_frames": bucket.frames, "b_height": bucket.height, "b_width": bucket.width,
                     "stride": p.frame_stride, "est_bytes": 2 * spec.latent_channels * int(np.prod(latent)) + 8192})
    return rows, dict(dropped), table.num_rows


def plan_shards(rows: list[dict], shard_rows: int, shard_bytes: int) -> list[tuple[str, list[dict]]]:
    """Cut rows into shards of ONE bucket each (buckets in size order, clip_ids in order within one),
    bounded by rows and estimated bytes; deterministic ids. A shard's bucket is then in its footer's
    statistics, so training plans from footers alone (training/plan.py)."""
    by_bucket: dict[tuple, list[dict]] = collections.defaultdict(list)
    for r in sorted(rows, key=lambda r: r["clip_id"]):
        by_bucket[(r["b_frames"], r["b_height"], r["b_width"])].append(r)
    shards = []
    for key in sorted(by_bucket):
        current, size = [], 0
        for r in by_bucket[key]:
            if current and (len(current) >= shard_rows or size + r["est_bytes"] > shard_bytes):
                shards.append(current)
                current, size = [], 0
            current.append(r)
            size += r["est_bytes"]
        shards.append(current)
    return [(f"{i:05d}-{tables.digest(r['clip_id'] for r in shard)}", shard) for i, shard in enumerate(shards)]


def row_group_rows(rows: list[dict], limit: int, max_bytes: int = ROW_GROUP_BYTES, min_groups: int = 16) -> int:
    """Rows per Parquet row group of a shard: at most `limit` and about `max_bytes`, and small enough
    for `min_groups` groups when the shard has the rows (so even a tiny table splits over many ranks)."""
    biggest = max((len(r["latent"]) + len(r["text_emb"]) for r in rows), default=1)
    return max(1, min(limit, max_bytes // max(biggest, 1), math.ceil(len(rows) / min_groups)))


def _prep_batch(batch: dict) -> dict:
    fault_point("stage:precompute-prep")
    return precompute.PixelPrepStage()(batch)


def _dataset(cfg: ReelForgeConfig, rows: list[dict]):
    import ray

    p = cfg.precompute
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False
    data_progress(ctx)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // cfg.precompute.batch_size, 200)))
    # Prep as plain tasks over small batches: decoding needs no state, and per-row scheduling
    # would cost more than decoding a short clip.
    ds = ds.map_batches(_prep_batch, batch_size=p.batch_size, num_cpus=p.prep_cpus,
                        compute=ray.data.TaskPoolStrategy(size=max(1, p.prep_concurrency)), zero_copy_batch=False,
                        **placement(p.prep_resources))
    # an encoder actor lost with its node is restarted by Ray Data, and its batches retried
    ds = ds.map_batches(precompute.EncodeStage, batch_size=p.batch_size,
                        compute=ray.data.ActorPoolStrategy(size=p.concurrency), num_gpus=p.num_gpus,
                        num_cpus=p.encode_cpus, zero_copy_batch=False, **placement(p.resources),
                        fn_constructor_kwargs=dict(precompute=p, device="cuda" if p.num_gpus > 0 else "cpu"))
    return ds


def _commit(output: str, pid: str, rows: list[dict], fingerprint: str, group_rows: int) -> dict:
    rows.sort(key=lambda r: r["clip_id"])
    ok = [r for r in rows if not r.get("error")]
    bad = [r for r in rows if r.get("error")]
    latents = table_from_rows([{k: r.get(k) for k in LATENTS_SCHEMA.names} for r in ok], LATENTS_SCHEMA)
    failures = tables.failures_table([
        tables.failure_row(r.get("uri"), r.get("error_stage") or "precompute", r["error"], error_type="PrecomputeError",
                           video_id=str(r["clip_id"]).rsplit("-", 1)[0], clip_id=r["clip_id"]) for r in bad])
    per_bucket = collections.Counter(r["bucket"] for r in ok)
    nbytes = sum(len(r["latent"]) + len(r["text_emb"]) for r in ok)
    counts = {"rows": len(rows), "encoded": len(ok), "failed": len(bad), "bytes": nbytes,
              "per_bucket": dict(per_bucket), "prep_s": sum(float(r.get("prep_s") or 0) for r in rows)}
    layout = {"row_group_size": row_group_rows(ok, group_rows), "write_statistics": LATENTS_STATISTICS}
    return tables.write_partition(output, pid, {"latents": latents, "failures": failures}, fingerprint, counts,
                                  parquet={"latents": layout})


def run_precompute(cfg: ReelForgeConfig, clips_root: str, output: str,
                   progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Encode every eligible captioned clip under `clips_root` into `output`/latents; returns the manifest."""
    started = time.time()
    tables.configure_storage(cfg)
    spec, random_notes = models_at_start(cfg)
    rows, dropped, n_clips = plan_clips(cfg, clips_root, spec)
    shards = plan_shards(rows, cfg.precompute.shard_rows, cfg.precompute.shard_bytes)
    fingerprint = cfg.fingerprint("precompute", exclude=("precompute.resources", "precompute.prep_resources"))
    fingerprint += selection.identity(cfg)
    plan = [tables.Partition(pid, tuple(r["clip_id"] for r in s)) for pid, s in shards]
    markers = tables.completed(output, plan, fingerprint)
    pending = [(pid, s) for pid, s in shards if pid not in markers]
    # decode tasks read the clips' videos, encoder actors load the models: on a cluster none may be local
    paths = {"--clips": clips_root, "--output": output, "clips' video uri": rows[0]["uri"] if rows else None,
             "precompute.vae": model_path(cfg.precompute.vae),
             "precompute.text_encoder": model_path(cfg.precompute.text_encoder)}
    with ray_when_needed(cfg, paths=paths) as ensure_ray:
        tables.open_output(cfg, output)
        log.info("precompute: %d clips, %d eligible in %d shards; %d complete, skipping them",
                 n_clips, len(rows), len(shards), len(markers))
        if progress:
            progress("start", len(rows), sum(len(s) for pid, s in shards if pid in markers))
        t0 = time.perf_counter()
        if pending:
            def commit(pid: str, shard_rows: list[dict]) -> None:
                markers[pid] = _commit(output, pid, shard_rows, fingerprint, cfg.precompute.row_group_rows)

            ensure_ray()
            items = [{**r, "shard": pid} for pid, s in pending for r in s]
            tables.commit_as_complete(_dataset(cfg, items).iter_rows(), {pid: len(s) for pid, s in pending}, commit,
                                      key="shard", progress=progress, unit="clip")
    encode_wall = time.perf_counter() - t0
    removed = tables.remove_stale(output, ["latents", "failures"], {p.pid for p in plan})
    manifest = build_precompute_manifest(cfg, clips_root, output, started, markers, dropped, n_clips, len(rows),
                                         len(shards), len(shards) - len(pending), removed, encode_wall,
                                         sum(len(s) for _, s in pending))
    manifest["models"].update(vae_id=spec.vae_id, latent=json.loads(spec.norm_json()), random_weights=random_notes)
    tables.write_manifest(output, manifest)
    return manifest


def build_precompute_manifest(cfg, clips_root, output, started, markers, dropped, n_clips, eligible, n_shards,
                              skipped, removed, encode_wall, processed_clips) -> dict:
    per_bucket: collections.Counter = collections.Counter()
    encoded = failed = nbytes = 0
    for m in markers.values():
        c = m["counts"]
        per_bucket.update(c["per_bucket"])
        encoded, failed, nbytes = encoded + c["encoded"], failed + c["failed"], nbytes + c["bytes"]
    per_clip = nbytes / encoded if encoded else 0.0
    return {
        **tables.manifest_header("precompute", clips_root, output, started),
        "counts": {"clips": n_clips, "eligible": eligible,
                   "encoded": encoded, "failed": failed, "dropped": dropped, "rows_per_bucket": dict(per_bucket)},
        "bytes": {"total": nbytes, "per_clip": round(per_clip, 1),
                  "projection": {"1M_clips_GB": round(per_clip * 1e6 / 1e9, 3),
                                 "10M_clips_GB": round(per_clip * 1e7 / 1e9, 3)}},
        "throughput": {"clips_per_s": round(processed_clips / encode_wall, 3) if encode_wall and processed_clips else None},
        "models": {"vae": cfg.precompute.vae, "text_encoder": cfg.precompute.text_encoder,
                   "latent_dtype": cfg.precompute.latent_dtype},
        **tables.manifest_footer(cfg, n_shards, skipped, removed),
    }
