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
out = Console()

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


def _not_built(job: str, issue: str) -> None:
    console.print(f"[bold yellow]reelforge {job}[/] is not built yet ({issue}). Nothing was run.")
    raise typer.Exit(3)


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
    input: str = typer.Option(..., "--input", "-i", help="folder, glob, list file or s3:// prefix of videos"),
    output: str = typer.Option(..., "--output", "-o", help="output root (local path or s3://bucket/prefix)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Ingest, probe and scene-split videos into videos/, clips/, failures/ tables and manifest.json."""
    from infra.summary import curate_progress, print_curate_summary
    from pipelines.ingest import IngestError
    from pipelines.runner import run_curate

    cfg = _load(config, sets)
    try:
        with curate_progress(console) as progress:
            manifest = run_curate(cfg, input, output, progress=progress)
    except IngestError as exc:
        console.print(f"[bold red]curate:[/] {exc}")
        raise typer.Exit(2) from None
    print_curate_summary(out, manifest)


@app.command(context_settings=_ANY_ARGS)
def caption() -> None:
    """Re-caption every kept clip with a video-to-text model."""
    _not_built("caption", "issue 5: the captioning job")


@app.command(context_settings=_ANY_ARGS)
def precompute() -> None:
    """Encode clips to VAE latents and captions to text embeddings (Parquet shards)."""
    _not_built("precompute", "issue 7")


@app.command("train-vae", context_settings=_ANY_ARGS)
def train_vae() -> None:
    """Train the video VAE on a clips table."""
    _not_built("train-vae", "issue 8")


@app.command(context_settings=_ANY_ARGS)
def train() -> None:
    """Train the video DiT from latent shards with Ray Train + DeepSpeed ZeRO."""
    _not_built("train", "issue 8")


@app.command(context_settings=_ANY_ARGS)
def tune() -> None:
    """Search training hyperparameters with Ray Tune."""
    _not_built("tune", "issue 10")


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
def submit() -> None:
    """Run any reelforge job on a remote Ray cluster (Ray Jobs API)."""
    _not_built("submit", "issue 10")


@app.command(context_settings=_ANY_ARGS)
def report() -> None:
    """Write the data-quality HTML report of a curate output."""
    _not_built("report", "issue 4")


@app.command()
def demo(
    output: str = typer.Option("demo-output", "--output", "-o", help="where the demo writes everything"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Offline demo: generate sample videos (known cuts) and curate them."""
    from infra.demo import run_demo
    from infra.summary import curate_progress, print_curate_summary

    cfg = _load(config, sets)
    with curate_progress(console) as progress:
        manifest, videos_dir = run_demo(cfg, output, progress=progress)
    print_curate_summary(out, manifest)
    out.print(f"sample videos: {videos_dir}\ntables: {output}/curate/{{videos,clips,failures}}/  manifest: {output}/curate/manifest.json")


def main() -> None:
    try:
        app()
    except ConfigError as exc:  # a config problem found past load (e.g. in a job)
        console.print(f"[bold red]config error[/]\n{exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
