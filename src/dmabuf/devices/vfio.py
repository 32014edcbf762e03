"""drivers/vfio/pci/vfio_pci_dmabuf.c (+ the revoke triggers of vfio_pci_core.c, _config.c).

vfio-pci hands a PCI function to user space (a VM, a DPDK-like driver). Since v6.19 user space
can also *export ranges of the function's BARs* as dma-bufs with the
``VFIO_DEVICE_FEATURE_DMA_BUF`` feature, so that an RDMA NIC or iommufd maps the device's MMIO
for peer-to-peer DMA. :class:`VfioPciDevice` models the driver bound to a function of a
:class:`~dmabuf.devices.platform.Platform`:

* **The BARs are real bytes**: each page-aligned memory BAR is an MMIO region of the platform's
  physical memory. The *device side* (:meth:`VfioPciDevice.hw_write` / ``hw_read``) writes and
  reads it like the function's own logic would; the *user side*
  (:meth:`VfioPciDevice.region_read` / ``region_write``, the region file offsets of the device
  fd) goes through the PCI command register and fails ``-EIO`` while memory decode is off.
* **Export** (:meth:`VfioPciDevice.feature_dma_buf` / :meth:`VfioPciDevice.device_feature`):
  the checks of ``vfio_pci_core_feature_dma_buf()`` in the kernel's order — GET only
  (``vfio_check_feature``), ``nr_ranges == 0`` or ``flags != 0`` → ``-EINVAL``, region index
  past the last BAR → ``-ENODEV``, ranges empty or not page aligned or the total overflowing
  (or with bit 63 set) → ``-EINVAL``, a BAR that is not a P2P memory provider → ``-EINVAL``,
  ``offset``/``offset + length`` wrapping → ``-EOVERFLOW``, a range past the end of the BAR →
  ``-EINVAL`` (the spec's and the kernel's ``vfio_pci_core_fill_phys_vec``), a device being
  removed → ``-ENODEV``. The buffer (``size`` = total of the ranges) starts revoked when memory
  decode is off.
* **Exporter ops** (``vfio_pci_dmabuf_ops``): ``attach`` refuses importers that cannot take P2P
  addresses (``-EOPNOTSUPP``), a revoked buffer (``-ENODEV``) and, since v7.1, importers that
  are not revocable (``-EOPNOTSUPP``: no ``invalidate_mappings``); ``map_dma_buf`` fails
  ``-ENODEV`` while revoked and otherwise builds the importer's DMA-only table with
  :func:`~dmabuf.dma.dma_buf_mapping.dma_buf_phys_vec_to_sgt` (BUS_ADDR through a switch, one
  IOVA range through the host bridge); ``unmap_dma_buf`` is ``dma_buf_free_sgt``. No ``pin``:
  the storage never moves, it can only be revoked.
* **Revoke** (``vfio_pci_dma_buf_move``) with :class:`~dmabuf.buf.revoke.Revoker`, the
  documented sequence: under the resv lock mark revoked → ``dma_buf_invalidate_mappings`` →
  wait for every fence (BOOKKEEP); unlock; wait until every importer has unmapped (bounded,
  ``unmap_timeout``, then a WARN naming the importer). Triggers, each under ``memory_lock``
  held for write: clearing ``PCI_COMMAND_MEMORY`` (:meth:`VfioPciDevice.config_write_command`),
  a power state of D3hot or deeper, ``VFIO_DEVICE_RESET`` (:meth:`VfioPciDevice.reset`: revoke,
  reset the function, un-revoke if memory is enabled) and the last close of the device
  (``vfio_pci_dma_buf_cleanup``: revoke for good and detach the buffers from the device).
  Un-revoke (memory enabled again, reset done) just clears ``revoked`` under the lock: importers
  map again when *they* want to.
* **iommufd's private interconnect**: :func:`vfio_pci_dma_buf_iommufd_map` gives iommufd the
  single physical range of a VFIO dma-buf (``-EOPNOTSUPP`` for another exporter or several
  ranges, ``-ENODEV`` while revoked).

Locking: ``memory_lock`` (an rwsem in the kernel; an exclusive scheduler lock here, taken for
write on every path that changes the revoke state and for read around user BAR accesses) is
taken before any dma-buf resv lock (``memory_lock`` → resv), as in the kernel. The final puts of
buffers referenced while iterating the list run *after* ``memory_lock`` is dropped — the
kernel's ``fput`` is deferred to task work, and a synchronous release in the model would take
``memory_lock`` again.

Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c (vfio_pci_dma_buf_attach/map/unmap/release,
vfio_pci_core_feature_dma_buf, validate_dmabuf_input, vfio_pci_core_fill_phys_vec,
vfio_pci_core_get_dmabuf_phys, vfio_pci_dma_buf_move, vfio_pci_dma_buf_cleanup,
vfio_pci_dma_buf_iommufd_map), drivers/vfio/pci/vfio_pci_core.c (VFIO_DEVICE_RESET,
__vfio_pci_memory_enabled, vfio_pci_core_close_device), drivers/vfio/pci/vfio_pci_config.c
(vfio_basic_config_write: PCI_COMMAND), drivers/vfio/vfio_main.c (vfio_check_feature,
vfio_ioctl_device_feature), include/uapi/linux/vfio.h.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dmabuf.buf.device import DmaDataDirection
from dmabuf.buf.dma_buf import (
    DmaBuf,
    DmaBufAttachment,
    DmaBufExportInfo,
    DmaBufOps,
    MapResult,
    dma_buf_export,
)
from dmabuf.buf.file import O_CLOEXEC, O_RDWR
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.buf.revoke import VFIO_UNMAP_TIMEOUT, Revoker
from dmabuf.devices.base import Device
from dmabuf.dma.defs import valid_dma_direction
from dmabuf.dma.device import DmaDevice
from dmabuf.dma.dma_buf_mapping import dma_buf_free_sgt, dma_buf_phys_vec_to_sgt
from dmabuf.errors import DmaBufError
from dmabuf.mm.phys import PAGE_SIZE, PhysRegion
from dmabuf.pci.p2pdma import pcim_p2pdma_init, pcim_p2pdma_provider
from dmabuf.pci.topology import PciDev

if TYPE_CHECKING:
    from dmabuf.devices.platform import Platform

__all__ = [
    "PCI_COMMAND_IO",
    "PCI_COMMAND_MASTER",
    "PCI_COMMAND_MEMORY",
    "PCI_D0",
    "PCI_D3COLD",
    "PCI_D3HOT",
    "VFIO_DEVICE_FEATURE_DMA_BUF",
    "VFIO_DEVICE_FEATURE_GET",
    "VFIO_DEVICE_FEATURE_MASK",
    "VFIO_DEVICE_FEATURE_PROBE",
    "VFIO_DEVICE_FEATURE_SET",
    "VFIO_PCI_ROM_REGION_INDEX",
    "VfioDeviceFeatureDmaBuf",
    "VfioPciDevice",
    "VfioPciDmaBuf",
    "VfioPciDmaBufOps",
    "vfio_pci_dma_buf_iommufd_map",
]

#: include/uapi/linux/pci_regs.h: PCI_COMMAND bits.
PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
#: include/linux/pci.h: power states (``pci_power_t``).
PCI_D0 = 0
PCI_D3HOT = 3
PCI_D3COLD = 4
#: include/uapi/linux/vfio.h: ``struct vfio_device_feature`` flags and the DMA_BUF feature.
VFIO_DEVICE_FEATURE_MASK = 0xFFFF
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_PROBE = 1 << 18
VFIO_DEVICE_FEATURE_DMA_BUF = 11
#: ``VFIO_PCI_ROM_REGION_INDEX``: region indexes below it are BARs 0..5.
VFIO_PCI_ROM_REGION_INDEX = 6
#: ``DMA_IOVA_USE_SWIOTLB``: a total with this bit set is refused (-EINVAL).
DMA_IOVA_USE_SWIOTLB = 1 << 63
_U64 = 1 << 64


@dataclass
class VfioDeviceFeatureDmaBuf:
    """``struct vfio_device_feature_dma_buf`` with its ``dma_ranges[]``.

    Attributes:
        region_index: the BAR (0..5).
        open_flags: flags of the new dma-buf file and fd (``O_RDWR | O_CLOEXEC``).
        flags: must be 0.
        dma_ranges: ``(offset, length)`` pairs inside the BAR (``struct vfio_region_dma_range``);
            ``nr_ranges`` is their count.
    """

    region_index: int
    dma_ranges: Sequence[tuple[int, int]]
    open_flags: int = O_RDWR | O_CLOEXEC
    flags: int = 0

    @property
    def nr_ranges(self) -> int:
        """``nr_ranges``."""
        return len(self.dma_ranges)


@dataclass
class VfioPciDmaBuf:
    """The exporter's private data of one VFIO dma-buf — ``struct vfio_pci_dma_buf``.

    Attributes:
        dmabuf: the buffer.
        vdev: the exporting device, None once the device was closed (``vfio_pci_dma_buf_cleanup``).
        size: total bytes of the ranges.
        phys_vec: the CPU physical ranges (``struct phys_vec[]``).
        provider: BDF of the P2P provider (``struct p2pdma_provider``: the function's BAR).
        region_index: the BAR.
        revoker: the revoke state (``revoked``, live mappings — VFIO's kref/completion).
    """

    dmabuf: DmaBuf | None
    vdev: VfioPciDevice | None
    size: int
    phys_vec: PhysVec
    provider: str
    region_index: int
    revoker: Revoker = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def nr_ranges(self) -> int:
        """``nr_ranges``."""
        return self.phys_vec.nr_ranges

    @property
    def revoked(self) -> bool:
        """``priv->revoked`` (protected by the buffer's resv lock)."""
        return self.revoker.revoked


class VfioPciDmaBufOps(DmaBufOps):
    """``vfio_pci_dmabuf_ops``: attach, map_dma_buf, unmap_dma_buf, release (no pin, no mmap).

    Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_dmabuf_ops.
    """

    def attach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        """Accept P2P-capable, revocable importers of a live buffer — ``vfio_pci_dma_buf_attach()``.

        Args: dmabuf: the buffer; attach: the new attachment.
        Context: unlocked; never blocks.
        Raises:
            DmaBufError(EOPNOTSUPP): ``not attach.peer2peer`` (the importer did not set
                ``allow_peer2peer``: BAR memory has no struct page).
            DmaBufError(ENODEV): the buffer is revoked.
            DmaBufError(EOPNOTSUPP): the importer is not revocable (v7.1,
                ``dma_buf_attach_revocable()`` false: it has no ``invalidate_mappings``).
        Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_dma_buf_attach().
        """
        priv: VfioPciDmaBuf = dmabuf.priv
        priv.revoker.check_attach(attach)

    def map_dma_buf(self, attach: DmaBufAttachment, direction: DmaDataDirection) -> MapResult:
        """The BAR ranges mapped for the importer — ``vfio_pci_dma_buf_map()``.

        Args: attach: the attachment; direction: mapping direction.
        Context: resv held (asserted by the core); never blocks.
        Returns: a DMA-only SgTable from ``dma_buf_phys_vec_to_sgt`` (counted as a live
            mapping until its unmap: the revoke waits for it).
        Raises:
            DmaBufError(ENODEV): revoked.
            DmaBufError(EINVAL): the importer cannot reach the BAR by P2P (map type
                NOT_SUPPORTED, or not a PCI DMA device).
            DmaBufError(ENOMEM/EIO): the DMA mapping failed.
        Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_dma_buf_map();
            drivers/dma-buf/dma-buf-mapping.c, dma_buf_phys_vec_to_sgt().
        """
        priv: VfioPciDmaBuf = attach.dmabuf.priv
        priv.revoker.map_get(attach)
        try:
            dev = attach.dev
            if not isinstance(dev, DmaDevice):
                raise DmaBufError(errno.EINVAL, f"{dev.name} is not a PCI DMA device: its map "
                                  "type to the BAR is NOT_SUPPORTED")
            return dma_buf_phys_vec_to_sgt(dev, priv.provider, priv.phys_vec, priv.size,
                                           valid_dma_direction(int(direction)))
        except BaseException:
            priv.revoker.map_undo()
            raise

    def unmap_dma_buf(self, attach: DmaBufAttachment, table: MapResult,
                      direction: DmaDataDirection) -> None:
        """``dma_buf_free_sgt`` and drop the mapping count — ``vfio_pci_dma_buf_unmap()``.

        The last unmap after a revoke completes the revoke's second wait.

        Context: resv held; never blocks.
        Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_dma_buf_unmap() (kref_put ->
            vfio_pci_dma_buf_done -> complete()).
        """
        priv: VfioPciDmaBuf = attach.dmabuf.priv
        dev = attach.dev
        assert isinstance(dev, DmaDevice)
        dma_buf_free_sgt(dev, table, valid_dma_direction(int(direction)))
        priv.revoker.map_put(attach)

    def release(self, dmabuf: DmaBuf) -> None:
        """Remove the buffer from its device's list — ``vfio_pci_dma_buf_release()``.

        Context: unlocked (last reference); takes the device's ``memory_lock`` when the buffer
        is still attached to a device.
        Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_dma_buf_release().
        """
        priv: VfioPciDmaBuf = dmabuf.priv
        vdev = priv.vdev
        if vdev is not None:
            with vdev.memory_lock:
                if priv in vdev._dmabufs:
                    vdev._dmabufs.remove(priv)
                vdev._registrations -= 1
            priv.vdev = None


_OPS = VfioPciDmaBufOps()


def vfio_pci_dma_buf_iommufd_map(attach: DmaBufAttachment) -> PhysVec:
    """The single physical range of a VFIO dma-buf — ``vfio_pci_dma_buf_iommufd_map()``.

    The "private interconnect" between vfio and iommufd: when this succeeds there is one range,
    it is MMIO, and ``invalidate_mappings`` on the attachment means *revoke*, never move.

    Args: attach: iommufd's attachment.
    Context: resv held (asserted); never blocks.
    Returns: a one-range :class:`~dmabuf.buf.phys_vec.PhysVec` (``struct phys_vec``).
    Raises:
        DmaBufError(EOPNOTSUPP): not a VFIO dma-buf; more than one range.
        DmaBufError(ENODEV): revoked.
        ContractViolation: resv not held.
    Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_dma_buf_iommufd_map().
    """
    dmabuf = attach.dmabuf
    dmabuf.resv.assert_held()
    if not isinstance(dmabuf.ops, VfioPciDmaBufOps):
        raise DmaBufError(errno.EOPNOTSUPP, f"a {dmabuf.exp_name} dma-buf is not a VFIO dma-buf: "
                          "iommufd can only map VFIO MMIO dma-bufs")
    priv: VfioPciDmaBuf = dmabuf.priv
    if priv.revoked:
        raise DmaBufError(errno.ENODEV, "the VFIO dma-buf is revoked (device memory disabled, "
                          "in reset or closed)")
    if priv.nr_ranges != 1:
        raise DmaBufError(errno.EOPNOTSUPP, f"the VFIO dma-buf has {priv.nr_ranges} ranges; "
                          "iommufd maps single-range dma-bufs only")
    return priv.phys_vec


class VfioPciDevice(Device):
    """vfio-pci bound to a PCI function: BAR access, dma-buf export, revoke (module doc).

    Bind with ``platform.bind(VfioPciDevice, "gpu1")``; then :meth:`open_device` (the user's
    device fd) before any ioctl.

    Args:
        platform, pdev, name: see :class:`~dmabuf.devices.base.Device`.
        reset_works: the function supports a reset (``vdev->reset_works``); without it
            :meth:`reset` fails ``-EINVAL``.
        reset_clears: indexes of the BARs a reset clears to zero. Default (None): the
            non-prefetchable memory BARs — registers come back in their reset state, while
            prefetchable BARs (device memory: VRAM, HBM windows) keep their bytes across an FLR,
            as real device memory does. Pass ``()`` to clear nothing.
        unmap_timeout: seconds each buffer's revoke waits for importers to unmap before it
            WARNs (VFIO: 1 s); None waits forever.

    Attributes:
        command: the (virtual) PCI_COMMAND register.
        power_state: PCI_D0 or PCI_D3HOT/D3COLD.
        memory_lock: the device's ``memory_lock``.
        resets: completed resets. reset_hook: called while the function is in reset (revoked,
            memory_lock held) — models the reset's duration; tests probe the window with it.

    Kernel: drivers/vfio/pci/vfio_pci_core.c (struct vfio_pci_core_device).
    """

    driver_name: ClassVar[str] = "vfio-pci"
    #: ``vdev->pci_ops->get_dmabuf_phys`` is provided (variant drivers may lack it: -EOPNOTSUPP).
    supports_dmabuf: ClassVar[bool] = True

    def __init__(self, platform: Platform, pdev: PciDev, *, name: str | None = None,
                 reset_works: bool = True, reset_clears: Iterable[int] | None = None,
                 unmap_timeout: float | None = VFIO_UNMAP_TIMEOUT) -> None:
        super().__init__(platform, pdev, name=name)
        try:
            pcim_p2pdma_init(pdev)
        except DmaBufError as e:     # non-mappable BARs: no provider, exports fail -EINVAL
            if e.errno != errno.EOPNOTSUPP:
                raise
        self.reset_works = bool(reset_works)
        self.unmap_timeout = unmap_timeout
        self.memory_lock = self.machine.sched.lock(f"{self.name}.memory_lock")
        self.command = 0
        self.power_state = PCI_D0
        self.resets = 0
        self.reset_hook: Callable[[], None] | None = None
        self._open = 0
        self._registrations = 0
        self._dmabufs: list[VfioPciDmaBuf] = []
        self.bar_regions: dict[int, PhysRegion] = {
            i: r for i in range(VFIO_PCI_ROM_REGION_INDEX)
            if (r := platform.bars.get(f"{pdev.bdf} BAR{i}")) is not None}
        if reset_clears is None:
            clears = [i for i in self.bar_regions
                      if (b := pdev.bar(i)) is not None and not b.prefetchable]
        else:
            clears = [int(i) for i in reset_clears]
            bad = [i for i in clears if i not in self.bar_regions]
            if bad:
                raise DmaBufError(errno.EINVAL, f"reset_clears names BARs {bad} that are not "
                                  f"memory BARs of {pdev.label}")
        #: BARs a reset clears (see ``reset_clears``).
        self.reset_clears = tuple(sorted(clears))

    # ------------------------------------------------------------------ device fd
    def open_device(self) -> None:
        """Open the device — ``vfio_pci_core_open_device()``; the first open enables it.

        ``pci_enable_device()`` turns memory and I/O decode on (``PCI_COMMAND_MEMORY``).

        Raises: DmaBufError(ENODEV): the device was removed.
        Kernel: drivers/vfio/pci/vfio_pci_core.c, vfio_pci_core_enable().
        """
        self._check_alive("open")
        self._open += 1
        if self._open == 1:
            with self.memory_lock:
                self.command |= PCI_COMMAND_MEMORY | PCI_COMMAND_IO
                self.power_state = PCI_D0
        self.machine.trace.emit("vfio_open", device=self.name, count=self._open)

    def close_device(self) -> None:
        """Close the device; the last close revokes every dma-buf for good and disables it.

        ``vfio_pci_dma_buf_cleanup()``: each live buffer is revoked (the documented sequence,
        waiting for the importers' unmaps) and detached from the device (``priv->vdev =
        NULL``): it stays revoked until it is released. Then ``vfio_pci_core_disable()``.

        Raises: DmaBufError(EBADF): the device is not open.
        Kernel: drivers/vfio/pci/vfio_pci_core.c, vfio_pci_core_close_device();
            vfio_pci_dmabuf.c, vfio_pci_dma_buf_cleanup().
        """
        if self._open <= 0:
            raise DmaBufError(errno.EBADF, f"{self.name}: close of a device that is not open")
        self._open -= 1
        if self._open:
            return
        held: list[DmaBuf] = []
        try:
            with self.memory_lock:
                for priv in list(self._dmabufs):
                    buf = priv.dmabuf
                    if buf is None or not buf.file.try_get():
                        continue
                    held.append(buf)
                    priv.revoker.revoke()
                    self._dmabufs.remove(priv)
                    priv.vdev = None
                    self._registrations -= 1
                self.command = 0
        finally:
            for b in held:
                b.put()
        self.machine.trace.emit("vfio_close", device=self.name)

    @property
    def is_open(self) -> bool:
        """Whether a user holds the device open."""
        return self._open > 0

    def _require_open(self, what: str) -> None:
        self._check_alive(what)
        if self._open <= 0:
            raise DmaBufError(errno.EBADF, f"{self.name}: {what} needs the device open "
                              "(open_device() first)")

    # ------------------------------------------------------------------ memory decode
    @property
    def memory_enabled(self) -> bool:
        """``__vfio_pci_memory_enabled()``: D0..D2 and ``PCI_COMMAND_MEMORY`` set."""
        return self.power_state < PCI_D3HOT and bool(self.command & PCI_COMMAND_MEMORY)

    def _dma_buf_move(self, revoked: bool) -> list[DmaBuf]:
        """``vfio_pci_dma_buf_move()``; returns the buffers to put after ``memory_lock``."""
        held: list[DmaBuf] = []
        for priv in list(self._dmabufs):
            buf = priv.dmabuf
            if buf is None or not buf.file.try_get():     # get_file_active()
                continue
            held.append(buf)
            if priv.revoked != revoked:
                if revoked:
                    priv.revoker.revoke()
                else:
                    priv.revoker.unrevoke()
        return held

    def config_write_command(self, value: int) -> None:
        """Write PCI_COMMAND through VFIO's virtual config space — ``vfio_basic_config_write()``.

        Clearing ``PCI_COMMAND_MEMORY`` revokes every dma-buf (waiting for the importers'
        unmaps) before the write lands; with memory enabled afterwards every revoked buffer is
        un-revoked. All under ``memory_lock`` held for write.

        Args: value: the 16-bit command value.
        Context: may block (the revoke waits).
        Raises: DmaBufError(EBADF): not open; DmaBufError(EINVAL): not a 16-bit value.
        Kernel: drivers/vfio/pci/vfio_pci_config.c, vfio_basic_config_write() (PCI_COMMAND).
        """
        self._require_open("config write")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise DmaBufError(errno.EINVAL, f"PCI_COMMAND value {value!r} is not a 16-bit int")
        held: list[DmaBuf] = []
        try:
            with self.memory_lock:
                if not value & PCI_COMMAND_MEMORY:
                    held += self._dma_buf_move(True)
                self.command = value
                if self.memory_enabled:
                    held += self._dma_buf_move(False)
        finally:
            for b in held:
                b.put()
        self.machine.trace.emit("vfio_pci_command", device=self.name, value=value)

    def config_read_command(self) -> int:
        """Read PCI_COMMAND from VFIO's virtual config space (``vdev->vconfig``).

        Kernel: drivers/vfio/pci/vfio_pci_config.c, vfio_basic_config_read().
        """
        return self.command

    def set_memory_enable(self, enable: bool) -> None:
        """Set or clear ``PCI_COMMAND_MEMORY``: a read-modify-write of PCI_COMMAND.

        Context/Raises: as :meth:`config_write_command` (clearing revokes, setting un-revokes).
        Kernel: drivers/vfio/pci/vfio_pci_config.c, vfio_basic_config_write().
        """
        cmd = self.command | PCI_COMMAND_MEMORY if enable else self.command & ~PCI_COMMAND_MEMORY
        self.config_write_command(cmd)

    def set_power_state(self, state: int) -> None:
        """Move the function to a power state — ``vfio_pci_set_power_state()``.

        D3hot and deeper make the BARs inaccessible: every dma-buf is revoked; back in D0
        with memory enabled they are un-revoked.

        Raises: DmaBufError(EBADF): not open; DmaBufError(EINVAL): unknown state.
        Kernel: drivers/vfio/pci/vfio_pci_core.c, vfio_pci_set_power_state().
        """
        self._require_open("set_power_state")
        if state not in (PCI_D0, 1, 2, PCI_D3HOT, PCI_D3COLD):
            raise DmaBufError(errno.EINVAL, f"power state {state!r} is not D0..D3cold")
        held: list[DmaBuf] = []
        try:
            with self.memory_lock:
                if state >= PCI_D3HOT:
                    held += self._dma_buf_move(True)
                self.power_state = state
                if self.memory_enabled:
                    held += self._dma_buf_move(False)
        finally:
            for b in held:
                b.put()

    def reset(self) -> None:
        """Reset the function — ``VFIO_DEVICE_RESET``.

        Under ``memory_lock`` (write): back to D0, revoke every dma-buf (waiting for the
        importers' unmaps), ``pci_try_reset_function()`` (the BARs of ``reset_clears`` are zeroed;
        config space is saved and restored, so the command register
        survives), then un-revoke when memory is enabled.

        Context: may block.
        Raises: DmaBufError(EBADF): not open; DmaBufError(EINVAL): ``reset_works`` false.
        Kernel: drivers/vfio/pci/vfio_pci_core.c, vfio_pci_core_ioctl() (VFIO_DEVICE_RESET).
        """
        self._require_open("VFIO_DEVICE_RESET")
        if not self.reset_works:
            raise DmaBufError(errno.EINVAL, f"{self.name} does not support reset")
        held: list[DmaBuf] = []
        try:
            with self.memory_lock:
                self.power_state = PCI_D0
                held += self._dma_buf_move(True)
                self.machine.trace.emit("vfio_reset_begin", device=self.name)
                for i in self.reset_clears:
                    r = self.bar_regions[i]
                    self.phys.view(r.base, r.size).fill(0)
                if self.reset_hook is not None:
                    self.reset_hook()
                self.resets += 1
                if self.memory_enabled:
                    held += self._dma_buf_move(False)
        finally:
            for b in held:
                b.put()
        self.machine.trace.emit("vfio_reset_end", device=self.name)

    # ------------------------------------------------------------------ BAR bytes
    def bar_region(self, index: int) -> PhysRegion:
        """The MMIO region of BAR ``index``.

        Raises: DmaBufError(EINVAL): not a page-aligned memory BAR of the function.

        Kernel: drivers/vfio/pci/vfio_pci_core.c, the BAR regions of vfio_pci_core_get_region_info()
        / pci_resource_start().
        """
        r = self.bar_regions.get(index)
        if r is None:
            raise DmaBufError(errno.EINVAL, f"{self.name} has no memory BAR {index} (BARs: "
                              f"{sorted(self.bar_regions)})")
        return r

    def _window(self, index: int, offset: int, length: int) -> int:
        r = self.bar_region(index)
        for v, nm in ((offset, "offset"), (length, "length")):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise DmaBufError(errno.EINVAL, f"{nm} {v!r} must be a non-negative int")
        if offset + length > r.size:
            raise DmaBufError(errno.EINVAL, f"[{offset:#x}, {offset + length:#x}) is beyond BAR "
                              f"{index} ({r.size:#x} bytes)")
        return r.base + offset

    def hw_write(self, index: int, offset: int, data: Any) -> None:
        """The function's own logic writes its BAR memory (device side: no decode check).

        Args: index: the BAR; offset: byte offset in it; data: bytes-like or ndarray.
        Context: never blocks; no lock (the device's internal access races like hardware).
        Raises: DmaBufError(EINVAL): not a memory BAR, or the window leaves the BAR.
        Kernel: none (the device's hardware).
        """
        src = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) \
            else np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        base = self._window(index, offset, int(src.size))
        self.phys.view(base, int(src.size))[:] = src

    def hw_read(self, index: int, offset: int, length: int) -> np.ndarray:
        """The function's own logic reads its BAR memory (device side: no decode check).

        Returns: a copy of the bytes (``uint8``). Raises: DmaBufError(EINVAL) as
        :meth:`hw_write`. Kernel: none (hardware).

        Model-only: the function's own logic reading its BAR is hardware.
        """
        return self.phys.view(self._window(index, offset, length), length).copy()

    def hw_fill(self, index: int, byte: int, offset: int = 0, length: int | None = None) -> None:
        """The function fills (part of) a BAR with ``byte`` (device side).

        Raises: DmaBufError(EINVAL) as :meth:`hw_write`. Kernel: none (hardware).

        Model-only: the function's own logic writing its BAR is hardware.
        """
        n = self.bar_region(index).size - offset if length is None else length
        self.phys.view(self._window(index, offset, n), n).fill(byte)

    def region_read(self, index: int, offset: int, length: int) -> bytes:
        """``pread`` on the device fd at a BAR region offset — ``vfio_pci_bar_rw()``.

        Raises: DmaBufError(EIO): memory decode off (or D3); DmaBufError(EINVAL): beyond the
            BAR; DmaBufError(EBADF): not open.
        Kernel: drivers/vfio/pci/vfio_pci_rdwr.c, vfio_pci_bar_rw() (memory_lock read side,
            __vfio_pci_memory_enabled).
        """
        self._require_open("region read")
        with self.memory_lock:
            base = self._window(index, offset, length)
            if not self.memory_enabled:
                raise DmaBufError(errno.EIO, f"{self.name}: BAR {index} access with memory "
                                  "decode disabled")
            return self.phys.view(base, length).tobytes()

    def region_write(self, index: int, offset: int, data: Any) -> int:
        """``pwrite`` on the device fd at a BAR region offset — ``vfio_pci_bar_rw()``.

        Returns: bytes written. Raises: as :meth:`region_read`.

        Kernel: drivers/vfio/pci/vfio_pci_rdwr.c, vfio_pci_bar_rw().
        """
        self._require_open("region write")
        src = bytes(data)
        with self.memory_lock:
            base = self._window(index, offset, len(src))
            if not self.memory_enabled:
                raise DmaBufError(errno.EIO, f"{self.name}: BAR {index} access with memory "
                                  "decode disabled")
            self.phys.view(base, len(src))[:] = np.frombuffer(src, dtype=np.uint8)
        return len(src)

    # ------------------------------------------------------------------ VFIO_DEVICE_FEATURE
    def device_feature(self, flags: int, arg: VfioDeviceFeatureDmaBuf | None = None) -> int:
        """``VFIO_DEVICE_FEATURE`` ioctl for the DMA_BUF feature.

        Args:
            flags: feature number | ``VFIO_DEVICE_FEATURE_GET`` / ``_SET`` / ``_PROBE``.
            arg: the payload (GET).
        Returns: 0 for PROBE; the new dma-buf fd for GET.
        Raises: DmaBufError(EINVAL): unknown flag bits, GET and SET together without PROBE,
            neither GET nor SET, SET (the feature is GET only), no payload;
            DmaBufError(ENOTTY): another feature; the errors of :meth:`feature_dma_buf`.
        Kernel: drivers/vfio/vfio_main.c, vfio_ioctl_device_feature(), vfio_check_feature();
            drivers/vfio/pci/vfio_pci_core.c, vfio_pci_core_ioctl_feature().
        """
        self._require_open("VFIO_DEVICE_FEATURE")
        if isinstance(flags, bool) or not isinstance(flags, int) or flags < 0:
            raise DmaBufError(errno.EINVAL, f"feature flags {flags!r} must be a u32")
        allowed = (VFIO_DEVICE_FEATURE_MASK | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET
                   | VFIO_DEVICE_FEATURE_PROBE)
        if flags & ~allowed:
            raise DmaBufError(errno.EINVAL, f"unknown VFIO_DEVICE_FEATURE flags {flags:#x}")
        getset = flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET)
        if not flags & VFIO_DEVICE_FEATURE_PROBE and getset == (VFIO_DEVICE_FEATURE_GET
                                                                | VFIO_DEVICE_FEATURE_SET):
            raise DmaBufError(errno.EINVAL, "GET and SET together need PROBE")
        if flags & VFIO_DEVICE_FEATURE_MASK != VFIO_DEVICE_FEATURE_DMA_BUF:
            raise DmaBufError(errno.ENOTTY, f"feature {flags & VFIO_DEVICE_FEATURE_MASK} is not "
                              "modelled (only VFIO_DEVICE_FEATURE_DMA_BUF)")
        if not self.supports_dmabuf:
            raise DmaBufError(errno.EOPNOTSUPP, f"{self.driver_name} has no get_dmabuf_phys")
        # vfio_check_feature(flags, argsz, VFIO_DEVICE_FEATURE_GET, sizeof(get_dma_buf))
        if getset & ~VFIO_DEVICE_FEATURE_GET:
            raise DmaBufError(errno.EINVAL, "VFIO_DEVICE_FEATURE_DMA_BUF supports GET only")
        if flags & VFIO_DEVICE_FEATURE_PROBE:
            return 0
        if not getset:
            raise DmaBufError(errno.EINVAL, "VFIO_DEVICE_FEATURE needs GET, SET or PROBE")
        if arg is None:
            raise DmaBufError(errno.EINVAL, "argsz too small: no vfio_device_feature_dma_buf")
        return self.feature_dma_buf(arg.region_index, arg.dma_ranges,
                                    open_flags=arg.open_flags, flags=arg.flags)

    def feature_dma_buf(self, region_index: int, dma_ranges: Iterable[tuple[int, int]], *,
                        open_flags: int = O_RDWR | O_CLOEXEC, flags: int = 0) -> int:
        """Export BAR ranges as a dma-buf fd — ``vfio_pci_core_feature_dma_buf()``.

        Args:
            region_index: the BAR.
            dma_ranges: ``(offset, length)`` pairs (``struct vfio_region_dma_range``).
            open_flags: file flags of the dma-buf and its fd.
            flags: must be 0.
        Context: may block (memory_lock, resv).
        Returns: the fd in the current process (it holds the buffer's reference).
        Raises: see :meth:`export_dma_buf`; DmaBufError(EMFILE).
        Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_core_feature_dma_buf().
        """
        buf = self.export_dma_buf(region_index, dma_ranges, open_flags=open_flags, flags=flags)
        try:
            return buf.fd(open_flags & O_CLOEXEC)
        except BaseException:
            buf.put()
            raise

    def export_dma_buf(self, region_index: int, dma_ranges: Iterable[tuple[int, int]], *,
                       open_flags: int = O_RDWR | O_CLOEXEC, flags: int = 0) -> DmaBuf:
        """:meth:`feature_dma_buf` without the fd: the :class:`DmaBuf` with one reference.

        Checks, in the kernel's order: ``nr_ranges == 0`` or ``flags != 0`` → EINVAL;
        ``region_index >= VFIO_PCI_ROM_REGION_INDEX`` → ENODEV; each range non-empty with
        page-aligned offset and length, the total not overflowing and without bit 63 → EINVAL;
        the BAR a P2P provider (a memory BAR) → EINVAL; ``bar_start + offset`` and ``+ length``
        not wrapping → EOVERFLOW; the range inside the BAR → EINVAL; a BAR without MMIO
        backing → ENODEV (the resources were not claimed); device registered → ENODEV.

        Raises: DmaBufError as above; DmaBufError(EBADF): device not open; TypeError for
            malformed ranges.
        Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_core_feature_dma_buf(),
            validate_dmabuf_input(), vfio_pci_core_get_dmabuf_phys(),
            vfio_pci_core_fill_phys_vec().
        """
        self._require_open("VFIO_DEVICE_FEATURE_DMA_BUF")
        ranges = [(int(o), int(n)) for o, n in _pairs(dma_ranges)]
        if not ranges or flags:
            raise DmaBufError(errno.EINVAL, "nr_ranges must be > 0 and flags 0")
        if isinstance(region_index, bool) or not isinstance(region_index, int) or \
                region_index < 0:
            raise DmaBufError(errno.EINVAL, f"region_index {region_index!r} must be a u32")
        if region_index >= VFIO_PCI_ROM_REGION_INDEX:
            raise DmaBufError(errno.ENODEV, f"region {region_index} is not a BAR (BARs are "
                              f"0..{VFIO_PCI_ROM_REGION_INDEX - 1})")
        total = 0
        for off, n in ranges:
            if off < 0 or n < 0 or off >= _U64 or n >= _U64:
                raise DmaBufError(errno.EINVAL, f"range ({off:#x}, {n:#x}) is not a pair of u64")
            if not n or off % PAGE_SIZE or n % PAGE_SIZE:
                raise DmaBufError(errno.EINVAL, f"range (offset {off:#x}, length {n:#x}): the "
                                  "length must be non-zero and both page aligned")
            total += n
            if total >= _U64:
                raise DmaBufError(errno.EINVAL, "the total length of the ranges overflows size_t")
        if total & DMA_IOVA_USE_SWIOTLB:
            raise DmaBufError(errno.EINVAL, f"total length {total:#x} is too big (bit 63 set)")
        # vfio_pci_core_get_dmabuf_phys()
        prov = (pcim_p2pdma_provider(self.pdev, region_index)
                if self.pdev.p2pdma is not None else None)
        bar = self.pdev.bar(region_index)
        if prov is None or bar is None:
            raise DmaBufError(errno.EINVAL, f"BAR {region_index} of {self.pdev.label} is not a "
                              "P2P memory provider (not an implemented memory BAR)")
        start, max_addr = bar.start, bar.start + bar.size
        paddrs: list[int] = []
        for off, n in ranges:
            paddr = start + off
            end = paddr + n
            if paddr >= _U64 or end >= _U64:
                raise DmaBufError(errno.EOVERFLOW, f"BAR start {start:#x} + offset {off:#x} + "
                                  f"length {n:#x} overflows phys_addr_t")
            if end > max_addr:
                raise DmaBufError(errno.EINVAL, f"range [{off:#x}, {off + n:#x}) runs past the "
                                  f"end of BAR {region_index} ({bar.size:#x} bytes)")
            paddrs.append(paddr)
        if region_index not in self.bar_regions:
            raise DmaBufError(errno.ENODEV, f"BAR {region_index} has no MMIO mapping (resources "
                              "not claimed)")
        self._check_alive("VFIO_DEVICE_FEATURE_DMA_BUF")   # vfio_device_try_get_registration
        phys_vec = PhysVec.from_addrs(paddrs, [n for _, n in ranges])
        priv = VfioPciDmaBuf(None, self, total, phys_vec, self.pdev.bdf, region_index)
        priv.revoker = Revoker(require_revocable=True, require_peer2peer=True,
                               unmap_timeout=self.unmap_timeout, machine=self.machine)
        buf = dma_buf_export(DmaBufExportInfo("vfio-pci", _OPS, total, open_flags, priv=priv),
                             self.machine)
        priv.dmabuf = buf
        priv.revoker.bind(buf)
        with self.memory_lock:
            buf.resv.lock(None)
            try:
                priv.revoker.revoked = not self.memory_enabled
                self._dmabufs.append(priv)
                self._registrations += 1
            finally:
                buf.resv.unlock()
        self.machine.trace.emit("vfio_dma_buf_export", device=self.name, ino=buf.ino,
                                region=region_index, nr_ranges=len(ranges), size=total,
                                revoked=priv.revoked)
        return buf

    @property
    def dmabufs(self) -> list[VfioPciDmaBuf]:
        """The device's live dma-bufs (``vdev->dmabufs``), a snapshot."""
        return list(self._dmabufs)

    # ------------------------------------------------------------------ teardown
    def remove(self) -> None:
        """Unbind vfio-pci: close the device if a user still holds it, then stop the rings.

        Model choice: the kernel's unregister *waits* for the user to close the device (it asks
        with the ``request`` callback); the model closes it, which revokes the dma-bufs for good
        exactly as the last close does.

        Context: may block (the revoke waits for importers).
        Kernel: drivers/vfio/pci/vfio_pci_core.c, vfio_pci_core_unregister_device().
        """
        if self.removed:
            return
        while self._open > 0:
            self.close_device()
        super().remove()

    def describe(self) -> dict[str, Any]:
        """Snapshot: the device base's, plus command/power state, BARs and dma-bufs.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        d = super().describe()
        d["vfio"] = {"open": self._open, "command": self.command,
                     "power_state": self.power_state, "memory_enabled": self.memory_enabled,
                     "resets": self.resets, "registrations": self._registrations,
                     "bars": {i: {"base": r.base, "size": r.size}
                              for i, r in self.bar_regions.items()},
                     "dmabufs": [{"ino": p.dmabuf.ino if p.dmabuf else None, "size": p.size,
                                  "region": p.region_index, "nr_ranges": p.nr_ranges,
                                  **p.revoker.describe()} for p in self._dmabufs]}
        return d


def _pairs(dma_ranges: Any) -> list[tuple[Any, Any]]:
    """Accept ``(offset, length)`` pairs or a RANGE_DTYPE array (addr = offset)."""
    if isinstance(dma_ranges, np.ndarray) and dma_ranges.dtype.names == ("addr", "len"):
        return [(int(a), int(n)) for a, n in dma_ranges.tolist()]
    out = []
    for p in dma_ranges:
        if isinstance(p, (str, bytes)) or len(p) != 2:
            raise TypeError(f"a dma range is an (offset, length) pair, not {p!r}")
        for v in p:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"dma range values must be ints, not {v!r}")
        out.append((p[0], p[1]))
    return out
