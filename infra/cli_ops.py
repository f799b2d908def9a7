"""`reelforge` operations commands: submit and `jobs list/logs/stop` (Ray Jobs API), and the offline demo.

Plain functions: infra/cli.py registers them on the app, in the order `--help` lists them.
"""

from __future__ import annotations

from typing import Optional

import typer

from infra.cli_common import SetOpt, _load, console, exits_on, out, print_plain
from infra.config import ConfigError

AddressOpt = typer.Option(None, "--address", help="Ray dashboard URL")


def submit(
    ctx: typer.Context,
    address: Optional[str] = typer.Option(None, "--address", help="Ray dashboard URL (default $RAY_JOBS_ADDRESS or http://127.0.0.1:8265)"),
    wait: bool = typer.Option(False, "--wait", help="stream the job's logs and exit with its status"),
    working_dir: str = typer.Option(".", "--working-dir", help="the project folder to upload (only this is sent)"),
    python: str = typer.Option("python", "--python", help="python executable on the cluster"),
) -> None:
    """Run any reelforge job on a Ray cluster (Ray Jobs API): reelforge submit [--wait] -- curate ..."""
    from infra import submit as sub

    with exits_on("submit", ValueError, ConfigError):
        job_id = sub.submit(list(ctx.args), address=address, working_dir=working_dir, python=python)
    out.print(job_id)
    if wait:
        status = sub.wait(job_id, address, on_logs=lambda text: print_plain(text, end=""))
        console.print(f"job {job_id}: {status}")
        raise typer.Exit(0 if status == "SUCCEEDED" else 1)


def jobs_list(address: Optional[str] = AddressOpt) -> None:
    """List the cluster's jobs."""
    from infra import submit as sub

    for j in sub.list_jobs(address):
        print_plain(f"{j['id']}  {j['status']:<10} {j['entrypoint']}")


def jobs_logs(job_id: str, address: Optional[str] = AddressOpt) -> None:
    """Print a job's logs."""
    from infra import submit as sub

    print_plain(sub.logs(job_id, address), end="")


def jobs_stop(job_id: str, address: Optional[str] = AddressOpt) -> None:
    """Stop a running job."""
    from infra import submit as sub

    out.print("stopped" if sub.stop(job_id, address) else "not running")


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
