"""The caption job on Ray Data: a curate output's clips table in, a captioned version of it out.

This is the only module of `captioning` that imports Ray. FramePrepStage runs as CPU tasks and
feeds CaptionStage on a pool of (GPU) actors; only the columns those stages need travel through
Ray. The driver gathers each input part's results (small: text and numbers, never pixels), joins
them back onto the part's full rows and commits the partition, so every input column keeps its
type. One input part file is one partition, under the same id: `clips/part-{pid}.parquet` in
gives `clips/part-{pid}.parquet` and `failures/part-{pid}.parquet` out, then `_markers/{pid}.json`.
"""

from __future__ import annotations

import atexit
import collections
import functools
import hashlib
import json
import logging
import math
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from captioning.prompts import DEFAULT_PROMPT, PROMPTS, template_fields
from captioning.resolve import TINY, models_at_start, placeholder_warning, resolve_model
from infra import selection, storage, tables
from infra.config import CaptionConfig, ReelForgeConfig
from infra.faults import fault_point
from infra.progress import data_progress
from infra.runtime import model_path as local_model, placement, ray_when_needed

log = logging.getLogger(__name__)

TABLES = ["clips", "failures"]
CAPTION_FIELDS = [
    ("caption", pa.string()),  # null: not kept, or failed (see failures/)
    ("caption_model", pa.string()),
    ("caption_prompt", pa.string()),
    ("caption_score", pa.float64()),  # CLIP text-video similarity; null without caption.clip_model
    ("caption_tokens", pa.int64()),  # tokens the model generated
]
# Where the job runs, not what it writes: changing these must not invalidate finished partitions.
_RESOURCE_KEYS = ("num_gpus", "prep_cpus", "concurrency", "resources", "prep_resources",
                  "allow_random_weights")
# Columns the prep and caption stages read; everything else stays on the driver's side.
_WORK_COLUMNS = ("clip_id", "video_id", "uri", "start_s", "end_s", "start_frame", "end_frame", "fps", "media_type")


class CaptionInputError(ValueError):
    """The clips root holds no clips table to caption."""


# ----------------------------------------------------------------------------- inputs


def input_parts(clips_root: str) -> list[tuple[tables.Partition, str]]:
    """(partition, identity) per `clips/part-*.parquet` under the curate root, in name order.

    The identity (size and modification time, from one listing) goes into the partition's
    fingerprint, so a re-curated part is re-captioned instead of matching a stale marker.
    """
    fs, path = storage.filesystem(storage.join(clips_root, "clips"))
    selector = pafs.FileSelector(path, recursive=False, allow_not_found=True)
    infos = storage.with_retries(lambda: fs.get_file_info(selector), f"list {clips_root}/clips")
    out = []
    for info in sorted(infos, key=lambda i: i.path):
        base = posixpath.basename(info.path)
        if info.type != pafs.FileType.File or not (base.startswith("part-") and base.endswith(".parquet")):
            continue
        uri = ("s3://" + info.path) if storage.is_s3(clips_root) else info.path
        mtime = info.mtime.timestamp() if info.mtime else 0
        out.append((tables.Partition(pid=base[5:-8], uris=(uri,)), f"{info.size}:{mtime:.6f}"))
    if not out:
        raise CaptionInputError(f"no clips table under {clips_root}: expected "
                                f"{storage.join(clips_root, 'clips', 'part-*.parquet')} "
                                f"(the output root of `reelforge curate`)")
    return out


def _fingerprint(base: str, identity: str) -> str:
    return hashlib.sha1(f"{base}|{identity}".encode()).hexdigest()[:12]


def _kept(table: pa.Table) -> list[bool]:
    """keep == true per row; a table without a `keep` column keeps everything (null counts as kept)."""
    if "keep" not in table.column_names:
        return [True] * table.num_rows
    return [v is not False for v in table["keep"].to_pylist()]


def _work_rows(table: pa.Table, pid: str, extra: list[str]) -> list[dict]:
    """The narrow rows sent through Ray for the kept clips of one input part."""
    cols = [c for c in dict.fromkeys([*_WORK_COLUMNS, "clip_uri", *extra]) if c in table.column_names]
    data = table.select(cols).to_pylist()
    rows = []
    for i, (r, kept) in enumerate(zip(data, _kept(table))):
        if not kept:
            continue
        row = {**r, "partition": pid, "row": i, "source_uri": r.get("uri")}
        if r.get("start_s") is not None and r.get("end_s") is not None:
            row.setdefault("duration_s", r["end_s"] - r["start_s"])  # for the dense_with_length prompt
        if r.get("clip_uri"):
            # A materialized clip file starts at its own t=0 and may be re-encoded: use seconds.
            row.update(uri=r["clip_uri"], start_s=0.0, end_s=row.get("duration_s"), start_frame=None,
                       end_frame=None)
        row.pop("clip_uri", None)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- prep tasks


@functools.lru_cache(maxsize=4)
def _prep_stage(num_frames: int, frame_size: int):
    """One FramePrepStage per worker process (worker processes are reused across tasks)."""
    from captioning.frames import FramePrepStage

    stage = FramePrepStage(num_frames=num_frames, frame_size=frame_size)
    stage.setup()
    return stage


def prep_batch(batch: dict[str, np.ndarray], caption: CaptionConfig) -> dict[str, np.ndarray]:
    fault_point("stage:caption-prep")
    return _prep_stage(caption.num_frames, caption.frame_size)(batch)


class CaptionActor:
    """The caption stage on a Ray actor. A model saved on S3 (`caption --model s3://...`, or the
    placeholder of an s3:// output) is copied to this node's own temp dir first: on a cluster,
    nodes share nothing but S3."""

    def __init__(self, model: str, **kwargs):
        from captioning.captioner import CaptionStage

        if storage.is_s3(model):
            local = tempfile.mkdtemp(prefix="reelforge-captioner-")
            atexit.register(shutil.rmtree, local, ignore_errors=True)
            storage.download_dir(model, local)
            model = local
        self.stage = CaptionStage(model=model, **kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.stage(batch)


# ----------------------------------------------------------------------------- partitions


def partition_tables(table: pa.Table, results: dict[int, dict], model_name: str) -> tuple[dict, dict]:
    """The input part plus caption columns, its failures, and the partition's counts."""
    n = table.num_rows
    cols: dict[str, list] = {name: [None] * n for name, _ in CAPTION_FIELDS}
    failures = []
    counts: collections.Counter = collections.Counter(clips_in=n, kept=len(results))
    by_stage: collections.Counter = collections.Counter()
    by_type: collections.Counter = collections.Counter()
    for i in sorted(results):
        r = results[i]
        cols["caption_model"][i] = model_name
        cols["caption_prompt"][i] = r.get("caption_prompt")
        cols["caption_tokens"][i] = int(r.get("caption_tokens") or 0)
        counts["output_tokens"] += cols["caption_tokens"][i]
        if r.get("error"):
            stage = r.get("error_stage") or "caption"
            row = tables.failure_row(r.get("source_uri"), stage, str(r["error"]), video_id=r.get("video_id"),
                                     clip_id=r.get("clip_id"))
            by_stage[stage] += 1
            by_type[row["error_type"]] += 1
            failures.append(row)
            continue
        score = r.get("caption_score")
        cols["caption"][i] = r.get("caption")
        cols["caption_score"][i] = None if score is None else tables.none_if_nan(float(score))
        counts["captioned"] += 1
    out = table.drop_columns([c for c, _ in CAPTION_FIELDS if c in table.column_names])
    for name, typ in CAPTION_FIELDS:
        out = out.append_column(pa.field(name, typ), pa.array(cols[name], type=typ))
    return {"clips": out, "failures": tables.failures_table(failures)}, {**counts, "failed_by_stage": dict(by_stage), "failed_by_type": dict(by_type)}


# ----------------------------------------------------------------------------- the job


def _stage_kwargs(cfg: ReelForgeConfig, model_path: str) -> dict:
    c = cfg.caption
    return dict(model=model_path, prompt=PROMPTS.get(c.prompt, c.prompt) if c.prompt else DEFAULT_PROMPT,
                max_new_tokens=c.max_new_tokens, batch_size=c.batch_size, dtype=c.dtype, device=c.device,
                do_sample=c.do_sample, seed=c.seed, score_suffix=list(c.score_suffix), clip_model=c.clip_model,
                clip_pretrained=c.clip_pretrained)


def _dataset(cfg: ReelForgeConfig, rows: list[dict], model_path: str):
    import ray

    c = cfg.caption
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False  # the driver puts rows back in input order
    data_progress(ctx)
    # About one model batch per block: partitions finish (and commit) while the job streams.
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(math.ceil(len(rows) / c.batch_size), 2000)))
    # Prep tasks reserve the memory they use: a worker with the decoders loaded (Ray measured up
    # to ~460 MiB, and wants 25% headroom) plus a batch of frames, decoded and resized. It also
    # keeps them a stage of their own: Ray fuses a task stage into the next actor stage when
    # their resource requests are equal (any CPU-only run), and decoding would then wait on
    # generation inside the actor (ray-project/ray#54433).
    memory = 768 * 2**20 + 2 * c.batch_size * c.num_frames * c.frame_size**2 * 3
    ds = ds.map_batches(prep_batch, fn_kwargs=dict(caption=c), batch_size=c.batch_size,
                        num_cpus=c.prep_cpus, memory=memory, zero_copy_batch=False, **placement(c.prep_resources))
    # A fixed pool of caption.concurrency actors, each loading the model once;
    # Ray Data restarts an actor lost with its node and retries its batches.
    return ds.map_batches(CaptionActor, fn_constructor_kwargs=_stage_kwargs(cfg, model_path),
                          compute=ray.data.ActorPoolStrategy(size=c.concurrency), num_gpus=c.num_gpus,
                          batch_size=c.batch_size, zero_copy_batch=False, **placement(c.resources))


def build_manifest(*, cfg: ReelForgeConfig, clips_root: str, output: str, started: float, markers: dict,
                   placeholder: bool, model_path: str, plan_size: int, skipped: int, removed_stale: int,
                   processed: dict, stage_wall: dict[str, float]) -> dict:
    counts = tables.sum_counts(markers)
    busy = stage_wall.get("prep+caption (streamed)", 0.0)
    header = tables.manifest_header("caption", clips_root, output, started)
    return {
        **{k: header[k] for k in ("job", "input", "output")},
        "model": cfg.caption.model,
        "model_path": model_path,
        "placeholder": placeholder,
        **{k: header[k] for k in ("started", "finished", "wall_s")},
        "counts": {
            "clips_in": int(counts.get("clips_in", 0)),
            "kept": int(counts.get("kept", 0)),
            "not_kept": int(counts.get("clips_in", 0) - counts.get("kept", 0)),
            "captioned": int(counts.get("captioned", 0)),
            "failed": int(counts["failed"]),
            "failed_by_stage": counts["failed_by_stage"],
            "failed_by_type": counts["failed_by_type"],
            "output_tokens": int(counts.get("output_tokens", 0)),
        },
        "stage_wall_s": {k: round(v, 3) for k, v in stage_wall.items()},
        # This run's work only (skipped partitions excluded), over the streamed stage's wall time,
        # which includes starting the actors and loading the model.
        "throughput": {
            "clips": processed["clips"],
            "output_tokens": processed["output_tokens"],
            "clips_per_s": round(processed["clips"] / busy, 3) if busy and processed["clips"] else None,
            "output_tokens_per_s": round(processed["output_tokens"] / busy, 3) if busy and processed["clips"] else None,
        },
        **tables.manifest_footer(cfg, plan_size, skipped, removed_stale),
    }


def _caption_pending(cfg: ReelForgeConfig, pending: list[tables.Partition], model_path: str,
                     commit: Callable[[tables.Partition, dict[int, dict]], None],
                     progress: Callable | None, done_kept: int, paths: dict[str, str]) -> None:
    """Stream the kept clips of `pending` through prep and caption; commit each part when complete."""
    extra = [*template_fields(_stage_kwargs(cfg, model_path)["prompt"]), *cfg.caption.score_suffix]
    rows, expected = [], {}
    for p in pending:
        part_rows = _work_rows(selection.unselect(storage.read_table(p.uris[0]), cfg), p.pid, extra)
        if part_rows:
            rows += part_rows
            expected[p.pid] = len(part_rows)
        else:
            commit(p, {})  # nothing kept: the part passes through as it is
    if progress:
        progress("start", done_kept + len(rows), done_kept)
    if not rows:
        return
    by_pid = {p.pid: p for p in pending}
    # the prep tasks read the videos, the actors the model: on a cluster, none of it may be local
    paths = {**paths, "--model": local_model(model_path), "clips' video uri": rows[0]["uri"]}
    with ray_when_needed(cfg, paths=paths) as ensure_ray:
        ensure_ray()
        tables.commit_as_complete(_dataset(cfg, rows, model_path).iter_rows(), expected,
                                  lambda pid, got: commit(by_pid[pid], {int(r["row"]): r for r in got}),
                                  progress=progress, unit="clip")


def run_caption(cfg: ReelForgeConfig, clips_root: str, output: str | None = None, model: str | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Caption every kept clip of the curate output at `clips_root` into `output`
    (default `{clips_root}/captioned`); returns the manifest."""
    started = time.time()
    tables.configure_storage(cfg)
    output = output or storage.join(clips_root, "captioned")
    parts = input_parts(clips_root)
    storage.makedirs(output)
    t0 = time.perf_counter()
    from captioning.sidecar import apply_existing_captions, no_model  # caption.source (existing captions)

    model_free = cfg.caption.source in ("sidecar", "manifest")  # existing captions only: load no model
    random_weights = models_at_start(cfg, model, model_free)
    with (no_model(cfg, model) if model_free else resolve_model(cfg, output, model)) as (name, model_path, placeholder):
        model_s = time.perf_counter() - t0
        cfg = cfg.model_copy(update={"caption": cfg.caption.model_copy(update={"model": name})})
        if placeholder:
            placeholder_warning(name)
        section = {k: v for k, v in cfg.caption.model_dump(mode="json").items() if k not in _RESOURCE_KEYS}
        base = hashlib.sha1(json.dumps(section, sort_keys=True).encode()).hexdigest() + selection.identity(cfg)
        fingerprints = {p.pid: _fingerprint(base, ident) for p, ident in parts}
        markers = tables.completed(output, [p for p, _ in parts], fingerprints)
        pending = [p for p, _ in parts if p.pid not in markers]
        storage.write_text(storage.join(output, "config.yaml"), cfg.to_yaml())
        log.info("caption: %d clip parts; %d complete, skipping them", len(parts), len(markers))
        processed = {"clips": 0, "output_tokens": 0}

        def commit(p: tables.Partition, results: dict[int, dict]) -> None:
            part, counts = partition_tables(storage.read_table(p.uris[0]), results, name)
            if cfg.caption.source != "model":
                part, counts = apply_existing_captions(part, counts, cfg.caption.source, cfg.caption.manifest, name)
            markers[p.pid] = tables.write_partition(output, p.pid, part, fingerprints[p.pid], counts)
            processed["clips"] += len(results)
            processed["output_tokens"] += counts.get("output_tokens", 0)

        t1 = time.perf_counter()
        done_kept = sum(m["counts"].get("kept", 0) for m in markers.values())
        if model_free:
            for p in pending:
                commit(p, {})
        else:
            _caption_pending(cfg, pending, model_path, commit, progress, done_kept,
                             {"--clips": clips_root, "--output": output})
        stream_s = time.perf_counter() - t1
    removed = tables.remove_stale(output, TABLES, {p.pid for p, _ in parts})
    manifest = build_manifest(
        cfg=cfg, clips_root=clips_root, output=output, started=started, markers=markers, placeholder=placeholder,
        model_path=storage.join(output, "_models", "tiny-captioner") if name == TINY else model_path,
        plan_size=len(parts), skipped=len(parts) - len(pending), removed_stale=removed, processed=processed,
        stage_wall={"model": model_s, "prep+caption (streamed)": stream_s})
    manifest["random_weights"] = random_weights
    tables.write_manifest(output, manifest)
    return manifest
