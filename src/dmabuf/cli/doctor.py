"""``dmabuf doctor``: why is dma-buf / P2P (not) used on this machine?

Reads the running machine (``/``) or a captured root (``--sysfs-root DIR``, laid out like ``/``
as ``dmabuf topo`` reads it) and reports kernel version and config, device nodes and their
permissions, loaded modules, the kernel command line, the IOMMU state and groups, the PCI topology
with ACS, and the kernel's exact P2P decisions for the GPUs, NICs, NVMe and accelerators — each
finding with a severity (ok / info / warn / error), the reason and the remedy.

``--json`` prints the documented structure (``docs/doctor.md``, schema ``pydmabuf.doctor/1``).
``--capture DIR`` writes a root from the running machine (side-effect-free files only) to attach
to a bug report; ``dmabuf doctor --sysfs-root DIR`` and ``dmabuf topo show --sysfs-root DIR`` read
it back.

Exit status: 0 whatever the machine lacks (the doctor reports, it does not judge); 1 for the
doctor's own errors (a missing root, a root without ``sys/``, a capture directory that is not
empty); 2 for usage errors.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from dmabuf.doctor import DoctorReport, Finding, Severity, capture_root, diagnose
from dmabuf.errors import DmaBufError
from dmabuf.pci import PciDev, PciP2pdmaMapType, Topology
from dmabuf.pci.pci_regs import acs_names

__all__ = ["doctor_cmd"]

_STYLE = {Severity.OK: "green", Severity.INFO: "cyan", Severity.WARN: "yellow",
          Severity.ERROR: "bold red"}
_CODE = {PciP2pdmaMapType.BUS_ADDR: ("B", "green"),
         PciP2pdmaMapType.THRU_HOST_BRIDGE: ("H", "yellow"),
         PciP2pdmaMapType.NOT_SUPPORTED: ("N", "red")}
_TITLES = {"kernel": "Kernel", "config": "Kernel configuration", "devices": "Device nodes",
           "modules": "Modules", "cmdline": "Kernel command line", "iommu": "IOMMU",
           "pci": "PCI topology", "p2p": "Peer-to-peer DMA"}


def _badge(sev: Severity) -> Text:
    return Text(f"{sev.value:>5}", style=_STYLE[sev])


def _finding_lines(f: Finding, verbose: bool) -> list[Text]:
    lines = [Text.assemble(_badge(f.severity), "  ", (f.title, "bold" if f.severity.rank >= 2
                                                          else ""))]
    if verbose or f.severity.rank >= 2 or f.section == "p2p":
        lines.append(Text(f"       {f.reason}", style="dim" if f.severity.rank < 2 else ""))
    if f.remedy and (verbose or f.severity.rank >= 2):
        for i, r in enumerate(f.remedy.splitlines()):
            lines.append(Text.assemble(("       → " if i == 0 else "         ", "bold"),
                                       (r, "")))
    return lines


def _config_table(r: DoctorReport, verbose: bool) -> Table:
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("", no_wrap=True)
    t.add_column("option", no_wrap=True)
    t.add_column("value", no_wrap=True)
    t.add_column("what")
    for f in r.by_section("config"):
        if f.id == "config.source":
            continue
        t.add_row(_badge(f.severity), f.evidence["option"], f.evidence["value"],
                  Text(f.evidence.get("what", ""), style="bold" if f.severity.rank >= 2
                       else ""))
    return t


def _devnode_lines(r: DoctorReport, verbose: bool) -> list[Text]:
    out: list[Text] = []
    expected: list[str] = []
    for f in r.by_section("devices"):
        if not verbose and f.severity == Severity.INFO and f.title.endswith(
                ("absent (as expected)", ": absent")) and f.id != "devnode.source":
            expected.append(f.title.split(":")[0])
            continue
        out += _finding_lines(f, verbose)
    if expected:
        out.append(Text.assemble(_badge(Severity.INFO), "  absent, as the kernel config or "
                                 "the hardware explains: " + ", ".join(expected)))
    return out


def _dev_line(d: PciDev, roles: dict[str, Any]) -> Text:
    t = Text()
    t.append(d.bdf, style="bold")
    t.append(f" [{d.vendor:04x}:{d.device:04x}] {d.kind()}")
    role = roles.get(d.bdf)
    if role:
        t.append(f" «{role}»", style="cyan")
    if d.driver:
        t.append(f" ({d.driver})", style="dim")
    if d.acs is not None:
        ctrl = " ".join(acs_names(d.acs.ctrl)) or "-"
        t.append(f"  ACS[{ctrl}]", style="red" if d.acs.redirects else "green")
    if d.iommu_group is not None:
        t.append(f"  grp {d.iommu_group}", style="dim")
    if d.numa_node is not None:
        t.append(f"  NUMA {d.numa_node}", style="dim")
    return t


def _pci_tree(topo: Topology, roles: dict[str, Any]) -> Tree:
    root = Tree(Text(topo.source, style="bold"))

    def add(node: Tree, dev: PciDev) -> None:
        sub = node.add(_dev_line(dev, roles))
        for c in dev.children:
            add(sub, c)

    for hb in topo.host_bridges:
        r = hb.root_dev()
        node = root.add(Text.assemble((hb.name, "bold blue"),
                                      f"  root {r.bdf} [{r.vendor:04x}:{r.device:04x}]"
                                      if r else "  no root device"))
        for d in hb.devices:
            add(node, d)
    return root


def _matrix(r: DoctorReport) -> Table | None:
    m = r.matrix
    if m is None:
        return None
    n = len(m.devices)
    hypo = r.sections.get("p2p", {}).get("enabled") is False
    title = "P2P matrix (rows provide, columns DMA)" + (
        " — hypothetical: CONFIG_PCI_P2PDMA is off" if hypo else "")
    t = Table(title=title, show_lines=False)
    t.add_column("provider \\ client", style="bold", no_wrap=True)
    for d in m.devices:
        t.add_column(d.bdf[5:], justify="center", no_wrap=True)
    for i, a in enumerate(m.devices):
        row: list[Text] = []
        for j in range(n):
            if i == j:
                row.append(Text("X", style="dim"))
                continue
            mt = PciP2pdmaMapType(int(m.map_type[i, j]))
            code, style = _CODE[mt]
            row.append(Text(f"{code}{int(m.distance[i, j])}", style=style))
        t.add_row(a.bdf, *row)
    return t


def render(r: DoctorReport, console: Console, verbose: bool = False) -> None:
    """Print the human report of ``r`` on ``console``."""
    k = r.sections.get("kernel", {})
    topo = r.topology
    cpu = (f"CPU {topo.cpu.vendor_id or '?'} family {topo.cpu.family:#x}"
           if topo is not None else "CPU unknown")
    user = r.sections.get("devices", {}).get("user") or {}
    who = (f"checked as uid {user.get('uid')}" if user else "device access not captured")
    head = Text.assemble(("pydmabuf doctor", "bold"), f" — {r.root} ",
                         (f"({'live machine' if r.live else k.get('root_kind', 'capture')})",
                          "dim"),
                         f"\nLinux {k.get('release') or '?'} · {cpu} · {who}")
    console.print(Panel(head, expand=False))
    console.print(Text("Verdict", style="bold underline"))
    for v in r.verdict:
        console.print(Text(f"  • {v}"))
    console.print()
    roles = {d["bdf"]: d["role"] for d in r.sections.get("p2p", {}).get("devices", [])}
    for sec, title in _TITLES.items():
        fs = r.by_section(sec)
        if not fs:
            continue
        console.print(Text(title, style="bold underline"))
        if sec == "config":
            src = r.finding("config.source")
            for line in _finding_lines(src, verbose):
                console.print(line)
            console.print(_config_table(r, verbose))
            for f in fs:
                if f.id != "config.source" and (verbose or f.severity.rank >= 2):
                    for line in _finding_lines(f, True):
                        console.print(line)
        elif sec == "devices":
            for line in _devnode_lines(r, verbose):
                console.print(line)
        elif sec == "pci" and topo is not None:
            for f in fs:
                for line in _finding_lines(f, verbose):
                    console.print(line)
            console.print(_pci_tree(topo, roles))
        elif sec == "p2p":
            for f in fs:
                for line in _finding_lines(f, verbose):
                    console.print(line)
            mt = _matrix(r)
            if mt is not None and len(r.matrix.devices if r.matrix else []) <= 16:
                console.print(mt)
                console.print(Text("  B<n> BUS_ADDR (direct below a switch, n hops) · "
                                   "H<n> THRU_HOST_BRIDGE (through the root complex) · "
                                   "N<n> NOT_SUPPORTED (refused, EREMOTEIO)", style="dim"))
            elif mt is not None:
                console.print(f"  {len(r.matrix.devices) if r.matrix else 0} devices: matrix in "
                              "--json")
        else:
            for f in fs:
                for line in _finding_lines(f, verbose):
                    console.print(line)
        console.print()
    c = r.counts()
    problems = [f for f in r.findings if f.severity.rank >= 2]
    if problems:
        console.print(Text("What to fix", style="bold underline"))
        for i, f in enumerate(sorted(problems, key=lambda f: -f.severity.rank), 1):
            console.print(Text.assemble(f"  {i}. ", _badge(f.severity), "  ", (f.title, "bold"),
                                        (f"  [{f.id}]", "dim")))
            if f.remedy:
                for j, rline in enumerate(f.remedy.splitlines()):
                    console.print(Text(("     → " if j == 0 else "       ") + rline))
        console.print()
    console.print(Text.assemble("Summary: ", (f"{c['ok']} ok", "green"), ", ",
                                (f"{c['info']} info", "cyan"), ", ",
                                (f"{c['warn']} warn", "yellow"), ", ",
                                (f"{c['error']} error", "red"),
                                ("" if verbose else "   (--verbose for every reason, --json for "
                                 "machines)", "dim")))


@click.command("doctor", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--sysfs-root", "sysfs_root", default=None, metavar="DIR",
              help="Diagnose a root laid out like / (a capture) instead of the running machine.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON (schema "
              "pydmabuf.doctor/1, see docs/doctor.md).")
@click.option("--capture", "capture_dir", default=None, metavar="DIR",
              help="Write a capture of the running machine (or of --sysfs-root) into DIR, which "
                   "must be new or empty, instead of diagnosing.")
@click.option("-v", "--verbose", is_flag=True, help="Show the reason of every finding.")
def doctor_cmd(sysfs_root: str | None, as_json: bool, capture_dir: str | None,
               verbose: bool) -> None:
    """Why is dma-buf / P2P (not) used here? Kernel, config, nodes, IOMMU, ACS, P2P matrix."""
    console = Console()
    if capture_dir is not None:
        try:
            res = capture_root(capture_dir, sysfs_root or "/")
        except DmaBufError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            raise click.ClickException(f"capture into {capture_dir} failed: {e}") from None
        if as_json:
            click.echo(json.dumps(res.describe(), indent=2))
            return
        console.print(f"captured {res.functions} PCI functions ({res.files} files, {res.links} "
                      f"links) into {escape(res.dest)}")
        if res.captured:
            console.print(f"also recorded: {', '.join(res.captured)}")
        for n in res.notes:
            console.print(f"[dim]note: {escape(n)}[/dim]")
        console.print(f"check it with: dmabuf doctor --sysfs-root {escape(res.dest)}; attach it "
                      f"as: tar czf machine.tgz -C {escape(res.dest)} .")
        return
    try:
        report = diagnose(sysfs_root or "/")
    except DmaBufError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    render(report, console, verbose)
