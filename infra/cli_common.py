"""What the `reelforge` subcommands share: the consoles, the --config/--set options, config loading and
the way a job's known errors end the command (a one-line message and exit code 2, never a traceback)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NoReturn, Optional

import typer
from rich.console import Console

from infra.config import ConfigError, ReelForgeConfig, load_config

console = Console(stderr=True)
out = Console(soft_wrap=True)  # never break paths and ids across lines

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (see configs/)")
SetOpt = typer.Option([], "--set", help="override: section.key=value (repeatable)")


def _load(config: Optional[str], sets: list[str]) -> ReelForgeConfig:
    try:
        return load_config(config, sets)
    except ConfigError as exc:
        console.print(f"[bold red]config error[/]\n{exc}")
        raise typer.Exit(2) from None


def fail(job: str, message: str) -> NoReturn:
    """End `job` on a usage problem: "JOB: message" on stderr, exit code 2."""
    console.print(f"[bold red]{job}:[/] {message}")
    raise typer.Exit(2)


@contextmanager
def exits_on(job: str, *errors: type[Exception]) -> Iterator[None]:
    """Inside the block, the job's known input errors end `job` as `fail` does, without a traceback."""
    try:
        yield
    except errors as exc:
        console.print(f"[bold red]{job}:[/] {exc}")
        raise typer.Exit(2) from None


def print_plain(text: str, end: str = "\n") -> None:
    """Print text as it is (YAML, JSON, logs, entrypoints): no rich markup or highlighting."""
    out.print(text, end=end, markup=False, highlight=False)
