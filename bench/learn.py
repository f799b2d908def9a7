"""Learning curves on the synthetic world: per-attribute accuracy against minutes of training.

`--model captioner` (the default): train the small GIT of `caption_train` in this process on a
world's train split and, every `--eval-every` steps, caption the held-out eval clips through the
caption job's Captioner and score the colour / direction / shape words. Run:
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/learn.py [--steps 1200] [--set world.videos=150]

`--model dit`: the whole learning run of the DiT, each stage through its job's library function:
demo-data -> curate -> caption (sidecars) -> train-vae -> precompute (that VAE, `precompute.text_encoder`)
-> train (Ray Train + DeepSpeed) with a checkpoint every `--eval-every` steps -> `sample_and_score` of
the untrained model and of every checkpoint on held-out prompts (accuracy against the minutes of the
training loop). Stages whose output is already in `--work` are reused; a run there resumes. Run:
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python bench/learn.py --model dit \
        --config configs/learn-shapes.yaml --work runs/learn-shapes [--eval-every 500]
`--model capabilities`: the same stages with `configs/learn-capabilities.yaml` (stills in the world,
frame conditioning and image batches in training), then the last checkpoint scored on held-out
prompts (text-to-video) and on the Sora capabilities (training/evaluate_capabilities.py):
image-to-video colour, extension direction, image colour. Run:
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python bench/learn.py --model capabilities \
        --config configs/learn-capabilities.yaml --work runs/learn-capabilities
  Measured (README "Evaluation of the capabilities", 4000 steps, VAE on video clips only): image-to-video
  colour 1.00, image colour 1.00, extension direction 0.83 on held-out pairs with the clip's caption
  (0.97 seen; 0.37 / 0.58 from the given frames alone, null text; VAE round trip 0.97), text-to-video
  direction 1.00 on held-out pairs.
`--scaling`: the DiT at 3 compute budgets (params x steps 1x, 4x, 16x) on the demo's data, loss curves and
held-out accuracy per budget (bench/scaling.py; README "Compute scaling"). Run:
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python bench/learn.py --scaling --work runs/scaling \
        --out runs/scaling-out --set world.eval_prompts=36
All print one JSON line per evaluation, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from captioning.models import Captioner  # noqa: E402
from captioning.runner_train import caption_prompt  # noqa: E402
from captioning.train_captioner import (CaptionLoss, build_dataset_from_frames, build_model,  # noqa: E402
                                        caption_frames, clip_frames, train)
from infra.config import load_config  # noqa: E402
from infra.runtime import init_ray  # noqa: E402
from infra.world import world_clips, write_world  # noqa: E402
from infra.worldcheck import score_captions  # noqa: E402
from training.models.vae import is_random_vae  # noqa: E402


def captioner_curve(cfg, world_dir: Path, eval_every: int, threads: int) -> list[dict]:
    """Train in-process, scoring the eval split every `eval_every` steps; returns the points."""
    torch.set_num_threads(threads)
    c, w, prompt = cfg.caption_train, cfg.world, caption_prompt(cfg)
    t0 = time.perf_counter()
    rows, eval_rows = world_clips(world_dir, "train"), world_clips(world_dir, "eval")
    model, processor = build_model(c)
    data = build_dataset_from_frames(clip_frames(rows, cfg.caption.num_frames, cfg.caption.frame_size),
                                     [r["caption"] for r in rows], c, processor, prompt)
    eval_frames = clip_frames(eval_rows, cfg.caption.num_frames, cfg.caption.frame_size)
    truth = [r["attributes"] for r in eval_rows]
    captioner = Captioner("bench", model, processor, "cpu")
    points, paused = [], [0.0]  # scoring time is taken out of the training minutes

    def on_log(m: dict) -> None:
        step = m["step"] + 1
        if step % eval_every and step != c.steps:
            return
        t = time.perf_counter()
        acc = score_captions(caption_frames(captioner, eval_frames, prompt), truth, w.shape_colors, w.directions,
                             w.shapes)
        paused[0] += time.perf_counter() - t
        train_min = (time.perf_counter() - t0 - paused[0]) / 60
        points.append({"bench": "learn", "model": "captioner", "step": step, "train_minutes": round(train_min, 2),
                       "loss": m["loss"], **{k: acc[k] for k in ("color", "direction", "shape")},
                       "eval_clips": acc["n"]})
        print(json.dumps(points[-1]), flush=True)

    # One process steps the global batch that caption_train.num_workers DDP workers would share.
    c = c.model_copy(update={"log_every": 1, "batch_size": c.batch_size * max(1, c.num_workers)})
    train(CaptionLoss(model), data, c, log=on_log)
    return points


def prepare_dit(cfg, work: Path, log=print) -> tuple[object, dict]:
    """World -> curate -> caption -> train-vae -> precompute under `work`; returns (cfg with the trained
    VAE as precompute.vae, {stage: wall seconds}). A stage whose output exists is skipped (0 s)."""
    from captioning.runner import run_caption
    from pipelines.runner import run_curate
    from pipelines.runner_precompute import run_precompute
    from training.vae_train import run_train_vae

    walls: dict[str, float] = {}

    def stage(name: str, done: Path, fn) -> None:
        t = time.perf_counter()
        if not done.exists():
            fn()
        walls[name] = round(time.perf_counter() - t, 1)
        log(json.dumps({"bench": "learn", "model": "dit", "stage": name, "wall_s": walls[name]}))

    world, curated, captioned = work / "world", work / "curated", work / "captioned"
    vae_dir, latents = work / "vae", work / "pre"  # not "latents": that names the table folder itself
    stage("world", world / "world.json", lambda: write_world(cfg.world, world))
    stage("curate", curated / "manifest.json", lambda: run_curate(cfg, str(world / "train"), str(curated)))
    stage("caption", captioned / "manifest.json", lambda: run_caption(cfg, str(curated), str(captioned)))
    if is_random_vae(cfg.precompute.vae):  # a preset is trained here; a pool codec or a trained VAE is used as is
        stage("train-vae", vae_dir / "summary.json", lambda: run_train_vae(cfg, str(captioned), str(vae_dir)))
        cfg = load_config_over(cfg, [f"precompute.vae={vae_dir / 'vae'}"])
    stage("precompute", latents / "manifest.json", lambda: run_precompute(cfg, str(captioned), str(latents)))
    return cfg, walls


def load_config_over(cfg, sets: list[str]):
    """A copy of cfg with `section.key=value` overrides, each validated on assignment as --set is."""
    from infra.config import parse_override

    cfg = cfg.model_copy(deep=True)
    for text in sets:
        parts, value = parse_override(text)
        node = cfg
        for part in parts[:-1]:
            node = getattr(node, part)
        setattr(node, parts[-1], value)
    return cfg


def dit_curve(cfg, work: Path, eval_every: int, log=print) -> tuple[list[dict], dict]:
    """Prepare the data, train once with a checkpoint every `eval_every` steps, then score every
    checkpoint (and the untrained model) with sample_and_score; returns (points, stage walls)."""
    import ray

    from training.evaluate import sample_and_score
    from training.metrics import read_metrics
    from training.train import run_train

    init_ray(cfg if cfg.ray.num_cpus else load_config_over(cfg, ["ray.num_cpus=2"]))
    try:
        cfg, walls = prepare_dit(cfg, work, log)
        run = work / "run"
        cfg = load_config_over(cfg, [f"train.checkpoint_every={eval_every}",
                                     f"train.keep_checkpoints={cfg.train.steps // eval_every + 1}"])
        t = time.perf_counter()
        summary = run_train(cfg, str(work / "pre"), str(run))  # resumes a run already in `run`
        walls["train"] = round(time.perf_counter() - t, 1)
        log(json.dumps({"bench": "learn", "model": "dit", "stage": "train", "wall_s": walls["train"],
                        "steps": summary["step"], "loss": summary["loss"]}))
    finally:
        ray.shutdown()
    # Minutes of training at each step: the loop's own clock (wall_s in metrics.csv, from the first
    # step on; Ray Train and DeepSpeed start-up, ~20 s a run, are in stage_wall_s["train"] only).
    clock = {int(r["step"]): (r["wall_s"], r["loss"]) for r in read_metrics(str(run))}
    points = []
    for ckpt in [_untrained_checkpoint(cfg, work)] + sorted(p for p in run.glob("checkpoint_0*") if p.is_dir()):
        step = int(json.loads((ckpt / "meta.json").read_text())["step"])
        wall_s, loss = clock.get(step, (0.0, None))
        t = time.perf_counter()
        acc = sample_and_score(cfg, str(ckpt), work / "samples" / f"step-{step:06d}")["accuracy"]
        points.append({"bench": "learn", "model": "dit", "step": step, "train_minutes": round(wall_s / 60, 2),
                       "loss": loss, **{k: acc[k] for k in ("color", "direction", "shape")}, "prompts": acc["n"],
                       "eval_s": round(time.perf_counter() - t, 1)})
        log(json.dumps(points[-1]))
    return points, walls


def _untrained_checkpoint(cfg, work: Path) -> Path:
    """A checkpoint dir holding the step-0 weights (train.seed) and the latents' VAE / text encoder."""
    from bench.scaling import first_latent_row
    from training.models.dit import build_dit

    row = first_latent_row(work / "pre")
    out = work / "run-step0"
    torch.manual_seed(cfg.train.seed)
    build_dit(cfg.train.model, in_channels=row["latent_shape"][0],
              text_dim=row["text_emb_shape"][1]).save_pretrained(out / "dit")
    (out / "meta.json").write_text(json.dumps({"vae": row["vae"], "text_encoder": row["text_encoder"], "step": 0}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value")
    ap.add_argument("--steps", type=int, default=None,
                    help="caption_train.steps (train.steps with --model dit; default: the config's)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--world", default=None, help="an existing world dir (default: a fresh one in a temp dir)")
    ap.add_argument("--model", choices=["captioner", "dit", "capabilities"], default="captioner")
    ap.add_argument("--work", default=None, help="dit: folder for every stage's output (reused when present)")
    ap.add_argument("--prepare-only", action="store_true",
                    help="dit: stop after precompute (world, curate, caption, train-vae, latents in --work)")
    ap.add_argument("--scaling", action="store_true", help="the DiT at 3 compute budgets (bench/scaling.py)")
    ap.add_argument("--base-steps", type=int, default=250, help="scaling: steps of the 1x budget")
    ap.add_argument("--out", default=None, help="scaling: folder for scaling.jsonl and scaling.png")
    args = ap.parse_args()
    if args.scaling:
        return main_scaling(args)
    if args.model == "dit":
        return main_dit(args)
    if args.model == "capabilities":
        return main_capabilities(args)
    sets = args.sets + ([f"caption_train.steps={args.steps}"] if args.steps else [])
    cfg = load_config(args.config, sets)
    with tempfile.TemporaryDirectory() as tmp:
        world_dir = Path(args.world or tmp)
        if not (world_dir / "world.json").exists():
            write_world(cfg.world, world_dir)
        t = time.perf_counter()
        points = captioner_curve(cfg, world_dir, args.eval_every, args.threads)
    best = max(points, key=lambda p: (min(p["color"], p["direction"]), p["step"]))
    print(json.dumps({"bench": "learn", "summary": True, "model": "captioner", "steps": cfg.caption_train.steps,
                      "wall_minutes": round((time.perf_counter() - t) / 60, 2), "final": points[-1], "best": best,
                      "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                      "torch": torch.__version__}))


def main_dit(args) -> None:
    sets = args.sets + ([f"train.steps={args.steps}"] if args.steps else [])
    cfg = load_config(args.config, sets)
    t = time.perf_counter()
    if args.prepare_only:
        if not args.work:
            raise SystemExit("--prepare-only needs --work (the folder the stages write to)")
        import ray

        init_ray(cfg if cfg.ray.num_cpus else load_config_over(cfg, ["ray.num_cpus=2"]))
        try:
            _, walls = prepare_dit(cfg, Path(args.work).resolve())
        finally:
            ray.shutdown()
        return print(json.dumps({"bench": "learn", "summary": True, "model": "dit", "prepared": args.work,
                                 "stage_wall_s": walls, "wall_minutes": round((time.perf_counter() - t) / 60, 2)}))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp).resolve()
        points, walls = dit_curve(cfg, work, args.eval_every)
    best = max(points, key=lambda p: (min(p["color"], p["direction"]), p["step"]))
    print(json.dumps({"bench": "learn", "summary": True, "model": "dit", "config": args.config,
                      "steps": cfg.train.steps, "train_minutes": points[-1]["train_minutes"], "stage_wall_s": walls,
                      "wall_minutes": round((time.perf_counter() - t) / 60, 2), "final": points[-1], "best": best,
                      "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}))


def main_scaling(args) -> None:
    from bench import scaling

    config = args.config if "--config" in sys.argv else str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    cfg = load_config(config, ["caption.source=sidecar", *args.sets])  # the DiT trains on the sidecar captions
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp).resolve()
        rows = scaling.run_scaling(cfg, work, args.base_steps, prepare_dit, load_config_over)
    if args.out:
        scaling.write_scaling(rows, Path(args.out))
    print(json.dumps({"bench": "learn", "summary": True, "model": "scaling", "config": config,
                      "budgets": [{k: r[k] for k in ("budget", "model", "params", "steps", "compute", "train_flops",
                                                     "train_wall_s", "final_loss", "color", "direction", "shape")}
                                  for r in rows],
                      "wall_minutes": round((time.perf_counter() - t) / 60, 2),
                      "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}))


def capabilities_run(cfg, work: Path, log=print) -> tuple[dict, dict]:
    """Prepare, train once, then score the last checkpoint: text-to-video on held-out prompts and the
    capabilities (image-to-video, extension, images); returns (scores, stage walls)."""
    import ray

    from training.evaluate import sample_and_score
    from training.evaluate_capabilities import score_capabilities
    from training.train import run_train

    init_ray(cfg if cfg.ray.num_cpus else load_config_over(cfg, ["ray.num_cpus=2"]))
    try:
        cfg, walls = prepare_dit(cfg, work, log)
        t = time.perf_counter()
        summary = run_train(cfg, str(work / "pre"), str(work / "run"))  # resumes a run already there
        walls["train"] = round(time.perf_counter() - t, 1)
        log(json.dumps({"bench": "learn", "model": "capabilities", "stage": "train", "wall_s": walls["train"],
                        "steps": summary["step"], "loss": summary["loss"], "buckets": summary["buckets"],
                        "image_batch_share": summary.get("image_batch_share")}))
    finally:
        ray.shutdown()
    ckpt = summary["checkpoint"]
    t = time.perf_counter()
    scores = {"text_to_video": sample_and_score(cfg, ckpt, work / "samples" / "t2v")["accuracy"],
              **score_capabilities(cfg, ckpt, str(work / "world"), work / "samples")}
    scores["eval_s"] = round(time.perf_counter() - t, 1)
    log(json.dumps({"bench": "learn", "model": "capabilities", "step": summary["step"], **scores}))
    return {**scores, "steps": summary["step"], "loss": summary["loss"]}, walls


def main_capabilities(args) -> None:
    sets = args.sets + ([f"train.steps={args.steps}"] if args.steps else [])
    cfg = load_config(args.config, sets)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp).resolve()
        scores, walls = capabilities_run(cfg, work)
    print(json.dumps({"bench": "learn", "summary": True, "model": "capabilities", "config": args.config,
                      "stage_wall_s": walls, "wall_minutes": round((time.perf_counter() - t) / 60, 2), **scores,
                      "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
