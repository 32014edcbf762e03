"""``dmabuf run SCENARIO``: run a scenario file and report what happened, verified and measured.

The scenario (``docs/scenarios.md``) is validated completely first — a mistake is reported as
``file:line: what is wrong`` and nothing runs. Then every host runs under the controlled
scheduler (modelled time is its virtual clock; the seed replays the run exactly) with real bytes
moving through every mapping, a progress bar while it runs, and the report at the end:
attachments (map type, distance, path), streams (bytes moved and verified, CRC-32, modelled
throughput), events, the busiest links.

Options: ``--seed N`` overrides the scenario's seed; ``--json FILE`` writes the full report
(schema ``dmabuf/data/report-schema.json``; ``-`` prints it instead of the tables);
``--plot FILE.png`` draws the timeline and link utilisation (needs the ``plot`` extra:
matplotlib); ``--dot FILE`` writes the fabric with its flows as Graphviz; ``--allow-missing``
runs what can run when a driver the scenario names is not available (its elements are reported
as missing).

Exit status: 0 when every byte verified and nothing unexpected happened; 1 when a checksum
failed or an unexpected error or DMA fault happened (the report says which); 2 for a bad
scenario or bad options.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from dmabuf.errors import DmaBufError
from dmabuf.sim.scenario import Scenario, load_scenario

__all__ = ["execute", "output_options", "run_cmd", "wide_console"]


def wide_console(*, stderr: bool = False, width: int = 140) -> Console:
    """A rich console; when output is piped or captured (not a terminal, no ``COLUMNS``),
    ``width`` columns instead of rich's 80, so the report tables do not wrap."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=width)
    return console


def output_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``run`` and ``demo`` share."""
    fn = click.option("--allow-missing", is_flag=True,
                      help="Run what can run when a driver the scenario needs is missing.")(fn)
    fn = click.option("--flows", is_flag=True, help="Also list every transfer's interval.")(fn)
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress bar or tables; just the "
                      "verdict line.")(fn)
    fn = click.option("--dot", "dot", type=click.Path(dir_okay=False, path_type=Path),
                      default=None, help="Write the fabric with its flows as Graphviz DOT.")(fn)
    fn = click.option("--plot", "plot", type=click.Path(dir_okay=False, path_type=Path),
                      default=None, help="Draw the timeline and link utilisation (PNG; needs "
                      "matplotlib).")(fn)
    fn = click.option("--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True,
                                                            path_type=Path),
                      default=None, help="Write the full report as JSON ('-': stdout).")(fn)
    fn = click.option("--seed", type=click.IntRange(min=0), default=None,
                      help="Override the scenario's seed.")(fn)
    return fn


def execute(scenario: Scenario, *, seed: int | None, json_out: Path | None, plot: Path | None,
            dot: Path | None, quiet: bool, flows: bool, allow_missing: bool,
            console: Console | None = None) -> int:
    """Run ``scenario`` with a progress bar, print the report, write the outputs.

    Returns: the exit status (0 ok, 1 failures).
    Raises: click.ClickException for output problems (matplotlib missing, unwritable file).
    """
    from dmabuf.sim.report import render, to_json
    from dmabuf.sim.runner import run_scenario

    to_stdout = json_out is not None and str(json_out) == "-"
    if console is None:
        console = wide_console(stderr=to_stdout)
    if plot is not None:
        from dmabuf.sim.plot import PlotUnavailable, _mpl

        try:
            _mpl()
        except PlotUnavailable as e:
            raise click.ClickException(str(e)) from None
    total = scenario.total_bytes
    try:
        if quiet or to_stdout:
            report = run_scenario(scenario, seed=seed, allow_missing=allow_missing)
        else:
            with Progress(TextColumn("[bold blue]{task.description}"), BarColumn(),
                          DownloadColumn(binary_units=True), TextColumn("{task.fields[host]}"),
                          TimeElapsedColumn(), console=console, transient=False) as prog:
                task = prog.add_task(f"{scenario.name}: moving and verifying bytes",
                                     total=max(total, 1), host="")
                done: dict[str, int] = {}

                def progress(host: str, d: int, _t: int) -> None:
                    done[host] = d
                    prog.update(task, completed=sum(done.values()), host=f"host {host}")

                report = run_scenario(scenario, seed=seed, progress=progress,
                                      allow_missing=allow_missing)
                prog.update(task, completed=sum(done.values()), host="done")
    except DmaBufError as e:
        raise click.ClickException(str(e)) from None
    if to_stdout:
        sys.stdout.write(to_json(report) + "\n")
    elif not quiet:
        render(report, console, flows=flows)
    else:
        console.print(("OK" if report["ok"] else "FAILED") +
                      f": {report['bytes_verified']} bytes verified, "
                      f"{len(report['failures'])} failure(s), {len(report['missing'])} missing")
    try:
        if json_out is not None and not to_stdout:
            json_out.write_text(to_json(report) + "\n", encoding="utf-8")
            console.print(f"wrote {json_out}")
        if plot is not None:
            from dmabuf.sim.plot import plot_report

            plot_report(report, plot)
            console.print(f"wrote {plot}")
        if dot is not None:
            from dmabuf.sim.plot import fabric_dot

            dot.write_text(fabric_dot(report), encoding="utf-8")
            console.print(f"wrote {dot}")
    except OSError as e:
        raise click.ClickException(f"cannot write output: {e}") from None
    return 0 if report["ok"] else 1


@click.command("run", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@output_options
def run_cmd(scenario: Path, seed: int | None, json_out: Path | None, plot: Path | None,
            dot: Path | None, quiet: bool, flows: bool, allow_missing: bool) -> None:
    """Run a scenario file (docs/scenarios.md) and report what happened.

    Exit status 0 when every byte verified, 1 when a checksum failed or an unexpected error or
    DMA fault happened, 2 for a bad scenario.
    """
    try:
        s = load_scenario(scenario)
    except DmaBufError as e:
        click.echo(f"error: {e.strerror or e}", err=True)
        sys.exit(2)
    sys.exit(execute(s, seed=seed, json_out=json_out, plot=plot, dot=dot, quiet=quiet,
                     flows=flows, allow_missing=allow_missing))
