"""Tests of dmabuf.buf.phys_vec: PhysVec, the model's struct phys_vec[] (16 bytes per range)."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.buf.phys_vec import PHYS_VEC_BYTES, PhysVec
from dmabuf.errors import DmaBufError
from dmabuf.mm import PAGE_SIZE, RANGE_DTYPE, make_ranges

U64_MAX = (1 << 64) - 1


def test_build_and_views() -> None:
    pv = PhysVec([(0x1000, 0x2000), (0x8000, 0x1000)])
    assert len(pv) == pv.nr_ranges == 2
    assert pv.total_len == pv.size == 0x3000
    assert pv.nbytes == 2 * PHYS_VEC_BYTES == 32
    assert pv.kernel_nbytes() == 32 and pv.kernel_nbytes(phys_list=True) == 40
    assert pv.ranges.dtype == RANGE_DTYPE
    assert list(pv) == [(0x1000, 0x2000), (0x8000, 0x1000)]
    assert pv[1] == (0x8000, 0x1000)
    assert pv[1:] == PhysVec([(0x8000, 0x1000)])
    assert pv.starts().tolist() == [0, 0x2000]
    assert pv.addrs.tolist() == [0x1000, 0x8000] and pv.lens.tolist() == [0x2000, 0x1000]
    assert PhysVec().total_len == 0 and len(PhysVec()) == 0
    assert PhysVec.contiguous(0x4000, 0x1000) == PhysVec([(0x4000, 0x1000)])
    assert PhysVec.from_addrs([0, 0x1000], 0x1000).total_len == 0x2000


def test_immutable_and_does_not_alias_caller() -> None:
    arr = make_ranges([0x1000], [0x1000])
    pv = PhysVec(arr)
    arr["len"][0] = 5
    assert pv[0] == (0x1000, 0x1000)
    assert arr.flags.writeable
    with pytest.raises(ValueError):
        pv.ranges["len"][0] = 7
    assert PhysVec(pv) == pv


def test_rejects_bad_input() -> None:
    with pytest.raises(TypeError):
        PhysVec("nope")
    with pytest.raises(DmaBufError) as e:
        PhysVec([(-1, 10)])
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        PhysVec([(U64_MAX - 5, 10)])
    assert e.value.errno == errno.EOVERFLOW
    with pytest.raises(TypeError):
        PhysVec([(1, 2)])[1.5]  # type: ignore[index]


def test_coalesce() -> None:
    pv = PhysVec([(0x1000, 0x1000), (0x2000, 0x1000), (0x0, 0), (0x5000, 0x1000),
                  (0x6000, 0x2000)])
    c = pv.coalesce()
    assert list(c) == [(0x1000, 0x2000), (0x5000, 0x3000)]
    capped = pv.coalesce(max_len=0x2000)
    assert list(capped) == [(0x1000, 0x2000), (0x5000, 0x1000), (0x6000, 0x2000)]
    # Order is meaningful: a later lower address is never merged backwards.
    assert len(PhysVec([(0x2000, 0x1000), (0x1000, 0x1000)]).coalesce()) == 2


def test_slice() -> None:
    pv = PhysVec([(0x10000, 0x3000), (0x40000, 0x1000), (0x80000, 0x2000)])
    s = pv.slice(0x2800, 0x2000)
    assert list(s) == [(0x12800, 0x800), (0x40000, 0x1000), (0x80000, 0x800)]
    assert s.total_len == 0x2000
    assert pv.slice(0, pv.total_len) == pv
    assert pv.slice(0x3000, 0) == PhysVec()
    with pytest.raises(DmaBufError) as e:
        pv.slice(0x5000, 0x2000)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError):
        pv.slice(-1, 1)


def test_split_at_uint_max() -> None:
    uint_max = (1 << 32) - 1
    pv = PhysVec([(1 << 40, 10 << 30)])
    s = pv.split(uint_max)
    assert s.lens.tolist() == [uint_max, uint_max, (10 << 30) - 2 * uint_max]
    assert s.addrs.tolist() == [1 << 40, (1 << 40) + uint_max, (1 << 40) + 2 * uint_max]
    with pytest.raises(DmaBufError):
        pv.split(0)


def test_iter_chunks() -> None:
    pv = PhysVec.from_addrs(np.arange(10, dtype=np.uint64) * 0x10000, PAGE_SIZE)
    chunks = list(pv.iter_chunks(4))
    assert [c.size for c in chunks] == [4, 4, 2]
    assert int(chunks[2]["addr"][1]) == 9 * 0x10000
    with pytest.raises(DmaBufError):
        next(pv.iter_chunks(0))


def test_aligned_and_offset() -> None:
    pv = PhysVec([(0x1000, 0x2000)])
    assert pv.aligned() and not PhysVec([(0x1010, 0x2000)]).aligned()
    assert list(pv.offset_by(0x100000)) == [(0x101000, 0x2000)]
    assert list(pv.offset_by(-0x1000)) == [(0, 0x2000)]
    with pytest.raises(DmaBufError) as e:
        pv.offset_by(-0x2000)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        pv.offset_by(U64_MAX - 0x2000)
    assert e.value.errno == errno.EOVERFLOW


def test_large_list_is_vectorised() -> None:
    n = 262144                                    # 1 GiB of 4 KiB pages
    pv = PhysVec.from_addrs(np.arange(n, dtype=np.uint64) * 2 * PAGE_SIZE, PAGE_SIZE)
    assert pv.nbytes == 16 * n
    assert pv.total_len == n * PAGE_SIZE
    sl = pv.slice(PAGE_SIZE * 1000 + 5, PAGE_SIZE * 5000)
    assert sl.total_len == PAGE_SIZE * 5000 and sl[0] == (2 * PAGE_SIZE * 1000 + 5, PAGE_SIZE - 5)
    assert hash(pv) == hash(PhysVec(pv.ranges))


def test_describe_and_repr() -> None:
    pv = PhysVec([(0x1000, 0x1000)] * 5)
    d = pv.describe()
    assert d == {"nr_ranges": 5, "total_len": 0x5000, "nbytes": 80, "first": (0x1000, 0x1000),
                 "last": (0x1000, 0x1000)}
    assert "2 more" in repr(pv)
    assert PhysVec().describe()["first"] is None


def test_phys_view_gathers_and_scatters() -> None:
    from dmabuf.buf.phys_vec import PhysView
    from dmabuf.errors import ContractViolation
    from dmabuf.mm import MemKind, PhysMemory

    pm = PhysMemory()
    ram = pm.add_region("ram0", 1 << 20, MemKind.RAM)
    pages = PhysVec([(ram.base + 5 * PAGE_SIZE, PAGE_SIZE), (ram.base, PAGE_SIZE)])
    v = PhysView(pm, pages)
    assert len(v) == 2 * PAGE_SIZE and v.array is None          # two pieces: no flat view
    v[PAGE_SIZE - 2:PAGE_SIZE + 2] = b"ABCD"                     # straddles the two pages
    assert pm.read(make_ranges([ram.base + 6 * PAGE_SIZE - 2], [2])).tobytes() == b"AB"
    assert pm.read(make_ranges([ram.base], [2])).tobytes() == b"CD"
    assert v[PAGE_SIZE - 1] == ord("B") and v[-2 * PAGE_SIZE + PAGE_SIZE] == ord("C")
    assert v[PAGE_SIZE - 2:PAGE_SIZE + 2].tobytes() == b"ABCD"
    v[0:4] = 7
    assert v.read(0, 4).tolist() == [7, 7, 7, 7]
    v.fill(1, 8, 8)
    assert v.read(7, 10).tolist() == [0] + [1] * 8 + [0]
    with pytest.raises(DmaBufError) as e:
        v.read(2 * PAGE_SIZE - 1, 2)
    assert e.value.errno == errno.EFAULT
    with pytest.raises(ValueError):
        v[0:4] = b"toolong"
    with pytest.raises(ValueError):
        v[0:8:2]
    one = PhysView(pm, PhysVec([(ram.base, 2 * PAGE_SIZE)]), writable=False)
    arr = one.array
    assert arr is not None and arr.size == 2 * PAGE_SIZE and not arr.flags.writeable
    assert arr[2] == 0 and one.tobytes()[:2] == b"CD"
    with pytest.raises(DmaBufError):
        one.write(0, b"x")
    v.close()
    with pytest.raises(ContractViolation):
        v.read(0, 1)
