"""mm/gup.py: pin_user_pages / get_user_pages, FOLL_PCI_P2PDMA, PFN maps, pins vs unmap."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm.gup import (
    FOLL_LONGTERM,
    FOLL_NOFAULT,
    FOLL_PCI_P2PDMA,
    FOLL_PIN,
    FOLL_WRITE,
    get_user_pages_fast,
    pin_user_pages,
    pin_user_pages_fast,
    put_user_pages,
    unpin_user_pages,
)
from dmabuf.mm.memremap import zero_page
from dmabuf.mm.phys import OWNER_POISON, PAGE_SIZE
from dmabuf.mm.vma import (
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
    PTE_ANON,
    PTE_PRESENT,
    PTE_WRITE,
    MmStruct,
    Vma,
    remap_pfn_range,
)

from .mm_helpers import FakeDevmem, FakeP2pmem, make_phys

R = [("addr", "<u8"), ("len", "<u8")]


@pytest.fixture
def mm(machine: Machine) -> MmStruct:
    return MmStruct(make_phys(machine), name="proc")


def test_pin_faults_in_and_returns_the_pages(mm: MmStruct) -> None:
    a = mm.mmap(4 * PAGE_SIZE)
    mm.write(a, b"x")
    pages = pin_user_pages_fast(mm, a + 5, 4, FOLL_WRITE)    # start aligned down
    pfn, pte = mm.lookup(a, 4)
    assert list(pages.paddrs) == [int(p) << 12 for p in pfn]
    assert np.all(pte == PTE_PRESENT | PTE_ANON | PTE_WRITE)
    assert mm.pinned_pages == 4 and not bool(pages.p2pdma.any())
    assert pages.ranges()["len"].sum() == 4 * PAGE_SIZE
    unpin_user_pages(pages)
    assert mm.pinned_pages == 0
    with pytest.raises(ContractViolation):
        unpin_user_pages(pages)


def test_read_pin_of_untouched_memory_returns_the_zero_page_unpinned(mm: MmStruct) -> None:
    a = mm.mmap(2 * PAGE_SIZE)
    pages = pin_user_pages_fast(mm, a, 2)
    z = zero_page(mm.phys)
    assert list(pages.paddrs) == [z, z] and mm.pinned_pages == 0
    unpin_user_pages(pages)
    w = pin_user_pages_fast(mm, a, 2, FOLL_WRITE)             # write: breaks COW first
    assert z not in [int(x) for x in w.paddrs] and mm.pinned_pages == 2
    unpin_user_pages(w)


def test_pinned_page_outlives_munmap_until_unpin(mm: MmStruct) -> None:
    a = mm.mmap(2 * PAGE_SIZE)
    mm.fill(a, 2 * PAGE_SIZE, 0x33)
    pages = pin_user_pages_fast(mm, a, 2, FOLL_WRITE)
    free0 = mm.region.free_pages
    mm.munmap(a, 2 * PAGE_SIZE)
    rng = pages.ranges()
    assert mm.region.free_pages == free0                      # still pinned: not freed
    assert np.all(mm.phys.owners_of(rng) == mm.anon_owner)
    assert bytes(mm.phys.read(rng)[:2]) == b"\x33\x33"
    unpin_user_pages(pages)
    assert mm.region.free_pages == free0 + 2
    assert np.all(mm.phys.owners_of(rng) == OWNER_POISON)


def test_get_user_pages_uses_put(mm: MmStruct) -> None:
    a = mm.mmap(PAGE_SIZE)
    g = get_user_pages_fast(mm, a, 1, FOLL_WRITE)
    with pytest.raises(ContractViolation):
        unpin_user_pages(g)
    put_user_pages(g)
    with pytest.raises(DmaBufError) as e:
        get_user_pages_fast(mm, a, 1, FOLL_PIN)                # internal flag from a caller
    assert e.value.errno == errno.EINVAL


def test_pin_needs_the_mmap_lock_for_the_locked_variant(mm: MmStruct) -> None:
    a = mm.mmap(PAGE_SIZE)
    with pytest.raises(ContractViolation):
        pin_user_pages(mm, a, 1)
    with mm.read_locked():
        p = pin_user_pages(mm, a, 1, FOLL_WRITE)
    unpin_user_pages(p)


def test_gup_errors(mm: MmStruct) -> None:
    a = mm.mmap(PAGE_SIZE, PROT_READ)
    with pytest.raises(DmaBufError) as e:
        pin_user_pages_fast(mm, a, 1, FOLL_WRITE)            # read-only VMA
    assert e.value.errno == errno.EFAULT
    with pytest.raises(DmaBufError) as e:
        pin_user_pages_fast(mm, a - PAGE_SIZE, 1)            # no VMA
    assert e.value.errno == errno.EFAULT
    with pytest.raises(DmaBufError) as e:
        pin_user_pages_fast(mm, a, 2)                        # runs past the VMA
    assert e.value.errno == errno.EFAULT
    b = mm.mmap(PAGE_SIZE)
    with pytest.raises(DmaBufError) as e:
        pin_user_pages_fast(mm, b, 1, FOLL_NOFAULT)          # not present, may not fault
    assert e.value.errno == errno.EFAULT
    assert mm.pinned_pages == 0


class BarFile:
    def __init__(self, base: int) -> None:
        self.base = base

    def mmap(self, vma: Vma) -> None:
        remap_pfn_range(vma, vma.start, self.base >> 12, vma.end - vma.start)


def test_raw_pfn_mapping_is_invisible_to_gup(mm: MmStruct) -> None:
    bar = mm.phys.region("bar")
    a = mm.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=BarFile(bar.base))
    for flags in (0, FOLL_PCI_P2PDMA, FOLL_WRITE | FOLL_PCI_P2PDMA):
        with pytest.raises(DmaBufError) as e:
            pin_user_pages_fast(mm, a, 1, flags)
        assert e.value.errno == errno.EFAULT


def test_p2p_pages_need_foll_pci_p2pdma(mm: MmStruct) -> None:
    p2p = FakeP2pmem(mm.phys)
    a = mm.mmap(2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=p2p)
    ram = mm.mmap(PAGE_SIZE)
    for flags in (0, FOLL_WRITE, FOLL_LONGTERM):
        with pytest.raises(DmaBufError) as e:
            pin_user_pages_fast(mm, a, 2, flags)
        assert e.value.errno == errno.EREMOTEIO
    with pytest.raises(DmaBufError) as e:
        pin_user_pages_fast(mm, a, 1, FOLL_PCI_P2PDMA | FOLL_LONGTERM)
    assert e.value.errno == errno.EOPNOTSUPP
    pages = pin_user_pages_fast(mm, a, 2, FOLL_WRITE | FOLL_PCI_P2PDMA)
    assert bool(pages.p2pdma.all()) and int(pages.paddrs[0]) == mm.phys.region("bar").base
    assert list(p2p.pgmap.page_refs(pages.paddrs)) == [2, 2]  # mapping + pin
    # RAM pages with the flag are fine too (the flag allows, it does not require, P2P)
    r = pin_user_pages_fast(mm, ram, 1, FOLL_WRITE | FOLL_PCI_P2PDMA)
    assert not bool(r.p2pdma.any())
    unpin_user_pages(r)
    # unmapped while pinned: the pages return to the provider at the last unpin
    mm.munmap(a, 2 * PAGE_SIZE)
    assert p2p.ops.freed == []
    unpin_user_pages(pages)
    assert sorted(p2p.ops.freed) == [int(x) for x in pages.paddrs]


def test_pin_of_device_private_memory_migrates_it_back(mm: MmStruct) -> None:
    dev = FakeDevmem(mm.phys)
    a = mm.mmap(2 * PAGE_SIZE)
    mm.fill(a, 2 * PAGE_SIZE, 0x77)
    dev.to_device(mm, a, 2)
    pages = pin_user_pages_fast(mm, a, 2, FOLL_WRITE)
    assert dev.faults == 2
    assert np.all(mm.phys.owners_of(pages.ranges()) == mm.anon_owner)
    assert bytes(mm.phys.read(pages.ranges())[:1]) == b"\x77"
    unpin_user_pages(pages)


def test_private_file_mapping_pin_for_write_copies(mm: MmStruct) -> None:
    from dmabuf.mm.memfd import MemFd
    f = MemFd(mm.phys, "f")
    f.pwrite(b"file", 0)
    a = mm.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, file=f)
    ro = pin_user_pages_fast(mm, a, 1)
    w = pin_user_pages_fast(mm, a, 1, FOLL_WRITE)
    assert int(ro.paddrs[0]) != int(w.paddrs[0])             # COW broke the sharing
    assert bytes(mm.phys.read(w.ranges())[:4]) == b"file"
    unpin_user_pages(ro)
    unpin_user_pages(w)
