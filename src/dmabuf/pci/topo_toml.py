"""The native topology file format (TOML) and the embedded default fabric.

A topology file describes a machine's PCI hierarchy the way ``lspci -tv`` shows it, plus the
things P2P decisions depend on: the CPU, host bridges and their root devices, ports with their
ACS capability and control bits, endpoints with BARs, p2pmem providers and SR-IOV VFs. The full
reference is ``docs/topology-format.md``; in short::

    format = 1
    [cpu]
    vendor_id = "AuthenticAMD"
    family = 0x19

    [[host_bridge]]
    name = "hb0"
    vendor = 0x1022            # adds the root-complex function 0000:00:00.0
    device = 0x14a4

    [[device]]
    bdf = "0000:00:01.1"
    name = "rp0"
    type = "root_port"
    vendor = 0x1022
    device = 0x14ab
    link = "Gen5 x16"
    acs = { cap = ["SV", "RR", "CR", "UF", "EC"], ctrl = [] }

Validation is strict (unknown keys are errors, so typos do not pass silently) and every error is
``DmaBufError(EINVAL, "file:line: what is wrong, what to do")``. ``tomllib`` reports positions
only for syntax errors; for semantic errors the loader finds the line by scanning the text for the
n-th ``[[device]]`` header and the key inside it.

Kernel: none (a file format of the model); the values mirror include/uapi/linux/pci_regs.h and
the sysfs attributes of drivers/pci/pci-sysfs.c.
"""

from __future__ import annotations

import errno
import os
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from dmabuf.errors import DmaBufError
from dmabuf.pci.pci_regs import (
    ACS_BITS,
    IORESOURCE_IO,
    IORESOURCE_MEM,
    IORESOURCE_MEM_64,
    IORESOURCE_PREFETCH,
    LINK_SPEEDS,
    PcieType,
    acs_bits_from_names,
)
from dmabuf.pci.topology import (
    Acs,
    Bar,
    CpuInfo,
    Link,
    PciDev,
    Topology,
    TopologyError,
    format_bdf,
    parse_bdf,
)

__all__ = ["DEVICE_TYPES", "TomlLocator", "default_topology", "default_topology_path",
           "load_toml", "loads_toml", "parse_size"]

FORMAT_VERSION = 1

#: ``type`` values: (PCIe port type or None for conventional PCI, header type, default class).
DEVICE_TYPES: dict[str, tuple[PcieType | None, int, int]] = {
    "endpoint": (PcieType.ENDPOINT, 0, 0xFF0000),
    "legacy_endpoint": (PcieType.LEG_END, 0, 0xFF0000),
    "rciep": (PcieType.RC_END, 0, 0xFF0000),
    "rc_event_collector": (PcieType.RC_EC, 0, 0x080700),
    "root_port": (PcieType.ROOT_PORT, 1, 0x060400),
    "upstream_port": (PcieType.UPSTREAM, 1, 0x060400),
    "downstream_port": (PcieType.DOWNSTREAM, 1, 0x060400),
    "pcie_pci_bridge": (PcieType.PCI_BRIDGE, 1, 0x060400),
    "pci_pcie_bridge": (PcieType.PCIE_BRIDGE, 1, 0x060400),
    "pci": (None, 0, 0xFF0000),
    "pci_bridge": (None, 1, 0x060400),
    "host_bridge": (None, 0, 0x060000),
}

_TOP_KEYS = {"format", "description", "cpu", "host_bridge", "device"}
_CPU_KEYS = {"vendor_id", "family", "model_name"}
_HB_KEYS = {"name", "domain", "bus", "numa_node", "vendor", "device"}
_DEV_KEYS = {"bdf", "name", "type", "parent", "physfn", "vendor", "device", "class", "revision",
             "subsystem_vendor", "subsystem_device", "multifunction", "link", "acs", "numa_node",
             "iommu_group", "driver", "non_mappable_bars", "p2pdma", "bar", "p2pmem", "sriov"}
_BAR_KEYS = {"index", "size", "address", "bus_offset", "prefetchable", "mem64", "io"}
_P2PMEM_KEYS = {"bar", "size", "offset", "publish", "in_use"}
_SRIOV_KEYS = {"num_vfs", "offset", "stride", "vf_device", "name_prefix", "driver",
               "iommu_group_base"}
_LINK_KEYS = {"speed", "width", "max_speed", "max_width"}
_ACS_KEYS = {"cap", "ctrl"}

_SIZE_RE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+(?:\.\d+)?)\s*([KMGTP]?)(i?)B?\s*$", re.I)
_GEN_RE = re.compile(r"^\s*gen\s*([1-6])\s*(?:x\s*(\d+))?\s*$", re.I)
_SPEED_RE = re.compile(r"^\s*([\d.]+)\s*(?:gt/s)?\s*(?:x\s*(\d+))?\s*$", re.I)

#: Where BARs without an ``address`` are placed: 64-bit ones from 1 TiB up, others in the
#: 32-bit PCI hole from 0xe0000000, each aligned to its size (as BAR decoding requires).
_AUTO_BASE_64 = 1 << 40
_AUTO_BASE_32 = 0xE000_0000
_AUTO_END_32 = 0xFEC0_0000


def parse_size(value: Any, what: str) -> int:
    """Bytes from an int or a string: ``"64GiB"``, ``"16M"``, ``"4 KiB"``, ``"0x1000"``.

    Units are binary (K = 1024) with or without the ``i``; a bare number is bytes.

    Raises:
        ValueError: with a message naming ``what``.

    Model-only: size parsing for the topology file (like memparse() in lib/cmdline.c, but with IEC
    suffixes).
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a size (bytes, or a string like '64GiB'), not a bool")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a size (bytes, or a string like '64GiB'), not "
                         f"{type(value).__name__}")
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"{what}: cannot read {value!r} as a size; write e.g. 4096, '64KiB', "
                         "'16M', '1GiB'")
    num, unit = m.group(1), m.group(2).upper()
    mult = 1 << (10 * " KMGTP".index(unit)) if unit else 1
    if num.lower().startswith("0x"):
        n = int(num, 16) * mult
    else:
        f = float(num) * mult
        if f != int(f):
            raise ValueError(f"{what}: {value!r} is not a whole number of bytes")
        n = int(f)
    return n


class TomlLocator:
    """Find the line of a table or key in TOML text (tomllib has no value positions).

    ``tomllib`` reports positions only for syntax errors; loaders that want ``file:line``
    messages for semantic errors (this module, the scenario parser of ``dmabuf.sim.scenario``)
    scan the text for the n-th table header and the key inside it.

    Args:
        text: the TOML document.
    Kernel: none.
    """

    _HDR = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(#.*)?$")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers: list[tuple[int, str, bool]] = []
        for i, line in enumerate(self.lines, 1):
            m = self._HDR.match(line)
            if m:
                self.headers.append((i, m.group(2), m.group(1) == "[["))

    def _span(self, start: int) -> int:
        for ln, _n, _a in self.headers:
            if ln > start:
                return ln
        return len(self.lines) + 1

    def table(self, name: str, index: int = 0) -> int | None:
        """Line of the ``index``-th ``[name]`` / ``[[name]]`` header.

        Model-only: source-line lookup for topology-file error messages.
        """
        k = 0
        for ln, n, _a in self.headers:
            if n == name:
                if k == index:
                    return ln
                k += 1
        return None

    def subtable(self, parent: str, pindex: int, name: str, index: int) -> int | None:
        """Line of the ``index``-th ``[[parent.name]]`` inside the ``pindex``-th ``[[parent]]``.

        Model-only: source-line lookup for topology-file error messages.
        """
        start = self.table(parent, pindex)
        if start is None:
            return None
        end = self.table(parent, pindex + 1) or len(self.lines) + 1
        k = 0
        for ln, n, _a in self.headers:
            if start < ln < end and n == f"{parent}.{name}":
                if k == index:
                    return ln
                k += 1
        return None

    def key(self, start: int | None, key: str) -> int | None:
        """Line of ``key = …`` in the table starting at ``start`` (0 = top level).

        Model-only: source-line lookup for topology-file error messages.
        """
        begin = start or 0
        end = self._span(begin) if start else (self.headers[0][0] if self.headers else
                                               len(self.lines) + 1)
        pat = re.compile(rf"^\s*{re.escape(key)}\s*=")
        pat_inline = re.compile(rf"[{{,]\s*{re.escape(key)}\s*=")
        for i in range(begin, min(end, len(self.lines) + 1)):
            line = self.lines[i - 1] if i >= 1 else ""
            if pat.match(line):
                return i
        for i in range(begin, min(end, len(self.lines) + 1)):
            line = self.lines[i - 1] if i >= 1 else ""
            if pat_inline.search(line):
                return i
        return start


#: The former private name, kept as an alias for existing imports.
_Locator = TomlLocator


class _Ctx:
    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.loc = TomlLocator(text)

    def fail(self, line: int | None, msg: str) -> DmaBufError:
        return DmaBufError(errno.EINVAL, f"{self.path}:{line or 1}: {msg}")


def _check_keys(ctx: _Ctx, table: dict[str, Any], allowed: set[str], where: str,
                line: int | None) -> None:
    for k in table:
        if k not in allowed:
            ln = ctx.loc.key(line, k) if line is not None else None
            raise ctx.fail(ln or line, f"{where}: unknown key {k!r}; allowed keys: "
                           f"{', '.join(sorted(allowed))}")


def _int(ctx: _Ctx, v: Any, what: str, line: int | None, lo: int = 0,
         hi: int = (1 << 64) - 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ctx.fail(line, f"{what} must be an integer (hex like 0x10de is fine), not "
                       f"{type(v).__name__} {v!r}")
    if not lo <= v <= hi:
        raise ctx.fail(line, f"{what} = {v} is out of range {lo}..{hi:#x}")
    return v


def _bool(ctx: _Ctx, v: Any, what: str, line: int | None) -> bool:
    if not isinstance(v, bool):
        raise ctx.fail(line, f"{what} must be true or false, not {v!r}")
    return v


def _str(ctx: _Ctx, v: Any, what: str, line: int | None) -> str:
    if not isinstance(v, str) or not v:
        raise ctx.fail(line, f"{what} must be a non-empty string, not {v!r}")
    return v


def _size(ctx: _Ctx, v: Any, what: str, line: int | None) -> int:
    try:
        return parse_size(v, what)
    except ValueError as e:
        raise ctx.fail(line, str(e)) from None


def _speed(ctx: _Ctx, v: Any, what: str, line: int | None) -> float:
    if isinstance(v, bool):
        raise ctx.fail(line, f"{what} must be GT/s (32.0) or a string ('32 GT/s', 'Gen5')")
    if isinstance(v, (int, float)):
        sp = float(v)
    elif isinstance(v, str):
        m = _GEN_RE.match(v)
        if m:
            return LINK_SPEEDS[int(m.group(1))]
        m2 = _SPEED_RE.match(v)
        if not m2:
            raise ctx.fail(line, f"{what}: cannot read {v!r}; write 32.0, '32 GT/s' or 'Gen5'")
        sp = float(m2.group(1))
    else:
        raise ctx.fail(line, f"{what} must be GT/s (32.0) or a string ('32 GT/s', 'Gen5')")
    if sp not in LINK_SPEEDS.values():
        raise ctx.fail(line, f"{what} = {sp:g} GT/s is not a PCIe rate; use one of "
                       f"{', '.join(f'{s:g}' for s in LINK_SPEEDS.values())}")
    return sp


def _link(ctx: _Ctx, v: Any, line: int | None) -> Link:
    if isinstance(v, str):
        m = _GEN_RE.match(v)
        if not m:
            m2 = _SPEED_RE.match(v)
            if not m2:
                raise ctx.fail(line, f"link {v!r}: write 'Gen5 x16', '32 GT/s x16' or a table "
                               "{speed = 32.0, width = 16}")
            sp = _speed(ctx, m2.group(1), "link speed", line)
            w = int(m2.group(2)) if m2.group(2) else None
        else:
            sp = LINK_SPEEDS[int(m.group(1))]
            w = int(m.group(2)) if m.group(2) else None
        if w is not None and w not in (1, 2, 4, 8, 12, 16, 32):
            raise ctx.fail(line, f"link width x{w} is not a PCIe width (1, 2, 4, 8, 12, 16, 32)")
        return Link(speed=sp, width=w, max_speed=sp, max_width=w)
    if isinstance(v, dict):
        _check_keys(ctx, v, _LINK_KEYS, "link", line)
        sp2 = _speed(ctx, v["speed"], "link speed", line) if "speed" in v else None
        w2 = _int(ctx, v["width"], "link width", line, 1, 32) if "width" in v else None
        msp = _speed(ctx, v["max_speed"], "link max_speed", line) if "max_speed" in v else sp2
        mw = _int(ctx, v["max_width"], "link max_width", line, 1, 32) if "max_width" in v else w2
        return Link(speed=sp2, width=w2, max_speed=msp, max_width=mw)
    raise ctx.fail(line, "link must be a string like 'Gen5 x16' or a table")


def _acs(ctx: _Ctx, v: Any, line: int | None) -> Acs:
    if not isinstance(v, dict):
        raise ctx.fail(line, "acs must be a table like { cap = ['SV','RR','CR','UF','EC'], "
                       "ctrl = ['RR','CR'] }")
    _check_keys(ctx, v, _ACS_KEYS, "acs", line)
    out = []
    for k in ("cap", "ctrl"):
        x = v.get(k, [] if k == "ctrl" else list(ACS_BITS))
        if isinstance(x, list):
            try:
                out.append(acs_bits_from_names(x, f"acs.{k}"))
            except DmaBufError as e:
                raise ctx.fail(line, e.strerror or str(e)) from None
        else:
            out.append(_int(ctx, x, f"acs.{k}", line, 0, 0xFFFF))
    cap, ctrl = out
    if ctrl & ~cap & 0x7F:
        missing = [n for n, b in ACS_BITS.items() if ctrl & b and not cap & b]
        raise ctx.fail(line, f"acs.ctrl enables {', '.join(missing)} which acs.cap does not "
                       "offer; add them to cap or drop them from ctrl")
    return Acs(cap=cap, ctrl=ctrl)


class _BarPlacer:
    def __init__(self) -> None:
        self.next64 = _AUTO_BASE_64
        self.next32 = _AUTO_BASE_32

    def place(self, size: int, mem64: bool) -> int | None:
        align = 1 << max(12, (size - 1).bit_length())
        if mem64:
            base = -(-self.next64 // align) * align
            self.next64 = base + size
            return base
        base = -(-self.next32 // align) * align
        if base + size > _AUTO_END_32:
            return None
        self.next32 = base + size
        return base


def loads_toml(text: str, *, path: str = "<string>") -> Topology:
    """Build a :class:`Topology` from TOML text (see the module docstring).

    Args:
        text: the file contents.
        path: name used in error messages and as the topology's source.

    Returns:
        A finalized topology with its providers set up (``pci_p2pdma_add_resource`` for every
        ``[[device.p2pmem]]``, ``pcim_p2pdma_init`` for ``p2pdma = true``).

    Raises:
        DmaBufError(EINVAL): ``"path:line: what is wrong, what to do"`` for syntax errors, unknown
            keys, bad values, unknown parents, cycles, duplicate addresses, overlapping BARs,
            rejected p2pmem ranges.

    Model-only: the project's topology file format; the kernel enumerates hardware instead.
    """
    ctx = _Ctx(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        line = int(m.group(1)) if m else None
        raise ctx.fail(line, f"invalid TOML: {msg}; fix the syntax") from None
    _check_keys(ctx, data, _TOP_KEYS, "top level", 0)
    fmt = data.get("format")
    if fmt != FORMAT_VERSION:
        raise ctx.fail(ctx.loc.key(0, "format"), f"format = {fmt!r}: this file must start with "
                       f"'format = {FORMAT_VERSION}' (the only version pydmabuf reads)")
    cpu_t = data.get("cpu", {})
    cpu_line = ctx.loc.table("cpu")
    if not isinstance(cpu_t, dict):
        raise ctx.fail(ctx.loc.key(0, "cpu"), "cpu must be a table [cpu]")
    _check_keys(ctx, cpu_t, _CPU_KEYS, "[cpu]", cpu_line)
    cpu = CpuInfo(
        vendor_id=_str(ctx, cpu_t["vendor_id"], "cpu.vendor_id", ctx.loc.key(cpu_line,
                                                                             "vendor_id"))
        if "vendor_id" in cpu_t else "",
        family=_int(ctx, cpu_t.get("family", 0), "cpu.family", ctx.loc.key(cpu_line, "family"),
                    0, 0xFFF),
        model_name=str(cpu_t.get("model_name", "")))
    desc = data.get("description", "")
    topo = Topology(cpu=cpu, source=path, description=str(desc))
    dev_lines: dict[str, int | None] = {}
    hbs = data.get("host_bridge", [])
    if not isinstance(hbs, list) or not all(isinstance(h, dict) for h in hbs):
        raise ctx.fail(ctx.loc.key(0, "host_bridge"), "host_bridge must be an array of tables "
                       "[[host_bridge]]")
    if not hbs:
        raise ctx.fail(None, "no [[host_bridge]]: declare at least one host bridge (root bus)")
    for i, h in enumerate(hbs):
        ln = ctx.loc.table("host_bridge", i)
        _check_keys(ctx, h, _HB_KEYS, f"host_bridge #{i + 1}", ln)
        dom = _int(ctx, h.get("domain", 0), "host_bridge.domain", ctx.loc.key(ln, "domain"), 0,
                   0xFFFF)
        bus = _int(ctx, h.get("bus", 0), "host_bridge.bus", ctx.loc.key(ln, "bus"), 0, 0xFF)
        node = h.get("numa_node")
        numa = _int(ctx, node, "numa_node", ctx.loc.key(ln, "numa_node"), 0, 1023) \
            if node is not None else None
        label = _str(ctx, h["name"], "host_bridge.name", ctx.loc.key(ln, "name")) \
            if "name" in h else None
        try:
            topo.add_host_bridge(dom, bus, numa_node=numa, label=label)
        except TopologyError as e:
            raise ctx.fail(ln, e.strerror or str(e)) from None
        if ("vendor" in h) != ("device" in h):
            raise ctx.fail(ln, "host_bridge: give both vendor and device of its root-complex "
                           "function (00.0), or neither")
        if "vendor" in h:
            v = _int(ctx, h["vendor"], "host_bridge.vendor", ctx.loc.key(ln, "vendor"), 0, 0xFFFF)
            d = _int(ctx, h["device"], "host_bridge.device", ctx.loc.key(ln, "device"), 0, 0xFFFF)
            bdf = format_bdf(dom, bus, 0)
            topo.add_device(bdf, vendor=v, device=d, class_code=0x060000,
                            numa_node=numa, name=f"{label}.rc" if label else None)
            dev_lines[bdf] = ln
    devs = data.get("device", [])
    if not isinstance(devs, list) or not all(isinstance(d, dict) for d in devs):
        raise ctx.fail(ctx.loc.key(0, "device"), "device must be an array of tables [[device]]")
    placer = _BarPlacer()
    p2pmems: list[tuple[PciDev, list[dict[str, Any]], int | None, int]] = []
    inits: list[PciDev] = []
    for i, d in enumerate(devs):
        ln = ctx.loc.table("device", i)

        def kl(key: str, _ln: int | None = ln) -> int | None:
            return ctx.loc.key(_ln, key)

        _check_keys(ctx, d, _DEV_KEYS, f"device #{i + 1}", ln)
        if "bdf" not in d:
            raise ctx.fail(ln, f"device #{i + 1}: missing bdf = \"dddd:bb:ss.f\"")
        bdf_s = _str(ctx, d["bdf"], "bdf", kl("bdf"))
        try:
            dom, bus, slot, fn = parse_bdf(bdf_s)
        except DmaBufError as e:
            raise ctx.fail(kl("bdf"), e.strerror or str(e)) from None
        bdf = format_bdf(dom, bus, (slot << 3) | fn)
        where = f"device {bdf}"
        typ = d.get("type", "endpoint")
        if typ not in DEVICE_TYPES:
            raise ctx.fail(kl("type"), f"{where}: type {typ!r} is not one of "
                           f"{', '.join(DEVICE_TYPES)}")
        pcie_type, header_type, def_class = DEVICE_TYPES[typ]
        for k in ("vendor", "device"):
            if k not in d:
                raise ctx.fail(ln, f"{where}: missing {k} = 0x…  (PCI {k} ID)")
        attrs: dict[str, Any] = {
            "vendor": _int(ctx, d["vendor"], f"{where}: vendor", kl("vendor"), 0, 0xFFFF),
            "device": _int(ctx, d["device"], f"{where}: device", kl("device"), 0, 0xFFFF),
            "class_code": _int(ctx, d.get("class", def_class), f"{where}: class", kl("class"), 0,
                               0xFFFFFF),
            "pcie_type": pcie_type, "header_type": header_type,
            "revision": _int(ctx, d.get("revision", 0), f"{where}: revision", kl("revision"), 0,
                             0xFF),
            "subsystem_vendor": _int(ctx, d.get("subsystem_vendor", 0), "subsystem_vendor",
                                     kl("subsystem_vendor"), 0, 0xFFFF),
            "subsystem_device": _int(ctx, d.get("subsystem_device", 0), "subsystem_device",
                                     kl("subsystem_device"), 0, 0xFFFF),
        }
        if "name" in d:
            attrs["name"] = _str(ctx, d["name"], f"{where}: name", kl("name"))
        if "multifunction" in d:
            attrs["multifunction"] = _bool(ctx, d["multifunction"], "multifunction",
                                           kl("multifunction"))
        if "link" in d:
            attrs["link"] = _link(ctx, d["link"], kl("link"))
        if "acs" in d:
            attrs["acs"] = _acs(ctx, d["acs"], kl("acs"))
        if "numa_node" in d:
            attrs["numa_node"] = _int(ctx, d["numa_node"], "numa_node", kl("numa_node"), 0, 1023)
        if "iommu_group" in d:
            attrs["iommu_group"] = _int(ctx, d["iommu_group"], "iommu_group", kl("iommu_group"),
                                        0, 1 << 31)
        if "driver" in d:
            attrs["driver"] = _str(ctx, d["driver"], "driver", kl("driver"))
        if "non_mappable_bars" in d:
            attrs["non_mappable_bars"] = _bool(ctx, d["non_mappable_bars"], "non_mappable_bars",
                                               kl("non_mappable_bars"))
        bars = []
        bar_list = d.get("bar", [])
        if not isinstance(bar_list, list):
            raise ctx.fail(kl("bar"), f"{where}: bar must be an array of tables [[device.bar]]")
        for j, b in enumerate(bar_list):
            bl = ctx.loc.subtable("device", i, "bar", j) or kl("bar")
            if not isinstance(b, dict):
                raise ctx.fail(bl, f"{where}: each bar is a table")
            _check_keys(ctx, b, _BAR_KEYS, f"{where} bar #{j + 1}", bl)
            if "index" not in b or "size" not in b:
                raise ctx.fail(bl, f"{where} bar #{j + 1}: index and size are required")
            idx = _int(ctx, b["index"], "bar index", ctx.loc.key(bl, "index"), 0, 5)
            size = _size(ctx, b["size"], f"{where} BAR{idx} size", ctx.loc.key(bl, "size"))
            if size <= 0 or size & (size - 1):
                raise ctx.fail(ctx.loc.key(bl, "size"), f"{where} BAR{idx}: size {size:#x} must "
                               "be a power of two (BARs decode naturally aligned powers of two)")
            io = _bool(ctx, b.get("io", False), "io", bl)
            mem64 = _bool(ctx, b.get("mem64", size > (1 << 30)), "mem64", bl)
            pref = _bool(ctx, b.get("prefetchable", mem64), "prefetchable", bl)
            if io and (mem64 or pref):
                raise ctx.fail(bl, f"{where} BAR{idx}: an I/O BAR cannot be 64-bit or "
                               "prefetchable")
            flags = IORESOURCE_IO if io else IORESOURCE_MEM
            if mem64 and not io:
                flags |= IORESOURCE_MEM_64
            if pref:
                flags |= IORESOURCE_PREFETCH
            if "address" in b:
                addr = _int(ctx, b["address"], "bar address", ctx.loc.key(bl, "address"))
                if addr % size:
                    raise ctx.fail(ctx.loc.key(bl, "address"), f"{where} BAR{idx}: address "
                                   f"{addr:#x} is not aligned to its size {size:#x}")
                if not mem64 and not io and addr + size > (1 << 32):
                    raise ctx.fail(ctx.loc.key(bl, "address"), f"{where} BAR{idx}: a 32-bit BAR "
                                   "must lie below 4 GiB; set mem64 = true or move it")
            else:
                placed = placer.place(size, mem64 or io)
                if placed is None:
                    raise ctx.fail(bl, f"{where} BAR{idx}: no room below 4 GiB for a 32-bit BAR "
                                   f"of {size:#x}; give it an address or make it mem64")
                addr = placed
            boff = b.get("bus_offset", 0)
            if isinstance(boff, bool) or not isinstance(boff, int):
                raise ctx.fail(ctx.loc.key(bl, "bus_offset"), "bus_offset must be an integer")
            bars.append(Bar(index=idx, start=addr, size=size, flags=flags, bus_offset=boff))
        idxs = [b.index for b in bars]
        if len(set(idxs)) != len(idxs):
            raise ctx.fail(kl("bar"), f"{where}: BAR index declared twice in {idxs}")
        attrs["bars"] = bars
        parent = d.get("parent")
        if parent is not None:
            parent = _str(ctx, parent, f"{where}: parent", kl("parent"))
        physfn = d.get("physfn")
        if physfn is not None:
            physfn = _str(ctx, physfn, f"{where}: physfn", kl("physfn"))
        try:
            dev = topo.add_device(bdf, parent=parent, physfn=physfn, **attrs)
        except TopologyError as e:
            raise ctx.fail(kl("bdf") if e.key in (None, "bdf") else kl(e.key),
                           e.strerror or str(e)) from None
        dev_lines[bdf] = ln
        if _bool(ctx, d.get("p2pdma", False), "p2pdma", kl("p2pdma")):
            inits.append(dev)
        pm = d.get("p2pmem", [])
        if not isinstance(pm, list) or not all(isinstance(x, dict) for x in pm):
            raise ctx.fail(kl("p2pmem"), f"{where}: p2pmem must be an array of tables "
                           "[[device.p2pmem]]")
        if pm:
            p2pmems.append((dev, pm, ln, i))
        if "sriov" in d:
            _add_vfs(ctx, topo, dev, d["sriov"], kl("sriov"), dev_lines)
    try:
        topo.finalize()
    except TopologyError as e:
        line = dev_lines.get(e.device or "")
        if line is not None and e.key is not None:
            line = ctx.loc.key(line, e.key) or line
        raise ctx.fail(line, e.strerror or str(e)) from None
    _setup_providers(ctx, topo, inits, p2pmems)
    return topo


def _add_vfs(ctx: _Ctx, topo: Topology, pf: PciDev, s: Any, line: int | None,
             dev_lines: dict[str, int | None]) -> None:
    if not isinstance(s, dict):
        raise ctx.fail(line, "sriov must be a table { num_vfs = 4, vf_device = 0x101e }")
    _check_keys(ctx, s, _SRIOV_KEYS, f"{pf.bdf} sriov", line)
    n = _int(ctx, s.get("num_vfs", 0), "sriov.num_vfs", line, 0, 255)
    off = _int(ctx, s.get("offset", 1), "sriov.offset", line, 1, 0xFFFF)
    stride = _int(ctx, s.get("stride", 1), "sriov.stride", line, 1, 0xFFFF)
    vf_dev = _int(ctx, s.get("vf_device", pf.device), "sriov.vf_device", line, 0, 0xFFFF)
    prefix = str(s.get("name_prefix", f"{pf.name}_vf" if pf.name else ""))
    driver = s.get("driver", pf.driver)
    gbase = s.get("iommu_group_base")
    for k in range(n):
        # pci_iov_virtfn_bus()/devfn(): routing ID = PF's + offset + k * stride
        rid = (pf.bus << 8 | pf.devfn) + off + k * stride
        bus, devfn = rid >> 8, rid & 0xFF
        if bus > 0xFF:
            raise ctx.fail(line, f"{pf.bdf}: VF {k} would be on bus {bus:#x} (> 0xff); use fewer "
                           "VFs or a smaller offset/stride")
        bdf = format_bdf(pf.domain, bus, devfn)
        try:
            topo.add_device(bdf, physfn=pf.bdf, vendor=pf.vendor, device=vf_dev,
                            class_code=pf.class_code, pcie_type=PcieType.ENDPOINT,
                            name=f"{prefix}{k}" if prefix else None, link=Link(),
                            numa_node=pf.numa_node, driver=driver if isinstance(driver, str)
                            else None,
                            iommu_group=(gbase + k) if isinstance(gbase, int) else None)
        except TopologyError as e:
            raise ctx.fail(line, f"{pf.bdf} sriov: VF {k}: {e.strerror}") from None
        dev_lines[bdf] = line


def _setup_providers(ctx: _Ctx, topo: Topology, inits: list[PciDev],
                     p2pmems: list[tuple[PciDev, list[dict[str, Any]], int | None, int]]) -> None:
    from dmabuf.pci import p2pdma

    for dev in inits:
        try:
            p2pdma.pcim_p2pdma_init(dev)
        except DmaBufError as e:
            raise ctx.fail(None, f"{dev.label}: p2pdma = true: {e.strerror}") from None
    for dev, lst, dln, di in p2pmems:
        for j, pm in enumerate(lst):
            ln = ctx.loc.subtable("device", di, "p2pmem", j) or dln
            _check_keys(ctx, pm, _P2PMEM_KEYS, f"{dev.bdf} p2pmem #{j + 1}", ln)
            if "bar" not in pm:
                raise ctx.fail(ln, f"{dev.bdf} p2pmem #{j + 1}: bar = <index> is required")
            bar = _int(ctx, pm["bar"], "p2pmem.bar", ctx.loc.key(ln, "bar"), 0, 5)
            size = _size(ctx, pm.get("size", 0), "p2pmem.size", ctx.loc.key(ln, "size"))
            offset = _size(ctx, pm.get("offset", 0), "p2pmem.offset", ctx.loc.key(ln, "offset"))
            try:
                p2pdma.pci_p2pdma_add_resource(dev, bar, size, offset)
            except DmaBufError as e:
                raise ctx.fail(ln, f"pci_p2pdma_add_resource failed ({e}); fix bar/size/offset"
                               ) from None
            if _bool(ctx, pm.get("publish", True), "publish", ctx.loc.key(ln, "publish")):
                p2pdma.pci_p2pmem_publish(dev, True)
            used = _size(ctx, pm.get("in_use", 0), "p2pmem.in_use", ctx.loc.key(ln, "in_use"))
            if used and p2pdma.pci_alloc_p2pmem(dev, used) is None:
                raise ctx.fail(ctx.loc.key(ln, "in_use"), f"{dev.bdf}: in_use = {used} does not "
                               "fit in the p2pmem pool")


def load_toml(path: str | os.PathLike[str]) -> Topology:
    """Read a topology file — see :func:`loads_toml` and ``docs/topology-format.md``.

    Raises:
        DmaBufError(ENOENT): the file does not exist; (EINVAL) see :func:`loads_toml`.

    Model-only: the project's topology file format; the kernel enumerates hardware instead.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DmaBufError(errno.ENOENT, f"{p}: no such topology file") from None
    except UnicodeDecodeError as e:
        raise DmaBufError(errno.EINVAL, f"{p}:1: not UTF-8 text ({e.reason}); a topology file "
                          "is TOML") from None
    except OSError as e:
        raise DmaBufError(e.errno or errno.EIO, f"{p}: cannot read: {e.strerror}") from None
    return loads_toml(text, path=str(p))


def default_topology_path() -> str:
    """Path of the embedded reference fabric (``dmabuf/data/default_topology.toml``).

    Model-only: locates the project's embedded data file.
    """
    return str(resources.files("dmabuf").joinpath("data", "default_topology.toml"))


def default_topology() -> Topology:
    """The reference fabric of spec p2p §6.2, freshly loaded (a new object each call).

    Single AMD Zen 4 socket: GPU0, NIC0 (+2 VFs) and NVMe0 (1 GiB CMB, published p2pmem) under a
    Gen5 switch with ACS redirect off on its downstream ports; GPU1, NIC1, NVMe1 and an
    accelerator on their own root ports.

    Model-only: the project's reference fabric file; no kernel counterpart.
    """
    ref = resources.files("dmabuf").joinpath("data", "default_topology.toml")
    return loads_toml(ref.read_text(encoding="utf-8"), path="<default topology>")

