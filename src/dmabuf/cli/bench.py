"""``dmabuf bench``: run the benchmarks in ``benchmarks/`` and print each figure as a ratio."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from dmabuf import bench as _bench


@click.command("bench")
@click.option("--quick", is_flag=True, help="Small sizes: the whole set in seconds.")
@click.option("-k", "select", default="", help="Only benchmarks whose name contains this.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Benchmarks directory (default: the clone's benchmarks/).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write all results as JSON to this file.")
@click.option("--list", "list_only", is_flag=True, help="List the benchmarks and their claims.")
def bench_cmd(quick: bool, select: str, directory: Path | None, json_out: Path | None,
              list_only: bool) -> None:
    """Run the benchmarks; each prints a ratio against a baseline measured in the same run."""
    try:
        reg = _bench.discover(directory)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    names = [n for n in sorted(reg) if select in n]
    if not names:
        raise click.ClickException(f"no benchmark matches {select!r}; try `dmabuf bench --list`")
    console = Console()
    if list_only:
        for n in names:
            console.print(f"[bold]{n}[/bold]  {reg[n][1]}")
        return
    table = Table(title="pydmabuf benchmarks" + (" (quick)" if quick else ""))
    for col in ("benchmark", "figure", "baseline", "ratio", "target", "met"):
        table.add_column(col)
    results: list[_bench.BenchResult] = []
    with console.status("running benchmarks…") as status:
        for n in names:
            status.update(f"running {n}…")
            out = reg[n][0](quick)
            for r in out if isinstance(out, list) else [out]:
                results.append(r)
                met = {None: "", True: "[green]yes[/green]", False: "[red]no[/red]"}[r.met]
                table.add_row(r.name, f"{r.figure:.4g} {r.unit}",
                              f"{r.baseline:.4g} {r.unit} ({r.baseline_name})",
                              f"{r.ratio:.3g}×", r.target_text, met)
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps([r.as_dict() for r in results], indent=2))
        console.print(f"wrote {json_out}")
    sys.stdout.flush()
