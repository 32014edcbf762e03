"""dma_buf_phys_vec_to_sgt / dma_buf_free_sgt: the MMIO exporter helper (spec p2p §2.6)."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.buf.sg_table import SG_DMA_BUS_ADDRESS, SgTable
from dmabuf.dma import DmaDataDirection, dma_buf_free_sgt, dma_buf_phys_vec_to_sgt
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm import make_ranges

from .conftest import CPU_NIC, FAR, GPU, NIC, Rig

BIDI = DmaDataDirection.DMA_BIDIRECTIONAL


def _vec(rig: Rig) -> np.ndarray:
    return make_ranges([rig.bar.base + 0x10000, rig.bar.base + 0x40000], [0x8000, 0x4000])


def test_bus_addr_table(rig: Rig) -> None:
    dom = rig.domain()
    nic = rig.device(NIC, dom)
    sgt = dma_buf_phys_vec_to_sgt(nic, GPU, _vec(rig), 0xC000, BIDI)
    assert isinstance(sgt, SgTable) and sgt.orig_nents == 0 and sgt.nents == 2
    assert sgt.dma_ranges().tolist() == [(rig.bar.base + 0x10000 + rig.bus_offset, 0x8000),
                                         (rig.bar.base + 0x40000 + rig.bus_offset, 0x4000)]
    assert (sgt.dma_flags() & SG_DMA_BUS_ADDRESS).all()
    assert dom.stats.map_calls == 0                          # no IOVA, no IOMMU
    rig.pm.view(rig.bar.base + 0x40000, 4)[:] = [9, 8, 7, 6]
    assert nic.dma_read(sgt.dma_ranges()[1:])[:4].tolist() == [9, 8, 7, 6]
    dma_buf_free_sgt(nic, sgt, BIDI)
    assert sgt.freed
    with pytest.raises(ContractViolation):
        dma_buf_free_sgt(nic, sgt, BIDI)


def test_thru_host_bridge_with_iommu_one_entry_one_sync(rig: Rig) -> None:
    dom = rig.domain(lazy=False)
    dev = rig.device(CPU_NIC, dom)
    vec = _vec(rig)
    rig.pm.write(vec, rig.pattern(0xC000, seed=8))
    sgt = dma_buf_phys_vec_to_sgt(dev, GPU, vec, 0xC000, BIDI)
    assert sgt.nents == 1 and not (sgt.dma_flags() & SG_DMA_BUS_ADDRESS).any()
    assert dom.stats.map_calls == 2 and dom.stats.sync_map == 1
    assert np.array_equal(dev.dma_read(sgt.dma_ranges()), rig.pattern(0xC000, seed=8))
    dma = sgt.dma_ranges()
    dma_buf_free_sgt(dev, sgt, BIDI)
    assert dom.stats.iotlb_flushes == 1
    assert dom.iovad is not None and dom.iovad.allocated_granules() == 0
    with pytest.raises(Exception) as f:
        dev.dma_read(dma)
    assert f.value.errno == errno.EFAULT  # type: ignore[attr-defined]


def test_thru_host_bridge_direct_per_range(rig: Rig) -> None:
    dev = rig.device(CPU_NIC)
    sgt = dma_buf_phys_vec_to_sgt(dev, GPU, _vec(rig), 0xC000, BIDI)
    assert sgt.dma_ranges().tolist() == _vec(rig).tolist()      # CPU physical addresses
    assert sum(len(v) for v in dev.debug_maps.values()) == 2
    dma_buf_free_sgt(dev, sgt, BIDI)
    assert dev.debug_maps == {}


def test_errors(rig: Rig) -> None:
    nic = rig.device(NIC)
    for provider, vec, size, code in (
            (None, _vec(rig), 0xC000, errno.EINVAL),
            (GPU, _vec(rig), 0xB000, errno.EINVAL),
            (GPU, make_ranges([rig.bar.base + 1], [0x1000]), 0x1000, errno.EINVAL),
            (GPU, make_ranges([rig.ram.base], [0x1000]), 0x1000, errno.EINVAL)):
        with pytest.raises(DmaBufError) as e:
            dma_buf_phys_vec_to_sgt(nic, provider, vec, size, BIDI)
        assert e.value.errno == code
    assert rig.machine.warnings[0][0] == "dma_buf_phys_vec_to_sgt"
    with pytest.raises(DmaBufError) as e:
        dma_buf_phys_vec_to_sgt(rig.device(FAR), GPU, _vec(rig), 0xC000, BIDI)
    assert e.value.errno == errno.EINVAL
    sgt = dma_buf_phys_vec_to_sgt(nic, GPU, _vec(rig), 0xC000, BIDI)
    with pytest.raises(ContractViolation):
        dma_buf_free_sgt(nic, sgt, DmaDataDirection.DMA_TO_DEVICE)
    with pytest.raises(ContractViolation):
        dma_buf_free_sgt(rig.device(CPU_NIC), sgt, BIDI)
