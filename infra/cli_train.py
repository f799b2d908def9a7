"""`reelforge` training commands: train-vae, train, tune, sample, eval and train-captioner.

Plain functions: infra/cli.py registers them on the app, in the order `--help` lists them.
"""

from __future__ import annotations

import json
from typing import Optional

import typer

from infra.cli_common import ConfigOpt, SetOpt, _load, exits_on, fail, out, print_plain
from infra.config import ConfigError


def train_vae(
    clips: str = typer.Option(..., "--clips", help="a curate output root (its clips/ table); local or s3://"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="where vae/ goes, local or s3:// "
                                         "(default: CLIPS/vae-train)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Train the video VAE on frames of the kept clips (settings: train.vae.*)."""
    from training.vae_train import run_train_vae

    cfg = _load(config, sets)
    with exits_on("train-vae", FileNotFoundError, ValueError):
        summary = run_train_vae(cfg, clips, output)
    _print_run_summary("train-vae", summary, ["clips", "failed_clips", "steps", "final_loss", "psnr",
                                              "samples_per_s", "scaling_factor", "seconds", "checkpoint"])


def _print_run_summary(job: str, summary: dict, keys: list[str]) -> None:
    from rich.table import Table

    t = Table(title=f"{job} -> {summary['output']}", show_header=False, box=None)
    t.add_column(no_wrap=True)
    t.add_column(overflow="fold")  # paths are folded, never cut: users copy them
    for key in keys:
        value = summary.get(key)
        t.add_row(key.replace("_", " "), f"{value:.4g}" if isinstance(value, float) else str(value))
    out.print(t)


def train(
    latents: str = typer.Option(..., "--latents", help="a precompute output root (its latents/ table); local or s3://"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="run directory, local or s3:// "
                                         "(default: train.storage_path, else runs/train); a re-run resumes"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Train the video DiT from latent shards with Ray Train + DeepSpeed ZeRO (settings: train.*)."""
    from training.train import run_train

    cfg = _load(config, sets)
    with exits_on("train", FileNotFoundError, ValueError):
        summary = run_train(cfg, latents, output)
    _print_run_summary("train", summary, ["step", "epoch", "loss", "samples_per_s", "tokens_per_s", "mfu",
                                          "mem_gb", "resumed_from", "rows", "buckets", "wall_s", "checkpoint"])


def tune(
    latents: Optional[str] = typer.Option(None, "--latents", help="a precompute output root (its latents/ table); "
                                          "local or s3:// (with --resume: taken from the run)"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="experiment directory, local or s3:// "
                                         "(default: tune.storage_path, else runs/tune)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted search in --output "
                                "(finished trials are kept)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Search training hyperparameters (tune.space) with Ray Tune over the train job's TorchTrainer."""
    from training.tune import read_run, run_tune

    if resume and config is None and output:
        saved = read_run(output)  # the search's own config and latents, as it started
        config, latents = config or saved["config"], latents or saved["latents"]
    if not latents:
        fail("tune", "--latents is required (a precompute output root)")
    cfg = _load(config, sets)
    with exits_on("tune", FileNotFoundError, ValueError, ConfigError):
        summary = run_tune(cfg, latents, output, resume=resume)
    print_tune_summary(summary)
    if summary["best"] is None:
        raise typer.Exit(1)


def print_tune_summary(summary: dict) -> None:
    from rich.table import Table

    metric = summary["metric"]
    trials = summary["trials"]
    keys = [k for k in (trials[0] if trials else {}) if k not in ("trial", "status", "steps", "error")]
    table = Table(title=f"tune ({summary['scheduler']}, {summary['mode']} {metric}) -> {summary['output']}")
    for col in ["trial", *keys, "steps", "status"]:
        table.add_column(col, overflow="fold")
    for r in trials:
        best = summary["best"] and r["trial"] == summary["best"]["trial"]
        cells = [r["trial"] + (" *" if best else "")]
        cells += [f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        cells += [str(r["steps"]), r["status"] if not r["error"] else f"error: {r['error']}"]
        table.add_row(*cells, style="bold green" if best else None)
    out.print(table)
    out.print(f"trials: {summary['trials_csv']}\nplot:   {summary['plot']}")
    if summary["best_config"]:
        out.print(f"best:   {summary['best_config']}  (* above; reelforge train --config it)")
    else:
        out.print("[bold red]no trial reported the metric[/]: see the errors above")


def sample(
    checkpoint: str = typer.Option(..., "--checkpoint", help="checkpoint dir with dit/ (and ema/, meta.json); "
                                   "local or s3://"),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="text prompt (repeatable: one video each)"),
    output: str = typer.Option("samples", "--output", "-o", help="folder for the mp4 (or png) files, local or s3://"),
    vae: Optional[str] = typer.Option(None, "--vae", help="VAE spec or save_pretrained dir, local or s3:// "
                                      "(default: the checkpoint's, else precompute.vae)"),
    text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="text encoder spec (default as --vae)"),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu or cuda"),
    num_frames: Optional[int] = typer.Option(None, "--num-frames", help="pixel frames (1: an image, written as PNG; "
                                             "default sample.num_frames)"),
    image: Optional[str] = typer.Option(None, "--image", help="animate this image: it stays the first frame"),
    video: Optional[str] = typer.Option(None, "--video", help="a video to extend (--extend N) or edit (--strength s)"),
    extend: Optional[int] = typer.Option(None, "--extend", help="latent frames to add after --video"),
    backward: bool = typer.Option(False, "--backward", help="with --extend: add them before the video instead"),
    connect: Optional[tuple[str, str]] = typer.Option(None, "--connect", help="A B: from the end of video A to "
                                                      "the start of video B"),
    strength: Optional[float] = typer.Option(None, "--strength", help="edit --video: noise it to t=s in (0, 1] and "
                                             "denoise it with the prompt (SDEdit)"),
    prompt_extension: Optional[str] = typer.Option(None, "--prompt-extension", help="'world', a causal LM (name or "
                                                   "path) or 'none' (default: sample.prompt_extension)"),
    print_prompt: bool = typer.Option(False, "--print-prompt", help="print each prompt as it is sampled "
                                      "(extended, with scores)"),
    scores: bool = typer.Option(False, "--scores", help="append sample.target_scores to each prompt as "
                                "caption.score_suffix appended scores in training"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Sample videos (or images) from a trained DiT checkpoint: text -> latents -> VAE decode -> mp4 / png;
    optionally animating an image, extending, connecting or editing videos."""
    from training.conditioning import ConditionSpec
    from training.sample import prepare_prompts, sample_to_files

    if device not in ("auto", "cpu", "cuda"):
        fail("sample", f"--device must be auto, cpu or cuda, not {device!r}")
    extra = [f"sample.num_frames={num_frames}"] if num_frames else []
    extra += [f"sample.prompt_extension={prompt_extension}"] if prompt_extension else []
    cfg = _load(config, [*sets, *extra])
    with exits_on("sample", FileNotFoundError, ValueError):
        spec = ConditionSpec(image, video, extend, backward, tuple(connect) if connect else None, strength).check()
        final = prepare_prompts(cfg, list(prompt), scores=scores)
        if print_prompt:
            for p, f in zip(prompt, final):
                out.print(f"prompt {p!r} -> {f!r}")
        paths = sample_to_files(cfg, checkpoint, final, output, vae_spec=vae, text_encoder_spec=text_encoder,
                                device=device, condition=spec)
    for p, path in zip(final, paths):
        out.print(f"{path}  <- {p!r}")


def eval_cmd(
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="DiT checkpoint dir (local or s3://): "
                                             "sample held-out prompts"),
    vae: Optional[str] = typer.Option(None, "--vae", help="VAE dir (save_pretrained, local or s3://): PSNR/SSIM on --clips"),
    clips: Optional[str] = typer.Option(None, "--clips", help="a world dir (its eval split) or a curate output root"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="folder for eval.json and the sampled mp4s "
                                         "(local or s3://)"),
    max_clips: int = typer.Option(16, "--max-clips", help="clips for the VAE metrics"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Score a DiT on held-out world prompts (colour, direction, shape) and/or a VAE's PSNR/SSIM; prints JSON."""
    from training.evaluate import run_eval

    cfg = _load(config, sets)
    with exits_on("eval", FileNotFoundError, ValueError):
        report = run_eval(cfg, checkpoint=checkpoint, vae=vae, clips=clips, output=output, max_clips=max_clips)
    if "sample" in report:
        report["sample"].pop("per_prompt", None)  # the full list is in eval.json
    print_plain(json.dumps(report, indent=1))


def train_captioner(
    clips: str = typer.Option(..., "--clips", help="a world dir (demo-data) or a curate/caption output root"),
    output: str = typer.Option(..., "--output", "-o", help="local dir or s3:// dir for the model (then: caption --model)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Train a small GIT captioner on clips with existing captions (Ray Train, DDP); score a world's eval split."""
    from captioning.runner_train import run_train_captioner

    cfg = _load(config, sets)
    with exits_on("train-captioner", FileNotFoundError, ValueError):
        summary = run_train_captioner(cfg, clips, output)
    shown = {**summary, **({"eval": {k: v for k, v in summary["eval"].items() if k != "examples"}}
                           if "eval" in summary else {})}  # examples are in OUTPUT/train_summary.json
    print_plain(json.dumps(shown, indent=1))
    out.print(f"model: {output}  (reelforge caption --clips ROOT --model {output})")
