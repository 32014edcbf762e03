"""The two-step IOVA API: try_alloc / link / sync / unlink / destroy / free, alignment rules."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.dma import (
    DmaDataDirection,
    DmaIovaState,
    dma_iova_destroy,
    dma_iova_free,
    dma_iova_link,
    dma_iova_size,
    dma_iova_sync,
    dma_iova_try_alloc,
    dma_iova_unlink,
    dma_map_phys,
    dma_unmap_phys,
    dma_use_iova,
)
from dmabuf.dma.dma_iommu import DMA_IOVA_USE_SWIOTLB
from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.mm import make_ranges

from .conftest import NIC, Rig

BIDI = DmaDataDirection.DMA_BIDIRECTIONAL
TO = DmaDataDirection.DMA_TO_DEVICE


def _buf(rig: Rig, n: int, extent: int = 4096) -> tuple[int, np.ndarray]:
    o = rig.pm.new_owner("buf")
    r = rig.pm.alloc(rig.ram, n, o, max_extent=extent, rng=np.random.default_rng(2))
    rig.pm.write(r, rig.pattern(n, seed=11))
    return o, r


def test_try_alloc_false_without_iommu(rig: Rig) -> None:
    st = DmaIovaState(addr=5, size=7)
    assert not dma_iova_try_alloc(rig.device(NIC), st, 0, 4096)
    assert st == DmaIovaState(0, 0) and not dma_use_iova(st)


def test_try_alloc_warns_on_zero_and_bit63(rig: Rig) -> None:
    dev = rig.device(NIC, rig.domain())
    st = DmaIovaState()
    assert not dma_iova_try_alloc(dev, st, 0, 0)
    assert not dma_iova_try_alloc(dev, st, 0, DMA_IOVA_USE_SWIOTLB | 4096)
    assert [w[0] for w in rig.machine.warnings] == ["dma_iova_try_alloc"] * 2
    with pytest.raises(TypeError):
        dma_iova_try_alloc(dev, st, 0, -1)


def test_link_sync_roundtrip_one_sync_per_transaction(rig: Rig) -> None:
    dom = rig.domain()
    dev = rig.device(NIC, dom)
    o, r = _buf(rig, 64 * 4096)
    st = DmaIovaState()
    assert dma_iova_try_alloc(dev, st, 0, 64 * 4096)
    assert dma_use_iova(st) and dma_iova_size(st) == 64 * 4096
    assert st.addr % (64 * 4096) == 0                       # size-aligned IOVA
    off = 0
    for a, n in r.tolist():
        dma_iova_link(dev, st, a, off, n, BIDI)
        off += n
    assert dom.stats.map_calls == 64 and dom.stats.sync_map == 0
    with pytest.raises(IommuFault):                         # not synced yet
        dev.dma_read(make_ranges([st.addr], [16]))
    dma_iova_sync(dev, st, 0, off)
    assert dom.stats.sync_map == 1                           # ONE sync for 64 links
    one = make_ranges([st.addr], [off])                      # one contiguous DMA range
    assert np.array_equal(dev.dma_read(one, expect_owner=o), rig.pm.read(r))
    # per-page dma_map_phys: one sync per call
    before = dom.stats.sync_map
    addrs = [dma_map_phys(dev, a, n, TO) for a, n in r[:8].tolist()]
    assert dom.stats.sync_map - before == 8
    for a in addrs:
        dma_unmap_phys(dev, a, 4096, TO)
    addr = st.addr
    dma_iova_destroy(dev, st, off, BIDI)
    assert not dma_use_iova(st)
    with pytest.raises(IommuFault):                         # use after destroy
        dev.dma_read(make_ranges([addr], [16]))


def test_unaligned_first_link_then_aligned(rig: Rig) -> None:
    dev = rig.device(NIC, rig.domain())
    _o, r = _buf(rig, 4 * 4096, extent=4 * 4096)
    base = int(r["addr"][0])
    st = DmaIovaState()
    assert dma_iova_try_alloc(dev, st, base + 0x100, 3 * 4096)
    assert st.addr & 0xFFF == 0x100
    dma_iova_link(dev, st, base + 0x100, 0, 4096 - 0x100, BIDI)      # first: unaligned ok
    dma_iova_link(dev, st, base + 4096, 4096 - 0x100, 2 * 4096, BIDI)
    dma_iova_sync(dev, st, 0, 3 * 4096 - 0x100)
    got = dev.dma_read(make_ranges([st.addr], [3 * 4096 - 0x100]))
    assert np.array_equal(got, rig.pm.read(make_ranges([base + 0x100], [3 * 4096 - 0x100])))
    dma_iova_destroy(dev, st, 3 * 4096 - 0x100, BIDI)


def test_misaligned_non_first_link_is_eio(rig: Rig) -> None:
    dom = rig.domain()
    dev = rig.device(NIC, dom)
    _o, r = _buf(rig, 4 * 4096, extent=4 * 4096)
    base = int(r["addr"][0])
    st = DmaIovaState()
    assert dma_iova_try_alloc(dev, st, 0, 4 * 4096)
    dma_iova_link(dev, st, base, 0, 4096, BIDI)
    with pytest.raises(DmaBufError) as e:
        dma_iova_link(dev, st, base + 4096 + 8, 4096, 4096, BIDI)
    assert e.value.errno == errno.EIO
    assert rig.machine.warnings[-1][0] == "dma_iova_link"
    assert dom.stats.map_calls == 1                          # nothing mapped by the failure
    # a non-last link with an unaligned size makes the next IOVA unaligned: iommu_map -EINVAL
    dma_iova_link(dev, st, base + 4096, 4096, 100, BIDI)
    with pytest.raises(DmaBufError) as e:
        dma_iova_link(dev, st, base + 2 * 4096, 4096 + 100, 4096, BIDI)
    assert e.value.errno == errno.EINVAL
    # linking beyond the allocation is a contract violation
    with pytest.raises(ContractViolation) as cv:
        dma_iova_link(dev, st, base, 4 * 4096, 4096, BIDI)
    assert cv.value.rule == "dma_iova_link"
    with pytest.raises(DmaBufError) as e:                    # already linked
        dma_iova_link(dev, st, base, 0, 4096, BIDI)
    assert e.value.errno == errno.EEXIST


def test_unlink_is_flushed_immediately_even_in_lazy_mode(rig: Rig) -> None:
    dom = rig.domain(lazy=True)
    dev = rig.device(NIC, dom)
    _o, r = _buf(rig, 4 * 4096, extent=4 * 4096)
    base = int(r["addr"][0])
    st = DmaIovaState()
    assert dma_iova_try_alloc(dev, st, 0, 4 * 4096)
    dma_iova_link(dev, st, base, 0, 4 * 4096, BIDI)
    dma_iova_sync(dev, st, 0, 4 * 4096)
    dma_iova_unlink(dev, st, 4096, 4096, BIDI)
    assert dom.stats.iotlb_flushes == 1 and dom.fq_pending == 0
    with pytest.raises(IommuFault):
        dev.dma_read(make_ranges([st.addr + 4096], [1]))
    dev.dma_read(make_ranges([st.addr], [4096]))             # the rest is still there
    # unlinking a hole WARNs (unmapped != size)
    dma_iova_unlink(dev, st, 4096, 4096, BIDI)
    assert rig.machine.warnings[-1][0] == "dma_iova_unlink"
    # destroy with more than [0, mapped_len) linked is a contract violation
    with pytest.raises(ContractViolation) as cv:
        dma_iova_destroy(dev, st, 4096, BIDI)
    assert cv.value.rule == "dma_iova_destroy"
    dma_iova_unlink(dev, st, 2 * 4096, 2 * 4096, BIDI)
    dma_iova_destroy(dev, st, 4096, BIDI)
    assert dom.fq_pending == 1                               # lazy: flush + free queued
    assert dom.iovad is not None and dom.iovad.allocated_granules() == 4
    dom.flush_queue()
    assert dom.iovad.allocated_granules() == 0


@pytest.mark.parametrize("lazy,flushes,pending", [(False, 1, 0), (True, 0, 1)])
def test_destroy_strict_vs_lazy(rig: Rig, lazy: bool, flushes: int, pending: int) -> None:
    dom = rig.domain(lazy=lazy)
    dev = rig.device(NIC, dom)
    _o, r = _buf(rig, 8 * 4096, extent=8 * 4096)
    st = DmaIovaState()
    assert dma_iova_try_alloc(dev, st, 0, 8 * 4096)
    dma_iova_link(dev, st, int(r["addr"][0]), 0, 8 * 4096, BIDI)
    dma_iova_sync(dev, st, 0, 8 * 4096)
    dma_iova_destroy(dev, st, 8 * 4096, BIDI)
    assert dom.stats.iotlb_flushes == flushes and dom.fq_pending == pending


def test_free_requires_everything_unlinked(rig: Rig) -> None:
    dom = rig.domain()
    dev = rig.device(NIC, dom)
    _o, r = _buf(rig, 2 * 4096, extent=2 * 4096)
    st = DmaIovaState()
    assert dma_iova_try_alloc(dev, st, 0, 2 * 4096)
    dma_iova_link(dev, st, int(r["addr"][0]), 0, 4096, BIDI)
    with pytest.raises(ContractViolation) as cv:
        dma_iova_free(dev, st)
    assert cv.value.rule == "dma_iova_free"
    dma_iova_unlink(dev, st, 0, 4096, BIDI)
    dma_iova_free(dev, st)
    assert dom.iovad is not None and dom.iovad.allocated_granules() == 0
    with pytest.raises(ContractViolation):
        dma_iova_sync(dev, st, 0, 4096)                      # the state is empty now
    st2 = DmaIovaState()
    assert dma_iova_try_alloc(dev, st2, 0, 4096)
    dma_iova_destroy(dev, st2, 0, BIDI)                      # mapped_len 0 = free
    assert dom.iovad.allocated_granules() == 0


def test_iova_exhaustion_returns_false(rig: Rig) -> None:
    dom = rig.domain(aperture_bits=32)
    dev = rig.device(NIC, dom)
    st = DmaIovaState()
    assert not dma_iova_try_alloc(dev, st, 0, 1 << 32)
    assert dma_iova_try_alloc(dev, st, 0, 1 << 30)
