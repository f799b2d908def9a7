"""`reelforge train-captioner`: the Ray Train launcher for captioning/train_captioner.py.

Clips with existing captions come from a synthetic world directory (`world.json`: its train split,
captions from the scene sidecars) or from a curate/caption output root (kept clips; the `caption`
column when it is filled, else the clip's sidecar or caption.manifest). The driver decodes their
frames once, as the caption job would; TorchTrainer runs `caption_train.num_workers` workers
(DDP on gloo for CPU) that each step their share of every batch; rank 0's weights come back as a
Ray Train checkpoint (persisted to OUTPUT/_ray_train: local, or S3 on a cluster) and are written
to OUTPUT (a local dir or s3://) with the processor, so `reelforge caption --model OUTPUT` loads
them. On a world, the held-out eval clips are captioned and scored at the end.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

from captioning.prompts import DEFAULT_PROMPT, PROMPTS
from infra import storage, tables
from infra.config import CaptionTrainConfig, ReelForgeConfig
from infra.progress import report_step, step_progress

log = logging.getLogger(__name__)


def caption_prompt(cfg: ReelForgeConfig) -> str:
    """The prompt the caption job feeds the model: the trained model learns to continue it."""
    p = cfg.caption.prompt
    return PROMPTS.get(p, p) if p else DEFAULT_PROMPT


# ----------------------------------------------------------------------------- inputs
def training_rows(cfg: ReelForgeConfig, clips_root: str) -> tuple[list[dict], list[dict]]:
    """(train rows with a caption, eval rows with attributes) from a world dir or a clips table."""
    if (Path(clips_root) / "world.json").exists():
        from infra.world import world_clips

        return world_clips(clips_root, "train"), world_clips(clips_root, "eval")
    from captioning.sidecar import existing_caption

    table = storage.read_table(storage.join(clips_root, "clips"))
    rows = [r for r in table.to_pylist() if r.get("keep") is not False]
    out = []
    for r in rows:
        text = r.get("caption")
        if text and r.get("caption_model") == "tiny-random" and r.get("caption_source") in (None, "tiny-random"):
            text = None  # a placeholder caption from the tiny random model teaches nothing
        if not text:
            text, _ = existing_caption(r, "sidecar", cfg.caption.manifest)
        if text:
            out.append({**r, "caption": text})
    log.info("train-captioner: %d of %d kept clips have a caption", len(out), len(rows))
    return out, []


def prepare(cfg: ReelForgeConfig, rows: list[dict]) -> dict:
    """uint8 frames (N, F, S, S, 3) and captions of the training clips (decoded once, here)."""
    from captioning.train_captioner import clip_frames

    c = cfg.caption_train
    if c.max_clips:
        rows = rows[: c.max_clips]
    if not rows:
        raise ValueError("train-captioner: no clip has a caption (sidecar, manifest or caption column)")
    # The caption job's sampling (caption.num_frames at caption.frame_size); GIT picks its own from them.
    frames = clip_frames(rows, cfg.caption.num_frames, cfg.caption.frame_size)
    examples = len(rows) * (4 if c.flips else 1)
    if examples // max(1, c.num_workers) < c.batch_size:
        raise ValueError(f"train-captioner: {len(rows)} captioned clips ({examples} with flips) cannot fill a batch of "
                         f"{c.batch_size} on each of {max(1, c.num_workers)} workers")
    return {"frames": frames, "captions": [r["caption"] for r in rows]}


# ----------------------------------------------------------------------------- the worker loop
def train_loop_per_worker(config: dict) -> None:
    """One worker: build the same model, wrap it in DDP, train on its share, rank 0 reports weights."""
    import ray.train
    import torch
    import torch.distributed as dist

    from captioning.train_captioner import CaptionLoss, build_dataset_from_frames, build_model, save_model, train

    c: CaptionTrainConfig = config["caption_train"]
    torch.set_num_threads(max(1, int(config["threads"])))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    data_in = ray.get(config["data"][0])  # [1] the decoded clips, shared through the object store
    model, processor = build_model(c, c.init)
    data = build_dataset_from_frames(data_in["frames"], data_in["captions"], c, processor, config["prompt"])
    loss_module = CaptionLoss(model)
    if world > 1 and dist.is_initialized():
        # [2] DDP: every rank starts from rank 0's weights and averages gradients each step
        loss_module = torch.nn.parallel.DistributedDataParallel(loss_module)
    log_fn = (lambda m: print(json.dumps(m), flush=True)) if rank == 0 else None
    progress = config.get("progress") if rank == 0 else None  # the driver's live line (infra/progress.py)
    result = train(loss_module, data, c, rank, world, log=log_fn,
                   on_step=lambda step, loss: report_step(progress, step, loss))
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            save_model(model, processor, tmp, {"trained": True, "prompt": config["prompt"], **result})
            # [3] report + checkpoint: Ray Train persists rank 0's directory into the run's storage
            ray.train.report(result, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(result)


# ----------------------------------------------------------------------------- the launcher
def _fit(cfg: ReelForgeConfig, data: dict, prompt: str, output: str, model_dir: str) -> dict:
    """Run the TorchTrainer and copy rank 0's checkpoint into the local `model_dir`; returns its metrics."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from infra.runtime import ray_session

    c = cfg.caption_train
    # Ray Train persists rank 0's checkpoint from whichever node it runs on: on a cluster, S3
    runs = storage.join(output, "_ray_train")
    fs, runs = storage.filesystem(runs) if storage.is_s3(runs) else (None, os.path.abspath(runs))
    resources = {"CPU": 1, **({"GPU": 1} if c.use_gpu else {}), **c.resources}
    with (ray_session(cfg, paths={"--output": output}),
          step_progress("train-captioner", c.steps, c.batch_size * max(1, c.num_workers)) as progress):
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"caption_train": c, "data": [ray.put(data)], "prompt": prompt, "threads": 1,
                               "progress": progress},
            scaling_config=ScalingConfig(num_workers=c.num_workers, use_gpu=c.use_gpu, resources_per_worker=resources),
            torch_config=TorchConfig(backend="nccl" if c.use_gpu else "gloo"),
            run_config=RunConfig(name="run", storage_path=runs, storage_filesystem=fs))
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"train-captioner: the run reported no checkpoint ({result.error or 'no error given'})")
    result.checkpoint.to_directory(model_dir)
    return dict(result.metrics or {})


def _in_process(cfg: ReelForgeConfig, data: dict, prompt: str, model_dir: str) -> dict:
    """caption_train.num_workers = 0: the same training in this process, without Ray."""
    from captioning.train_captioner import CaptionLoss, build_dataset_from_frames, build_model, save_model, train

    c = cfg.caption_train
    model, processor = build_model(c, c.init)
    ds = build_dataset_from_frames(data["frames"], data["captions"], c, processor, prompt)
    result = train(CaptionLoss(model), ds, c, log=lambda m: log.info("train-captioner %s", m))
    save_model(model, processor, model_dir, {"trained": True, "prompt": prompt, **result})
    return result


def score_model(cfg: ReelForgeConfig, model_dir: str, rows: list[dict], prompt: str) -> dict:
    """Caption eval clips with the saved model and score the colour/direction/shape words."""
    from captioning.train_captioner import caption_clips, clip_frames
    from infra.worldcheck import score_captions

    frames = clip_frames(rows, cfg.caption.num_frames, cfg.caption.frame_size)
    texts = caption_clips(model_dir, frames, prompt, max_new_tokens=cfg.caption.max_new_tokens)
    w = cfg.world
    acc = score_captions(texts, [r["attributes"] for r in rows], w.shape_colors, w.directions, w.shapes)
    return {"accuracy": acc, "examples": [{"caption": t, "truth": r["caption"]} for t, r in zip(texts[:8], rows)]}


def run_train_captioner(cfg: ReelForgeConfig, clips_root: str, output: str) -> dict:
    """Train a captioner on the captioned clips under `clips_root` into `output` (a local dir or
    s3://: the model is built in a local dir, scored there, then written to `output` whole)."""
    t0 = time.time()
    prompt = caption_prompt(cfg)
    rows, eval_rows = training_rows(cfg, clips_root)
    data = prepare(cfg, rows)
    prep_s = time.time() - t0
    if not storage.is_s3(output):
        output = os.path.abspath(output)
    with tempfile.TemporaryDirectory(prefix="reelforge-captioner-") as model_dir:
        t1 = time.time()
        if cfg.caption_train.num_workers == 0:
            metrics = _in_process(cfg, data, prompt, model_dir)
        else:
            metrics = _fit(cfg, data, prompt, output, model_dir)
        summary = {"output": output, "clips": len(data["captions"]), "prompt": prompt,
                   "steps": metrics.get("steps"), "loss": metrics.get("loss"), "train_s": metrics.get("train_s"),
                   "prep_s": round(prep_s, 1), "fit_s": round(time.time() - t1, 1)}
        if eval_rows:
            summary["eval"] = {"clips": len(eval_rows), **score_model(cfg, model_dir, eval_rows, prompt)}
        summary["wall_s"] = round(time.time() - t0, 1)
        Path(model_dir, "config.yaml").write_text(cfg.to_yaml())
        Path(model_dir, "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        storage.upload_dir(model_dir, output)
    tables.write_manifest(output, {**tables.manifest_header("train-captioner", clips_root, output, t0),
                                   "counts": {"clips": summary["clips"], "eval_clips": len(eval_rows)},
                                   "summary": summary, **tables.manifest_footer(cfg, 1, 0, 0)})
    return summary
