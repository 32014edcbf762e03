"""Tests of dmabuf.mm.memfd: size, seals (fcntl semantics and errnos), page cache, pins."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm import OWNER_POISON, PAGE_SIZE, MemKind, PhysMemory
from dmabuf.mm.memfd import (
    F_SEAL_EXEC,
    F_SEAL_FUTURE_WRITE,
    F_SEAL_GROW,
    F_SEAL_SEAL,
    F_SEAL_SHRINK,
    F_SEAL_WRITE,
    MFD_ALLOW_SEALING,
    MFD_CLOEXEC,
    MFD_EXEC,
    MFD_HUGETLB,
    MFD_NOEXEC_SEAL,
    MemFd,
)

MiB = 1 << 20


@pytest.fixture
def pm() -> PhysMemory:
    p = PhysMemory()
    p.add_region("ram0", 16 * MiB, MemKind.RAM)
    return p


def _errno(fn: object) -> int:
    with pytest.raises(DmaBufError) as e:
        fn()  # type: ignore[operator]
    return int(e.value.errno)


def test_create_flags_and_name(pm: PhysMemory) -> None:
    assert MemFd(pm, "a", MFD_ALLOW_SEALING).get_seals() == 0
    assert MemFd(pm, "b", 0).get_seals() == F_SEAL_SEAL            # no sealing allowed
    assert MemFd(pm, "c", MFD_NOEXEC_SEAL).get_seals() == F_SEAL_EXEC
    assert MemFd(pm, "d", MFD_CLOEXEC | MFD_EXEC).get_seals() == F_SEAL_SEAL
    assert _errno(lambda: MemFd(pm, "x", 0x100)) == errno.EINVAL
    assert _errno(lambda: MemFd(pm, "x", MFD_EXEC | MFD_NOEXEC_SEAL)) == errno.EINVAL
    assert _errno(lambda: MemFd(pm, "x" * 250)) == errno.EINVAL
    assert _errno(lambda: MemFd(pm, "a\0b")) == errno.EINVAL
    assert _errno(lambda: MemFd(pm, "x", MFD_HUGETLB)) == errno.ENOSYS
    vram = PhysMemory()
    vram.add_region("v", MiB, MemKind.DEVICE)
    assert _errno(lambda: MemFd(vram, "x")) == errno.EINVAL
    with pytest.raises(TypeError):
        MemFd(pm, 3)  # type: ignore[arg-type]


def test_add_seals_fcntl_semantics(pm: PhysMemory) -> None:
    m = MemFd(pm, "s")
    m.add_seals(F_SEAL_SHRINK)
    m.add_seals(F_SEAL_GROW | F_SEAL_SHRINK)            # adding an existing seal is fine
    assert m.get_seals() == F_SEAL_SHRINK | F_SEAL_GROW
    assert _errno(lambda: m.add_seals(0x40)) == errno.EINVAL
    assert _errno(lambda: m.add_seals(F_SEAL_WRITE, writable_file=False)) == errno.EPERM
    m.add_seals(F_SEAL_SEAL)
    assert _errno(lambda: m.add_seals(F_SEAL_WRITE)) == errno.EPERM
    assert m.get_seals() == F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL
    no = MemFd(pm, "no", 0)
    assert _errno(lambda: no.add_seals(F_SEAL_SHRINK)) == errno.EPERM


def test_size_seals(pm: PhysMemory) -> None:
    m = MemFd(pm, "t")
    m.ftruncate(3 * PAGE_SIZE)
    assert m.size == 3 * PAGE_SIZE and m.resident_pages == 0    # holes until touched
    m.add_seals(F_SEAL_SHRINK)
    assert _errno(lambda: m.ftruncate(PAGE_SIZE)) == errno.EPERM
    m.ftruncate(4 * PAGE_SIZE)
    m.add_seals(F_SEAL_GROW)
    assert _errno(lambda: m.ftruncate(5 * PAGE_SIZE)) == errno.EPERM
    assert _errno(lambda: m.pwrite(b"x", 4 * PAGE_SIZE)) == errno.EPERM   # write past EOF
    m.ftruncate(4 * PAGE_SIZE)                          # same size: neither seal applies
    assert _errno(lambda: m.ftruncate(-1)) == errno.EINVAL


def test_write_seals(pm: PhysMemory) -> None:
    m = MemFd(pm, "w")
    m.pwrite(b"abc", 0)
    mp = m.mmap(0, PAGE_SIZE)
    assert _errno(lambda: m.add_seals(F_SEAL_WRITE)) == errno.EBUSY     # writable mapping
    mp.munmap()
    m.add_seals(F_SEAL_WRITE)
    assert _errno(lambda: m.pwrite(b"x", 0)) == errno.EPERM
    assert _errno(lambda: m.mmap(0, PAGE_SIZE)) == errno.EPERM
    ro = m.mmap(0, PAGE_SIZE, writable=False)
    assert ro.read(0, 3) == b"abc"
    assert _errno(lambda: ro.write(0, b"z")) == errno.EFAULT
    f = MemFd(pm, "fw")
    f.pwrite(b"qq", 0)
    keep = f.mmap(0, PAGE_SIZE)
    f.add_seals(F_SEAL_FUTURE_WRITE)                    # existing mappings stay writable
    keep.write(1, b"r")
    assert f.pread(2, 0) == b"qr"
    assert _errno(lambda: f.pwrite(b"x", 0)) == errno.EPERM
    assert _errno(lambda: f.mmap(0, PAGE_SIZE)) == errno.EPERM


def test_bytes_and_pages(pm: PhysMemory) -> None:
    m = MemFd(pm, "b")
    assert m.pwrite(b"hello", PAGE_SIZE - 2) == 5
    assert m.size == PAGE_SIZE + 3 and m.resident_pages == 2
    assert m.pread(10, PAGE_SIZE - 4) == b"\0\0hello"           # short read at EOF
    assert m.pread(10, 10 * PAGE_SIZE) == b""
    with m.mmap(0, 3 * PAGE_SIZE) as mp:
        assert mp.read(PAGE_SIZE - 2, 5) == b"hello"
        mp.write(0, b"Z")
        assert mp.read(PAGE_SIZE + 3, 1) == b"\0"                  # rest of the EOF page
        with pytest.raises(DmaBufError) as e:                     # the next page: SIGBUS
            mp.read(2 * PAGE_SIZE, 1)
        assert e.value.errno == errno.EFAULT
        with pytest.raises(DmaBufError):                          # outside the mapping
            mp.read(3 * PAGE_SIZE, 1)
    with pytest.raises(ContractViolation):
        mp.read(0, 1)
    assert m.pread(1, 0) == b"Z"
    m.ftruncate(PAGE_SIZE + 1)                                    # tail of the page zeroed
    m.ftruncate(PAGE_SIZE + 3)
    assert m.pread(3, PAGE_SIZE) == b"l\0\0"
    assert _errno(lambda: m.pread(-1, 0)) == errno.EINVAL
    assert _errno(lambda: m.mmap(1, 10)) == errno.EINVAL


def test_truncate_frees_and_poisons(pm: PhysMemory) -> None:
    m = MemFd(pm, "p")
    m.pwrite(b"x" * (4 * PAGE_SIZE), 0)
    pin = m.pin_pages(0, PAGE_SIZE)
    r = m._window_ranges(0, 4 * PAGE_SIZE)
    m.ftruncate(0)
    owners = pm.owners_of(r)
    assert owners[0] == m.owner                                   # pinned: kept alive
    assert (owners[1:] == OWNER_POISON).all()                     # the rest freed
    assert m.pinned_pages == 1
    pin.unpin()
    assert pm.owners_of(r)[0] == OWNER_POISON and m.pinned_pages == 0
    with pytest.raises(ContractViolation):
        pin.unpin()


def test_page_cache_lookup_and_get(pm: PhysMemory) -> None:
    m = MemFd(pm, "pc")
    m.ftruncate(4 * PAGE_SIZE)
    m.pwrite(b"B", 3 * PAGE_SIZE)
    looked = m.filemap_lookup([0, 3, 4, -1])
    assert looked[0] == 0 and looked[2] == 0 and looked[3] == 0 and looked[1] != 0
    assert m.resident_pages == 1                                  # lookup allocates nothing
    got = m.filemap_get(np.array([1, 3, 1, 9]))                   # holes filled, EOF -> 0
    assert got[1] == looked[1] and got[0] == got[2] != 0 and got[3] == 0
    assert m.resident_pages == 2                                  # only page 1 was a hole
    assert bytes(pm.view(int(got[0]), 4)) == b"\0" * 4              # zero filled
    assert pm.owners_of(np.array([(int(got[0]), PAGE_SIZE)],
                                 dtype=[("addr", "<u8"), ("len", "<u8")])).tolist() == [m.owner]
    assert m.filemap_get([]).size == 0
    calls: list[int] = []
    mp = m.mmap(0, 4 * PAGE_SIZE)
    mp.on_truncate = calls.append
    m.ftruncate(2 * PAGE_SIZE)                                    # drops pages 2..3
    m.ftruncate(3 * PAGE_SIZE)                                    # growing runs no hook
    assert calls == [2]
    m.release()
    assert calls == [2, 0]


def test_pins_and_release(pm: PhysMemory) -> None:
    m = MemFd(pm, "pin")
    m.ftruncate(8 * PAGE_SIZE)
    m.pwrite(b"A", 2 * PAGE_SIZE)
    pin = m.pin_pages(2 * PAGE_SIZE, 4 * PAGE_SIZE)
    assert pin.npages == 4 and m.resident_pages == 4
    data = pm.read(pin.ranges())
    assert data[0] == ord("A") and int(np.count_nonzero(data)) == 1   # zero-filled pages
    assert _errno(lambda: m.add_seals(F_SEAL_WRITE)) == errno.EBUSY   # pinned pages
    assert _errno(lambda: m.pin_pages(1, PAGE_SIZE)) == errno.EINVAL
    assert _errno(lambda: m.pin_pages(0, 0)) == errno.EINVAL
    assert _errno(lambda: m.pin_pages(6 * PAGE_SIZE, 4 * PAGE_SIZE)) == errno.EINVAL
    m.release()
    m.release()                                                       # idempotent
    assert (pm.owners_of(pin.ranges()) == m.owner).all()              # pins outlive the file
    with pytest.raises(ContractViolation):
        m.pwrite(b"x", 0)
    pin.unpin()
    assert (pm.owners_of(pin.ranges()) == OWNER_POISON).all()
    assert m.describe()["released"] is True
