"""drivers/infiniband/core/umem_dmabuf.c: an RDMA device's view of a dma-buf (``ib_umem_dmabuf``).

An RDMA memory region over a dma-buf does not pin user pages: it *attaches* to the buffer as an
importer and asks the exporter for DMA addresses. :class:`IbUmemDmabuf` is that attachment plus
the window of the buffer the MR covers (``address`` = offset into the buffer, ``length``), in the
four flavours the kernel has:

* **dynamic** (:func:`ib_umem_dmabuf_get`) — ``dma_buf_dynamic_attach`` with the driver's
  ``dma_buf_attach_ops`` (mlx5: ``allow_peer2peer`` and ``invalidate_mappings =
  mlx5_ib_dmabuf_invalidate_cb``). No mapping at attach; the driver maps with
  :func:`ib_umem_dmabuf_map_pages` under the reservation lock and drops the mapping in its
  invalidate callback (:func:`ib_umem_dmabuf_unmap_pages`), remapping on the next HCA page fault.
* **pinned** (:func:`ib_umem_dmabuf_get_pinned`) — attach with ``allow_peer2peer`` only (v7.1:
  no invalidate op, so the attachment is not *revocable*), ``dma_buf_pin`` and map once at
  registration. The exporter must not move the buffer while pinned; an exporter that cannot pin
  (or cannot place the buffer where this device reaches it) fails the registration with its
  errno.
* **pinned revocable** (:func:`ib_umem_dmabuf_get_pinned_revocable_and_lock`, 2026) — pinned, but
  with ``invalidate_mappings = ib_umem_dmabuf_revoke_locked`` so exporters that demand revocable
  importers (vfio-pci) accept it. It returns with the reservation lock **held** so the driver can
  install its ``pinned_revoke`` callback (:func:`ib_umem_dmabuf_set_revoke_locked`) before a
  revoke can run. On revoke the driver stops the hardware first (the callback), then the
  mapping is dropped, the pin released and the umem marked ``revoked``: every later map fails
  with ``-EINVAL``.
* the **ODP-style** use of the dynamic flavour is the driver's business (mlx5 ``odp.c``): this
  module only maps when asked.

Mapping (``ib_umem_dmabuf_map_pages``): ``dma_buf_map_attachment(BIDIRECTIONAL)``, then the
table is trimmed to the page-aligned window ``[ALIGN_DOWN(address), ALIGN(address + length))``
and the caller waits (still under the lock) for the exporter's ``DMA_RESV_USAGE_KERNEL`` fences
— "the pages may not be up to date until the exporter's migration fence signals".

Model notes (deliberate differences, docs/model-vs-kernel.md):

* the kernel trims the exporter's scatterlist *in place* and restores the first/last entry
  before unmapping; the model keeps the table untouched and stores the trimmed window as a
  ``RANGE_DTYPE`` list (:attr:`IbUmemDmabuf.dma`) — same addresses, no mutation to undo;
* at each map the model records which page owners the mapping reaches
  (:attr:`IbUmemDmabuf.owners`, read through the device's own translation) so the HCA's DMA can
  check every page it touches still belongs to them — how a stale translation (an importer that
  ignored an invalidation) is caught instead of silently reading moved-from memory;
* ``-ENOMEM`` is never produced by allocation.

Locking: the dma-buf's reservation lock protects ``sgt``/``dma``/``revoked``/``pinned`` (asserted
where the kernel asserts it). The driver's callbacks run under it.

Kernel: drivers/infiniband/core/umem_dmabuf.c, include/rdma/ib_umem.h (struct ib_umem_dmabuf);
spec kernel-p2p-dma.md §3.1.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from dmabuf.buf.device import DmaDataDirection
from dmabuf.buf.dma_buf import DmaBuf, DmaBufAttachment, DmaBufAttachOps, MapResult, dma_buf_get
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.buf.sg_table import SG_DMA_BUS_ADDRESS, SgTable
from dmabuf.dma.device import DmaDevice
from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE
from dmabuf.mm.ranges import as_ranges, slice_ranges
from dmabuf.sync.dma_resv import DmaResvUsage

if TYPE_CHECKING:
    from dmabuf.devices.rdma.mlx5_ib import RdmaNic

from dmabuf.devices.rdma.ib_verbs import ib_access_writable

__all__ = [
    "IbUmemDmabuf",
    "ib_umem_dmabuf_get",
    "ib_umem_dmabuf_get_pinned",
    "ib_umem_dmabuf_get_pinned_revocable_and_lock",
    "ib_umem_dmabuf_map_pages",
    "ib_umem_dmabuf_release",
    "ib_umem_dmabuf_revoke",
    "ib_umem_dmabuf_revoke_locked",
    "ib_umem_dmabuf_set_revoke_locked",
    "ib_umem_dmabuf_unmap_pages",
    "ib_umem_num_pages",
]

_U64 = 1 << 64
_PAGE_MASK = PAGE_SIZE - 1


def _align_down(x: int) -> int:
    return x & ~_PAGE_MASK


def _align_up(x: int) -> int:
    return (x + _PAGE_MASK) & ~_PAGE_MASK


def ib_umem_num_pages(iova: int, length: int) -> int:
    """Pages a umem of ``length`` bytes at ``iova`` spans — ``ib_umem_num_pages()``.

    Kernel: include/rdma/ib_umem.h, ib_umem_num_dma_blocks(umem, PAGE_SIZE).
    """
    return (_align_up(iova + length) - _align_down(iova)) >> PAGE_SHIFT


class IbUmemDmabuf:
    """One RDMA device's attachment to a dma-buf window — ``struct ib_umem_dmabuf``.

    Built by the ``ib_umem_dmabuf_get*`` functions, never directly.

    Attributes:
        ibdev: the RDMA device (:class:`~dmabuf.devices.rdma.mlx5_ib.RdmaNic`).
        dma_device: the ``struct device`` the buffer is mapped for (the NIC's
            :class:`~dmabuf.dma.device.DmaDevice`, or a data-direct device).
        dmabuf, attach: the buffer and the attachment.
        address: byte offset of the window in the buffer (``umem.address``).
        length: window length (``umem.length``).
        writable: ``ib_access_writable(access)``.
        sgt: what ``map_dma_buf`` returned while mapped, else None.
        dma: the trimmed DMA window (``RANGE_DTYPE``, starting at ``ALIGN_DOWN(address)``) while
            mapped, else None.
        bus_address: per range of :attr:`dma`, whether it is a PCI bus address
            (``SG_DMA_BUS_ADDRESS``: P2P through a switch, bypassing the IOMMU); None unmapped.
        owners: page owners the live mapping reaches (model check, see module docs), or None.
        p2p_map_type: name of the ``PciP2pdmaMapType`` the exporter mapped peer MMIO with
            (``"BUS_ADDR"``, ``"THRU_HOST_BRIDGE"``), None for system memory or unmapped.
        private: the driver's MR (``umem_dmabuf->private``).
        pinned, revoked: as the kernel's bits.
        maps / unmaps: how many times the window was mapped / unmapped (statistics).
    """

    def __init__(self, ibdev: RdmaNic, dma_device: DmaDevice, dmabuf: DmaBuf, address: int,
                 length: int, access: int, _token: object = None) -> None:
        if _token is not _TOKEN:
            raise TypeError("an IbUmemDmabuf is made by ib_umem_dmabuf_get*()")
        self.ibdev = ibdev
        self.dma_device = dma_device
        self.dmabuf = dmabuf
        self.address = address
        self.length = length
        self.access = access
        self.writable = ib_access_writable(access)
        self.attach: DmaBufAttachment | None = None
        self.sgt: MapResult | None = None
        self.dma: np.ndarray | None = None
        self.bus_address: np.ndarray | None = None
        self.owners: frozenset[int] | None = None
        self.p2p_map_type: str | None = None
        self.private: Any = None
        self.pinned = False
        self.revoked = False
        self.pinned_revoke: Callable[[Any], None] | None = None
        self.pinned_revoke_priv: Any = None
        self.maps = 0
        self.unmaps = 0
        self._released = False

    def __repr__(self) -> str:
        state = ("revoked" if self.revoked else "mapped" if self.sgt is not None else "unmapped")
        return (f"<IbUmemDmabuf {self.ibdev.name} -> {self.dmabuf.exp_name}#{self.dmabuf.ino} "
                f"[{self.address:#x}+{self.length:#x}] {state}{' pinned' if self.pinned else ''}>")

    @property
    def npages(self) -> int:
        """``ib_umem_num_pages()`` of the window."""
        return ib_umem_num_pages(self.address, self.length)

    @property
    def resv(self) -> Any:
        """The buffer's reservation object."""
        return self.dmabuf.resv

    def describe(self) -> dict[str, Any]:
        """Snapshot for reports and tests.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {"device": self.ibdev.name, "dmabuf": self.dmabuf.ino,
                "exporter": self.dmabuf.exp_name, "address": self.address,
                "length": self.length, "mapped": self.sgt is not None, "pinned": self.pinned,
                "revoked": self.revoked, "maps": self.maps, "unmaps": self.unmaps,
                "nranges": 0 if self.dma is None else int(self.dma.size),
                "bus_ranges": 0 if self.bus_address is None else int(self.bus_address.sum()),
                "peer2peer": None if self.attach is None else self.attach.peer2peer}


_TOKEN = object()


def _check_u64(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    v = int(value)
    if not 0 <= v < _U64:
        raise DmaBufError(errno.EINVAL, f"{what} {v:#x} is not a 64-bit unsigned value")
    return v


def _resolve_dmabuf(fd: int | DmaBuf, machine: Any) -> DmaBuf:
    """``dma_buf_get(fd)`` — or take a reference on a kernel-side DmaBuf handed directly."""
    if isinstance(fd, DmaBuf):
        return fd.get()
    if isinstance(fd, bool) or not isinstance(fd, (int, np.integer)):
        raise TypeError(f"fd must be a dma-buf fd (int) or a DmaBuf, not {type(fd).__name__}")
    return dma_buf_get(int(fd), machine)


def _get(ibdev: RdmaNic, dma_device: DmaDevice, offset: int, size: int, fd: int | DmaBuf,
         access: int, ops: DmaBufAttachOps | None, *, require_invalidate: bool) -> IbUmemDmabuf:
    offset = _check_u64(offset, "offset")
    size = _check_u64(size, "size")
    end = offset + size
    if end >= _U64:
        raise DmaBufError(errno.EINVAL, f"offset {offset:#x} + size {size:#x} overflows 64 bits")
    if require_invalidate and (ops is None or not ops.has_invalidate_mappings):
        raise DmaBufError(errno.EINVAL, "ib_umem_dmabuf_get: a dynamic dma-buf umem needs "
                          "attach ops with invalidate_mappings")
    dmabuf = _resolve_dmabuf(fd, ibdev.machine)
    try:
        if dmabuf.size < end:
            raise DmaBufError(errno.EINVAL, f"the dma-buf has {dmabuf.size:#x} bytes; the MR "
                              f"needs [{offset:#x}, {end:#x}): register a smaller window")
        umem = IbUmemDmabuf(ibdev, dma_device, dmabuf, offset, size, access, _token=_TOKEN)
        if ib_umem_num_pages(0, size) == 0:
            raise DmaBufError(errno.EINVAL, "a dma-buf MR of length 0 covers no page")
        umem.attach = dmabuf.dynamic_attach(dma_device, ops, umem)
    except BaseException:
        dmabuf.put()
        raise
    ibdev.machine.trace.emit("ib_umem_dmabuf_get", device=ibdev.name, ino=dmabuf.ino,
                             offset=offset, length=size, ops=repr(ops))
    return umem


def ib_umem_dmabuf_get(ibdev: RdmaNic, offset: int, size: int, fd: int | DmaBuf, access: int,
                       ops: DmaBufAttachOps, *,
                       dma_device: DmaDevice | None = None) -> IbUmemDmabuf:
    """Attach dynamically to a dma-buf window — ``ib_umem_dmabuf_get()`` (``_with_dma_device``).

    Order of checks (as the kernel): ``offset + size`` overflow → ``-EINVAL``; ops without
    ``invalidate_mappings`` → ``-EINVAL``; ``dma_buf_get(fd)`` (``-EBADF``, ``-EINVAL`` not a
    dma-buf); buffer smaller than ``offset + size`` → ``-EINVAL``; zero pages → ``-EINVAL``;
    ``dma_buf_dynamic_attach`` (the exporter may refuse). Nothing is mapped yet.

    Args:
        ibdev: the RDMA device.
        offset: window start in the buffer (u64).
        size: window length (u64).
        fd: a dma-buf fd of the current process, or a :class:`DmaBuf` (a kernel user's
            reference; one more reference is taken).
        access: ``IB_ACCESS_*`` (only ``writable`` is derived here).
        ops: the driver's attach ops (must have ``invalidate_mappings``).
        dma_device: the device to map for (default: ``ibdev.dma``).
    Context: must not hold the buffer's reservation lock (attach takes it); may block.
    Returns: the unmapped :class:`IbUmemDmabuf` (holding a buffer reference).
    Raises: DmaBufError(EINVAL / EBADF / what the exporter's attach raises); TypeError.
    Kernel: drivers/infiniband/core/umem_dmabuf.c, ib_umem_dmabuf_get_with_dma_device().
    """
    return _get(ibdev, dma_device or ibdev.dma, offset, size, fd, access, ops,
                require_invalidate=True)


def _record_mapping(umem: IbUmemDmabuf, sgt: MapResult) -> None:
    """Trim the exporter's table to the umem window; remember bus flags and page owners."""
    if isinstance(sgt, SgTable):
        full = sgt.dma_ranges()
        flags = sgt.dma_flags()
    elif isinstance(sgt, PhysVec):
        full = as_ranges(sgt.ranges)
        flags = np.zeros(full.size, dtype=np.uint32)
    else:  # pragma: no cover - the core checks the type
        raise ContractViolation("map_dma_buf", f"unexpected map result {type(sgt).__name__}")
    nz = full["len"] != 0
    if not bool(nz.all()):
        full, flags = full[nz], flags[nz]
    start = _align_down(umem.address)
    end = _align_up(umem.address + umem.length)
    window = slice_ranges(full, start, end - start)
    umem.dma = window
    umem.bus_address = _bus_flags(umem.dma_device, full, flags, start, end, window.size)
    umem.owners = _owners(umem.dma_device, window)
    orig = getattr(sgt, "original", None) or sgt
    rec = getattr(umem.dma_device, "dma_buf_dma", {}).get(id(orig))
    mt = getattr(rec, "map_type", None)
    umem.p2p_map_type = None if mt is None else str(mt.name)


def _bus_flags(dev: DmaDevice, full: np.ndarray, flags: np.ndarray, start: int, end: int,
               n: int) -> np.ndarray:
    """Per window range: is it a PCI bus address (routed by a switch, not the IOMMU)?

    ``SG_DMA_BUS_ADDRESS`` when the exporter's mapping set it (``dma_buf_phys_vec_to_sgt``,
    ``dma_map_sgtable``); otherwise — a table built from per-block ``dma_map_resource`` /
    ``dma_map_phys`` results (habanalabs), which the kernel never marks — the device's
    :meth:`~dmabuf.dma.device.DmaDevice.bus_address_mask`, the decode its own ``translate``
    applies.
    """
    lens = full["len"]
    starts = np.concatenate(([0], np.cumsum(lens, dtype=np.uint64)[:-1])) if full.size else \
        np.zeros(0, dtype=np.uint64)
    first = int(np.searchsorted(starts, np.uint64(start), side="right")) - 1
    idx = np.arange(first, first + n)
    bus = (flags[idx] & SG_DMA_BUS_ADDRESS) != 0
    if bool(bus.all()):
        return bus
    return bus | dev.bus_address_mask(full[idx])


def _owners(dev: DmaDevice, dma: np.ndarray) -> frozenset[int] | None:
    """Owners of the pages a DMA window reaches now (the model's stale-translation check)."""
    if dma.size == 0:
        return None
    try:
        phys = dev.translate(dma)
    except IommuFault:
        return None
    vals = np.unique(dev.phys.owners_of(phys))
    live = frozenset(int(v) for v in vals.tolist() if v > 0)
    return live or None


def ib_umem_dmabuf_map_pages(umem: IbUmemDmabuf) -> None:
    """Map the window and wait for the exporter's kernel fences — ``ib_umem_dmabuf_map_pages()``.

    If the umem is already mapped only the fence wait is done. Otherwise
    ``dma_buf_map_attachment(BIDIRECTIONAL)``, trim to the page-aligned window, then wait
    (uninterruptibly, no timeout) for ``DMA_RESV_USAGE_KERNEL`` fences: a migration the exporter
    queued must finish before the device touches the pages.

    Context: the buffer's reservation lock must be held (asserted); may block.
    Raises:
        DmaBufError(EINVAL): the umem was revoked.
        DmaBufError(ETIMEDOUT): the fence wait timed out (cannot happen with no timeout; kept
            for the kernel's branch).
        DmaBufError(...): what ``map_dma_buf`` raised (-ENODEV revoked exporter, -EREMOTEIO …).
        ContractViolation: lock not held; released umem.
    Kernel: drivers/infiniband/core/umem_dmabuf.c, ib_umem_dmabuf_map_pages().
    """
    _check_live(umem, "ib_umem_dmabuf_map_pages")
    umem.resv.assert_held()
    if umem.revoked:
        raise DmaBufError(errno.EINVAL, f"{umem.ibdev.name}: the dma-buf MR was revoked; "
                          "register a new one")
    if umem.sgt is None:
        assert umem.attach is not None
        sgt = umem.attach.map(DmaDataDirection.BIDIRECTIONAL)
        try:
            _record_mapping(umem, sgt)
        except BaseException:
            umem.attach.unmap(sgt, DmaDataDirection.BIDIRECTIONAL)
            umem.dma = umem.bus_address = None
            umem.owners = None
            raise
        umem.sgt = sgt
        umem.maps += 1
        umem.ibdev.machine.trace.emit("ib_umem_dmabuf_map_pages", device=umem.ibdev.name,
                                      ino=umem.dmabuf.ino, nranges=int(umem.dma.size)
                                      if umem.dma is not None else 0)
    ret = umem.resv.wait_timeout(DmaResvUsage.KERNEL, False, None)
    if ret == 0:
        raise DmaBufError(errno.ETIMEDOUT, "timed out waiting for the exporter's kernel fences")


def ib_umem_dmabuf_unmap_pages(umem: IbUmemDmabuf) -> None:
    """Drop the window's mapping — ``ib_umem_dmabuf_unmap_pages()``. No-op when unmapped.

    Context: reservation lock held (asserted).
    Kernel: drivers/infiniband/core/umem_dmabuf.c, ib_umem_dmabuf_unmap_pages().
    """
    umem.resv.assert_held()
    if umem.sgt is None:
        return
    assert umem.attach is not None
    sgt = umem.sgt
    umem.sgt = None
    umem.dma = None
    umem.bus_address = None
    umem.owners = None
    umem.p2p_map_type = None
    umem.unmaps += 1
    umem.attach.unmap(sgt, DmaDataDirection.BIDIRECTIONAL)
    umem.ibdev.machine.trace.emit("ib_umem_dmabuf_unmap_pages", device=umem.ibdev.name,
                                  ino=umem.dmabuf.ino)


class _PinnedOps(DmaBufAttachOps):
    """``ib_umem_dmabuf_attach_pinned_ops`` (v7.1): P2P-capable, no invalidate (not revocable)."""

    def __init__(self) -> None:
        super().__init__(allow_peer2peer=True)


class _PinnedRevocableOps(DmaBufAttachOps):
    """``ib_umem_dmabuf_attach_pinned_revocable_ops``: invalidate = revoke_locked."""

    def __init__(self) -> None:
        super().__init__(allow_peer2peer=True)

    def invalidate_mappings(self, attach: DmaBufAttachment) -> None:
        """``ib_umem_dmabuf_revoke_locked(attach)``."""
        ib_umem_dmabuf_revoke_locked(attach)


def _pin_and_map(umem: IbUmemDmabuf) -> None:
    assert umem.attach is not None
    umem.attach.pin()
    umem.pinned = True
    try:
        ib_umem_dmabuf_map_pages(umem)
    except BaseException:
        umem.attach.unpin()
        umem.pinned = False
        raise


def ib_umem_dmabuf_get_pinned(ibdev: RdmaNic, offset: int, size: int, fd: int | DmaBuf,
                              access: int, *,
                              dma_device: DmaDevice | None = None) -> IbUmemDmabuf:
    """Attach, pin and map a dma-buf window — ``ib_umem_dmabuf_get_pinned()``.

    ``_get_with_dma_device`` with the pinned ops (P2P allowed, no invalidate: not revocable),
    then under the reservation lock ``dma_buf_pin`` and :func:`ib_umem_dmabuf_map_pages`. Any
    failure undoes everything (unpin, unlock, release: detach + put) and is re-raised.

    Context: must not hold the reservation lock; may block.
    Returns: the mapped, pinned umem.
    Raises: as :func:`ib_umem_dmabuf_get`; the exporter's ``pin`` error (-ENOMEM no room,
        -EOPNOTSUPP cannot pin…) or ``attach`` error (-EOPNOTSUPP: a revocable importer is
        required, e.g. vfio-pci); the map error (-EREMOTEIO: no P2P path…).
    Kernel: drivers/infiniband/core/umem_dmabuf.c, ib_umem_dmabuf_get_pinned_with_dma_device(),
        ib_umem_dmabuf_get_pinned_and_lock().
    """
    umem = _get_pinned_and_lock(ibdev, dma_device, offset, size, fd, access, _PinnedOps(),
                                require_invalidate=False)
    umem.resv.unlock()
    return umem


def ib_umem_dmabuf_get_pinned_revocable_and_lock(
        ibdev: RdmaNic, offset: int, size: int, fd: int | DmaBuf, access: int, *,
        dma_device: DmaDevice | None = None) -> IbUmemDmabuf:
    """Attach revocably, pin and map; return with the reservation lock **held**.

    ``ib_umem_dmabuf_get_pinned_revocable_and_lock()`` (2026): the attach ops carry
    ``invalidate_mappings = ib_umem_dmabuf_revoke_locked`` so revoking exporters accept the
    importer. The caller finishes creating its MR, installs the hardware-stop callback with
    :func:`ib_umem_dmabuf_set_revoke_locked` and only then unlocks — closing the window in which
    a revoke could find no callback.

    Context: must not hold the lock on entry; holds it on successful return; may block.
    Raises: as :func:`ib_umem_dmabuf_get_pinned` (nothing is held then).
    Kernel: drivers/infiniband/core/umem_dmabuf.c,
        ib_umem_dmabuf_get_pinned_revocable_and_lock().
    """
    return _get_pinned_and_lock(ibdev, dma_device, offset, size, fd, access,
                                _PinnedRevocableOps(), require_invalidate=True)


def _get_pinned_and_lock(ibdev: RdmaNic, dma_device: DmaDevice | None, offset: int, size: int,
                         fd: int | DmaBuf, access: int, ops: DmaBufAttachOps, *,
                         require_invalidate: bool) -> IbUmemDmabuf:
    """Attach, lock, pin and map; return locked — ``ib_umem_dmabuf_get_pinned_and_lock()``.

    Any failure undoes everything (unlock, release: detach + put) and is re-raised.
    """
    umem = _get(ibdev, dma_device or ibdev.dma, offset, size, fd, access, ops,
                require_invalidate=require_invalidate)
    resv = umem.resv
    resv.lock(None)
    try:
        _pin_and_map(umem)
    except BaseException:
        resv.unlock()
        ib_umem_dmabuf_release(umem)
        raise
    return umem


def ib_umem_dmabuf_set_revoke_locked(umem: IbUmemDmabuf, revoke: Callable[[Any], None],
                                     priv: Any) -> None:
    """Install the driver's hardware-stop callback — ``ib_umem_dmabuf_set_revoke_locked()``.

    Context: reservation lock held (asserted).
    Kernel: drivers/infiniband/core/umem_dmabuf.c, ib_umem_dmabuf_set_revoke_locked().
    """
    umem.resv.assert_held()
    umem.pinned_revoke = revoke
    umem.pinned_revoke_priv = priv


def ib_umem_dmabuf_revoke_locked(attach: DmaBufAttachment) -> None:
    """Revoke a pinned-revocable umem from the exporter's invalidation — ``_revoke_locked()``.

    Return if already revoked; call the driver's ``pinned_revoke(priv)`` (the hardware stops
    using the pages); unmap; unpin; mark revoked.

    Context: reservation lock held (the exporter's ``dma_buf_invalidate_mappings``).
    Kernel: drivers/infiniband/core/umem_dmabuf.c, ib_umem_dmabuf_revoke_locked().
    """
    umem: IbUmemDmabuf = attach.importer_priv
    umem.resv.assert_held()
    if umem.revoked:
        return
    if umem.pinned_revoke is not None:
        umem.pinned_revoke(umem.pinned_revoke_priv)
    _revoke_locked_common(umem)


def _revoke_locked_common(umem: IbUmemDmabuf) -> None:
    ib_umem_dmabuf_unmap_pages(umem)
    if umem.pinned:
        assert umem.attach is not None
        umem.attach.unpin()
        umem.pinned = False
    umem.revoked = True
    umem.ibdev.machine.trace.emit("ib_umem_dmabuf_revoke", device=umem.ibdev.name,
                                  ino=umem.dmabuf.ino)


def ib_umem_dmabuf_revoke(umem: IbUmemDmabuf) -> None:
    """Stop using the buffer for good — ``ib_umem_dmabuf_revoke()``.

    Under the reservation lock: if not yet revoked, unmap, unpin if pinned, mark revoked.
    Drivers call it at deregistration after the hardware stopped.

    Context: must not hold the reservation lock (takes it); may block.
    Kernel: drivers/infiniband/core/umem_dmabuf.c, ib_umem_dmabuf_revoke().
    """
    _check_live(umem, "ib_umem_dmabuf_revoke")
    resv = umem.resv
    resv.lock(None)
    try:
        if not umem.revoked:
            _revoke_locked_common(umem)
    finally:
        resv.unlock()


def ib_umem_dmabuf_release(umem: IbUmemDmabuf) -> None:
    """Release the umem: revoke, detach, drop the buffer reference — ``ib_umem_dmabuf_release()``.

    Context: must not hold the reservation lock; may block.
    Raises: ContractViolation("ib_umem_release"): released twice.
    Kernel: drivers/infiniband/core/umem_dmabuf.c, ib_umem_dmabuf_release().
    """
    _check_live(umem, "ib_umem_release")
    if umem.attach is not None:
        ib_umem_dmabuf_revoke(umem)
        umem.dmabuf.detach(umem.attach)
    umem._released = True
    umem.dmabuf.put()


def _check_live(umem: IbUmemDmabuf, what: str) -> None:
    if umem._released:
        raise ContractViolation(what, f"{umem!r} was already released (use after free)")
