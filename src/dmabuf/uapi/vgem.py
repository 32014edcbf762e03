"""DRM vgem — a virtual GEM driver whose fences user space controls (real fences for tests).

vgem (``CONFIG_DRM_VGEM``, ``modprobe vgem``) is a DRM device without hardware: it allocates
shmem-backed GEM objects ("dumb buffers"), exports them as dma-bufs with PRIME, and — what makes
it the workhorse of IGT's dma-buf tests — lets user space attach a fence to an object's
reservation (``DRM_IOCTL_VGEM_FENCE_ATTACH``, read or write) and signal it later
(``DRM_IOCTL_VGEM_FENCE_SIGNAL``). Between the two the dma-buf is busy exactly as if a GPU were
using it: ``poll`` blocks, ``DMA_BUF_IOCTL_SYNC(START)`` waits, ``EXPORT_SYNC_FILE`` returns an
unsignalled fence.

Rules (vgem_fence.c):

* ``flags`` may only be ``VGEM_FENCE_WRITE``, ``pad`` must be 0 — else ``EINVAL``; an unknown
  handle gives ``ENOENT``;
* attaching a fence that *conflicts* with an unsignalled one gives ``EBUSY`` (a write fence
  while any fence is pending, a read fence while a write fence is pending);
* a fence not signalled within **10 s** is signalled by a timer; signalling it then gives
  ``ETIMEDOUT``; signalling twice gives ``ENOENT``;
* closing the DRM file signals every fence it still holds (:meth:`VgemDevice.close`).

The DRM core ioctls used: ``DRM_IOCTL_VERSION`` (find the vgem card), ``MODE_CREATE_DUMB``,
``MODE_MAP_DUMB``, ``GEM_CLOSE``, ``PRIME_HANDLE_TO_FD`` and ``PRIME_FD_TO_HANDLE`` (importing
a dma-buf back into the same device returns the same handle).

Kernel: drivers/gpu/drm/vgem/vgem_drv.c, vgem_fence.c; include/uapi/drm/vgem_drm.h;
include/uapi/drm/drm.h, drm_mode.h; drivers/gpu/drm/drm_prime.c.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
from collections.abc import Iterator
from types import TracebackType
from typing import Self

from dmabuf.errors import DmaBufError
from dmabuf.uapi.backend import UapiBackend, default_backend
from dmabuf.uapi.dma_buf import DmaBufFile
from dmabuf.uapi.fd import FdObject, os_error
from dmabuf.uapi.ioctl import IOW, IOWR

__all__ = [
    "DRM_IOCTL_GEM_CLOSE",
    "DRM_IOCTL_MODE_CREATE_DUMB",
    "DRM_IOCTL_MODE_MAP_DUMB",
    "DRM_IOCTL_PRIME_FD_TO_HANDLE",
    "DRM_IOCTL_PRIME_HANDLE_TO_FD",
    "DRM_IOCTL_VERSION",
    "DRM_IOCTL_VGEM_FENCE_ATTACH",
    "DRM_IOCTL_VGEM_FENCE_SIGNAL",
    "VGEM_FENCE_WRITE",
    "DrmGemClose",
    "DrmModeCreateDumb",
    "DrmModeMapDumb",
    "DrmPrimeHandle",
    "DrmVersion",
    "DrmVgemFenceAttach",
    "DrmVgemFenceSignal",
    "VgemBo",
    "VgemDevice",
    "VgemFence",
    "drm_driver_name",
]


class DrmVersion(ctypes.Structure):
    """``struct drm_version`` (64 bytes on LP64); the name/date/desc are user pointers."""

    _fields_ = [("version_major", ctypes.c_int), ("version_minor", ctypes.c_int),
                ("version_patchlevel", ctypes.c_int), ("name_len", ctypes.c_size_t),
                ("name", ctypes.c_void_p), ("date_len", ctypes.c_size_t),
                ("date", ctypes.c_void_p), ("desc_len", ctypes.c_size_t),
                ("desc", ctypes.c_void_p)]


class DrmGemClose(ctypes.Structure):
    """``struct drm_gem_close`` (8 bytes)."""

    _fields_ = [("handle", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class DrmPrimeHandle(ctypes.Structure):
    """``struct drm_prime_handle`` (12 bytes)."""

    _fields_ = [("handle", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("fd", ctypes.c_int32)]


class DrmModeCreateDumb(ctypes.Structure):
    """``struct drm_mode_create_dumb`` (32 bytes)."""

    _fields_ = [("height", ctypes.c_uint32), ("width", ctypes.c_uint32),
                ("bpp", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("handle", ctypes.c_uint32), ("pitch", ctypes.c_uint32),
                ("size", ctypes.c_uint64)]


class DrmModeMapDumb(ctypes.Structure):
    """``struct drm_mode_map_dumb`` (16 bytes)."""

    _fields_ = [("handle", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("offset", ctypes.c_uint64)]


class DrmVgemFenceAttach(ctypes.Structure):
    """``struct drm_vgem_fence_attach`` (16 bytes)."""

    _fields_ = [("handle", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("out_fence", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class DrmVgemFenceSignal(ctypes.Structure):
    """``struct drm_vgem_fence_signal`` (8 bytes)."""

    _fields_ = [("fence", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


DRM_IOCTL_BASE = "d"
DRM_COMMAND_BASE = 0x40
DRM_IOCTL_VERSION = IOWR(DRM_IOCTL_BASE, 0x00, DrmVersion)
DRM_IOCTL_GEM_CLOSE = IOW(DRM_IOCTL_BASE, 0x09, DrmGemClose)
DRM_IOCTL_PRIME_HANDLE_TO_FD = IOWR(DRM_IOCTL_BASE, 0x2D, DrmPrimeHandle)
DRM_IOCTL_PRIME_FD_TO_HANDLE = IOWR(DRM_IOCTL_BASE, 0x2E, DrmPrimeHandle)
DRM_IOCTL_MODE_CREATE_DUMB = IOWR(DRM_IOCTL_BASE, 0xB2, DrmModeCreateDumb)
DRM_IOCTL_MODE_MAP_DUMB = IOWR(DRM_IOCTL_BASE, 0xB3, DrmModeMapDumb)
DRM_IOCTL_VGEM_FENCE_ATTACH = IOWR(DRM_IOCTL_BASE, DRM_COMMAND_BASE + 0x01, DrmVgemFenceAttach)
DRM_IOCTL_VGEM_FENCE_SIGNAL = IOW(DRM_IOCTL_BASE, DRM_COMMAND_BASE + 0x02, DrmVgemFenceSignal)
VGEM_FENCE_WRITE = 0x1
DRM_DIR = "/dev/dri"


def drm_driver_name(fd: int, backend: UapiBackend | None = None) -> str:
    """The DRM driver's name of an open DRM fd (``vgem``) — ``DRM_IOCTL_VERSION``.

    Raises:
        DmaBufError: ENOTTY if ``fd`` is not a DRM device.

    Kernel: drivers/gpu/drm/drm_ioctl.c, drm_version().
    """
    be = backend if backend is not None else default_backend()
    name = ctypes.create_string_buffer(64)
    buf = bytearray(ctypes.sizeof(DrmVersion))
    v = DrmVersion.from_buffer(buf)
    v.name_len = len(name) - 1
    v.name = ctypes.addressof(name)
    try:
        be.ioctl(fd, DRM_IOCTL_VERSION, buf)
    except OSError as e:
        raise os_error(e, f"DRM_IOCTL_VERSION on fd {fd}",
                       {errno.ENOTTY: f"fd {fd} is not a DRM device"}) from e
    return name.value.decode("ascii", "replace")


class VgemFence:
    """A fence attached with ``DRM_IOCTL_VGEM_FENCE_ATTACH``; :meth:`signal` it (< 10 s)."""

    def __init__(self, device: VgemDevice, fence_id: int, write: bool) -> None:
        self.device = device
        self.id = fence_id
        self.write = write
        self._signaled = False

    def signal(self) -> None:
        """Signal the fence — ``DRM_IOCTL_VGEM_FENCE_SIGNAL``.

        Raises:
            DmaBufError: ENOENT if already signalled by this call; ETIMEDOUT if the 10 s timer
                signalled it first (the fence is signalled either way).

        Kernel: drivers/gpu/drm/vgem/vgem_fence.c, vgem_fence_signal_ioctl().
        """
        self.device.signal_fence(self.id)
        self._signaled = True

    @property
    def signaled_by_us(self) -> bool:
        """True after a successful :meth:`signal`."""
        return self._signaled

    def __repr__(self) -> str:
        return f"<VgemFence {self.id} {'write' if self.write else 'read'}>"


class VgemBo:
    """A vgem GEM object (a handle of one :class:`VgemDevice`); ``close()`` is GEM_CLOSE."""

    def __init__(self, device: VgemDevice, handle: int, size: int, pitch: int = 0) -> None:
        self.device = device
        self.handle = handle
        self.size = size
        self.pitch = pitch
        self._closed = False

    def close(self) -> None:
        """Drop the handle — ``DRM_IOCTL_GEM_CLOSE``; idempotent.

        A no-op once the device is closed (closing the DRM file dropped every handle).

        Kernel: drivers/gpu/drm/drm_gem.c, drm_gem_close_ioctl(), drm_gem_release().
        """
        if self._closed:
            return
        self._closed = True
        if not self.device.closed:
            self.device.gem_close(self.handle)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def export(self, *, rdwr: bool = True, cloexec: bool = True) -> DmaBufFile:
        """PRIME-export as a dma-buf — see :meth:`VgemDevice.export`."""
        return self.device.export(self, rdwr=rdwr, cloexec=cloexec)

    def attach_fence(self, *, write: bool = False) -> VgemFence:
        """Attach a fence — see :meth:`VgemDevice.attach_fence`."""
        return self.device.attach_fence(self, write=write)

    def __repr__(self) -> str:
        return f"<VgemBo handle={self.handle} size={self.size}>"


class VgemDevice(FdObject):
    """An open vgem DRM device (owned fd). Closing it signals all its pending fences."""

    def __init__(self, fd: int, backend: UapiBackend | None = None, *, path: str = "") -> None:
        super().__init__(fd, backend, what=path or "vgem")
        self.path = path

    @classmethod
    def open(cls, backend: UapiBackend | None = None, *, path: str | None = None) -> VgemDevice:
        """Open the vgem card (the first ``/dev/dri/card*`` whose driver is ``vgem``).

        Args:
            backend: None for the running kernel.
            path: a specific node instead of searching.

        Raises:
            DmaBufError: ENOENT naming ``modprobe vgem`` / CONFIG_DRM_VGEM when no vgem card
                exists; EACCES for the node's permissions.

        Kernel: drivers/gpu/drm/vgem/vgem_drv.c.
        """
        be = backend if backend is not None else default_backend()
        candidates = [path] if path else []
        if not path:
            try:
                candidates = [f"{DRM_DIR}/{n}" for n in sorted(be.listdir(DRM_DIR))
                              if n.startswith("card")]
            except OSError:
                candidates = []
        seen: list[str] = []
        for p in candidates:
            try:
                fd = be.open(p, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                if path:
                    raise os_error(e, f"open {p}", {
                        errno.ENOENT: "no such DRM node",
                        errno.EACCES: "add the user to group 'video' or run as root"}) from e
                seen.append(f"{p}: {errno.errorcode.get(e.errno or 0, e.errno)}")
                continue
            try:
                drv = drm_driver_name(fd, be)
            except DmaBufError as e:
                be.close(fd)
                if path:
                    raise
                seen.append(f"{p}: {e}")
                continue
            if drv == "vgem":
                return cls(fd, be, path=p)
            be.close(fd)
            seen.append(f"{p}: driver {drv}")
        raise DmaBufError(errno.ENOENT, (
            "no vgem device: load it with 'modprobe vgem' (needs CONFIG_DRM_VGEM; check "
            f"zgrep DRM_VGEM /proc/config.gz); looked at {seen or [DRM_DIR + '/card*']}"))

    # ------------------------------------------------------------------ GEM objects

    def create_dumb(self, width: int, height: int, bpp: int = 32) -> VgemBo:
        """Allocate a dumb buffer — ``DRM_IOCTL_MODE_CREATE_DUMB`` (size rounds to pages).

        Raises:
            DmaBufError: EINVAL for a zero or overflowing size.

        Kernel: drivers/gpu/drm/drm_dumb_buffers.c, drm_mode_create_dumb();
            drm_gem_shmem_dumb_create().
        """
        buf = bytearray(ctypes.sizeof(DrmModeCreateDumb))
        a = DrmModeCreateDumb.from_buffer(buf)
        a.width, a.height, a.bpp = width, height, bpp
        try:
            self._backend.ioctl(self.fileno(), DRM_IOCTL_MODE_CREATE_DUMB, buf)
        except OSError as e:
            raise os_error(e, f"DRM_IOCTL_MODE_CREATE_DUMB {width}x{height}x{bpp}", {
                errno.EINVAL: "zero or too large a size"}) from e
        return VgemBo(self, a.handle, a.size, a.pitch)

    def gem_close(self, handle: int) -> None:
        """Drop a GEM handle — ``DRM_IOCTL_GEM_CLOSE``.

        Raises:
            DmaBufError: EINVAL for an unknown handle.

        Kernel: drivers/gpu/drm/drm_gem.c, drm_gem_close_ioctl().
        """
        buf = bytearray(ctypes.sizeof(DrmGemClose))
        DrmGemClose.from_buffer(buf).handle = handle
        try:
            self._backend.ioctl(self.fileno(), DRM_IOCTL_GEM_CLOSE, buf)
        except OSError as e:
            raise os_error(e, f"DRM_IOCTL_GEM_CLOSE handle {handle}") from e

    def export(self, bo: VgemBo | int, *, rdwr: bool = True, cloexec: bool = True) -> DmaBufFile:
        """PRIME-export a GEM object as a dma-buf — ``DRM_IOCTL_PRIME_HANDLE_TO_FD``.

        Args:
            bo: the object or its handle.
            rdwr: DRM_RDWR (O_RDWR) so the dma-buf can be mapped writable.
            cloexec: DRM_CLOEXEC.

        Returns:
            The :class:`DmaBufFile` (exporter ``drm``); exporting twice gives the same dma-buf.

        Raises:
            DmaBufError: ENOENT for an unknown handle; EINVAL for bad flags.

        Kernel: drivers/gpu/drm/drm_prime.c, drm_prime_handle_to_fd_ioctl().
        """
        handle = bo.handle if isinstance(bo, VgemBo) else int(bo)
        buf = bytearray(ctypes.sizeof(DrmPrimeHandle))
        a = DrmPrimeHandle.from_buffer(buf)
        a.handle = handle
        a.flags = (os.O_RDWR if rdwr else 0) | (os.O_CLOEXEC if cloexec else 0)
        a.fd = -1
        try:
            self._backend.ioctl(self.fileno(), DRM_IOCTL_PRIME_HANDLE_TO_FD, buf)
        except OSError as e:
            raise os_error(e, f"DRM_IOCTL_PRIME_HANDLE_TO_FD handle {handle}", {
                errno.ENOENT: f"no GEM object with handle {handle}"}) from e
        return DmaBufFile(a.fd, self._backend)

    def import_dmabuf(self, dmabuf: DmaBufFile | int) -> int:
        """Import a dma-buf into this device — ``DRM_IOCTL_PRIME_FD_TO_HANDLE``.

        Returns:
            The GEM handle (the same handle if the dma-buf was exported by this device).
            The caller owns it (:meth:`gem_close`).

        Raises:
            DmaBufError: EBADF/EINVAL for a non-dma-buf fd.

        Kernel: drivers/gpu/drm/drm_prime.c, drm_prime_fd_to_handle_ioctl().
        """
        fd = dmabuf.fileno() if isinstance(dmabuf, FdObject) else int(dmabuf)
        buf = bytearray(ctypes.sizeof(DrmPrimeHandle))
        DrmPrimeHandle.from_buffer(buf).fd = fd
        try:
            self._backend.ioctl(self.fileno(), DRM_IOCTL_PRIME_FD_TO_HANDLE, buf)
        except OSError as e:
            raise os_error(e, f"DRM_IOCTL_PRIME_FD_TO_HANDLE of fd {fd}", {
                errno.EBADF: f"fd {fd} is not open or not a dma-buf",
                errno.EINVAL: f"fd {fd} is not a dma-buf"}) from e
        return int(DrmPrimeHandle.from_buffer(buf).handle)

    @contextlib.contextmanager
    def map_dumb(self, bo: VgemBo) -> Iterator[memoryview]:
        """Map a GEM object through the DRM fd (not the dma-buf) — ``MODE_MAP_DUMB`` + mmap.

        vgem's own mapping needs no dma-buf SYNC (it is the exporter's view); the memoryview is
        released on exit.

        Kernel: drivers/gpu/drm/drm_gem_shmem_helper.c (dumb map offset, mmap).
        """
        buf = bytearray(ctypes.sizeof(DrmModeMapDumb))
        DrmModeMapDumb.from_buffer(buf).handle = bo.handle
        try:
            self._backend.ioctl(self.fileno(), DRM_IOCTL_MODE_MAP_DUMB, buf)
            offset = int(DrmModeMapDumb.from_buffer(buf).offset)
            region = self._backend.mmap(self.fileno(), bo.size,
                                        prot=mmap.PROT_READ | mmap.PROT_WRITE,
                                        flags=mmap.MAP_SHARED, offset=offset)
        except OSError as e:
            raise os_error(e, f"mapping vgem handle {bo.handle}") from e
        view = memoryview(region)  # type: ignore[arg-type]
        try:
            yield view
        finally:
            view.release()
            try:
                region.close()
            except BufferError:
                self._backend.revoke(region)

    # ------------------------------------------------------------------ fences

    def attach_fence(self, bo: VgemBo | int, *, write: bool = False, flags: int | None = None,
                     pad: int = 0) -> VgemFence:
        """Attach a read (or write) fence to the object's reservation — ``VGEM_FENCE_ATTACH``.

        Args:
            bo: the object or its handle.
            write: VGEM_FENCE_WRITE (an exclusive/write fence) instead of a read fence.
            flags: raw flags instead of ``write`` (to test EINVAL).
            pad: raw pad (must be 0).

        Returns:
            The :class:`VgemFence`; signal it within 10 s.

        Raises:
            DmaBufError: EBUSY when it conflicts with a pending fence; ENOENT for an unknown
                handle; EINVAL for unknown flags or pad.

        Kernel: drivers/gpu/drm/vgem/vgem_fence.c, vgem_fence_attach_ioctl().
        """
        handle = bo.handle if isinstance(bo, VgemBo) else int(bo)
        buf = bytearray(ctypes.sizeof(DrmVgemFenceAttach))
        a = DrmVgemFenceAttach.from_buffer(buf)
        a.handle = handle
        a.flags = (VGEM_FENCE_WRITE if write else 0) if flags is None else flags
        a.pad = pad
        try:
            self._backend.ioctl(self.fileno(), DRM_IOCTL_VGEM_FENCE_ATTACH, buf)
        except OSError as e:
            raise os_error(e, f"DRM_IOCTL_VGEM_FENCE_ATTACH handle {handle}", {
                errno.EBUSY: ("a conflicting fence is pending (a write fence conflicts with any "
                              "fence, a read fence with a write fence): signal it first"),
                errno.ENOENT: f"no GEM object with handle {handle}",
                errno.EINVAL: "flags other than VGEM_FENCE_WRITE, or pad != 0"}) from e
        return VgemFence(self, int(a.out_fence), bool(a.flags & VGEM_FENCE_WRITE))

    def signal_fence(self, fence_id: int, *, flags: int = 0) -> None:
        """Signal a fence by id — ``DRM_IOCTL_VGEM_FENCE_SIGNAL``.

        Raises:
            DmaBufError: ENOENT (unknown or already signalled), ETIMEDOUT (its 10 s timer
                fired first), EINVAL (flags != 0).

        Kernel: drivers/gpu/drm/vgem/vgem_fence.c, vgem_fence_signal_ioctl().
        """
        buf = bytearray(ctypes.sizeof(DrmVgemFenceSignal))
        a = DrmVgemFenceSignal.from_buffer(buf)
        a.fence = fence_id
        a.flags = flags
        try:
            self._backend.ioctl(self.fileno(), DRM_IOCTL_VGEM_FENCE_SIGNAL, buf)
        except OSError as e:
            raise os_error(e, f"DRM_IOCTL_VGEM_FENCE_SIGNAL fence {fence_id}", {
                errno.ENOENT: "no such pending fence (already signalled?)",
                errno.ETIMEDOUT: "the fence had expired: vgem signals fences after 10 s",
                errno.EINVAL: "flags must be 0"}) from e
