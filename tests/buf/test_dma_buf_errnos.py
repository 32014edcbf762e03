"""Every errno path of spec §6 (kernel API) and §7 (file operations / uAPI), table-driven.

Each row builds what it needs on a fresh machine, performs one failing call and checks the
exact errno (and, where the kernel WARNs, that the machine recorded the WARN).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dmabuf_mocks import BIDI, DynamicMockExporter, MiB, MockExporter, make_phys

from dmabuf.buf import dma_buf as D
from dmabuf.buf.device import DirectDev
from dmabuf.buf.dma_buf import DmaBufAttachOps, DmaBufExportInfo, DmaBufOps, ExporterModule, Vma
from dmabuf.buf.dma_buf_file import (
    DMA_BUF_IOCTL_EXPORT_SYNC_FILE,
    DMA_BUF_IOCTL_IMPORT_SYNC_FILE,
    DMA_BUF_IOCTL_SYNC,
    DMA_BUF_SET_NAME_B,
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_RW,
    DmaBufExportSyncFileArg,
    DmaBufImportSyncFileArg,
    install_sync_file,
)
from dmabuf.buf.file import (
    SEEK_CUR,
    SEEK_END,
    SEEK_SET,
    File,
    FileOperations,
    ProcessTable,
    current_process,
)
from dmabuf.buf.revoke import Revoker
from dmabuf.errors import ERESTARTSYS, DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm.phys import PAGE_SIZE
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps, Interrupts, dma_fence_get_stub
from dmabuf.sync.dma_resv import DmaResvUsage
from dmabuf.sync.sync_file import SyncFile


@dataclass
class Env:
    m: Machine
    phys: Any

    def buf(self, cls: type = MockExporter, **kw: Any) -> Any:
        e = cls(self.phys, MiB, region="ram0", **kw)
        return e.export(machine=self.m)

    def dev(self, name: str = "dev") -> DirectDev:
        return DirectDev(name, self.phys)


def _ops(**drop: bool) -> DmaBufOps:
    fns: dict[str, Any] = {"map_dma_buf": lambda a, d: None,
                           "unmap_dma_buf": lambda a, t, d: None,
                           "release": lambda b: None}
    for k in drop:
        fns.pop(k)
    return DmaBufOps(**fns)


def _export(env: Env, info: DmaBufExportInfo) -> None:
    D.dma_buf_export(info, env.m)


def _pin_only_ops() -> DmaBufOps:
    return DmaBufOps(map_dma_buf=lambda a, d: None, unmap_dma_buf=lambda a, t, d: None,
                     release=lambda b: None, pin=lambda a: None)


def _unpin_only_ops() -> DmaBufOps:
    return DmaBufOps(map_dma_buf=lambda a, d: None, unmap_dma_buf=lambda a, t, d: None,
                     release=lambda b: None, unpin=lambda a: None)


def _unloading() -> ExporterModule:
    mod = ExporterModule("gone")
    mod.unload()
    return mod


def _fd_table_full(env: Env) -> None:
    p = env.m.state(ProcessTable).spawn("small", max_fds=4)     # only fd 3 is available
    b = env.buf()
    with p:
        b.get().fd()
        b.get()
        try:
            b.fd()
        finally:
            b.put()


def _get_closed(env: Env) -> None:
    b = env.buf()
    fd = b.fd()
    current_process(env.m).fds.close(fd)
    D.dma_buf_get(fd)


def _get_not_dmabuf(env: Env) -> None:
    fd = current_process(env.m).fds.install(File(FileOperations(), None, machine=env.m))
    D.dma_buf_get(fd)


def _fd_released(env: Env) -> None:
    b = env.buf()
    b.put()
    D.dma_buf_fd(b)


def _attach_reject(err: int) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        env.buf(fail_attach=err).attach(env.dev())
    return run


def _pin_fails(err: int) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        b = env.buf(DynamicMockExporter, fail_pin=err)
        a = b.dynamic_attach(env.dev(), DmaBufAttachOps())
        b.resv.lock(None)
        try:
            a.pin()
        finally:
            b.resv.unlock()
    return run


def _map_fails(err: int, dynamic_exporter: bool = False) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        cls = DynamicMockExporter if dynamic_exporter else MockExporter
        b = env.buf(cls, fail_map=err)
        b.attach(env.dev()).map_unlocked(BIDI)
    return run


def _pin_on_map_fails(env: Env) -> None:
    b = env.buf(DynamicMockExporter, fail_pin=errno.ENOMEM)
    b.attach(env.dev()).map_unlocked(BIDI)


def _map_returns_none(env: Env) -> None:
    ops = _ops()
    b = D.dma_buf_export(DmaBufExportInfo("n", ops, MiB, priv=1), env.m)
    b.attach(env.dev()).map_unlocked(BIDI)


_FOPS = DmaFenceOps("t", "t")


def _pending_fence(env: Env, b: Any, usage: DmaResvUsage) -> DmaFence:
    f = DmaFence(_FOPS, env.m.fence_context_alloc(1), 1, machine=env.m)
    b.resv.lock(None)
    b.resv.reserve_fences(1)
    b.resv.add_fence(f, usage)
    b.resv.unlock()
    return f


def _interrupted(env: Env, fn: Callable[[], Any]) -> None:
    Interrupts.of(env.m).send(None)
    try:
        fn()
    finally:
        Interrupts.of(env.m).clear()


def _static_map_interrupted(env: Env) -> None:
    b = env.buf()
    a = b.attach(env.dev())
    _pending_fence(env, b, DmaResvUsage.KERNEL)
    _interrupted(env, lambda: a.map_unlocked(BIDI))


def _cpu_access_interrupted(env: Env) -> None:
    b = env.buf()
    _pending_fence(env, b, DmaResvUsage.WRITE)
    _interrupted(env, lambda: b.begin_cpu_access(BIDI))


def _sync_interrupted(env: Env) -> None:
    b = env.buf()
    _pending_fence(env, b, DmaResvUsage.WRITE)
    _interrupted(env, lambda: b.file.ioctl(DMA_BUF_IOCTL_SYNC, DMA_BUF_SYNC_READ))


def _cpu_access_exporter_error(env: Env) -> None:
    class E(MockExporter):
        def begin_cpu_access(self, dmabuf, direction):
            raise DmaBufError(errno.EINTR, "interrupted")

    E(env.phys, MiB, region="ram0").export(machine=env.m).begin_cpu_access(BIDI)


def _no_mmap_ops() -> DmaBufOps:
    return _ops()


def _mmap(env: Env, length: int, pgoff: int, ops: DmaBufOps | None = None) -> None:
    if ops is None:
        b = env.buf()
    else:
        b = D.dma_buf_export(DmaBufExportInfo("x", ops, MiB, priv=1), env.m)
    b.mmap(Vma(length), pgoff)


def _mmap_internal(env: Env, length: int, pgoff: int, ops: DmaBufOps | None = None) -> None:
    if ops is None:
        b = env.buf()
    else:
        b = D.dma_buf_export(DmaBufExportInfo("x", ops, MiB, priv=1), env.m)
    b.file.mmap(Vma(length, pgoff=pgoff))


def _vmap_op_error(env: Env) -> None:
    class E(MockExporter):
        def vmap(self, dmabuf):
            raise DmaBufError(errno.ENOMEM, "vmalloc space exhausted")

    E(env.phys, MiB, region="ram0").export(machine=env.m).vmap_unlocked()


def _revoker_env(env: Env, **kw: Any) -> tuple[Any, Revoker]:
    r = Revoker(machine=env.m, **kw)
    e = MockExporter(env.phys, MiB, region="ram0", revoker=r)
    return e.export(machine=env.m), r


def _vfio_revoked_attach(env: Env) -> None:
    b, r = _revoker_env(env)
    r.revoke()
    b.dynamic_attach(env.dev(), DmaBufAttachOps(True, invalidate_mappings=lambda a: None))


def _vfio_revoked_map(env: Env) -> None:
    b, r = _revoker_env(env)
    a = b.dynamic_attach(env.dev(), DmaBufAttachOps(True, invalidate_mappings=lambda a: None))
    r.revoke()
    a.map_unlocked(BIDI)


def _vfio_not_revocable(env: Env) -> None:
    b, _ = _revoker_env(env)
    b.dynamic_attach(env.dev(), DmaBufAttachOps(True))


def _vfio_no_p2p(env: Env) -> None:
    b, _ = _revoker_env(env, require_peer2peer=True)
    b.dynamic_attach(env.dev(), DmaBufAttachOps(False, invalidate_mappings=lambda a: None))


def _ioctl(cmd: int, arg: Any) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        env.buf().file.ioctl(cmd, arg)
    return run


def _import_fd(env: Env, flags: int, fd_kind: str) -> None:
    b = env.buf()
    fds = current_process(env.m).fds
    if fd_kind == "dmabuf":
        fd = b.get().fd()
    elif fd_kind == "closed":
        stub = dma_fence_get_stub(env.m)
        fd = install_sync_file(SyncFile(stub), machine=env.m)
        stub.put()
        fds.close(fd)
    else:
        stub = dma_fence_get_stub(env.m)
        fd = install_sync_file(SyncFile(stub), machine=env.m)
        stub.put()
    b.file.ioctl(DMA_BUF_IOCTL_IMPORT_SYNC_FILE, DmaBufImportSyncFileArg(flags, fd))


def _export_sync_full(env: Env) -> None:
    p = env.m.state(ProcessTable).spawn("small", max_fds=3)          # no fd at all
    b = env.buf()
    with p:
        b.export_sync_file(DMA_BUF_SYNC_RW)


def _seek(off: int, whence: int) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        env.buf().file.llseek(off, whence)
    return run


def _sync_file_seek(env: Env) -> None:
    stub = dma_fence_get_stub(env.m)
    fd = install_sync_file(SyncFile(stub), machine=env.m)
    stub.put()
    current_process(env.m).fds.lookup(fd).llseek(0, SEEK_END)


# (id, action, errno, warn rule or None)
ROWS: list[tuple[str, Callable[[Env], Any], int, str | None]] = [
    # §6 dma_buf_export
    ("export/priv-null", lambda e: _export(e, DmaBufExportInfo("x", _ops(), MiB)), errno.EINVAL,
     "dma_buf_export"),
    ("export/ops-null", lambda e: _export(e, DmaBufExportInfo("x", None, MiB, priv=1)),
     errno.EINVAL, "dma_buf_export"),
    ("export/no-map_dma_buf", lambda e: _export(e, DmaBufExportInfo(
        "x", _ops(map_dma_buf=True), MiB, priv=1)), errno.EINVAL, "dma_buf_export"),
    ("export/no-unmap_dma_buf", lambda e: _export(e, DmaBufExportInfo(
        "x", _ops(unmap_dma_buf=True), MiB, priv=1)), errno.EINVAL, "dma_buf_export"),
    ("export/no-release", lambda e: _export(e, DmaBufExportInfo(
        "x", _ops(release=True), MiB, priv=1)), errno.EINVAL, "dma_buf_export"),
    ("export/pin-without-unpin", lambda e: _export(e, DmaBufExportInfo(
        "x", _pin_only_ops(), MiB, priv=1)), errno.EINVAL, "dma_buf_export"),
    ("export/unpin-without-pin", lambda e: _export(e, DmaBufExportInfo(
        "x", _unpin_only_ops(), MiB, priv=1)), errno.EINVAL, "dma_buf_export"),
    ("export/module-unloading", lambda e: _export(e, DmaBufExportInfo(
        "x", _ops(), MiB, priv=1, owner=_unloading())), errno.ENOENT, None),
    ("export/negative-size", lambda e: _export(e, DmaBufExportInfo("x", _ops(), -1, priv=1)),
     errno.EINVAL, None),
    # dma_buf_fd / dma_buf_get
    ("fd/null", lambda e: D.dma_buf_fd(None, 0), errno.EINVAL, None),  # type: ignore[arg-type]
    ("fd/released", _fd_released, errno.EINVAL, None),
    ("fd/table-full", _fd_table_full, errno.EMFILE, None),
    ("get/bad-fd", lambda e: D.dma_buf_get(99, e.m), errno.EBADF, None),
    ("get/closed-fd", _get_closed, errno.EBADF, None),
    ("get/not-a-dmabuf", _get_not_dmabuf, errno.EINVAL, None),
    # attach
    ("attach/dmabuf-null", lambda e: D.dma_buf_dynamic_attach(None, e.dev(), None),  # type: ignore[arg-type]
     errno.EINVAL, "dma_buf_dynamic_attach"),
    ("attach/dev-null", lambda e: e.buf().dynamic_attach(None, None), errno.EINVAL,  # type: ignore[arg-type]
     "dma_buf_dynamic_attach"),
    ("attach/exporter-EBUSY", _attach_reject(errno.EBUSY), errno.EBUSY, None),
    ("attach/exporter-ENODEV", _attach_reject(errno.ENODEV), errno.ENODEV, None),
    ("attach/exporter-EOPNOTSUPP", _attach_reject(errno.EOPNOTSUPP), errno.EOPNOTSUPP, None),
    # pin
    ("pin/exporter-EOPNOTSUPP", _pin_fails(errno.EOPNOTSUPP), errno.EOPNOTSUPP, None),
    ("pin/exporter-ENOMEM", _pin_fails(errno.ENOMEM), errno.ENOMEM, None),
    # map
    ("map/attach-null", lambda e: D.dma_buf_map_attachment(None, BIDI),  # type: ignore[arg-type]
     errno.EINVAL, "dma_buf_map_attachment"),
    ("map_unlocked/attach-null",
     lambda e: D.dma_buf_map_attachment_unlocked(None, BIDI),  # type: ignore[arg-type]
     errno.EINVAL, "dma_buf_map_attachment_unlocked"),
    ("map/pin_on_map-fails", _pin_on_map_fails, errno.ENOMEM, None),
    ("map/returns-NULL", _map_returns_none, errno.ENOMEM, None),
    ("map/exporter-ENODEV", _map_fails(errno.ENODEV), errno.ENODEV, None),
    ("map/exporter-EINTR", _map_fails(errno.EINTR, True), errno.EINTR, None),
    ("map/kernel-fence-wait-interrupted", _static_map_interrupted, ERESTARTSYS, None),
    # CPU access
    ("begin_cpu_access/null", lambda e: D.dma_buf_begin_cpu_access(None, BIDI),  # type: ignore[arg-type]
     errno.EINVAL, "dma_buf_begin_cpu_access"),
    ("begin_cpu_access/interrupted", _cpu_access_interrupted, ERESTARTSYS, None),
    ("begin_cpu_access/exporter-EINTR", _cpu_access_exporter_error, errno.EINTR, None),
    # mmap
    ("mmap/null", lambda e: D.dma_buf_mmap(None, Vma(PAGE_SIZE), 0), errno.EINVAL,  # type: ignore[arg-type]
     "dma_buf_mmap"),
    ("mmap/vma-null", lambda e: e.buf().mmap(None, 0), errno.EINVAL, "dma_buf_mmap"),  # type: ignore[arg-type]
    ("mmap/no-op", lambda e: _mmap(e, PAGE_SIZE, 0, _no_mmap_ops()), errno.EINVAL, None),
    ("mmap/past-end", lambda e: _mmap(e, 2 * PAGE_SIZE, 255), errno.EINVAL, None),
    ("mmap/too-long", lambda e: _mmap(e, MiB + PAGE_SIZE, 0), errno.EINVAL, None),
    ("mmap/pgoff-overflow", lambda e: _mmap(e, PAGE_SIZE, (1 << 64) - 1), errno.EOVERFLOW,
     None),
    # vmap
    ("vmap/null", lambda e: D.dma_buf_vmap(None), errno.EINVAL, "dma_buf_vmap"),  # type: ignore[arg-type]
    ("vmap/no-op", lambda e: D.dma_buf_export(DmaBufExportInfo("x", _ops(), MiB, priv=1),
                                              e.m).vmap_unlocked(), errno.EINVAL, None),
    ("vmap/exporter-ENOMEM", _vmap_op_error, errno.ENOMEM, "dma_buf_vmap"),
    # the documented revoke sequence's exporter (vfio-pci)
    ("vfio/attach-revoked", _vfio_revoked_attach, errno.ENODEV, None),
    ("vfio/map-revoked", _vfio_revoked_map, errno.ENODEV, None),
    ("vfio/attach-not-revocable", _vfio_not_revocable, errno.EOPNOTSUPP, None),
    ("vfio/attach-no-p2p", _vfio_no_p2p, errno.EOPNOTSUPP, None),
    # §7 llseek
    ("llseek/SEEK_CUR", _seek(0, SEEK_CUR), errno.EINVAL, None),
    ("llseek/SEEK_END-1", _seek(-1, SEEK_END), errno.EINVAL, None),
    ("llseek/SEEK_SET+1", _seek(1, SEEK_SET), errno.EINVAL, None),
    ("llseek/SEEK_DATA", _seek(0, 3), errno.EINVAL, None),
    ("llseek/sync_file-ESPIPE", _sync_file_seek, errno.ESPIPE, None),
    # mmap of the fd (dma_buf_mmap_internal)
    ("mmap_internal/no-op", lambda e: _mmap_internal(e, PAGE_SIZE, 0, _no_mmap_ops()),
     errno.EINVAL, None),
    ("mmap_internal/past-end", lambda e: _mmap_internal(e, PAGE_SIZE, 256), errno.EINVAL, None),
    # DMA_BUF_IOCTL_SYNC
    ("sync/EFAULT", _ioctl(DMA_BUF_IOCTL_SYNC, None), errno.EFAULT, None),
    ("sync/unknown-flag", _ioctl(DMA_BUF_IOCTL_SYNC, DMA_BUF_SYNC_RW | 8), errno.EINVAL, None),
    ("sync/high-flag", _ioctl(DMA_BUF_IOCTL_SYNC, DMA_BUF_SYNC_READ | (1 << 40)), errno.EINVAL,
     None),
    ("sync/no-direction", _ioctl(DMA_BUF_IOCTL_SYNC, 0), errno.EINVAL, None),
    ("sync/end-no-direction", _ioctl(DMA_BUF_IOCTL_SYNC, DMA_BUF_SYNC_END), errno.EINVAL, None),
    ("sync/interrupted", _sync_interrupted, ERESTARTSYS, None),
    # DMA_BUF_SET_NAME
    ("set_name/EFAULT", _ioctl(DMA_BUF_SET_NAME_B, None), errno.EFAULT, None),
    ("set_name/32-bytes", _ioctl(DMA_BUF_SET_NAME_B, "n" * 32), errno.EINVAL, None),
    # EXPORT_SYNC_FILE
    ("export_sync_file/EFAULT", _ioctl(DMA_BUF_IOCTL_EXPORT_SYNC_FILE, None), errno.EFAULT,
     None),
    ("export_sync_file/unknown-flag", _ioctl(DMA_BUF_IOCTL_EXPORT_SYNC_FILE,
                                             DmaBufExportSyncFileArg(DMA_BUF_SYNC_RW | 4)),
     errno.EINVAL, None),
    ("export_sync_file/no-direction", _ioctl(DMA_BUF_IOCTL_EXPORT_SYNC_FILE,
                                             DmaBufExportSyncFileArg(0)), errno.EINVAL, None),
    ("export_sync_file/EMFILE", _export_sync_full, errno.EMFILE, None),
    # IMPORT_SYNC_FILE
    ("import_sync_file/EFAULT", _ioctl(DMA_BUF_IOCTL_IMPORT_SYNC_FILE, None), errno.EFAULT,
     None),
    ("import_sync_file/unknown-flag", lambda e: _import_fd(e, DMA_BUF_SYNC_RW | 4, "ok"),
     errno.EINVAL, None),
    ("import_sync_file/no-direction", lambda e: _import_fd(e, 0, "ok"), errno.EINVAL, None),
    ("import_sync_file/not-a-sync-file", lambda e: _import_fd(e, DMA_BUF_SYNC_READ, "dmabuf"),
     errno.EINVAL, None),
    ("import_sync_file/closed-fd", lambda e: _import_fd(e, DMA_BUF_SYNC_READ, "closed"),
     errno.EINVAL, None),
    # unknown ioctl
    ("ioctl/unknown", _ioctl(0x40086204, 0), errno.ENOTTY, None),
    ("ioctl/sync_file-number", _ioctl(0xC0303E03, 0), errno.ENOTTY, None),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_errno(row: tuple[str, Callable[[Env], Any], int, str | None]) -> None:
    _, action, expected, warn = row
    with Machine(debug=True, name="errno") as m:
        env = Env(m, make_phys(4 * MiB, 4 * MiB))
        with pytest.raises(DmaBufError) as ei:
            action(env)
        assert ei.value.errno == expected, f"{ei.value}"
        assert str(ei.value)                       # a message that says what was wrong
        if warn is not None:
            assert [w[0] for w in m.warnings] == [warn]
        else:
            assert m.warnings == []


def test_every_spec_errno_is_covered() -> None:
    covered = {r[2] for r in ROWS}
    spec = {errno.EINVAL, errno.ENOENT, errno.EBADF, errno.EMFILE, errno.EBUSY, errno.ENODEV,
            errno.EOPNOTSUPP, errno.ENOMEM, errno.EINTR, ERESTARTSYS, errno.EOVERFLOW,
            errno.EFAULT, errno.ENOTTY, errno.ESPIPE}
    assert spec <= covered, spec - covered


def test_poll_without_resv_is_epollerr(machine: Machine) -> None:
    """dma_buf_poll: no dmabuf / no resv -> EPOLLERR (a value, not an errno)."""
    from dmabuf.buf.dma_buf_file import DmaBufFileOps
    from dmabuf.buf.file import EPOLLERR, EPOLLIN
    f = File(DmaBufFileOps(), None)
    assert f.poll(EPOLLIN) == EPOLLERR
