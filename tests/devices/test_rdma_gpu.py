"""RDMA NIC x GPU: GPUDirect-style P2P, VRAM pressure per MR kind, a buggy importer, staging.

The reference fabric: ``gpu0`` and ``nic0`` under one PCIe switch (P2P ``BUS_ADDR``: bus addresses,
no IOMMU), ``gpu1`` and ``nic1`` on their own root ports (``THRU_HOST_BRIDGE``: IOVAs through the
IOMMU). Every transfer moves real bytes; checks compare checksums computed by the GPUs.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dmabuf.buf.dma_engine import DmaFaultLog
from dmabuf.devices.gpu import AmdgpuDomain, Gpu, GpuBo, TtmPl
from dmabuf.devices.platform import Platform
from dmabuf.devices.rdma import verbs as v
from dmabuf.devices.rdma.hca import VENDOR_ERR_DMA_FAULT
from dmabuf.dma.fabric import PciP2pdmaMapType
from dmabuf.errors import DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.mm.phys import POISON_FREE
from dmabuf.mm.ranges import coalesce
from dmabuf.sched import explore

from .test_rdma_support import (
    ACCESS_RW,
    MiB,
    intel_topology,
    make_platform,
    rc_pair,
    rdma_write,
)


def _pattern(n: int, salt: int) -> np.ndarray:
    """A cheap deterministic pattern of ``n`` bytes (no per-byte Python)."""
    words = np.arange(n // 8, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)
    return words.view(np.uint8)


def _export_bo(gpu: Gpu, size: int, salt: int | None, *,
               domain: AmdgpuDomain = AmdgpuDomain.VRAM) -> tuple[GpuBo, int]:
    bo = gpu.alloc_bo(size, domain=domain, name=f"bo{salt}")
    if salt is not None:
        gpu.write(bo, _pattern(size, salt)).wait()
    kbuf = gpu.export(bo)
    gpu.free_bo(bo)                       # the dma-buf holds the BO
    return bo, kbuf.fd()


@pytest.fixture
def platform(machine: Machine) -> Iterator[Platform]:
    p = make_platform(machine, vram=512 * MiB)
    yield p
    p.close()


def _faults(m: Machine) -> int:
    return len(m.state(DmaFaultLog))


# ------------------------------------------------------------------ end to end
@pytest.mark.parametrize("size", [4 * MiB, 256 * MiB], ids=["4MiB", "256MiB"])
def test_gpu0_nic0_to_nic1_gpu1(platform: Platform, size: int) -> None:
    """GPU0 VRAM --(switch, bus addresses)--> NIC0 ==RDMA WRITE==> NIC1 --(root complex,
    IOMMU)--> GPU1 VRAM; checksums match, and each MR's mapping is the expected one."""
    t0 = time.perf_counter()
    g0, g1 = platform.device("gpu0"), platform.device("gpu1")
    assert isinstance(g0, Gpu) and isinstance(g1, Gpu)
    fab = platform.fabric
    assert fab.p2p_map_type(g0.bdf, platform.pci_dev("nic0").bdf) is PciP2pdmaMapType.BUS_ADDR
    assert fab.p2p_map_type(g1.bdf, platform.pci_dev("nic1").bdf) is \
        PciP2pdmaMapType.THRU_HOST_BRIDGE
    bo0, fd0 = _export_bo(g0, size, 1)
    bo1, fd1 = _export_bo(g1, size, None)
    c0, c1 = v.Context(platform, "nic0"), v.Context(platform, "nic1")
    pair = rc_pair(c0, c1)
    src = v.DmaBufMR(pair.pd_a, size, ACCESS_RW, dmabuf=fd0)
    dst = v.DmaBufMR(pair.pd_b, size, ACCESS_RW, dmabuf=fd1)

    ms, md = src.mr.describe_mapping(), dst.mr.describe_mapping()
    # switch path: PCI bus addresses of GPU0's BAR, never through NIC0's IOMMU
    assert (ms["path"], ms["p2p_map_type"]) == ("bus", "BUS_ADDR")
    assert bool(ms["bus_address"].all())
    bar = platform.pci_dev("gpu0").bar(g0.bar.index)
    assert np.array_equal(coalesce(ms["dma"]), coalesce(bo0.bar_ranges()))   # bus_offset 0
    assert int(ms["dma"]["addr"].min()) >= bar.start
    # root-complex path: IOVAs that NIC1's IOMMU translates to GPU1's BAR (MMIO)
    assert (md["path"], md["p2p_map_type"]) == ("iommu", "THRU_HOST_BRIDGE")
    assert not bool(md["bus_address"].any())
    nic1_dma = platform.dma_device("nic1")
    assert nic1_dma.uses_dma_iommu
    assert np.array_equal(nic1_dma.translate(md["dma"]), coalesce(bo1.bar_ranges()))
    with pytest.raises(IommuFault):              # ... and the bus addresses are not IOVAs there
        nic1_dma.iommu.translate(ms["dma"][:1], "read")

    wc = rdma_write(pair, src, dst, size)
    assert (wc.status, wc.byte_len) == (v.IBV_WC_SUCCESS, size)
    assert g1.checksum(bo1) == g0.checksum(bo0)
    assert c0.device.ports[1].tx_bytes == size and c1.device.ports[1].rx_bytes == size
    assert c0.device.hca.page_faults == 0 and _faults(platform.machine) == 0
    for o in (src, dst):
        o.close()
    pair.close()
    assert time.perf_counter() - t0 < 5.0


# ------------------------------------------------------------------ VRAM pressure
@pytest.fixture
def small(machine: Machine) -> Iterator[Platform]:
    """64 MiB of VRAM per GPU: pressure comes quickly."""
    p = make_platform(machine, vram=64 * MiB)
    yield p
    p.close()


def test_pressure_pinned_mr_never_moves(small: Platform) -> None:
    g0 = small.device("gpu0")
    assert isinstance(g0, Gpu)
    c0 = v.Context(small, "nic0")
    pair = rc_pair(c0, c0)
    pbo, pfd = _export_bo(g0, 32 * MiB, 1)
    pinned = v.DmaBufMR(pair.pd_a, 32 * MiB, ACCESS_RW, dmabuf=pfd, kind="pinned")
    host = v.MR(pair.pd_b, 1 * MiB, ACCESS_RW)
    pages = pbo.pages.copy()
    other = g0.alloc_bo(16 * MiB, name="other")              # evictable
    assert pbo.pin_count == 1 and pbo.in_vram and other.in_vram
    for k in range(6):
        data = _pattern(1 * MiB, 100 + k)
        host.write(data.tobytes(), 1 * MiB)
        off = k * 4 * MiB
        wr = v.SendWR(k, opcode=v.IBV_WR_RDMA_WRITE, sg=[v.SGE(host.buf, 1 * MiB, host.lkey)])
        wr.set_wr_rdma(pinned.rkey, pinned.offset + off)
        pair.qp_b.post_send(wr)
        assert v.poll_cq(pair.cq_b)[0].wr_id == k
        if k == 2:                          # pressure: needs 24 MiB; only 'other' can go
            big = g0.alloc_bo(24 * MiB, name="big")
            assert not other.in_vram and big.in_vram
        if k == 4:                          # more than the unpinned VRAM: ENOMEM
            with pytest.raises(DmaBufError) as ei:
                g0.alloc_bo(40 * MiB, domain=AmdgpuDomain.VRAM, name="huge")
            assert ei.value.errno == errno.ENOMEM
        assert np.array_equal(g0.read(pbo, off, 1 * MiB), data)
    assert pbo.moves == 0 and np.array_equal(pbo.pages, pages)
    assert pinned.mr.umem.maps == 1 and pinned.mr.invalidations == 0
    assert pinned.mr.umem.attach.invalidations == 0
    assert g0.evictions >= 2 and _faults(small.machine) == 0
    for o in (pinned, host):
        o.close()
    pair.close()


def test_pressure_dynamic_mr_invalidated_and_remapped(small: Platform) -> None:
    """A dynamic MR follows its buffer VRAM <-> GTT: invalidated on every move, remapped on
    the next access, never reading stale or moved-from memory; both directions checked."""
    g0 = small.device("gpu0")
    assert isinstance(g0, Gpu)
    c0, c1 = v.Context(small, "nic0"), v.Context(small, "nic1")
    pair = rc_pair(c0, c1)
    bo, fd = _export_bo(g0, 8 * MiB, 1)
    mr = v.DmaBufMR(pair.pd_a, 8 * MiB, ACCESS_RW, dmabuf=fd)
    host = v.MR(pair.pd_b, 8 * MiB, ACCESS_RW)
    paths = []
    for k in range(8):
        data = _pattern(8 * MiB, 10 + k)
        g0.write(bo, data).wait()                          # the GPU produces new data
        if k % 2:
            hog = g0.alloc_bo(60 * MiB, name=f"hog{k}")    # VRAM pressure evicts the BO
            assert bo.mem_type is TtmPl.TT
            hog.put()
        elif k:
            g0.validate(bo, AmdgpuDomain.VRAM)             # back into VRAM (moves again)
            assert bo.in_vram
        assert rdma_write(pair, mr, host, 8 * MiB).status == v.IBV_WC_SUCCESS
        assert host.read(8 * MiB) == data.tobytes()
        paths.append(mr.mr.describe_mapping()["path"])
        # the other direction: NIC1 reads the host, writes into the (moving) BO
        back = _pattern(1 * MiB, 50 + k)
        host.write(back.tobytes(), 1 * MiB)
        wr = v.SendWR(k, opcode=v.IBV_WR_RDMA_WRITE, sg=[v.SGE(host.buf, 1 * MiB, host.lkey)])
        wr.set_wr_rdma(mr.rkey, mr.offset + 3 * MiB)
        pair.qp_b.post_send(wr)
        v.poll_cq(pair.cq_b)
        assert np.array_equal(g0.read(bo, 3 * MiB, 1 * MiB), back)
    assert paths == ["bus", "iommu"] * 4
    assert mr.mr.invalidations == 7 and mr.mr.faults == 8       # init + 7 remaps
    assert mr.mr.umem.maps == 8 and mr.mr.umem.unmaps == 7
    assert c0.device.hca.page_faults == 7 and _faults(small.machine) == 0
    for o in (mr, host):
        o.close()
    pair.close()


def test_pressure_odp_mr_faults_on_demand(small: Platform) -> None:
    g0 = small.device("gpu0")
    assert isinstance(g0, Gpu)
    c0 = v.Context(small, "nic0")
    pair = rc_pair(c0, c0)
    bo, fd = _export_bo(g0, 4 * MiB, 3)
    mr = v.DmaBufMR(pair.pd_a, 4 * MiB, ACCESS_RW, dmabuf=fd, kind="odp")
    host = v.MR(pair.pd_b, 4 * MiB, ACCESS_RW)
    u = mr.mr.umem
    assert u.maps == 0 and u.attach.live_mappings == 0      # nothing mapped before use
    g0.evict(bo)                                            # moving an unmapped MR: no-op for it
    assert mr.mr.invalidations == 0 and bo.mem_type is TtmPl.TT
    assert rdma_write(pair, mr, host, 4 * MiB).status == v.IBV_WC_SUCCESS
    assert u.maps == 1 and mr.mr.faults == 1
    assert host.read(4 * MiB) == _pattern(4 * MiB, 3).tobytes()
    g0.validate(bo, AmdgpuDomain.VRAM)
    assert mr.mr.invalidations == 1 and not mr.mr.mmkey.present
    assert rdma_write(pair, mr, host, 4 * MiB).status == v.IBV_WC_SUCCESS
    assert mr.mr.faults == 2 and mr.mr.describe_mapping()["path"] == "bus"
    assert host.read(4 * MiB) == _pattern(4 * MiB, 3).tobytes()
    for o in (mr, host):
        o.close()
    pair.close()


def test_importer_ignoring_invalidation_is_caught(machine: Machine) -> None:
    """A NIC whose invalidate callback does nothing keeps DMAing through the old translation:
    the freed (poisoned) VRAM, then another BO's pages — caught as DMA faults every time,
    the WQE completes in error and no byte of anyone's memory changes."""
    p = make_platform(machine, gpus=("gpu0",), vram=64 * MiB)
    try:
        g0 = p.device("gpu0")
        assert isinstance(g0, Gpu)
        c0 = v.Context(p, "nic0", ignore_invalidate=True)
        c1 = v.Context(p, "nic1")
        pair = rc_pair(c0, c1)
        bo, fd = _export_bo(g0, 4 * MiB, 7)
        mr = v.DmaBufMR(pair.pd_a, 4 * MiB, ACCESS_RW, dmabuf=fd)
        host = v.MR(pair.pd_b, 4 * MiB, ACCESS_RW)
        assert rdma_write(pair, mr, host, 4 * MiB).status == v.IBV_WC_SUCCESS
        old = bo.pages.copy()
        g0.evict(bo)                                   # invalidation ignored; VRAM freed
        assert mr.mr.mmkey.present                     # the stale MTT is still loaded
        assert int(p.phys.read(old[:1])[0]) == POISON_FREE
        host.write(b"\x11" * 4096, 4096)
        wc = rdma_write(pair, mr, host, 4096, wr_id=2)
        assert (wc.status, wc.vendor_err) == (v.IBV_WC_LOC_PROT_ERR, VENDOR_ERR_DMA_FAULT)
        assert host.read(4096) == b"\x11" * 4096      # nothing was copied
        log = machine.state(DmaFaultLog).records
        assert log and log[-1].device == c0.device.bdf and "(owner -1)" in log[-1].message
        assert "stale mapping" in log[-1].message
        # the freed VRAM now belongs to someone else: a remote write through the stale MR
        victim = g0.alloc_bo(4 * MiB, name="victim")
        assert victim.in_vram and np.array_equal(victim.pages, old)    # first fit reuses it
        g0.write(victim, _pattern(4 * MiB, 9)).wait()
        pair2 = rc_pair(c1, c0, pd_b=pair.pd_a)        # responder QP in the MR's PD
        host2 = v.MR(pair2.pd_a, 4096, ACCESS_RW)
        host2.write(b"\x22" * 4096, 4096)
        wr = v.SendWR(5, opcode=v.IBV_WR_RDMA_WRITE, sg=[v.SGE(host2.buf, 4096, host2.lkey)])
        wr.set_wr_rdma(mr.rkey, mr.offset)
        pair2.qp_a.post_send(wr)
        (wc,) = pair2.cq_a.poll(1)[1]
        assert (wc.status, wc.vendor_err) == (v.IBV_WC_REM_ACCESS_ERR, VENDOR_ERR_DMA_FAULT)
        assert np.array_equal(g0.read(victim), _pattern(4 * MiB, 9))   # not corrupted
        assert "victim" in log[-1].message
        assert c0.device.hca.dma_faults == 1 and c1.device.hca.dma_faults == 1
        assert len(c0.device.faults) == 2              # both faults were nic0's DMA
        for o in (mr, host, host2):
            o.close()
        pair.close()
        pair2.close()
    finally:
        p.close()


# ------------------------------------------------------------------ no P2P: GTT staging
def test_not_supported_path_stages_through_gtt(machine: Machine, tmp_path: Path) -> None:
    p = make_platform(machine, gpus=("gpu0",), vram=256 * MiB,
                      topology=intel_topology(tmp_path), gtt_size=32 * MiB)
    try:
        g0 = p.device("gpu0")
        assert isinstance(g0, Gpu)
        nic_bdf = p.pci_dev("nic0").bdf
        assert p.fabric.p2p_map_type(g0.bdf, nic_bdf) is PciP2pdmaMapType.NOT_SUPPORTED
        c0 = v.Context(p, "nic0")
        pair = rc_pair(c0, c0)
        bo, fd = _export_bo(g0, 16 * MiB, 21)
        assert bo.in_vram
        mr = v.DmaBufMR(pair.pd_a, 16 * MiB, ACCESS_RW, dmabuf=fd)
        assert not mr.mr.umem.attach.peer2peer          # the exporter's attach cleared it
        assert bo.mem_type is TtmPl.TT                  # map_dma_buf migrated it to GTT
        d = mr.mr.describe_mapping()
        assert (d["path"], d["p2p_map_type"]) == ("iommu", None)
        host = v.MR(pair.pd_b, 16 * MiB, ACCESS_RW)
        assert rdma_write(pair, mr, host, 16 * MiB).status == v.IBV_WC_SUCCESS
        assert host.read(16 * MiB) == _pattern(16 * MiB, 21).tobytes()
        # pinned: must be pinned in GTT, which has 16 MiB left: a 24 MiB one fails cleanly
        bo2, fd2 = _export_bo(g0, 24 * MiB, 22)
        with pytest.raises(v.PyverbsRDMAError) as ei:
            v.DmaBufMR(pair.pd_a, 24 * MiB, ACCESS_RW, dmabuf=fd2, kind="pinned")
        assert ei.value.error_code == errno.ENOMEM
        assert bo2.in_vram and bo2.pin_count == 0 and bo2.dmabuf is not None \
            and bo2.dmabuf.attachments == []
        bo3, fd3 = _export_bo(g0, 8 * MiB, 23)
        pin = v.DmaBufMR(pair.pd_a, 8 * MiB, ACCESS_RW, dmabuf=fd3, kind="pinned")
        assert bo3.mem_type is TtmPl.TT and bo3.pin_count == 1
        assert rdma_write(pair, pin, host, 8 * MiB).status == v.IBV_WC_SUCCESS
        assert host.read(8 * MiB) == _pattern(8 * MiB, 23).tobytes()
        for o in (mr, pin, host):
            o.close()
        pair.close()
    finally:
        p.close()


def test_exporter_needing_p2p_fails_registration(machine: Machine, tmp_path: Path) -> None:
    """habanalabs exports HBM only peer-to-peer: on a path without P2P its map fails -EPERM, so
    pinned and dynamic MR registration fail with EPERM and leave nothing attached."""
    from dmabuf.devices.accel import Accel

    p = make_platform(machine, gpus=(), topology=intel_topology(tmp_path))
    try:
        acc = p.bind(Accel, "acc0")
        va = acc.mem_map(acc.mem_alloc(4 * MiB))
        kbuf = acc.export_dmabuf(va, 4 * MiB)
        c0 = v.Context(p, "nic0")
        pd = v.PD(c0)
        for kind in ("pinned", "dynamic", "pinned_revocable"):
            with pytest.raises(v.PyverbsRDMAError) as ei:
                v.DmaBufMR(pd, 4 * MiB, ACCESS_RW, dmabuf=kbuf, kind=kind)
            assert ei.value.error_code == errno.EPERM, kind
            assert kbuf.attachments == [] and c0.device.mrs == [] and pd.pd.usecnt == 0
        odp = v.DmaBufMR(pd, 4 * MiB, ACCESS_RW, dmabuf=kbuf, kind="odp")   # maps lazily...
        pair = rc_pair(c0, c0, pd_a=pd)
        host = v.MR(pair.pd_b, 4096, ACCESS_RW)
        wc = rdma_write(pair, odp, host, 4096)                              # ... and fails
        assert (wc.status, wc.vendor_err) == (v.IBV_WC_LOC_PROT_ERR, 0x51)
        for o in (odp, host):
            o.close()
        pair.close()
        kbuf.put()
    finally:
        p.close()


# ------------------------------------------------------------------ invalidate vs RDMA WRITE
def _race(m: Machine) -> dict[str, int]:
    p = make_platform(m, gpus=("gpu0",), vram=32 * MiB, ram=1 << 30)
    g0 = p.device("gpu0")
    assert isinstance(g0, Gpu)
    c0, c1 = v.Context(p, "nic0"), v.Context(p, "nic1")
    pair = rc_pair(c0, c1)
    size = 256 * 1024
    bo, fd = _export_bo(g0, size, 5)
    mr = v.DmaBufMR(pair.pd_a, size, ACCESS_RW, dmabuf=fd)
    host = v.MR(pair.pd_b, size, ACCESS_RW)
    expect = _pattern(size, 5).tobytes()
    bad: list[str] = []

    def writer() -> None:
        for k in range(4):
            host.write(b"\0" * size, size)
            wc = rdma_write(pair, mr, host, size, wr_id=k)
            if wc.status != v.IBV_WC_SUCCESS or host.read(size) != expect:
                bad.append(f"write {k}: {wc}")

    def evictor() -> None:
        for _ in range(2):
            g0.evict(bo)
            g0.validate(bo, AmdgpuDomain.VRAM)

    tw = m.sched.spawn(writer, name="rdma-writer")
    te = m.sched.spawn(evictor, name="evictor")
    assert tw.join(30.0) and te.join(30.0)
    tw.result()
    te.result()
    out = {"bad": len(bad), "faults": _faults(m), "invalidations": mr.mr.invalidations,
           "moves": bo.moves}
    assert not bad, bad
    for o in (mr, host):
        o.close()
    pair.close()
    p.close()
    return out


def test_invalidate_vs_rdma_write_race_explored() -> None:
    """Five schedules of 'RDMA WRITE from a dynamic MR' racing 'evict / bring back': every
    write reads the buffer's current bytes, no DMA fault, every move invalidated the MR."""
    res = explore(_race, seeds=range(5))
    assert res.seeds == 5 and res.switches > 0


# ------------------------------------------------------------------ vfio-pci: revocable memory
def test_vfio_pci_bar_revoke(machine: Machine) -> None:
    """A vfio-pci BAR exported as a dma-buf (THRU_HOST_BRIDGE from nic1): the v7.1 pinned MR is
    refused (not revocable); a pinned-revocable MR works until memory decode is turned off, then
    its DMA stops for good; a dynamic MR remaps once memory is enabled again."""
    from dmabuf.devices.vfio import VfioPciDevice

    p = make_platform(machine, gpus=())
    try:
        vf = p.bind(VfioPciDevice, "gpu1")
        vf.open_device()
        fd = vf.feature_dma_buf(1, [(0, 1 * MiB)])
        vf.hw_write(1, 0, _pattern(1 * MiB, 31))
        c1 = v.Context(p, "nic1")
        pair = rc_pair(c1, c1)
        with pytest.raises(v.PyverbsRDMAError) as ei:
            v.DmaBufMR(pair.pd_a, 1 * MiB, ACCESS_RW, dmabuf=fd, kind="pinned")
        assert ei.value.error_code == errno.EOPNOTSUPP
        rev = v.DmaBufMR(pair.pd_a, 1 * MiB, ACCESS_RW, dmabuf=fd, kind="pinned_revocable")
        dyn = v.DmaBufMR(pair.pd_a, 1 * MiB, ACCESS_RW, dmabuf=fd, kind="dynamic")
        assert rev.mr.describe_mapping()["p2p_map_type"] == "THRU_HOST_BRIDGE"
        host = v.MR(pair.pd_b, 1 * MiB, ACCESS_RW)
        for mr in (rev, dyn):
            assert rdma_write(pair, mr, host, 1 * MiB).status == v.IBV_WC_SUCCESS
            assert host.read(1 * MiB) == _pattern(1 * MiB, 31).tobytes()
        vf.set_memory_enable(False)              # revoke: both importers unmap in time
        assert machine.warnings == []
        assert rev.mr.umem.revoked and dyn.mr.invalidations == 1
        pair = rc_pair(c1, c1, pd_a=pair.pd_a, pd_b=pair.pd_b)
        assert rdma_write(pair, rev, host, 4096).status == v.IBV_WC_LOC_PROT_ERR
        pair = rc_pair(c1, c1, pd_a=pair.pd_a, pd_b=pair.pd_b)
        assert rdma_write(pair, dyn, host, 4096).status == v.IBV_WC_LOC_PROT_ERR   # -ENODEV
        vf.set_memory_enable(True)               # un-revoke
        vf.hw_write(1, 0, _pattern(1 * MiB, 32))
        pair = rc_pair(c1, c1, pd_a=pair.pd_a, pd_b=pair.pd_b)
        assert rdma_write(pair, dyn, host, 1 * MiB).status == v.IBV_WC_SUCCESS
        assert host.read(1 * MiB) == _pattern(1 * MiB, 32).tobytes()
        pair = rc_pair(c1, c1, pd_a=pair.pd_a, pd_b=pair.pd_b)
        assert rdma_write(pair, rev, host, 4096).status == v.IBV_WC_LOC_PROT_ERR  # for good
        for o in (rev, dyn, host):
            o.close()
        c1.close()
        vf.close_device()
    finally:
        p.close()


# ------------------------------------------------------------------ in-flight DMA vs ZAP
def test_zap_waits_for_in_flight_dma() -> None:
    """The invalidation's UMR ZAP takes the MKey's hardware lock, so a transfer holding it (in
    flight) finishes before the translation is zapped and the exporter moves the pages."""
    from dmabuf.sched import replay

    def scenario(m: Machine) -> list[str]:
        p = make_platform(m, gpus=("gpu0",), vram=32 * MiB, ram=1 << 30)
        g0 = p.device("gpu0")
        assert isinstance(g0, Gpu)
        ctx = v.Context(p, "nic0")
        pd = v.PD(ctx)
        bo, fd = _export_bo(g0, 1 * MiB, 4)
        mr = v.DmaBufMR(pd, 1 * MiB, ACCESS_RW, dmabuf=fd)
        order: list[str] = []
        unsub = m.trace.subscribe(lambda ev: order.append("zap")
                                  if ev.name == "mlx5_umr_update_mr_pas"
                                  and ev.fields.get("zap") else None)
        mk = mr.mr.mmkey
        held = m.sched.event("in-flight")

        def in_flight_dma() -> None:
            with mk.hw_lock:                          # the HCA mid-transfer through the key
                held.set()
                m.sched.sleep(0.5)
                order.append("dma done")

        t = m.sched.spawn(in_flight_dma, name="hca")
        assert held.wait(5.0)
        g0.evict(bo)                                  # invalidate -> ZAP must wait
        order.append("evicted")
        assert t.join(5.0)
        unsub()
        mr.close()
        pd.close()
        ctx.close()
        p.close()
        return order

    for seed in range(3):
        assert replay(scenario, seed) == ["dma done", "zap", "evicted"]
