"""Tests of dmabuf.mm.ranges: the 16-byte (addr, len) range lists."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dmabuf.errors import DmaBufError
from dmabuf.mm import (
    RANGE_DTYPE,
    as_ranges,
    coalesce,
    make_ranges,
    range_starts,
    ranges_aligned,
    slice_ranges,
    split_ranges,
    total_len,
)


def test_dtype_is_16_bytes() -> None:
    assert RANGE_DTYPE.itemsize == 16
    assert RANGE_DTYPE.names == ("addr", "len")


def test_make_ranges_and_total() -> None:
    r = make_ranges([0x1000, 0x5000], [0x1000, 0x2000])
    assert r.dtype == RANGE_DTYPE
    assert r["addr"].tolist() == [0x1000, 0x5000]
    assert total_len(r) == 0x3000
    assert range_starts(r).tolist() == [0, 0x1000]
    # scalar length broadcast
    assert make_ranges([0, 0x2000, 0x4000], 0x1000)["len"].tolist() == [0x1000] * 3


def test_make_ranges_bad_input() -> None:
    with pytest.raises(DmaBufError) as e:
        make_ranges([1, 2], [1, 2, 3])
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        make_ranges([-1], [1])
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        make_ranges([(1 << 64) - 16], [32])
    assert e.value.errno == errno.EOVERFLOW
    with pytest.raises(TypeError):
        make_ranges(["a"], [1])
    with pytest.raises(TypeError):
        make_ranges([1.5], [1])
    with pytest.raises(TypeError):
        as_ranges(np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError):
        as_ranges("abc")


def test_as_ranges_pairs() -> None:
    r = as_ranges([(0x1000, 16), (0x2000, 32)])
    assert r["len"].tolist() == [16, 32]
    assert as_ranges([]).size == 0


def test_coalesce_merges_adjacent_keeps_order() -> None:
    r = make_ranges([0x1000, 0x2000, 0x9000, 0x3000, 0x4000, 0x4000],
                    [0x1000, 0x1000, 0x1000, 0x1000, 0, 0x1000])
    c = coalesce(r)
    assert c["addr"].tolist() == [0x1000, 0x9000, 0x3000]
    assert c["len"].tolist() == [0x2000, 0x1000, 0x2000]


def test_coalesce_max_len() -> None:
    r = make_ranges([0, 0x1000, 0x2000, 0x3000], 0x1000)
    c = coalesce(r, max_len=0x2000)
    assert c["addr"].tolist() == [0, 0x2000]
    assert c["len"].tolist() == [0x2000, 0x2000]


def test_slice_ranges() -> None:
    r = make_ranges([0x10000, 0x30000, 0x50000], [0x1000, 0x2000, 0x1000])
    s = slice_ranges(r, 0x800, 0x2000)
    assert s["addr"].tolist() == [0x10800, 0x30000]
    assert s["len"].tolist() == [0x800, 0x1800]
    assert slice_ranges(r, 0, 0).size == 0
    s = slice_ranges(r, 0x3000, 0x1000)
    assert s["addr"].tolist() == [0x50000]
    with pytest.raises(DmaBufError) as e:
        slice_ranges(r, 0x3000, 0x1001)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError):
        slice_ranges(r, -1, 1)


def test_split_ranges() -> None:
    r = make_ranges([0, 0x100000], [0x2800, 0x1000])
    s = split_ranges(r, 0x1000)
    assert s["addr"].tolist() == [0, 0x1000, 0x2000, 0x100000]
    assert s["len"].tolist() == [0x1000, 0x1000, 0x800, 0x1000]
    with pytest.raises(DmaBufError):
        split_ranges(r, 0)


def test_ranges_aligned() -> None:
    assert ranges_aligned(make_ranges([0x1000], [0x2000]), 4096)
    assert not ranges_aligned(make_ranges([0x1000], [0x200]), 4096)
    with pytest.raises(DmaBufError):
        ranges_aligned(make_ranges([0], [1]), 3)


_lists = st.lists(st.tuples(st.integers(0, 64), st.integers(0, 8)), min_size=0, max_size=40)


def _bytes_of(r: np.ndarray) -> list[int]:
    out: list[int] = []
    for a, n in r.tolist():
        out.extend(range(a, a + n))
    return out


@given(_lists)
def test_coalesce_and_split_preserve_bytes(pairs: list[tuple[int, int]]) -> None:
    r = make_ranges([a * 16 for a, _ in pairs], [n * 16 for _, n in pairs]) if pairs \
        else as_ranges([])
    assert _bytes_of(coalesce(r)) == _bytes_of(r)
    assert _bytes_of(split_ranges(r, 48)) == _bytes_of(r)
    assert all(n <= 48 for n in split_ranges(r, 48)["len"].tolist())


@given(_lists, st.integers(0, 400), st.integers(0, 400))
def test_slice_matches_bytes(pairs: list[tuple[int, int]], off: int, ln: int) -> None:
    r = make_ranges([a * 16 for a, _ in pairs], [n * 16 for _, n in pairs]) if pairs \
        else as_ranges([])
    ref = _bytes_of(r)
    if off + ln > len(ref):
        with pytest.raises(DmaBufError):
            slice_ranges(r, off, ln)
    else:
        assert _bytes_of(slice_ranges(r, off, ln)) == ref[off:off + ln]


def _greedy_reference(r: np.ndarray, max_len: int | None) -> list[tuple[int, int]]:
    """The merge rule spelled out on plain ints: join a contiguous neighbour while the merged
    length stays <= max_len; empty ranges are dropped."""
    out: list[list[int]] = []
    for a, n in r.tolist():
        if n == 0:
            continue
        if out and out[-1][0] + out[-1][1] == a and (max_len is None
                                                     or out[-1][1] + n <= max_len):
            out[-1][1] += n
        else:
            out.append([a, n])
    return [(a, n) for a, n in out]


_runs = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.booleans()),
                 min_size=0, max_size=60)


@given(_runs, st.sampled_from([None, 16, 32, 48, 80, 1000]), st.booleans())
def test_coalesce_matches_the_greedy_rule(spec: list[tuple[int, int, bool]],
                                          max_len: int | None, uniform: bool) -> None:
    addrs, lens, pos = [], [], 0
    for gap, n, jump in spec:
        n = 2 if uniform else n
        pos += gap * 16 + (4096 if jump else 0)
        addrs.append(pos)
        lens.append(n * 16)
        pos += n * 16
    r = make_ranges(addrs, lens) if spec else as_ranges([])
    assert coalesce(r, max_len=max_len).tolist() == _greedy_reference(r, max_len)


@pytest.mark.parametrize("count", [8191, 8193, 70_001])
@pytest.mark.parametrize("max_len", [None, 3 * 4096, 1 << 16, 1 << 21])
def test_coalesce_large_lists_match_the_greedy_rule(count: int, max_len: int | None) -> None:
    rng = np.random.default_rng(count)
    n = rng.integers(0, 4, count).astype(np.uint64) * 4096
    if max_len == 1 << 16:
        n[:] = 4096                                   # page lists: the arithmetic path
    gaps = (rng.random(count) < 0.01).astype(np.uint64) * 8192
    a = np.concatenate(([0], np.cumsum(n)[:-1])).astype(np.uint64) + np.cumsum(gaps)
    r = make_ranges(a, n)
    got = coalesce(r, max_len=max_len)
    assert got.tolist() == _greedy_reference(r, max_len)
    assert got.dtype == RANGE_DTYPE and total_len(got) == total_len(r)


def test_coalesce_checks_wraps_and_max_len() -> None:
    for count in (1, 5, 20, 9000):
        r = make_ranges(np.arange(count, dtype=np.uint64) * 16, 16)
        r["addr"][count // 2] = (1 << 64) - 8
        for cap in (None, 64):
            with pytest.raises(DmaBufError) as e:
                coalesce(r, max_len=cap)
            assert e.value.errno == errno.EOVERFLOW and f"range {count // 2} " in str(e.value)
    r = make_ranges([0, 16], [16, 16])
    with pytest.raises(DmaBufError) as e:
        coalesce(r, max_len=0)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        coalesce(r, max_len=1.5)  # type: ignore[arg-type]
    out = coalesce(r)
    assert out.tolist() == [(0, 32)] and not np.shares_memory(out, r)
    nothing = make_ranges([0, 64], [16, 16])
    assert not np.shares_memory(coalesce(nothing), nothing)      # always a new array
    assert coalesce(make_ranges([5, 6], [0, 0])).size == 0
    many = make_ranges(np.arange(100, dtype=np.uint64) * 16, 16)
    assert coalesce(many, max_len=1 << 70).tolist() == [(0, 1600)]     # beyond 64 bits: no cap
