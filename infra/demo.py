"""`reelforge demo`: the whole flow, offline, in minutes on 2 CPUs (settings: configs/demo.yaml).

    world            synthetic moving shapes with sidecar captions (infra/world.py), plus one broken file
    ray              one local Ray (ray.num_cpus) that every job below joins
    curate           probe -> scene split -> measures -> filters -> dedup -> report (Ray Data)
    train-captioner  a small GIT captioner on the world's train split (Ray Train, 2 DDP workers)
    caption          caption = the sidecar text, caption_model_text = the trained captioner's
    precompute       tiny VAE latents + MiniLM text embeddings to Parquet shards
    train            the tiny video DiT (Ray Train + DeepSpeed ZeRO-2, 2 workers)
    sample           one mp4 from the trained checkpoint
    eval             held-out prompts sampled and checked (colour, direction, shape)
    report           OUTPUT/index.html (stages, eval grid, loss curve, funnel; infra/demo_page.py), demo.json

Re-running into the same OUTPUT resumes: curate, caption and precompute skip their complete
partitions (marker + config fingerprint, their own rules); the world and the captioner are reused
when their config sections are unchanged; train is reused when it finished with the same config,
resumes from its newest checkpoint when it was interrupted, and starts again (OUTPUT/train is
removed) when any section that shapes the data or the model changed; sample, eval and report
always run again. Another OUTPUT (or deleting it) starts clean.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from infra.config import ReelForgeConfig, load_config
from infra.demo_page import demo_page

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
STAGES = ("world", "ray", "curate", "train-captioner", "caption", "precompute", "train", "sample", "eval", "report")
BROKEN = "broken.mp4"

# (name, scenes as (frames, kind, colour, background)) -- several scenes each, hard cuts between them
_DEMO_VIDEOS = [
    ("shapes-a.mp4", [(48, "moving", (230, 40, 40), (20, 30, 120)), (40, "moving", (40, 220, 60), (200, 200, 200)),
                      (56, "static", (240, 240, 40), (60, 20, 20))]),
    ("shapes-b.mp4", [(60, "moving", (40, 80, 230), (230, 230, 230)), (48, "text", (255, 255, 255), (10, 10, 10))]),
    ("shapes-c.mp4", [(36, "moving", (230, 140, 20), (20, 100, 40)), (36, "black", (0, 0, 0), (0, 0, 0)),
                      (48, "moving", (200, 40, 200), (240, 240, 200))]),
]


def _write_broken(directory: str) -> str:
    path = os.path.join(directory, BROKEN)
    with open(path, "wb") as f:
        f.write(b"this is not a video, the job must record it as a failure and go on\n")
    return path


def make_demo_videos(directory: str, seed: int = 0) -> dict[str, dict]:
    """Write three videos with known cuts plus one corrupt file; returns the ground truth per file
    (bench/curate.py's input; the demo itself uses the synthetic world)."""
    from infra.videogen import Scene, write_video

    os.makedirs(directory, exist_ok=True)
    truth = {}
    for i, (name, scenes) in enumerate(_DEMO_VIDEOS):
        spec = [Scene(num_frames=n, kind=kind, color=color, bg=bg) for n, kind, color, bg in scenes]
        truth[name] = write_video(os.path.join(directory, name), spec, fps=24, width=160, height=96, seed=seed + i)
    _write_broken(directory)
    truth[BROKEN] = {"expect": "failure"}
    with open(os.path.join(directory, "truth.json"), "w") as f:
        json.dump(truth, f, indent=2, default=str)
    return truth


def demo_config(path: str | None = None, sets: list[str] | tuple[str, ...] = ()) -> ReelForgeConfig:
    """The demo's config: configs/demo.yaml unless another file is given, then `--set` overrides."""
    return load_config(path or DEMO_CONFIG, sets)


def demo_paths(output: str) -> dict[str, str]:
    out = os.path.abspath(output)  # Ray workers run in their own working directories
    return {k: os.path.join(out, k) for k in
            ("world", "curate", "captioner", "captioned", "precompute", "train", "samples", "eval")} | {"root": out}


# ----------------------------------------------------------------------------- stages
def _world(cfg: ReelForgeConfig, p: dict) -> dict:
    """The synthetic world, reused when world.json was written from the same `world:` section."""
    from infra.world import write_world

    index_path = Path(p["world"], "world.json")
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    reused = bool(index and index.get("config") == cfg.world.model_dump(mode="json"))
    if not reused:
        index = write_world(cfg.world, p["world"])
    _write_broken(os.path.join(p["world"], "train"))  # curate must list it in failures/ and go on
    c = index["counts"]
    return {"reused": reused, "train_videos": c["train"]["videos"], "train_scenes": c["train"]["scenes"],
            "eval_videos": c["eval"]["videos"], "detail": f"{c['train']['videos']} + 1 broken videos, "
            f"{c['train']['scenes']} scenes; {c['eval']['videos']} held-out videos"}


def _ray(cfg: ReelForgeConfig) -> dict:
    """Start (or join) one Ray for every job: each job joins it instead of starting its own."""
    import ray

    from infra.runtime import init_ray

    started = init_ray(cfg)
    cpus = ray.cluster_resources().get("CPU", 0)
    return {"started": started, "detail": f"{'started' if started else 'joined'} a local Ray with {cpus:g} CPUs, "
                                          "shared by the jobs below"}


def _curate(cfg: ReelForgeConfig, p: dict, bar) -> dict:
    from pipelines.runner import run_curate

    with bar("curate") as progress:
        m = run_curate(cfg, os.path.join(p["world"], "train"), p["curate"], progress=progress)
    c = m["counts"]
    return {"reused": m["resume"]["skipped_complete"] == m["resume"]["partitions"], "inputs": c["inputs"],
            "videos_ok": c["videos_ok"], "failed": c["failed"], "clips": c["clips"], "kept": c["kept"],
            "report": os.path.join(p["curate"], "report", "index.html"),
            "detail": f"{c['inputs']} inputs: {c['videos_ok']} ok, {c['failed']} failed; "
                      f"{c['clips']} clips, {c['kept']} kept"}


def _captioner_is_current(cfg: ReelForgeConfig, model_dir: str) -> bool:
    """A captioner in `model_dir` trained with the same caption_train, caption and world sections."""
    saved = Path(model_dir, "config.yaml")
    if not Path(model_dir, "train_summary.json").exists() or not saved.exists():
        return False
    try:
        old = load_config(saved)
    except Exception:  # written by an older schema: train again
        return False
    return old.fingerprint("caption_train", "caption", "world") == cfg.fingerprint("caption_train", "caption", "world")


def _train_captioner(cfg: ReelForgeConfig, p: dict) -> dict:
    from captioning.runner_train import run_train_captioner

    reused = _captioner_is_current(cfg, p["captioner"])
    if reused:
        s = json.loads(Path(p["captioner"], "train_summary.json").read_text())
    else:
        s = run_train_captioner(cfg, p["world"], p["captioner"])
    acc = s.get("eval", {}).get("accuracy", {})
    return {"reused": reused, "clips": s["clips"], "steps": s["steps"], "loss": s["loss"], "accuracy": acc,
            "detail": f"{s['clips']} clips x {s['steps']} steps, loss {s['loss']:.3f}; "
                      f"{acc.get('n', 0)} held-out clips: {_accuracy(acc)}"}


def _caption(cfg: ReelForgeConfig, p: dict, bar) -> dict:
    from captioning.runner import run_caption

    with bar("caption") as progress:
        m = run_caption(cfg, p["curate"], p["captioned"], model=p["captioner"], progress=progress)
    c, agree = m["counts"], _agreement(cfg, p["captioned"])
    return {"reused": m["resume"]["skipped_complete"] == m["resume"]["partitions"], "captioned": c["captioned"],
            "failed": c["failed"], "agreement": agree,
            "detail": f"{c['captioned']} of {c['kept']} kept clips ({agree['sidecar']} from sidecars); "
                      f"{c['failed']} failed; the captioner agrees with the sidecars on {_accuracy(agree)}"}


def _agreement(cfg: ReelForgeConfig, captioned: str) -> dict:
    """How often the captioner's text names the sidecar's colour, direction and shape."""
    from infra import storage
    from infra.worldcheck import parse_caption, score_captions

    cols = ["caption", "caption_source", "caption_model_text"]
    rows = [r for r in storage.read_table(storage.join(captioned, "clips"), columns=cols).to_pylist()
            if r["caption_source"] == "sidecar" and r["caption_model_text"]]
    w = cfg.world
    truth = [parse_caption(r["caption"], w.shape_colors, w.directions, w.shapes) for r in rows]
    acc = score_captions([r["caption_model_text"] for r in rows], truth, w.shape_colors, w.directions, w.shapes)
    return {**acc, "sidecar": len(rows)}


def _accuracy(acc: dict) -> str:
    return ", ".join(f"{k} {acc[k]:.2f}" for k in ("color", "direction", "shape") if acc.get(k) is not None)


def _precompute(cfg: ReelForgeConfig, p: dict, bar) -> dict:
    from pipelines.runner_precompute import run_precompute

    with bar("precompute") as progress:
        m = run_precompute(cfg, p["captioned"], p["precompute"], progress=progress)
    c = m["counts"]
    buckets = ", ".join(f"{b}: {n}" for b, n in sorted(c["rows_per_bucket"].items()))
    return {"reused": m["resume"]["skipped_complete"] == m["resume"]["partitions"], "encoded": c["encoded"],
            "failed": c["failed"], "buckets": c["rows_per_bucket"],
            "detail": f"{c['encoded']} clips encoded ({buckets}); {c['failed']} failed, "
                      f"{sum(c['dropped'].values())} not eligible"
                      + "".join(f"; {n}" for n in m["models"].get("random_weights") or [])}


def _train(cfg: ReelForgeConfig, p: dict) -> dict:
    from training.metrics import read_metrics
    from training.train import run_train

    # The run in OUTPUT/train belongs to one config: another one (any section that shapes the data
    # or the model) starts it again instead of resuming a checkpoint trained on other latents.
    fingerprint = cfg.fingerprint(*[k for k in cfg.to_dict() if k not in ("sample", "tune", "ray", "storage")])
    marker, done = Path(p["train"], "demo-fingerprint"), Path(p["train"], "summary.json")
    if marker.exists() and marker.read_text() != fingerprint:
        shutil.rmtree(p["train"])
    reused = done.exists() and marker.exists() and json.loads(done.read_text()).get("step") == cfg.train.steps
    if reused:
        s = json.loads(done.read_text())
    else:
        Path(p["train"]).mkdir(parents=True, exist_ok=True)
        marker.write_text(fingerprint)
        s = run_train(cfg, p["precompute"], p["train"])  # resumes from the newest checkpoint when there is one
    if not s.get("checkpoint"):
        raise RuntimeError(f"train: the run reported no checkpoint (summary: {s})")
    logged = [r["loss"] for r in read_metrics(p["train"]) if r.get("loss") is not None]
    curve = (f"loss {logged[0]:.3f} -> {logged[-1]:.3f} (logged every {cfg.train.log_every})" if logged
             else "no loss logged")
    return {"reused": reused, "step": s["step"], "loss": s.get("loss"),
            "first_loss": logged[0] if logged else None, "rows": s["rows"], "checkpoint": s["checkpoint"],
            "detail": f"{s['step']} steps x {cfg.train.num_workers} workers (ZeRO-{cfg.train.zero_stage}) on "
                      f"{s['rows']} latents; {curve}"}


def _sample(cfg: ReelForgeConfig, p: dict, checkpoint: str) -> dict:
    from training.evaluate import heldout_prompts
    from training.sample import sample_to_files

    prompt = heldout_prompts(cfg.world, n=1, seed=cfg.sample.seed)[0]["prompt"]
    mp4 = str(sample_to_files(cfg, checkpoint, [prompt], p["samples"])[0])
    return {"mp4": mp4, "prompt": prompt, "detail": f"{prompt!r} -> {os.path.basename(mp4)}"}


def _eval(cfg: ReelForgeConfig, p: dict, checkpoint: str) -> dict:
    from training.evaluate import run_eval

    r = run_eval(cfg, checkpoint=checkpoint, output=p["eval"])["sample"]
    acc, w = r["accuracy"], cfg.world
    chance = ", ".join(f"{1 / len(v):.2f}" for v in (w.shape_colors, w.directions, w.shapes))
    which = "held-out" if w.holdout else "eval (no world.holdout: pairs seen in training)"
    return {"prompts": r["prompts"], "accuracy": acc,
            "detail": f"{r['prompts']} {which} prompts sampled and checked: {_accuracy(acc)} (chance: {chance})"}


# ----------------------------------------------------------------------------- the flow
def run_demo(cfg: ReelForgeConfig, output: str, bar: Callable | None = None,
             on_stage: Callable[[str, dict | None], None] | None = None) -> dict:
    """Run every stage into `output`; returns the summary (also OUTPUT/demo.json).

    `bar(job)` is a context manager yielding a progress callback for curate/caption/precompute
    (infra/summary.py's curate_progress); `on_stage(name, None)` is called as a stage starts and
    `on_stage(name, result)` when it ends.
    """
    bar = bar or (lambda job: nullcontext(None))
    on_stage = on_stage or (lambda name, result: None)
    p = demo_paths(output)
    os.makedirs(p["root"], exist_ok=True)
    Path(p["root"], "config.yaml").write_text(cfg.to_yaml())
    summary: dict = {"output": p["root"], "stages": {}, "started": time.time()}

    def stage(name: str, fn: Callable[[], dict]) -> dict:
        on_stage(name, None)
        t0 = time.perf_counter()
        result = fn()
        result["seconds"] = round(time.perf_counter() - t0, 1)
        summary["stages"][name] = result
        on_stage(name, result)
        return result

    t0 = time.perf_counter()
    stage("world", lambda: _world(cfg, p))
    started_ray = stage("ray", lambda: _ray(cfg))
    try:
        summary["report"] = stage("curate", lambda: _curate(cfg, p, bar))["report"]
        stage("train-captioner", lambda: _train_captioner(cfg, p))
        stage("caption", lambda: _caption(cfg, p, bar))
        stage("precompute", lambda: _precompute(cfg, p, bar))
        summary["checkpoint"] = stage("train", lambda: _train(cfg, p))["checkpoint"]
    finally:
        if started_ray["started"]:
            import ray

            ray.shutdown()
    summary["mp4"] = stage("sample", lambda: _sample(cfg, p, summary["checkpoint"]))["mp4"]
    stage("eval", lambda: _eval(cfg, p, summary["checkpoint"]))
    summary["page"] = os.path.join(p["root"], "index.html")

    def report() -> dict:
        summary["total_seconds"] = round(time.perf_counter() - t0, 1)
        Path(summary["page"]).write_text(demo_page(summary, p["train"], p["eval"]))
        return {"detail": "index.html (eval grid, loss curve, funnel, the mp4) + demo.json"}

    stage("report", report)
    summary["total_seconds"] = round(time.perf_counter() - t0, 1)
    Path(p["root"], "demo.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


# ----------------------------------------------------------------------------- output
def summary_table(summary: dict):
    """The one-screen summary: each stage, what it produced, seconds."""
    from rich.table import Table

    t = Table(title=f"reelforge demo -> {summary['output']}", title_justify="left")
    t.add_column("stage", no_wrap=True)
    t.add_column("result", overflow="fold")
    t.add_column("seconds", justify="right", no_wrap=True)
    for name, r in summary["stages"].items():
        t.add_row(name, r["detail"] + (" [dim](reused)[/]" if r.get("reused") else ""), f"{r['seconds']:.1f}")
    t.add_section()
    t.add_row("[bold]total[/]", "", f"[bold]{summary['total_seconds']:.1f}[/]")
    return t
