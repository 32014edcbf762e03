"""``dmabuf topo``: show the PCI fabric, the P2P matrix, and explain one P2P decision.

Sub-commands (each takes ``--topology FILE`` — a TOML topology, or the word ``default`` for the
embedded reference fabric — or ``--sysfs-root DIR``; with neither, the running machine's ``/``):

* ``show`` — the tree, like ``lspci -tv``, annotated with link, ACS, NUMA node, IOMMU group and
  p2pmem.
* ``matrix [DEVICE…]`` — every endpoint pair, ``nvidia-smi topo -m`` style: map type + distance.
* ``explain PROVIDER CLIENT`` — the kernel's ``calc_map_type_and_dist()`` step by step, the log
  lines it would print, and what to change.

``--json`` prints machine-readable output; ``--dot FILE`` writes Graphviz text (for ``explain``,
with the P2P path highlighted).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from dmabuf.errors import DmaBufError
from dmabuf.pci import (
    PciDev,
    PciP2pdmaMapType,
    Topology,
    default_topology,
    load_sysfs,
    load_toml,
)
from dmabuf.pci.pci_regs import acs_names

__all__ = ["topo_cmd"]

F = TypeVar("F", bound=Callable[..., Any])

_CODE = {PciP2pdmaMapType.BUS_ADDR: ("B", "green"),
         PciP2pdmaMapType.THRU_HOST_BRIDGE: ("H", "yellow"),
         PciP2pdmaMapType.NOT_SUPPORTED: ("N", "red")}

LEGEND = [
    ("X", "self (same function, distance 0)"),
    ("B<n>", "BUS_ADDR: routed by switches below the host bridge, n hops; the client uses PCI "
             "bus addresses and bypasses the IOMMU"),
    ("H<n>", "THRU_HOST_BRIDGE: through the root complex (AMD Zen or allow-listed host bridge),"
             " n hops; a normal IOMMU/dma-direct mapping"),
    ("N<n>", "NOT_SUPPORTED: the kernel refuses (pci_p2pdma_distance = -1, mapping fails with "
             "EREMOTEIO); n is the hop count it computed"),
]


def _source_options(fn: F) -> F:
    fn = click.option("--dot", "dot", type=click.Path(dir_okay=False, path_type=Path),
                      default=None, help="Also write Graphviz (DOT) text to this file.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(fn)
    fn = click.option("--sysfs-root", "sysfs_root", type=click.Path(file_okay=False),
                      default=None, help="Read a sysfs tree laid out like / (default: /).")(fn)
    fn = click.option("--topology", "topology", default=None, metavar="FILE",
                      help="A TOML topology file, or 'default' for the embedded reference "
                           "fabric.")(fn)
    return fn


def _load(topology: str | None, sysfs_root: str | None) -> Topology:
    if topology is not None and sysfs_root is not None:
        raise click.UsageError("give --topology or --sysfs-root, not both")
    try:
        if topology == "default":
            return default_topology()
        if topology is not None:
            return load_toml(topology)
        return load_sysfs(sysfs_root or "/")
    except DmaBufError as e:
        raise click.ClickException(str(e)) from None


def _resolve(topo: Topology, ref: str) -> PciDev:
    try:
        return topo.device(ref)
    except DmaBufError as e:
        raise click.ClickException(str(e)) from None


def _short_id(d: PciDev) -> str:
    return f"{d.vendor:04x}:{d.device:04x}"


def _dev_line(d: PciDev) -> Text:
    t = Text()
    t.append(d.bdf, style="bold")
    if d.name:
        t.append(f" {d.name}", style="cyan")
    t.append(f" [{_short_id(d)}] {d.kind()}")
    if d.driver:
        t.append(f" ({d.driver})", style="dim")
    if d.link.text():
        t.append(f"  {d.link.text()}", style="magenta")
    if d.acs is not None:
        ctrl = " ".join(acs_names(d.acs.ctrl)) or "-"
        t.append(f"  ACS[{ctrl}]", style="red" if d.acs.redirects else "green")
    if d.numa_node is not None:
        t.append(f"  NUMA {d.numa_node}")
    if d.iommu_group is not None:
        t.append(f"  grp {d.iommu_group}", style="dim")
    if d.p2pdma is not None:
        info = d.p2pdma.describe()
        if info["size"]:
            t.append(f"  p2pmem {info['size'] >> 20} MiB"
                     f"{' published' if info['published'] else ''}", style="yellow")
        else:
            t.append("  p2pdma provider", style="yellow")
    return t


def _show_tree(topo: Topology) -> Tree:
    cpu = topo.cpu
    rule = ("AMD Zen: host-bridge P2P allowed" if cpu.supports_p2pdma else
            "host-bridge P2P only via the allow-list")
    root = Tree(Text.assemble((topo.source, "bold"), f"  CPU {cpu.vendor_id or '?'} family "
                              f"{cpu.family:#x} ({rule})"))

    def add(node: Tree, dev: PciDev) -> None:
        sub = node.add(_dev_line(dev))
        for c in dev.children:
            add(sub, c)

    for hb in topo.host_bridges:
        r = hb.root_dev()
        from dmabuf.pci.p2pdma import _whitelist_entry

        wl = _whitelist_entry(r) if r is not None else None
        txt = Text.assemble((hb.name, "bold blue"), f" {hb.label or ''}".rstrip(),
                            f"  root {r.bdf} [{_short_id(r)}]" if r else "  no root device",
                            (f"  allow-listed ({wl.comment})" if wl else "  not allow-listed",
                             "green" if wl else "dim"),
                            f"  NUMA {hb.numa_node}" if hb.numa_node is not None else "")
        node = root.add(txt)
        for d in hb.devices:
            add(node, d)
    return root


def _dot(topo: Topology, path: list[str] | None = None, title: str = "") -> str:
    on_path = set(path or [])
    edges_on = set(zip(path or [], (path or [])[1:]))
    edges_on |= {(b, a) for a, b in edges_on}
    lines = ["digraph pci {", '  rankdir=TB;', '  node [shape=box, fontname="monospace"];']
    if title:
        lines.append(f'  label="{title}"; labelloc=t;')

    def esc(s: str) -> str:
        return s.replace('"', '\\"')

    for hb in topo.host_bridges:
        style = ', color=red, penwidth=3' if hb.name in on_path else ""
        lines.append(f'  "{hb.name}" [shape=ellipse, label="{esc(hb.name)}\\n'
                     f'{esc(hb.label or "host bridge")}"{style}];')
    for d in topo.devices:
        label = f"{d.bdf}\\n{esc(d.name or '')} {d.kind()}".rstrip()
        if d.acs is not None:
            label += f"\\nACS ctrl {' '.join(acs_names(d.acs.ctrl)) or '-'}"
        style = ', color=red, penwidth=3' if d.bdf in on_path else ""
        lines.append(f'  "{d.bdf}" [label="{label}"{style}];')
    for d in topo.devices:
        up = d.parent.bdf if d.parent is not None else (d.host_bridge.name if d.host_bridge
                                                        else None)
        if up is None:
            continue
        style = ' [color=red, penwidth=3]' if (up, d.bdf) in edges_on else ""
        lines.append(f'  "{up}" -> "{d.bdf}"{style};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _write_dot(dot: Path | None, text: str, console: Console, as_json: bool) -> None:
    if dot is None:
        return
    dot.write_text(text)
    if not as_json:
        console.print(f"wrote {dot}")


@click.group("topo", context_settings={"help_option_names": ["-h", "--help"]})
def topo_cmd() -> None:
    """PCI fabric: show the tree, the P2P matrix, explain one P2P decision."""


@topo_cmd.command("show")
@_source_options
def show_cmd(topology: str | None, sysfs_root: str | None, as_json: bool,
             dot: Path | None) -> None:
    """The PCI tree (like lspci -tv) with link, ACS, NUMA, IOMMU group and p2pmem."""
    topo = _load(topology, sysfs_root)
    console = Console()
    if as_json:
        click.echo(json.dumps(topo.describe(), indent=2))
    else:
        console.print(_show_tree(topo))
        for n in topo.notes:
            console.print(f"[dim]note: {n}[/dim]")
    _write_dot(dot, _dot(topo, title=topo.source), console, as_json)


@topo_cmd.command("matrix")
@click.argument("devices", nargs=-1)
@_source_options
def matrix_cmd(devices: tuple[str, ...], topology: str | None, sysfs_root: str | None,
               as_json: bool, dot: Path | None) -> None:
    """Map type and distance of every endpoint pair (rows provide, columns DMA).

    DEVICES restricts the matrix to these functions (names or BDFs); default: every endpoint.
    """
    topo = _load(topology, sysfs_root)
    devs = [_resolve(topo, d) for d in devices] if devices else topo.endpoints()
    m = topo.matrix(devs)
    console = Console()
    if as_json:
        out = m.as_dict()
        out["legend"] = dict(LEGEND)
        out["source"] = topo.source
        click.echo(json.dumps(out, indent=2))
    else:
        n = len(devs)
        if n == 0:
            console.print("no endpoints in this topology")
        elif n > 32:
            console.print(f"{n} endpoints: {n * (n - 1)} ordered pairs: {m.counts()}; use "
                          "--json for the full matrix or name the devices to compare")
        else:
            table = Table(title=f"P2P matrix — {topo.source}", show_lines=False)
            table.add_column("prov \\ client", style="bold")
            for d in devs:
                table.add_column(d.name or d.bdf[5:], justify="center")
            for i, a in enumerate(devs):
                row = []
                for j in range(n):
                    if i == j:
                        row.append(Text("X", style="dim"))
                        continue
                    t = PciP2pdmaMapType(int(m.map_type[i, j]))
                    code, style = _CODE[t]
                    row.append(Text(f"{code}{int(m.distance[i, j])}", style=style))
                table.add_row(a.name or a.bdf, *row)
            console.print(table)
            console.print("Legend:")
            for k, v in LEGEND:
                console.print(f"  [bold]{k:5}[/bold] {v}")
    _write_dot(dot, _dot(topo, title=f"P2P matrix {topo.source}"), console, as_json)


@topo_cmd.command("explain")
@click.argument("provider")
@click.argument("client")
@_source_options
def explain_cmd(provider: str, client: str, topology: str | None, sysfs_root: str | None,
                as_json: bool, dot: Path | None) -> None:
    """Why PROVIDER's memory is (not) reachable by CLIENT, step by step.

    PROVIDER exposes the memory (its BAR is the DMA target); CLIENT does the DMA. Both are
    names from the topology file or PCI addresses (0000:03:00.0).
    """
    topo = _load(topology, sysfs_root)
    p, c = _resolve(topo, provider), _resolve(topo, client)
    ex = topo.explain(p, c)
    console = Console()
    if as_json:
        click.echo(json.dumps(ex.as_dict(), indent=2))
    else:
        _code, style = _CODE[ex.map_type]
        console.print(Text.assemble("P2P ", (p.label, "bold"), " → ", (c.label, "bold"), ": ",
                                    (ex.map_type.name, f"bold {style}"),
                                    f", distance {ex.distance}"
                                    f" (pci_p2pdma_distance = {ex.p2pdma_distance})"))
        console.print("path: " + " → ".join(ex.path))
        console.print("[bold]Why[/bold]")
        for i, r in enumerate(ex.reasons, 1):
            console.print(f"  {i}. {r}")
        if ex.kernel_log:
            console.print("[bold]Kernel log[/bold] (first decision, verbose)")
            for line in ex.kernel_log:
                console.print(f"  {line}", markup=False)
        if ex.remedies:
            console.print("[bold]What to do[/bold]")
            for r in ex.remedies:
                console.print(f"  - {r}", markup=False)
    title = f"{p.label} -> {c.label}: {ex.map_type.name}, distance {ex.distance}"
    _write_dot(dot, _dot(topo, ex.path, title), console, as_json)
    sys.stdout.flush()
