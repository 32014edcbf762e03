"""The system calls of a model kernel: :class:`ModelBackend`, the uAPI bindings on a Machine.

:class:`~dmabuf.uapi.backend.UapiBackend` is the system-call boundary of ``dmabuf.uapi``: open,
close, dup, ioctl, mmap, poll, lseek, fstat, fcntl, memfd_create, ftruncate, pread/pwrite,
procfs/debugfs reads, fd passing. :class:`ModelBackend` implements every one of them on a
pydmabuf :class:`~dmabuf.machine.Machine`, so code written for the real kernel
(``DmaHeap.open("system", backend=model)``) runs unchanged against the model — same numbers,
same argument bytes, same errnos. It is the VFS / mm / net slice of a kernel and nothing more:
each call is translated into the model's kernel-faithful functions, which own the rules.

**The model kernel** (:class:`ModelKernel`, one per machine, ``machine.state(ModelKernel)``)
boots on first use with one RAM region (``ram0``, :data:`DEFAULT_RAM_SIZE`), the system heap
(:func:`~dmabuf.buf.heaps.system_heap_create`), ``/dev/udmabuf``
(:class:`~dmabuf.buf.udmabuf.UdmabufDevice`) and vgem (:class:`~dmabuf.backends.vgem.VgemDriver`).
It serves these paths:

=====================================  =========================================================
``/dev/dma_heap/<name>``               the heaps of the machine's heap registry
``/dev/udmabuf``                       the udmabuf misc device
``/dev/dri/card0``, ``renderD128``     vgem
``/proc/<pid|self>/fd/<n>``            fd links (``/dmabuf:<name>``, ``/memfd:<name> (deleted)``,
                                       ``anon_inode:sync_file``, the device path)
``/proc/<pid|self>/fdinfo/<n>``        :meth:`~dmabuf.buf.file.FdTable.fdinfo`
``/sys/kernel/debug/dma_buf/bufinfo``  :func:`~dmabuf.buf.dma_buf_file.dma_buf_bufinfo`
``/sys/module/udmabuf/parameters/*``   ``size_limit_mb``, ``list_limit``
``/proc/sys/kernel/osrelease``         :data:`MODEL_RELEASE` (``7.1.0-pydmabuf``)
=====================================  =========================================================

**File descriptors** are model fds: small ints in the model process's
:class:`~dmabuf.buf.file.FdTable` (from 3 up), never host fds. The process is the one
:func:`~dmabuf.buf.file.current_process` returns: the machine's ``init`` for ordinary calls, a
child for code run by :meth:`ModelBackend.run_child`.

**ioctl arguments** are the C structures' bytes, exactly as the kernel sees them: dma-buf ioctls
are decoded into the model's argument objects (``DmaBufSyncArg``…); every other file gets the
raw bytes and decodes them itself — the heap and udmabuf devices, the sync_file
(:class:`~dmabuf.buf.dma_buf_file.SyncFileFileOps`: ``SYNC_IOC_MERGE``, ``FILE_INFO``,
``SET_DEADLINE``) and vgem (like ``drm_ioctl``). Pointers inside structures
(``sync_file_info.sync_fence_info``, ``drm_version.name``) are addresses of this process,
written with ``ctypes``.

**Memory is really shared.** The RAM region's backing is a host memfd mapped ``MAP_SHARED``, so
``mmap`` of a model dma-buf returns a host mapping whose pages *are* the buffer's model pages:
each contiguous piece of the exporter's :class:`~dmabuf.buf.phys_vec.PhysView` is mapped with
``mmap(MAP_FIXED)`` of the host memfd at the page's offset. A write through the view is at once
visible to ``pread`` of the memfd behind a udmabuf, to vgem's own mapping, and to every model
DMA engine — zero copy, as in the kernel. ``mmap`` follows ``do_mmap``: ``EINVAL`` for a zero
length or an unaligned offset, ``EACCES`` for a file not open for reading or a shared writable
mapping of a file not open for writing; then the file's ``mmap`` (the exporter's rules). The
returned region is an ``mmap.mmap`` subclass; its ``close()`` raises ``BufferError`` while views
exist, as the contract requires. It models **CPython's** ``mmap.mmap(fd, …)`` as the kernel
backend uses it: the VMA holds a file reference *and* CPython keeps a dup of the fd (a real fd
in the process, closed with the mapping), so a mapped dma-buf counts 2 more in fdinfo — the same
numbers the real kernel shows. :meth:`ModelBackend.revoke` replaces the pages with anonymous
memory and unmaps the VMA (the dup goes when the mapping object does).

**fd passing** uses the real socket: for every model fd sent, a host pipe's write end travels
as real ``SCM_RIGHTS`` alongside the data (so ordering, ``MSG_CTRUNC`` and peer death behave as
the kernel's); the receiver finds the model file by the pipe's inode and installs it (the
in-flight reference, like ``scm_fp_copy``/``receive_fd``). Files whose token was dropped
unread (truncation, a closed socket) are released by a sweep: the read end of their pipe
reports ``POLLHUP``.

**fork** (:meth:`ModelBackend.fork_process`, :meth:`~dmabuf.buf.file.ProcessTable.fork`)
copies the fd table with its numbers and close-on-exec flags (every file +1 reference);
:meth:`ModelBackend.run_child` runs a function as that child on a thread and exits it
(:meth:`~dmabuf.buf.file.Process.exit`: its fds closed, its ``/proc/<pid>`` gone) afterwards.

Deliberate differences (docs/model-vs-kernel.md, "uAPI parity"): permissions are not checked
(every caller is root); ``fork`` copies descriptors but not mappings; ``poll`` on several fds
re-polls every millisecond instead of sleeping on all wait queues; ``mmap`` of a memfd keeps
its pages pinned while mapped (so ``F_SEAL_WRITE`` is ``EBUSY`` even for a read-only mapping,
and truncation leaves the mapping on the old pages instead of ``SIGBUS``); a memfd mapping
beyond EOF — including the part of a partial page holding EOF — is private zeros instead of
the file's page / ``SIGBUS``; ``fcntl`` supports ``F_GETFD``,
``F_GETFL``, ``F_DUPFD[_CLOEXEC]``, ``F_ADD_SEALS`` and ``F_GET_SEALS`` (others ``EINVAL``);
``fstat`` fills only mode, inode and size; the host backing of ``ram0`` is swapped for a shared
memfd right after the region is created (an adapter: ``PhysMemory`` has no backing hook).

The kernel rules are the model layers' own: the sync_file ioctls, ``mmap`` of a memfd
(:class:`~dmabuf.buf.udmabuf.MemfdFileOps`), udmabuf's ``EINVAL`` for ``SYNC_END`` before any
``SYNC_START``, whether ``lseek`` moves ``f_pos`` (the file's ``llseek``), fork and process exit.
The one adapter left is the RAM backing swap above.

Locking: none of its own beyond the SCM in-flight table's lock (held for dictionary updates);
every call runs the model's functions, which take the kernel's locks. Calls may come from any
thread; blocking calls (``SYNC`` START, ``poll``) block only the calling thread.

Kernel: fs/open.c, fs/file.c, fs/ioctl.c, fs/fcntl.c, fs/read_write.c, fs/select.c, mm/mmap.c
(do_mmap), mm/memfd.c, net/core/scm.c, net/unix/af_unix.c, kernel/fork.c (dup_fd),
fs/proc/fd.c, drivers/dma-buf/sync_file.c (sync_file_ioctl).
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import functools
import math
import mmap
import os
import select
import socket
import stat
import struct
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from dmabuf.backends.vgem import VgemDriver, VgemFileOps
from dmabuf.buf.dma_buf import DmaBuf, Vma
from dmabuf.buf.dma_buf_file import (
    DMA_BUF_IOCTL_EXPORT_SYNC_FILE,
    DMA_BUF_IOCTL_IMPORT_SYNC_FILE,
    DMA_BUF_IOCTL_SYNC,
    DMA_BUF_SET_NAME_A,
    DMA_BUF_SET_NAME_B,
    DmaBufExportSyncFileArg,
    DmaBufFileOps,
    DmaBufImportSyncFileArg,
    DmaBufSyncArg,
    SyncFileFileOps,
    dma_buf_bufinfo,
    dma_buf_dname,
    dma_buf_poll_wait,
)
from dmabuf.buf.file import (
    EPOLLERR,
    FMODE_READ,
    FMODE_WRITE,
    O_CLOEXEC,
    File,
    Process,
    ProcessTable,
    current_process,
    user_buffer,
)
from dmabuf.buf.heaps import DmaHeap, DmaHeapRegistry, system_heap_create
from dmabuf.buf.phys_vec import PhysView
from dmabuf.buf.udmabuf import (
    UdmabufDevice,
    memfd_add_seals,
    memfd_create,
    memfd_get_seals,
)
from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.mm.memfd import MemFd
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE, MemKind, PhysMemory, PhysRegion
from dmabuf.sync.sync_file import SyncFile
from dmabuf.uapi.backend import KernelBackend, MappedRegion

__all__ = [
    "DEFAULT_RAM_SIZE",
    "MODEL_RELEASE",
    "ModelBackend",
    "ModelKernel",
    "ModelMapping",
    "model_uapi_backend",
]

#: ``uname -r`` of the model kernel (``/proc/sys/kernel/osrelease``).
MODEL_RELEASE = "7.1.0-pydmabuf"
#: Size of the model's RAM region (sparse: only touched pages cost host memory).
DEFAULT_RAM_SIZE = 1 << 30

# include/uapi/asm-generic/fcntl.h, linux/fcntl.h
_F_DUPFD, _F_GETFD, _F_SETFD, _F_GETFL = 0, 1, 2, 3
_F_DUPFD_CLOEXEC = 1030
_F_ADD_SEALS, _F_GET_SEALS = 1033, 1034
_FD_CLOEXEC = 1
_MAP_FIXED = 0x10
_POLLNVAL = 0x20
_POLLHUP = 0x10
_EINTR_POLL_SLICE = 0.001

_DEV_DIRS = {"/dev/dma_heap", "/dev/dri"}


def _err(code: int, msg: str) -> DmaBufError:
    return DmaBufError(code, msg)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    return libc


def _address(region: mmap.mmap) -> int:
    """The start address of a host mapping (a transient buffer export)."""
    return int(np.frombuffer(region, dtype=np.uint8).ctypes.data)


def _copy_back(mv: memoryview, data: bytes, what: str) -> None:
    """``copy_to_user`` into the argument buffer."""
    if mv.readonly:
        raise _err(errno.EFAULT, f"{what}: read-only user buffer (pass a bytearray)")
    mv[:len(data)] = data


# ------------------------------------------------------------------------------------------
# the model kernel
# ------------------------------------------------------------------------------------------


class ModelKernel:
    """The devices and host plumbing of one machine's model kernel (``machine.state(...)``).

    Attributes (after :meth:`boot`): ``phys``, ``ram`` (the RAM region), ``heap`` (the system
    heap), ``udmabuf``, ``vgem``; ``ram_fd`` is the host memfd behind ``ram``.

    Kernel: init/main.c (the boot that registers these drivers), drivers/dma-buf/heaps/
    system_heap.c (module init), drivers/dma-buf/udmabuf.c (udmabuf_dev_init),
    drivers/gpu/drm/vgem/vgem_drv.c (vgem_init).
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._lock = threading.Lock()
        self.booted = False
        self.phys: PhysMemory
        self.ram: PhysRegion
        self.ram_fd = -1
        self.udmabuf: UdmabufDevice
        self.vgem: VgemDriver
        self.inflight = _ScmInflight()
        self._inos: weakref.WeakKeyDictionary[File, int] = weakref.WeakKeyDictionary()
        self._next_ino = 1 << 20
        self._ino_lock = threading.Lock()

    def boot(self, ram_size: int = DEFAULT_RAM_SIZE) -> None:
        """Register RAM, the system heap, udmabuf and vgem (once; later calls do nothing).

        Args:
            ram_size: bytes of RAM (a positive multiple of PAGE_SIZE); used by the first call.
        Raises: DmaBufError(EINVAL): bad size; DmaBufError(ENOMEM): no host memory for it.
        """
        with self._lock:
            if self.booted:
                return
            if isinstance(ram_size, bool) or not isinstance(ram_size, int) or ram_size <= 0 \
                    or ram_size % PAGE_SIZE:
                raise _err(errno.EINVAL, f"ram_size {ram_size!r} must be a positive multiple of "
                           f"PAGE_SIZE ({PAGE_SIZE})")
            m = self.machine
            self.phys = PhysMemory(m)
            self.ram_fd = _ram_memfd(ram_size)
            weakref.finalize(self, os.close, self.ram_fd)
            self.ram = self.phys.add_region("ram0", ram_size, MemKind.RAM, backing=self.ram_fd)
            if "system" not in m.state(DmaHeapRegistry).names():
                system_heap_create(self.phys, region=self.ram, machine=m)
            self.udmabuf = m.state(UdmabufDevice)
            self.vgem = VgemDriver(m, self.phys, self.ram)
            self.booted = True

    def ino_of(self, f: File) -> int:
        """The inode number ``fstat`` reports: the file's own, or one given on first use."""
        if f.ino:
            return f.ino
        with self._ino_lock:
            ino = self._inos.get(f)
            if ino is None:
                ino = self._next_ino
                self._next_ino += 1
                self._inos[f] = ino
            return ino


def _ram_memfd(size: int) -> int:
    """A host ``memfd`` of ``size`` bytes to back ``ram0`` (``add_region(backing=fd)``).

    The model backend needs host mappings whose pages are the region's, so RAM lives in a
    shared memfd instead of the private anonymous memory a region gets by default. Returns the
    memfd (host fd, close-on-exec; the caller closes it).
    """
    fd = os.memfd_create("pydmabuf-ram0", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


# ------------------------------------------------------------------------------------------
# fd passing (net/core/scm.c)
# ------------------------------------------------------------------------------------------


class _ScmInflight:
    """Model files in flight over real sockets, keyed by the inode of their token pipe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[int, tuple[File, int]] = {}

    def __len__(self) -> int:
        return len(self._files)

    def add(self, f: File) -> int:
        """Take over one reference to ``f``; return the host fd of its token (to send)."""
        r, w = os.pipe2(os.O_CLOEXEC)
        ino = os.fstat(w).st_ino
        with self._lock:
            self._files[ino] = (f, r)
        return w

    def claim(self, ino: int) -> File | None:
        """The file whose token has inode ``ino`` (its in-flight reference), or None."""
        with self._lock:
            entry = self._files.pop(ino, None)
        if entry is None:
            return None
        os.close(entry[1])
        return entry[0]

    def sweep(self) -> int:
        """Release files whose token was closed without being received; return how many."""
        with self._lock:
            if not self._files:
                return 0
            p = select.poll()
            by_r = {r: ino for ino, (_f, r) in self._files.items()}
            for r in by_r:
                p.register(r, 0)
            dead = [by_r[fd] for fd, ev in p.poll(0) if ev & _POLLHUP]
            gone = [self._files.pop(ino) for ino in dead]
        for f, r in gone:
            os.close(r)
            f.put()
        return len(gone)


# ------------------------------------------------------------------------------------------
# mappings (mm/mmap.c)
# ------------------------------------------------------------------------------------------


class _VmaState:
    """What one model mapping holds: the VMA (file reference, view, vm_ops) and CPython's dup."""

    def __init__(self, proc: Process, file: File, vma: Vma) -> None:
        self.proc = proc
        self.file = file
        self.vma = vma
        self.vma_live = True
        self.dupfd: int | None = None
        self.dupfile: File | None = None
        self._lock = threading.Lock()

    def unmap_vma(self) -> None:
        """``munmap`` of the VMA: the exporter's view, ``vm_ops->close``, the file reference."""
        with self._lock:
            if not self.vma_live:
                return
            self.vma_live = False
        view = self.vma.view
        if isinstance(view, PhysView):
            view.close()
        self.vma.close()
        self.file.put()

    def close_dup(self) -> None:
        """Close CPython's dup of the fd (if it still names the same file)."""
        with self._lock:
            fd, f = self.dupfd, self.dupfile
            self.dupfd = self.dupfile = None
        if fd is None:
            return
        try:
            if self.proc.fds.lookup(fd) is f:
                self.proc.fds.close(fd)
        except DmaBufError:
            pass   # the process exited (its fds are closed) or the number was closed

    def release(self) -> None:
        """The mapping object is gone: unmap and close the dup."""
        self.unmap_vma()
        self.close_dup()


class ModelMapping(mmap.mmap):
    """A host mapping of model pages — what :meth:`ModelBackend.mmap` returns.

    An ``mmap.mmap`` (buffer protocol, ``close()`` raising ``BufferError`` while views exist)
    whose pages are the mapped model pages. ``close()`` also unmaps the model VMA and closes the
    CPython-style dup of the fd; garbage collection does the same.
    """

    _state: _VmaState
    _finalizer: weakref.finalize

    def close(self) -> None:
        """``munmap``: host pages, then the model VMA and the dup fd; idempotent."""
        if self.closed:
            return
        super().close()       # BufferError while views are exported: nothing changes then
        self._finalizer.detach()
        self._state.release()

    @property
    def file(self) -> File:
        """The model file mapped (``vma->vm_file``)."""
        return self._state.file

    @property
    def revoked(self) -> bool:
        """True once :meth:`ModelBackend.revoke` cut the mapping off its pages."""
        return not self._state.vma_live and not self.closed


# ------------------------------------------------------------------------------------------
# the backend
# ------------------------------------------------------------------------------------------


class ModelBackend:
    """:class:`~dmabuf.uapi.backend.UapiBackend` over a pydmabuf model kernel.

    Args:
        machine: the machine (default: the current one); its :class:`ModelKernel` boots on
            first use.
        ram_size: RAM of the model kernel when this call boots it.

    The fds it returns are model fds of :func:`~dmabuf.buf.file.current_process`. Use it
    exactly like :class:`~dmabuf.uapi.backend.KernelBackend`; see the module docstring.
    """

    page_size: int = PAGE_SIZE

    def __init__(self, machine: Machine | None = None, *,
                 ram_size: int = DEFAULT_RAM_SIZE) -> None:
        m = machine if machine is not None else current_machine()
        if not isinstance(m, Machine):
            raise TypeError(f"machine must be a Machine, not {type(m).__name__}")
        self.machine = m
        self.kernel = m.state(ModelKernel)
        self.kernel.boot(ram_size)

    def __repr__(self) -> str:
        return f"<ModelBackend {self.machine.name} {MODEL_RELEASE}>"

    # -- helpers ------------------------------------------------------------------------------
    @property
    def process(self) -> Process:
        """The process the calls of this thread act on (``current``)."""
        return current_process(self.machine)

    def _fget(self, fd: int) -> File:
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int, not {type(fd).__name__}")
        return self.process.fds.fget(fd)

    @contextlib.contextmanager
    def _file(self, fd: int) -> Iterator[File]:
        f = self._fget(fd)
        try:
            yield f
        finally:
            f.put()

    def _find_process(self, pid: str) -> Process:
        if pid == "self":
            return self.process
        try:
            n = int(pid)
        except ValueError:
            raise _err(errno.ENOENT, f"/proc/{pid}: no such process") from None
        p = self.machine.state(ProcessTable).find(n)
        if p is None:
            raise _err(errno.ENOENT, f"/proc/{pid}: no such process in the model")
        return p

    # -- open/close/dup -------------------------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        """open(2) of a model device node.

        Raises: DmaBufError(ENOENT): no such node (the model serves /dev/dma_heap/<name>,
            /dev/udmabuf, /dev/dri/card0 and renderD128); EISDIR for the directories.
        Kernel: fs/open.c, do_sys_open(); the drivers' open.
        """
        path = path.rstrip("/") or "/"
        k = self.kernel
        if path in _DEV_DIRS:
            raise _err(errno.EISDIR, f"open {path}: is a directory")
        if path.startswith("/dev/dma_heap/"):
            heap = self.machine.state(DmaHeapRegistry).find(path[len("/dev/dma_heap/"):])
            if heap is not None:
                return heap.open(flags)
        elif path == UdmabufDevice.path:
            return k.udmabuf.open(flags)
        elif path.startswith("/dev/dri/") and path[len("/dev/dri/"):] in VgemDriver.nodes:
            return k.vgem.open(flags)
        raise _err(errno.ENOENT, f"open {path}: no such file in the model kernel (it serves "
                   "/dev/dma_heap/<heap>, /dev/udmabuf, /dev/dri/card0, /dev/dri/renderD128)")

    def close(self, fd: int) -> None:
        """close(2). Raises: DmaBufError(EBADF). Kernel: fs/file.c, close_fd()."""
        self.process.fds.close(fd)

    def dup(self, fd: int) -> int:
        """``fcntl(F_DUPFD_CLOEXEC)``. Raises: DmaBufError(EBADF/EMFILE)."""
        return self.process.fds.dup(fd, O_CLOEXEC)

    # -- ioctl --------------------------------------------------------------------------------
    def ioctl(self, fd: int, request: int, arg: bytearray) -> int:
        """ioctl(2): decode ``arg`` as the kernel would for the file's type, run the model.

        Returns: the ioctl's return value (a new fd for UDMABUF_CREATE, else 0); results are
            written back into ``arg``.
        Raises: DmaBufError: EBADF, ENOTTY (the file does not know the request), EFAULT (a
            short or read-only argument), and whatever the driver answers.
        Kernel: fs/ioctl.c, vfs_ioctl(); the drivers' unlocked_ioctl.
        """
        with self._file(fd) as f:
            if isinstance(f.fops, DmaBufFileOps):
                return self._dmabuf_ioctl(f, request, arg)
            ret = f.ioctl(request, arg)
            return int(ret) if isinstance(ret, int) else 0

    def _dmabuf_ioctl(self, f: File, cmd: int, arg: Any) -> int:
        """``dma_buf_ioctl()``'s ``copy_from_user``/``copy_to_user`` around the model's ioctl."""
        if cmd == DMA_BUF_IOCTL_SYNC:
            mv = user_buffer(arg, 8, "DMA_BUF_IOCTL_SYNC")
            f.ioctl(cmd, DmaBufSyncArg(int.from_bytes(mv[:8], "little")))
        elif cmd in (DMA_BUF_SET_NAME_A, DMA_BUF_SET_NAME_B):
            mv = user_buffer(arg, 0, "DMA_BUF_SET_NAME")
            f.ioctl(cmd, bytes(mv))          # strndup_user() from the pointer
        elif cmd == DMA_BUF_IOCTL_EXPORT_SYNC_FILE:
            mv = user_buffer(arg, 8, "DMA_BUF_IOCTL_EXPORT_SYNC_FILE")
            flags, _ = struct.unpack_from("<Ii", mv)
            a = DmaBufExportSyncFileArg(flags)
            f.ioctl(cmd, a)
            _copy_back(mv, struct.pack("<Ii", flags, a.fd), "DMA_BUF_IOCTL_EXPORT_SYNC_FILE")
        elif cmd == DMA_BUF_IOCTL_IMPORT_SYNC_FILE:
            mv = user_buffer(arg, 8, "DMA_BUF_IOCTL_IMPORT_SYNC_FILE")
            flags, sfd = struct.unpack_from("<Ii", mv)
            f.ioctl(cmd, DmaBufImportSyncFileArg(flags, sfd))
        else:
            f.ioctl(cmd, None)               # -ENOTTY
        return 0

    # -- mmap ---------------------------------------------------------------------------------
    def mmap(self, fd: int, length: int, *, prot: int, flags: int,
             offset: int = 0) -> ModelMapping:
        """mmap(2) of a model file into this process, sharing the model's pages (zero copy).

        Raises: DmaBufError: EINVAL (zero length, unaligned offset, neither/both of MAP_SHARED
            and MAP_PRIVATE, the exporter's range checks, udmabuf's MAP_SHARED rule), EACCES
            (file not open for reading; shared writable mapping of a file not open for writing),
            ENODEV (the file cannot be mapped), EBADF, EPERM (write-sealed memfd), EMFILE.
        Kernel: mm/mmap.c, do_mmap(), mmap_region(); the file's mmap.
        """
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise _err(errno.EINVAL, f"mmap: length {length!r} must be > 0")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 \
                or offset % PAGE_SIZE:
            raise _err(errno.EINVAL, f"mmap: offset {offset!r} must be a multiple of PAGE_SIZE")
        maptype = flags & (mmap.MAP_SHARED | mmap.MAP_PRIVATE)
        if maptype not in (mmap.MAP_SHARED, mmap.MAP_PRIVATE):
            raise _err(errno.EINVAL, "mmap: give exactly one of MAP_SHARED and MAP_PRIVATE")
        shared = maptype == mmap.MAP_SHARED
        writable = bool(prot & mmap.PROT_WRITE)
        proc = self.process
        f = proc.fds.fget(fd)           # becomes the VMA's reference on success
        try:
            if not f.f_mode & FMODE_READ:
                raise _err(errno.EACCES, "mmap: the file is not open for reading")
            if shared and writable and not f.f_mode & FMODE_WRITE:
                raise _err(errno.EACCES, "mmap(PROT_WRITE, MAP_SHARED) of a file not open for "
                           "writing (open it O_RDWR)")
            npages = -(-length // PAGE_SIZE)
            vma = Vma.for_mmap(npages << PAGE_SHIFT, pgoff=offset >> PAGE_SHIFT,
                               prot=prot, shared=shared)
            f.mmap(vma)
            try:
                region = self._host_map(vma, length, prot, shared)
            except BaseException:
                _VmaState(proc, f.get(), vma).unmap_vma()
                raise
        except BaseException:
            f.put()
            raise
        state = _VmaState(proc, f, vma)
        region._state = state
        region._finalizer = weakref.finalize(region, state.release)
        try:
            state.dupfd = proc.fds.dup(fd, O_CLOEXEC)   # CPython's mmap keeps a dup of the fd
            state.dupfile = proc.fds.lookup(state.dupfd)
        except BaseException:
            region.close()
            raise
        return region

    def _host_map(self, vma: Vma, length: int, prot: int, shared: bool) -> ModelMapping:
        """A host mapping of ``length`` bytes whose pages are the VMA view's model pages."""
        view = vma.view
        if not isinstance(view, PhysView):
            raise _err(errno.ENODEV, "mmap: the exporter gave no CPU view of its pages")
        region = ModelMapping(-1, length, flags=mmap.MAP_PRIVATE, prot=prot)
        try:
            ram = self.kernel.ram
            addr = _address(region)
            limit = -(-length // PAGE_SIZE) * PAGE_SIZE
            pos = 0
            libc = _libc()
            mflags = _MAP_FIXED | (mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE)
            for paddr, n in view.ranges.tolist():
                n = min(int(n), limit - pos)
                if n <= 0:
                    break
                if not ram.contains(paddr, n):
                    raise _err(errno.ENODEV, f"mmap: pages at {paddr:#x} are not in the model's "
                               "RAM; only RAM can be mapped by the model backend")
                res = libc.mmap(ctypes.c_void_p(addr + pos), ctypes.c_size_t(n), prot, mflags,
                                self.kernel.ram_fd, paddr - ram.base)
                if res != addr + pos:
                    e = ctypes.get_errno()
                    raise _err(errno.ENOMEM, f"host mmap(MAP_FIXED) failed: {os.strerror(e)}")
                pos += n
        except BaseException:
            mmap.mmap.close(region)
            raise
        return region

    def revoke(self, region: MappedRegion) -> None:
        """Cut a mapping off its pages while views exist: anonymous pages, the VMA unmapped.

        Raises: TypeError: not a mapping of this backend; OSError from the host mmap.
        Kernel: mm/mmap.c, mmap(MAP_FIXED) over the range (unmapping the old VMA).
        """
        if not isinstance(region, ModelMapping):
            raise TypeError(f"revoke needs a mapping made by ModelBackend.mmap, not "
                            f"{type(region).__name__}")
        if region.closed:
            return
        KernelBackend().revoke(region)
        region._state.unmap_vma()

    # -- poll ---------------------------------------------------------------------------------
    def poll(self, fds: Sequence[tuple[int, int]], timeout_ms: int | None) -> list[tuple[int, int]]:
        """poll(2) on model fds: ``[(fd, revents)]`` of the ready ones (POLLNVAL if not open).

        Context: blocks up to ``timeout_ms`` (None: forever) on the files' wait queues.
        Kernel: fs/select.c, do_poll(); dma_buf_poll(), sync_file_poll().
        """
        timeout = None if timeout_ms is None or timeout_ms < 0 else timeout_ms / 1000.0
        if len(fds) == 1:
            fd, events = fds[0]
            ev = self._poll_one(fd, events, timeout)
            return [(fd, ev)] if ev else []
        sched = self.machine.sched
        deadline = math.inf if timeout is None else sched.now() + timeout
        while True:
            out = [(fd, ev) for fd, ev in ((fd, self._poll_one(fd, e, 0)) for fd, e in fds)
                   if ev]
            left = deadline - sched.now()
            if out or left <= 0:
                return out
            sched.sleep(min(_EINTR_POLL_SLICE, left))

    def _poll_one(self, fd: int, events: int, timeout: float | None) -> int:
        try:
            f = self._fget(fd)
        except DmaBufError:
            return _POLLNVAL
        try:
            always = EPOLLERR | _POLLHUP
            if isinstance(f.fops, DmaBufFileOps):
                return dma_buf_poll_wait(f, events, timeout)
            if isinstance(f.fops, SyncFileFileOps):
                sf: SyncFile = f.private_data
                if not events & select.POLLIN:
                    ready = sf.poll() & always
                    if ready or timeout == 0:
                        return ready
                    self.machine.sched.sleep(timeout if timeout is not None else 0)
                    return sf.poll() & always
                return sf.poll_wait(timeout) & (events | always)
            return f.poll(events) & (events | always)
        finally:
            f.put()

    # -- seek, stat, fcntl --------------------------------------------------------------------
    def lseek(self, fd: int, offset: int, whence: int) -> int:
        """lseek(2) — the file's llseek (``ESPIPE`` without one).

        The file operation decides whether ``f_pos`` moves (:meth:`~dmabuf.buf.file.File.
        llseek`): a memfd's stores the new position, ``dma_buf_llseek`` only *returns* one
        (fdinfo ``pos`` stays 0).

        Raises: DmaBufError: EBADF, ESPIPE, the operation's EINVAL.
        Kernel: fs/read_write.c, ksys_lseek() → vfs_llseek(); dma-buf.c, dma_buf_llseek().
        """
        with self._file(fd) as f:
            return f.llseek(offset, whence)

    def fstat(self, fd: int) -> os.stat_result:
        """fstat(2): mode, inode (the dma-buf's ``ino``) and size; the rest 0.

        Raises: DmaBufError(EBADF). Kernel: fs/stat.c, vfs_fstat().
        """
        with self._file(fd) as f:
            size = f.size
            mode = stat.S_IFREG | 0o600
            if isinstance(f.private_data, MemFd):
                size = f.private_data.size
                mode = stat.S_IFREG | 0o777
            elif isinstance(f.fops, DmaBufFileOps):
                size = f.private_data.size
            elif isinstance(f.fops, VgemFileOps) or isinstance(
                    f.private_data, (UdmabufDevice, DmaHeap)):
                mode = stat.S_IFCHR | 0o600
            return os.stat_result((mode, self.kernel.ino_of(f), 0, 1, 0, 0, size, 0, 0, 0))

    def fcntl(self, fd: int, cmd: int, arg: int = 0) -> int:
        """fcntl(2): F_GETFD, F_GETFL, F_DUPFD[_CLOEXEC], F_ADD_SEALS, F_GET_SEALS.

        Raises: DmaBufError: EBADF; EINVAL (sealing a non-memfd, an unmodelled command);
            EPERM/EBUSY from the seals.
        Kernel: fs/fcntl.c, do_fcntl(); mm/memfd.c, memfd_fcntl().
        """
        fds = self.process.fds
        if cmd == _F_GETFD:
            return _FD_CLOEXEC if fds.is_cloexec(fd) else 0
        if cmd == _F_GETFL:
            return fds.lookup(fd).f_flags
        if cmd in (_F_DUPFD, _F_DUPFD_CLOEXEC):
            return fds.dup(fd, O_CLOEXEC if cmd == _F_DUPFD_CLOEXEC else 0)
        if cmd == _F_ADD_SEALS:
            memfd_add_seals(fd, arg, machine=self.machine)
            return 0
        if cmd == _F_GET_SEALS:
            return memfd_get_seals(fd, machine=self.machine)
        fds.lookup(fd)
        raise _err(errno.EINVAL, f"fcntl command {cmd} is not modelled (F_GETFD, F_GETFL, "
                   "F_DUPFD, F_DUPFD_CLOEXEC, F_ADD_SEALS, F_GET_SEALS are)")

    # -- memfd --------------------------------------------------------------------------------
    def memfd_create(self, name: str, flags: int) -> int:
        """memfd_create(2) in the model (pages from ``ram0``). Kernel: mm/memfd.c."""
        return memfd_create(self.kernel.phys, name, flags, machine=self.machine)

    def _memfd(self, fd: int, what: str) -> MemFd:
        f = self.process.fds.lookup(fd)
        if not isinstance(f.private_data, MemFd):
            raise _err(errno.EINVAL, f"{what} on a {f.fops.name} file: the model supports it on "
                       "memfds only")
        memfd: MemFd = f.private_data
        return memfd

    def ftruncate(self, fd: int, length: int) -> None:
        """ftruncate(2) of a memfd (``EPERM`` under SHRINK/GROW seals). Kernel: shmem_setattr."""
        self._memfd(fd, "ftruncate").ftruncate(length)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        """pread(2) of a memfd. Kernel: mm/shmem.c, shmem_file_read_iter()."""
        return self._memfd(fd, "pread").pread(length, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """pwrite(2) of a memfd (``EPERM`` under write seals). Kernel: shmem_file_write_iter."""
        return self._memfd(fd, "pwrite").pwrite(data, offset)

    # -- procfs, sysfs, debugfs ---------------------------------------------------------------
    def read_text(self, path: str) -> str:
        """Read a procfs/sysfs/debugfs file of the model kernel.

        Raises: DmaBufError(ENOENT): no such file (or fd not open for fdinfo).
        Kernel: fs/proc/fd.c (seq_show), drivers/dma-buf/dma-buf.c (dma_buf_debug_show),
            kernel/params.c (module parameters), kernel/sysctl.c (osrelease).
        """
        parts = path.strip("/").split("/")
        if path == "/sys/kernel/debug/dma_buf/bufinfo":
            return dma_buf_bufinfo(self.machine)
        if path == "/proc/sys/kernel/osrelease":
            return MODEL_RELEASE + "\n"
        if path == "/sys/module/udmabuf/parameters/size_limit_mb":
            return f"{self.kernel.udmabuf.size_limit_mb}\n"
        if path == "/sys/module/udmabuf/parameters/list_limit":
            return f"{self.kernel.udmabuf.list_limit}\n"
        if len(parts) == 4 and parts[0] == "proc" and parts[2] == "fdinfo":
            proc = self._find_process(parts[1])
            try:
                return proc.fds.fdinfo(int(parts[3]))
            except (ValueError, DmaBufError):
                raise _err(errno.ENOENT, f"{path}: fd {parts[3]} is not open") from None
        raise _err(errno.ENOENT, f"{path}: no such file in the model kernel")

    def readlink(self, path: str) -> str:
        """readlink(2) of ``/proc/<pid>/fd/<n>``: what the kernel's link shows for that file.

        Raises: DmaBufError(ENOENT): not open / no such link.
        Kernel: fs/proc/base.c, proc_fd_link(); d_path() with the file system's d_dname
            (dmabuffs_dname for a dma-buf, anon_inode:… for a sync_file).
        """
        parts = path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "proc" or parts[2] != "fd":
            raise _err(errno.ENOENT, f"readlink {path}: not an fd link of the model")
        proc = self._find_process(parts[1])
        try:
            f = proc.fds.lookup(int(parts[3]))
        except (ValueError, DmaBufError):
            raise _err(errno.ENOENT, f"readlink {path}: fd {parts[3]} is not open") from None
        return _link_of(f)

    def listdir(self, path: str) -> list[str]:
        """The entries of a model directory (``/dev/dma_heap``, ``/dev/dri``, ``/proc/*/fd``).

        Raises: DmaBufError(ENOENT).
        """
        path = path.rstrip("/")
        if path == "/dev/dma_heap":
            return self.machine.state(DmaHeapRegistry).names()
        if path == "/dev/dri":
            return list(VgemDriver.nodes)
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "proc" and parts[2] in ("fd", "fdinfo"):
            return [str(n) for n in self._find_process(parts[1]).fds.fds()]
        raise _err(errno.ENOENT, f"{path}: no such directory in the model kernel")

    # -- fd passing ---------------------------------------------------------------------------
    def send_fds(self, sock: socket.socket, data: bytes, fds: Sequence[int]) -> int:
        """sendmsg(2) with SCM_RIGHTS of model fds (each rides as a host token fd).

        Raises: DmaBufError(EBADF): an fd is not open; OSError of sendmsg.
        Kernel: net/core/scm.c, scm_fp_copy() (a reference per file in flight).
        """
        k = self.kernel
        k.inflight.sweep()
        files: list[File] = []
        try:
            for fd in fds:
                files.append(self._fget(fd))
        except BaseException:
            for f in files:
                f.put()
            raise
        tokens: list[int] = []
        try:
            for f in files:
                tokens.append(k.inflight.add(f))
            files = []
            return socket.send_fds(sock, [data], tokens)
        except BaseException:
            for f in files:
                f.put()
            raise
        finally:
            for w in tokens:
                os.close(w)
            # A failed send closed the only copies of the tokens: the sweep releases them.
            k.inflight.sweep()

    def recv_fds(self, sock: socket.socket, bufsize: int,
                 maxfds: int) -> tuple[bytes, list[int], int]:
        """recvmsg(2) with SCM_RIGHTS: install the files that came as model fds (O_CLOEXEC).

        Returns: ``(data, fds, msg_flags)``; ``MSG_CTRUNC`` when the kernel dropped fds.
        Raises: DmaBufError(EINVAL): a host fd came that is not a model token (it is closed);
            DmaBufError(EMFILE); OSError of recvmsg.
        Kernel: net/core/scm.c, scm_detach_fds(), receive_fd().
        """
        k = self.kernel
        arr = array.array("i")
        data, anc, flags, _addr = sock.recvmsg(
            bufsize, socket.CMSG_LEN(max(1, maxfds) * arr.itemsize), socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
        files: list[File | None] = []
        for hfd in arr:
            try:
                files.append(k.inflight.claim(os.fstat(hfd).st_ino))
            finally:
                os.close(hfd)
        out: list[int] = []
        fdt = self.process.fds
        foreign = sum(1 for f in files if f is None)
        try:
            for i, f in enumerate(files):
                if f is None:
                    continue
                files[i] = None
                try:
                    out.append(fdt.install(f, O_CLOEXEC))
                except BaseException:
                    f.put()
                    raise
        except BaseException:
            for f2 in files:
                if f2 is not None:
                    f2.put()
            for fd in out:
                fdt.close(fd)
            raise
        finally:
            k.inflight.sweep()
        if foreign:
            for fd in out:
                fdt.close(fd)
            raise _err(errno.EINVAL, f"received {foreign} host fd(s) that are not model files "
                       "(the sender used another backend); they were closed")
        return data, out, flags

    # -- processes ----------------------------------------------------------------------------
    def fork_process(self, name: str = "child") -> Process:
        """``fork()``: a new process whose fd table is a copy of the current one.

        :meth:`~dmabuf.buf.file.ProcessTable.fork`: same numbers, same close-on-exec flags, one
        more reference on every file. Mappings are not copied (a deliberate difference).

        Kernel: kernel/fork.c, copy_process() → copy_files() → dup_fd().
        """
        return self.machine.state(ProcessTable).fork(self.process, name)

    def exit_process(self, proc: Process) -> None:
        """Process exit: close every fd (``exit_files``); ``/proc/<pid>`` disappears.

        Kernel: kernel/exit.c, do_exit() (:meth:`~dmabuf.buf.file.Process.exit`).
        """
        proc.exit()

    def run_child(self, fn: Callable[[], int], timeout: float = 20.0) -> int:
        """Run ``fn`` as a forked child (fd-table copy) on a thread; return its exit status.

        The child runs with :meth:`fork_process`'s process current, and exits (closing its
        fds) when ``fn`` returns or raises (status 99 then, as an uncaught exception in a real
        child). Real sockets and Python objects are shared with the parent (a thread, not a
        process).

        Raises: TimeoutError: ``fn`` did not finish within ``timeout`` seconds (the thread is
            left running — threads cannot be killed — and is the error's ``thread``).
        Kernel: kernel/fork.c, kernel/exit.c (do_exit → exit_files).
        """
        child = self.fork_process()
        box: dict[str, Any] = {"code": 99}

        def body() -> None:
            try:
                with child:
                    box["code"] = int(fn())
            except BaseException as e:  # the child's uncaught exception
                box["error"] = e
            finally:
                self.exit_process(child)

        t = threading.Thread(target=body, name=f"model-child-{child.pid}", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            err = TimeoutError(f"model child {child.pid} did not finish within {timeout} s")
            err.thread = t  # type: ignore[attr-defined]  # join it once the child can finish
            raise err
        code: int = box["code"]
        return code

    # -- teardown -----------------------------------------------------------------------------
    def shutdown(self, timeout: float = 10.0) -> bool:
        """Release dropped in-flight files and wait for the vgem fence-timer worker.

        Returns: True when no worker thread is left.
        """
        self.kernel.inflight.sweep()
        return self.kernel.vgem.shutdown(timeout)


def _link_of(f: File) -> str:
    """The ``/proc/*/fd/N`` link text of a model file."""
    pd = f.private_data
    if isinstance(f.fops, DmaBufFileOps):
        buf: DmaBuf = pd
        return dma_buf_dname(buf)
    if isinstance(pd, MemFd):
        return f"/memfd:{pd.name} (deleted)"
    if isinstance(f.fops, SyncFileFileOps):
        return "anon_inode:sync_file"
    if isinstance(pd, DmaHeap):
        return pd.path
    if isinstance(pd, UdmabufDevice):
        return pd.path
    if isinstance(f.fops, VgemFileOps):
        return "/dev/dri/card0"
    return f"anon_inode:[{f.fops.name}]"


def model_uapi_backend(machine: Machine | None = None, *,
                       ram_size: int = DEFAULT_RAM_SIZE) -> ModelBackend:
    """A :class:`ModelBackend` on ``machine`` (default: the current one), booting its kernel.

    Args:
        machine: the machine; default :func:`~dmabuf.machine.current_machine`.
        ram_size: RAM of the model kernel if this call boots it (1 GiB, sparse).
    Returns: the backend; pass it as ``backend=`` to every ``dmabuf.uapi`` constructor.
    Raises: DmaBufError(EINVAL): bad ``ram_size``; TypeError: not a Machine.
    """
    return ModelBackend(machine, ram_size=ram_size)
