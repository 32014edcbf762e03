"""``dmabuf compare SCENARIO``: the same workload under each importer mode and representation.

Runs the scenario once per importer mode (pinned, dynamic, ODP, HMM) and mapping
representation (SgTable, PhysVec, IOVA) — every import switched where its device can do the
mode — and prints one table: bytes pinned in VRAM, invalidations, remaps and faults, the modelled
remap cost, the memory of the mapping representations, modelled throughput
(:mod:`dmabuf.sim.compare`). ``--json`` prints the rows as JSON. Exit status 1 when a run failed
(a checksum or an unexpected fault), 2 for a bad scenario.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from dmabuf.cli.run import wide_console
from dmabuf.errors import DmaBufError
from dmabuf.sim.compare import COMPARE_MODES, compare
from dmabuf.sim.report import fmt_bytes, fmt_rate, fmt_time
from dmabuf.sim.scenario import REPRESENTATIONS, load_demo, load_scenario

__all__ = ["compare_cmd"]


@click.command("compare", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--mode", "modes", multiple=True, type=click.Choice(COMPARE_MODES),
              help="Only these importer modes (repeatable; default all).")
@click.option("--repr", "reprs", multiple=True, type=click.Choice(tuple(REPRESENTATIONS)),
              help="Only these representations (repeatable; default all).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Override the seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def compare_cmd(scenario: Path, modes: tuple[str, ...], reprs: tuple[str, ...],
                seed: int | None, as_json: bool) -> None:
    """Run SCENARIO under each importer mode and mapping representation; one table.

    SCENARIO may be the word 'demo' for the embedded demo scenario.
    """
    try:
        s = load_demo() if str(scenario) == "demo" else load_scenario(scenario)
    except DmaBufError as e:
        click.echo(f"error: {e.strerror or e}", err=True)
        sys.exit(2)
    console = wide_console(stderr=as_json, width=170)
    with console.status("comparing…") as status:
        def progress(mode: str, rep: str) -> None:
            status.update(f"running {s.name} with importers in mode {mode}, repr {rep}…")
        try:
            rows = compare(s, modes=modes or COMPARE_MODES, reprs=reprs or tuple(REPRESENTATIONS),
                           progress=progress, seed=seed)
        except DmaBufError as e:
            raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=1))
    else:
        t = Table(title=f"{s.name}: importer modes × mapping representations (modelled)",
                  title_justify="left")
        for col in ("mode", "repr", "held", "imports", "pinned in VRAM", "invalidations",
                    "remaps/faults", "remap cost", "mapping memory", "throughput", "status"):
            t.add_column(col, overflow="fold")
        for r in rows:
            style = {"ok": "green", "failed": "bold red", "missing": "yellow"}.get(r.status,
                                                                                   "dim")
            t.add_row(r.mode, r.repr, f"{r.repr_held}/{r.repr_mapped}", str(r.imports_switched),
                      fmt_bytes(r.pinned_vram_bytes),
                      str(r.invalidations), f"{r.remaps}/{r.faults}", fmt_time(r.remap_cost),
                      fmt_bytes(r.mapping_bytes), fmt_rate(r.throughput),
                      Text(r.status + (f": {r.detail}" if r.detail else ""), style=style))
        console.print(t)
    sys.exit(1 if any(r.status == "failed" for r in rows) else 0)
