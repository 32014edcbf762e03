"""Tests of dmabuf.buf.heaps: the dma-heap framework and the system heap."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator

import numpy as np
import pytest

from dmabuf.buf.device import DirectDev, DmaDataDirection
from dmabuf.buf.dma_buf import DmaBufAttachOps, Vma, dma_buf_get
from dmabuf.buf.dma_engine import DmaEngine
from dmabuf.buf.file import O_CLOEXEC, O_RDONLY, O_RDWR, O_WRONLY, current_process
from dmabuf.buf.heaps import (
    DMA_HEAP_IOCTL_ALLOC,
    NUM_HEAP_MINORS,
    DmaHeapOps,
    DmaHeapRegistry,
    dma_heap_add,
    dma_heap_find,
    system_heap_create,
)
from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.mm import OWNER_POISON, PAGE_SIZE, POISON_FREE, MemKind, PhysMemory

MiB = 1 << 20
KiB = 1 << 10


@pytest.fixture
def phys() -> PhysMemory:
    p = PhysMemory()
    p.add_region("ram0", 64 * MiB, MemKind.RAM)
    p.add_region("vram", 16 * MiB, MemKind.DEVICE)
    return p


@pytest.fixture
def heap_phys(machine: Machine, phys: PhysMemory) -> Iterator[PhysMemory]:
    system_heap_create(phys)
    yield phys
    current_process().fds.close_all()


def test_registry_add_find_and_errors(machine: Machine) -> None:
    ops = DmaHeapOps(allocate=lambda heap, n, f, hf: None)  # type: ignore[arg-type,return-value]
    h = dma_heap_add("test", ops, priv="data")
    assert dma_heap_find("test") is h and h.get_drvdata() == "data" and h.get_name() == "test"
    assert h.path == "/dev/dma_heap/test" and h.minor == 0
    assert dma_heap_find("nope") is None
    for name in ("", None):
        with pytest.raises(DmaBufError) as e:
            dma_heap_add(name, ops)  # type: ignore[arg-type]
        assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        dma_heap_add("bad", DmaHeapOps())
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        dma_heap_add("test", ops)
    assert e.value.errno == errno.EINVAL
    for i in range(1, NUM_HEAP_MINORS):
        dma_heap_add(f"h{i}", ops)
    with pytest.raises(DmaBufError) as e:
        dma_heap_add("one-too-many", ops)
    assert e.value.errno == errno.EBUSY
    assert len(machine.state(DmaHeapRegistry)) == NUM_HEAP_MINORS
    # Registries are per machine.
    with Machine(name="other"):
        assert dma_heap_find("test") is None


def test_system_heap_requires_ram(machine: Machine, phys: PhysMemory) -> None:
    with pytest.raises(DmaBufError):
        system_heap_create(phys, region="vram")
    empty = PhysMemory()
    with pytest.raises(DmaBufError):
        system_heap_create(empty)
    with pytest.raises(TypeError):
        system_heap_create(object())  # type: ignore[arg-type]


def test_alloc_blocks_orders_and_table(heap_phys: PhysMemory) -> None:
    heap = dma_heap_find("system")
    assert heap is not None
    buf = heap.allocate(3 * MiB + 64 * KiB + 3 * PAGE_SIZE + 1)   # rounds up to a page
    sh = buf.priv
    assert buf.size == sh.len == 3 * MiB + 64 * KiB + 4 * PAGE_SIZE
    assert buf.exp_name == "system"
    assert sh.blocks["len"].tolist() == [MiB] * 3 + [64 * KiB] + [PAGE_SIZE] * 4
    t = sh.sg_table
    assert t.orig_nents == 8 and not t.dma_mapped              # one entry per block, unmerged
    assert int(heap_phys.owners_of(sh.blocks).min()) == sh.owner
    assert int(np.count_nonzero(heap_phys.read(sh.blocks))) == 0
    buf.put()
    assert buf.released and sh.freed
    assert int(heap_phys.owners_of(sh.blocks).max()) == OWNER_POISON
    assert int(heap_phys.read(sh.blocks[:1])[0]) == POISON_FREE


def test_alloc_errnos(heap_phys: PhysMemory) -> None:
    heap = dma_heap_find("system")
    assert heap is not None
    for bad in (0, (1 << 64) - 1):                  # 0, and a length whose PAGE_ALIGN wraps
        with pytest.raises(DmaBufError) as e:
            heap.alloc(bad)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        heap.alloc(-1)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        heap.alloc(PAGE_SIZE, fd_flags=O_RDWR | 0o4000)   # O_NONBLOCK is not allowed
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        heap.alloc(PAGE_SIZE, heap_flags=1)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        heap.alloc(65 * MiB)
    assert e.value.errno == errno.ENOMEM
    with pytest.raises(TypeError):
        heap.alloc("4096")  # type: ignore[arg-type]
    assert current_process().fds.fds() == []


def test_alloc_fd_flags(heap_phys: PhysMemory) -> None:
    heap = dma_heap_find("system")
    assert heap is not None
    fds = current_process().fds
    fd = heap.alloc(PAGE_SIZE, fd_flags=O_RDWR | O_CLOEXEC)
    assert fds.is_cloexec(fd)
    assert fds.lookup(fd).f_mode & 0x3 == 0x3
    fd2 = heap.alloc(PAGE_SIZE, fd_flags=O_RDONLY)
    assert not fds.is_cloexec(fd2)
    assert fds.lookup(fd2).f_mode & 0x3 == 0x1
    fd3 = heap.alloc(PAGE_SIZE, fd_flags=O_WRONLY)
    assert fds.lookup(fd3).f_mode & 0x3 == 0x2


def test_enomem_then_recovers(heap_phys: PhysMemory) -> None:
    heap = dma_heap_find("system")
    assert heap is not None
    a = heap.allocate(60 * MiB)
    with pytest.raises(DmaBufError) as e:
        heap.allocate(8 * MiB)
    assert e.value.errno == errno.ENOMEM
    a.put()
    heap.allocate(8 * MiB).put()


def test_zeroed_between_allocations(heap_phys: PhysMemory) -> None:
    heap = dma_heap_find("system")
    assert heap is not None
    a = heap.allocate(2 * MiB)
    v = a.vmap_unlocked()
    v[0:len(v)] = 0x5A
    a.vunmap_unlocked(v)
    blocks = a.priv.blocks.copy()
    a.put()
    b = heap.allocate(2 * MiB)
    assert np.array_equal(b.priv.blocks, blocks)           # first fit: the very same pages
    assert int(np.count_nonzero(heap_phys.read(b.priv.blocks))) == 0
    b.put()


def test_attach_map_and_dma(heap_phys: PhysMemory) -> None:
    heap = dma_heap_find("system")
    assert heap is not None
    buf = heap.allocate(MiB + 8 * PAGE_SIZE)
    dev1 = DirectDev("nic0", heap_phys)
    dev2 = DirectDev("gpu0", heap_phys)
    a1 = buf.attach(dev1)
    a2 = buf.dynamic_attach(dev2, DmaBufAttachOps(invalidate_mappings=lambda a: None))
    assert dev1.map_calls == 0                               # no mapping at attach
    t1 = a1.map_unlocked(DmaDataDirection.BIDIRECTIONAL)
    t2 = a2.map_unlocked(DmaDataDirection.BIDIRECTIONAL)
    assert dev1.map_calls == 1 and dev2.map_calls == 1
    assert t1.is_dma_only                                    # CONFIG_DMABUF_DEBUG wrapper
    e1, e2 = DmaEngine(dev1), DmaEngine(dev2)
    payload = np.arange(buf.size, dtype=np.uint64).view(np.uint8)[:buf.size]
    e1.write(t1, payload, owner=buf.priv.owner)
    assert np.array_equal(e2.read(t2, owner=buf.priv.owner), payload)   # zero copy
    v = buf.vmap_unlocked()
    assert np.array_equal(v.read(100, 50), payload[100:150])
    buf.begin_cpu_access(DmaDataDirection.FROM_DEVICE)
    buf.end_cpu_access(DmaDataDirection.FROM_DEVICE)
    assert buf.priv.cpu_syncs == 4                           # 2 mapped attachments x 2
    buf.vunmap_unlocked(v)
    with pytest.raises(ContractViolation):
        v.read(0, 1)                                         # use after vunmap
    stale = t1.dma_ranges()
    a1.unmap_unlocked(t1, DmaDataDirection.BIDIRECTIONAL)
    a2.unmap_unlocked(t2, DmaDataDirection.BIDIRECTIONAL)
    assert dev1.live_mappings == 0 and dev2.live_mappings == 0
    a1.detach()
    a2.detach()
    owner = buf.priv.owner
    buf.put()
    lax = DmaEngine(DirectDev("late", heap_phys, check_mapped=False))
    with pytest.raises(IommuFault):                          # use after free
        lax.read(stale, owner=owner)


def test_vmap_refcount_and_mmap(heap_phys: PhysMemory) -> None:
    heap = dma_heap_find("system")
    assert heap is not None
    buf = heap.allocate(MiB)
    v1 = buf.vmap_unlocked()
    v2 = buf.vmap_unlocked()
    assert v1 is v2 and buf.priv.vmap_cnt == 1 and buf.vmapping_counter == 2
    v1.write(PAGE_SIZE * 3, b"hello")
    vma = Vma(length=2 * PAGE_SIZE)
    buf.mmap(vma, 2)
    assert vma.view.read(PAGE_SIZE, 5).tobytes() == b"hello"
    assert vma.view.array is not None                        # one contiguous piece: zero copy
    vma.view.array[PAGE_SIZE + 1] = ord("E")
    assert v1.read(PAGE_SIZE * 3, 5).tobytes() == b"hEllo"
    with pytest.raises(DmaBufError):
        vma.view.read(0, 2 * PAGE_SIZE + 1)
    buf.vunmap_unlocked(v1)
    buf.vunmap_unlocked(v2)
    assert buf.priv.vmap_cnt == 0
    with pytest.raises(DmaBufError):
        buf.mmap(Vma(length=2 * PAGE_SIZE), 255)             # past the end
    buf.put()


def test_detach_with_live_mapping_is_cleaned_up(machine: Machine,
                                                heap_phys: PhysMemory) -> None:
    heap = dma_heap_find("system")
    assert heap is not None
    buf = heap.allocate(PAGE_SIZE)
    dev = DirectDev("nic0", heap_phys)
    a = buf.attach(dev)
    a.map_unlocked(0)
    a.detach()
    assert any(rule == "dma_buf_detach" for rule, _ in machine.warnings)
    assert dev.live_mappings == 0
    buf.put()


def test_heap_file_ioctl(heap_phys: PhysMemory) -> None:
    heap = dma_heap_find("system")
    assert heap is not None
    fds = current_process().fds
    hfd = heap.open()
    f = fds.lookup(hfd)
    arg = bytearray(struct.pack("<QIIQ", 10000, 0, O_RDWR, 0))
    assert f.ioctl(DMA_HEAP_IOCTL_ALLOC, arg) == 0
    length, fd, fd_flags, heap_flags = struct.unpack("<QIIQ", arg)
    assert length == 10000 and fd >= 3 and fd_flags == O_RDWR and heap_flags == 0
    b = dma_buf_get(fd)
    assert b.size == 3 * PAGE_SIZE and b.file.count == 2
    b.put()
    with pytest.raises(DmaBufError) as e:                    # fd must be 0 on input
        f.ioctl(DMA_HEAP_IOCTL_ALLOC, bytearray(struct.pack("<QIIQ", 4096, 7, O_RDWR, 0)))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:                    # nr 1 does not exist
        f.ioctl(DMA_HEAP_IOCTL_ALLOC + 1, bytearray(24))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:                    # user buffer shorter than cmd
        f.ioctl(DMA_HEAP_IOCTL_ALLOC, bytearray(8))
    assert e.value.errno == errno.EFAULT
    with pytest.raises(DmaBufError) as e:
        f.ioctl(DMA_HEAP_IOCTL_ALLOC, bytes(24))            # read-only: cannot copy back
    assert e.value.errno == errno.EFAULT
