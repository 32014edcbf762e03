"""``dmabuf demo``: the main job — the embedded reference scenario, run, verified and reported.

Runs ``dmabuf/data/demo.toml`` (also in ``examples/demo.toml``): the reference fabric of spec
kernel-p2p-dma.md §6.2 with GPU0 -> NIC0 P2P through the switch, NIC0 -> NIC1 RDMA into GPU1
across root ports, VRAM pressure evicting buffers under dynamic and ODP importers, a pinned
accelerator export, a VFIO reset revoking an import, NVMe CMB P2P, an SVM buffer in GPU1's
DEVICE_PRIVATE VRAM mirrored through HMM by an ODP MR (migrated to host memory on the NIC's
faults, invalidated by GPU1's prefetch back) — and the same pair on a host that is not on the
P2PDMA allow-list, falling back to staging in host memory. The options are
those of ``dmabuf run``. A driver the demo needs that this installation lacks is reported as
*missing* (the rest runs); the exit status is 1 only for a failed checksum or an unexpected
error or fault.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dmabuf.cli.run import execute, output_options
from dmabuf.errors import DmaBufError
from dmabuf.sim.scenario import load_demo

__all__ = ["demo_cmd"]


@click.command("demo", context_settings={"help_option_names": ["-h", "--help"]})
@output_options
@click.option("--show", is_flag=True, help="Print the demo scenario (TOML) and exit.")
def demo_cmd(seed: int | None, json_out: Path | None, plot: Path | None, dot: Path | None,
             quiet: bool, flows: bool, allow_missing: bool, show: bool) -> None:
    """Run the embedded demo: the reference fabric, real bytes, modelled time, a report."""
    if show:
        from importlib import resources

        click.echo(resources.files("dmabuf").joinpath("data", "demo.toml")
                   .read_text(encoding="utf-8"))
        return
    try:
        s = load_demo()
    except DmaBufError as e:   # a packaging bug: the embedded file must validate
        click.echo(f"error: the embedded demo scenario is invalid: {e}", err=True)
        sys.exit(2)
    # The demo always runs what it can: a missing driver is reported, not fatal.
    del allow_missing
    sys.exit(execute(s, seed=seed, json_out=json_out, plot=plot, dot=dot, quiet=quiet,
                     flows=flows, allow_missing=True))
