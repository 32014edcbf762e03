"""NVMe with a Controller Memory Buffer as a p2pmem provider, and O_DIRECT into P2P memory.

drivers/nvme/host/pci.c (nvme_map_cmb, nvme_alloc_sq_cmds, nvme_map_data, nvme_queue_rq),
drivers/pci/p2pdma.c (the sysfs ``p2pmem/`` group, p2pmem_alloc_mmap, p2pdma_folio_free),
block/fops.c + block/bio.c (O_DIRECT: blkdev_direct_IO, bio_iov_iter_get_pages), and the
smallest possible drivers/block/virtio_blk.c (a queue without P2P support).

**The provider.** At probe, :class:`Nvme` does what ``nvme_map_cmb()`` does with the CMB it is
configured with (``cmb_bar`` / ``cmb_size`` / ``cmb_offset``, standing for CMBLOC/CMBSZ): the size
is clipped to the BAR, ``pci_p2pdma_add_resource(pdev, bar, size, offset)`` gives the range
ZONE_DEVICE pages (the pci layer registers a ``MEMORY_DEVICE_PCI_P2PDMA``
:class:`~dmabuf.mm.memremap.DevPagemap` for it, whose ``folio_free`` returns pages to the
genpool — ``p2pdma_folio_free``), the I/O submission queues are placed in the CMB when the CMB
supports SQs (``use_cmb_sqes``: ``pci_alloc_p2pmem`` of ``SQ_SIZE`` = depth × 64 bytes per I/O
queue), and the memory is published only when the CMB supports both WDS and RDS
(``pci_p2pmem_publish``). A topology captured from a running machine (sysfs loader) or a TOML file
with a ``[[device.p2pmem]]`` entry already has the provider: the driver adopts it as it is (the
capture's ``available`` already accounts for the SQs).

**The sysfs files** (:class:`P2pmemSysfs`, ``nvme.p2pmem``): ``size``, ``available``,
``published`` read like the kernel's attributes (``"16777216\\n"``), and ``allocate`` is a file
object to pass to :meth:`MmStruct.mmap <dmabuf.mm.vma.MmStruct.mmap>`: its ``mmap`` is
``p2pmem_alloc_mmap()`` — a private mapping or a non-zero offset is ``EINVAL`` (logged
"attempted private mapping" / "attempted mapping with non-zero offset"), an exhausted pool
``ENOMEM``; otherwise the pages are inserted with ``vm_insert_page`` (``VM_MIXEDMAP``, refcounted
P2PDMA pages) and ``available`` drops; munmap (or process exit) drops the last page reference
and the pages return to the pool.

**O_DIRECT.** Every block device of the model (:class:`BlockDevice`: an NVMe namespace, a
virtio-blk disk) does what the block layer does for ``read``/``write`` on a file opened with
``O_DIRECT``: alignment checks (``EINVAL``: position and length in logical blocks, buffer address
to ``dma_alignment``), ``pin_user_pages_fast`` of the user buffer with ``FOLL_WRITE`` for a read
and ``FOLL_PCI_P2PDMA`` **only when the queue has** ``BLK_FEAT_PCI_P2PDMA`` (NVMe-PCI sets it;
virtio-blk does not, so p2pmem buffers fail there with ``EREMOTEIO`` from GUP before any topology
decision, as on a real kernel), then the driver maps the pages for its device —
``dma_map_sgtable``: ``BUS_ADDR`` peers get bus addresses, ``THRU_HOST_BRIDGE`` an IOMMU/direct
mapping, ``NOT_SUPPORTED`` fails with ``EREMOTEIO`` (``BLK_STS_TARGET``: logged as "critical target
error, dev nvme2n1, sector 0 op 0x0:(READ)"). The command then runs on the device's ``io`` ring:
the controller's DMA engine moves the real bytes between the namespace (a sparse numpy byte
store) and the pages, through the client's own translation, and the fence signals completion.
:meth:`BlockDevice.submit_bio` is the in-kernel path (nvmet's P2P staging: pages from
``pci_p2pmem_alloc_sgl``, mapped the same way).

Deliberate differences: one namespace per controller; no admin queue, interrupts or PRP/SGL
encoding (the mapped DMA segments are the command's data pointer); a bio is not split at
``max_segments`` and P2P and RAM pages are not kept in separate bios (the kernel refuses to merge
pages of different pgmaps); the media has no latency unless ``media_bandwidth`` is given; an
adopted CMB provider is left in place at unbind, a created one is released (user mappings are
zapped first, as the kernel's ``pci_p2pdma_unmap_mappings`` devm action does).

Kernel: drivers/nvme/host/pci.c, drivers/nvme/host/core.c (BLK_FEAT_PCI_P2PDMA,
dma_alignment = 3), drivers/pci/p2pdma.c, block/fops.c, block/bio.c, drivers/block/virtio_blk.c.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dmabuf.devices.base import Device
from dmabuf.dma.defs import DmaDataDirection
from dmabuf.dma.mapping import DmaMapping, dma_map_phys_ranges, dma_unmap_phys_ranges
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.gup import FOLL_PCI_P2PDMA, FOLL_WRITE, pin_user_pages_fast, unpin_user_pages
from dmabuf.mm.memremap import pages_of_ranges
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE
from dmabuf.mm.ranges import as_ranges, slice_ranges, total_len
from dmabuf.mm.vma import VM_MAYSHARE, MmStruct, Vma, vm_insert_pages, zap_vma_ptes
from dmabuf.pci.p2pdma import (
    p2pmem_alloc_mmap,
    pci_alloc_p2pmem,
    pci_free_p2pmem,
    pci_p2pdma_add_resource,
    pci_p2pdma_memunmap_pages,
    pci_p2pdma_pgmaps,
    pci_p2pdma_release,
    pci_p2pmem_publish,
)
from dmabuf.pci.topology import Bar, PciDev

if TYPE_CHECKING:
    from dmabuf.devices.platform import Platform

__all__ = [
    "NVME_CMBSZ_RDS",
    "NVME_CMBSZ_SQS",
    "NVME_CMBSZ_WDS",
    "BlkFeat",
    "BlockDevice",
    "MediaStore",
    "Nvme",
    "P2pmemAllocateFile",
    "P2pmemSysfs",
    "VirtioBlk",
]

_MIB = 1 << 20
#: CMBSZ capability bits (include/linux/nvme.h): submission queues, read data, write data.
NVME_CMBSZ_SQS = 1 << 0
NVME_CMBSZ_CQS = 1 << 1
NVME_CMBSZ_LISTS = 1 << 2
NVME_CMBSZ_RDS = 1 << 3
NVME_CMBSZ_WDS = 1 << 4
#: ``sizeof(struct nvme_command)``: SQ_SIZE = depth << 6.
_SQE_SIZE = 64
#: ``io_queue_depth`` module parameter default.
NVME_IO_QUEUE_DEPTH = 1024


class BlkFeat(enum.Flag):
    """Request-queue features the model needs — ``BLK_FEAT_*`` of include/linux/blkdev.h."""

    NONE = 0
    #: The queue's driver can DMA to PCI peer memory: the block layer passes FOLL_PCI_P2PDMA.
    PCI_P2PDMA = enum.auto()


# ------------------------------------------------------------------------------------------------
# P2PDMA pages of a provider (ZONE_DEVICE) and its sysfs files
# ------------------------------------------------------------------------------------------------


class P2pmemAllocateFile:
    """The sysfs bin attribute ``p2pmem/allocate``: pass it as ``file=`` to ``MmStruct.mmap``.

    Kernel: drivers/pci/p2pdma.c, p2pmem_alloc_mmap() (bin attribute, mode 0660, size SZ_1T).
    """

    #: Advertised size of the bin file (``SZ_1T``, so Python's mmap size check passes).
    size = 1 << 40

    def __init__(self, platform: Platform, pdev: PciDev) -> None:
        self.platform = platform
        self.pdev = pdev
        #: Address spaces that mapped this file (for ``unmap_mapping_range`` on teardown).
        self._mms: list[MmStruct] = []

    def mmap(self, vma: Vma) -> None:
        """``p2pmem_alloc_mmap()``: allocate p2pmem and insert its pages into ``vma``.

        Context: called by ``MmStruct.mmap`` with the mmap lock held for writing.
        Raises:
            DmaBufError(EINVAL): not ``MAP_SHARED`` (no ``VM_MAYSHARE``), or a non-zero offset.
            DmaBufError(ENODEV): the device has no p2pdma state.
            DmaBufError(ENOMEM): the pool cannot satisfy the length.
        Kernel: drivers/pci/p2pdma.c, p2pmem_alloc_mmap().
        """
        pdev = self.pdev
        comm = vma.mm.name
        log = pdev.topology.log
        if not vma.flags & VM_MAYSHARE:
            log.append(f"{pdev.dev_printk_prefix()}: {comm}: fail, attempted private mapping")
        elif vma.pgoff:
            log.append(f"{pdev.dev_printk_prefix()}: {comm}: fail, attempted mapping with "
                       "non-zero offset")
        length = vma.end - vma.start
        ranges = p2pmem_alloc_mmap(pdev, length, shared=bool(vma.flags & VM_MAYSHARE),
                                   pgoff=vma.pgoff)
        pages = pages_of_ranges(ranges)
        try:
            pgmaps = pci_p2pdma_pgmaps(pdev)
            pm = next(p for p in pgmaps if p.contains(int(pages[0])))
        except BaseException:
            pci_free_p2pmem(pdev, int(ranges["addr"][0]), length)
            raise
        pm.page_init(pages)                      # set_page_count(page, 1)
        try:
            vm_insert_pages(vma, vma.start, pages)   # +1: the mapping's reference
        finally:
            pm.put_pages(pages)                  # put_page(): the mapping now owns the page
        if vma.mm not in self._mms:
            self._mms.append(vma.mm)

    def zap_all(self) -> None:
        """Unmap every user mapping of this file — ``pci_p2pdma_unmap_mappings`` (devm action).

        The VMAs stay (accesses then fault with SIGBUS, as on a real kernel after unbind).

        Kernel: drivers/pci/p2pdma.c, pci_p2pdma_unmap_mappings().
        """
        for mm in self._mms:
            for vma in list(mm.vmas):
                if vma.file is self and bool(vma.pte.any()):
                    zap_vma_ptes(vma, vma.start, vma.end - vma.start)
        self._mms.clear()


class P2pmemSysfs:
    """The ``/sys/bus/pci/devices/<bdf>/p2pmem/`` group of a provider.

    Attributes: ``allocate`` (:class:`P2pmemAllocateFile`). Properties read like the files.
    Kernel: drivers/pci/p2pdma.c (size_show, available_show, published_show, p2pmem_group).
    """

    def __init__(self, platform: Platform, pdev: PciDev) -> None:
        self.pdev = pdev
        self.allocate = P2pmemAllocateFile(platform, pdev)

    def _pool(self) -> Any:
        p2p = self.pdev.p2pdma
        if p2p is None or p2p.pool is None:
            raise DmaBufError(errno.ENOENT, f"{self.pdev.label} has no p2pmem group")
        return p2p.pool

    @property
    def size(self) -> str:
        """``p2pmem/size``: ``gen_pool_size()`` in bytes, newline terminated."""
        return f"{self._pool().size()}\n"

    @property
    def available(self) -> str:
        """``p2pmem/available``: ``gen_pool_avail()``."""
        return f"{self._pool().avail()}\n"

    @property
    def published(self) -> str:
        """``p2pmem/published``: ``0`` or ``1``."""
        self._pool()
        p2p = self.pdev.p2pdma
        return f"{int(bool(p2p is not None and p2p.p2pmem_published))}\n"

    def read(self, name: str) -> str:
        """Read attribute ``name`` (``size``, ``available``, ``published``).

        Raises: DmaBufError(ENOENT): unknown attribute; DmaBufError(EIO): ``allocate`` (a bin
            file that only supports mmap — read returns an error in the kernel as well).

        Kernel: drivers/pci/p2pdma.c, size_show() / available_show() / published_show().
        """
        if name == "allocate":
            raise DmaBufError(errno.EIO, "p2pmem/allocate can only be mmapped")
        if name not in ("size", "available", "published"):
            raise DmaBufError(errno.ENOENT, f"p2pmem/{name}: no such attribute")
        return str(getattr(self, name))


# ------------------------------------------------------------------------------------------------
# media and the block layer
# ------------------------------------------------------------------------------------------------


class MediaStore:
    """The bytes of a namespace / disk: a sparse ``uint8`` numpy array (calloc'd lazily).

    Args:
        size: bytes (a positive multiple of ``lba_size``).
        lba_size: logical block size (512 or 4096).
    """

    def __init__(self, size: int, lba_size: int = 512) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise DmaBufError(errno.EINVAL, f"media size {size!r} must be a positive int")
        if lba_size not in (512, 1024, 2048, 4096):
            raise DmaBufError(errno.EINVAL, f"logical block size {lba_size!r} must be 512..4096")
        if size % lba_size:
            raise DmaBufError(errno.EINVAL, f"media size {size} is not a multiple of the "
                              f"{lba_size}-byte logical block")
        self.size = size
        self.lba_size = lba_size
        self.data = np.zeros(size, dtype=np.uint8)

    def read(self, offset: int, length: int) -> np.ndarray:
        """A view of ``[offset, offset + length)``.

        Model-only: the NVMe medium is hardware; this is its storage.
        """
        return self.data[offset:offset + length]

    def write(self, offset: int, data: np.ndarray) -> None:
        """Store ``data`` at ``offset``.

        Model-only: the NVMe medium is hardware; this is its storage.
        """
        self.data[offset:offset + data.size] = data


def _u8(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


class BlockDevice:
    """A gendisk with its request queue — what ``O_DIRECT`` I/O goes through.

    Created by the drivers (:class:`Nvme`, :class:`VirtioBlk`); ``dev.disk``.

    Attributes:
        name: the disk name (``nvme0n1``, ``vda``).
        device: the driver (its ``dma`` view maps the pages, its ``io`` ring runs commands).
        media: the :class:`MediaStore`.
        features: :class:`BlkFeat` of the queue.
        dma_alignment: ``queue_dma_alignment`` mask (NVMe: 3; virtio-blk: 511).
        stats: ``reads``/``writes``/``bytes``/``errors``.

    Kernel: include/linux/blkdev.h (struct gendisk, struct request_queue, queue_limits).
    """

    def __init__(self, device: Device, name: str, media: MediaStore, features: BlkFeat, *,
                 dma_alignment: int, media_bandwidth: float | None = None) -> None:
        self.device = device
        self.name = name
        self.media = media
        self.features = features
        self.dma_alignment = dma_alignment
        self.media_bandwidth = media_bandwidth
        self.stats = {"reads": 0, "writes": 0, "bytes": 0, "errors": 0}

    @property
    def logical_block_size(self) -> int:
        """``bdev_logical_block_size()``."""
        return self.media.lba_size

    @property
    def capacity(self) -> int:
        """Bytes (``bdev_nr_bytes()``)."""
        return self.media.size

    def blk_queue_pci_p2pdma(self) -> bool:
        """``blk_queue_pci_p2pdma(q)``: does the queue take P2PDMA pages?

        Kernel: include/linux/blkdev.h, blk_queue_pci_p2pdma().
        """
        return bool(self.features & BlkFeat.PCI_P2PDMA)

    # ------------------------------------------------------------------ O_DIRECT
    def direct_read(self, mm: MmStruct, buf: int, length: int, offset: int) -> int:
        """``pread(fd, buf, length, offset)`` on the disk opened with ``O_DIRECT``.

        Args:
            mm: the calling process's address space.
            buf: user address of the buffer (RAM, p2pmem from ``p2pmem/allocate``, …).
            length, offset: bytes, both multiples of the logical block size.
        Context: may sleep (GUP faults, the command's completion).
        Returns: bytes read (short at the end of the disk, 0 at or past it).
        Raises:
            DmaBufError(EINVAL): misaligned offset/length/buffer.
            DmaBufError(EFAULT): the buffer is not mapped, a raw PFN/BAR mapping, read-only.
            DmaBufError(EREMOTEIO): p2pmem on a queue without P2P support (GUP), or a P2P path
                the fabric refuses for this device (``BLK_STS_TARGET``).
            IommuFault: the device's DMA faulted (a bug elsewhere: a stale translation).
        Kernel: block/fops.c, blkdev_read_iter() → blkdev_direct_IO().
        """
        return self._direct(mm, buf, length, offset, write=False)

    def direct_write(self, mm: MmStruct, buf: int, length: int, offset: int) -> int:
        """``pwrite(fd, buf, length, offset)`` with ``O_DIRECT`` (see :meth:`direct_read`).

        Raises: DmaBufError(ENOSPC): ``offset`` at or past the end of the disk; others as
            :meth:`direct_read`.
        Kernel: block/fops.c, blkdev_write_iter() → blkdev_direct_IO().
        """
        return self._direct(mm, buf, length, offset, write=True)

    def _direct(self, mm: MmStruct, buf: int, length: int, offset: int, *, write: bool) -> int:
        for v, what in ((buf, "buf"), (length, "length"), (offset, "offset")):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise DmaBufError(errno.EINVAL, f"O_DIRECT {what} must be a non-negative int")
        lbs = self.logical_block_size
        if (offset | length) & (lbs - 1) or buf & self.dma_alignment:
            raise DmaBufError(errno.EINVAL, f"{self.name}: O_DIRECT needs offset and length "
                              f"aligned to the {lbs}-byte logical block and the buffer to "
                              f"{self.dma_alignment + 1} bytes")
        if offset >= self.capacity:
            if write:
                raise DmaBufError(errno.ENOSPC, f"{self.name}: write at {offset} is past the "
                                  f"end of the {self.capacity}-byte disk")
            return 0
        length = min(length, self.capacity - offset)
        if length == 0:
            return 0
        gup = FOLL_WRITE if not write else 0
        if self.blk_queue_pci_p2pdma():
            gup |= FOLL_PCI_P2PDMA
        first = buf & ~(PAGE_SIZE - 1)
        npages = (-(-(buf + length) // PAGE_SIZE) * PAGE_SIZE - first) >> PAGE_SHIFT
        pages = pin_user_pages_fast(mm, first, npages, gup)   # bio_iov_iter_get_pages
        try:
            phys = slice_ranges(pages.ranges(), buf - first, length)
            self.submit_bio(write, offset, phys)
        finally:
            unpin_user_pages(pages)
        return length

    # ------------------------------------------------------------------ in-kernel bios
    def submit_bio(self, write: bool, offset: int, phys: Any) -> None:
        """Submit one bio of physical pages and wait for it — ``submit_bio_wait()``.

        Args:
            write: REQ_OP_WRITE (device reads memory) or REQ_OP_READ (device writes memory).
            offset: byte position on the disk (logical-block aligned).
            phys: ``RANGE_DTYPE`` physical ranges (RAM or P2PDMA pages).
        Context: may sleep (waits for the command's fence).
        Raises: DmaBufError(EREMOTEIO): the device cannot reach a P2P page (BLK_STS_TARGET);
            DmaBufError(EINVAL): misaligned or past the end; IommuFault: DMA fault.
        Kernel: block/bio.c, submit_bio_wait(); drivers/nvme/host/pci.c, nvme_queue_rq().
        """
        r = as_ranges(phys)
        n = total_len(r)
        lbs = self.logical_block_size
        if offset % lbs or n % lbs or n == 0 or offset + n > self.capacity:
            raise DmaBufError(errno.EINVAL, f"{self.name}: bio of {n} bytes at {offset} is "
                              "misaligned, empty or past the end of the disk")
        dev = self.device
        direction = DmaDataDirection.TO_DEVICE if write else DmaDataDirection.FROM_DEVICE
        sector = offset // 512
        op = "0x1:(WRITE)" if write else "0x0:(READ)"
        try:
            mapping = dma_map_phys_ranges(dev.dma, r, direction)     # nvme_map_data
        except DmaBufError as e:
            if e.errno == errno.EREMOTEIO:
                self.stats["errors"] += 1
                dev.pdev.topology.log.append(f"critical target error, dev {self.name}, sector "
                                             f"{sector} op {op} phys_seg {int(r.size)}")
            raise
        try:
            fence = dev.submit(self._command(write, offset, n, mapping), ring="io",
                               name=f"{self.name} {'write' if write else 'read'} @{sector}",
                               duration=(n / self.media_bandwidth
                                         if self.media_bandwidth else 0.0))
            try:
                fence.wait(False)
                err = fence.error
            finally:
                fence.put()
        finally:
            dma_unmap_phys_ranges(dev.dma, mapping)
        if err:
            self.stats["errors"] += 1
            raise DmaBufError(-err, f"{self.name}: I/O error at sector {sector} ({op})")
        self.stats["writes" if write else "reads"] += 1
        self.stats["bytes"] += n

    def _command(self, write: bool, offset: int, n: int,
                 mapping: DmaMapping) -> Callable[[], None]:
        engine = self.device.engine
        media = self.media
        dma = mapping.dma.copy()

        def run() -> None:
            # The controller's DMA engine, through the device's own translation.
            if write:
                media.write(offset, engine.read(dma, owner=None))
            else:
                engine.write(dma, media.read(offset, n), owner=None)

        return run


# ------------------------------------------------------------------------------------------------
# drivers
# ------------------------------------------------------------------------------------------------


def _disk_index(platform: Platform, cls: type[Device]) -> int:
    used = {getattr(d, "instance", -1) for d in platform.devices.values() if isinstance(d, cls)}
    i = 0
    while i in used:
        i += 1
    return i


class Nvme(Device):
    """An NVMe controller (nvme-pci) with one namespace and an optional CMB (see module doc).

    ``platform.bind(Nvme, "nvme0", namespace_size=64 MiB, lba_size=512, cmb_bar=None,
    cmb_size=None, cmb_offset=0, cmbsz=SQS|WDS|RDS, use_cmb_sqes=True, nr_io_queues=2,
    io_queue_depth=1024, media_bandwidth=None)``.

    Args:
        namespace_size: bytes of namespace 1 (sparse).
        lba_size: logical block size.
        cmb_bar: BAR holding the CMB (CMBLOC.BIR); ``None``: the largest 64-bit MEM BAR other
            than BAR0, or no CMB when there is none; ``-1``: no CMB (CMBSZ = 0).
        cmb_size: bytes (CMBSZ); ``None``: the BAR from ``cmb_offset`` on. Clipped to the BAR.
        cmb_offset: offset in the BAR (CMBLOC.OFST).
        cmbsz: CMBSZ support bits (``NVME_CMBSZ_SQS | WDS | RDS`` by default).
        use_cmb_sqes: module parameter ``use_cmb_sqes`` (put I/O SQs in the CMB).
        nr_io_queues: I/O queues (one per CPU in the kernel).
        io_queue_depth: entries per queue (module parameter, 1024).
        media_bandwidth: bytes/s of the media (virtual time per command); None: instant.

    Attributes:
        disk: the :class:`BlockDevice` (``nvmeXn1``).
        p2pmem: the :class:`P2pmemSysfs` of this controller (None without CMB).
        cmb_size: bytes registered (0 without CMB); ``cmb_adopted``: the provider existed.
        instance: the controller number (``nvme<instance>``).

    Raises: DmaBufError(EINVAL): bad parameters; what ``pci_p2pdma_add_resource`` raises is
        logged ("failed to register the CMB") and the controller runs without CMB, as the kernel.
    Kernel: drivers/nvme/host/pci.c, nvme_probe(), nvme_map_cmb(), nvme_alloc_sq_cmds().
    """

    driver_name: ClassVar[str] = "nvme"
    class_codes: ClassVar[tuple[int, ...] | None] = (0x01,)
    rings: ClassVar[tuple[str, ...]] = ("io",)

    def __init__(self, platform: Platform, pdev: PciDev, *, name: str | None = None,
                 namespace_size: int = 64 * _MIB, lba_size: int = 512,
                 cmb_bar: int | None = None, cmb_size: int | None = None, cmb_offset: int = 0,
                 cmbsz: int = NVME_CMBSZ_SQS | NVME_CMBSZ_WDS | NVME_CMBSZ_RDS,
                 use_cmb_sqes: bool = True, nr_io_queues: int = 2,
                 io_queue_depth: int = NVME_IO_QUEUE_DEPTH,
                 media_bandwidth: float | None = None) -> None:
        for v, what in ((nr_io_queues, "nr_io_queues"), (io_queue_depth, "io_queue_depth"),
                        (cmb_offset, "cmb_offset")):
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if what == "cmb_offset"
                                                                     else 1):
                raise DmaBufError(errno.EINVAL, f"nvme: {what}={v!r} is out of range")
        if media_bandwidth is not None and not media_bandwidth > 0:
            raise DmaBufError(errno.EINVAL, "nvme: media_bandwidth must be > 0 bytes/s")
        media = MediaStore(namespace_size, lba_size)
        super().__init__(platform, pdev, name=name)
        self.instance = _disk_index(platform, Nvme)
        self.disk = BlockDevice(self, f"nvme{self.instance}n1", media, BlkFeat.PCI_P2PDMA,
                                dma_alignment=3, media_bandwidth=media_bandwidth)
        self.cmb_size = 0
        self.cmb_bar: int | None = None
        self.cmb_adopted = False
        self.cmb_use_sqes = False
        self._created_p2pdma = False
        self._sq_cmds: list[tuple[int, int]] = []
        self.p2pmem: P2pmemSysfs | None = None
        self._map_cmb(cmb_bar, cmb_size, cmb_offset, cmbsz, use_cmb_sqes, nr_io_queues,
                      io_queue_depth)

    # ------------------------------------------------------------------ CMB
    def _pick_cmb_bar(self, cmb_bar: int | None) -> Bar | None:
        pdev = self.pdev
        if cmb_bar == -1:
            return None
        if cmb_bar is not None:
            b = pdev.bar(cmb_bar)
            if b is None or not b.is_mem:
                raise DmaBufError(errno.EINVAL, f"nvme: {pdev.label} BAR{cmb_bar} is not a "
                                  "memory BAR; it cannot hold a CMB")
            return b
        # An existing provider (captured system / TOML p2pmem) tells us where the CMB is.
        p2p = pdev.p2pdma
        if p2p is not None and p2p.pagemaps:
            return p2p.pagemaps[0].mem.owner.bar(p2p.pagemaps[0].mem.bar)
        cands = [b for b in pdev.bars.values() if b.is_mem and b.index != 0 and b.mem64]
        return max(cands, key=lambda b: (b.size, -b.index)) if cands else None

    def _map_cmb(self, cmb_bar: int | None, cmb_size: int | None, offset: int, cmbsz: int,
                 use_cmb_sqes: bool, nr_io_queues: int, depth: int) -> None:
        """``nvme_map_cmb()`` + the SQ placement of ``nvme_alloc_sq_cmds()``."""
        pdev = self.pdev
        bar = self._pick_cmb_bar(cmb_bar)
        if bar is None or not cmbsz:
            return
        p2p = pdev.p2pdma
        existing = [pm for pm in (p2p.pagemaps if p2p is not None else [])
                    if pm.mem.bar == bar.index]
        if existing:
            self.cmb_adopted = True
            self.cmb_size = sum(pm.size for pm in existing)
            self.cmb_bar = bar.index
        else:
            if offset > bar.size:
                return
            size = bar.size - offset if cmb_size is None else int(cmb_size)
            size = min(size, bar.size - offset)
            created = pdev.p2pdma is None
            try:
                pci_p2pdma_add_resource(pdev, bar.index, size, offset)
            except DmaBufError as e:
                pdev.topology.log.append(f"{pdev.dev_printk_prefix()}: failed to register the "
                                         f"CMB ({e.strerror})")
                return
            self._created_p2pdma = created
            self.cmb_size = size
            self.cmb_bar = bar.index
            self.cmb_use_sqes = bool(use_cmb_sqes and cmbsz & NVME_CMBSZ_SQS)
            if (cmbsz & (NVME_CMBSZ_WDS | NVME_CMBSZ_RDS)) == (NVME_CMBSZ_WDS | NVME_CMBSZ_RDS):
                pci_p2pmem_publish(pdev, True)
            if self.cmb_use_sqes:
                sq = depth * _SQE_SIZE
                for _ in range(nr_io_queues):
                    a = pci_alloc_p2pmem(pdev, sq)
                    if a is None:       # the kernel falls back to host memory for that SQ
                        break
                    self._sq_cmds.append((a, sq))
        self.p2pmem = P2pmemSysfs(self.platform, pdev)

    # ------------------------------------------------------------------ teardown
    def remove(self) -> None:
        """Unbind: drain the queue; release the CMB if this probe created it.

        User mappings of ``p2pmem/allocate`` are zapped (``pci_p2pdma_unmap_mappings``); pages
        still pinned keep their page map registered (the kernel would wait for them) and a WARN
        is recorded.

        Context: may sleep (drains the ``io`` ring).
        Kernel: drivers/nvme/host/pci.c, nvme_remove(); drivers/pci/p2pdma.c, devm actions
            pci_p2pdma_unmap_mappings() and pci_p2pdma_release().
        """
        if self.removed:
            return
        try:
            super().remove()
        finally:
            if self.p2pmem is not None and not self.cmb_adopted:
                self.p2pmem.allocate.zap_all()
                for a, n in self._sq_cmds:
                    pci_free_p2pmem(self.pdev, a, n)
                self._sq_cmds.clear()
                busy = False
                try:
                    pci_p2pdma_memunmap_pages(self.pdev)
                except ContractViolation as e:
                    busy = True
                    self.machine.warn("nvme_remove", str(e))
                if self._created_p2pdma and not busy:
                    pci_p2pdma_release(self.pdev)

    def describe(self) -> dict[str, Any]:
        """Snapshot: device, disk, CMB.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        d = super().describe()
        d.update({"disk": self.disk.name, "namespace_size": self.disk.capacity,
                  "cmb": {"bar": self.cmb_bar, "size": self.cmb_size,
                          "adopted": self.cmb_adopted, "sqes_in_cmb": len(self._sq_cmds)},
                  "io": dict(self.disk.stats)})
        return d


class VirtioBlk(Device):
    """A virtio-blk disk: a block queue **without** ``BLK_FEAT_PCI_P2PDMA``.

    ``platform.bind(VirtioBlk, "0000:00:11.0", disk_size=64 MiB)``. O_DIRECT into p2pmem fails
    with ``EREMOTEIO`` in GUP (no ``FOLL_PCI_P2PDMA``), before any P2P path decision — as the
    real kernel shows (machine spec §4).

    Kernel: drivers/block/virtio_blk.c (virtblk_probe; no P2PDMA feature).
    """

    driver_name: ClassVar[str] = "virtio_blk"
    class_codes: ClassVar[tuple[int, ...] | None] = (0x01,)
    rings: ClassVar[tuple[str, ...]] = ("io",)

    def __init__(self, platform: Platform, pdev: PciDev, *, name: str | None = None,
                 disk_size: int = 64 * _MIB, lba_size: int = 512) -> None:
        media = MediaStore(disk_size, lba_size)
        super().__init__(platform, pdev, name=name)
        self.instance = _disk_index(platform, VirtioBlk)
        self.disk = BlockDevice(self, "vd" + chr(ord("a") + self.instance), media, BlkFeat.NONE,
                                dma_alignment=lba_size - 1)

