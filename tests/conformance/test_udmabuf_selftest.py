"""Port of tools/testing/selftests/drivers/dma-buf/udmabuf.c, tests 1-5, against the model.

The selftest opens ``/dev/udmabuf``, makes a memfd sealed with ``F_SEAL_SHRINK`` and drives the
``UDMABUF_CREATE``/``UDMABUF_CREATE_LIST`` ioctls with raw ``struct udmabuf_create`` /
``udmabuf_create_list`` buffers — the port does the same through the model's device file, so
the ABI decoding is exercised too. One pytest test per numbered case; each builds the state the
C program has reached at that point (memfd of ``NUM_PAGES`` pages, sealed, truncated). Test 6
(2 MiB hugetlb pages) is not ported: the model has no hugetlbfs.

Kernel: tools/testing/selftests/drivers/dma-buf/udmabuf.c; spec ecosystem-and-users.md §2.3.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from dmabuf.buf.dma_buf import Vma
from dmabuf.buf.file import O_RDWR, current_process
from dmabuf.buf.udmabuf import (
    UDMABUF_CREATE,
    UDMABUF_CREATE_LIST,
    UDMABUF_FLAGS_CLOEXEC,
    memfd_add_seals,
    memfd_create,
    memfd_of,
    udmabuf_device,
)
from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm import PAGE_SIZE, MemKind, PhysMemory
from dmabuf.mm.memfd import F_SEAL_SHRINK, MFD_ALLOW_SEALING

NUM_PAGES = 4
NUM_ENTRIES = 4
MEMFD_SIZE = 1024


@dataclass
class Ctx:
    machine: Machine
    phys: PhysMemory
    devfd: int


@pytest.fixture
def ctx(machine: Machine) -> Iterator[Ctx]:
    phys = PhysMemory()
    phys.add_region("ram0", 64 << 20, MemKind.RAM)
    devfd = udmabuf_device().open(O_RDWR)
    yield Ctx(machine, phys, devfd)
    current_process().fds.close_all()


def _ioctl(fd: int, cmd: int, arg: bytes) -> int:
    ret: int = current_process().fds.lookup(fd).ioctl(cmd, bytearray(arg))
    return ret


def _create_memfd_with_seals(ctx: Ctx, size: int) -> int:
    """``create_memfd_with_seals(size, false)``."""
    memfd = memfd_create(ctx.phys, "udmabuf-test", MFD_ALLOW_SEALING)
    memfd_add_seals(memfd, F_SEAL_SHRINK)
    memfd_of(memfd).ftruncate(size)
    return memfd


def _udmabuf_create(devfd: int, memfd: int, offset: int, size: int, flags: int = 0) -> int:
    """``ioctl(devfd, UDMABUF_CREATE, &create)`` with a raw ``struct udmabuf_create``."""
    return _ioctl(devfd, UDMABUF_CREATE, struct.pack("<IIQQ", memfd, flags, offset, size))


def _create_udmabuf_list(devfd: int, memfd: int, memfd_size: int) -> int:
    """``create_udmabuf_list()``: NUM_ENTRIES items of NUM_PAGES pages, flag CLOEXEC."""
    raw = struct.pack("<II", UDMABUF_FLAGS_CLOEXEC, NUM_ENTRIES)
    for i in range(NUM_ENTRIES):
        raw += struct.pack("<IIQQ", memfd, 0, i * (memfd_size // NUM_ENTRIES),
                           PAGE_SIZE * NUM_PAGES)
    return _ioctl(devfd, UDMABUF_CREATE_LIST, raw)


def _write_to_memfd(mapping: object, size: int, chr_: bytes) -> None:
    """``write_to_memfd()``: one byte at the start of every page, through a shared mapping."""
    for i in range(size // PAGE_SIZE):
        mapping.write(i * PAGE_SIZE, chr_)  # type: ignore[attr-defined]


def _fails(fn: object) -> int:
    with pytest.raises(DmaBufError) as e:
        fn()  # type: ignore[operator]
    return int(e.value.errno)


def test_1_offset_not_page_aligned(ctx: Ctx) -> None:
    """udmabuf.c test-1: ``create.offset = getpagesize()/2`` must fail (EINVAL)."""
    size = PAGE_SIZE * NUM_PAGES
    memfd = _create_memfd_with_seals(ctx, size)
    assert _fails(lambda: _udmabuf_create(ctx.devfd, memfd, PAGE_SIZE // 2,
                                          PAGE_SIZE)) == errno.EINVAL


def test_2_size_not_page_multiple(ctx: Ctx) -> None:
    """udmabuf.c test-2: ``create.size = getpagesize()/2`` must fail (EINVAL)."""
    size = PAGE_SIZE * NUM_PAGES
    memfd = _create_memfd_with_seals(ctx, size)
    assert _fails(lambda: _udmabuf_create(ctx.devfd, memfd, 0, PAGE_SIZE // 2)) == errno.EINVAL


def test_3_not_a_memfd(ctx: Ctx) -> None:
    """udmabuf.c test-3: ``create.memfd = 0`` (stdin) must fail. In the model fd 0 is not open
    and the device file is not a memfd: both give EBADFD, as ``check_memfd_seals``/``fget``."""
    size = PAGE_SIZE * NUM_PAGES
    _create_memfd_with_seals(ctx, size)
    assert _fails(lambda: _udmabuf_create(ctx.devfd, 0, 0, size)) == errno.EBADFD
    assert _fails(lambda: _udmabuf_create(ctx.devfd, ctx.devfd, 0, size)) == errno.EBADFD


def test_4_sealed_memfd_works(ctx: Ctx) -> None:
    """udmabuf.c test-4: write 'a' at every page through a shared mmap of the memfd, then
    UDMABUF_CREATE of the whole memfd succeeds (and the buffer shows the 'a's)."""
    size = PAGE_SIZE * NUM_PAGES
    memfd = _create_memfd_with_seals(ctx, size)
    addr1 = memfd_of(memfd).mmap(0, size)
    _write_to_memfd(addr1, size, b"a")
    buf = _udmabuf_create(ctx.devfd, memfd, 0, size)
    assert buf >= 3
    vma = Vma(length=size)
    current_process().fds.lookup(buf).mmap(vma)
    assert [vma.view[i * PAGE_SIZE] for i in range(NUM_PAGES)] == [ord("a")] * NUM_PAGES
    addr1.munmap()
    current_process().fds.close(buf)
    current_process().fds.close(memfd)


def test_5_create_list_follows_memfd_pages(ctx: Ctx) -> None:
    """udmabuf.c test-5 ("migration of 4k size pages"): a 1024-page memfd filled with 'a',
    UDMABUF_CREATE_LIST of 4 entries x 4 pages (CLOEXEC), then the memfd is rewritten with 'b':
    compare_chunks() must find the new bytes through the udmabuf's mmap (zero copy)."""
    size = MEMFD_SIZE * PAGE_SIZE
    memfd = _create_memfd_with_seals(ctx, size)
    addr1 = memfd_of(memfd).mmap(0, size)
    _write_to_memfd(addr1, size, b"a")
    buf = _create_udmabuf_list(ctx.devfd, memfd, size)
    assert current_process().fds.is_cloexec(buf)
    vma = Vma(length=NUM_PAGES * NUM_ENTRIES * PAGE_SIZE)
    current_process().fds.lookup(buf).mmap(vma)
    addr2 = vma.view
    _write_to_memfd(addr1, size, b"b")
    # compare_chunks()
    k = 0
    for i in range(NUM_ENTRIES):
        off = i * (size // NUM_ENTRIES)
        for j in range(NUM_PAGES):
            char1 = addr1.read(off + j * PAGE_SIZE, 1)
            char2 = bytes([addr2[k * PAGE_SIZE]])
            assert char1 == char2 == b"b", (i, j)
            k += 1
    current_process().fds.close(buf)
    current_process().fds.close(memfd)
