"""HMM importers and SVM buffers of a scenario (``mode = "hmm"``) — the HMM API's users.

Kernel: mm/hmm.c (hmm_range_fault, hmm_dma_map_*), mm/migrate_device.c, lib/test_hmm.c, and the
two drivers whose behaviour a scenario's ``hmm`` import stands for:
drivers/gpu/drm/amd/amdkfd/kfd_svm.c + kfd_migrate.c (amdgpu's shared virtual memory: a GPU
mirrors process memory and migrates it into its VRAM as ``MEMORY_DEVICE_PRIVATE`` pages) and
drivers/infiniband/core/umem_odp.c + hw/mlx5/odp.c (an RDMA NIC's on-demand-paging MR over user
memory: ``mmu_interval_notifier`` + ``hmm_range_fault`` + ``hmm_dma_map_pfn``).

What an HMM import is
    An HMM importer does not attach to a dma-buf. It mirrors a **range of a process address
    space** (:class:`~dmabuf.mm.vma.MmStruct`, one "application" per host) in its own device
    page table, faults pages in with ``hmm_range_fault`` when its DMA touches them, and drops
    them when an MMU notifier says the CPU page table changed (migration, munmap). So a buffer
    imported in mode ``hmm`` is not a dma-buf but an **SVM buffer** (:class:`SvmExport`): process
    memory, placed where its "exporter" puts it:

    * ``system`` — anonymous memory (``malloc``) in RAM;
    * ``gpu`` — anonymous memory the GPU migrates into its VRAM as ``MEMORY_DEVICE_PRIVATE``
      pages (``placement = "vram"``, what amdgpu's SVM does on a PCIe-attached GPU: its
      ``kfd_migrate`` pgmap is DEVICE_PRIVATE unless the GPU is coherently attached to the CPU),
      or leaves in RAM (``"gtt"``);
    * ``nvme`` — a ``MAP_SHARED`` mmap of the controller's p2pmem ``allocate`` file: PCI P2PDMA
      pages (``VM_MIXEDMAP``), which ``hmm_range_fault`` returns and ``hmm_dma_map_pfn`` maps
      peer-to-peer (bus address through a switch, ``DMA_ATTR_MMIO`` through the host bridge).

    **The kernel choice for VRAM.** Device-private pages belong to their pgmap's owner: another
    device's ``hmm_range_fault`` (whose ``dev_private_owner`` differs — mlx5 ODP passes none) does
    not get them; the walk faults them, the owner's ``migrate_to_ram`` copies them back to system
    RAM, and the importer maps the RAM pages through its IOMMU. Mainline has no generic P2P to
    another device's private VRAM through HMM (the drm_pagemap multi-device work is DRM-internal
    and for GPUs sharing an owner), and VRAM is not ``MEMORY_DEVICE_PCI_P2PDMA`` (only p2pmem
    providers such as an NVMe CMB are). So an HMM import of a VRAM buffer moves it to host
    memory on first touch; a later ``restore`` (a prefetch back to VRAM,
    ``svm_migrate_ram_to_vram``) invalidates the importer, whose next access pulls the pages back
    again — the ping-pong the report's invalidation, fault and move counts show. P2P through HMM
    is real for p2pmem.

Drivers
    Each device that takes part gets an :class:`SvmDevice` — the dmirror model
    (:class:`~dmabuf.devices.hmm_mirror.HmmMirror`) instantiated on the **same PCI function** as
    its main driver (same ``struct device``, same IOMMU domain), standing for the HMM half of
    that driver (amdgpu's KFD SVM, mlx5's ODP). Exporting GPUs get a device-private pool sized to
    their SVM buffers. Two behaviours differ from dmirror, both as amdgpu's SVM does them:

    * ``migrate_to_ram`` migrates the faulting **granule** (2 MiB, KFD's default SVM range
      granularity) instead of one page (``svm_migrate_to_ram``);
    * VRAM accounting: while an SVM buffer's pages sit in device memory, a VRAM BO of its size
      (``svm_bo``, named ``svm:<buffer>``) holds the space in TTM; when TTM evicts that BO (memory
      pressure) a worker migrates the range to RAM (``svm_range_evict_svm_bo_worker``) — not
      under the BO's reservation, since mmap_lock must not nest inside dma_resv.

    Copies between VRAM and RAM take the modelled time of the copy over the fabric (charged in
    the thread doing the migration), as TTM moves do in the runner.

Transfers
    Device accesses are :meth:`HmmImport.access`: ``Mirror.read`` / ``Mirror.write`` — faults
    for missing entries, then real DMA through the mirror's ``hmm_dma_map`` under the mirror
    lock, page owners checked (a stale entry faults). The RDMA model has no ODP-on-user-memory
    MKeys, so a transfer with an HMM side moves its bytes through the two ends' own DMA
    translations (:func:`mr_access` for a dma-buf MR end: its MKey, with the driver's page-fault
    handler) instead of through a posted work request; the timing model charges the same flow.

Mapping memory of an HMM import is its ``hmm_dma_map``: the pfn list and the DMA list (8 bytes
each per page) and the 16-byte IOVA state; the representation is ``iova`` behind a DMA-API IOMMU
(``hmm_dma_map_alloc`` allocates one IOVA window per mirror), whatever the scenario asked for.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

import numpy as np

from dmabuf.devices.base import Device
from dmabuf.devices.hmm_mirror import HmmMirror, Mirror
from dmabuf.dma.dma_iommu import dma_use_iova
from dmabuf.errors import DmaBufError
from dmabuf.mm.hmm import HMM_PFN_DMA_MAPPED, HMM_PFN_VALID
from dmabuf.mm.migrate import (
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MigrateVma,
    alloc_page_vma,
    migrate_pfn,
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
)
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE
from dmabuf.mm.ranges import RANGE_DTYPE, coalesce
from dmabuf.mm.vma import (
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
    PTE_DEVICE_PRIVATE,
    VM_FAULT_SIGBUS,
    MmStruct,
    Vma,
    VmFault,
)
from dmabuf.pci.topology import PciDev
from dmabuf.sim.actors import Export, Import

if TYPE_CHECKING:
    from dmabuf.devices.platform import Platform
    from dmabuf.sim.runner import HostRun
    from dmabuf.sim.scenario import BufferSpec, ImportSpec

__all__ = ["SVM_GRANULE", "HmmImport", "SvmDevice", "SvmExport", "mr_access"]

#: KFD's default SVM range granularity (``svm_range_set_default_attributes``: 2^9 pages).
SVM_GRANULE = 2 << 20

_VALID = np.uint64(HMM_PFN_VALID)
_MAPPED = np.uint64(HMM_PFN_DMA_MAPPED)
_MIG = np.uint64(MIGRATE_PFN_MIGRATE)


# ----------------------------------------------------------------------------------------------
# The HMM half of a device's driver
# ----------------------------------------------------------------------------------------------


class SvmDevice(HmmMirror):
    """The dmirror model on a scenario device's PCI function, as that driver's HMM half.

    Args:
        platform, pdev, name: as :class:`~dmabuf.devices.base.Device` (not bound through the
            platform: the function is bound to its main driver, whose ``struct device`` this
            shares).
        devmem_size: device-private memory (the GPU's SVM pool; 0 for a pure importer).
        hr: the host run, charged with the modelled time of migration copies.

    Kernel: lib/test_hmm.c (the mirror), drivers/gpu/drm/amd/amdkfd/kfd_migrate.c
        (svm_migrate_to_ram, svm_migrate_vram_to_ram), drivers/infiniband/core/umem_odp.c.
    """

    driver_name = "hmm_svm"

    def __init__(self, platform: Platform, pdev: PciDev, *, name: str | None = None,
                 devmem_size: int = 0, hr: HostRun | None = None) -> None:
        super().__init__(platform, pdev, name=name, devmem_size=devmem_size)
        self.hr = hr
        self.granule = SVM_GRANULE

    # ------------------------------------------------------------------ copies (timed)
    def _charge(self, pages: int, to_vram: bool, label: str, evict: bool = False) -> None:
        if self.hr is not None and pages:
            self.hr.charge_device_copy(self, pages * PAGE_SIZE, to_vram, label, svm=True,
                                       evict=evict)

    def _alloc_and_copy_to_device(self, args: MigrateVma) -> None:
        """``dmirror_migrate_alloc_and_copy()`` / ``svm_migrate_copy_to_vram()``, timed."""
        before = self.stats["migrate_to_device"]
        super()._alloc_and_copy_to_device(args)
        self._charge(self.stats["migrate_to_device"] - before, True, args.vma.name)

    # ------------------------------------------------------------------ back to RAM
    def _devmem_fault(self, vmf: VmFault) -> int:
        """``svm_migrate_to_ram()``: a CPU or foreign-device fault on one of our pages migrates
        the whole granule around it (clipped to the VMA) back to system RAM."""
        vma = vmf.vma
        lo = max(vma.start, vmf.address - vmf.address % self.granule)
        hi = min(vma.end, lo + self.granule)
        try:
            self.migrate_range_to_ram(vma, lo, hi, fault_page=vmf.page)
        except DmaBufError:
            return VM_FAULT_SIGBUS
        return 0

    def migrate_range_to_ram(self, vma: Vma, start: int, end: int,
                             fault_page: int | None = None, *, evict: bool = False) -> int:
        """Migrate this device's private pages of ``[start, end)`` to RAM —
        ``svm_migrate_vram_to_ram()``.

        Args:
            vma: the (anonymous) VMA; start, end: page aligned, inside it.
            fault_page: the device page whose fault triggered it, or None (eviction).
            evict: record the copy as an eviction.
        Context: caller holds ``mmap_lock`` for reading; may sleep (notifiers, the copy time).
        Returns: pages migrated.
        Raises: DmaBufError from ``migrate_vma_setup`` (EINVAL) or RAM allocation (ENOMEM).
        Kernel: drivers/gpu/drm/amd/amdkfd/kfd_migrate.c, svm_migrate_vram_to_ram().
        """
        args = MigrateVma(vma, start, end, pgmap_owner=self,
                          flags=MIGRATE_VMA_SELECT_DEVICE_PRIVATE, fault_page=fault_page)
        migrate_vma_setup(args)
        self._zap_mirrors(vma.mm, start, end)
        mig = (args.src & _MIG) != 0
        n = int(np.count_nonzero(mig))
        try:
            if n:
                src = args.src_paddrs()[mig]
                dst = alloc_page_vma(vma, n)
                self._copy_to_ram(src, dst)
                args.dst[mig] = migrate_pfn(dst >> np.uint64(PAGE_SHIFT)) | \
                    np.uint64(MIGRATE_PFN_VALID)
                self.stats["migrate_to_ram"] += n
            migrate_vma_pages(args)
        finally:
            migrate_vma_finalize(args)
        self._charge(n, False, vma.name, evict)
        return n

    def evict_range(self, mm: MmStruct, start: int, end: int) -> int:
        """Migrate a whole SVM range out of device memory (an eviction, not a fault) — the
        ``svm_range_evict_svm_bo_worker`` / ``KFD_IOCTL_SVM_ATTR_PREFERRED_LOC = system`` path.

        Context: takes ``mmap_lock`` for reading; may sleep.
        Returns: pages migrated. Raises: as :meth:`migrate_range_to_ram`.
        Kernel: drivers/gpu/drm/amd/amdkfd/kfd_svm.c, svm_range_evict_svm_bo_worker().
        """
        with mm.read_locked():
            vma = mm.vma_lookup(start)
            if vma is None or end > vma.end:
                raise DmaBufError(errno.EINVAL, f"no single VMA covers [{start:#x}, {end:#x})")
            return self.migrate_range_to_ram(vma, start, end, evict=True)


# ----------------------------------------------------------------------------------------------
# SVM buffers
# ----------------------------------------------------------------------------------------------


class SvmExport(Export):
    """A buffer imported through HMM: a range of the host's application address space.

    See the module docstring for what each exporter kind makes of it. ``dmabuf`` is None: it is
    not a dma-buf. The truth view is the process page table itself (the pages the CPU would
    reach now, device-private ones included), read under the page-table lock.
    """

    kind = "svm"

    def __init__(self, hr: HostRun, spec: BufferSpec, dev: Device | None) -> None:
        super().__init__(hr, spec)
        self.dev = dev
        self.mm = hr.app_mm()
        exp_kind = "system" if spec.exporter == "system" else hr.host.device(spec.exporter).kind
        self.exp_kind = exp_kind
        self.svm: SvmDevice | None = None
        self.own: Mirror | None = None
        self.svm_bo: Any = None
        self.migrations = 0
        if exp_kind == "nvme":
            assert dev is not None
            p2pmem = getattr(dev, "p2pmem", None)
            if p2pmem is None:
                raise DmaBufError(errno.ENODEV, f"{dev.name} publishes no p2pmem to mmap")
            self.addr = self.mm.mmap(spec.size, PROT_READ | PROT_WRITE, MAP_SHARED,
                                     file=p2pmem.allocate, name=spec.name)
            self.kind = "svm:p2pmem"
        else:
            self.addr = self.mm.mmap(spec.size, name=spec.name)
            self.kind = "svm:anon"
        if exp_kind == "gpu":
            self.svm = hr.svm_device(spec.exporter)
            self.kind = "svm:amdgpu"
        vma = self.mm.vma_lookup(self.addr)
        assert vma is not None
        self.vma: Vma = vma

    # ------------------------------------------------------------------ truth view
    def _ranges_locked(self, offset: int, length: int) -> np.ndarray:
        i0 = offset >> PAGE_SHIFT
        i1 = -(-(offset + length) // PAGE_SIZE)
        pfn = self.vma.pfn[i0:i1]
        if bool(np.any(pfn == 0)):
            raise DmaBufError(errno.EFAULT, f"{self.name}: a page of [{offset:#x}, +{length:#x}) "
                              "is not populated")
        r = np.empty(i1 - i0, dtype=RANGE_DTYPE)
        r["addr"] = pfn << np.uint64(PAGE_SHIFT)
        r["len"] = PAGE_SIZE
        head = offset - (i0 << PAGE_SHIFT)
        r = coalesce(r)
        if head or length != (i1 - i0) * PAGE_SIZE:
            from dmabuf.mm.ranges import slice_ranges

            r = slice_ranges(r, head, length)
        return r

    def truth_ranges(self) -> np.ndarray:
        with self.mm.pt_locked():
            return self._ranges_locked(0, self.size)

    def read_back(self, offset: int, length: int) -> np.ndarray:
        """The bytes at ``offset`` through the process page table (no fault, no migration)."""
        with self.mm.pt_locked():
            return self.hr.phys.read(self._ranges_locked(offset, length))

    def device_pages(self) -> int:
        """Pages of the range now in device-private memory."""
        with self.mm.pt_locked():
            return int(np.count_nonzero(self.vma.pte & PTE_DEVICE_PRIVATE))

    def location(self) -> str:
        if self.exp_kind == "nvme":
            return "cmb"
        n = self.device_pages()
        if n == 0:
            return "ram"
        return "vram" if n == self.size // PAGE_SIZE else "vram+ram"

    @property
    def moved(self) -> int:
        """Migrations of the range, either way (the exporter's own and those a foreign
        device's fault caused): the copies recorded in the host's ``moves``."""
        return sum(1 for mv in self.hr.moves if mv["buffer"] == self.name)

    # ------------------------------------------------------------------ placement
    def write_initial(self, data: np.ndarray) -> None:
        """The application writes the initial content (CPU stores: populates the pages), then
        a ``vram`` buffer is prefetched into the GPU's memory."""
        self.mm.write(self.addr, data)
        if self.exp_kind == "gpu" and self.spec.placement == "vram":
            self._to_device()

    def _gpu(self) -> Any:
        return self.hr.devices[self.spec.exporter]

    def _to_device(self) -> int:
        """``svm_migrate_ram_to_vram()``: hold VRAM with an svm_bo, migrate the range in."""
        assert self.svm is not None
        self.reap()
        if self.svm_bo is None:
            from dmabuf.devices.gpu import AmdgpuDomain

            self.svm_bo = self._gpu().alloc_bo(self.size, domain=AmdgpuDomain.VRAM,
                                               name=f"svm:{self.name}")
        if self.own is None:
            self.own = self.svm.mirror(self.mm, self.addr, self.size)
        n = self.own.migrate_to_device(self.addr, self.size // PAGE_SIZE)
        self.migrations += 1
        return n

    def reap(self) -> None:
        """Free the svm_bo once no page of the range is in device memory (amdgpu frees it from
        a worker; the runner calls this from event threads, never under mmap_lock)."""
        bo = self.svm_bo
        if bo is not None and (not bo.in_vram or self.device_pages() == 0):
            self.svm_bo = None
            if not bo.freed:
                self._gpu().free_bo(bo)

    def evict(self) -> str:
        if self.svm is None:
            raise DmaBufError(errno.EOPNOTSUPP, f"{self.name} is process memory in "
                              f"{self.location()}: there is no device memory to evict it from")
        n = self.svm.evict_range(self.mm, self.addr, self.addr + self.size)
        if n:
            self.migrations += 1
        self.reap()
        return (f"{self.name}: SVM range migrated to RAM ({n} device-private pages; mirrors "
                "invalidated)" if n else f"{self.name}: already in RAM")

    def restore(self) -> str:
        if self.svm is None:
            raise DmaBufError(errno.EOPNOTSUPP, f"{self.name} has no device memory to move to")
        n = self._to_device()
        return (f"{self.name}: SVM range prefetched into VRAM ({n} pages migrated as "
                "DEVICE_PRIVATE; other devices' mirrors invalidated)")

    def svm_bo_evicted(self) -> None:
        """TTM evicted this range's svm_bo: migrate the range to RAM and free the BO — the
        eviction worker (runs in its own thread, not under the BO's reservation)."""
        if self.svm is None:
            return
        n = self.svm.evict_range(self.mm, self.addr, self.addr + self.size)
        if n:
            self.migrations += 1
        self.reap()

    def release(self) -> None:
        if self.own is not None:
            self.own.close()
            self.own = None
        if self.mm.users > 0 and self.mm.vma_lookup(self.addr) is self.vma:
            self.mm.munmap(self.addr, self.size)
        bo = self.svm_bo
        self.svm_bo = None
        if bo is not None and not bo.freed:
            self._gpu().free_bo(bo)


# ----------------------------------------------------------------------------------------------
# HMM importers
# ----------------------------------------------------------------------------------------------


class HmmImport(Import):
    """A device mirroring an SVM buffer with HMM (see the module docstring).

    Counters: ``faults`` = device faults resolved (``dmirror_fault``: one per access that found
    entries missing), ``invalidations`` = notifier invalidations that zapped part of the mirror,
    ``remaps`` = faults after an invalidation (re-faults), ``maps`` = 1 after the first fault.
    Modelled costs: ``odp_fault`` per fault, the DMA mapping of the faulted window, and
    ``invalidate_per_attachment`` per invalidation.
    """

    def __init__(self, hr: HostRun, spec: ImportSpec, export: Export, dev: Device) -> None:
        super().__init__(hr, spec, export, dev)
        self.svm = hr.svm_device(spec.device)
        self.mirror: Mirror | None = None
        self._faults_seen = 0
        self._inv_seen = 0
        self._inv_at_fault = 0

    def do_attach(self) -> None:
        """Open the mirror — ``mmu_interval_notifier_insert()`` over the buffer's range.

        Raises: DmaBufError(EINVAL) when the buffer is not an SVM buffer; what the notifier
            insert or ``hmm_dma_map_alloc`` raise (EOPNOTSUPP for a non-coherent device).
        Kernel: lib/test_hmm.c, dmirror_fops_open(); drivers/infiniband/core/umem_odp.c,
            ib_umem_odp_get().
        """
        exp = self.export
        if not isinstance(exp, SvmExport):
            raise DmaBufError(errno.EINVAL, f"{self.name}: an HMM importer mirrors process "
                              "memory, and this buffer is a dma-buf")
        self.mirror = self.svm.mirror(exp.mm, exp.addr, exp.size)
        self.hr.machine.trace.emit("scenario_attach", buffer=self.spec.buffer,
                                   device=self.spec.device, mode=self.mode)

    def map_initial(self) -> None:
        """Nothing is mapped until the device touches the range (a device page fault)."""

    def detach(self) -> None:
        """Close the mirror: remove the notifier, unmap every entry, free the IOVA window."""
        if self.mirror is not None:
            self.mirror.close()

    # ------------------------------------------------------------------ DMA
    def access(self, offset: int, length: int, write: bool,
               data: np.ndarray | None = None) -> tuple[np.ndarray | None, float]:
        """One device DMA through the mirror — ``dmirror_read`` / ``dmirror_write``: entries
        missing are faulted first (``hmm_range_fault``: a foreign device-private page migrates to
        RAM), then real bytes move under the mirror lock.

        Args: offset, length: the window of the buffer; write: DMA into it (``data``).
        Context: may block (faults, migrations, the mirror lock); takes ``mmap_lock`` for
            reading while faulting.
        Returns: (the bytes read or None, modelled seconds of faults and invalidations the
            caller must sleep).
        Raises: DmaBufError from the fault (EBUSY after the HMM timeout, EFAULT, EPERM,
            EREMOTEIO); IommuFault for a stale translation.
        Kernel: lib/test_hmm.c, dmirror_read(), dmirror_write().
        """
        mr = self.mirror
        assert mr is not None
        exp = self.export
        assert isinstance(exp, SvmExport)
        addr = exp.addr + offset
        out: np.ndarray | None = None
        if write:
            assert data is not None
            mr.write(addr, data)
        else:
            out = mr.read(addr, length)
        self.stats.dmas += 1
        cost = self._sync(length)
        self._describe(offset, length)
        return out, cost

    def _sync(self, length: int) -> float:
        """Fold the mirror's counters into the import's; the modelled cost of what is new."""
        mr = self.mirror
        assert mr is not None
        p = self.hr.params
        faults = int(mr.stats["faults"])
        inv = int(mr.stats["invalidations"])
        new_f = faults - self._faults_seen
        new_i = inv - self._inv_seen
        self._faults_seen, self._inv_seen = faults, inv
        self.stats.faults = faults
        self.stats.invalidations = inv
        cost = 0.0
        if new_i > 0:
            c = p.invalidate_cost(new_i)
            self.stats.invalidate_time += c
            cost += c
        if new_f > 0:
            pages = -(-length // p.iommu_page_size)
            iommu = bool(self.dev.dma.uses_dma_iommu)
            c = p.odp_fault_cost(new_f) + float(p.map_cost(pages, 1, iommu=iommu))
            if self.stats.maps == 0:
                self.stats.maps = 1
                self.stats.map_time += c
            elif inv > self._inv_at_fault:
                self.stats.remaps += 1
                self.stats.remap_time += c
            else:
                self.stats.map_time += c
            self._inv_at_fault = inv
            cost += c
        return cost

    def _describe(self, offset: int, length: int) -> None:
        """Describe the pages the window is mapped to now (path, map type, memory)."""
        mr = self.mirror
        assert mr is not None
        i0 = offset >> PAGE_SHIFT
        i1 = -(-(offset + length) // PAGE_SIZE)
        mr.lock.acquire()
        try:
            pf = mr.dmap.pfn_list[i0:i1].copy()
            dma = mr.dmap.dma_list[i0:i1].copy()
            local = mr.local[i0:i1].copy()
        finally:
            mr.lock.release()
        ok = ((pf & (_VALID | _MAPPED)) == (_VALID | _MAPPED)) & ~local
        if not bool(ok.any()):
            return
        r = np.empty(int(np.count_nonzero(ok)), dtype=RANGE_DTYPE)
        r["addr"] = dma[ok]
        r["len"] = PAGE_SIZE
        r = coalesce(r)
        try:
            m = self.hr.describe_mapping(self, r)
        except DmaBufError:
            return
        if m.memory in self.hr.pf.ram_of.values() and isinstance(self.export, SvmExport) \
                and self.export.exp_kind == "gpu":
            m.map_type = "HOST_MEMORY (HMM: device-private VRAM migrates to RAM)"
        elif m.memory in self.hr.pf.ram_of.values():
            m.map_type = "HOST_MEMORY"
        self.mapping = m
        if self.first is None:
            self.first = m
        if not self.stats.locations or self.stats.locations[-1] != m.location:
            self.stats.locations.append(m.location)

    def repr_info(self, table: Any, dma: np.ndarray, iommu: bool = True
                  ) -> tuple[str, str, int, int]:
        """An HMM mirror holds an ``hmm_dma_map``: pfn + DMA address per page and the IOVA
        state (``hmm_dma_map_alloc``) — ``iova`` when its pages go through that IOVA window
        behind a DMA-API IOMMU; P2P pages reached by bus address (``HMM_PFN_P2PDMA_BUS``) and
        devices without an IOMMU use no IOVA (``hmm_dma_map``)."""
        mr = self.mirror
        assert mr is not None
        dm = mr.dmap
        nbytes = int(dm.pfn_list.nbytes + dm.dma_list.nbytes) + 16
        used = "iova" if dma_use_iova(dm.state) and iommu else "hmm_dma_map"
        note = ""
        if used != self.spec.repr:
            if self.spec.repr == "iova":
                note = ("n/a: P2P pages are reached by PCI bus address (HMM_PFN_P2PDMA_BUS), "
                        "which bypasses the IOMMU" if dma_use_iova(dm.state) else
                        "n/a: no DMA-API IOMMU: hmm_dma_map_pfn maps each page with "
                        "dma_map_phys")
            else:
                note = ("n/a: an HMM mirror keeps an hmm_dma_map (pfn and DMA address per page"
                        + (", one IOVA window)" if dma_use_iova(dm.state) else ")"))
        return used, note, nbytes, int(mr.npages)


# ----------------------------------------------------------------------------------------------
# The MR end of a transfer with an HMM end
# ----------------------------------------------------------------------------------------------


def mr_access(imp: Any, offset: int, length: int, write: bool,
              data: np.ndarray | None = None) -> np.ndarray | None:
    """DMA through a dma-buf MR's MKey, as the HCA does for one segment — no single kernel
    symbol (the HCA hardware, and ``mlx5_ib_page_fault`` for a non-present translation).

    Used for the MR end of a transfer whose other end is an HMM mirror (see the module
    docstring): take the MKey's hardware lock, translate, resolve through the NIC's DMA view
    with the page-owner check and move the bytes; a non-present entry of an ODP key faults in
    (``pagefault_dmabuf_mr``) with no lock held, and retries.

    Args: imp: the :class:`~dmabuf.sim.actors.MrImport`; offset, length: the window of the MR;
        write: the NIC writes ``data`` into it.
    Context: may block (the MKey lock, page faults take the buffer's resv).
    Returns: the bytes read (None for a write).
    Raises: DmaBufError(EACCES) for a disabled (revoked, deregistered) key, EFAULT for a
        non-present entry of a non-ODP key; IommuFault for a stale translation.
    Kernel: drivers/infiniband/hw/mlx5/odp.c, mlx5_ib_page_fault() (for the fault).
    """
    from dmabuf.devices.rdma.odp import mlx5_ib_page_fault

    mr = imp.mr
    mk = mr.mmkey
    dev = imp.dev
    va = int(mr.iova) + offset
    for _ in range(8):
        mk.hw_lock.acquire()
        try:
            if not mk.enabled or mr.deregistered:
                raise DmaBufError(errno.EACCES, f"MKey {mk.key:#x} of {imp.name} is disabled")
            d = mk.xlate(va, length)
            if d is not None:
                phys = dev.engine.resolve(d, owner=mk.owners,
                                          op=f"rdma.{'write' if write else 'read'}", write=write)
                if write:
                    assert data is not None
                    imp.hr.phys.write(phys, data)
                    return None
                out: np.ndarray = imp.hr.phys.read(phys)
                return out
        finally:
            mk.hw_lock.release()
        if not mk.odp:
            raise DmaBufError(errno.EFAULT, f"MKey {mk.key:#x}: translation not present and "
                              "the key is not an ODP key")
        mlx5_ib_page_fault(dev, mk.key, va, length)
    raise DmaBufError(errno.EFAULT, f"{imp.name}: the buffer kept moving under the MKey")
