"""dma_buf_fops: llseek, poll, ioctls (SYNC, SET_NAME, EXPORT/IMPORT_SYNC_FILE), fdinfo, bufinfo."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dmabuf_mocks import MiB, MockExporter, make_phys

from dmabuf.buf.device import DirectDev
from dmabuf.buf.dma_buf import dma_buf_get
from dmabuf.buf.dma_buf_file import (
    DMA_BUF_IOCTL_EXPORT_SYNC_FILE,
    DMA_BUF_IOCTL_IMPORT_SYNC_FILE,
    DMA_BUF_IOCTL_SYNC,
    DMA_BUF_SET_NAME,
    DMA_BUF_SET_NAME_A,
    DMA_BUF_SET_NAME_B,
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
    DMA_BUF_SYNC_WRITE,
    DmaBufExportSyncFileArg,
    DmaBufImportSyncFileArg,
    DmaBufSyncArg,
    dma_buf_bufinfo,
    dma_buf_dname,
    dma_buf_poll_wait,
    install_sync_file,
    sync_file_get_fence,
)
from dmabuf.buf.file import (
    EPOLLIN,
    EPOLLOUT,
    O_CLOEXEC,
    SEEK_CUR,
    SEEK_END,
    SEEK_SET,
    current_process,
    flush_delayed_fput,
)
from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps
from dmabuf.sync.dma_fence_array import dma_fence_array_create
from dmabuf.sync.dma_resv import DmaResv, DmaResvUsage
from dmabuf.sync.sw_sync import SwSyncTimeline
from dmabuf.sync.sync_file import SyncFile

FOPS = DmaFenceOps("test", "tl")


def fence(m: Machine, seq: int = 1) -> DmaFence:
    return DmaFence(FOPS, m.fence_context_alloc(1), seq, machine=m)


def add_fence(resv: DmaResv, f: DmaFence, usage: DmaResvUsage) -> None:
    resv.lock(None)
    try:
        resv.reserve_fences(1)
        resv.add_fence(f, usage)
    finally:
        resv.unlock()


@pytest.fixture
def phys():
    return make_phys(8 * MiB, 8 * MiB)


def test_ioctl_numbers_match_the_uapi_header() -> None:
    # values checked against include/uapi/linux/dma-buf.h on the project machines
    assert DMA_BUF_IOCTL_SYNC == 0x40086200
    assert DMA_BUF_SET_NAME_B == DMA_BUF_SET_NAME == 0x40086201
    assert DMA_BUF_SET_NAME_A == 0x40046201
    assert DMA_BUF_IOCTL_EXPORT_SYNC_FILE == 0xC0086202
    assert DMA_BUF_IOCTL_IMPORT_SYNC_FILE == 0x40086203
    assert (DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_RW) == (1, 2, 3)
    assert (DMA_BUF_SYNC_START, DMA_BUF_SYNC_END) == (0, 4)


def test_llseek(machine: Machine, phys) -> None:
    b = MockExporter(phys).export()
    assert b.file.llseek(0, SEEK_END) == MiB
    assert b.file.llseek(0, SEEK_SET) == 0
    for off, whence in ((0, SEEK_CUR), (-1, SEEK_END), (1, SEEK_SET), (4096, SEEK_END),
                        (0, 3), (0, 4)):
        with pytest.raises(DmaBufError) as ei:
            b.file.llseek(off, whence)
        assert ei.value.errno == errno.EINVAL, (off, whence)
    b.put()


# -- poll ----------------------------------------------------------------------------------------


def test_poll_idle_read_write_and_bookkeep(machine: Machine, phys) -> None:
    b = MockExporter(phys).export()
    f = b.file
    assert f.poll(EPOLLIN | EPOLLOUT) == EPOLLIN | EPOLLOUT
    assert f.poll(0) == 0
    assert f.count == 1                      # the immediate callbacks dropped their refs
    bk = fence(machine)
    add_fence(b.resv, bk, DmaResvUsage.BOOKKEEP)
    assert f.poll(EPOLLIN | EPOLLOUT) == EPOLLIN | EPOLLOUT       # BOOKKEEP ignored
    r = fence(machine)
    add_fence(b.resv, r, DmaResvUsage.READ)
    assert f.poll(EPOLLIN | EPOLLOUT) == EPOLLIN                   # writers wait for readers
    assert b.cb_out.active == EPOLLOUT and f.count == 2           # armed: holds a file ref
    assert f.poll(EPOLLOUT) == 0                                   # slot busy: still pending
    r.signal()
    assert b.cb_out.active == 0 and f.count == 1
    assert f.poll(EPOLLOUT) == EPOLLOUT
    w = fence(machine)
    add_fence(b.resv, w, DmaResvUsage.WRITE)
    assert f.poll(EPOLLIN | EPOLLOUT) == 0
    assert b.cb_in.active == EPOLLIN and b.cb_out.active == EPOLLOUT and f.count == 3
    w.signal()
    assert f.count == 1 and f.poll(EPOLLIN | EPOLLOUT) == EPOLLIN | EPOLLOUT
    bk.signal()
    for x in (bk, r, w):
        x.put()
    b.put()


def test_poll_wait_wakes_on_signal_and_times_out(machine: Machine, phys) -> None:
    b = MockExporter(phys).export()
    w = fence(machine)
    add_fence(b.resv, w, DmaResvUsage.WRITE)
    assert dma_buf_poll_wait(b.file, EPOLLIN, 0.01) == 0
    task = machine.sched.spawn(lambda: dma_buf_poll_wait(b.file, EPOLLIN, 30.0), name="poller")
    w.signal()
    assert task.join(10)
    assert task.result() == EPOLLIN
    w.put()
    b.put()


def test_poll_callback_holding_last_reference_defers_release(machine: Machine, phys) -> None:
    e = MockExporter(phys)
    b = e.export()
    w = fence(machine)
    add_fence(b.resv, w, DmaResvUsage.WRITE)
    assert b.file.poll(EPOLLIN) == 0
    b.put()                                   # the armed poll callback keeps the file alive
    assert not b.released and b.file.count == 1
    w.signal()                                # last fput from the fence callback: deferred
    flush_delayed_fput(machine)
    assert b.released and e.released == 1
    w.put()


# -- SYNC / SET_NAME ------------------------------------------------------------------------------


def test_sync_ioctl_calls_cpu_access(machine: Machine, phys) -> None:
    e = MockExporter(phys)
    b = e.export()
    b.file.ioctl(DMA_BUF_IOCTL_SYNC, DmaBufSyncArg(DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW))
    b.file.ioctl(DMA_BUF_IOCTL_SYNC, DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ)
    assert [c for c, _ in e.calls[-2:]] == ["begin_cpu_access", "end_cpu_access"]
    b.put()


def test_set_name_rules_fdinfo_and_dname(machine: Machine, phys) -> None:
    b = MockExporter(phys).export()
    fd = b.get().fd()
    assert dma_buf_dname(b) == "/dmabuf:"
    b.file.ioctl(DMA_BUF_SET_NAME_B, "x" * 31)
    assert b.name == "x" * 31
    with pytest.raises(DmaBufError) as ei:
        b.file.ioctl(DMA_BUF_SET_NAME_A, b"y" * 32)
    assert ei.value.errno == errno.EINVAL and b.name == "x" * 31
    b.set_name(b"cam0\0garbage-after-the-nul-is-never-read-by-the-kernel")
    assert b.name == "cam0" and dma_buf_dname(b) == "/dmabuf:cam0"
    b.attach(DirectDev("d", phys))            # no -EBUSY for attached buffers any more
    b.set_name("")
    assert b.name == ""
    b.set_name("frame")
    assert current_process().fds.fdinfo(fd) == (
        f"pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t{b.ino}\n"
        f"size:\t{MiB}\ncount:\t2\nexp_name:\tmock\nname:\tframe\n")
    for a in b.attachments:
        a.detach()
    current_process().fds.close(fd)
    b.put()


def test_fdinfo_count_is_refcount_minus_procfs(machine: Machine, phys) -> None:
    """I-B8: ``count`` is the file refcount at the time of reading (procfs' own ref excluded)."""
    b = MockExporter(phys).export()
    fd = b.fd(O_CLOEXEC)
    fds = current_process().fds
    for extra in range(3):
        text = fds.fdinfo(fd)
        assert f"count:\t{1 + extra}\n" in text and "flags:\t02000002\n" in text
        assert "\nname:" not in text
        b.get()
    for _ in range(3):
        b.put()
    fds.close(fd)


# -- sync files ------------------------------------------------------------------------------------


def test_export_sync_file_idle_is_the_signalled_stub(machine: Machine, phys) -> None:
    b = MockExporter(phys).export()
    arg = DmaBufExportSyncFileArg(DMA_BUF_SYNC_RW)
    b.file.ioctl(DMA_BUF_IOCTL_EXPORT_SYNC_FILE, arg)
    fds = current_process().fds
    assert fds.is_cloexec(arg.fd)
    sf: SyncFile = fds.lookup(arg.fd).private_data
    info = sf.info()
    assert (info.status, info.num_fences) == (1, 1)
    assert sf.fence.context == 0 and sf.fence.seqno == 0 and sf.fence.is_signaled()
    fds.close(arg.fd)
    assert sf.closed
    b.put()


def test_export_sync_file_snapshots_and_usage(machine: Machine, phys) -> None:
    b = MockExporter(phys).export()
    r1, r2 = fence(machine), fence(machine)
    add_fence(b.resv, r1, DmaResvUsage.READ)
    add_fence(b.resv, r2, DmaResvUsage.READ)
    fds = current_process().fds
    wfd = b.export_sync_file(DMA_BUF_SYNC_WRITE)     # a writer waits for both readers
    rfd = b.export_sync_file(DMA_BUF_SYNC_READ)      # a reader waits for no reader
    wsf: SyncFile = fds.lookup(wfd).private_data
    rsf: SyncFile = fds.lookup(rfd).private_data
    assert wsf.info().num_fences == 2 and wsf.poll() == 0
    assert rsf.fence.is_signaled() and rsf.poll() == EPOLLIN
    late = fence(machine)
    add_fence(b.resv, late, DmaResvUsage.WRITE)      # after the export: not in the snapshot
    r1.signal()
    assert wsf.poll() == 0
    r2.signal()
    assert wsf.poll() == EPOLLIN
    assert fds.lookup(wfd).poll(EPOLLIN) == EPOLLIN
    for fd in (wfd, rfd):
        fds.close(fd)
    late.signal()
    for f in (r1, r2, late):
        f.put()
    b.put()


def test_import_sync_file_unwraps_and_uses_flags(machine: Machine, phys) -> None:
    b = MockExporter(phys).export()
    tl = SwSyncTimeline("t", machine=machine)
    a, c = tl.create_fence(1), tl.create_fence(2)
    tl2 = SwSyncTimeline("t2", machine=machine)
    d = tl2.create_fence(1)
    arr = dma_fence_array_create([a, c, d], machine.fence_context_alloc(1), 1, False,
                                 machine=machine)     # takes over the three references
    sf = SyncFile(arr)
    arr.put()
    fd = install_sync_file(sf)
    b.file.ioctl(DMA_BUF_IOCTL_IMPORT_SYNC_FILE, DmaBufImportSyncFileArg(DMA_BUF_SYNC_READ, fd))
    b.resv.lock(None)
    entries = [(f.context, f.seqno, int(u)) for f, u in b.resv.for_each_fence(
        DmaResvUsage.BOOKKEEP)]
    b.resv.unlock()
    # the three leaves (one slot each; same-context later fence replaces the earlier one)
    assert sorted(entries) == sorted([(tl.context, 2, 2), (tl2.context, 1, 2)])
    assert b.file.poll(EPOLLIN | EPOLLOUT) == EPOLLIN               # readers only
    b.import_sync_file(DMA_BUF_SYNC_WRITE, fd)
    assert b.file.poll(EPOLLIN) == 0
    tl.inc(2)
    tl2.inc(1)
    assert dma_buf_poll_wait(b.file, EPOLLIN | EPOLLOUT, 5.0) == EPOLLIN | EPOLLOUT
    got = sync_file_get_fence(fd)
    assert got is not None and got.is_signaled()
    got.put()
    current_process().fds.close(fd)
    b.put()


def test_get_on_a_sync_file_fd_is_einval(machine: Machine, phys) -> None:
    tl = SwSyncTimeline("t", machine=machine)
    fd = install_sync_file(tl.create_sync_file(1))
    with pytest.raises(DmaBufError) as ei:
        dma_buf_get(fd)
    assert ei.value.errno == errno.EINVAL
    assert current_process().fds.lookup(fd).count == 1          # the fget was undone
    current_process().fds.close(fd)
    tl.inc(1)


# -- bufinfo -------------------------------------------------------------------------------------


def test_bufinfo_exact_text(machine: Machine, phys) -> None:
    e1, e2 = MockExporter(phys, size=MiB), MockExporter(phys, size=2 * MiB)
    b1 = e1.export(exp_name="system")
    b2 = e2.export(exp_name="udmabuf")
    b2.set_name("cam")
    w = fence(machine, 5)
    add_fence(b1.resv, w, DmaResvUsage.WRITE)
    b1.attach(DirectDev("0000:03:00.0", phys))
    b1.attach(DirectDev("0000:04:00.0", phys))
    text = dma_buf_bufinfo(machine)
    assert text == (
        "\nDma-buf Objects:\n"
        "size    \tflags   \tmode    \tcount   \texp_name\tino     \tname\n"
        f"02097152\t00000002\t00080007\t00000001\tudmabuf\t{b2.ino:08d}\tcam\n"
        "\tAttached Devices:\n"
        "Total 0 devices attached\n\n"
        f"01048576\t00000002\t00080007\t00000001\tsystem\t{b1.ino:08d}\t<none>\n"
        f"\twrite fence:{w.context}:5 tl test unsignalled\n"
        "\tAttached Devices:\n"
        "\t0000:04:00.0\n"
        "\t0000:03:00.0\n"
        "Total 2 devices attached\n\n"
        "\nTotal 2 objects, 3145728 bytes\n")
    w.signal()
    w.put()
    for a in b1.attachments:
        a.detach()
    b1.put()
    b2.put()
    assert dma_buf_bufinfo(machine).endswith("\nTotal 0 objects, 0 bytes\n")


# -- the fd table ---------------------------------------------------------------------------------


def test_fd_table_rules(machine: Machine, phys) -> None:
    from dmabuf.buf.file import ProcessTable
    p = machine.state(ProcessTable).spawn("app", max_fds=8)
    bs = [MockExporter(phys).export() for _ in range(3)]
    with p:
        fds = [b.fd() for b in bs]
        assert fds == [3, 4, 5] and p.fds.fds() == [3, 4, 5]
        p.fds.close(4)
        with pytest.raises(DmaBufError) as ei:
            p.fds.close(4)
        assert ei.value.errno == errno.EBADF
        assert bs[1].released                          # the fd held the only reference
        again = bs[0].get().fd(O_CLOEXEC)
        assert again == 4 and p.fds.is_cloexec(4)      # lowest free number is reused
        assert "flags:\t02000002\n" in p.fds.fdinfo(4)
        with pytest.raises(DmaBufError) as ei:
            p.fds.fdinfo(99)
        assert ei.value.errno == errno.EBADF
        f = p.fds.fget(3)
        assert f.count == 3
        f.put()
    p.exit()
    assert p.fds.fds() == [] and bs[0].released and bs[2].released


# -- the sync_file file's ioctls (raw structures) ------------------------------------------------


def _sf_fd(tl: SwSyncTimeline, value: int) -> int:
    return install_sync_file(tl.create_sync_file(value))


def test_sync_file_ioctl_numbers_match_the_uapi_header() -> None:
    from dmabuf.sync.sync_file import (
        SYNC_FENCE_INFO,
        SYNC_FILE_INFO,
        SYNC_IOC_FILE_INFO,
        SYNC_IOC_MERGE,
        SYNC_IOC_SET_DEADLINE,
        SYNC_MERGE_DATA,
        SYNC_SET_DEADLINE,
    )

    # include/uapi/linux/sync_file.h on x86-64
    assert (SYNC_IOC_MERGE, SYNC_IOC_FILE_INFO, SYNC_IOC_SET_DEADLINE) == (
        0xC0303E03, 0xC0383E04, 0x40103E05)
    assert (SYNC_MERGE_DATA.size, SYNC_FENCE_INFO.size, SYNC_FILE_INFO.size,
            SYNC_SET_DEADLINE.size) == (48, 80, 56, 16)


def test_sync_file_merge_ioctl(machine: Machine) -> None:
    from dmabuf.sync.sync_file import SYNC_IOC_MERGE, SYNC_MERGE_DATA

    fds = current_process().fds
    tl, tl2 = SwSyncTimeline("a", machine=machine), SwSyncTimeline("b", machine=machine)
    a, b = _sf_fd(tl, 1), _sf_fd(tl2, 1)
    f = fds.lookup(a)
    arg = bytearray(SYNC_MERGE_DATA.pack(b"x" * 40, b, -1, 0, 0))   # name cut at 31 bytes
    assert f.ioctl(SYNC_IOC_MERGE, arg) == 0
    name, fd2, new, flags, pad = SYNC_MERGE_DATA.unpack(arg)
    assert (name, fd2, flags, pad) == (b"x" * 31 + b"\0", b, 0, 0)
    assert fds.is_cloexec(new)
    merged = fds.lookup(new).private_data
    assert isinstance(merged, SyncFile)
    assert merged.get_name() == "x" * 31 and merged.info().num_fences == 2

    def code(cmd: int, buf: object, fd: int = a) -> int:
        with pytest.raises(DmaBufError) as ei:
            fds.lookup(fd).ioctl(cmd, buf)
        return int(ei.value.errno)

    before = fds.fds()
    assert code(SYNC_IOC_MERGE, bytearray(SYNC_MERGE_DATA.pack(b"", b, 0, 1, 0))) == \
        errno.EINVAL                                                   # flags
    assert code(SYNC_IOC_MERGE, bytearray(SYNC_MERGE_DATA.pack(b"", b, 0, 0, 1))) == \
        errno.EINVAL                                                   # pad
    dmabuf_fd = MockExporter(make_phys(8 * MiB, 8 * MiB)).export().fd(O_CLOEXEC)
    for bad in (dmabuf_fd, 999, -1):                                   # sync_file_fdget()
        assert code(SYNC_IOC_MERGE, bytearray(SYNC_MERGE_DATA.pack(b"", bad, 0, 0, 0))) == \
            errno.ENOENT
    assert code(SYNC_IOC_MERGE, bytearray(40)) == errno.EFAULT        # short
    assert code(SYNC_IOC_MERGE, None) == errno.EFAULT                 # NULL
    assert code(SYNC_IOC_MERGE, 5) == errno.EFAULT                    # not a user buffer
    assert code(SYNC_IOC_MERGE, SYNC_MERGE_DATA.pack(b"", b, 0, 0, 0)) == errno.EFAULT  # r/o
    assert code(0x40086200, bytearray(8)) == errno.ENOTTY             # DMA_BUF_IOCTL_SYNC
    assert code(SYNC_IOC_MERGE + 1, bytearray(64)) == errno.ENOTTY   # nr 4, wrong size
    assert fds.fds() == [*before, dmabuf_fd]                           # no fd leaked
    tl.inc(1)
    tl2.inc(1)
    for fd in (a, b, new, dmabuf_fd):
        fds.close(fd)


def test_sync_file_info_ioctl_two_passes(machine: Machine) -> None:
    import ctypes

    from dmabuf.sync.sync_file import SYNC_FENCE_INFO, SYNC_FILE_INFO, SYNC_IOC_FILE_INFO

    fds = current_process().fds
    tl, tl2 = SwSyncTimeline("tl-a", machine=machine), SwSyncTimeline("tl-b", machine=machine)
    sa, sb = tl.create_sync_file(1), tl2.create_sync_file(2)
    fd = install_sync_file(sa.merge(sb, "both"))
    sa.close()
    sb.close()
    f = fds.lookup(fd)
    head = bytearray(SYNC_FILE_INFO.size)                # pass 1: num_fences = 0
    f.ioctl(SYNC_IOC_FILE_INFO, head)
    name, status, flags, num, pad, ptr = SYNC_FILE_INFO.unpack(head)
    assert (name.rstrip(b"\0"), status, flags, num, pad, ptr) == (b"both", 0, 0, 2, 0, 0)
    tl.inc(1)
    out = ctypes.create_string_buffer(2 * SYNC_FENCE_INFO.size)
    arg = bytearray(SYNC_FILE_INFO.pack(b"", 0, 0, 2, 0, ctypes.addressof(out)))
    f.ioctl(SYNC_IOC_FILE_INFO, arg)                     # pass 2: room for both
    _n, status, _f, num, _p, _ptr = SYNC_FILE_INFO.unpack(arg)
    assert (status, num) == (0, 2)                       # folded: 1 then 0
    infos = [SYNC_FENCE_INFO.unpack_from(out.raw, i * SYNC_FENCE_INFO.size) for i in range(2)]
    got = sorted((o.rstrip(b"\0"), d.rstrip(b"\0"), st, fl, ts > 0)
                 for o, d, st, fl, ts in infos)
    assert got == [(b"tl-a", b"sw_sync", 1, 0, True), (b"tl-b", b"sw_sync", 0, 0, False)]

    def code(buf: object) -> int:
        with pytest.raises(DmaBufError) as ei:
            f.ioctl(SYNC_IOC_FILE_INFO, buf)
        return int(ei.value.errno)

    assert code(bytearray(SYNC_FILE_INFO.pack(b"", 0, 1, 0, 0, 0))) == errno.EINVAL   # flags
    assert code(bytearray(SYNC_FILE_INFO.pack(b"", 0, 0, 0, 1, 0))) == errno.EINVAL   # pad
    assert code(bytearray(SYNC_FILE_INFO.pack(b"", 0, 0, 1, 0, ctypes.addressof(out)))) == \
        errno.EINVAL                                     # room for 1 of 2 fences
    assert code(bytearray(SYNC_FILE_INFO.pack(b"", 0, 0, 2, 0, 0))) == errno.EFAULT   # NULL
    assert code(bytearray(20)) == errno.EFAULT
    assert code(bytes(SYNC_FILE_INFO.size)) == errno.EFAULT                  # read-only
    tl2.inc(2)
    fds.close(fd)


def test_sync_file_set_deadline_ioctl(machine: Machine) -> None:
    from dmabuf.sync.sync_file import SYNC_IOC_SET_DEADLINE, SYNC_SET_DEADLINE

    seen: list[float] = []

    class Ops(DmaFenceOps):
        def set_deadline(self, fence: DmaFence, deadline: float) -> None:
            seen.append(deadline)

    fence_ = DmaFence(Ops("drv", "tl"), machine.fence_context_alloc(1), 1, machine=machine)
    fd = install_sync_file(SyncFile(fence_))
    f = current_process().fds.lookup(fd)
    assert f.ioctl(SYNC_IOC_SET_DEADLINE, bytearray(SYNC_SET_DEADLINE.pack(2_500_000_000, 0))) \
        == 0
    with pytest.raises(DmaBufError) as ei:
        f.ioctl(SYNC_IOC_SET_DEADLINE, bytearray(SYNC_SET_DEADLINE.pack(1, 1)))
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as ei:
        f.ioctl(SYNC_IOC_SET_DEADLINE, bytearray(8))
    assert ei.value.errno == errno.EFAULT
    assert seen == [2.5]
    fence_.signal()
    fence_.put()
    current_process().fds.close(fd)
