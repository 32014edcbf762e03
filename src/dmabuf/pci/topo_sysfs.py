"""Load a PCI topology from sysfs — the running machine's ``/`` or a captured root laid out like it.

What is read (drivers/pci/pci-sysfs.c names):

* ``sys/bus/pci/devices/<bdf>`` — one link per function into ``sys/devices/pci…/…/<bdf>``; the
  directory nesting *is* the hierarchy: a function's upstream bridge is its parent directory when
  that is a PCI address, and a ``pciDDDD:BB`` parent is its host bridge (root bus). Links may be
  real symlinks or, in captured roots whose links were flattened, small text files holding the
  link target; both are accepted. Targets of ``driver``, ``iommu_group`` and ``physfn`` links are
  used by basename only (they may dangle in a capture).
* ``vendor``, ``device``, ``class``, ``revision``, ``subsystem_*`` (hex), ``numa_node`` (``-1`` =
  none), ``current/max_link_speed`` (``"16.0 GT/s PCIe"``) and ``_width``, ``resource`` (BARs:
  the first six lines ``start end flags``), ``p2pmem/{size,available,published}``.
* ``config`` — binary config space: the PCIe capability (port type, link) and the ACS extended
  capability (capability word at +4, control word at +6), via
  :func:`dmabuf.pci.pci_regs.decode_config`. A 64-byte file (read without root) hides ACS: the
  loader records a note instead of guessing.
* ``proc/cpuinfo`` — ``vendor_id`` and ``cpu family`` of the first CPU (the AMD Zen rule).

A p2pmem provider found in sysfs is re-created in the model with ``pci_p2pdma_add_resource()`` on
the smallest MEM BAR that holds ``p2pmem/size`` (sysfs does not say which BAR or offset; the model
chooses and notes it), published as the file says, and ``size - available`` bytes are allocated
(what the provider's own driver uses, e.g. NVMe queues in the CMB).

Every malformed input raises ``DmaBufError(EINVAL/ENOENT)`` naming the file.

Kernel: drivers/pci/pci-sysfs.c, drivers/pci/probe.c, drivers/pci/p2pdma.c (p2pmem group),
arch/x86/kernel/cpu/proc.c (show_cpuinfo()).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from dmabuf.errors import DmaBufError
from dmabuf.pci.pci_regs import (
    IORESOURCE_DISABLED,
    IORESOURCE_IO,
    IORESOURCE_MEM,
    IORESOURCE_UNSET,
    PCI_STD_NUM_BARS,
    PcieType,
    decode_config,
)
from dmabuf.pci.topology import (
    Acs,
    Bar,
    CpuInfo,
    Link,
    PciDev,
    Topology,
    TopologyError,
    is_bdf,
    parse_bdf,
)

__all__ = ["load_sysfs", "read_cpuinfo"]

_HB_RE = re.compile(r"^pci([0-9a-fA-F]{4,}):([0-9a-fA-F]{2})$")


def _bad(path: Path, what: str) -> DmaBufError:
    return DmaBufError(errno.EINVAL, f"{path}: {what}; the sysfs tree is damaged or not a sysfs "
                       "capture")


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise _bad(path, "expected a file, found a directory") from None
    except OSError as e:
        raise DmaBufError(e.errno or errno.EIO, f"{path}: cannot read: {e.strerror}") from None


def _read_hex(path: Path, *, required: bool = True, bits: int = 16) -> int | None:
    text = _read_text(path)
    if text is None:
        if required:
            raise DmaBufError(errno.ENOENT, f"{path}: missing; every PCI function in sysfs has "
                              "this attribute (incomplete capture?)")
        return None
    try:
        v = int(text, 16)
    except ValueError:
        raise _bad(path, f"expected a hex number like 0x10de, got {text[:40]!r}") from None
    if not 0 <= v < (1 << bits):
        raise _bad(path, f"value {text!r} does not fit in {bits} bits")
    return v


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None or text == "":
        return None
    try:
        return int(text, 0)
    except ValueError:
        raise _bad(path, f"expected an integer, got {text[:40]!r}") from None


def _read_speed(path: Path) -> float | None:
    text = _read_text(path)
    if not text:
        return None
    tok = text.split()[0]
    try:
        return float(tok)
    except ValueError:
        return None   # "Unknown" / "Unknown speed"


def _read_link(path: Path) -> str | None:
    """Target of a sysfs link: a real symlink, or a flattened capture's text file."""
    if path.is_symlink():
        return os.readlink(path)
    if path.is_file():
        text = _read_text(path) or ""
        if not text or "\n" in text or len(text) > 4096:
            raise _bad(path, "expected a symlink (or a file holding its target path)")
        return text
    return None


def _link_basename(path: Path) -> str | None:
    tgt = _read_link(path)
    if tgt is None:
        return None
    return os.path.basename(os.path.normpath(tgt))


def read_cpuinfo(root: Path) -> tuple[CpuInfo, str | None]:
    """Parse ``root/proc/cpuinfo`` (first CPU): vendor, family, model name.

    Returns:
        ``(CpuInfo, note)``; the note says what was missing (non-x86 or no file).

    Model-only: parses /proc/cpuinfo (arch/x86/kernel/cpu/proc.c output) for the host-bridge
    whitelist.
    """
    path = root / "proc" / "cpuinfo"
    text = _read_text(path)
    if text is None:
        return CpuInfo(), f"{path} not found: CPU unknown, the AMD Zen rule does not apply"
    vendor, family, model = "", None, ""
    for line in text.splitlines():
        if ":" not in line:
            if line.strip() == "" and vendor:
                break   # end of the first processor block
            continue
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if k == "vendor_id" and not vendor:
            vendor = v
        elif k == "cpu family" and family is None:
            try:
                family = int(v, 0)
            except ValueError:
                raise _bad(path, f"'cpu family' is {v!r}, not a number") from None
        elif k == "model name" and not model:
            model = v
    note = None
    if not vendor:
        note = f"{path}: no vendor_id (not an x86 CPU): cpu_supports_p2pdma() is false"
    return CpuInfo(vendor_id=vendor, family=family or 0, model_name=model), note


def _parse_resource(path: Path) -> list[Bar]:
    text = _read_text(path)
    if text is None:
        return []
    bars: list[Bar] = []
    for i, line in enumerate(text.splitlines()[:PCI_STD_NUM_BARS]):
        parts = line.split()
        if len(parts) != 3:
            raise _bad(path, f"line {i + 1}: expected 'start end flags', got {line[:60]!r}")
        try:
            start, end, flags = (int(p, 16) for p in parts)
        except ValueError:
            raise _bad(path, f"line {i + 1}: not hex numbers: {line[:60]!r}") from None
        if flags == 0 or (start == 0 and end == 0) or end < start:
            continue
        if flags & (IORESOURCE_UNSET | IORESOURCE_DISABLED) or start == 0:
            continue   # not assigned: no CPU address to model
        if not flags & (IORESOURCE_MEM | IORESOURCE_IO):
            continue
        bars.append(Bar(index=i, start=start, size=end - start + 1, flags=flags))
    return bars


def load_sysfs(root: str | os.PathLike[str] = "/") -> Topology:
    """Build a :class:`Topology` from a sysfs tree (``/`` = the running machine).

    Args:
        root: directory laid out like ``/`` (``sys/bus/pci/devices``, ``sys/devices``,
            ``proc/cpuinfo``).

    Context:
        Reads files only; no locks. Fast enough for thousands of functions.

    Returns:
        A finalized topology; ``topology.log`` holds the ``added peer-to-peer DMA memory`` lines
        of re-created providers, ``topology.notes`` what the loader had to guess.

    Raises:
        DmaBufError(ENOENT): no ``sys/bus/pci/devices`` under ``root``, a link target missing,
            a required attribute missing. (EINVAL): malformed attribute, link or config file.
            (EEXIST): the same function reached twice.

    Model-only: reads the kernel's sysfs output (drivers/pci/pci-sysfs.c) back into a Topology.
    """
    rootp = Path(root)
    devdir = rootp / "sys" / "bus" / "pci" / "devices"
    if not devdir.is_dir():
        raise DmaBufError(errno.ENOENT, f"{devdir}: not a directory; {rootp} is not a sysfs root "
                          "laid out like / (expected sys/bus/pci/devices)")
    cpu, cpu_note = read_cpuinfo(rootp)
    topo = Topology(cpu=cpu, source=f"sysfs:{rootp}")
    if cpu_note:
        topo.notes.append(cpu_note)
    entries = sorted(p for p in devdir.iterdir() if not p.name.startswith("."))
    seen_dirs: dict[str, str] = {}
    pending: list[tuple[PciDev, Path]] = []
    hb_nodes: dict[tuple[int, int], int | None] = {}
    parents: dict[str, tuple[str, str | None]] = {}   # bdf -> ("hb"|"dev", ref)
    for link in entries:
        if not is_bdf(link.name):
            raise _bad(link, "entry of sys/bus/pci/devices is not a PCI address")
        dom, bus, _slot, _fn = parse_bdf(link.name)
        if link.is_dir() and not link.is_symlink():
            ddir = link
        else:
            tgt = _read_link(link)
            if tgt is None:
                raise _bad(link, "neither a link nor a directory")
            ddir = Path(os.path.normpath(os.path.join(link.parent, tgt)))
            if not ddir.is_dir():
                raise DmaBufError(errno.ENOENT, f"{link}: link target {tgt} ({ddir}) does not "
                                  "exist; the capture is incomplete")
        if ddir.name != link.name:
            raise _bad(link, f"points to {ddir.name}, not to a directory named {link.name}")
        try:
            key = str(ddir.resolve())
        except (OSError, RuntimeError) as e:
            raise DmaBufError(errno.ELOOP, f"{link}: cannot resolve {ddir}: {e}") from None
        if key in seen_dirs:
            raise DmaBufError(errno.EEXIST, f"{link} and {seen_dirs[key]} reach the same "
                              f"function {ddir}")
        seen_dirs[key] = str(link)
        parent_name = ddir.parent.name
        m = _HB_RE.match(parent_name)
        is_vf = (ddir / "physfn").exists() or (ddir / "physfn").is_symlink()
        if is_bdf(parent_name):
            parents[link.name] = ("dev", parent_name)
        elif m:
            hdom, hbus = int(m.group(1), 16), int(m.group(2), 16)
            if (hdom, hbus) != (dom, bus) and not is_vf:
                raise _bad(ddir, f"sits on root bus {parent_name} but its address is on "
                           f"{dom:04x}:{bus:02x}")
            parents[link.name] = ("hb", parent_name)
        else:
            raise _bad(ddir, f"parent directory {parent_name!r} is neither a PCI function nor a "
                       "pciDDDD:BB host bridge; cannot tell the upstream bridge")
        vendor = _read_hex(ddir / "vendor")
        device = _read_hex(ddir / "device")
        klass = _read_hex(ddir / "class", bits=24)
        assert vendor is not None and device is not None and klass is not None
        revision = _read_hex(ddir / "revision", required=False, bits=8) or 0
        sv = _read_hex(ddir / "subsystem_vendor", required=False) or 0
        sd = _read_hex(ddir / "subsystem_device", required=False) or 0
        node = _read_int(ddir / "numa_node")
        numa = node if node is not None and node >= 0 else None
        cfg_path = ddir / "config"
        pcie_type: PcieType | None = None
        header_type = 1 if (klass >> 8) == 0x0604 else 0
        multifunction = False
        acs: Acs | None = None
        link_info = Link()
        try:
            cfg = cfg_path.read_bytes()
        except FileNotFoundError:
            cfg = None
            topo.notes.append(f"{cfg_path} missing: port type and ACS of {link.name} unknown")
        except OSError as e:
            raise DmaBufError(e.errno or errno.EIO, f"{cfg_path}: cannot read: {e.strerror}"
                              ) from None
        if cfg is not None:
            info = decode_config(cfg, str(cfg_path))
            pcie_type = info.pcie_type
            header_type = info.header_type
            multifunction = info.multifunction
            if info.acs_cap is not None and info.acs_ctrl is not None:
                acs = Acs(cap=info.acs_cap, ctrl=info.acs_ctrl)
            elif len(cfg) <= 64:
                topo.notes.append(f"{cfg_path} is {len(cfg)} bytes (read without root?): "
                                  f"PCIe port type and ACS state of {link.name} unknown")
            elif pcie_type is not None and info.truncated:
                topo.notes.append(f"{cfg_path} is {len(cfg)} bytes: extended config space not "
                                  f"visible, ACS state of {link.name} unknown (read as root)")
            link_info = Link(speed=info.lnksta_speed, width=info.lnksta_width,
                             max_speed=info.lnkcap_speed, max_width=info.lnkcap_width)
        sp = _read_speed(ddir / "current_link_speed")
        if sp is not None or (ddir / "current_link_speed").exists():
            link_info.speed = sp
        wd = _read_int(ddir / "current_link_width")
        if wd is not None:
            link_info.width = wd or None
        msp = _read_speed(ddir / "max_link_speed")
        if msp is not None:
            link_info.max_speed = msp
        mwd = _read_int(ddir / "max_link_width")
        if mwd is not None:
            link_info.max_width = mwd or None
        grp = _link_basename(ddir / "iommu_group")
        if grp is not None and not grp.isdigit():
            raise _bad(ddir / "iommu_group", f"link target ends in {grp!r}, not a group number")
        driver = _link_basename(ddir / "driver")
        physfn = _link_basename(ddir / "physfn")
        if physfn is not None and not is_bdf(physfn):
            raise _bad(ddir / "physfn", f"link target ends in {physfn!r}, not a PCI address")
        if parents[link.name][0] == "hb" and physfn is None:
            hb_key = (dom, bus)
            if hb_nodes.get(hb_key) is None:
                hb_nodes[hb_key] = numa
        try:
            dev = topo.add_device(
                link.name, parent=None, physfn=physfn, vendor=vendor, device=device,
                class_code=klass, pcie_type=pcie_type, header_type=header_type,
                multifunction=multifunction, revision=revision, subsystem_vendor=sv,
                subsystem_device=sd, bars=_parse_resource(ddir / "resource"), acs=acs,
                link=link_info, numa_node=numa, iommu_group=int(grp) if grp else None,
                driver=driver, sysfs_path=str(ddir))
        except TopologyError as e:
            raise DmaBufError(e.errno or errno.EINVAL, f"{ddir}: {e.strerror}") from None
        pending.append((dev, ddir))
    for bdf, (kind, _ref) in parents.items():
        if kind == "hb" and topo._by_bdf[bdf]._physfn_ref is None:
            dom, bus, _s, _f = parse_bdf(bdf)
            if (dom, bus) not in {(h.domain, h.bus) for h in topo.host_bridges}:
                topo.add_host_bridge(dom, bus, numa_node=hb_nodes.get((dom, bus)))
    for dev, _ddir in pending:
        kind, pref = parents[dev.bdf]
        if kind == "dev" and pref is not None:
            ref = pref
            if not topo._by_bdf.get(ref):   # parent directory exists but no bus/pci link
                raise DmaBufError(errno.ENOENT, f"{dev.sysfs_path}: upstream bridge {ref} has no "
                                  f"entry in {devdir}; the capture is incomplete")
            dev._parent_ref = ref
    try:
        topo.finalize()
    except TopologyError as e:
        bad = topo._by_bdf.get(e.device or "")
        where = bad.sysfs_path if bad is not None else str(rootp)
        raise DmaBufError(e.errno or errno.EINVAL, f"{where}: {e.strerror}") from None
    _recreate_providers(topo, pending)
    return topo


def _recreate_providers(topo: Topology, pending: list[tuple[PciDev, Path]]) -> None:
    from dmabuf.pci import p2pdma

    for dev, ddir in pending:
        pdir = ddir / "p2pmem"
        if not pdir.is_dir():
            continue
        size = _read_int(pdir / "size")
        avail = _read_int(pdir / "available")
        published = _read_int(pdir / "published")
        if size is None or size <= 0:
            p2pdma.pcim_p2pdma_init(dev)
            continue
        cands = sorted((b for b in dev.bars.values() if b.is_mem and b.size >= size),
                       key=lambda b: (b.size != size, b.size, b.index))
        if not cands:
            topo.notes.append(f"{pdir}: {size} bytes of p2pmem but no MEM BAR that large; "
                              "provider not re-created")
            continue
        bar = cands[0]
        try:
            p2pdma.pci_p2pdma_add_resource(dev, bar.index, size, 0)
        except DmaBufError as e:
            topo.notes.append(f"{pdir}: could not re-create the provider on BAR{bar.index}: {e}")
            continue
        topo.notes.append(f"{dev.bdf}: p2pmem of {size} bytes modelled on BAR{bar.index} at "
                          "offset 0 (sysfs does not record the BAR)")
        p2pdma.pci_p2pmem_publish(dev, bool(published))
        used = size - (avail if avail is not None else size)
        if used > 0 and p2pdma.pci_alloc_p2pmem(dev, used) is None:
            topo.notes.append(f"{pdir}: could not reserve the {used} bytes in use")
