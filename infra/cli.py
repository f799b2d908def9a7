"""`reelforge`: the single command line. Each subcommand loads the config and calls one library function."""

from __future__ import annotations

import logging
import sys
from importlib import metadata
from typing import Optional

import typer
from rich.console import Console

from infra.config import ConfigError, ReelForgeConfig, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ReelForge: raw video -> curated clips -> captions -> latents -> a trained video DiT, on Ray.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the resolved config.")
app.add_typer(config_app, name="config")
console = Console(stderr=True)
out = Console(soft_wrap=True)  # never break paths and ids across lines

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (see configs/)")
# Jobs not built yet accept any flags so users get the honest "not built" message, not a usage error.
_ANY_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
SetOpt = typer.Option([], "--set", help="override: section.key=value (repeatable)")


def _load(config: Optional[str], sets: list[str]) -> ReelForgeConfig:
    try:
        return load_config(config, sets)
    except ConfigError as exc:
        console.print(f"[bold red]config error[/]\n{exc}")
        raise typer.Exit(2) from None


def _version(value: bool) -> None:
    if value:
        try:
            v = metadata.version("reelforge")
        except metadata.PackageNotFoundError:
            v = "unknown (not installed)"
        out.print(f"reelforge {v}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging"),
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@config_app.command("show")
def config_show(config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Print the resolved config (file + overrides + defaults) as YAML."""
    out.print(_load(config, sets).to_yaml(), end="", markup=False, highlight=False)


@app.command()
def curate(
    input: Optional[str] = typer.Option(None, "--input", "-i", help="folder, glob, list file or s3:// prefix of videos"),
    output: str = typer.Option(..., "--output", "-o", help="output root (local path or s3://bucket/prefix)"),
    refilter: bool = typer.Option(False, "--refilter", help="re-apply curate.filters/dedup to OUTPUT's clips "
                                  "table without decoding video (config: --config, else OUTPUT/config.yaml)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Curate videos into videos/, clips/ (measures, keep, drop_reason), failures/, report/ and manifest.json."""
    from infra.summary import curate_progress, print_curate_summary
    from pipelines.ingest import IngestError
    from pipelines.refilter import load_output_config, run_refilter
    from pipelines.runner import run_curate

    if refilter:
        try:
            res = run_refilter(load_output_config(output, config, sets), output)
        except FileNotFoundError as exc:
            console.print(f"[bold red]curate --refilter:[/] {exc}")
            raise typer.Exit(2) from None
        out.print(f"refilter: {res['clips']} clips, {res['kept']} kept, dropped {res['dropped_by_reason']}; "
                  f"{res['parts_rewritten']} part files rewritten in {res['wall_s']} s")
        return
    if not input:
        console.print("[bold red]curate:[/] --input is required (or --refilter)")
        raise typer.Exit(2)
    cfg = _load(config, sets)
    try:
        with curate_progress(console) as progress:
            manifest = run_curate(cfg, input, output, progress=progress)
    except IngestError as exc:
        console.print(f"[bold red]curate:[/] {exc}")
        raise typer.Exit(2) from None
    print_curate_summary(out, manifest)
    if cfg.curate.report:
        out.print(f"report: {output.rstrip('/')}/report/index.html")


@app.command()
def caption(
    clips: str = typer.Option(..., "--clips", help="a curate output root (reads its clips/ table); local or s3://"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="output root (default: CLIPS/captioned)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="captioner: hub name or local dir (default: caption.model)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Re-caption every kept clip with a video-to-text model into a new version of the clips table."""
    from captioning.models import CaptionerNotAvailable
    from captioning.runner import CaptionInputError, run_caption
    from infra.summary import caption_progress, print_caption_summary

    cfg = _load(config, sets)
    try:
        with caption_progress(console) as progress:
            manifest = run_caption(cfg, clips, output, model=model, progress=progress)
    except (CaptionInputError, CaptionerNotAvailable) as exc:
        console.print(f"[bold red]caption:[/] {exc}")
        raise typer.Exit(2) from None
    print_caption_summary(out, manifest)


@app.command()
def precompute(
    clips: str = typer.Option(..., "--clips", help="root holding a captioned clips/ table (caption output)"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="latents root (default: CLIPS/../latents)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Encode clips to VAE latents and captions to text embeddings (Parquet shards)."""
    from infra.summary import curate_progress, print_precompute_summary
    from pipelines.runner_precompute import PrecomputeError, run_precompute

    cfg = _load(config, sets)
    output = output or clips.rstrip("/").rsplit("/", 1)[0] + "/latents"
    try:
        with curate_progress(console, "precompute") as progress:
            manifest = run_precompute(cfg, clips, output, progress=progress)
    except PrecomputeError as exc:
        console.print(f"[bold red]precompute:[/] {exc}")
        raise typer.Exit(2) from None
    print_precompute_summary(out, manifest)


@app.command("train-vae")
def train_vae(
    clips: str = typer.Option(..., "--clips", help="a curate output root (its clips/ table); local or s3://"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="where vae/ goes (default: CLIPS/vae-train)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Train the video VAE on frames of the kept clips (settings: train.vae.*)."""
    from training.vae_train import run_train_vae

    cfg = _load(config, sets)
    try:
        summary = run_train_vae(cfg, clips, output)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[bold red]train-vae:[/] {exc}")
        raise typer.Exit(2) from None
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


@app.command()
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
    try:
        summary = run_train(cfg, latents, output)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[bold red]train:[/] {exc}")
        raise typer.Exit(2) from None
    _print_run_summary("train", summary, ["step", "epoch", "loss", "samples_per_s", "tokens_per_s", "mfu",
                                          "mem_gb", "resumed_from", "rows", "buckets", "wall_s", "checkpoint"])


@app.command()
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
        console.print("[bold red]tune:[/] --latents is required (a precompute output root)")
        raise typer.Exit(2)
    cfg = _load(config, sets)
    try:
        summary = run_tune(cfg, latents, output, resume=resume)
    except (FileNotFoundError, ValueError, ConfigError) as exc:
        console.print(f"[bold red]tune:[/] {exc}")
        raise typer.Exit(2) from None
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


@app.command()
def sample(
    checkpoint: str = typer.Option(..., "--checkpoint", help="checkpoint dir with dit/ (and ema/, meta.json)"),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="text prompt (repeatable: one video each)"),
    output: str = typer.Option("samples", "--output", "-o", help="folder for the mp4 files"),
    vae: Optional[str] = typer.Option(None, "--vae", help="VAE spec (default: the checkpoint's, else precompute.vae)"),
    text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="text encoder spec (default as --vae)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Sample videos from a trained DiT checkpoint to mp4 (text -> latents -> VAE decode -> mp4)."""
    from training.sample import sample_to_files

    cfg = _load(config, sets)
    try:
        paths = sample_to_files(cfg, checkpoint, list(prompt), output, vae_spec=vae, text_encoder_spec=text_encoder)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[bold red]sample:[/] {exc}")
        raise typer.Exit(2) from None
    for p, path in zip(prompt, paths):
        out.print(f"{path}  <- {p!r}")


@app.command(context_settings=_ANY_ARGS)
def submit(
    ctx: typer.Context,
    address: Optional[str] = typer.Option(None, "--address", help="Ray dashboard URL (default $RAY_JOBS_ADDRESS or http://127.0.0.1:8265)"),
    wait: bool = typer.Option(False, "--wait", help="stream the job's logs and exit with its status"),
    working_dir: str = typer.Option(".", "--working-dir", help="the project folder to upload (only this is sent)"),
    python: str = typer.Option("python", "--python", help="python executable on the cluster"),
) -> None:
    """Run any reelforge job on a Ray cluster (Ray Jobs API): reelforge submit [--wait] -- curate ..."""
    from infra import submit as sub

    try:
        job_id = sub.submit(list(ctx.args), address=address, working_dir=working_dir, python=python)
    except (ValueError, ConfigError) as exc:
        console.print(f"[bold red]submit:[/] {exc}")
        raise typer.Exit(2) from None
    out.print(job_id)
    if wait:
        status = sub.wait(job_id, address, on_logs=lambda text: out.print(text, end="", markup=False, highlight=False))
        console.print(f"job {job_id}: {status}")
        raise typer.Exit(0 if status == "SUCCEEDED" else 1)


jobs_app = typer.Typer(no_args_is_help=True, help="List, follow and stop submitted jobs.")
app.add_typer(jobs_app, name="jobs")
AddressOpt = typer.Option(None, "--address", help="Ray dashboard URL")


@jobs_app.command("list")
def jobs_list(address: Optional[str] = AddressOpt) -> None:
    """List the cluster's jobs."""
    from infra import submit as sub

    for j in sub.list_jobs(address):
        out.print(f"{j['id']}  {j['status']:<10} {j['entrypoint']}", markup=False, highlight=False)


@jobs_app.command("logs")
def jobs_logs(job_id: str, address: Optional[str] = AddressOpt) -> None:
    """Print a job's logs."""
    from infra import submit as sub

    out.print(sub.logs(job_id, address), end="", markup=False, highlight=False)


@jobs_app.command("stop")
def jobs_stop(job_id: str, address: Optional[str] = AddressOpt) -> None:
    """Stop a running job."""
    from infra import submit as sub

    out.print("stopped" if sub.stop(job_id, address) else "not running")


@app.command()
def report(
    output: str = typer.Argument(..., help="a curate output root (local path or s3://bucket/prefix)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Write the data-quality HTML report of a curate output into OUTPUT/report/."""
    from pipelines.refilter import load_output_config
    from pipelines.report import write_report

    out.print(f"report: {write_report(output, load_output_config(output, config, sets))}")


@app.command()
def demo(
    output: str = typer.Option("demo-output", "--output", "-o", help="where the demo writes everything; "
                               "a re-run into it resumes"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (default: configs/demo.yaml)"),
    sets: list[str] = SetOpt,
) -> None:
    """Offline demo of the whole flow: world -> curate -> caption -> precompute -> train -> sample -> eval."""
    from infra.demo import DEMO_CONFIG, run_demo, summary_table
    from infra.summary import caption_progress, curate_progress

    cfg = _load(config or str(DEMO_CONFIG), sets)

    def on_stage(name: str, result: Optional[dict]) -> None:
        if result is None:
            console.print(f"[bold cyan]>> {name}[/]")
        else:
            console.print(f"   {name}: {result['detail']} [dim]({result['seconds']:.1f} s)[/]", highlight=False)

    def bar(job: str):
        return caption_progress(console) if job == "caption" else curate_progress(console, job)

    summary = run_demo(cfg, output, bar=bar, on_stage=on_stage)
    out.print(summary_table(summary))
    out.print(f"report: {summary['page']}\ncuration report: {summary['report']}\nsample mp4: {summary['mp4']}")



@app.command("demo-data")
def demo_data(
    output: str = typer.Option(..., "--output", "-o", help="folder for the world (train/, eval/, world.json)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Write the synthetic world: moving coloured shapes with per-scene ground-truth captions in sidecars."""
    from infra.world import write_world

    cfg = _load(config, sets)
    index = write_world(cfg.world, output)
    counts = index["counts"]
    out.print(f"world -> {output}: train {counts['train']['videos']} videos / {counts['train']['scenes']} scenes, "
              f"eval {counts['eval']['videos']} videos / {counts['eval']['scenes']} scenes"
              + (f"; held out of train: {', '.join(index['holdout'])}" if index["holdout"] else ""))


@app.command("eval")
def eval_cmd(
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="DiT checkpoint dir: sample held-out prompts"),
    vae: Optional[str] = typer.Option(None, "--vae", help="VAE dir (save_pretrained): PSNR/SSIM on --clips"),
    clips: Optional[str] = typer.Option(None, "--clips", help="a world dir (its eval split) or a curate output root"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="folder for eval.json and the sampled mp4s"),
    max_clips: int = typer.Option(16, "--max-clips", help="clips for the VAE metrics"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Score a DiT on held-out world prompts (colour, direction, shape) and/or a VAE's PSNR/SSIM; prints JSON."""
    import json

    from training.evaluate import run_eval

    cfg = _load(config, sets)
    try:
        report = run_eval(cfg, checkpoint=checkpoint, vae=vae, clips=clips, output=output, max_clips=max_clips)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[bold red]eval:[/] {exc}")
        raise typer.Exit(2) from None
    if "sample" in report:
        report["sample"].pop("per_prompt", None)  # the full list is in eval.json
    out.print(json.dumps(report, indent=1), markup=False, highlight=False)


@app.command("train-captioner")
def train_captioner(
    clips: str = typer.Option(..., "--clips", help="a world dir (demo-data) or a curate/caption output root"),
    output: str = typer.Option(..., "--output", "-o", help="local dir for the model (then: caption --model)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Train a small GIT captioner on clips with existing captions (Ray Train, DDP); score a world's eval split."""
    import json

    from captioning.runner_train import run_train_captioner

    cfg = _load(config, sets)
    try:
        summary = run_train_captioner(cfg, clips, output)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[bold red]train-captioner:[/] {exc}")
        raise typer.Exit(2) from None
    shown = {**summary, **({"eval": {k: v for k, v in summary["eval"].items() if k != "examples"}}
                           if "eval" in summary else {})}  # examples are in OUTPUT/train_summary.json
    out.print(json.dumps(shown, indent=1), markup=False, highlight=False)
    out.print(f"model: {output}  (reelforge caption --clips ROOT --model {output})")

def main() -> None:
    try:
        app()
    except ConfigError as exc:  # a config problem found past load (e.g. in a job)
        console.print(f"[bold red]config error[/]\n{exc}")
        sys.exit(2)
    except PermissionError as exc:  # storage.StorageAccessDenied: S3 refused the credentials
        console.print(f"[bold red]access denied[/]\n{exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
