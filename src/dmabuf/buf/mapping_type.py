"""[PROPOSED] DMA-buf mapping types — the RFC's drivers/dma-buf/dma-buf-mapping.c negotiation.

Jason Gunthorpe's RFC "Add DMA-buf mapping types and convert vfio/iommufd to use them" (v1,
2026-02-17, 26 patches; **not merged** — Christian König objected strongly to the physical
address list type) replaces the implicit contract "map_dma_buf returns an sg_table, and
``attach->peer2peer`` says whether it may hold MMIO" with an explicit negotiation at attach time:

* the importer offers a list of :class:`DmaBufMappingMatch` items (``DMA_BUF_IMAPPING_*``), the
  exporter another (``DMA_BUF_EMAPPING_*``), each naming a :class:`DmaBufMappingType` — a
  singleton such as :data:`MAPPING_SGT` ("DMA Mapped Scatter Gather Table") or :data:`MAPPING_PAL`
  ("Physical Address List");
* :func:`match_mapping` walks the **exporter list in order** (outer loop) and the importer list
  (inner loop); the first pair of the same type whose ``match`` callback returns 0 (or that has
  no callback) wins and its ``finish_match`` runs once; ``-EOPNOTSUPP`` from ``match`` skips the
  pair, any other error aborts; no pair at all is ``-EINVAL``;
* the SGT type's match implements the P2P rule: an exporter item marked
  ``EXPORTER_REQUIRES_P2P_DISTANCE`` matches only an importer that accepts P2P and to which the
  exporting PCI device has a P2P distance (``pci_p2pdma_distance() >= 0``); its finish stores the
  importing DMA device and the P2P flags in the attachment (``attach->dev``, ``peer2peer``);
* the PAL type hands the importer a :class:`~dmabuf.buf.phys_vec.PhysVec` (``struct
  dma_buf_phys_list``) instead of DMA addresses.

The model keeps this **behind an opt-in flag**: ``machine.state(MappingTypeConfig).enabled``
(default False). With it off, :func:`match_mapping` and :func:`mapping_attach` raise
``DmaBufError(EOPNOTSUPP)`` saying how to enable it, so nothing in the merged-kernel model depends
on the RFC.

Callbacks may follow either convention: return an int (0, ``-EOPNOTSUPP``, another ``-errno``) as
the kernel's do, or return None for success and raise :class:`~dmabuf.errors.DmaBufError` for a
failure (``EOPNOTSUPP`` = skip).

Layering: the P2P distance is layer-4 knowledge (``dmabuf.pci``), so an exporter item carries it
as a callable ``p2p_distance(exporting_p2p_device, importing_dma_device) -> int`` supplied by
whoever builds the item (:func:`emapping_sgt_p2p`).

Kernel: RFC include/linux/dma-buf-mapping.h (struct dma_buf_mapping_type, struct
dma_buf_mapping_match, enum dma_sgt_requires_p2p, DMA_BUF_IMAPPING_SGT, DMA_BUF_EMAPPING_SGT[_P2P],
struct dma_buf_phys_list), RFC drivers/dma-buf/dma-buf-mapping.c (dma_buf_match_mapping,
dma_buf_sgt_match, dma_buf_sgt_finish_match, dma_buf_mapping_pal_type), RFC
drivers/dma-buf/dma-buf.c (dma_buf_mapping_attach, dma_buf_sgt_exp_compat_match); spec
kernel-dmabuf-core.md §11.1, §12.6.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dmabuf.buf.device import DmaDev
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine, current_machine

__all__ = [
    "MAPPING_PAL",
    "MAPPING_SGT",
    "DmaBufMappingMatch",
    "DmaBufMappingType",
    "DmaBufMatchArgs",
    "DmaSgtP2p",
    "MappingTypeConfig",
    "PalExpOps",
    "SgtExpOps",
    "SgtMatchData",
    "emapping_pal",
    "emapping_sgt",
    "emapping_sgt_p2p",
    "imapping_pal",
    "imapping_sgt",
    "mapping_attach",
    "match_mapping",
    "require_enabled",
    "sgt_attach",
    "sgt_dma_device",
    "sgt_p2p_allowed",
    "simple_sgt_exp_match",
]


@dataclass
class MappingTypeConfig:
    """Per-machine switch for the proposed mapping-type negotiation (``machine.state(...)``).

    ``enabled`` is False by default: the RFC is not in Linux 7.1.
    """

    machine: Machine
    enabled: bool = False


def require_enabled(machine: Machine | None = None, what: str = "mapping types") -> Machine:
    """Raise unless the RFC extension is enabled on ``machine``; return the machine.

    Raises: DmaBufError(EOPNOTSUPP) when ``machine.state(MappingTypeConfig).enabled`` is False.

    Model-only: the RFC extension is opt-in per machine in the model; the RFC itself has no switch.
    """
    m = machine if machine is not None else current_machine()
    if not m.state(MappingTypeConfig).enabled:
        raise DmaBufError(errno.EOPNOTSUPP, f"{what} are the proposed DMA-buf mapping-type RFC "
                          "(not in Linux 7.1); enable the extension with "
                          "machine.state(MappingTypeConfig).enabled = True")
    return m


class DmaSgtP2p(enum.IntEnum):
    """``enum dma_sgt_requires_p2p`` of the RFC: the P2P flags of an SGT match item."""

    NO_P2P = 0
    EXPORTER_REQUIRES_P2P_DISTANCE = 1
    IMPORTER_ACCEPTS_P2P = 2


@dataclass(eq=False)
class SgtMatchData:
    """The ``sgt_data`` member of a match item (SGT type only).

    Attributes:
        importing_dma_device: the device the exporter must map for (importer side).
        exporting_p2p_device: the PCI function whose MMIO the exporter puts in the table
            (opaque here; only ``p2p_distance`` looks at it).
        importer_accepts_p2p: ``IMPORTER_ACCEPTS_P2P`` or ``NO_P2P``.
        exporter_requires_p2p: ``EXPORTER_REQUIRES_P2P_DISTANCE`` or ``NO_P2P``.
        p2p_distance: model addition — ``pci_p2pdma_distance(exporting, importing)``, < 0 when
            the pair cannot do P2P (supplied by the layer that knows the topology).
    """

    importing_dma_device: DmaDev | None = None
    exporting_p2p_device: Any = None
    importer_accepts_p2p: DmaSgtP2p = DmaSgtP2p.NO_P2P
    exporter_requires_p2p: DmaSgtP2p = DmaSgtP2p.NO_P2P
    p2p_distance: Callable[[Any, Any], int] | None = None


@dataclass(eq=False)
class SgtExpOps:
    """``struct dma_buf_mapping_sgt_exp_ops``: the exporter's SGT map/unmap pair.

    ``map_dma_buf(attach, direction) -> SgTable`` and ``unmap_dma_buf(attach, sgt, direction)``
    — the same contract as the merged ``dma_buf_ops.map_dma_buf`` (called with the resv held).
    """

    map_dma_buf: Callable[[Any, int], Any]
    unmap_dma_buf: Callable[[Any, Any, int], None]


@dataclass(eq=False)
class PalExpOps:
    """``struct dma_buf_mapping_pal_exp_ops``: ``map_phys(attach) -> PhysVec`` and
    ``unmap_phys(attach, phys)`` of the Physical Address List type."""

    map_phys: Callable[[Any], Any]
    unmap_phys: Callable[[Any, Any], None]


@dataclass(eq=False)
class DmaBufMappingMatch:
    """One offer — ``struct dma_buf_mapping_match``: a type, the exporter's ops, type data.

    Compared by identity (the kernel passes pointers to list items to ``finish_match``).
    """

    type: DmaBufMappingType
    exp_ops: Any = None
    sgt_data: SgtMatchData = field(default_factory=SgtMatchData)


@dataclass(eq=False)
class DmaBufMatchArgs:
    """``struct dma_buf_match_args``: what an attach passes to the matching functions."""

    dmabuf: Any = None
    attach: Any = None
    imp_matches: Sequence[DmaBufMappingMatch] = ()


MatchFn = Callable[[Any, DmaBufMappingMatch, DmaBufMappingMatch], "int | None"]
FinishFn = Callable[[DmaBufMatchArgs, DmaBufMappingMatch, DmaBufMappingMatch], None]


@dataclass(eq=False)
class DmaBufMappingType:
    """A mapping type — ``struct dma_buf_mapping_type`` (a singleton per type; identity matters).

    Attributes:
        name: shown in debugfs / describe.
        match: optional ``match(dmabuf, exp, imp)``: 0/None compatible, ``-EOPNOTSUPP`` (or
            raising ``DmaBufError(EOPNOTSUPP)``) skip this pair, other errors abort.
        finish_match: optional ``finish_match(args, exp, imp)``, run once for the winning pair;
            stores the negotiated result in ``args.attach``.
        debugfs_dump: optional ``debugfs_dump(attach) -> str``.
    """

    name: str
    match: MatchFn | None = None
    finish_match: FinishFn | None = None
    debugfs_dump: Callable[[Any], str] | None = None

    def __repr__(self) -> str:
        return f"<DmaBufMappingType {self.name!r}>"


def _call_match(t: DmaBufMappingType, dmabuf: Any, exp: DmaBufMappingMatch,
                imp: DmaBufMappingMatch) -> int:
    """Run ``t.match`` and fold both conventions into a kernel int."""
    if t.match is None:
        return 0
    try:
        ret = t.match(dmabuf, exp, imp)
    except DmaBufError as e:
        return -int(e.errno or errno.EINVAL)
    if ret is None:
        return 0
    if isinstance(ret, bool) or not isinstance(ret, int) or ret > 0:
        raise TypeError(f"{t.name}.match returned {ret!r}: return 0/None, or a negative errno")
    return ret


def match_mapping(args: DmaBufMatchArgs, exp_mappings: Sequence[DmaBufMappingMatch], *,
                  machine: Machine | None = None) -> int:
    """Pick the mapping both sides support — ``dma_buf_match_mapping()`` [RFC].

    Outer loop: the exporter list, in order (the exporter's priority wins); inner loop: the
    importer list. The first pair with the same type whose ``match`` accepts wins; its
    ``finish_match`` is called once with ``(args, exp, imp)``.

    Args:
        args: the importer's offers (``imp_matches``) and the attachment being built.
        exp_mappings: the exporter's offers.
        machine: whose :class:`MappingTypeConfig` is consulted (default: current).
    Context: the RFC calls it from ``ops.match_mapping`` with the dma-buf's resv held; it never
        blocks itself.
    Returns: 0.
    Raises:
        DmaBufError(EOPNOTSUPP): the extension is disabled.
        DmaBufError(EINVAL): either list empty, or no compatible pair.
        DmaBufError(<errno>): a ``match`` callback failed with anything but ``EOPNOTSUPP``.
    Kernel: RFC drivers/dma-buf/dma-buf-mapping.c, dma_buf_match_mapping().
    """
    require_enabled(machine)
    imps = list(args.imp_matches)
    exps = list(exp_mappings)
    if not imps or not exps:
        raise DmaBufError(errno.EINVAL, "dma_buf_match_mapping: the "
                          f"{'importer' if not imps else 'exporter'} offered no mapping type")
    for exp in exps:
        for imp in imps:
            if exp.type is not imp.type:
                continue
            ret = _call_match(exp.type, args.dmabuf, exp, imp)
            if ret == -errno.EOPNOTSUPP:
                continue
            if ret != 0:
                raise DmaBufError(-ret, f"dma_buf_match_mapping: {exp.type.name}.match failed")
            if exp.type.finish_match is not None:
                exp.type.finish_match(args, exp, imp)
            return 0
    names_e = [e.type.name for e in exps]
    names_i = [i.type.name for i in imps]
    raise DmaBufError(errno.EINVAL, f"dma_buf_match_mapping: no compatible mapping type "
                      f"(exporter offers {names_e}, importer accepts {names_i})")


# ---------------------------------------------------------------------- the SGT type


def _sgt_match(dmabuf: Any, exp: DmaBufMappingMatch, imp: DmaBufMappingMatch) -> int:
    """``dma_buf_sgt_match()``: the P2P rule of the SGT type."""
    req = exp.sgt_data.exporter_requires_p2p
    if req == DmaSgtP2p.NO_P2P:
        return 0
    if req == DmaSgtP2p.EXPORTER_REQUIRES_P2P_DISTANCE:
        if exp.sgt_data.exporting_p2p_device is None or exp.sgt_data.p2p_distance is None:
            _warn("dma_buf_sgt_match", "EXPORTER_REQUIRES_P2P_DISTANCE without an exporting "
                  "P2P device / distance function")
            return -errno.EOPNOTSUPP
        if imp.sgt_data.importer_accepts_p2p != DmaSgtP2p.IMPORTER_ACCEPTS_P2P:
            return -errno.EOPNOTSUPP
        if exp.sgt_data.p2p_distance(exp.sgt_data.exporting_p2p_device,
                                     imp.sgt_data.importing_dma_device) < 0:
            return -errno.EOPNOTSUPP
        return 0
    return 0


def _warn(rule: str, message: str) -> None:
    current_machine().warn(rule, message)


def _sgt_finish(args: DmaBufMatchArgs, exp: DmaBufMappingMatch, imp: DmaBufMappingMatch) -> None:
    """``dma_buf_sgt_finish_match()``: store the SGT result (and the compat fields) in attach."""
    attach = args.attach
    if attach is None:
        return
    attach.map_type = DmaBufMappingMatch(
        MAPPING_SGT, exp.exp_ops,
        SgtMatchData(importing_dma_device=imp.sgt_data.importing_dma_device,
                     importer_accepts_p2p=imp.sgt_data.importer_accepts_p2p,
                     exporter_requires_p2p=exp.sgt_data.exporter_requires_p2p))
    # Compatibility fields for importers/exporters unaware of mapping types.
    _set_if_settable(attach, "dev", imp.sgt_data.importing_dma_device)
    _set_if_settable(attach, "peer2peer",
                     imp.sgt_data.importer_accepts_p2p == DmaSgtP2p.IMPORTER_ACCEPTS_P2P)


def _set_if_settable(obj: Any, name: str, value: Any) -> None:
    try:
        setattr(obj, name, value)
    except AttributeError:  # a read-only property on the core's attachment
        pass


def _sgt_dump(attach: Any) -> str:
    dev = sgt_dma_device(attach)
    return f" {dev.name if dev is not None else '?'}"


def _pal_finish(args: DmaBufMatchArgs, exp: DmaBufMappingMatch, imp: DmaBufMappingMatch) -> None:
    """``dma_buf_pal_finish_match()``: the attachment maps to a physical address list."""
    if args.attach is not None:
        args.attach.map_type = DmaBufMappingMatch(MAPPING_PAL, exp.exp_ops)


#: ``dma_buf_mapping_sgt_type``: DMA-mapped scatter-gather tables (today's contract).
MAPPING_SGT = DmaBufMappingType("DMA Mapped Scatter Gather Table", _sgt_match, _sgt_finish,
                                _sgt_dump)
#: ``dma_buf_mapping_pal_type``: a physical address list (``PhysVec``) — restricted to iommufd
#: in the RFC, and the part the dma-buf maintainer refused.
MAPPING_PAL = DmaBufMappingType("Physical Address List", None, _pal_finish)


def imapping_sgt(importing_dma_device: DmaDev, accepts_p2p: bool = False) -> DmaBufMappingMatch:
    """Importer's SGT offer — ``DMA_BUF_IMAPPING_SGT(dev, importer_accepts_p2p)``.

    Kernel: drivers/dma-buf/dma-buf-mapping.c [RFC], DMA_BUF_IMAPPING_SGT().
    """
    return DmaBufMappingMatch(MAPPING_SGT, None, SgtMatchData(
        importing_dma_device=importing_dma_device,
        importer_accepts_p2p=(DmaSgtP2p.IMPORTER_ACCEPTS_P2P if accepts_p2p
                              else DmaSgtP2p.NO_P2P)))


def emapping_sgt(exp_ops: SgtExpOps) -> DmaBufMappingMatch:
    """Exporter's SGT offer without P2P — ``DMA_BUF_EMAPPING_SGT(exp_ops)``.

    Kernel: drivers/dma-buf/dma-buf-mapping.c [RFC], DMA_BUF_EMAPPING_SGT().
    """
    if not isinstance(exp_ops, SgtExpOps):
        raise TypeError("emapping_sgt needs SgtExpOps(map_dma_buf, unmap_dma_buf)")
    return DmaBufMappingMatch(MAPPING_SGT, exp_ops, SgtMatchData())


def emapping_sgt_p2p(exp_ops: SgtExpOps, p2p_device: Any,
                     p2p_distance: Callable[[Any, Any], int]) -> DmaBufMappingMatch:
    """Exporter's SGT offer holding MMIO — ``DMA_BUF_EMAPPING_SGT_P2P(exp_ops, p2p_device)``.

    Matches only importers that accept P2P and for which ``p2p_distance(p2p_device,
    importing_dma_device) >= 0``.

    Kernel: drivers/dma-buf/dma-buf-mapping.c [RFC], DMA_BUF_EMAPPING_SGT_P2P().
    """
    m = emapping_sgt(exp_ops)
    m.sgt_data.exporter_requires_p2p = DmaSgtP2p.EXPORTER_REQUIRES_P2P_DISTANCE
    m.sgt_data.exporting_p2p_device = p2p_device
    m.sgt_data.p2p_distance = p2p_distance
    return m


def imapping_pal() -> DmaBufMappingMatch:
    """Importer's PAL offer — ``DMA_BUF_IMAPPING_PAL()`` (iommufd only, in the RFC).

    Kernel: drivers/dma-buf/dma-buf-mapping.c [RFC], DMA_BUF_IMAPPING_PAL().
    """
    return DmaBufMappingMatch(MAPPING_PAL)


def emapping_pal(exp_ops: PalExpOps) -> DmaBufMappingMatch:
    """Exporter's PAL offer — ``DMA_BUF_EMAPPING_PAL(exp_ops)``.

    Kernel: drivers/dma-buf/dma-buf-mapping.c [RFC], DMA_BUF_EMAPPING_PAL().
    """
    if not isinstance(exp_ops, PalExpOps):
        raise TypeError("emapping_pal needs PalExpOps(map_phys, unmap_phys)")
    return DmaBufMappingMatch(MAPPING_PAL, exp_ops)


def sgt_dma_device(attach: Any) -> DmaDev | None:
    """The device to map for — ``dma_buf_sgt_dma_device(attach)`` (None unless SGT matched).

    Kernel: drivers/dma-buf/dma-buf-mapping.c [RFC], dma_buf_sgt_dma_device().
    """
    mt = getattr(attach, "map_type", None)
    if mt is None or mt.type is not MAPPING_SGT:
        return None
    return mt.sgt_data.importing_dma_device


def sgt_p2p_allowed(attach: Any) -> bool:
    """Whether MMIO may go in the table — ``dma_buf_sgt_p2p_allowed(attach)``: true only when
    an ``EXPORTER_REQUIRES_P2P_DISTANCE`` item matched.

    Kernel: drivers/dma-buf/dma-buf-mapping.c [RFC], dma_buf_sgt_p2p_allowed().
    """
    mt = getattr(attach, "map_type", None)
    if mt is None or mt.type is not MAPPING_SGT:
        return False
    return bool(mt.sgt_data.exporter_requires_p2p == DmaSgtP2p.EXPORTER_REQUIRES_P2P_DISTANCE)


# ---------------------------------------------------------------------- attaching


class _NoDmaDevice:
    """The ``attach->dev == NULL`` of a non-SGT attachment: any DMA-API use is a bug."""

    def __init__(self, phys: Any) -> None:
        self.name = "(no DMA device: non-SGT mapping type)"
        self.phys = phys

    def _bug(self, what: str) -> ContractViolation:
        return ContractViolation("dma_buf_sgt_dma_device", f"{what} on an attachment whose "
                                 "mapping type is not SGT: it has no DMA device")

    def map_ranges(self, phys: Any, direction: int, *, mmio: bool = False) -> Any:
        raise self._bug("map_ranges")

    def unmap_ranges(self, dma: Any, direction: int) -> None:
        raise self._bug("unmap_ranges")

    def translate(self, dma: Any) -> Any:
        raise self._bug("translate")


class _PendingAttach:
    """Receives ``finish_match``'s results before the core creates the real attachment."""

    def __init__(self) -> None:
        self.map_type: DmaBufMappingMatch | None = None
        self.dev: Any = None
        self.peer2peer: bool | None = None


def _compat_exp_match(dmabuf: Any) -> DmaBufMappingMatch:
    """``dma_buf_sgt_exp_compat_match``: route an unaware exporter's map/unmap through SGT."""
    ops = dmabuf.ops
    return emapping_sgt(SgtExpOps(
        map_dma_buf=lambda attach, d: ops._call("map_dma_buf", attach, d),
        unmap_dma_buf=lambda attach, t, d: ops._call("unmap_dma_buf", attach, t, d)))


def mapping_attach(dmabuf: Any, imp_matches: Sequence[DmaBufMappingMatch],
                   importer_ops: Any = None, importer_priv: Any = None) -> Any:
    """Attach with a negotiated mapping type — ``dma_buf_mapping_attach()`` [RFC].

    The exporter's offers come from ``dmabuf.ops.match_mapping(args)`` when its ops define
    that method (it calls :func:`match_mapping` with its list), else from
    ``dmabuf.ops.single_exporter_match`` (``DMA_BUF_SIMPLE_SGT_EXP_MATCH``), else from the
    SGT compatibility item wrapping the exporter's ``map_dma_buf``/``unmap_dma_buf``. The result
    is stored in ``attach.map_type``; for SGT, ``attach.dev`` is the importing device and
    ``attach.peer2peer`` whether the importer accepts P2P (the compatibility fields).

    Model choices: matching runs under the dma-buf's reservation lock (the RFC's exporters
    assert it; review of the RFC found ``dma_buf_mapping_attach`` did not take it), then the
    core's ``dynamic_attach`` creates the attachment — so the exporter's ``attach`` op runs
    before ``attach.map_type`` is set (it is set before this function returns, i.e. before any
    map). A non-SGT attachment gets a placeholder device whose DMA-API use is a
    ContractViolation (the kernel's NULL ``attach->dev``).

    Args:
        dmabuf: the :class:`~dmabuf.buf.dma_buf.DmaBuf`.
        imp_matches: the importer's offers, in its preference order.
        importer_ops: :class:`~dmabuf.buf.dma_buf.DmaBufAttachOps` or None (static).
        importer_priv: the importer's private data.
    Context: must not hold the resv lock (takes it for the match); may block.
    Returns: the new attachment, with ``map_type`` set.
    Raises:
        DmaBufError(EOPNOTSUPP): the extension is disabled.
        DmaBufError(EINVAL): no compatible mapping type; DmaBufError(...): a match callback's
            or the exporter's ``attach`` error.
    Kernel: RFC drivers/dma-buf/dma-buf.c, dma_buf_mapping_attach().
    """
    require_enabled(dmabuf.machine, "dma_buf_mapping_attach")
    pending = _PendingAttach()
    args = DmaBufMatchArgs(dmabuf=dmabuf, attach=pending, imp_matches=list(imp_matches))
    dmabuf.resv.lock(None)
    try:
        custom = getattr(dmabuf.ops, "match_mapping", None)
        if callable(custom):
            ret = custom(args)
            if isinstance(ret, int) and not isinstance(ret, bool) and ret < 0:
                raise DmaBufError(-ret, "match_mapping failed")
        else:
            single = getattr(dmabuf.ops, "single_exporter_match", None)
            exp = single if isinstance(single, DmaBufMappingMatch) else _compat_exp_match(dmabuf)
            match_mapping(args, [exp], machine=dmabuf.machine)
    finally:
        dmabuf.resv.unlock()
    if pending.map_type is None:
        raise ContractViolation("dma_buf_mapping_attach", "matching succeeded but no "
                                "finish_match stored a map_type in the attachment")
    dev = pending.dev if pending.map_type.type is MAPPING_SGT and pending.dev is not None \
        else _NoDmaDevice(getattr(dmabuf.priv, "phys", None))
    attach = dmabuf.dynamic_attach(dev, importer_ops, importer_priv)
    attach.map_type = pending.map_type
    if pending.peer2peer is not None:
        attach.peer2peer = pending.peer2peer
    return attach


def sgt_attach(dmabuf: Any, dev: DmaDev) -> Any:
    """Static SGT attach through the negotiation — ``dma_buf_sgt_attach(dmabuf, dev)`` [RFC].

    ``mapping_attach(dmabuf, [imapping_sgt(dev, accepts_p2p=False)])``.

    Kernel: drivers/dma-buf/dma-buf-mapping.c [RFC], dma_buf_sgt_attach().
    """
    return mapping_attach(dmabuf, [imapping_sgt(dev, False)])


def simple_sgt_exp_match(map_dma_buf: Callable[[Any, int], Any],
                         unmap_dma_buf: Callable[[Any, Any, int], None]) -> DmaBufMappingMatch:
    """``DMA_BUF_SIMPLE_SGT_EXP_MATCH(map, unmap)``: the ``single_exporter_match`` of a simple
    SGT exporter without P2P (set it as ``single_exporter_match`` on the exporter's ops).

    Kernel: drivers/dma-buf/dma-buf-mapping.c [RFC], DMA_BUF_SIMPLE_SGT_EXP_MATCH().
    """
    return emapping_sgt(SgtExpOps(map_dma_buf, unmap_dma_buf))
