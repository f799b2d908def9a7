"""`reelforge` data commands: curate, dedup, balance, caption, precompute, report, demo-data and `config show`.

Plain functions: infra/cli.py registers them on the app, in the order `--help` lists them.
"""

from __future__ import annotations

from typing import Optional

import typer

from infra.cli_common import ConfigOpt, SetOpt, _load, console, exits_on, fail, out, print_plain
from infra.runtime import SharedStorageError


def config_show(config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Print the resolved config (file + overrides + defaults) as YAML."""
    print_plain(_load(config, sets).to_yaml(), end="")


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
    from pipelines.measures.safety import SafetyModelMissing
    from pipelines.refilter import load_output_config, run_refilter
    from pipelines.runner import run_curate

    if refilter:
        with exits_on("curate --refilter", FileNotFoundError):
            res = run_refilter(load_output_config(output, config, sets), output)
        out.print(f"refilter: {res['clips']} clips, {res['kept']} kept, dropped {res['dropped_by_reason']}; "
                  f"{res['parts_rewritten']} part files rewritten in {res['wall_s']} s")
        return
    if not input:
        fail("curate", "--input is required (or --refilter)")
    cfg = _load(config, sets)
    with exits_on("curate", IngestError, SharedStorageError, SafetyModelMissing), curate_progress(console) as progress:
        manifest = run_curate(cfg, input, output, progress=progress)
    print_curate_summary(out, manifest)
    if cfg.curate.report:
        out.print(f"report: {output.rstrip('/')}/report/index.html")


InputsOpt = typer.Option(..., "--input", "-i", help="a curate output root (repeatable); local or s3://")


def _dataset_job(job: str, run, summary, inputs: list[str], output: str, config: Optional[str], sets: list[str]) -> None:
    """Load the config, run a dataset-scale job over curate outputs, print its summary and report."""
    from pipelines.dedup_job import DedupInputError

    cfg = _load(config, sets)
    with exits_on(job, DedupInputError, FileNotFoundError):
        manifest = run(cfg, inputs, output)
    summary(out, manifest)
    out.print(f"report: {output.rstrip('/')}/report/index.html")


def dedup(
    inputs: list[str] = InputsOpt,
    output: str = typer.Option(..., "--output", "-o", help="dedup root: duplicates/ table, index/, report/"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Near-duplicate clips across curate outputs (dedup.kinds: perceptual, semantic) into OUTPUT/duplicates;
    a later run into the same OUTPUT checks only new outputs against its index."""
    from infra.summary import print_dedup_summary
    from pipelines.dedup_job import run_dedup

    _dataset_job("dedup", run_dedup, print_dedup_summary, inputs, output, config, sets)


def balance(
    inputs: list[str] = InputsOpt,
    output: str = typer.Option(..., "--output", "-o", help="balance root: weights/ table, report/"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Concept balancing: k-means over clip embeddings -> per-clip sample_weight and keep_prob in OUTPUT/weights."""
    from infra.summary import print_balance_summary
    from pipelines.balance import run_balance

    _dataset_job("balance", run_balance, print_balance_summary, inputs, output, config, sets)


def caption(
    clips: str = typer.Option(..., "--clips", help="a curate output root (reads its clips/ table); local or s3://"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="output root (default: CLIPS/captioned)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="captioner: hub name, local dir or s3:// dir (default: caption.model)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Re-caption every kept clip with a video-to-text model into a new version of the clips table."""
    from captioning.models import CaptionerNotAvailable
    from captioning.runner import CaptionInputError, run_caption
    from infra.summary import caption_progress, print_caption_summary

    cfg = _load(config, sets)
    with exits_on("caption", CaptionInputError, CaptionerNotAvailable, SharedStorageError), caption_progress(console) as progress:
        manifest = run_caption(cfg, clips, output, model=model, progress=progress)
    print_caption_summary(out, manifest)


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
    with exits_on("precompute", PrecomputeError, SharedStorageError), curate_progress(console, "precompute") as progress:
        manifest = run_precompute(cfg, clips, output, progress=progress)
    print_precompute_summary(out, manifest)


def report(
    output: str = typer.Argument(..., help="a curate output root (local path or s3://bucket/prefix)"),
    config: Optional[str] = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Write the HTML report of a curate, dedup or balance output into OUTPUT/report/."""
    import json

    from infra import storage
    from pipelines.refilter import load_output_config
    from pipelines.report import write_report
    from pipelines.report_dataset import write_balance_report, write_dedup_report

    cfg = load_output_config(output, config, sets)
    uri = storage.join(output, "manifest.json")
    job = json.loads(storage.read_text(uri)).get("job") if storage.exists(uri) else "curate"
    if job in ("dedup", "balance"):
        writer = write_dedup_report if job == "dedup" else write_balance_report
        out.print(f"report: {writer(output, json.loads(storage.read_text(uri)))}")
        return
    out.print(f"report: {write_report(output, cfg)}")


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
