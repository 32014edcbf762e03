"""IOMMU domains: page table, translation, permissions, sync, strict vs lazy flushing, faults."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.dma import (
    IOMMU_READ,
    IOMMU_WRITE,
    Iommu,
    IommuDomain,
    IommuDomainType,
)
from dmabuf.dma.iommu import IOVA_DEFAULT_FQ_SIZE
from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.mm import make_ranges

RW = IOMMU_READ | IOMMU_WRITE


def test_map_translate_unmap(machine: Machine) -> None:
    d = IommuDomain("d", IommuDomainType.UNMANAGED, machine=machine)
    d.map(0x10000, 0x4000_0000, 0x3000, RW)
    d.map(0x13000, 0x7000_0000, 0x1000, RW)
    assert d.iova_to_phys(0x10123) == 0x4000_0123
    assert d.iova_to_phys(0x13010) == 0x7000_0010
    assert d.iova_to_phys(0x20000) == 0
    out = d.translate(make_ranges([0x10800], [0x3000]), "read")
    assert out.tolist() == [(0x4000_0800, 0x2800), (0x7000_0000, 0x800)]
    assert d.stats.map_calls == 2 and d.stats.sync_map == 2 and d.stats.map_bytes == 0x4000
    # unmap stops at the first hole and reports what it unmapped
    assert d.unmap(0x12000, 0x3000) == 0x2000
    assert d.iova_to_phys(0x12000) == 0 and d.iova_to_phys(0x11000) == 0x4000_1000
    assert d.stats.unmap_calls == 1 and d.stats.iotlb_flushes == 1


def test_map_errors(machine: Machine) -> None:
    d = IommuDomain("d", IommuDomainType.UNMANAGED, machine=machine)
    d.map(0x10000, 0x4000_0000, 0x2000, RW)
    with pytest.raises(DmaBufError) as e:
        d.map(0x11000, 0x5000_0000, 0x2000, RW)
    assert e.value.errno == errno.EEXIST
    assert d.iova_to_phys(0x12000) == 0           # nothing of the failed map went in
    for iova, pa, sz in ((0x10800, 0, 0x1000), (0x20000, 0x123, 0x1000), (0x20000, 0, 0x10)):
        with pytest.raises(DmaBufError) as e:
            d.map(iova, pa, sz, RW)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError):
        d.map(1 << 48, 0, 0x1000, RW)               # beyond the 48-bit aperture
    with pytest.raises(TypeError):
        d.map(1.0, 0, 0x1000, RW)  # type: ignore[arg-type]
    ident = IommuDomain("id", IommuDomainType.IDENTITY, machine=machine)
    with pytest.raises(DmaBufError):
        ident.map(0x1000, 0x1000, 0x1000, RW)


def test_translate_across_leaves_and_many_ranges(machine: Machine) -> None:
    d = IommuDomain("d", IommuDomainType.UNMANAGED, machine=machine)
    base = (1 << 30) - 0x2000                        # straddles a 1 GiB leaf boundary
    d.map(base, 0x1_0000_0000, 0x4000, RW)
    out = d.translate(make_ranges([base + 0x100, base + 0x3000], [0x2000, 0x800]), "write")
    assert out.tolist() == [(0x1_0000_0100, 0x2000), (0x1_0000_3000, 0x800)]
    pages = make_ranges(np.arange(4) * 0x1000 + base, 0x1000)
    assert d.translate(pages, None).tolist() == [(0x1_0000_0000, 0x4000)]


def test_unmapped_and_permission_faults_are_logged(machine: Machine) -> None:
    d = IommuDomain("grp", IommuDomainType.UNMANAGED, machine=machine)
    d.map(0x10000, 0x4000_0000, 0x1000, IOMMU_READ)
    with pytest.raises(IommuFault) as f:
        d.translate(make_ranges([0x10000], [0x2000]), "read", device="nic")
    assert f.value.dma_addr == 0x11000 and f.value.errno == errno.EFAULT
    assert "not mapped" in str(f.value)
    with pytest.raises(IommuFault) as f:
        d.translate(make_ranges([0x10010], [0x10]), "write", device="nic")
    assert "permission" in str(f.value) and f.value.dma_addr == 0x10010
    assert [(r.device, r.dma_addr, r.access) for r in d.faults] == [
        ("nic", 0x11000, "read"), ("nic", 0x10010, "write")]
    assert d.stats.faults == 2
    assert d.translate(make_ranges([0x10010], [0x10]), None).tolist() == [(0x4000_0010, 0x10)]


def test_nosync_map_faults_until_synced(machine: Machine) -> None:
    d = IommuDomain("d", IommuDomainType.DMA, machine=machine)
    d.map(0x10000, 0x4000_0000, 0x2000, RW, sync=False)
    assert d.stats.sync_map == 0
    with pytest.raises(IommuFault) as f:
        d.translate(make_ranges([0x10000], [0x10]), "read")
    assert "dma_iova_sync" in str(f.value)
    d.iotlb_sync_map(0x10000, 0x2000)
    assert d.stats.sync_map == 1
    assert d.translate(make_ranges([0x11000], [0x10]), "read").tolist() == [(0x4000_1000, 0x10)]
    lax = IommuDomain("lax", IommuDomainType.DMA, machine=machine, strict_sync_map=False)
    lax.map(0x10000, 0x4000_0000, 0x1000, RW, sync=False)
    assert lax.translate(make_ranges([0x10000], [0x10]), "read").size == 1


def test_flush_queue_batches_flushes(machine: Machine) -> None:
    d = IommuDomain("lazy", IommuDomainType.DMA_FQ, machine=machine, fq_timeout=3600.0)
    assert d.iovad is not None
    freed: list[int] = []
    for i in range(IOVA_DEFAULT_FQ_SIZE):
        d.queue_iova(0x100 + i, 1, freed.append)
    assert d.stats.iotlb_flushes == 0 and d.fq_pending == IOVA_DEFAULT_FQ_SIZE and not freed
    d.queue_iova(0x5000, 1, freed.append)            # full: flush the 256 first
    assert d.stats.iotlb_flushes == 1 and d.stats.fq_flushes == 1
    assert freed == [0x100 + i for i in range(IOVA_DEFAULT_FQ_SIZE)]
    assert d.fq_pending == 1
    assert d.flush_queue() == 1 and freed[-1] == 0x5000
    assert d.flush_queue() == 0
    assert d.stats.iotlb_flushes == 2


def test_flush_queue_timeout(machine: Machine) -> None:
    d = IommuDomain("lazy", IommuDomainType.DMA_FQ, machine=machine, fq_timeout=0.0)
    freed: list[int] = []
    d.queue_iova(1, 1, freed.append)
    assert d.poll_flush_queue() == 1 and freed == [1]
    d.queue_iova(2, 1, freed.append)
    d.queue_iova(3, 1, freed.append)                 # the timer of entry 2 expired: flushed first
    assert freed == [1, 2] and d.fq_pending == 1


def test_blocked_domain_faults(machine: Machine) -> None:
    d = IommuDomain("b", IommuDomainType.BLOCKED, machine=machine)
    with pytest.raises(IommuFault):
        d.translate(make_ranges([0x1000], [1]), "read")


def test_identity_domain_translates_to_itself(machine: Machine) -> None:
    d = IommuDomain("i", IommuDomainType.IDENTITY, machine=machine)
    assert d.translate(make_ranges([0x5000], [0x10]), "read").tolist() == [(0x5000, 0x10)]
    assert d.iova_to_phys(0x1234) == 0x1234 and d.iovad is None


def test_check_unmapped_and_describe(machine: Machine) -> None:
    d = IommuDomain("d", IommuDomainType.DMA, machine=machine)
    d.map(0x10000, 0x4000_0000, 0x1000, RW)
    with pytest.raises(ContractViolation) as e:
        d.check_unmapped(0x0, 0x20000, "rule_x")
    assert e.value.rule == "rule_x"
    desc = d.describe()
    assert desc["type"] == "dma" and desc["stats"]["map_calls"] == 1
    assert desc["iova_allocated_bytes"] == 0


def test_iommu_groups_share_default_domain(machine: Machine) -> None:
    mmu = Iommu(IommuDomainType.DMA, machine=machine)
    a = mmu.group_domain(7)
    assert mmu.group_domain(7) is a and a.type is IommuDomainType.DMA and not a.lazy
    assert mmu.group_domain(8) is not a
    un = IommuDomain("vfio", IommuDomainType.UNMANAGED, machine=machine)
    mmu.set_group_domain(7, un)
    assert mmu.groups[7] is un
    with pytest.raises(TypeError):
        Iommu("dma")  # type: ignore[arg-type]


def test_trace_events(machine: Machine) -> None:
    d = IommuDomain("d", IommuDomainType.UNMANAGED, machine=machine)
    with machine.trace.record("iommu_") as evs:
        d.map(0x10000, 0x4000_0000, 0x1000, RW)
        d.unmap(0x10000, 0x1000)
        with pytest.raises(IommuFault):
            d.translate(make_ranges([0x10000], [1]), "read")
    assert [e.name for e in evs] == ["iommu_map", "iommu_unmap", "iommu_fault"]


def test_many_ranges_vectorised_path_matches_and_faults(machine: Machine) -> None:
    d = IommuDomain("d", IommuDomainType.UNMANAGED, machine=machine)
    # 64 pages mapped to scattered physical pages, queried as 64 sub-page ranges
    phys = (np.arange(64) * 7 + 3) * 0x1000 + 0x4000_0000
    for i, p in enumerate(phys.tolist()):
        d.map(0x100000 + i * 0x1000, p, 0x1000, RW)
    q = make_ranges(0x100000 + np.arange(64) * 0x1000 + 0x10, 0x20)
    out = d.translate(q, "read")
    assert out["addr"].tolist() == (phys + 0x10).tolist() and out["len"].tolist() == [0x20] * 64
    assert d.translate(q[:8], "read").tolist() == out[:8].tolist()     # slice path agrees
    d.unmap(0x100000 + 40 * 0x1000, 0x1000)
    with pytest.raises(IommuFault) as f:
        d.translate(q, "read")
    assert f.value.dma_addr == 0x100000 + 40 * 0x1000 + 0x10


def test_large_range_faults_name_the_first_bad_page(machine: Machine) -> None:
    # > 64 pages: the leaf-slice walk (reductions first, per-page mask only on a fault)
    d = IommuDomain("big", IommuDomainType.DMA, machine=machine)
    iova, phys, pg = 0x100_0000, 0x4000_0000, 0x1000
    d.map(iova, phys, 500 * pg, RW)
    d.map(iova + 501 * pg, phys + 501 * pg, 499 * pg, RW)     # page 500: a hole, pfns continue
    whole = make_ranges([iova + 8], [1000 * pg - 16])
    with pytest.raises(IommuFault) as f:
        d.translate(whole, "read")
    assert f.value.dma_addr == iova + 500 * pg and "not mapped" in str(f.value)
    d.map(iova + 500 * pg, phys + 500 * pg, pg, IOMMU_READ)   # fill it read-only
    assert d.translate(whole, "read").tolist() == [(phys + 8, 1000 * pg - 16)]
    with pytest.raises(IommuFault) as f:
        d.translate(whole, "write")
    assert f.value.dma_addr == iova + 500 * pg and "permission" in str(f.value)
    d.map(iova + 1000 * pg, phys + 1000 * pg, 100 * pg, RW, sync=False)
    with pytest.raises(IommuFault) as f:
        d.translate(make_ranges([iova + 900 * pg], [200 * pg]), "read")
    assert f.value.dma_addr == iova + 1000 * pg and "dma_iova_sync" in str(f.value)
    d.iotlb_sync_map(iova + 1000 * pg, 100 * pg)
    got = d.translate(make_ranges([iova + 900 * pg], [200 * pg]), None)
    assert got.tolist() == [(phys + 900 * pg, 200 * pg)]
    assert d.translate(make_ranges([iova], [1 * pg]), "read").tolist() == [(phys, pg)]
