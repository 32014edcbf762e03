"""The page-bitmap pool (lib/genalloc.c as used by P2PDMA)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.pci import GenPool


def test_first_fit_newest_chunk_first_and_accounting() -> None:
    p = GenPool(12)
    p.add_owner(0x10000, 0x90000, 0x4000, owner="a")
    p.add_owner(0x20000, 0xA0000, 0x2000, owner="b")      # added last: searched first
    assert (p.size(), p.avail()) == (0x6000, 0x6000)
    assert p.alloc_owner(0x1000) == (0x20000, "b")
    assert p.alloc_owner(0x2000) == (0x10000, "a")        # b has one page left: skip
    assert p.alloc_owner(1) == (0x21000, "b")
    assert p.alloc_owner(0x3000) == (0, None)             # only 2 pages left, in a
    assert p.avail() == 0x2000
    assert p.virt_to_phys(0x10010) == 0x90010 and p.virt_to_phys(0x5000) == -1
    assert p.free_owner(0x10000, 0x2000) == "a"
    assert p.alloc_owner(0x3000) == (0x10000, "a")
    assert p.has_addr(0x10000, 0x4000) and not p.has_addr(0x10000, 0x5000)
    assert p.describe()["chunks"][1]["used_pages"] == 3


def test_misuse() -> None:
    p = GenPool(12)
    p.add_owner(0x10000, 0, 0x4000)
    with pytest.raises(DmaBufError):
        p.add_owner(0x11000, 0, 0x1000)                   # overlap
    with pytest.raises(DmaBufError):
        p.add_owner(0x30000, 0, 100)                      # not a granule multiple
    with pytest.raises(DmaBufError):
        p.alloc_owner(-1)
    assert p.alloc_owner(0) == (0, None)
    with pytest.raises(ContractViolation):
        p.free_owner(0x10000, 0x1000)                     # not allocated
    with pytest.raises(ContractViolation):
        p.free_owner(0x50000, 0x1000)                     # not in the pool
    a, _ = p.alloc_owner(0x1000)
    with pytest.raises(ContractViolation):
        p.free_owner(a + 1, 0x1000)                       # misaligned


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5 * 4096)), max_size=40))
def test_pool_matches_a_page_set_model(ops: list[tuple[bool, int]]) -> None:
    p = GenPool(12)
    p.add_owner(0x100000, 0x900000, 16 * 4096)
    live: dict[int, int] = {}
    used: set[int] = set()
    for alloc, size in ops:
        if alloc or not live:
            addr, _ = p.alloc_owner(size)
            n = -(-size // 4096)
            if addr == 0:
                # first fit failed: no run of n free pages exists
                free = [i not in used for i in range(16)]
                assert not any(all(free[i:i + n]) for i in range(17 - n))
                continue
            pages = set(range((addr - 0x100000) // 4096, (addr - 0x100000) // 4096 + n))
            assert not pages & used and max(pages) < 16
            first_free = next(i for i in range(16) if all(j not in used for j in
                                                            range(i, i + n)) and i + n <= 16)
            assert min(pages) == first_free
            used |= pages
            live[addr] = size
        else:
            addr, size = next(iter(live.items()))
            del live[addr]
            p.free_owner(addr, size)
            n = -(-size // 4096)
            used -= set(range((addr - 0x100000) // 4096, (addr - 0x100000) // 4096 + n))
        assert p.avail() == (16 - len(used)) * 4096
