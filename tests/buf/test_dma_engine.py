"""Tests of dmabuf.buf.dma_engine: real bytes through a mapping, faults on stale mappings."""

from __future__ import annotations

import errno
import zlib

import numpy as np
import pytest

from dmabuf.buf.device import DirectDev, DmaDataDirection
from dmabuf.buf.dma_engine import DmaEngine, DmaFaultLog
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.buf.sg_table import SgTable
from dmabuf.errors import DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.mm import PAGE_SIZE, POISON_FREE, MemKind, PhysMemory, make_ranges

MiB = 1 << 20


@pytest.fixture
def pm() -> PhysMemory:
    p = PhysMemory()
    p.add_region("ram0", 64 * MiB, MemKind.RAM)
    p.add_region("bar0", 4 * MiB, MemKind.MMIO)
    return p


def _scattered(pm: PhysMemory, nbytes: int, label: str, seed: int) -> tuple[int, np.ndarray]:
    own = pm.new_owner(label)
    return own, pm.alloc("ram0", nbytes, own, max_extent=PAGE_SIZE,
                         rng=np.random.default_rng(seed))


def test_write_then_read_through_scattered_mapping(pm: PhysMemory) -> None:
    own, pages = _scattered(pm, 64 * PAGE_SIZE, "buf", 1)
    dev = DirectDev("nic0", pm)
    t = SgTable.from_pages(pages).map(dev, DmaDataDirection.BIDIRECTIONAL)
    eng = DmaEngine(dev)
    data = np.random.default_rng(2).integers(0, 256, 64 * PAGE_SIZE, dtype=np.uint8)
    eng.write(t, data, owner=own)
    assert np.array_equal(eng.read(t, owner=own), data)
    # The bytes really are in the scattered physical pages, in table order.
    assert np.array_equal(pm.read(pages), data)
    assert eng.checksum(t, owner=own) == zlib.crc32(data.tobytes())
    # Windows.
    assert np.array_equal(eng.read(t, owner=own, offset=5000, length=9000), data[5000:14000])
    eng.write(t, b"\x01\x02\x03", owner=own, offset=PAGE_SIZE - 1)
    assert pm.read(pages[:2])[PAGE_SIZE - 1:PAGE_SIZE + 2].tolist() == [1, 2, 3]
    assert eng.transfers == 5 and eng.bytes_written == 64 * PAGE_SIZE + 3
    assert eng.faults == []


def test_copy_between_mappings(pm: PhysMemory) -> None:
    oa, a = _scattered(pm, 32 * PAGE_SIZE, "src", 3)
    ob, b = _scattered(pm, 32 * PAGE_SIZE, "dst", 4)
    dev = DirectDev("gpu0", pm)
    ta = SgTable.from_pages(a).map(dev, 0)
    tb = SgTable.from_pages(b, max_segment=3 * PAGE_SIZE).map(dev, 0)
    src = np.arange(32 * PAGE_SIZE, dtype=np.uint32).view(np.uint8)[:32 * PAGE_SIZE]
    pm.write(a, src)
    eng = DmaEngine(dev)
    eng.copy(tb, ta, dst_owner=ob, src_owner=oa)
    assert np.array_equal(pm.read(b), src)
    eng.copy(tb, ta, dst_owner=ob, src_owner=oa, length=100, dst_offset=7, src_offset=PAGE_SIZE)
    assert np.array_equal(pm.read(b)[7:107], src[PAGE_SIZE:PAGE_SIZE + 100])


def test_use_after_free_faults_and_is_logged(machine: Machine, pm: PhysMemory) -> None:
    own, pages = _scattered(pm, 8 * PAGE_SIZE, "victim", 5)
    dev = DirectDev("nic0", pm)
    t = SgTable.from_pages(pages).map(dev, 0)
    eng = DmaEngine(dev)
    eng.write(t, b"x" * 100, owner=own)
    pm.free(pages)                                  # the exporter freed the buffer
    before = pm.read(pages).copy()
    with machine.trace.record("dma_fault") as events, pytest.raises(IommuFault) as e:
        eng.write(t, b"y" * 100, owner=own)
    assert e.value.errno == errno.EFAULT and e.value.device == "nic0"
    assert "poisoned" in str(e.value) and "not by 'victim'" in str(e.value)
    assert np.array_equal(pm.read(pages), before)    # a faulting DMA moves no bytes
    assert int(before[0]) == POISON_FREE
    assert len(eng.faults) == 1 and eng.faults[0].op == "write" and eng.faults[0].owner == own
    assert machine.state(DmaFaultLog).records == eng.faults
    assert [ev.name for ev in events] == ["dma_fault"]
    assert eng.transfers == 1


def test_use_after_unmap_faults(pm: PhysMemory) -> None:
    own, pages = _scattered(pm, 4 * PAGE_SIZE, "buf", 6)
    dev = DirectDev("nic0", pm)
    t = SgTable.from_pages(pages).map(dev, 0)
    stale = t.dma_ranges()
    t.unmap()
    eng = DmaEngine(dev)
    with pytest.raises(IommuFault, match="not mapped"):
        eng.read(stale, owner=own)
    assert len(eng.faults) == 1 and eng.faults[0].dma_addr == int(stale["addr"][0])


def test_page_handed_to_another_buffer_faults(pm: PhysMemory) -> None:
    own, pages = _scattered(pm, 4 * PAGE_SIZE, "a", 7)
    dev = DirectDev("nic0", pm, check_mapped=False)
    thief = pm.new_owner("b")
    pm.set_owner(pages[2:3], thief)                     # migration target took one page
    with pytest.raises(IommuFault, match="owned by 'b'"):
        DmaEngine(dev).read(PhysVec(pages), owner=own)
    assert DmaEngine(dev).read(PhysVec(pages[:2]), owner=own).size == 2 * PAGE_SIZE


def test_owner_tuple_and_unchecked(pm: PhysMemory) -> None:
    oa, a = _scattered(pm, 2 * PAGE_SIZE, "a", 8)
    ob, b = _scattered(pm, 2 * PAGE_SIZE, "b", 9)
    dev = DirectDev("nic0", pm, check_mapped=False)
    both = PhysVec(np.concatenate([a, b]))
    eng = DmaEngine(dev)
    assert eng.read(both, owner=(oa, ob)).size == 4 * PAGE_SIZE
    with pytest.raises(IommuFault):
        eng.read(both, owner=(oa,))
    with pytest.raises(IommuFault):
        eng.read(both, owner=oa)
    bar = pm.region("bar0")
    eng.write(PhysVec([(bar.base, 16)]), b"0123456789abcdef", owner=None)   # a BAR: no owner
    assert pm.read(make_ranges([bar.base], [16])).tobytes() == b"0123456789abcdef"


def test_direction_permissions(pm: PhysMemory) -> None:
    own, pages = _scattered(pm, 2 * PAGE_SIZE, "buf", 10)
    dev = DirectDev("nic0", pm)
    to_dev = SgTable.from_pages(pages).map(dev, DmaDataDirection.TO_DEVICE)
    eng = DmaEngine(dev)
    eng.read(to_dev, owner=own)
    with pytest.raises(IommuFault, match="permission"):
        eng.write(to_dev, b"z", owner=own)
    # The CONFIG_DMABUF_DEBUG wrapper keeps the direction of the table it hides.
    with pytest.raises(IommuFault, match="permission"):
        eng.fill(to_dev.wrap_dma_only(), 0, owner=own)
    to_dev.unmap()
    from_dev = SgTable.from_pages(pages).map(dev, DmaDataDirection.FROM_DEVICE)
    with pytest.raises(IommuFault):
        eng.read(from_dev, owner=own)
    assert len(eng.faults) == 3
    lax = DmaEngine(dev, check_direction=False)
    assert lax.read(from_dev, owner=own).size == 2 * PAGE_SIZE


def test_dma_only_table_needs_no_pages(pm: PhysMemory) -> None:
    bar = pm.region("bar0")
    dev = DirectDev("nic0", pm)
    t = SgTable.map_phys_vec(dev, PhysVec([(bar.base, MiB)]), DmaDataDirection.BIDIRECTIONAL)
    eng = DmaEngine(dev)
    eng.fill(t, 0xAB, owner=None, offset=10, length=20)
    assert pm.read(make_ranges([bar.base], [32])).tolist() == [0] * 10 + [0xAB] * 20 + [0, 0]


def test_bad_arguments(pm: PhysMemory) -> None:
    own, pages = _scattered(pm, PAGE_SIZE, "buf", 11)
    dev = DirectDev("nic0", pm, check_mapped=False)
    eng = DmaEngine(dev)
    with pytest.raises(TypeError):
        eng.read([1, 2], owner=own)  # type: ignore[arg-type]
    with pytest.raises(DmaBufError) as e:
        eng.read(PhysVec(pages), owner=own, offset=PAGE_SIZE, length=1)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError):
        eng.write(PhysVec(pages), b"x" * (PAGE_SIZE + 1), owner=own)
    with pytest.raises(TypeError):
        DmaEngine(object())  # type: ignore[arg-type]
    assert eng.describe() == {"device": "nic0", "transfers": 0, "bytes_read": 0,
                              "bytes_written": 0, "faults": 0}
