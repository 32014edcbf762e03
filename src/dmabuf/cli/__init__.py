"""The ``dmabuf`` command: demo, run, compare, topo, doctor, bench.

Each sub-command lives in its own module of this package and is registered here. Human output by
default (rich tables, trees, progress bars); ``--json`` for machines.
"""

from __future__ import annotations

import click

from dmabuf.cli.bench import bench_cmd
from dmabuf.cli.compare import compare_cmd
from dmabuf.cli.demo import demo_cmd
from dmabuf.cli.doctor import doctor_cmd
from dmabuf.cli.run import run_cmd
from dmabuf.cli.topo import topo_cmd

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pydmabuf")
def main() -> None:
    """pydmabuf: Linux DMA-BUF, P2PDMA and the DMA API, modelled with real memory."""


main.add_command(bench_cmd)
main.add_command(doctor_cmd)
main.add_command(topo_cmd)
main.add_command(demo_cmd)
main.add_command(run_cmd)
main.add_command(compare_cmd)
