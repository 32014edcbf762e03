"""Scenario files: a machine, its devices, buffers, importers and a workload timeline, in TOML.

Kernel: none. A scenario is the input of ``dmabuf run`` / ``dmabuf demo`` / ``dmabuf compare``
(the format is documented in ``docs/scenarios.md``). It says

* **which machine** — a PCI topology (the embedded reference fabric, a topology TOML file, a
  captured sysfs tree ``sysfs:DIR``, or one written inline), the IOMMU mode, the RAM size, ACS
  control words to set at boot, and overrides of the timing model's figures (``[timing]``);
* **which drivers bind where** — ``[[device]]``: a GPU, an RDMA NIC, an accelerator, an NVMe
  controller or vfio-pci on a named endpoint of the topology;
* **which buffers exist and who shares them** — ``[[buffer]]`` (exporter, size, placement) and
  ``[[import]]`` (importing device, importer mode: ``static``, ``pinned``, ``dynamic``, ``odp``,
  ``revocable``, ``hmm``; mapping representation ``sgtable``, ``physvec``, ``iova``);
* **what happens over time** — ``[[stream]]`` transfer streams (size, count, direction,
  concurrency, an optional RDMA peer) and ``[[event]]`` s: memory pressure, eviction, resets,
  revokes, ACS changes.

A file may describe one machine (the keys above at top level) or several (``[[host]]`` tables,
each with its own ``[host.topology]``, ``[[host.device]]``…): the demo runs the same pair on an
allow-listed host and on one that is not.

Validation is complete before anything runs: syntax, unknown keys (typos never pass silently),
types, sizes (negative, zero, larger than the memory they live in), names (unknown or duplicate
devices, buffers, streams), bindings (a GPU driver on a NIC function, two drivers on one function,
a bridge), importer modes a device cannot do, streams over buffers their device did not import,
events naming nothing. Every error is a :class:`ScenarioError` — ``DmaBufError(EINVAL)`` whose
message starts ``file:line:``. ``tomllib`` reports positions only for syntax errors; for the others
the line is found by scanning the text for the n-th table header and the key in it, with the
topology loader's locator (:class:`dmabuf.pci.topo_toml.TomlLocator`, reused, not copied).

The result is an immutable :class:`Scenario` whose hosts carry their already loaded
:class:`~dmabuf.pci.topology.Topology` (loading the topology is part of validating bindings and
sizes). A runner makes its own fresh copy of each topology (:meth:`HostSpec.load_topology`), so
one Scenario can be run many times.
"""

from __future__ import annotations

import errno
import math
import numbers
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dmabuf.errors import DmaBufError
from dmabuf.mm.phys import PAGE_SIZE
from dmabuf.pci.pci_regs import ACS_BITS, acs_bits_from_names
from dmabuf.pci.topo_sysfs import load_sysfs
from dmabuf.pci.topo_toml import TomlLocator, load_toml, loads_toml, parse_size
from dmabuf.pci.topo_toml import default_topology as _default_topology
from dmabuf.pci.topology import PciDev, Topology
from dmabuf.sim.params import TimingParams

__all__ = [
    "ACTIONS",
    "DIRECTIONS",
    "FORMAT_VERSION",
    "HMM_REFUSED",
    "IMPORT_MODES",
    "KINDS",
    "REPRESENTATIONS",
    "BufferSpec",
    "DeviceSpec",
    "EventSpec",
    "HostSpec",
    "ImportSpec",
    "KindInfo",
    "RunOptions",
    "Scenario",
    "ScenarioError",
    "StreamSpec",
    "TopologySpec",
    "demo_scenario_path",
    "load_demo",
    "load_scenario",
    "loads_scenario",
    "parse_duration",
]

FORMAT_VERSION = 1

#: Importer modes (``[[import]] mode``): how the importer attaches and what it does when the
#: exporter moves or revokes the buffer.
IMPORT_MODES: dict[str, str] = {
    "static": "static attach (no importer ops): the core pins a movable exporter on map",
    "pinned": "dynamic attach + dma_buf_pin(): storage never moves (P2P/VRAM pinned)",
    "dynamic": "dynamic attach with invalidate_mappings: unmap on invalidation, remap before "
               "the next DMA",
    "odp": "RDMA on-demand paging MR: invalidation zaps the NIC's translation; the next access "
           "faults and the NIC remaps",
    "revocable": "dma_buf_attach_revocable(): the exporter may revoke (vfio reset); DMA stops",
    "hmm": "HMM mirror of process memory (GPU SVM, NIC ODP on user memory): "
           "hmm_range_fault + mmu interval notifier; the buffer is then process memory, not a "
           "dma-buf",
}
#: Mapping representations (``[[import]] repr``).
REPRESENTATIONS: dict[str, str] = {
    "sgtable": "struct sg_table: 32 bytes per scatterlist entry (+16 per table)",
    "physvec": "struct phys_vec list: 16 bytes per range",
    "iova": "one contiguous IOVA range (dma_iova_try_alloc/link): 16 bytes per transaction",
}
#: Stream directions: what the initiating device does to the buffer.
DIRECTIONS = ("read", "write")
#: Event actions (``[[event]] action``) and the keys each requires.
ACTIONS: dict[str, tuple[str, ...]] = {
    "pressure": ("device", "bytes"),
    "evict": ("buffer",),
    "restore": ("buffer",),
    "reset": ("device",),
    "revoke": ("buffer",),
    "unrevoke": ("buffer",),
    "acs": ("port", "ctrl"),
}


@dataclass(frozen=True)
class KindInfo:
    """What a device kind is: the driver module, the PCI classes it binds to, its memory.

    ``classes``: PCI base classes (``class_code >> 16``) it matches, None for any endpoint.
    ``exports``: buffer placements it can export from (first = default); empty for none.
    ``modes``: importer modes it supports; empty when it does not import.
    ``memory``: how its exportable memory is sized (``"bar"``: its largest prefetchable BAR,
    ``"p2pmem"``: its p2pmem pool).
    """

    driver: str
    classes: tuple[int, ...] | None
    exports: tuple[str, ...]
    modes: tuple[str, ...]
    params: tuple[str, ...]
    memory: str = "bar"
    description: str = ""


#: Device kinds (``[[device]] kind``). The driver is ``module:Class`` under ``dmabuf.devices``.
KINDS: dict[str, KindInfo] = {
    "gpu": KindInfo("dmabuf.devices.gpu:Gpu", (0x03,), ("vram", "gtt"),
                    ("static", "pinned", "dynamic", "hmm"), ("vram", "gtt"),
                    description="amdgpu/TTM-like: VRAM + GTT, eviction, dynamic exporter"),
    "nic": KindInfo("dmabuf.devices.rdma.mlx5_ib:RdmaNic", (0x02,), (),
                    ("pinned", "dynamic", "odp", "revocable", "hmm"), ("odp", "gbps"),
                    description="mlx5-like RDMA NIC: dma-buf MRs pinned, dynamic, ODP, "
                                "pinned-revocable; ODP MRs over user memory (hmm); RDMA "
                                "WRITE/READ between NICs"),
    "accel": KindInfo("dmabuf.devices.accel:Accel", (0x12,), ("hbm",), (), ("hbm",),
                      description="habanalabs-like accelerator: static, pinned HBM exporter"),
    "nvme": KindInfo("dmabuf.devices.nvme:Nvme", (0x01,), ("cmb",), ("static", "pinned"),
                     (), memory="p2pmem",
                     description="NVMe controller: CMB as p2pmem provider, P2P queues"),
    "vfio": KindInfo("dmabuf.devices.vfio:VfioPciDevice", None, ("bar",), (), ("bar",),
                     description="vfio-pci: exports a BAR range as a revocable dma-buf"),
}

_ROOT_KEYS = {"format", "name", "description", "seed", "run", "host"}
_HOST_KEYS = {"name", "description", "topology", "timing", "device", "buffer", "import",
              "stream", "event"}
_RUN_KEYS = {"policy", "wall_timeout", "verify"}
_TOPO_KEYS = {"source", "inline", "iommu", "ram", "acs"}
_DEVICE_KEYS = {"name", "endpoint", "kind", "params", "vram", "gtt", "odp", "gbps", "hbm",
                "bar"}
_BUFFER_KEYS = {"name", "exporter", "size", "placement", "fill"}
_IMPORT_KEYS = {"buffer", "device", "mode", "repr", "expect", "at"}
_STREAM_KEYS = {"name", "device", "buffer", "direction", "size", "count", "concurrency",
                "start", "gap", "peer", "peer_buffer"}
_EVENT_KEYS = {"at", "action", "device", "buffer", "bytes", "port", "ctrl", "note"}
_IOMMU_MODES = ("lazy", "strict", "passthrough", "off")
#: Exporter kinds whose memory no process can map for HMM to mirror, and the kernel's reason
#: (the others — ``system``, ``gpu``, ``nvme`` — are process memory: see dmabuf.sim.svm).
HMM_REFUSED = {
    "accel": "habanalabs device memory cannot be mapped into a process (its dma-buf mmap is "
             "-EINVAL and the driver has no SVM), so there is no process range to mirror",
    "vfio": "a vfio-pci BAR mmap is VM_PFNMAP|VM_IO: hmm_range_fault() returns -EFAULT on it",
}
_FILLS = ("random", "zero", "pattern")
_DEFAULT_RAM = 8 << 30
_DUR_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs|ns)?\s*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-:>+]+$")


class ScenarioError(DmaBufError):
    """A scenario file is wrong: ``DmaBufError(EINVAL)`` with ``path`` and ``line``.

    The message reads ``"<path>:<line>: what is wrong, what to do"``.
    """

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line or 1
        super().__init__(errno.EINVAL, f"{path}:{self.line}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.line, (self.strerror or "").split(": ", 1)[-1]))


def parse_duration(value: Any, what: str) -> float:
    """Seconds from a number or a string with a unit: ``0.5``, ``"10us"``, ``"1.5ms"``, ``"2s"``.

    Args:
        value: an int/float (seconds) or a string ``<number><s|ms|us|µs|ns>``.
        what: how to name the value in the error.
    Context: pure.
    Returns: seconds (finite, >= 0).
    Raises: ValueError naming ``what`` for anything else (negative, NaN, no unit match).
    Kernel: none.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a duration (seconds, or '10us', '1.5ms'), not a bool")
    if isinstance(value, numbers.Real):
        s = float(value)
    elif isinstance(value, str):
        m = _DUR_RE.match(value)
        if not m:
            raise ValueError(f"{what}: cannot read {value!r} as a duration; write e.g. 0.001, "
                             "'10us', '1.5ms', '2s'")
        unit = m.group(2) or "s"
        # Divide by a power of ten (exact) rather than multiply by 1e-6 (inexact): "100us" is
        # then exactly the double nearest 1e-4, as the literal 100e-6 is.
        s = float(m.group(1)) / {"s": 1.0, "ms": 1e3, "us": 1e6, "µs": 1e6, "ns": 1e9}[unit]
    else:
        raise ValueError(f"{what} must be a duration (seconds, or '10us', '1.5ms'), not "
                         f"{type(value).__name__}")
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"{what} = {value!r}: a duration is a finite number of seconds >= 0")
    return s


# ----------------------------------------------------------------------------------------------
# The parsed scenario
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopologySpec:
    """Where a host's PCI topology comes from and how the platform is set up."""

    source: str
    path: str | None
    inline: str | None
    iommu: str
    ram: int
    acs: tuple[tuple[str, int], ...]
    line: int


@dataclass(frozen=True)
class DeviceSpec:
    """``[[device]]``: a driver of ``kind`` bound to ``endpoint`` (its topology name or BDF)."""

    name: str
    endpoint: str
    bdf: str
    kind: str
    params: Mapping[str, Any]
    memory: int
    line: int


@dataclass(frozen=True)
class BufferSpec:
    """``[[buffer]]``: ``size`` bytes exported by ``exporter`` (a device name or ``"system"``)."""

    name: str
    exporter: str
    size: int
    placement: str
    fill: str
    line: int


@dataclass(frozen=True)
class ImportSpec:
    """``[[import]]``: ``device`` attaches to ``buffer`` in ``mode``, mapping as ``repr``.

    ``expect``: an errno name (``"EOPNOTSUPP"``) when the attach or first map is *meant* to fail
    (a negative case the report shows as expected). ``at``: when the importer attaches, in
    modelled seconds from the workload start (0: during setup) — an ACS change before it is seen
    by its P2P decision, not by decisions cached earlier.
    """

    buffer: str
    device: str
    mode: str
    repr: str
    expect: str | None
    line: int
    at: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        """``(buffer, device)``."""
        return (self.buffer, self.device)


@dataclass(frozen=True)
class StreamSpec:
    """``[[stream]]``: ``count`` transfers of ``size`` bytes by ``device`` on ``buffer``.

    ``direction`` ``"read"``: the device DMA-reads the buffer (a NIC sending from GPU memory, an
    NVMe write command); ``"write"``: it DMA-writes into it. With a ``peer`` (an RDMA transfer)
    the bytes go over the network to ``peer``, which writes (``read``) or supplies (``write``)
    ``peer_buffer``. ``concurrency`` transfers are in flight at once; each worker waits ``gap``
    between its transfers. The stream starts at ``start`` seconds of modelled time.
    """

    name: str
    device: str
    buffer: str
    direction: str
    size: int
    count: int
    concurrency: int
    start: float
    gap: float
    peer: str | None
    peer_buffer: str | None
    line: int

    @property
    def total_bytes(self) -> int:
        """Bytes the stream moves: ``size * count``."""
        return self.size * self.count


@dataclass(frozen=True)
class EventSpec:
    """``[[event]]``: ``action`` at ``at`` seconds (see :data:`ACTIONS` for the keys each needs)."""

    at: float
    action: str
    device: str | None
    buffer: str | None
    bytes: int | None
    port: str | None
    ctrl: int | None
    note: str
    line: int
    index: int

    @property
    def label(self) -> str:
        """Short text for reports and plots: ``reset vfio0``, ``pressure gpu0 192MiB``."""
        what = self.device or self.buffer or self.port or ""
        extra = f" {_fmt_size(self.bytes)}" if self.bytes else ""
        return f"{self.action} {what}{extra}".strip()


@dataclass(frozen=True)
class HostSpec:
    """One machine of a scenario: topology, timing figures, devices, buffers, workload."""

    name: str
    description: str
    topology: TopologySpec
    timing: TimingParams
    devices: tuple[DeviceSpec, ...]
    buffers: tuple[BufferSpec, ...]
    imports: tuple[ImportSpec, ...]
    streams: tuple[StreamSpec, ...]
    events: tuple[EventSpec, ...]
    line: int
    topo: Topology = field(repr=False, compare=False)

    def device(self, name: str) -> DeviceSpec:
        """The device called ``name`` (KeyError if none)."""
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    def buffer(self, name: str) -> BufferSpec:
        """The buffer called ``name`` (KeyError if none)."""
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    def import_of(self, buffer: str, device: str) -> ImportSpec | None:
        """The import of ``buffer`` by ``device``, or None."""
        for i in self.imports:
            if i.key == (buffer, device):
                return i
        return None

    def load_topology(self) -> Topology:
        """A fresh copy of this host's topology (the runner mutates ACS and p2pdma state).

        Context: reads files; never blocks on the model.
        Returns: a new :class:`~dmabuf.pci.topology.Topology`.
        Raises: DmaBufError if the source changed on disk since validation.
        Kernel: none.
        """
        return _load_topology_source(self.topology)

    @property
    def total_bytes(self) -> int:
        """Bytes every stream of the host moves."""
        return sum(s.total_bytes for s in self.streams)


@dataclass(frozen=True)
class RunOptions:
    """``[run]``: scheduler policy, the wall-clock limit of a run, whether to verify bytes."""

    policy: str = "random"
    wall_timeout: float = 300.0
    verify: bool = True


@dataclass(frozen=True)
class Scenario:
    """A validated scenario: one or more hosts, a seed, run options, where it came from."""

    name: str
    description: str
    seed: int
    run: RunOptions
    hosts: tuple[HostSpec, ...]
    path: str

    @property
    def total_bytes(self) -> int:
        """Bytes every stream of every host moves."""
        return sum(h.total_bytes for h in self.hosts)

    def with_seed(self, seed: int) -> Scenario:
        """The same scenario with another seed.

        Raises: ValueError for a negative or non-int seed.
        """
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, not {seed!r}")
        return Scenario(self.name, self.description, seed, self.run, self.hosts, self.path)

    def replace_hosts(self, hosts: Iterable[HostSpec]) -> Scenario:
        """The same scenario with other hosts (``dmabuf compare`` builds its variants so)."""
        return Scenario(self.name, self.description, self.seed, self.run, tuple(hosts),
                        self.path)


# ----------------------------------------------------------------------------------------------
# Locating lines
# ----------------------------------------------------------------------------------------------


class _Where:
    """Line numbers of a host's tables: top-level (``[[device]]``) or in the n-th ``[[host]]``."""

    def __init__(self, loc: TomlLocator, host_index: int | None) -> None:
        self.loc = loc
        self.h = host_index

    def host_line(self) -> int | None:
        return 1 if self.h is None else self.loc.table("host", self.h)

    def table(self, name: str, index: int = 0) -> int | None:
        if self.h is None:
            return self.loc.table(name, index)
        return self.loc.subtable("host", self.h, name, index)

    def key(self, start: int | None, key: str) -> int | None:
        if start is None:
            return None
        return self.loc.key(0 if start == 1 and self.h is None else start, key)


class _Ctx:
    def __init__(self, path: str, text: str, base: Path | None) -> None:
        self.path = path
        self.loc = TomlLocator(text)
        self.base = base

    def fail(self, line: int | None, msg: str) -> ScenarioError:
        return ScenarioError(self.path, line, msg)

    def keys(self, table: Mapping[str, Any], allowed: set[str], where: str,
             line: int | None, key_line: Callable[[str], int | None]) -> None:
        for k in table:
            if k not in allowed:
                raise self.fail(key_line(k) or line, f"{where}: unknown key {k!r}; allowed "
                                f"keys: {', '.join(sorted(allowed))}")


def _fmt_size(n: int | None) -> str:
    if n is None:
        return ""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


# ----------------------------------------------------------------------------------------------
# Field readers
# ----------------------------------------------------------------------------------------------


class _Table:
    """One TOML table with its line and key lookups; readers raise located errors."""

    def __init__(self, ctx: _Ctx, where: _Where, data: Mapping[str, Any], line: int | None,
                 what: str, top: bool = False) -> None:
        self.ctx = ctx
        self.where = where
        self.data = data
        self.line = line
        self.what = what
        self.top = top

    def kl(self, key: str) -> int | None:
        if self.top:
            return self.ctx.loc.key(0, key) or self.ctx.loc.table(key) or self.line
        return self.where.key(self.line, key) or self.line

    def check(self, allowed: set[str]) -> None:
        self.ctx.keys(self.data, allowed, self.what, self.line, self.kl)

    def fail(self, key: str | None, msg: str) -> ScenarioError:
        return self.ctx.fail(self.kl(key) if key else self.line, f"{self.what}: {msg}")

    def has(self, key: str) -> bool:
        return key in self.data

    def text(self, key: str, default: str | None = None, *,
             choices: Iterable[str] | None = None, name: bool = False) -> str:
        if key not in self.data:
            if default is None:
                raise self.fail(None, f"missing {key} = \"…\"")
            return default
        v = self.data[key]
        if not isinstance(v, str) or not v:
            raise self.fail(key, f"{key} must be a non-empty string, not {v!r}")
        if name and not _NAME_RE.match(v):
            raise self.fail(key, f"{key} = {v!r}: use letters, digits and _ . - : > + only")
        if choices is not None:
            ch = list(choices)
            if v not in ch:
                raise self.fail(key, f"{key} = {v!r} is not one of: {', '.join(ch)}")
        return v

    def opt_text(self, key: str) -> str | None:
        return self.text(key) if key in self.data else None

    def integer(self, key: str, default: int | None = None, *, lo: int = 0,
                hi: int = (1 << 63) - 1) -> int:
        if key not in self.data:
            if default is None:
                raise self.fail(None, f"missing {key} = <integer>")
            return default
        v = self.data[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(key, f"{key} must be an integer, not {type(v).__name__} {v!r}")
        if not lo <= v <= hi:
            raise self.fail(key, f"{key} = {v} is out of range {lo}..{hi}")
        return v

    def size(self, key: str, default: int | None = None, *, positive: bool = True) -> int:
        if key not in self.data:
            if default is None:
                raise self.fail(None, f"missing {key} = <size> (bytes, or a string like "
                                "'64MiB')")
            return default
        v = self.data[key]
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            raise self.fail(key, f"{key} = {v}: a size cannot be negative")
        if isinstance(v, str) and v.strip().startswith("-"):
            raise self.fail(key, f"{key} = {v!r}: a size cannot be negative")
        try:
            n = parse_size(v, key)
        except ValueError as e:
            raise self.fail(key, str(e)) from None
        if positive and n <= 0:
            raise self.fail(key, f"{key} = {v!r}: must be > 0 bytes")
        return n

    def duration(self, key: str, default: float) -> float:
        if key not in self.data:
            return default
        try:
            return parse_duration(self.data[key], key)
        except ValueError as e:
            raise self.fail(key, str(e)) from None

    def flag(self, key: str, default: bool) -> bool:
        if key not in self.data:
            return default
        v = self.data[key]
        if not isinstance(v, bool):
            raise self.fail(key, f"{key} must be true or false, not {v!r}")
        return v


def _tables(ctx: _Ctx, where: _Where, parent: Mapping[str, Any], key: str,
            parent_line: int | None, what: str) -> list[_Table]:
    """The ``[[key]]`` array of tables of a host, each with its line."""
    v = parent.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ctx.fail(where.key(parent_line, key) or parent_line,
                       f"{key} must be an array of tables [[{key}]]")
    out = []
    for i, d in enumerate(v):
        ln = where.table(key, i)
        if ln is None:  # an inline array: point at the key
            ln = where.key(parent_line, key) or parent_line
        out.append(_Table(ctx, where, d, ln, f"{what} #{i + 1}"))
    return out


# ----------------------------------------------------------------------------------------------
# Topology
# ----------------------------------------------------------------------------------------------


def _load_topology_source(t: TopologySpec) -> Topology:
    if t.inline is not None:
        return loads_toml(t.inline, path=t.source)
    if t.path is None:
        return _default_topology()
    if t.source.startswith("sysfs:"):
        return load_sysfs(t.path)
    return load_toml(t.path)


def _topology(ctx: _Ctx, where: _Where, host: Mapping[str, Any], host_line: int | None
              ) -> tuple[TopologySpec, Topology]:
    raw = host.get("topology", {"source": "default"})
    if isinstance(raw, str):
        raw = {"source": raw}
    line = where.table("topology") or where.key(host_line, "topology") or host_line
    if not isinstance(raw, dict):
        raise ctx.fail(line, "topology must be a table [topology] (source = 'default' | "
                       "'FILE.toml' | 'sysfs:DIR', or inline = '''…''') or a string")
    t = _Table(ctx, where, raw, line, "[topology]")
    t.check(_TOPO_KEYS)
    if t.has("source") and t.has("inline"):
        raise t.fail("inline", "give source or inline, not both")
    iommu = t.text("iommu", "lazy", choices=_IOMMU_MODES)
    ram = t.size("ram", _DEFAULT_RAM)
    if ram % PAGE_SIZE:
        raise t.fail("ram", f"ram = {ram} must be a multiple of the page size ({PAGE_SIZE})")
    inline: str | None = None
    path: str | None = None
    if t.has("inline"):
        inline = t.text("inline")
        src_line = t.kl("inline") or 1
        source = f"{ctx.path}[topology.inline]"
        try:
            topo = loads_toml(inline, path=source)
        except DmaBufError as e:
            msg = e.strerror or str(e)
            m = re.match(re.escape(source) + r":(\d+): (.*)$", msg, re.S)
            if m:
                # The inline text starts on the line after ``inline = '''`` (TOML drops the
                # newline right after the opening quotes).
                raise ctx.fail(src_line + int(m.group(1)), f"inline topology: {m.group(2)}"
                               ) from None
            raise ctx.fail(src_line, f"inline topology: {msg}") from None
    else:
        source = t.text("source", "default")
        try:
            if source == "default":
                topo = _default_topology()
            elif source.startswith("sysfs:"):
                d = source[len("sysfs:"):]
                if not d:
                    raise t.fail("source", "sysfs: needs a directory: source = 'sysfs:DIR'")
                p = Path(d)
                if not p.is_absolute() and ctx.base is not None:
                    p = ctx.base / p
                if not p.is_dir():
                    raise t.fail("source", f"{source!r}: {p} is not a directory (a captured "
                                 "sysfs root laid out like /)")
                path = str(p)
                topo = load_sysfs(path)
            else:
                p = Path(source)
                if not p.is_absolute() and ctx.base is not None:
                    p = ctx.base / p
                if not p.is_file():
                    raise t.fail("source", f"source = {source!r}: no such topology file ({p}); "
                                 "give 'default', a TOML file (relative to the scenario) or "
                                 "'sysfs:DIR'")
                path = str(p)
                topo = load_toml(path)
        except ScenarioError:
            raise
        except DmaBufError as e:
            raise t.fail("source", f"cannot load topology {source!r}: {e.strerror or e}"
                         ) from None
    acs: list[tuple[str, int]] = []
    if t.has("acs"):
        raw_acs = t.data["acs"]
        if not isinstance(raw_acs, list) or not all(isinstance(a, dict) for a in raw_acs):
            raise t.fail("acs", "acs must be an array of tables like [{port = 'dsp0', ctrl = "
                         "['RR', 'CR']}]")
        for a in raw_acs:
            at = _Table(ctx, where, a, t.kl("acs"), "[topology] acs")
            at.check({"port", "ctrl"})
            port = at.text("port")
            acs.append((port, _acs_ctrl(at, topo, port, "ctrl")))
    spec = TopologySpec(source, path, inline, iommu, ram, tuple(acs), line or 1)
    return spec, topo


def _acs_ctrl(t: _Table, topo: Topology, port: str, key: str) -> int:
    try:
        dev = topo.device(port)
    except DmaBufError as e:
        raise t.fail("port", f"port {port!r}: {e.strerror or e}") from None
    if dev.acs is None:
        raise t.fail("port", f"{dev.label} has no ACS capability; pick a port that has one "
                     "(dmabuf topo show lists them)")
    v = t.data.get(key)
    if isinstance(v, list):
        try:
            ctrl = acs_bits_from_names(v, key)
        except DmaBufError as e:
            raise t.fail(key, e.strerror or str(e)) from None
    elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF:
        ctrl = v
    else:
        raise t.fail(key, f"{key} must be a list of ACS bit names ({', '.join(ACS_BITS)}) or a "
                     "16-bit integer")
    if ctrl & ~dev.acs.cap & 0x7F:
        raise t.fail(key, f"{key} enables ACS bits {dev.label} does not offer (cap "
                     f"{dev.acs.cap:#x})")
    return ctrl


# ----------------------------------------------------------------------------------------------
# Devices, buffers, imports, streams, events
# ----------------------------------------------------------------------------------------------


def _device_memory(kind: str, info: KindInfo, pdev: PciDev, params: Mapping[str, Any]) -> int:
    """Bytes of exportable memory of a device (0 when it exports nothing)."""
    if not info.exports:
        return 0
    if info.memory == "p2pmem":
        st = pdev.p2pdma
        if st is not None and st.pool is not None:
            return int(st.pool.size())
        return 0
    bars = [b for b in pdev.bars.values() if b.is_mem]
    if kind == "vfio" and "bar" in params:
        b = pdev.bar(int(params["bar"]))
        return b.size if b is not None and b.is_mem else 0
    pref = [b for b in bars if b.prefetchable] or bars
    return max((b.size for b in pref), default=0)


def _class_text(classes: tuple[int, ...] | None) -> str:
    if classes is None:
        return "any endpoint"
    return "PCI base class " + " or ".join(f"{c:#04x}" for c in classes)


def _devices(ctx: _Ctx, where: _Where, host: Mapping[str, Any], host_line: int | None,
             topo: Topology, ram: int) -> list[DeviceSpec]:
    out: list[DeviceSpec] = []
    seen: dict[str, int | None] = {}
    bound: dict[str, str] = {}
    for t in _tables(ctx, where, host, "device", host_line, "[[device]]"):
        t.check(_DEVICE_KEYS)
        name = t.text("name", name=True)
        t.what = f"device {name!r}"
        if name in seen or name == "system":
            raise t.fail("name", f"duplicate device name {name!r} (first at line "
                         f"{seen.get(name)}); names must be unique and not 'system'")
        seen[name] = t.line
        kind = t.text("kind", choices=KINDS)
        info = KINDS[kind]
        endpoint = t.text("endpoint", name)
        try:
            pdev = topo.device(endpoint)
        except DmaBufError as e:
            raise t.fail("endpoint" if t.has("endpoint") else "name",
                         f"unknown endpoint {endpoint!r}: {e.strerror or e}") from None
        if not pdev.is_endpoint:
            raise t.fail("endpoint" if t.has("endpoint") else "name",
                         f"cannot bind {kind} to {pdev.label}: it is a {pdev.kind()}; drivers "
                         "bind to endpoints")
        if info.classes is not None and (pdev.class_code >> 16) not in info.classes:
            raise t.fail("kind", f"impossible binding: a {kind} driver matches "
                         f"{_class_text(info.classes)}, but {pdev.label} is class "
                         f"{pdev.class_code:06x}; bind the right kind (or 'vfio', which takes "
                         "any endpoint)")
        if pdev.bdf in bound:
            raise t.fail("endpoint" if t.has("endpoint") else "name",
                         f"{pdev.label} is already bound to device {bound[pdev.bdf]!r}; one "
                         "driver per function")
        bound[pdev.bdf] = name
        params: dict[str, Any] = {}
        for k in ("vram", "gtt", "odp", "gbps", "hbm", "bar"):
            if t.has(k) and k not in info.params:
                raise t.fail(k, f"{k} is not a parameter of a {kind} (it takes: "
                             f"{', '.join(info.params) or 'none'})")
        if t.has("vram"):
            params["vram"] = t.size("vram")
        if t.has("gtt"):
            params["gtt"] = t.size("gtt")
            if params["gtt"] > ram:
                raise t.fail("gtt", f"gtt = {_fmt_size(params['gtt'])} is larger than the "
                             f"host's RAM ({_fmt_size(ram)})")
        if t.has("hbm"):
            params["hbm"] = t.size("hbm")
        if t.has("odp"):
            params["odp"] = t.flag("odp", True)
        if t.has("gbps"):
            g = t.data["gbps"]
            if isinstance(g, bool) or not isinstance(g, int | float) or not 0 < g <= 3200:
                raise t.fail("gbps", f"gbps = {g!r}: a NIC line rate in Gb/s (0 < gbps <= 3200)")
            params["gbps"] = float(g)
        if t.has("bar"):
            bar = t.integer("bar", lo=0, hi=5)
            b = pdev.bar(bar)
            if b is None or not b.is_mem:
                raise t.fail("bar", f"{pdev.label} has no memory BAR {bar}")
            params["bar"] = bar
        if t.has("params"):
            extra = t.data["params"]
            if not isinstance(extra, dict):
                raise t.fail("params", "params must be a table of driver parameters")
            for k in extra:
                if k in params:
                    raise t.fail("params", f"params.{k} repeats the device key {k!r}")
            params.update(extra)
        mem = _device_memory(kind, info, pdev, params)
        for k in ("vram", "hbm"):
            if k in params:
                window = _device_memory(kind, info, pdev, {})
                if params[k] > window:
                    raise t.fail(k, f"{k} = {_fmt_size(params[k])} is larger than "
                                 f"{pdev.label}'s memory window ({_fmt_size(window)})")
                mem = params[k]
        if info.exports and mem == 0 and kind != "nvme":
            raise t.fail("endpoint" if t.has("endpoint") else "name",
                         f"{pdev.label} has no memory BAR for a {kind} to export from")
        out.append(DeviceSpec(name, endpoint, pdev.bdf, kind, dict(params), mem, t.line or 1))
    return out


def _buffers(ctx: _Ctx, where: _Where, host: Mapping[str, Any], host_line: int | None,
             devices: dict[str, DeviceSpec], ram: int) -> list[BufferSpec]:
    out: list[BufferSpec] = []
    seen: dict[str, int | None] = {}
    used: dict[str, int] = {}
    for t in _tables(ctx, where, host, "buffer", host_line, "[[buffer]]"):
        t.check(_BUFFER_KEYS)
        name = t.text("name", name=True)
        t.what = f"buffer {name!r}"
        if name in seen:
            raise t.fail("name", f"duplicate buffer name {name!r} (first at line {seen[name]})")
        seen[name] = t.line
        exporter = t.text("exporter")
        size = t.size("size")
        if size % PAGE_SIZE:
            raise t.fail("size", f"size = {size} is not a multiple of the page size "
                         f"({PAGE_SIZE}); dma-bufs are page-granular")
        fill = t.text("fill", "random", choices=_FILLS)
        if exporter == "system":
            placement = t.text("placement", "ram", choices=("ram",))
            cap, what = ram, "the host's RAM"
            evictable = False
        else:
            if exporter not in devices:
                raise t.fail("exporter", f"unknown exporter {exporter!r}; devices: "
                             f"{', '.join(devices) or 'none'} (or 'system' for the system heap)")
            dev = devices[exporter]
            info = KINDS[dev.kind]
            if not info.exports:
                raise t.fail("exporter", f"a {dev.kind} does not export dma-bufs; exporters "
                             "are gpu, accel, nvme, vfio devices or 'system'")
            placement = t.text("placement", info.exports[0], choices=info.exports)
            if placement == "gtt":
                cap = int(dev.params.get("gtt", ram))
                what = f"{exporter}'s GTT"
            else:
                cap = dev.memory
                what = f"{exporter}'s {placement.upper()} ({_fmt_size(cap)})"
            evictable = dev.kind == "gpu"
        if size > cap:
            raise t.fail("size", f"size = {_fmt_size(size)} is larger than {what} "
                         f"({_fmt_size(cap)})")
        if not evictable:
            key = f"{exporter}:{placement}"
            used[key] = used.get(key, 0) + size
            if used[key] > cap:
                raise t.fail("size", f"buffers of {exporter} ({placement}) add up to "
                             f"{_fmt_size(used[key])}, more than {what} ({_fmt_size(cap)}); "
                             "this memory cannot be evicted")
        out.append(BufferSpec(name, exporter, size, placement, fill, t.line or 1))
    return out


def _imports(ctx: _Ctx, where: _Where, host: Mapping[str, Any], host_line: int | None,
             devices: dict[str, DeviceSpec], buffers: dict[str, BufferSpec]
             ) -> list[ImportSpec]:
    out: list[ImportSpec] = []
    seen: dict[tuple[str, str], int | None] = {}
    for t in _tables(ctx, where, host, "import", host_line, "[[import]]"):
        t.check(_IMPORT_KEYS)
        buf = t.text("buffer")
        dev = t.text("device")
        t.what = f"import of {buf!r} by {dev!r}"
        if buf not in buffers:
            raise t.fail("buffer", f"unknown buffer {buf!r}; buffers: "
                         f"{', '.join(buffers) or 'none'}")
        if dev not in devices:
            raise t.fail("device", f"unknown device {dev!r}; devices: "
                         f"{', '.join(devices) or 'none'}")
        d = devices[dev]
        info = KINDS[d.kind]
        if not info.modes:
            raise t.fail("device", f"a {d.kind} does not import dma-bufs")
        if buffers[buf].exporter == dev:
            raise t.fail("device", f"{dev} exports {buf!r}; a device does not import its own "
                         "buffer")
        mode = t.text("mode", "dynamic" if "dynamic" in info.modes else info.modes[0],
                     choices=IMPORT_MODES)
        if mode not in info.modes:
            raise t.fail("mode", f"a {d.kind} cannot import in mode {mode!r}; it supports: "
                         f"{', '.join(info.modes)}")
        exp_dev = devices.get(buffers[buf].exporter)
        if exp_dev is not None and exp_dev.kind == "vfio" and mode != "revocable" \
                and t.data.get("expect") is None:
            raise t.fail("mode", f"{buf!r} is a vfio-pci dma-buf: vfio-pci accepts only "
                         "revocable importers (mode = 'revocable'); to show the refusal, add "
                         "expect = 'EOPNOTSUPP'")
        if exp_dev is not None and exp_dev.kind == "nvme" and (
                d.kind != "nic" or mode not in ("pinned", "hmm")):
            raise t.fail("device" if d.kind != "nic" else "mode",
                         f"{buf!r} is p2pmem of {exp_dev.name}'s CMB (not a dma-buf): it is "
                         "mapped by a NIC with the DMA API, as nvmet-rdma does (mode = "
                         "'pinned'), or mirrored through an mmap of p2pmem (mode = 'hmm')")
        if mode == "hmm":
            ek = exp_dev.kind if exp_dev is not None else "system"
            if ek in HMM_REFUSED:
                raise t.fail("mode", f"{buf!r} cannot be mirrored with HMM: {HMM_REFUSED[ek]}")
        rep = t.text("repr", "sgtable", choices=REPRESENTATIONS)
        expect = t.opt_text("expect")
        if expect is not None:
            e = expect.upper()
            if not e.startswith("E") or not hasattr(errno, e):
                raise t.fail("expect", f"expect = {expect!r} is not an errno name (EPERM, "
                             "EOPNOTSUPP, ENODEV…)")
            expect = e
        if (buf, dev) in seen:
            raise t.fail("buffer", f"{dev} already imports {buf!r} (line {seen[(buf, dev)]})")
        seen[(buf, dev)] = t.line
        at = t.duration("at", 0.0)
        if mode == "hmm" and expect is not None:
            raise t.fail("expect", "an HMM import has no attach or map to fail: HMM mirrors "
                         "fault at the first access; remove expect")
        out.append(ImportSpec(buf, dev, mode, rep, expect, t.line or 1, at))
    # A buffer imported through HMM is process memory, which no kernel path exports as a
    # dma-buf: every importer of it must mirror it.
    for imp in out:
        if imp.mode != "hmm":
            continue
        other = next((o for o in out if o.buffer == imp.buffer and o.mode != "hmm"), None)
        if other is not None:
            raise ctx.fail(max(imp.line, other.line), f"{imp.buffer!r} is imported by "
                           f"{imp.device} through HMM (process memory) and by {other.device} "
                           f"as a dma-buf (mode {other.mode!r}); process memory is not a "
                           "dma-buf: import it with mode = 'hmm' everywhere, or nowhere")
    return out


def _streams(ctx: _Ctx, where: _Where, host: Mapping[str, Any], host_line: int | None,
             devices: dict[str, DeviceSpec], buffers: dict[str, BufferSpec],
             imports: dict[tuple[str, str], ImportSpec]) -> list[StreamSpec]:
    out: list[StreamSpec] = []
    seen: dict[str, int | None] = {}
    for i, t in enumerate(_tables(ctx, where, host, "stream", host_line, "[[stream]]")):
        t.check(_STREAM_KEYS)
        name = t.text("name", f"stream{i}", name=True)
        t.what = f"stream {name!r}"
        if name in seen:
            raise t.fail("name", f"duplicate stream name {name!r} (first at line {seen[name]})")
        seen[name] = t.line
        dev = t.text("device")
        buf = t.text("buffer")
        if dev not in devices:
            raise t.fail("device", f"unknown device {dev!r}; devices: "
                         f"{', '.join(devices) or 'none'}")
        if buf not in buffers:
            raise t.fail("buffer", f"unknown buffer {buf!r}; buffers: "
                         f"{', '.join(buffers) or 'none'}")
        imp = imports.get((buf, dev))
        if imp is None:
            raise t.fail("buffer", f"{dev} does not import {buf!r}; add [[import]] buffer = "
                         f"{buf!r}, device = {dev!r}")
        if imp.expect is not None:
            raise t.fail("buffer", f"the import of {buf!r} by {dev} is expected to fail "
                         f"({imp.expect}); a stream cannot use it")
        start_at = t.duration("start", 0.0)
        pkey = (str(t.data.get("peer_buffer")), str(t.data.get("peer")))
        late = [i for i in (imp, imports.get(pkey)) if i is not None and i.at > start_at]
        if late:
            raise t.fail("start" if t.has("start") else "buffer",
                         f"the stream starts at {start_at * 1e6:g} us, before the import of "
                         f"{late[0].buffer!r} by {late[0].device} attaches (at = "
                         f"{late[0].at * 1e6:g} us); start it later")
        direction = t.text("direction", "read", choices=DIRECTIONS)
        size = t.size("size")
        if size % PAGE_SIZE:
            raise t.fail("size", f"size = {size} is not a multiple of the page size "
                         f"({PAGE_SIZE})")
        if size > buffers[buf].size:
            raise t.fail("size", f"size = {_fmt_size(size)} is larger than buffer {buf!r} "
                         f"({_fmt_size(buffers[buf].size)})")
        count = t.integer("count", 1, lo=1, hi=10_000_000)
        conc = t.integer("concurrency", 1, lo=1, hi=4096)
        if conc > count:
            raise t.fail("concurrency", f"concurrency = {conc} is more than count = {count}")
        start = t.duration("start", 0.0)
        gap = t.duration("gap", 0.0)
        peer = t.opt_text("peer")
        peer_buf = t.opt_text("peer_buffer")
        if (peer is None) != (peer_buf is None):
            raise t.fail("peer" if peer else "peer_buffer", "give both peer and peer_buffer "
                         "(the RDMA peer device and the buffer it reads or writes), or neither")
        if peer is not None and peer_buf is not None:
            if peer not in devices:
                raise t.fail("peer", f"unknown peer device {peer!r}")
            if peer == dev:
                raise t.fail("peer", "peer must be another device")
            for d in (dev, peer):
                if devices[d].kind != "nic":
                    raise t.fail("peer", f"an RDMA transfer needs NICs at both ends; {d} is a "
                                 f"{devices[d].kind}")
            if peer_buf not in buffers:
                raise t.fail("peer_buffer", f"unknown buffer {peer_buf!r}")
            pimp = imports.get((peer_buf, peer))
            if pimp is None:
                raise t.fail("peer_buffer", f"{peer} does not import {peer_buf!r}; add an "
                             "[[import]] for it")
            if pimp.expect is not None:
                raise t.fail("peer_buffer", f"the import of {peer_buf!r} by {peer} is expected "
                             "to fail")
            if size > buffers[peer_buf].size:
                raise t.fail("size", f"size = {_fmt_size(size)} is larger than peer buffer "
                             f"{peer_buf!r} ({_fmt_size(buffers[peer_buf].size)})")
        for b, role in ((buf, "buffer"), (peer_buf, "peer_buffer")):
            ex = devices.get(buffers[b].exporter) if b is not None else None
            if ex is not None and ex.kind == "nvme" and (role != "buffer"
                                                         or direction != "write"):
                raise t.fail(role, f"{b!r} is CMB p2pmem: it is the staging target of an "
                             "nvmet P2P write — use it as buffer with direction = 'write'")
        if devices[dev].kind == "nic" and peer is None:
            raise t.fail("device", f"{dev} is a NIC: its transfers are RDMA operations; give "
                         "peer = <another NIC> and peer_buffer = <a buffer it imports>")
        written = buf if direction == "write" else peer_buf
        if written is not None:
            slots = buffers[written].size // size
            if conc > slots:
                raise t.fail("concurrency", f"concurrency = {conc} writers into {written!r}, "
                             f"which holds only {slots} transfers of {_fmt_size(size)}: "
                             "concurrent writes would overlap")
        out.append(StreamSpec(name, dev, buf, direction, size, count, conc, start, gap, peer,
                              peer_buf, t.line or 1))
    # A buffer a stream writes is that stream's alone: verification compares every byte read
    # with what was last written, which another stream writing (or reading while it is being
    # written) at the same time would make ambiguous.
    users: dict[str, list[StreamSpec]] = {}
    for st in out:
        for b in (st.buffer, st.peer_buffer):
            if b is not None and st not in users.setdefault(b, []):
                users[b].append(st)
    for st in out:
        w = st.buffer if st.direction == "write" else st.peer_buffer
        if w is not None and len(users[w]) > 1:
            other = next(o for o in users[w] if o is not st)
            raise ctx.fail(max(st.line, other.line), f"stream {st.name!r} writes buffer {w!r}, "
                           f"which stream {other.name!r} also uses; give each written buffer "
                           "to one stream")
    return out


def _events(ctx: _Ctx, where: _Where, host: Mapping[str, Any], host_line: int | None,
            devices: dict[str, DeviceSpec], buffers: dict[str, BufferSpec],
            topo: Topology) -> list[EventSpec]:
    out: list[EventSpec] = []
    for i, t in enumerate(_tables(ctx, where, host, "event", host_line, "[[event]]")):
        t.check(_EVENT_KEYS)
        action = t.text("action", choices=ACTIONS)
        t.what = f"event #{i + 1} ({action})"
        at = t.duration("at", 0.0)
        for k in ACTIONS[action]:
            if not t.has(k):
                raise t.fail(None, f"{action} needs {k} = …")
        for k in ("device", "buffer", "bytes", "port", "ctrl"):
            if t.has(k) and k not in ACTIONS[action]:
                raise t.fail(k, f"{k} does not apply to {action} (it takes: "
                             f"{', '.join(ACTIONS[action])})")
        device = t.opt_text("device")
        buffer = t.opt_text("buffer")
        nbytes = t.size("bytes") if t.has("bytes") else None
        port = t.opt_text("port")
        ctrl = _acs_ctrl(t, topo, port, "ctrl") if port is not None else None
        if device is not None:
            if device not in devices:
                raise t.fail("device", f"unknown device {device!r}; devices: "
                             f"{', '.join(devices) or 'none'}")
            kind = devices[device].kind
            if action == "pressure" and kind != "gpu":
                raise t.fail("device", f"memory pressure applies to a GPU's VRAM; {device} is "
                             f"a {kind}")
            if action == "reset" and kind != "vfio":
                raise t.fail("device", f"reset revokes a vfio-pci device's dma-bufs; {device} "
                             f"is a {kind}")
            if action == "pressure" and nbytes is not None and nbytes > devices[device].memory:
                raise t.fail("bytes", f"bytes = {_fmt_size(nbytes)} is more than {device}'s "
                             f"VRAM ({_fmt_size(devices[device].memory)})")
        if buffer is not None:
            if buffer not in buffers:
                raise t.fail("buffer", f"unknown buffer {buffer!r}; buffers: "
                             f"{', '.join(buffers) or 'none'}")
            exp = buffers[buffer].exporter
            kind = devices[exp].kind if exp in devices else "system"
            if action in ("evict", "restore") and kind != "gpu":
                raise t.fail("buffer", f"{action} moves a GPU buffer between VRAM and GTT; "
                             f"{buffer!r} is exported by {exp} ({kind})")
            if action in ("revoke", "unrevoke") and kind != "vfio":
                raise t.fail("buffer", f"{action} applies to vfio-pci dma-bufs; {buffer!r} is "
                             f"exported by {exp} ({kind})")
        note = t.text("note", "")
        out.append(EventSpec(at, action, device, buffer, nbytes, port, ctrl, note,
                             t.line or 1, i))
    out.sort(key=lambda e: (e.at, e.index))
    return out


def _timing(ctx: _Ctx, where: _Where, host: Mapping[str, Any], host_line: int | None
            ) -> TimingParams:
    raw = host.get("timing", {})
    line = where.table("timing") or where.key(host_line, "timing") or host_line
    if not isinstance(raw, dict):
        raise ctx.fail(line, "timing must be a table [timing] of TimingParams overrides")
    t = _Table(ctx, where, raw, line, "[timing]")
    params = TimingParams()
    for k, v in raw.items():
        try:
            params = params.replace(**{k: v})
        except DmaBufError as e:
            raise t.fail(k, e.strerror or str(e)) from None
        except TypeError as e:
            raise t.fail(k, str(e)) from None
    return params


def _host(ctx: _Ctx, where: _Where, host: Mapping[str, Any], default_name: str
          ) -> HostSpec:
    hl = where.host_line()
    top = where.h is None
    if not top:
        ht = _Table(ctx, where, host, hl, f"[[host]] #{(where.h or 0) + 1}")
        ht.check(_HOST_KEYS)
        name = ht.text("name", default_name, name=True)
        desc = ht.text("description", "") if "description" in host else ""
    else:
        name, desc = default_name, ""
    tspec, topo = _topology(ctx, where, host, hl)
    timing = _timing(ctx, where, host, hl)
    devices = _devices(ctx, where, host, hl, topo, tspec.ram)
    dmap = {d.name: d for d in devices}
    buffers = _buffers(ctx, where, host, hl, dmap, tspec.ram)
    bmap = {b.name: b for b in buffers}
    imports = _imports(ctx, where, host, hl, dmap, bmap)
    imap = {i.key: i for i in imports}
    streams = _streams(ctx, where, host, hl, dmap, bmap, imap)
    events = _events(ctx, where, host, hl, dmap, bmap, topo)
    return HostSpec(name, desc, tspec, timing, tuple(devices), tuple(buffers), tuple(imports),
                    tuple(streams), tuple(events), hl or 1, topo)


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def loads_scenario(text: str, *, path: str = "<string>", base: str | Path | None = None
                   ) -> Scenario:
    """Parse and validate a scenario from TOML text — see the module docstring.

    Args:
        text: the file contents.
        path: name used in error messages (and as :attr:`Scenario.path`).
        base: directory relative topology paths are resolved from (default: the directory of
            ``path`` when it names a file, else the current directory).
    Context: pure except for reading topology files; never blocks on the model.
    Returns: a validated :class:`Scenario`.
    Raises: ScenarioError (``DmaBufError(EINVAL)``, message ``"path:line: …"``) for any problem.
    Kernel: none.
    """
    if not isinstance(text, str):
        raise TypeError(f"scenario text must be a str, not {type(text).__name__}")
    if base is None:
        pp = Path(path)
        base = pp.parent if pp.suffix else Path.cwd()
    ctx = _Ctx(path, text, Path(base))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        raise ctx.fail(int(m.group(1)) if m else None, f"invalid TOML: {msg}; fix the syntax"
                       ) from None
    root = _Table(ctx, _Where(ctx.loc, None), data, 1, "top level", top=True)
    multi = "host" in data
    if multi and any(k in data for k in _HOST_KEYS - {"name", "description"}):
        k = next(k for k in data if k in _HOST_KEYS - {"name", "description"})
        raise root.fail(k, f"{k} at top level next to [[host]] tables: put it inside a "
                        "[[host]] (or use no [[host]] for a one-machine scenario)")
    root.check(_ROOT_KEYS if multi else _ROOT_KEYS | _HOST_KEYS)
    fmt = data.get("format")
    if fmt != FORMAT_VERSION:
        raise root.fail("format" if "format" in data else None,
                        f"format = {fmt!r}: a scenario starts with 'format = {FORMAT_VERSION}'")
    name = root.text("name", Path(path).stem if Path(path).suffix else "scenario", name=True)
    desc = root.text("description", "") if "description" in data else ""
    seed = root.integer("seed", 0, lo=0, hi=(1 << 63) - 1)
    run_raw = data.get("run", {})
    run_line = ctx.loc.table("run") or ctx.loc.key(0, "run")
    if not isinstance(run_raw, dict):
        raise ctx.fail(run_line, "run must be a table [run]")
    rt = _Table(ctx, _Where(ctx.loc, None), run_raw, run_line, "[run]")
    rt.check(_RUN_KEYS)
    wall = rt.duration("wall_timeout", 300.0)
    if wall <= 0:
        raise rt.fail("wall_timeout", "wall_timeout must be > 0 seconds")
    run = RunOptions(rt.text("policy", "random", choices=("random", "fifo")), wall,
                     rt.flag("verify", True))
    hosts: list[HostSpec] = []
    if multi:
        raw_hosts = data["host"]
        if not isinstance(raw_hosts, list) or not raw_hosts or not all(
                isinstance(h, dict) for h in raw_hosts):
            raise root.fail("host", "host must be a non-empty array of tables [[host]]")
        names: dict[str, int] = {}
        for i, h in enumerate(raw_hosts):
            hs = _host(ctx, _Where(ctx.loc, i), h, f"host{i}")
            if hs.name in names:
                raise ctx.fail(hs.line, f"duplicate host name {hs.name!r} (first at line "
                               f"{names[hs.name]})")
            names[hs.name] = hs.line
            hosts.append(hs)
    else:
        hosts.append(_host(ctx, _Where(ctx.loc, None), data, name))
    return Scenario(name, desc, seed, run, tuple(hosts), path)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file — see :func:`loads_scenario` and docs/scenarios.md.

    Args:
        path: the TOML file.
    Context: reads files; never blocks on the model.
    Returns: a validated :class:`Scenario`.
    Raises: ScenarioError for any problem in the file; DmaBufError(ENOENT) when it does not
        exist.
    Kernel: none.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DmaBufError(errno.ENOENT, f"{p}: no such scenario file") from None
    except IsADirectoryError:
        raise DmaBufError(errno.EISDIR, f"{p}: is a directory; give a scenario .toml file"
                          ) from None
    except UnicodeDecodeError as e:
        raise ScenarioError(str(p), 1, f"not UTF-8 text ({e.reason}); a scenario is TOML"
                            ) from None
    return loads_scenario(text, path=str(p), base=p.parent)


def demo_scenario_path() -> str:
    """Path of the embedded demo scenario (``dmabuf/data/demo.toml``)."""
    return str(resources.files("dmabuf").joinpath("data", "demo.toml"))


def load_demo() -> Scenario:
    """The embedded demo scenario, validated (what ``dmabuf demo`` runs).

    Raises: ScenarioError if the embedded file is broken (a packaging bug).
    """
    ref = resources.files("dmabuf").joinpath("data", "demo.toml")
    return loads_scenario(ref.read_text(encoding="utf-8"), path="<demo.toml>",
                          base=Path(demo_scenario_path()).parent)
