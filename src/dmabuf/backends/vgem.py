"""drivers/gpu/drm/vgem (vgem_drv.c, vgem_fence.c) with the slices of the DRM core it uses.

vgem is a DRM device without hardware: GEM objects backed by shmem ("dumb buffers"), PRIME
export/import, and fences user space attaches to an object's reservation and signals itself.
It is what IGT and the parity table use as a stand-in GPU. This module models the driver and
the DRM core paths the uAPI reaches, on the layers below (the fences are
:class:`~dmabuf.sync.dma_fence.DmaFence` s, the reservation objects
:class:`~dmabuf.sync.dma_resv.DmaResv`, the shmem pages :class:`~dmabuf.mm.memfd.MemFd` pages,
the PRIME exports :class:`~dmabuf.buf.dma_buf.DmaBuf` s):

* :class:`VgemDriver` — the ``drm_device`` of the machine: the ``/dev/dri/card0`` (and
  ``renderD128``) node, the importing device (a :class:`~dmabuf.buf.device.DirectDev` named
  ``vgem``), the fake-offset space of ``MODE_MAP_DUMB`` (``drm_vma_offset_manager``, from
  ``DRM_FILE_PAGE_OFFSET_START``) and the per-fence 10 s timers;
* :class:`VgemFile` — one open of the node (``drm_file`` + ``vgem_file``): the GEM handle table
  (``object_idr``, lowest free id from 1), the PRIME table (``drm_prime_file_private``: each
  entry holds a dma-buf reference) and the fence table (``fence_idr``, ids from 1);
* :class:`VgemObject` — ``drm_gem_shmem_object``: a shmem file, pages pinned on first use
  (``drm_gem_shmem_get_pages``), a reservation object (its own, or the imported buffer's), the
  export cache ``obj->dma_buf`` (a dma-buf reference) and ``import_attach``;
* the DRM ioctls the bindings use, decoded from the raw argument bytes exactly as ``drm_ioctl()``
  copies them (``_IOC_SIZE`` in, zero-filled up to the kernel's size, ``_IOC_SIZE`` out):
  ``VERSION``, ``GEM_CLOSE``, ``PRIME_HANDLE_TO_FD``, ``PRIME_FD_TO_HANDLE``,
  ``MODE_CREATE_DUMB``, ``MODE_MAP_DUMB``, ``VGEM_FENCE_ATTACH``, ``VGEM_FENCE_SIGNAL``; any other
  number is ``EINVAL`` (``drm_ioctl``'s answer for an unknown or unimplemented nr);
* ``mmap`` of the DRM fd at a ``MODE_MAP_DUMB`` offset (``drm_gem_mmap`` →
  ``drm_gem_shmem_mmap``: exact offset lookup, ``EINVAL`` past the object or for a private
  (copy-on-write) mapping), and of the PRIME dma-buf (``drm_gem_prime_mmap``, same rules).

Reference counts follow drm_prime.c and drm_gem.c, because fdinfo shows them: a first PRIME
export holds three references to the dma-buf — the fd, the GEM object's export cache and the
exporting file's PRIME table (``count: 3`` in fdinfo); a re-export of the same handle returns the
same dma-buf; importing it back into the same file returns the same handle (PRIME table lookup);
importing a foreign dma-buf attaches and maps it for the ``vgem`` device and takes three
references (``import_attach``, the export cache and the PRIME table), all dropped by
``GEM_CLOSE`` of the last handle. Closing the DRM file releases every handle and signals every
fence still in its table (``vgem_fence_close``).

Fences (vgem_fence.c): driver name ``vgem``, timeline ``unbound``, a fresh context each,
seqno 1. The ops provide ``release`` (cancelling the timer), so unlike names-only fences they
stay attached after signalling (v7.1 detaches only ops without ``release``/``wait``). A fence
not signalled within :attr:`VgemDriver.fence_timeout` (``VGEM_FENCE_TIMEOUT``, 10 s) is
signalled by its timer; ``VGEM_FENCE_SIGNAL`` then reports ``ETIMEDOUT``.

Deliberate differences: the timers of all fences share one worker (started when a fence is
armed, gone when none is pending) instead of one ``timer_list`` each, and a fence signalled by
the ioctl disarms its timer at once (the kernel leaves it armed until the fence is freed; a
timer firing on a signalled fence does nothing, so only thread lifetimes differ); imported
objects cannot be CPU-mapped through vgem (``MODE_MAP_DUMB`` gives ``EINVAL``, as in the
kernel); DRM core ioctls other than the eight above are not modelled (``EINVAL``); the DRM
fdinfo shows only ``drm-driver`` and ``drm-client-id``.

Locking: a file's handle, PRIME and fence tables are protected by its ``lock`` (the kernel's
``table_lock``, ``prime.lock`` and ``fence_mutex``), an object's counts by the driver's
``object_lock``; both are held only for table updates, never across a call that may block.

Kernel: drivers/gpu/drm/vgem/vgem_drv.c, vgem_fence.c; drivers/gpu/drm/drm_prime.c
(drm_gem_prime_handle_to_dmabuf, drm_gem_prime_fd_to_handle, drm_gem_prime_import_dev,
drm_gem_prime_dmabuf_ops); drivers/gpu/drm/drm_gem.c (drm_gem_handle_create_tail,
drm_gem_handle_delete, drm_gem_object_release_handle, drm_gem_mmap); drivers/gpu/drm/drm_ioctl.c
(drm_ioctl, drm_version); drivers/gpu/drm/drm_dumb_buffers.c; drivers/gpu/drm/
drm_gem_shmem_helper.c; include/uapi/drm/vgem_drm.h, drm.h, drm_mode.h.
"""

from __future__ import annotations

import ctypes
import errno
import threading
from typing import Any

from dmabuf.buf.device import DirectDev, DmaDataDirection
from dmabuf.buf.dma_buf import (
    DmaBuf,
    DmaBufAttachment,
    DmaBufExportInfo,
    DmaBufOps,
    Vma,
    VmOps,
    dma_buf_export,
    dma_buf_get,
)
from dmabuf.buf.file import (
    O_ACCMODE,
    O_CLOEXEC,
    O_RDWR,
    File,
    FileOperations,
    current_process,
    user_buffer,
)
from dmabuf.buf.phys_vec import PhysView
from dmabuf.buf.sg_table import SgTable
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm.memfd import MemFd, MemFdPin
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE, PhysMemory, PhysRegion
from dmabuf.mm.ranges import slice_ranges
from dmabuf.sched import Task
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps
from dmabuf.sync.dma_resv import DmaResv, DmaResvUsage, usage_rw
from dmabuf.uapi.ioctl import ioc_nr, ioc_size
from dmabuf.uapi.vgem import (
    DRM_IOCTL_GEM_CLOSE,
    DRM_IOCTL_MODE_CREATE_DUMB,
    DRM_IOCTL_MODE_MAP_DUMB,
    DRM_IOCTL_PRIME_FD_TO_HANDLE,
    DRM_IOCTL_PRIME_HANDLE_TO_FD,
    DRM_IOCTL_VERSION,
    DRM_IOCTL_VGEM_FENCE_ATTACH,
    DRM_IOCTL_VGEM_FENCE_SIGNAL,
    VGEM_FENCE_WRITE,
    DrmGemClose,
    DrmModeCreateDumb,
    DrmModeMapDumb,
    DrmPrimeHandle,
    DrmVersion,
    DrmVgemFenceAttach,
    DrmVgemFenceSignal,
)

__all__ = [
    "DRM_FILE_PAGE_OFFSET_START",
    "VGEM_FENCE_TIMEOUT",
    "VgemDriver",
    "VgemFence",
    "VgemFile",
    "VgemFileOps",
    "VgemObject",
    "VgemPrimeOps",
]

#: ``VGEM_FENCE_TIMEOUT`` (vgem_fence.c: 10*HZ), in seconds.
VGEM_FENCE_TIMEOUT = 10.0
#: ``DRM_FILE_PAGE_OFFSET_START`` on 64-bit (drm_gem.c): first fake mmap offset, in pages.
DRM_FILE_PAGE_OFFSET_START = (0xFFFFFFFF >> PAGE_SHIFT) + 1
#: ``DRM_CLOEXEC`` / ``DRM_RDWR`` (include/uapi/drm/drm.h).
DRM_CLOEXEC = O_CLOEXEC
DRM_RDWR = O_RDWR
_IOC_IN = 1 << 30     # _IOC_WRITE << _IOC_DIRSHIFT: user space writes, the kernel reads
_IOC_OUT = 2 << 30    # _IOC_READ << _IOC_DIRSHIFT: the kernel writes back
_U32 = 0xFFFFFFFF

# drm_version strings (vgem_drv.c: DRIVER_NAME, DRIVER_DESC, DRIVER_DATE; 1.0.0)
_NAME, _DESC, _DATE = b"vgem", b"Virtual GEM provider", b"20120112"


def _copy_to_user(addr: int, data: bytes) -> None:
    """``copy_to_user`` through a raw address of this process (a pointer inside a struct)."""
    if not data:
        return
    if not addr:
        raise DmaBufError(errno.EFAULT, "copy_to_user: NULL user pointer")
    ctypes.memmove(addr, data, len(data))


# ------------------------------------------------------------------------------------------
# fences (vgem_fence.c)
# ------------------------------------------------------------------------------------------


class _VgemFenceOps(DmaFenceOps):
    """``vgem_fence_ops``: names ``vgem``/``unbound``, ``release`` cancels the timer."""

    def get_driver_name(self, fence: DmaFence) -> str:
        return "vgem"

    def get_timeline_name(self, fence: DmaFence) -> str:
        return "unbound"

    def release(self, fence: DmaFence) -> None:
        """``vgem_fence_release()``: ``del_timer_sync`` then free."""
        assert isinstance(fence, VgemFence)
        fence.driver.timers.cancel(fence)


_FENCE_OPS = _VgemFenceOps()


class VgemFence(DmaFence):
    """``struct vgem_fence``: a fence with its own context (seqno 1) and a timeout timer.

    Created by ``VGEM_FENCE_ATTACH`` (:meth:`VgemFile.fence_attach`), never directly by users.
    Kernel: drivers/gpu/drm/vgem/vgem_fence.c, vgem_fence_create().
    """

    __slots__ = ("driver",)

    def __init__(self, driver: VgemDriver) -> None:
        m = driver.machine
        super().__init__(_FENCE_OPS, m.fence_context_alloc(1), 1, machine=m)
        self.driver = driver


class _FenceTimers:
    """The vgem fences' timers (``timer_setup`` + ``mod_timer``): one worker for all of them.

    The worker runs on the machine's scheduler while a timer is armed and exits when none is.
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._lock = machine.sched.lock("vgem.timers")
        self._cond = machine.sched.condition(self._lock, "vgem.timers")
        self._due: dict[VgemFence, float] = {}
        self._task: Task | None = None

    @property
    def armed(self) -> int:
        """Number of armed timers."""
        return len(self._due)

    def arm(self, fence: VgemFence, timeout: float) -> None:
        """``mod_timer(&fence->timer, jiffies + timeout)``."""
        sched = self.machine.sched
        with self._lock:
            self._due[fence] = sched.now() + timeout
            self._cond.notify_all()
            if self._task is None:
                self._task = sched.spawn(self._run, name="vgem_fence_timer")

    def cancel(self, fence: VgemFence) -> None:
        """``del_timer_sync(&fence->timer)`` (the model does not wait for a running handler)."""
        with self._lock:
            if self._due.pop(fence, None) is not None:
                self._cond.notify_all()

    def _run(self) -> None:
        sched = self.machine.sched
        while True:
            with self._lock:
                while True:
                    if not self._due:
                        self._task = None
                        return
                    now = sched.now()
                    first = min(self._due.values())
                    if first <= now:
                        expired = [f for f, t in self._due.items() if t <= now]
                        for f in expired:
                            del self._due[f]
                        break
                    self._cond.wait(first - now, what="vgem fence timer")
            for f in expired:
                f.signal()   # vgem_fence_timeout(): dma_fence_signal()

    def join(self, timeout: float | None = 10.0) -> bool:
        """Wait for the worker to exit (after every timer was cancelled or fired)."""
        with self._lock:
            task = self._task
        return task is None or task.join(timeout)


# ------------------------------------------------------------------------------------------
# GEM objects (drm_gem.c, drm_gem_shmem_helper.c)
# ------------------------------------------------------------------------------------------


class VgemObject:
    """A GEM object of vgem — ``struct drm_gem_shmem_object``.

    Attributes:
        driver: the device; size: bytes (page aligned); resv: the reservation object (its own,
        or the imported dma-buf's); dma_buf: the export cache (``obj->dma_buf``, holding a
        reference) or None; import_attach / import_sgt: set for an imported dma-buf;
        handle_count: handles in all files; refcount: ``kref``; mmap_pgoff: the fake offset
        of ``MODE_MAP_DUMB`` in pages (0 until asked).

    Kernel: include/drm/drm_gem.h (struct drm_gem_object), include/drm/drm_gem_shmem_helper.h.
    """

    def __init__(self, driver: VgemDriver, size: int, *, imported: DmaBuf | None = None) -> None:
        self.driver = driver
        self.size = size
        self.refcount = 1
        self.handle_count = 0
        self.dma_buf: DmaBuf | None = None
        self.import_attach: DmaBufAttachment | None = None
        self.import_sgt: Any = None
        self.mmap_pgoff = 0
        self._pin: MemFdPin | None = None
        self.freed = False
        if imported is None:
            # drm_gem_object_init(): a shmem file of the object's size.
            self.shmem: MemFd | None = MemFd(driver.phys, "drm mm object", 0,
                                             region=driver.region)
            self.shmem.ftruncate(size)
            self.resv = DmaResv(machine=driver.machine)
            self._own_resv = True
        else:
            self.shmem = None
            self.resv = imported.resv       # obj->resv = dma_buf->resv
            self._own_resv = False

    def __repr__(self) -> str:
        return (f"<VgemObject size={self.size} handles={self.handle_count} refs={self.refcount}"
                f"{' imported' if self.import_attach is not None else ''}>")

    @property
    def pages(self) -> Any:
        """The pinned pages (``RANGE_DTYPE``), pinning them first — ``drm_gem_shmem_get_pages``.

        Raises: DmaBufError(EINVAL): an imported object has no shmem pages.
        """
        if self.shmem is None:
            raise DmaBufError(errno.EINVAL, "an imported GEM object has no shmem pages")
        with self.driver.object_lock:
            if self._pin is None:
                self._pin = self.shmem.pin_pages(0, self.size)
            return self._pin.ranges()

    def get(self) -> VgemObject:
        """``drm_gem_object_get()``."""
        with self.driver.object_lock:
            if self.refcount <= 0:
                raise ContractViolation("drm_gem_object_get", f"{self!r}: use after free")
            self.refcount += 1
        return self

    def put(self) -> None:
        """``drm_gem_object_put()``; the last reference frees the object."""
        with self.driver.object_lock:
            if self.refcount <= 0:
                raise ContractViolation("drm_gem_object_put", f"{self!r}: put underflow")
            self.refcount -= 1
            last = self.refcount == 0
        if last:
            self._free()

    def _free(self) -> None:
        """``drm_gem_shmem_free()`` / ``drm_prime_gem_destroy()``."""
        self.freed = True
        if self.import_attach is not None:
            attach, sgt = self.import_attach, self.import_sgt
            self.import_attach = self.import_sgt = None
            dmabuf = attach.dmabuf
            attach.unmap_unlocked(sgt, DmaDataDirection.BIDIRECTIONAL)
            dmabuf.detach(attach)
            dmabuf.put()
        if self._pin is not None:
            self._pin.unpin()
            self._pin = None
        if self.shmem is not None:
            self.shmem.release()
        if self._own_resv:
            self.resv.fini()


# ------------------------------------------------------------------------------------------
# PRIME export (drm_prime.c, drm_gem_prime_dmabuf_ops)
# ------------------------------------------------------------------------------------------


class VgemPrimeOps(DmaBufOps):
    """``drm_gem_prime_dmabuf_ops`` for vgem's shmem objects (no CPU-access hooks).

    Kernel: drivers/gpu/drm/drm_prime.c, drm_gem_prime_dmabuf_ops.
    """

    def attach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        """``drm_gem_map_attach()``: pin the pages (``drm_gem_shmem_pin``)."""
        obj: VgemObject = dmabuf.priv
        _ = obj.pages

    def detach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        """``drm_gem_map_detach()``: unpin (pages stay pinned until the object is freed)."""

    def map_dma_buf(self, attach: DmaBufAttachment, direction: DmaDataDirection) -> SgTable:
        """``drm_gem_map_dma_buf()``: ``get_sg_table`` then ``dma_map_sgtable``."""
        obj: VgemObject = attach.dmabuf.priv
        return SgTable.from_pages(obj.pages, size=obj.size).map_or_free(attach.dev, direction)

    def unmap_dma_buf(self, attach: DmaBufAttachment, table: Any,
                      direction: DmaDataDirection) -> None:
        """``drm_gem_unmap_dma_buf()``."""
        table.unmap_and_free(attach.dev, direction)

    def mmap(self, dmabuf: DmaBuf, vma: Vma) -> None:
        """``drm_gem_dmabuf_mmap()`` → ``drm_gem_shmem_mmap()`` (shared mappings only)."""
        obj: VgemObject = dmabuf.priv
        obj.driver.map_object(obj, vma, vma.pgoff << PAGE_SHIFT)

    def vmap(self, dmabuf: DmaBuf) -> PhysView:
        """``drm_gem_dmabuf_vmap()``."""
        obj: VgemObject = dmabuf.priv
        return PhysView(obj.driver.phys, obj.pages)

    def vunmap(self, dmabuf: DmaBuf, vmap: Any) -> None:
        """``drm_gem_dmabuf_vunmap()``."""
        vmap.close()

    def release(self, dmabuf: DmaBuf) -> None:
        """``drm_gem_dmabuf_release()``: drop the object reference the export took."""
        obj: VgemObject = dmabuf.priv
        obj.put()


# ------------------------------------------------------------------------------------------
# the device
# ------------------------------------------------------------------------------------------


class VgemDriver:
    """The vgem ``drm_device`` of one model kernel.

    Args:
        machine: the machine.
        phys: the physical memory (shmem pages come from ``region``).
        region: the RAM region of the objects' pages.

    Attributes:
        fence_timeout: ``VGEM_FENCE_TIMEOUT`` in seconds (10; tests may lower it).
        dev: the importing device of PRIME imports (``vgem``, dma-direct).
        nodes: the device nodes under ``/dev/dri``.

    Kernel: drivers/gpu/drm/vgem/vgem_drv.c, vgem_init().
    """

    nodes = ("card0", "renderD128")

    def __init__(self, machine: Machine, phys: PhysMemory, region: PhysRegion) -> None:
        self.machine = machine
        self.phys = phys
        self.region = region
        self.fence_timeout = VGEM_FENCE_TIMEOUT
        self.dev = DirectDev("vgem", phys)
        self.prime_ops = VgemPrimeOps()
        self.fops = VgemFileOps()
        self.timers = _FenceTimers(machine)
        self.object_lock = threading.Lock()
        self._offset_lock = threading.Lock()
        self._next_pgoff = DRM_FILE_PAGE_OFFSET_START
        self._by_pgoff: dict[int, VgemObject] = {}
        self._next_client = 1

    def __repr__(self) -> str:
        return f"<VgemDriver timers={self.timers.armed}>"

    def open(self, flags: int) -> int:
        """``open("/dev/dri/card0")`` in the current process — ``drm_open()`` + ``vgem_open()``.

        Returns: the fd. Raises: DmaBufError(EMFILE).
        Kernel: drivers/gpu/drm/drm_file.c, drm_open_helper(); vgem_drv.c, vgem_open().
        """
        with self._offset_lock:
            client = self._next_client
            self._next_client += 1
        vfile = VgemFile(self, client)
        f = File(self.fops, vfile, flags=flags & ~O_CLOEXEC, machine=self.machine)
        try:
            return current_process(self.machine).fds.install(f, flags & O_CLOEXEC)
        except BaseException:
            f.put()
            raise

    # -- mmap offsets (drm_vma_manager.c) -------------------------------------------------
    def mmap_offset(self, obj: VgemObject) -> int:
        """``drm_gem_create_mmap_offset()`` + ``drm_vma_node_offset_addr()``: bytes."""
        with self._offset_lock:
            if not obj.mmap_pgoff:
                obj.mmap_pgoff = self._next_pgoff
                self._next_pgoff += obj.size >> PAGE_SHIFT
                self._by_pgoff[obj.mmap_pgoff] = obj
            return obj.mmap_pgoff << PAGE_SHIFT

    def _drop_offset(self, obj: VgemObject) -> None:
        with self._offset_lock:
            if obj.mmap_pgoff:
                self._by_pgoff.pop(obj.mmap_pgoff, None)

    def lookup_offset(self, pgoff: int) -> VgemObject | None:
        """``drm_vma_offset_exact_lookup_locked()``: the object whose offset starts at pgoff."""
        with self._offset_lock:
            return self._by_pgoff.get(pgoff)

    def map_object(self, obj: VgemObject, vma: Vma, start: int) -> None:
        """``drm_gem_shmem_mmap()``: a view of the pages from byte ``start`` (shared only).

        Raises: DmaBufError(EINVAL): a private mapping (``is_cow_mapping``), an imported
            object, or a range past the object.
        """
        if not vma.shared:
            raise DmaBufError(errno.EINVAL, "drm_gem_shmem_mmap: private (copy-on-write) "
                              "mappings of GEM objects are refused; use MAP_SHARED")
        if obj.shmem is None:
            raise DmaBufError(errno.EINVAL, "an imported GEM object cannot be mapped through "
                              "vgem: map the original dma-buf")
        if start < 0 or start + vma.length > obj.size:
            raise DmaBufError(errno.EINVAL, f"mapping [{start}, {start + vma.length}) of a "
                              f"{obj.size}-byte GEM object: past its end")
        vma.view = PhysView(self.phys, slice_ranges(obj.pages, start, vma.length))

    # -- fences -----------------------------------------------------------------------------
    def fence_create(self) -> VgemFence:
        """``vgem_fence_create()``: a new fence with its timer armed."""
        fence = VgemFence(self)
        self.timers.arm(fence, self.fence_timeout)
        return fence

    def shutdown(self, timeout: float | None = 10.0) -> bool:
        """Wait for the fence-timer worker to exit (model teardown helper)."""
        return self.timers.join(timeout)


class VgemFile:
    """One open of the vgem node — ``struct drm_file`` + ``struct vgem_file``.

    Kernel: include/drm/drm_file.h; drivers/gpu/drm/vgem/vgem_drv.h (struct vgem_file).
    """

    def __init__(self, driver: VgemDriver, client_id: int) -> None:
        self.driver = driver
        self.machine = driver.machine
        self.client_id = client_id
        self.lock = threading.Lock()
        self.handles: dict[int, VgemObject] = {}
        self.prime: dict[DmaBuf, int] = {}        # dma-buf -> handle, one reference each
        self.fences: dict[int, VgemFence | None] = {}
        self.released = False

    def __repr__(self) -> str:
        return f"<VgemFile client={self.client_id} handles={sorted(self.handles)}>"

    # -- handles (drm_gem.c) ------------------------------------------------------------------
    def lookup(self, handle: int) -> VgemObject | None:
        """``drm_gem_object_lookup()``: the object with a new reference, or None."""
        with self.lock:
            obj = self.handles.get(handle)
            if obj is not None:
                obj.get()
        return obj

    def handle_create(self, obj: VgemObject) -> int:
        """``drm_gem_handle_create_tail()``: the lowest free handle >= 1 (takes a handle ref)."""
        with self.driver.object_lock:
            if obj.handle_count == 0:
                obj.refcount += 1          # drm_gem_object_handle_get(): first handle
            obj.handle_count += 1
        with self.lock:
            h = 1
            while h in self.handles:
                h += 1
            self.handles[h] = obj
        return h

    def handle_delete(self, handle: int) -> None:
        """``drm_gem_handle_delete()``.

        Raises: DmaBufError(EINVAL): no such handle.
        """
        with self.lock:
            obj = self.handles.pop(handle, None)
        if obj is None:
            raise DmaBufError(errno.EINVAL, f"GEM handle {handle} does not exist in this file")
        self._release_handle(handle, obj)

    def _release_handle(self, handle: int, obj: VgemObject) -> None:
        """``drm_gem_object_release_handle()``: PRIME entries, then the handle reference."""
        with self.lock:
            gone = [b for b, h in self.prime.items() if h == handle]
            for b in gone:
                del self.prime[b]
        for b in gone:
            b.put()                      # drm_prime_remove_buf_handle()
        with self.driver.object_lock:
            obj.handle_count -= 1
            final = obj.handle_count == 0
            cached = obj.dma_buf if final else None
            if final:
                obj.dma_buf = None
        if final:
            self.driver._drop_offset(obj)
            if cached is not None:
                cached.put()             # drm_gem_object_exported_dma_buf_free()
            obj.put()

    # -- PRIME (drm_prime.c) ----------------------------------------------------------------
    def prime_handle_to_fd(self, handle: int, flags: int) -> int:
        """``DRM_IOCTL_PRIME_HANDLE_TO_FD`` — ``drm_gem_prime_handle_to_dmabuf()`` + fd.

        Raises: DmaBufError(EINVAL): flags other than DRM_CLOEXEC|DRM_RDWR;
            DmaBufError(ENOENT): unknown handle; DmaBufError(EMFILE).
        Kernel: drivers/gpu/drm/drm_prime.c, drm_prime_handle_to_fd_ioctl().
        """
        if flags & ~(DRM_CLOEXEC | DRM_RDWR):
            raise DmaBufError(errno.EINVAL, f"PRIME_HANDLE_TO_FD flags {flags:#x}: only "
                              "DRM_CLOEXEC and DRM_RDWR are allowed")
        obj = self.lookup(handle)
        if obj is None:
            raise DmaBufError(errno.ENOENT, f"PRIME_HANDLE_TO_FD: no GEM object with handle "
                              f"{handle}")
        try:
            with self.lock:
                dmabuf = next((b for b, h in self.prime.items() if h == handle), None)
                if dmabuf is not None:
                    dmabuf.get()                       # out_have_handle
            if dmabuf is None:
                dmabuf = self._export(obj, flags)
                with self.lock:
                    self.prime[dmabuf] = handle
                dmabuf.get()                           # drm_prime_add_buf_handle()
        finally:
            obj.put()
        try:
            return dmabuf.fd(flags & DRM_CLOEXEC)
        except BaseException:
            dmabuf.put()
            raise

    def _export(self, obj: VgemObject, flags: int) -> DmaBuf:
        """The dma-buf of ``obj`` with a reference for the caller (re-export or a new one)."""
        drv = self.driver
        with drv.object_lock:
            if obj.import_attach is not None:
                dmabuf = obj.import_attach.dmabuf
                dmabuf.get()
                return dmabuf
            if obj.dma_buf is not None:
                obj.dma_buf.get()
                return obj.dma_buf
        # export_and_register_object(): drm_gem_prime_export() takes an object reference.
        info = DmaBufExportInfo(exp_name="drm", ops=drv.prime_ops, size=obj.size,
                                flags=flags & (O_ACCMODE | DRM_CLOEXEC), resv=obj.resv,
                                priv=obj)
        obj.get()
        try:
            dmabuf = dma_buf_export(info, drv.machine)
        except BaseException:
            obj.put()
            raise
        with drv.object_lock:
            obj.dma_buf = dmabuf
        dmabuf.get()                                   # the export cache's reference
        return dmabuf

    def prime_fd_to_handle(self, fd: int) -> int:
        """``DRM_IOCTL_PRIME_FD_TO_HANDLE`` — ``drm_gem_prime_fd_to_handle()``.

        Raises: DmaBufError(EBADF): ``fd`` not open; DmaBufError(EINVAL): not a dma-buf;
            the errors of attaching/mapping a foreign buffer.
        Kernel: drivers/gpu/drm/drm_prime.c, drm_gem_prime_fd_to_handle(),
            drm_gem_prime_import_dev().
        """
        drv = self.driver
        dmabuf = dma_buf_get(fd, drv.machine)
        try:
            with self.lock:
                handle = self.prime.get(dmabuf)
            if handle is not None:
                return handle
            obj = self._import(dmabuf)
            with drv.object_lock:
                if obj.dma_buf is None:
                    obj.dma_buf = dmabuf
                    cache_ref = True
                else:
                    cache_ref = False
            if cache_ref:
                dmabuf.get()
            handle = self.handle_create(obj)
            obj.put()                                   # the handle holds it now
            with self.lock:
                self.prime[dmabuf] = handle
            dmabuf.get()                                # drm_prime_add_buf_handle()
            return handle
        finally:
            dmabuf.put()

    def _import(self, dmabuf: DmaBuf) -> VgemObject:
        """``drm_gem_prime_import_dev()``: self-import or attach + map a foreign buffer."""
        drv = self.driver
        if dmabuf.ops is drv.prime_ops:
            own: VgemObject = dmabuf.priv
            if own.driver is drv:
                return own.get()
        attach = dmabuf.attach(drv.dev)
        try:
            sgt = attach.map_unlocked(DmaDataDirection.BIDIRECTIONAL)
        except BaseException:
            dmabuf.detach(attach)
            raise
        dmabuf.get()
        obj = VgemObject(drv, dmabuf.size, imported=dmabuf)
        obj.import_attach = attach
        obj.import_sgt = sgt
        return obj

    # -- dumb buffers (drm_dumb_buffers.c, drm_gem_shmem_helper.c) ----------------------------
    def create_dumb(self, width: int, height: int, bpp: int) -> tuple[int, int, int]:
        """``DRM_IOCTL_MODE_CREATE_DUMB``: ``(handle, pitch, size)``.

        Raises: DmaBufError(EINVAL): a zero or overflowing dimension.
        Kernel: drivers/gpu/drm/drm_dumb_buffers.c, drm_mode_create_dumb();
            drm_gem_shmem_helper.c, drm_gem_shmem_dumb_create().
        """
        if not width or not height or not bpp:
            raise DmaBufError(errno.EINVAL, f"dumb buffer {width}x{height}x{bpp}: every "
                              "dimension must be non-zero")
        if bpp > _U32 - 8:
            raise DmaBufError(errno.EINVAL, f"dumb buffer bpp {bpp} overflows")
        cpp = -(-bpp // 8)
        if cpp > _U32 // width:
            raise DmaBufError(errno.EINVAL, "dumb buffer width x bpp overflows 32 bits")
        stride = cpp * width
        if height > _U32 // stride:
            raise DmaBufError(errno.EINVAL, "dumb buffer size overflows 32 bits")
        pitch = -(-(width * bpp) // 8)
        size = -(-(pitch * height) // PAGE_SIZE) * PAGE_SIZE
        obj = VgemObject(self.driver, size)
        try:
            handle = self.handle_create(obj)
        finally:
            obj.put()
        return handle, pitch, size

    def map_dumb(self, handle: int) -> int:
        """``DRM_IOCTL_MODE_MAP_DUMB``: the fake mmap offset of the object (bytes).

        Raises: DmaBufError(ENOENT): unknown handle; DmaBufError(EINVAL): imported object.
        Kernel: drivers/gpu/drm/drm_gem.c, drm_gem_dumb_map_offset().
        """
        obj = self.lookup(handle)
        if obj is None:
            raise DmaBufError(errno.ENOENT, f"MODE_MAP_DUMB: no GEM object with handle {handle}")
        try:
            if obj.import_attach is not None:
                raise DmaBufError(errno.EINVAL, "MODE_MAP_DUMB of an imported dma-buf: map the "
                                  "dma-buf itself")
            return self.driver.mmap_offset(obj)
        finally:
            obj.put()

    # -- fences (vgem_fence.c) ----------------------------------------------------------------
    def fence_attach(self, handle: int, flags: int, pad: int) -> int:
        """``DRM_IOCTL_VGEM_FENCE_ATTACH``: a new fence in the object's reservation; its id.

        Raises: DmaBufError(EINVAL): flags other than VGEM_FENCE_WRITE, pad != 0;
            DmaBufError(ENOENT): unknown handle; DmaBufError(EBUSY): an unsignalled fence
            conflicts (any fence for a write fence, a write fence for a read fence).
        Kernel: drivers/gpu/drm/vgem/vgem_fence.c, vgem_fence_attach_ioctl().
        """
        if flags & ~VGEM_FENCE_WRITE:
            raise DmaBufError(errno.EINVAL, f"VGEM_FENCE_ATTACH flags {flags:#x}: only "
                              "VGEM_FENCE_WRITE is defined")
        if pad:
            raise DmaBufError(errno.EINVAL, "VGEM_FENCE_ATTACH pad must be 0")
        obj = self.lookup(handle)
        if obj is None:
            raise DmaBufError(errno.ENOENT, f"VGEM_FENCE_ATTACH: no GEM object with handle "
                              f"{handle}")
        write = bool(flags & VGEM_FENCE_WRITE)
        fence = self.driver.fence_create()
        try:
            resv = obj.resv
            if not resv.test_signaled(usage_rw(write)):
                raise DmaBufError(errno.EBUSY, "VGEM_FENCE_ATTACH: a conflicting fence is "
                                  "pending")
            resv.lock(None)
            try:
                resv.reserve_fences(1)
                resv.add_fence(fence, DmaResvUsage.WRITE if write else DmaResvUsage.READ)
            finally:
                resv.unlock()
            with self.lock:
                fid = 1
                while fid in self.fences:
                    fid += 1
                self.fences[fid] = fence      # the idr keeps the creation reference
            return fid
        except BaseException:
            self.driver.timers.cancel(fence)
            fence.signal()
            fence.put()
            raise
        finally:
            obj.put()

    def fence_signal(self, fence_id: int, flags: int) -> None:
        """``DRM_IOCTL_VGEM_FENCE_SIGNAL``.

        Raises: DmaBufError(EINVAL): flags != 0; DmaBufError(ENOENT): unknown or already
            signalled through this ioctl; DmaBufError(ETIMEDOUT): the timer had signalled it
            (it is signalled and released either way).
        Kernel: drivers/gpu/drm/vgem/vgem_fence.c, vgem_fence_signal_ioctl().
        """
        if flags:
            raise DmaBufError(errno.EINVAL, "VGEM_FENCE_SIGNAL flags must be 0")
        with self.lock:
            if fence_id not in self.fences:
                raise DmaBufError(errno.ENOENT, f"VGEM_FENCE_SIGNAL: no fence {fence_id}")
            fence = self.fences[fence_id]
            self.fences[fence_id] = None          # idr_replace(..., NULL, id)
        if fence is None:
            raise DmaBufError(errno.ENOENT, f"VGEM_FENCE_SIGNAL: fence {fence_id} was already "
                              "signalled")
        timed_out = fence.is_signaled()
        self.driver.timers.cancel(fence)
        fence.signal()
        fence.put()
        if timed_out:
            raise DmaBufError(errno.ETIMEDOUT, f"VGEM_FENCE_SIGNAL: fence {fence_id} had already "
                              f"been signalled by its {self.driver.fence_timeout:g} s timer")

    # -- release (drm_file.c: drm_file_free) --------------------------------------------------
    def release(self) -> None:
        """Last close of the file: ``drm_gem_release()`` then ``vgem_postclose()``."""
        if self.released:
            return
        self.released = True
        with self.lock:
            handles = sorted(self.handles.items())
            self.handles.clear()
        for h, obj in handles:
            self._release_handle(h, obj)
        with self.lock:
            fences = [f for f in self.fences.values() if f is not None]
            self.fences.clear()
        for f in fences:                          # vgem_fence_close(): signal and put
            self.driver.timers.cancel(f)
            f.signal()
            f.put()
        with self.lock:
            stale = list(self.prime)
            self.prime.clear()
        for b in stale:                           # drm_prime_destroy_file_private (WARN)
            self.machine.warn("drm_prime_destroy_file_private", "PRIME entry left after the "
                              "handles were released")
            b.put()


# ------------------------------------------------------------------------------------------
# the file operations (drm_ioctl.c, drm_gem.c)
# ------------------------------------------------------------------------------------------

# nr -> (kernel cmd, handler name)
_DRM_IOCTLS = {
    ioc_nr(DRM_IOCTL_VERSION): DRM_IOCTL_VERSION,
    ioc_nr(DRM_IOCTL_GEM_CLOSE): DRM_IOCTL_GEM_CLOSE,
    ioc_nr(DRM_IOCTL_PRIME_HANDLE_TO_FD): DRM_IOCTL_PRIME_HANDLE_TO_FD,
    ioc_nr(DRM_IOCTL_PRIME_FD_TO_HANDLE): DRM_IOCTL_PRIME_FD_TO_HANDLE,
    ioc_nr(DRM_IOCTL_MODE_CREATE_DUMB): DRM_IOCTL_MODE_CREATE_DUMB,
    ioc_nr(DRM_IOCTL_MODE_MAP_DUMB): DRM_IOCTL_MODE_MAP_DUMB,
    ioc_nr(DRM_IOCTL_VGEM_FENCE_ATTACH): DRM_IOCTL_VGEM_FENCE_ATTACH,
    ioc_nr(DRM_IOCTL_VGEM_FENCE_SIGNAL): DRM_IOCTL_VGEM_FENCE_SIGNAL,
}


class VgemFileOps(FileOperations):
    """``vgem_driver_fops`` (``DEFINE_DRM_GEM_FOPS``): ioctl, mmap, release, fdinfo.

    Kernel: drivers/gpu/drm/vgem/vgem_drv.c; drivers/gpu/drm/drm_file.c, drm_ioctl.c,
    drm_gem.c (drm_gem_mmap).
    """

    name = "drm"
    mnt_id = 26

    def release(self, file: File) -> None:
        """``drm_release()``: the file's handles, PRIME entries and fences."""
        vfile: VgemFile = file.private_data
        vfile.release()

    def show_fdinfo(self, file: File) -> str:
        """``drm_show_fdinfo()`` (driver and client id only)."""
        vfile: VgemFile = file.private_data
        return f"drm-driver:\tvgem\ndrm-client-id:\t{vfile.client_id}\n"

    def mmap(self, file: File, vma: Vma) -> None:
        """``drm_gem_mmap()``: the object whose fake offset starts at ``vma.pgoff``.

        Raises: DmaBufError(EINVAL): no object at that offset (or a private mapping / a range
            past the object, from ``drm_gem_shmem_mmap``).
        """
        vfile: VgemFile = file.private_data
        drv = vfile.driver
        obj = drv.lookup_offset(vma.pgoff)
        if obj is None or vma.length > obj.size:
            raise DmaBufError(errno.EINVAL, f"drm_gem_mmap: no GEM object at offset "
                              f"{vma.pgoff << PAGE_SHIFT:#x} of {vma.length} bytes (use "
                              "MODE_MAP_DUMB's offset)")
        obj.get()                                 # drm_gem_vm_open(): the VMA's reference
        try:
            drv.map_object(obj, vma, 0)
        except BaseException:
            obj.put()
            raise
        vma.vm_ops = VmOps(close=lambda _vma: obj.put())    # drm_gem_vm_close()

    def ioctl(self, file: File, cmd: int, arg: Any) -> Any:
        """``drm_ioctl()``: copy the argument in/out per ``_IOC_SIZE`` and dispatch.

        Returns: 0 (results are written back into ``arg``).
        Raises: DmaBufError(EINVAL): unknown or unmodelled nr, or the handler's error;
            DmaBufError(EFAULT): a user buffer shorter than the command's size.
        """
        vfile: VgemFile = file.private_data
        kcmd = _DRM_IOCTLS.get(ioc_nr(cmd))
        if kcmd is None or (cmd >> 8) & 0xFF != ord("d"):
            raise DmaBufError(errno.EINVAL, f"DRM ioctl {cmd:#x} is not modelled for vgem")
        drv_size = ioc_size(kcmd)
        in_size = out_size = ioc_size(cmd)
        if not cmd & kcmd & _IOC_IN:
            in_size = 0
        if not cmd & kcmd & _IOC_OUT:
            out_size = 0
        ksize = max(in_size, out_size, drv_size)
        ubuf: memoryview | None = None
        if in_size or out_size:
            ubuf = user_buffer(arg, 0, "DRM ioctl")
            if len(ubuf) < max(in_size, out_size):
                raise DmaBufError(errno.EFAULT, f"DRM ioctl: user buffer of {len(ubuf)} bytes, "
                                  f"the command says {max(in_size, out_size)}")
            if out_size and ubuf.readonly:
                raise DmaBufError(errno.EFAULT, "DRM ioctl: read-only user buffer")
        kdata = bytearray(ksize)
        if in_size and ubuf is not None:
            kdata[:in_size] = ubuf[:in_size]
        self._dispatch(vfile, kcmd, kdata)
        if out_size and ubuf is not None:
            ubuf[:out_size] = kdata[:out_size]
        return 0

    def _dispatch(self, vfile: VgemFile, kcmd: int, kdata: bytearray) -> None:
        if kcmd == DRM_IOCTL_VERSION:
            v = DrmVersion.from_buffer(kdata)
            v.version_major, v.version_minor, v.version_patchlevel = 1, 0, 0
            for field, value in (("name", _NAME), ("date", _DATE), ("desc", _DESC)):
                n = min(len(value), getattr(v, f"{field}_len"))
                if n and getattr(v, field):
                    _copy_to_user(getattr(v, field), value[:n])
                setattr(v, f"{field}_len", len(value))
        elif kcmd == DRM_IOCTL_GEM_CLOSE:
            vfile.handle_delete(DrmGemClose.from_buffer(kdata).handle)
        elif kcmd == DRM_IOCTL_PRIME_HANDLE_TO_FD:
            p = DrmPrimeHandle.from_buffer(kdata)
            p.fd = vfile.prime_handle_to_fd(p.handle, p.flags)
        elif kcmd == DRM_IOCTL_PRIME_FD_TO_HANDLE:
            p = DrmPrimeHandle.from_buffer(kdata)
            p.handle = vfile.prime_fd_to_handle(p.fd)
        elif kcmd == DRM_IOCTL_MODE_CREATE_DUMB:
            c = DrmModeCreateDumb.from_buffer(kdata)
            c.handle, c.pitch, c.size = vfile.create_dumb(c.width, c.height, c.bpp)
        elif kcmd == DRM_IOCTL_MODE_MAP_DUMB:
            d = DrmModeMapDumb.from_buffer(kdata)
            d.offset = vfile.map_dumb(d.handle)
        elif kcmd == DRM_IOCTL_VGEM_FENCE_ATTACH:
            a = DrmVgemFenceAttach.from_buffer(kdata)
            a.out_fence = vfile.fence_attach(a.handle, a.flags, a.pad)
        else:  # DRM_IOCTL_VGEM_FENCE_SIGNAL
            s = DrmVgemFenceSignal.from_buffer(kdata)
            vfile.fence_signal(s.fence, s.flags)
