"""`reelforge`: the single command line. Each subcommand loads the config and calls one library function.

The subcommands live in cli_data (curate, dedup, balance ... demo-data, config show), cli_train (train-vae ... eval,
train-captioner) and cli_ops (submit, jobs, demo); they are registered below, in the order `--help`
lists them (the order of the flow), and share cli_common (consoles, options, config loading, errors).
"""

from __future__ import annotations

import logging
import sys
from importlib import metadata

import typer

from infra import cli_data, cli_ops, cli_train
from infra.cli_common import console, out
from infra.config import ConfigError
from training.models.hub import ModelUnavailable, RandomWeightsRefused

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ReelForge: raw video -> curated clips -> captions -> latents -> a trained video DiT, on Ray.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the resolved config.")
jobs_app = typer.Typer(no_args_is_help=True, help="List, follow and stop submitted jobs.")
# Jobs not built yet accept any flags so users get the honest "not built" message, not a usage error.
_ANY_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output (Ray Data bars, training "
                               "step lines, Tune's trial table); summaries and errors still print"),
) -> None:
    from infra.progress import set_quiet

    if quiet:  # REELFORGE_QUIET=1 in the environment does the same
        set_quiet(True)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


app.command()(cli_data.curate)
app.command()(cli_data.dedup)
app.command()(cli_data.balance)
app.command()(cli_data.caption)
app.command()(cli_data.precompute)
app.command("train-vae")(cli_train.train_vae)
app.command()(cli_train.train)
app.command()(cli_train.tune)
app.command()(cli_train.sample)
app.command(context_settings=_ANY_ARGS)(cli_ops.submit)  # everything after the flags is the job to run
app.command()(cli_data.report)
app.command()(cli_ops.demo)
app.command("demo-data")(cli_data.demo_data)
app.command("eval")(cli_train.eval_cmd)
app.command("train-captioner")(cli_train.train_captioner)
config_app.command("show")(cli_data.config_show)
app.add_typer(config_app, name="config")
jobs_app.command("list")(cli_ops.jobs_list)
jobs_app.command("logs")(cli_ops.jobs_logs)
jobs_app.command("stop")(cli_ops.jobs_stop)
app.add_typer(jobs_app, name="jobs")


def main() -> None:
    try:
        app()
    except ConfigError as exc:  # a config problem found past load (e.g. in a job)
        console.print(f"[bold red]config error[/]\n{exc}")
        sys.exit(2)
    except PermissionError as exc:  # storage.StorageAccessDenied: S3 refused the credentials
        console.print(f"[bold red]access denied[/]\n{exc}")
        sys.exit(2)
    except (ModelUnavailable, RandomWeightsRefused) as exc:  # found at a job's start, before any work
        console.print("[bold red]model error[/]")
        console.print(str(exc), markup=False, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
