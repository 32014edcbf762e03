"""drivers/iommu/iommufd/pages.c + io_pagetable.c: iommufd importing a VFIO MMIO dma-buf.

iommufd gives user space (a VMM) I/O address spaces (IOAS) it fills with ``IOMMU_IOAS_MAP*`` and
attaches devices to; the kernel turns each IOAS into the page tables of the IOMMU domains
(``HWPT_PAGING``) of the attached devices. Since v6.19 ``IOMMU_IOAS_MAP_FILE`` accepts a dma-buf
fd: a VMM maps another device's BAR — exported by vfio-pci — into the guest's IOVA space, so the
guest's assigned device can do peer-to-peer DMA to it. :class:`IommufdCtx` models one ``/dev/iommu``
file context on a :class:`~dmabuf.devices.platform.Platform`:

* **Objects** (``struct iommufd_object``, ids from 1): IOAS (:class:`Ioas`, with its
  ``io_pagetable`` of :class:`IoptArea` s), auto-allocated paging HWPTs (:class:`HwPagetable`,
  an ``UNMANAGED`` :class:`~dmabuf.dma.iommu.IommuDomain` each) and bound devices
  (:class:`IommufdDevice`). Attaching a device to an IOAS puts its
  :class:`~dmabuf.dma.device.DmaDevice` (and its IOMMU group) into the HWPT's domain, so every
  DMA the device issues afterwards is translated by the IOAS's page table — real bytes reach
  the BAR through the IOVA, and an unmapped IOVA is an :class:`~dmabuf.errors.IommuFault`.
* **MAP_FILE of a dma-buf** (``iopt_map_file_pages`` → ``iopt_alloc_dmabuf_pages`` →
  ``iopt_map_dmabuf``): ``dma_buf_dynamic_attach`` with the iommufd misc device and
  ``iopt_dmabuf_attach_revoke_ops`` (``allow_peer2peer``, ``invalidate_mappings =
  iopt_revoke_notify``), then under the resv lock ``dma_buf_pin`` and the vfio "private
  interconnect" :func:`~dmabuf.devices.vfio.vfio_pci_dma_buf_iommufd_map`, which returns the
  buffer's single physical range (``-EOPNOTSUPP`` for a non-VFIO dma-buf or several ranges,
  ``-ENODEV`` when revoked; VFIO's ``attach`` already refuses a revoked buffer with ``-ENODEV``).
  The area's IOVA is then mapped in every domain of the IOAS straight to the BAR's CPU physical
  address (``IOMMU_READ|IOMMU_WRITE|IOMMU_MMIO``): iommufd does not use the P2P map type, the
  guest's IOVA is always translated by the IOMMU. No pinned-page accounting.
* **Revoke** (``iopt_revoke_notify``, the attachment's ``invalidate_mappings``, resv held): under
  ``pages->mutex`` every (area, domain) the pages are mapped into is unmapped at once and the
  pages are marked revoked (``phys.len = 0``). iommufd never mapped the attachment through
  ``dma_buf_map_attachment``, so there is nothing for the exporter to wait for: the IOMMU unmap
  *is* its unmap. Nothing remaps by itself when the exporter un-revokes — the area stays
  unmapped until user space unmaps it and maps the dma-buf again; domains attached later skip
  revoked areas.
* **Release** (``iopt_release_pages``): unpin under the resv lock, ``dma_buf_detach``,
  ``dma_buf_put`` — when the area is unmapped (``IOMMU_IOAS_UNMAP``) or the context closed.
* ``iopt_pages_rw_access`` on dma-buf pages is ``-EINVAL`` (:meth:`IommufdCtx.access_rw`).

IOVA allocation (``iopt_alloc_iova``): first fit from 0, aligned to
``min(roundup_pow_of_two(length), lowest set bit of start)`` (at least a page), avoiding areas and
reserved ranges. Reserved ranges of an IOAS: the x86 MSI window once a device is attached
(``IOMMU_RESV_MSI``) and — model choice — the PCI bus windows of every memory BAR of the
topology, so an automatically chosen IOVA never aliases a peer's BAR (which a switch without ACS
redirect would route peer-to-peer instead of to the IOMMU). A fixed IOVA in a reserved range is
``-EINVAL``, as for any reserved range.

Locking: per IOAS one scheduler lock plays ``iova_rwsem`` + ``domains_rwsem``; per pages a
``mutex``. Order: IOAS lock → pages mutex; resv → pages mutex (the revoke callback). The resv lock
is never taken under the IOAS lock: attach/pin happen before the area is inserted, release after
it was removed.

Kernel: drivers/iommu/iommufd/pages.c (iopt_alloc_dmabuf_pages, iopt_map_dmabuf,
iopt_revoke_notify, iopt_dmabuf_track_domain, iopt_release_pages, iopt_pages_rw_access),
io_pagetable.c (iopt_map_file_pages, iopt_alloc_iova, iopt_check_iova, iopt_unmap_iova,
iopt_table_add_domain, iopt_fill_domain, iopt_table_enforce_dev_resv_regions), ioas.c
(iommufd_ioas_alloc_ioctl, iommufd_ioas_map_file, iommufd_ioas_unmap), device.c
(iommufd_device_bind, iommufd_device_attach, auto domains), main.c (iommufd_global_device),
include/uapi/linux/iommufd.h.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dmabuf.buf.dma_buf import DmaBuf, DmaBufAttachment, DmaBufAttachOps, dma_buf_get
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.devices.base import Device
from dmabuf.devices.vfio import vfio_pci_dma_buf_iommufd_map
from dmabuf.dma.device import DmaDevice
from dmabuf.dma.iommu import (
    IOMMU_MMIO,
    IOMMU_READ,
    IOMMU_WRITE,
    MSI_IOVA_BASE,
    MSI_IOVA_LENGTH,
    IommuDomain,
    IommuDomainType,
)
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.phys import PAGE_SIZE
from dmabuf.sched import SchedLock

if TYPE_CHECKING:
    from dmabuf.devices.platform import Platform

__all__ = [
    "IOMMU_IOAS_MAP_FIXED_IOVA",
    "IOMMU_IOAS_MAP_READABLE",
    "IOMMU_IOAS_MAP_WRITEABLE",
    "HwPagetable",
    "Ioas",
    "IommufdCtx",
    "IommufdDevice",
    "IoptArea",
    "IoptPagesDmabuf",
]

#: include/uapi/linux/iommufd.h, enum iommufd_ioas_map_flags.
IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2
_MAP_FLAGS = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE
_ULONG_MAX = (1 << 64) - 1
#: ``MAX_NPFNS``: the pfn batch counts pages in u32.
MAX_NPFNS = (1 << 32) - 1
#: IOVA space of an iommufd paging domain (48-bit, like the DMA domains).
_IOVA_END = (1 << 48) - 1


def _u64(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(v).__name__}")
    v = int(v)
    if v < 0 or v > _ULONG_MAX:
        raise DmaBufError(errno.EOVERFLOW, f"{what} {v:#x} is not a u64")
    return v


def _roundup_pow_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


@dataclass(eq=False)
class IoptPagesDmabuf:
    """``struct iopt_pages`` of type ``IOPT_ADDRESS_DMABUF`` (+ ``struct iopt_pages_dmabuf``).

    Attributes:
        dmabuf: the buffer (one reference held while the pages live).
        attach: iommufd's dynamic, pinned attachment.
        phys: the exporter's physical range (``struct phys_vec``); ``len == 0`` once revoked.
        start: page-aligned offset of the mapped window in the buffer.
        length: bytes mapped.
        writable: the area may be written through (``IOMMU_WRITE``).
        tracker: (area, hwpt) pairs the pages are mapped into (``iopt_pages_dmabuf_track``).
        revokes: how many times the exporter revoked (statistic).
    """

    dmabuf: DmaBuf
    start: int
    length: int
    writable: bool
    mutex: SchedLock
    attach: DmaBufAttachment | None = None
    paddr: int = 0
    phys_len: int = 0
    tracker: list[tuple[IoptArea, HwPagetable]] = field(default_factory=list)
    revokes: int = 0
    released: bool = False

    @property
    def revoked(self) -> bool:
        """``iopt_dmabuf_revoked()``: the exporter took the memory away (``phys.len == 0``)."""
        return self.phys_len == 0

    @property
    def phys(self) -> PhysVec:
        """The current ``phys_vec`` (empty once revoked)."""
        return PhysVec.contiguous(self.paddr, self.phys_len) if self.phys_len else PhysVec()


@dataclass(eq=False)
class IoptArea:
    """One mapped IOVA range of an IOAS — ``struct iopt_area``.

    Attributes: iova, length, prot (``IOMMU_*`` bits), pages, ioas.
    """

    iova: int
    length: int
    prot: int
    pages: IoptPagesDmabuf
    ioas: Ioas

    @property
    def last(self) -> int:
        """Last IOVA of the area (inclusive, ``iopt_area_last_iova``)."""
        return self.iova + self.length - 1


@dataclass(eq=False)
class HwPagetable:
    """An auto-allocated paging HWPT — ``struct iommufd_hwpt_paging``: one UNMANAGED domain.

    Attributes: id, domain, ioas, devices (bound devices attached to it).
    """

    id: int
    domain: IommuDomain
    ioas: Ioas
    devices: list[IommufdDevice] = field(default_factory=list)


@dataclass(eq=False)
class IommufdDevice:
    """A device bound to the context — ``struct iommufd_device``.

    Attributes: id, dma (its DmaDevice), group (IOMMU group), hwpt (attached page table or
    None), saved_domain (the domain to restore on detach).
    """

    id: int
    dma: DmaDevice
    group: int
    hwpt: HwPagetable | None = None
    saved_domain: IommuDomain | None = None


class Ioas:
    """An I/O address space — ``struct iommufd_ioas`` and its ``struct io_pagetable``.

    Attributes: id; areas (sorted by IOVA); hwpts (the domains it is mapped into); reserved
    (inclusive ``(first, last)`` IOVA ranges no area may use).
    """

    def __init__(self, ctx: IommufdCtx, ioas_id: int) -> None:
        self.ctx = ctx
        self.id = ioas_id
        self.lock = ctx.machine.sched.lock(f"ioas{ioas_id}.iopt")
        self.areas: list[IoptArea] = []
        self.hwpts: list[HwPagetable] = []
        self.reserved: list[tuple[int, int]] = list(ctx._bar_windows)

    def __repr__(self) -> str:
        return f"<Ioas {self.id} areas={len(self.areas)} hwpts={len(self.hwpts)}>"

    # -- IOVA bookkeeping (lock held) ---------------------------------------------------------
    def _busy(self, first: int, last: int) -> tuple[int, int] | None:
        for a in self.areas:
            if a.iova <= last and first <= a.last:
                return (a.iova, a.last)
        return None

    def _reserved_hit(self, first: int, last: int) -> tuple[int, int] | None:
        for r0, r1 in self.reserved:
            if r0 <= last and first <= r1:
                return (r0, r1)
        return None

    def check_iova(self, iova: int, length: int) -> None:
        """``iopt_check_iova()``: alignment, overflow, reserved ranges, existing areas.

        Raises: DmaBufError(EINVAL) for an unaligned IOVA or one hitting a reserved range,
        DmaBufError(EOVERFLOW) when the range wraps, DmaBufError(EEXIST) when it overlaps an
        existing area.
        Kernel: drivers/iommu/iommufd/io_pagetable.c, iopt_check_iova().
        """
        if iova % PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, f"IOVA {iova:#x} is not aligned to the IOAS's "
                              f"{PAGE_SIZE:#x} alignment")
        last = iova + length - 1
        if last > _ULONG_MAX:
            raise DmaBufError(errno.EOVERFLOW, f"IOVA {iova:#x} + {length:#x} overflows")
        hit = self._reserved_hit(iova, last)
        if hit is not None:
            raise DmaBufError(errno.EINVAL, f"IOVA [{iova:#x}, {last:#x}] intersects the "
                              f"reserved range [{hit[0]:#x}, {hit[1]:#x}]")
        if self._busy(iova, last) is not None:
            raise DmaBufError(errno.EEXIST, f"IOVA [{iova:#x}, {last:#x}] is already mapped")

    def alloc_iova(self, start: int, length: int) -> int:
        """``iopt_alloc_iova()``: first fit, aligned as the module docstring says.

        Raises: DmaBufError(EINVAL): length not a page multiple; DmaBufError(ENOSPC): full.

        Kernel: drivers/iommu/iommufd/io_pagetable.c, iopt_alloc_iova().
        """
        if not length or length % PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, f"length {length:#x} must be a non-zero multiple "
                              f"of {PAGE_SIZE:#x}")
        align = _roundup_pow_of_two(length)
        if start:
            align = min(align, start & -start)
        align = max(align, PAGE_SIZE)
        blocked = sorted([(a.iova, a.last) for a in self.areas] + self.reserved)
        iova = 0
        for b0, b1 in blocked:
            if iova + length - 1 < b0:
                break
            if b1 >= iova:
                iova = -(-(b1 + 1) // align) * align
        if iova + length - 1 > _IOVA_END:
            raise DmaBufError(errno.ENOSPC, f"no free IOVA range of {length:#x} bytes")
        return iova

    def describe(self) -> dict[str, Any]:
        """Snapshot: areas, domains, reserved ranges.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {"id": self.id,
                "areas": [{"iova": a.iova, "length": a.length, "prot": a.prot,
                           "dmabuf_ino": a.pages.dmabuf.ino, "revoked": a.pages.revoked,
                           "domains": [h.id for ar, h in a.pages.tracker if ar is a]}
                          for a in self.areas],
                "hwpts": [h.id for h in self.hwpts], "reserved": list(self.reserved)}


class IommufdCtx:
    """One ``/dev/iommu`` file context — ``struct iommufd_ctx`` (see the module docstring).

    Args:
        platform: the machine's platform (its IOMMU groups, physical memory, topology).

    Attributes:
        global_device: the iommufd misc device, the ``dev`` of every dma-buf attachment
            (``iommufd_global_device()``: never used for DMA).

    Kernel: drivers/iommu/iommufd/main.c (iommufd_fops_open, struct iommufd_ctx).
    """

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.machine = platform.machine
        self._lock = self.machine.sched.lock("iommufd.objects")
        self._objects: dict[int, Ioas | HwPagetable | IommufdDevice] = {}
        self._next_id = 1
        self._closed = False
        self.global_device = DmaDevice("iommufd", platform.phys, machine=self.machine)
        wins: list[tuple[int, int]] = []
        for pdev in platform.topology.devices:
            for b in pdev.bars.values():
                if b.is_mem and b.size:
                    wins.append((b.bus_start, b.bus_start + b.size - 1))
        self._bar_windows = sorted(wins)
        self._attach_ops = DmaBufAttachOps(allow_peer2peer=True,
                                           invalidate_mappings=self._revoke_notify)

    def __repr__(self) -> str:
        return f"<IommufdCtx objects={len(self._objects)}{' closed' if self._closed else ''}>"

    # ------------------------------------------------------------------ objects
    def _check_open(self) -> None:
        if self._closed:
            raise DmaBufError(errno.EBADF, "the iommufd context is closed")

    def _new_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def _get(self, obj_id: int, kind: type, what: str) -> Any:
        self._check_open()
        obj = self._objects.get(obj_id) if isinstance(obj_id, int) else None
        if not isinstance(obj, kind):
            raise DmaBufError(errno.ENOENT, f"object {obj_id!r} is not a {what} of this "
                              "iommufd context")
        return obj

    def ioas(self, ioas_id: int) -> Ioas:
        """The IOAS object ``ioas_id``. Raises: DmaBufError(ENOENT).

        Kernel: drivers/iommu/iommufd/iommufd_private.h, iommufd_get_ioas().
        """
        return self._get(ioas_id, Ioas, "IOAS")

    def ioas_alloc(self) -> int:
        """Create an empty IOAS — ``IOMMU_IOAS_ALLOC``. Returns: its id.

        Kernel: drivers/iommu/iommufd/ioas.c, iommufd_ioas_alloc_ioctl().
        """
        self._check_open()
        with self._lock:
            ioas = Ioas(self, self._new_id())
            self._objects[ioas.id] = ioas
        return ioas.id

    # ------------------------------------------------------------------ devices
    def device_bind(self, dev: Device | DmaDevice) -> int:
        """Bind a device to the context — ``iommufd_device_bind()`` (VFIO cdev bind).

        Args: dev: a bound driver (its DMA view is used) or a DmaDevice.
        Returns: the device object id.
        Raises: DmaBufError(ENODEV): no IOMMU on the platform or the device has no IOMMU
            group; DmaBufError(EBUSY): already bound.
        Kernel: drivers/iommu/iommufd/device.c, iommufd_device_bind().
        """
        self._check_open()
        dma = dev.dma if isinstance(dev, Device) else dev
        if not isinstance(dma, DmaDevice):
            raise TypeError(f"dev must be a Device or a DmaDevice, not {type(dev).__name__}")
        group = None
        if self.platform.iommu is not None and self.platform.topology.has_device(dma.name):
            group = self.platform.topology.iommu_group(dma.name)
        if group is None:
            raise DmaBufError(errno.ENODEV, f"{dma.name} has no IOMMU group (no IOMMU on the "
                              "platform?): iommufd needs one")
        with self._lock:
            if any(isinstance(o, IommufdDevice) and o.dma is dma for o in self._objects.values()):
                raise DmaBufError(errno.EBUSY, f"{dma.name} is already bound to this context")
            idev = IommufdDevice(self._new_id(), dma, group)
            self._objects[idev.id] = idev
        return idev.id

    def device_attach(self, dev_id: int, pt_id: int) -> int:
        """Attach a bound device to an IOAS — ``iommufd_device_attach()`` (auto domain).

        Reuses the IOAS's paging HWPT or allocates one (an UNMANAGED domain), enforces the
        device's reserved regions (the MSI window) on the IOAS, fills a new domain with every
        area that is not revoked, and moves the device (and its group) into the domain. A
        device already attached is moved (replace).

        Returns: the HWPT id.
        Raises: DmaBufError(ENOENT): unknown ids; DmaBufError(EADDRINUSE): an existing area
            covers a reserved region of the device.
        Kernel: drivers/iommu/iommufd/device.c, iommufd_device_attach(),
            iommufd_device_auto_get_domain(); io_pagetable.c, iopt_table_add_domain(),
            iopt_table_enforce_dev_resv_regions().
        """
        idev: IommufdDevice = self._get(dev_id, IommufdDevice, "device")
        ioas = self.ioas(pt_id)
        if idev.hwpt is not None:
            if idev.hwpt.ioas is ioas:
                return idev.hwpt.id
            self.device_detach(dev_id)
        msi = (MSI_IOVA_BASE, MSI_IOVA_BASE + MSI_IOVA_LENGTH - 1)
        with ioas.lock:
            if msi not in ioas.reserved:
                hit = ioas._busy(*msi)
                if hit is not None:
                    raise DmaBufError(errno.EADDRINUSE, f"IOVA [{hit[0]:#x}, {hit[1]:#x}] is "
                                      "mapped over the device's MSI window")
                ioas.reserved.append(msi)
            hwpt = ioas.hwpts[0] if ioas.hwpts else None
            if hwpt is None:
                with self._lock:
                    hid = self._new_id()
                dom = IommuDomain(f"iommufd hwpt {hid}", IommuDomainType.UNMANAGED,
                                  machine=self.machine)
                hwpt = HwPagetable(hid, dom, ioas)
                for area in ioas.areas:
                    self._fill_domain(area, hwpt)
                ioas.hwpts.append(hwpt)
                with self._lock:
                    self._objects[hid] = hwpt
            hwpt.devices.append(idev)
        idev.saved_domain = idev.dma.iommu
        idev.hwpt = hwpt
        idev.dma.attach_domain(hwpt.domain)
        if self.platform.iommu is not None:
            self.platform.iommu.set_group_domain(idev.group, hwpt.domain)
        self.machine.trace.emit("iommufd_attach", device=idev.dma.name, ioas=ioas.id,
                                hwpt=hwpt.id)
        return hwpt.id

    def device_detach(self, dev_id: int) -> None:
        """Detach a device from its IOAS — ``iommufd_device_detach()``; back to its old domain.

        The last device of an auto-allocated HWPT destroys it (its domain is removed from the
        IOAS: every area is unmapped from it).

        Raises: DmaBufError(ENOENT): unknown id; DmaBufError(EINVAL): not attached.
        Kernel: drivers/iommu/iommufd/device.c, iommufd_device_detach();
            io_pagetable.c, iopt_table_remove_domain().
        """
        idev: IommufdDevice = self._get(dev_id, IommufdDevice, "device")
        hwpt = idev.hwpt
        if hwpt is None:
            raise DmaBufError(errno.EINVAL, f"{idev.dma.name} is not attached")
        idev.dma.attach_domain(idev.saved_domain)
        if self.platform.iommu is not None and idev.saved_domain is not None:
            self.platform.iommu.set_group_domain(idev.group, idev.saved_domain)
        idev.hwpt = None
        idev.saved_domain = None
        ioas = hwpt.ioas
        with ioas.lock:
            hwpt.devices.remove(idev)
            if hwpt.devices:
                return
            for area in ioas.areas:
                self._unfill_domain(area, hwpt)
            ioas.hwpts.remove(hwpt)
        with self._lock:
            self._objects.pop(hwpt.id, None)

    # ------------------------------------------------------------------ domains <-> areas
    def _fill_domain(self, area: IoptArea, hwpt: HwPagetable) -> None:
        """Map one area into one domain (IOAS lock held) — ``iopt_area_fill_domain``."""
        pages = area.pages
        with pages.mutex:
            pages.tracker.append((area, hwpt))     # iopt_dmabuf_track_domain()
            if pages.revoked:
                return                              # revoked areas are skipped
            hwpt.domain.map(area.iova, pages.paddr + pages.start, area.length, area.prot)

    def _unfill_domain(self, area: IoptArea, hwpt: HwPagetable) -> None:
        """Unmap one area from one domain (IOAS lock held) — ``iopt_area_unfill_domain``."""
        pages = area.pages
        with pages.mutex:
            if (area, hwpt) in pages.tracker:
                pages.tracker.remove((area, hwpt))
                if not pages.revoked:
                    hwpt.domain.unmap(area.iova, area.length)

    def _revoke_notify(self, attach: DmaBufAttachment) -> None:
        """``iopt_revoke_notify()``: unmap every domain mapping of the pages, mark them revoked.

        Context: the exporter holds the resv lock (asserted); takes ``pages->mutex``.
        Kernel: drivers/iommu/iommufd/pages.c, iopt_revoke_notify().
        """
        attach.dmabuf.resv.assert_held()
        pages: IoptPagesDmabuf = attach.importer_priv
        with pages.mutex:
            if pages.revoked:
                return
            for area, hwpt in pages.tracker:
                hwpt.domain.unmap(area.iova, area.length)
            pages.phys_len = 0
            pages.revokes += 1
        self.machine.trace.emit("iommufd_dmabuf_revoke", ino=attach.dmabuf.ino,
                                mappings=len(pages.tracker))

    # ------------------------------------------------------------------ IOMMU_IOAS_MAP_FILE
    def ioas_map_file(self, ioas_id: int, fd: int | DmaBuf, start: int, length: int, *,
                      iova: int = 0,
                      flags: int = IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE) -> int:
        """Map (part of) a dma-buf into an IOAS — ``IOMMU_IOAS_MAP_FILE``.

        Args:
            ioas_id: the IOAS.
            fd: a dma-buf fd of the current process, or the :class:`DmaBuf` itself (a new
                reference is taken either way: ``dma_buf_get``).
            start: byte offset in the buffer (page aligned in the model).
            length: bytes (a non-zero page multiple).
            iova: the IOVA with ``IOMMU_IOAS_MAP_FIXED_IOVA``; ignored otherwise.
            flags: ``IOMMU_IOAS_MAP_FIXED_IOVA | _WRITEABLE | _READABLE``.
        Context: may block (the buffer's resv lock, the IOAS lock).
        Returns: the IOVA of the area.
        Raises:
            DmaBufError(EOPNOTSUPP): unknown flags; the buffer is not a VFIO dma-buf or has
                several ranges; a file that is not a dma-buf (memfd mapping is not modelled);
                the exporter refused the importer.
            DmaBufError(EOVERFLOW): ``iova``/``length`` not below ``ULONG_MAX``;
                ``start + length - 1`` overflows.
            DmaBufError(EINVAL): neither READABLE nor WRITEABLE; ``length == 0``; the window
                beyond the buffer (``size <= start + length - 1``) or too many pages; unaligned
                start/length/IOVA; a fixed IOVA in a reserved range.
            DmaBufError(ENOENT): unknown IOAS. DmaBufError(EBADF): fd not open.
            DmaBufError(ENODEV): the dma-buf is revoked.
            DmaBufError(EEXIST): a fixed IOVA overlapping an area. DmaBufError(ENOSPC).
        Kernel: drivers/iommu/iommufd/ioas.c, iommufd_ioas_map_file(); io_pagetable.c,
            iopt_map_file_pages(), iopt_map_common(); pages.c, iopt_alloc_dmabuf_pages(),
            iopt_map_dmabuf().
        """
        if isinstance(flags, bool) or not isinstance(flags, int) or flags & ~_MAP_FLAGS:
            raise DmaBufError(errno.EOPNOTSUPP, f"IOMMU_IOAS_MAP_FILE flags {flags!r}: only "
                              "FIXED_IOVA, WRITEABLE and READABLE exist")
        iova = _u64(iova, "iova")
        length = _u64(length, "length")
        start = _u64(start, "start")
        if iova >= _ULONG_MAX or length >= _ULONG_MAX:
            raise DmaBufError(errno.EOVERFLOW, "iova and length must be below ULONG_MAX")
        if not flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE):
            raise DmaBufError(errno.EINVAL, "map neither readable nor writeable")
        ioas = self.ioas(ioas_id)
        prot = IOMMU_MMIO | (IOMMU_READ if flags & IOMMU_IOAS_MAP_READABLE else 0) | \
            (IOMMU_WRITE if flags & IOMMU_IOAS_MAP_WRITEABLE else 0)
        # iopt_map_file_pages()
        if not length:
            raise DmaBufError(errno.EINVAL, "length must not be 0")
        if start + length - 1 > _ULONG_MAX:
            raise DmaBufError(errno.EOVERFLOW, f"start {start:#x} + length {length:#x} overflows")
        if isinstance(fd, DmaBuf):
            dmabuf = fd.get()
        elif isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int or a DmaBuf, not {type(fd).__name__}")
        else:
            try:
                dmabuf = dma_buf_get(fd, self.machine)
            except DmaBufError as e:
                if e.errno == errno.EINVAL:      # a file, but not a dma-buf: the memfd path
                    raise DmaBufError(errno.EOPNOTSUPP, f"fd {fd} is not a dma-buf; the memfd "
                                      "path of IOMMU_IOAS_MAP_FILE is not modelled") from None
                raise
        pages: IoptPagesDmabuf | None = None
        try:
            pages = self._alloc_dmabuf_pages(dmabuf, start, length, bool(prot & IOMMU_WRITE))
        finally:
            if pages is None:
                dmabuf.put()
        try:
            return self._map_pages(ioas, pages, iova, length, prot,
                                   bool(flags & IOMMU_IOAS_MAP_FIXED_IOVA))
        except BaseException:
            self._release_pages(pages)
            raise

    def _alloc_dmabuf_pages(self, dmabuf: DmaBuf, start: int, length: int,
                            writable: bool) -> IoptPagesDmabuf:
        """``iopt_alloc_dmabuf_pages()`` + ``iopt_map_dmabuf()``; the pages own ``dmabuf``'s ref."""
        if dmabuf.size <= start + length - 1 or length // PAGE_SIZE >= MAX_NPFNS:
            raise DmaBufError(errno.EINVAL, f"window [{start:#x}, +{length:#x}) does not fit in "
                              f"the {dmabuf.size:#x}-byte dma-buf")
        if start % PAGE_SIZE or length % PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, f"start {start:#x} and length {length:#x} must be "
                              "page aligned (sub-page file offsets are not modelled)")
        pages = IoptPagesDmabuf(dmabuf, start, length, writable,
                                self.machine.sched.lock("iopt_pages.mutex"))
        attach = dmabuf.dynamic_attach(self.global_device, self._attach_ops, pages)
        resv = dmabuf.resv
        resv.lock(None)
        try:
            with pages.mutex:      # lockdep priming: pages->mutex nests inside the resv
                pass
            attach.pin()
            try:
                phys = vfio_pci_dma_buf_iommufd_map(attach)
            except BaseException:
                attach.unpin()
                raise
            pages.paddr, pages.phys_len = next(iter(phys))
        except BaseException:
            resv.unlock()
            dmabuf.detach(attach)
            raise
        resv.unlock()
        pages.attach = attach
        return pages

    def _map_pages(self, ioas: Ioas, pages: IoptPagesDmabuf, iova: int, length: int, prot: int,
                   fixed: bool) -> int:
        """``iopt_map_pages()``: choose/check the IOVA, insert the area, fill every domain."""
        with ioas.lock:
            if fixed:
                ioas.check_iova(iova, length)
            else:
                iova = ioas.alloc_iova(pages.start, length)
            area = IoptArea(iova, length, prot, pages, ioas)
            done: list[HwPagetable] = []
            try:
                for hwpt in ioas.hwpts:
                    self._fill_domain(area, hwpt)
                    done.append(hwpt)
            except BaseException:
                for hwpt in done:
                    self._unfill_domain(area, hwpt)
                with pages.mutex:
                    pages.tracker = [t for t in pages.tracker if t[0] is not area]
                raise
            ioas.areas.append(area)
            ioas.areas.sort(key=lambda a: a.iova)
        self.machine.trace.emit("iommufd_map_file", ioas=ioas.id, iova=iova, length=length,
                                ino=pages.dmabuf.ino, revoked=pages.revoked)
        return iova

    def _release_pages(self, pages: IoptPagesDmabuf) -> None:
        """``iopt_release_pages()``: unpin under the resv lock, detach, put the dma-buf."""
        if pages.released:
            raise ContractViolation("iopt_release_pages", "pages released twice")
        pages.released = True
        if pages.tracker:
            self.machine.warn("iopt_release_pages", f"dma-buf pages released while still "
                              f"tracked in {len(pages.tracker)} domain(s)")
        dmabuf = pages.dmabuf
        attach = pages.attach
        if attach is not None:
            dmabuf.resv.lock(None)
            try:
                attach.unpin()
            finally:
                dmabuf.resv.unlock()
            dmabuf.detach(attach)
        dmabuf.put()

    # ------------------------------------------------------------------ IOMMU_IOAS_UNMAP
    def ioas_unmap(self, ioas_id: int, iova: int, length: int) -> int:
        """Unmap every area inside ``[iova, iova + length)`` — ``IOMMU_IOAS_UNMAP``.

        ``iova == 0`` with ``length == U64_MAX`` unmaps everything. Areas must lie entirely
        inside the range. Each unmapped dma-buf area is unmapped from every domain (unless
        revoked) and its pages released (unpin, detach, put).

        Returns: bytes unmapped.
        Raises: DmaBufError(ENOENT): unknown IOAS, nothing mapped there, or an area only
            partly inside; DmaBufError(EINVAL): length 0; DmaBufError(EOVERFLOW).
        Kernel: drivers/iommu/iommufd/ioas.c, iommufd_ioas_unmap(); io_pagetable.c,
            iopt_unmap_iova(), iopt_unmap_all(), iopt_unmap_iova_range().
        """
        ioas = self.ioas(ioas_id)
        iova = _u64(iova, "iova")
        length = _u64(length, "length")
        if iova == 0 and length == _ULONG_MAX:
            first, last = 0, _ULONG_MAX
        else:
            if iova >= _ULONG_MAX or length >= _ULONG_MAX:
                raise DmaBufError(errno.EOVERFLOW, "iova and length must be below ULONG_MAX")
            if not length:
                raise DmaBufError(errno.EINVAL, "length must not be 0")
            first, last = iova, iova + length - 1
            if last > _ULONG_MAX:
                raise DmaBufError(errno.EOVERFLOW, "iova + length overflows")
        with ioas.lock:
            hit = [a for a in ioas.areas if a.iova <= last and first <= a.last]
            if any(a.iova < first or a.last > last for a in hit):
                raise DmaBufError(errno.ENOENT, "an area is only partly inside the range: unmap "
                                  "whole areas")
            if not hit and not (first == 0 and last == _ULONG_MAX):
                raise DmaBufError(errno.ENOENT, f"nothing is mapped in [{first:#x}, {last:#x}]")
            for a in hit:
                for hwpt in ioas.hwpts:
                    self._unfill_domain(a, hwpt)
                ioas.areas.remove(a)
        for a in hit:
            self._release_pages(a.pages)
        return sum(a.length for a in hit)

    # ------------------------------------------------------------------ access, destroy, close
    def access_rw(self, ioas_id: int, iova: int, length: int) -> None:
        """CPU access to an IOAS range for an emulated device — ``iommufd_access_rw()``.

        Only the refusal is modelled: dma-buf pages cannot be accessed (``-EINVAL``).

        Raises: DmaBufError(EINVAL): the range is a dma-buf area;
            DmaBufError(ENOENT): nothing is mapped there.
        Kernel: drivers/iommu/iommufd/pages.c, iopt_pages_rw_access().
        """
        ioas = self.ioas(ioas_id)
        with ioas.lock:
            a = next((x for x in ioas.areas if x.iova <= iova <= x.last), None)
        if a is None:
            raise DmaBufError(errno.ENOENT, f"nothing is mapped at IOVA {iova:#x}")
        raise DmaBufError(errno.EINVAL, "dma-buf areas cannot be accessed by the CPU through "
                          "iommufd (MMIO without struct page)")

    def destroy(self, obj_id: int) -> None:
        """Destroy an object — ``IOMMU_DESTROY``.

        A device is detached and unbound; an IOAS is emptied (all areas unmapped) once no
        device is attached to it (``-EBUSY`` otherwise); auto HWPTs go with their devices.

        Raises: DmaBufError(ENOENT): unknown id; DmaBufError(EBUSY): IOAS or HWPT in use.
        Kernel: drivers/iommu/iommufd/main.c, iommufd_destroy().
        """
        self._check_open()
        obj = self._objects.get(obj_id)
        if obj is None:
            raise DmaBufError(errno.ENOENT, f"no object {obj_id}")
        if isinstance(obj, IommufdDevice):
            if obj.hwpt is not None:
                self.device_detach(obj_id)
        elif isinstance(obj, HwPagetable):
            raise DmaBufError(errno.EBUSY, f"HWPT {obj_id} has attached devices")
        else:
            if obj.hwpts:
                raise DmaBufError(errno.EBUSY, f"IOAS {obj_id} has attached devices")
            if obj.areas:
                self.ioas_unmap(obj_id, 0, _ULONG_MAX)
        with self._lock:
            self._objects.pop(obj_id, None)

    def close(self) -> None:
        """Release the file — ``iommufd_fops_release()``: destroy every object. Idempotent.

        Kernel: drivers/iommu/iommufd/main.c, iommufd_fops_release().
        """
        if self._closed:
            return
        for oid, obj in sorted(self._objects.items()):
            if isinstance(obj, IommufdDevice):
                self.destroy(oid)
        for oid, obj in sorted(self._objects.items()):
            if isinstance(obj, Ioas):
                self.destroy(oid)
        self._closed = True

    def __enter__(self) -> IommufdCtx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """Snapshot of every object.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        out: dict[str, Any] = {"ioas": [], "hwpt": [], "devices": []}
        for obj in list(self._objects.values()):
            if isinstance(obj, Ioas):
                out["ioas"].append(obj.describe())
            elif isinstance(obj, HwPagetable):
                out["hwpt"].append({"id": obj.id, "ioas": obj.ioas.id,
                                    "domain": obj.domain.name,
                                    "devices": [d.dma.name for d in obj.devices]})
            else:
                out["devices"].append({"id": obj.id, "dev": obj.dma.name, "group": obj.group,
                                       "hwpt": obj.hwpt.id if obj.hwpt else None})
        return out
