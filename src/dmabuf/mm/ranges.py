"""Range lists — the model's ``struct phys_vec[]`` / ``struct bio_vec[]`` / DMA segment list.

Everything in the model that names memory — physical extents of an allocation, the ``phys_vec``
list of an MMIO exporter, the DMA addresses of a mapped sg_table, the IOVA ranges of a device
mapping — is a numpy structured array of :data:`RANGE_DTYPE`: ``(addr, len)`` as two little-endian
``u64``, **16 bytes per range**, exactly ``struct phys_vec {phys_addr_t paddr; size_t len;}`` of
drivers/dma-buf/dma-buf-mapping.c (spec p2p §2.7). The order of a list is meaningful (it is the
byte order of the buffer it describes); the helpers never sort.

The helpers are vectorised: a list of a million 4 KiB ranges is coalesced, sliced or split with a
handful of numpy calls (``cumsum`` / ``searchsorted`` / ``repeat``), never a per-range Python loop.

Conventions shared by every helper:

* zero-length ranges are legal in input and dropped by :func:`coalesce`;
* a range whose ``addr + len`` overflows 64 bits is rejected with ``DmaBufError(EOVERFLOW)``
  (the check vfio's ``fill_phys_vec`` and ``check_add_overflow`` make);
* inputs are not modified; results are new arrays (or the input itself when nothing changes and
  the docstring says so).

Kernel: include/linux/types.h (struct phys_vec, was struct dma_buf_phys_vec), include/linux/bvec.h,
lib/scatterlist.c (segment merging), drivers/dma-buf/dma-buf-mapping.c.
"""

from __future__ import annotations

import bisect
import errno
from collections.abc import Iterable
from typing import Any

import numpy as np

from dmabuf.errors import DmaBufError

__all__ = [
    "RANGE_DTYPE",
    "as_ranges",
    "coalesce",
    "empty_ranges",
    "make_ranges",
    "range_starts",
    "ranges_aligned",
    "slice_ranges",
    "split_ranges",
    "total_len",
]

#: One range: ``addr`` (physical, bus or DMA address) and ``len`` in bytes; 16 bytes, like
#: ``struct phys_vec``.
RANGE_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u8")])

_U64_MAX = (1 << 64) - 1


def empty_ranges() -> np.ndarray:
    """Return an empty range list (``RANGE_DTYPE``, length 0).

    Model-only: constructor of the model's range-list type.
    """
    return np.zeros(0, dtype=RANGE_DTYPE)


def _to_u64(values: Any, what: str) -> np.ndarray:
    """Convert ints / an integer array to a 1-D uint64 array, rejecting negatives and non-ints."""
    if isinstance(values, np.ndarray):
        arr = values
    elif isinstance(values, (int, np.integer)):
        arr = np.asarray([int(values)])
    else:
        try:
            seq = list(values)
        except TypeError:
            raise TypeError(f"{what} must be an integer or a sequence of integers, "
                            f"not {type(values).__name__}") from None
        for v in seq:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{what} must contain integers, found {type(v).__name__} {v!r}")
        if any(int(v) < 0 for v in seq):
            raise DmaBufError(errno.EINVAL, f"{what} must not be negative")
        if any(int(v) > _U64_MAX for v in seq):
            raise DmaBufError(errno.EOVERFLOW, f"{what} does not fit in 64 bits")
        arr = np.asarray(seq, dtype=np.uint64) if seq else np.zeros(0, dtype=np.uint64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must be an integer array, not dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
        raise DmaBufError(errno.EINVAL, f"{what} must not be negative")
    return np.ascontiguousarray(arr, dtype=np.uint64).reshape(-1)


def _check_overflow(ranges: np.ndarray) -> None:
    if ranges.size <= 8:
        # Small lists (the common DMA case): plain ints beat a handful of numpy calls.
        for i, (a0, n0) in enumerate(ranges.tolist()):
            if n0 > _U64_MAX - a0:
                raise DmaBufError(errno.EOVERFLOW,
                                  f"range {i} (addr {a0:#x}, len {n0:#x}) wraps past 2^64")
        return
    a = ranges["addr"]
    n = ranges["len"]
    # addr + len overflows iff len > U64_MAX - addr (unsigned arithmetic, no wrap-around).
    if ranges.size and bool(np.any(n > (np.uint64(_U64_MAX) - a))):
        i = int(np.flatnonzero(n > (np.uint64(_U64_MAX) - a))[0])
        raise DmaBufError(errno.EOVERFLOW,
                          f"range {i} (addr {int(a[i]):#x}, len {int(n[i]):#x}) wraps past 2^64")


def make_ranges(addrs: Any, lens: Any) -> np.ndarray:
    """Build a range list from addresses and lengths — the model of filling a ``phys_vec[]``.

    Args:
        addrs: an integer or a sequence/array of non-negative integers (bytes).
        lens: same shape as ``addrs`` (a scalar is broadcast).

    Context:
        Pure; never blocks.

    Returns:
        A new ``RANGE_DTYPE`` array.

    Raises:
        TypeError: non-integer input.
        DmaBufError(EINVAL): negative values or shapes that do not match.
        DmaBufError(EOVERFLOW): a range wraps past 2^64.

    Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_dma_buf_fill_phys_vec() (overflow check).
    """
    a = _to_u64(addrs, "addrs")
    n = _to_u64(lens, "lens")
    if n.size == 1 and a.size != 1:
        n = np.full(a.size, n[0], dtype=np.uint64)
    if a.size != n.size:
        raise DmaBufError(errno.EINVAL,
                          f"make_ranges: {a.size} addresses but {n.size} lengths; pass one "
                          "length per address (or a single length to broadcast)")
    out = np.empty(a.size, dtype=RANGE_DTYPE)
    out["addr"] = a
    out["len"] = n
    _check_overflow(out)
    return out


def as_ranges(obj: Any) -> np.ndarray:
    """Validate and return ``obj`` as a range list (no copy when it already is one).

    Accepts a ``RANGE_DTYPE`` array (returned as is, flattened), or an iterable of
    ``(addr, len)`` pairs.

    Raises:
        TypeError: not a range list.
        DmaBufError(EINVAL / EOVERFLOW): negative values, wrap past 2^64.

    Model-only: validation of the model's range-list type.
    """
    return _as_ranges(obj, True)


def _as_ranges(obj: Any, check: bool) -> np.ndarray:
    """:func:`as_ranges`; ``check=False`` skips the wrap check of an array (the caller does it)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype != RANGE_DTYPE:
            if obj.dtype.names == ("addr", "len"):
                obj = obj.astype(RANGE_DTYPE)
            else:
                raise TypeError(f"expected a RANGE_DTYPE array (addr <u8, len <u8), got dtype "
                                f"{obj.dtype}; build one with dmabuf.mm.make_ranges()")
        obj = obj.reshape(-1)
        if check:
            _check_overflow(obj)
        return obj
    if isinstance(obj, (str, bytes, int)) or not isinstance(obj, Iterable):
        raise TypeError(f"expected a range list, got {type(obj).__name__}")
    pairs = list(obj)
    if not pairs:
        return empty_ranges()
    try:
        addrs = [p[0] for p in pairs]
        lens = [p[1] for p in pairs]
        if any(len(p) != 2 for p in pairs):
            raise TypeError
    except (TypeError, IndexError):
        raise TypeError("expected (addr, len) pairs in the range list") from None
    return make_ranges(addrs, lens)


def total_len(ranges: np.ndarray) -> int:
    """Total number of bytes described by a range list (Σ len).

    Model-only: arithmetic on the model's range-list type.
    """
    r = as_ranges(ranges)
    if r.size == 0:
        return 0
    return int(r["len"].sum(dtype=np.uint64))


def range_starts(ranges: np.ndarray) -> np.ndarray:
    """Byte offset of each range inside the concatenated buffer (exclusive prefix sum, uint64).

    Model-only: arithmetic on the model's range-list type.
    """
    r = as_ranges(ranges)
    starts = np.zeros(r.size, dtype=np.uint64)
    if r.size > 1:
        np.cumsum(r["len"][:-1], out=starts[1:])
    return starts


def _copy_ranges(r: np.ndarray) -> np.ndarray:
    """A new range list equal to ``r`` (a plain memcpy: structured ``copy()`` is field-wise)."""
    if r.flags.c_contiguous:
        return r.view(np.uint64).copy().view(RANGE_DTYPE).reshape(-1)
    out = np.empty(r.size, dtype=RANGE_DTYPE)
    out["addr"] = r["addr"]
    out["len"] = r["len"]
    return out


#: Ranges compared per block when looking for run boundaries: the temporaries stay small
#: (128 KiB), so they are recycled by malloc instead of being fresh, page-faulting mappings.
_BLOCK = 16384


def _breaks(a: np.ndarray, n: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Indices ``i`` where range ``i + 1`` does not continue range ``i`` (sorted, int64).

    Also the wrap check of :func:`as_ranges` (``addr + len`` past 2^64 raises ``EOVERFLOW``,
    naming the range of ``r``), done on the same block-sized temporaries.
    """
    count = a.size
    last = int(a[-1]) + int(n[-1])
    if last > _U64_MAX:
        _check_overflow(r)
    parts: list[np.ndarray] = []
    for s in range(0, count - 1, _BLOCK):
        e = min(s + _BLOCK, count - 1)
        blk_a = a[s:e]
        ends = blk_a + n[s:e]                       # wraps silently: checked just below
        if bool(np.less(ends, blk_a).any()):
            _check_overflow(r)
        nb = np.flatnonzero(a[s + 1:e + 1] != ends)
        if nb.size:
            parts.append(nb + s if s else nb)
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _pack(a: np.ndarray, n: np.ndarray, brk: np.ndarray) -> np.ndarray:
    """Merge contiguous ranges into pieces; a piece ends after each index in ``brk`` (sorted)
    and at the end. A piece is ``[addr of its first range, end of its last range)``."""
    # Fancy indexing, not np.take: take() first copies a strided source (a field of the
    # structured list) into a contiguous temporary as large as the whole list.
    out = np.empty((brk.size + 1, 2), dtype=np.uint64)
    out[0, 0] = a[0]
    out[1:, 0] = a[brk + 1]
    out[:-1, 1] = a[brk]
    out[:-1, 1] += n[brk]
    out[-1, 1] = a[-1] + n[-1]
    np.subtract(out[:, 1], out[:, 0], out=out[:, 1])
    return out.view(RANGE_DTYPE).reshape(-1)


def _coalesce_loop(al: list[int], nl: list[int], max_len: int) -> np.ndarray:
    """Reference greedy merge with a cap, on plain ints (small lists, and sums beyond 2^63)."""
    out_a: list[int] = []
    out_n: list[int] = []
    cur_a, cur_n = al[0], nl[0]
    for a0, n0 in zip(al[1:], nl[1:], strict=True):
        if a0 == cur_a + cur_n and cur_n + n0 <= max_len:
            cur_n += n0
        else:
            out_a.append(cur_a)
            out_n.append(cur_n)
            cur_a, cur_n = a0, n0
    out_a.append(cur_a)
    out_n.append(cur_n)
    out = np.empty(len(out_a), dtype=RANGE_DTYPE)
    out["addr"] = out_a
    out["len"] = out_n
    return out


def _greedy_starts(n: np.ndarray, lo: np.ndarray, hi: np.ndarray, max_len: int) -> np.ndarray:
    """Greedy piece starts in the contiguous runs ``n[lo[k]:hi[k]]`` (lengths vary; sum < 2^63).

    A piece starting at range ``i`` takes ranges while their sum stays <= ``max_len`` (at least
    one), so it ends before the last ``j`` with ``E[j] - E[i] <= max_len`` over the prefix sums
    ``E`` of the runs laid end to end. The walk is sequential in the number of *pieces*, never of
    ranges: each step is one ``bisect`` over a memoryview of ``E`` when pieces are few, else one
    vectorised ``searchsorted`` gives every range its successor first.
    """
    cnt = hi - lo
    m = int(cnt.sum())
    off = np.zeros(cnt.size, dtype=np.int64)
    np.cumsum(cnt[:-1], out=off[1:])
    if lo.size == 1:
        pos = None
        ln = n[int(lo[0]):int(hi[0])]
    else:
        pos = np.repeat(lo - off, cnt) + np.arange(m, dtype=np.int64)
        ln = n[pos]
    e = np.zeros(m + 1, dtype=np.uint64)
    np.cumsum(ln, out=e[1:])
    total = int(e[-1])
    out: list[int] = []
    app = out.append
    run_ends = (off + cnt).tolist()
    if (2 * (total // max_len) + 2 * lo.size) * 8 < m:
        ev = e.data
        for i, end in zip(off.tolist(), run_ends, strict=True):
            while i < end:
                app(i)
                j = bisect.bisect_right(ev, ev[i] + max_len, i + 1, end + 1) - 1
                i = j if j > i else i + 1
    else:
        nxt = np.searchsorted(e, e[:m] + np.uint64(max_len), side="right").astype(np.int64) - 1
        np.maximum(nxt, np.arange(1, m + 1, dtype=np.int64), out=nxt)
        nv = nxt.data
        for i, end in zip(off.tolist(), run_ends, strict=True):
            while i < end:
                app(i)
                i = min(nv[i], end)
    idx = np.array(out, dtype=np.int64)
    return idx + lo[0] if pos is None else pos[idx]


def coalesce(ranges: np.ndarray, *, max_len: int | None = None) -> np.ndarray:
    """Merge physically adjacent neighbours and drop empty ranges — like ``sg`` segment merging.

    Two consecutive ranges ``a``, ``b`` merge when ``a.addr + a.len == b.addr``. Order is
    preserved (never sorted): the list still describes the same bytes in the same order.

    Vectorised: run boundaries come from one compare of ``addr[1:]`` with ``(addr + len)[:-1]``
    and a merged range is ``[addr of its first range, end of its last range)`` (no per-range
    sums). With ``max_len`` the merge is the greedy one of ``sg_alloc_append_table_from_pages``:
    runs that fit are kept whole; a run of equal-length ranges (page lists) is cut
    arithmetically; other long runs walk their prefix sums piece by piece (never range by range).
    262,144 ranges coalesce in about 1 ms.

    Args:
        ranges: the range list.
        max_len: optional cap on the length of a merged range (``dma_get_max_seg_size()``);
            ranges already longer than it are left as they are (use :func:`split_ranges`).

    Context:
        Pure; never blocks.

    Returns:
        A new, possibly shorter, range list (always a new array).

    Raises:
        TypeError: not a range list, or ``max_len`` not an integer.
        DmaBufError(EINVAL): ``max_len <= 0``. DmaBufError(EOVERFLOW): a range wraps past 2^64.

    Kernel: lib/scatterlist.c, sg_alloc_append_table_from_pages() (merging of contiguous pages).
    """
    r = _as_ranges(ranges, False)
    cap: int | None = None
    if max_len is not None:
        if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)):
            raise TypeError("coalesce: max_len must be an integer")
        cap = int(max_len)
        if cap <= 0:
            raise DmaBufError(errno.EINVAL, "coalesce: max_len must be positive")
        if cap > _U64_MAX:
            cap = None                              # no run of ranges can be that long
    if r.size <= 1:
        _check_overflow(r)
        return _copy_ranges(r) if r.size == 1 and int(r["len"][0]) else empty_ranges()
    a = r["addr"]
    n = r["len"]
    whole = True
    if not bool(n.all()):
        keep = n != 0
        a = a[keep]
        n = n[keep]
        whole = False
        if a.size == 0:
            return empty_ranges()
    count = a.size
    if cap is not None and count <= 32:
        _check_overflow(r)
        return _coalesce_loop(a.tolist(), n.tolist(), cap)
    brk = _breaks(a, n, r)
    if brk.size == count - 1:                       # nothing merges
        if whole:
            return _copy_ranges(r)
        out = np.empty(count, dtype=RANGE_DTYPE)
        out["addr"] = a
        out["len"] = n
        return out
    if cap is None:
        return _pack(a, n, brk)
    first = np.empty(brk.size + 1, dtype=np.int64)
    first[0] = 0
    np.add(brk, 1, out=first[1:])
    run_end = np.empty_like(first)
    run_end[:-1] = first[1:]
    run_end[-1] = count
    run_len = a[run_end - 1] + n[run_end - 1] - a[first]
    long_runs = np.flatnonzero(run_len > np.uint64(cap))
    if long_runs.size == 0:
        return _pack(a, n, brk)
    # Piece starts: every run start, plus the cuts inside the runs longer than the cap.
    starts = np.zeros(count, dtype=bool)
    starts[first] = True
    lf = first[long_runs]
    le = run_end[long_runs]
    bounds = np.empty(2 * lf.size, dtype=np.int64)
    bounds[0::2] = lf
    bounds[1::2] = le
    if bounds[-1] == count:
        bounds = bounds[:-1]
    lo = np.minimum.reduceat(n, bounds)[0::2]
    hi = np.maximum.reduceat(n, bounds)[0::2]
    same = lo == hi
    if bool(same.any()):
        f, c, seg = lf[same], (le - lf)[same], lo[same]
        per = np.maximum(np.uint64(cap) // seg, np.uint64(1)).astype(np.int64)
        pieces = -(-c // per)
        base = np.zeros(pieces.size, dtype=np.int64)
        np.cumsum(pieces[:-1], out=base[1:])
        k = np.arange(int(pieces.sum()), dtype=np.int64) - np.repeat(base, pieces)
        starts[np.repeat(f, pieces) + k * np.repeat(per, pieces)] = True
    if not bool(same.all()):
        other = ~same
        if sum(run_len[long_runs][other].tolist()) >= 1 << 63:
            # the prefix sums could wrap: the reference loop on Python ints (never in practice)
            return _coalesce_loop(a.tolist(), n.tolist(), cap)
        starts[_greedy_starts(n, lf[other], le[other], cap)] = True
    return _pack(a, n, np.flatnonzero(starts[1:]))


def slice_ranges(ranges: np.ndarray, offset: int, length: int) -> np.ndarray:
    """Return the sub-list describing bytes ``[offset, offset + length)`` of the buffer.

    Args:
        ranges: the range list (its concatenation is the buffer).
        offset: byte offset into the buffer.
        length: number of bytes (0 gives an empty list).

    Returns:
        A new range list; the first and last range are trimmed.

    Raises:
        DmaBufError(EINVAL): negative offset/length or ``offset + length`` beyond the total.

    Kernel: the walk ``ib_umem_dmabuf_map_pages`` / ``iopt`` do over an sg_table to a
    page offset; expressed here with ``searchsorted``.
    """
    r = as_ranges(ranges)
    if isinstance(offset, bool) or isinstance(length, bool) or not isinstance(
            offset, (int, np.integer)) or not isinstance(length, (int, np.integer)):
        raise TypeError("slice_ranges: offset and length must be integers")
    offset = int(offset)
    length = int(length)
    if offset < 0 or length < 0:
        raise DmaBufError(errno.EINVAL, "slice_ranges: offset and length must be >= 0")
    r = r[r["len"] != 0]
    total = int(r["len"].sum(dtype=np.uint64)) if r.size else 0
    if offset + length > total:
        raise DmaBufError(errno.EINVAL,
                          f"slice_ranges: [{offset:#x}, {offset + length:#x}) is beyond the "
                          f"{total:#x} bytes the list describes")
    if length == 0:
        return empty_ranges()
    starts = range_starts(r)
    ends = starts + r["len"]
    first = int(np.searchsorted(ends, np.uint64(offset), side="right"))
    last = int(np.searchsorted(starts, np.uint64(offset + length), side="left"))
    out = r[first:last].copy()
    head = offset - int(starts[first])
    out["addr"][0] += np.uint64(head)
    out["len"][0] -= np.uint64(head)
    tail = int(ends[last - 1]) - (offset + length)
    out["len"][-1] -= np.uint64(tail)
    return out


def split_ranges(ranges: np.ndarray, max_len: int) -> np.ndarray:
    """Split every range into pieces of at most ``max_len`` bytes (vectorised).

    The dma-buf MMIO helper splits at ``UINT_MAX`` (``sg->length`` is 32-bit), amdgpu at 2 GiB,
    habanalabs at ``dma_get_max_seg_size()``.

    Raises:
        DmaBufError(EINVAL): ``max_len <= 0``.

    Kernel: drivers/dma-buf/dma-buf-mapping.c, fill_sg_entry().
    """
    r = as_ranges(ranges)
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)):
        raise TypeError("split_ranges: max_len must be an integer")
    if max_len <= 0:
        raise DmaBufError(errno.EINVAL, "split_ranges: max_len must be positive")
    r = r[r["len"] != 0]
    m = np.uint64(max_len)
    counts = (r["len"] + (m - np.uint64(1))) // m
    if r.size == 0 or bool(np.all(counts == 1)):
        return r.copy()
    owner = np.repeat(np.arange(r.size), counts.astype(np.int64))
    first_chunk = np.zeros(r.size, dtype=np.int64)
    if r.size > 1:
        np.cumsum(counts[:-1].astype(np.int64), out=first_chunk[1:])
    k = (np.arange(owner.size, dtype=np.int64) - first_chunk[owner]).astype(np.uint64)
    out = np.empty(owner.size, dtype=RANGE_DTYPE)
    out["addr"] = r["addr"][owner] + k * m
    out["len"] = np.minimum(m, r["len"][owner] - k * m)
    return out


def ranges_aligned(ranges: np.ndarray, align: int) -> bool:
    """True when every ``addr`` and ``len`` is a multiple of ``align`` (a power of two).

    Raises: DmaBufError(EINVAL) when ``align`` is not a power of two.
    Model-only: alignment check on the model's range-list type.
    """
    r = as_ranges(ranges)
    if align <= 0 or align & (align - 1):
        raise DmaBufError(errno.EINVAL, f"alignment {align} is not a power of two")
    mask = np.uint64(align - 1)
    return not bool(np.any((r["addr"] | r["len"]) & mask))
