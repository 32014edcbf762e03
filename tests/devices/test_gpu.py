"""Tests of dmabuf.devices.gpu: the amdgpu/TTM-like dynamic exporter with real bytes."""

from __future__ import annotations

import errno
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from dmabuf.buf.dma_buf import DmaBuf, DmaBufAttachOps, Vma
from dmabuf.buf.dma_engine import DmaFaultLog
from dmabuf.buf.sg_table import SG_DMA_BUS_ADDRESS, SgTable
from dmabuf.devices import AmdgpuDomain, Device, Gpu, GpuBo, Platform, TtmPl
from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.mm import POISON_FREE
from dmabuf.pci import default_topology_path, loads_toml
from dmabuf.pci.topology import Topology
from dmabuf.sched import explore
from dmabuf.sync.dma_resv import DmaResvUsage

MiB = 1 << 20
GiB = 1 << 30
BIDI = 0


def intel_topology() -> Topology:
    """The reference fabric on an Intel CPU: cross-root-port P2P is NOT_SUPPORTED."""
    with open(default_topology_path(), encoding="utf-8") as f:
        text = f.read()
    text = text.replace('vendor_id = "AuthenticAMD"\nfamily = 0x19',
                        'vendor_id = "GenuineIntel"\nfamily = 6')
    return loads_toml(text, path="<intel reference fabric>")


class Importer:
    """A dynamic importer device: p2p-capable, remaps after invalidation, publishes its fences."""

    def __init__(self, dev: Device, dmabuf: DmaBuf, *, p2p: bool = True) -> None:
        self.dev = dev
        self.buf = dmabuf
        self.table: SgTable | None = None
        self.stale = False
        self.invalidations = 0
        self.attach = dmabuf.dynamic_attach(
            dev.dma, DmaBufAttachOps(p2p, invalidate_mappings=self._invalidate))

    def _invalidate(self, attach: object) -> None:
        # (also called while this importer's own map migrates the buffer: nothing to drop yet)
        self.invalidations += 1
        if self.table is not None:
            self.stale = True

    def map_locked(self) -> SgTable:
        if self.table is not None and self.stale:
            self.attach.unmap(self.table, BIDI)
            self.table = None
        if self.table is None:
            t = self.attach.map(BIDI)
            assert isinstance(t, SgTable)
            self.table = t
            self.stale = False
        # a dynamic importer waits for the exporter's KERNEL fences (moves) itself
        assert self.buf.resv.wait_timeout(DmaResvUsage.KERNEL, False, 10.0) > 0
        return self.table

    def map(self) -> SgTable:
        self.buf.resv.lock()
        try:
            return self.map_locked()
        finally:
            self.buf.resv.unlock()

    def checksum(self, owner: int) -> int:
        assert self.table is not None
        return self.dev.dma_checksum(self.table, owner=owner)

    def close(self) -> None:
        self.buf.resv.lock()
        try:
            if self.table is not None:
                self.attach.unmap(self.table, BIDI)
                self.table = None
        finally:
            self.buf.resv.unlock()
        self.attach.detach()


def pattern(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def crc(a: np.ndarray) -> int:
    return zlib.crc32(a.tobytes())


@pytest.fixture
def plat(machine: Machine) -> Iterator[Platform]:
    p = Platform(ram_size=4 * GiB)
    yield p
    p.close()


def filled_bo(gpu: Gpu, size: int, seed: int = 1, **kw: object) -> tuple[GpuBo, np.ndarray]:
    bo = gpu.alloc_bo(size, **kw)  # type: ignore[arg-type]
    data = pattern(bo.size, seed)
    f = gpu.write(bo, data)
    assert f.wait_timeout(False, 10.0) > 0 and f.error == 0
    return bo, data


# --------------------------------------------------------------------------- probe / layout


def test_gpu_probe_and_vram_window(plat: Platform) -> None:
    gpu = plat.bind(Gpu, "gpu0", vram_size=GiB)
    assert gpu.driver_name == "amdgpu" and set(gpu.queues) == {"gfx", "sdma"}
    assert gpu.bar.index == 1 and gpu.bar_region is plat.bars["0000:03:00.0 BAR1"]
    assert gpu.visible_vram_size == GiB and gpu.vram_invisible is None
    assert gpu.vram_free == GiB
    assert gpu.pdev.p2pdma is not None
    # the BAR window decodes to VRAM: a byte written in VRAM is read at the BAR address
    plat.phys.view(gpu.vram_visible.base + 4096, 4)[:] = [1, 2, 3, 4]
    assert plat.phys.read([(gpu.bar.start + 4096, 4)]).tolist() == [1, 2, 3, 4]
    d = gpu.describe()
    assert d["vram_size"] == GiB and d["bar"] == 1 and d["bos"] == []


def test_bad_gpu_input(plat: Platform) -> None:
    with pytest.raises(DmaBufError) as e:
        plat.bind(Gpu, "nic0")                       # a network controller
    assert e.value.errno == errno.ENODEV and "0x03" in str(e.value)
    with pytest.raises(DmaBufError) as e:
        plat.bind(Gpu, "gpu7")
    assert e.value.errno == errno.ENODEV
    for bad in (0, -4096, 4097):
        with pytest.raises(DmaBufError) as e:
            plat.bind(Gpu, "gpu0", vram_size=bad)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        plat.bind(Gpu, "gpu0", vram_size=GiB, visible_vram_size=2 * GiB)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        plat.bind(Gpu, "gpu0", vram_bar=2)
    assert e.value.errno == errno.EINVAL
    gpu = plat.bind(Gpu, "gpu0", vram_size=64 * MiB)
    with pytest.raises(DmaBufError) as e:
        plat.bind(Gpu, "gpu0")
    assert e.value.errno == errno.EBUSY
    for size in (0, -1):
        with pytest.raises(DmaBufError) as e:
            gpu.alloc_bo(size)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        gpu.alloc_bo("4096")  # type: ignore[arg-type]
    with pytest.raises(DmaBufError) as e:
        gpu.alloc_bo(64 * MiB + 4096)                # larger than VRAM
    assert e.value.errno == errno.ENOMEM and "amdgpu_bo_validate_size" in str(e.value)
    with pytest.raises(DmaBufError) as e:
        gpu.alloc_bo(4096, domain=AmdgpuDomain.CPU)
    assert e.value.errno == errno.EINVAL
    bo = gpu.alloc_bo(8192)
    assert bo.size == 8192
    with pytest.raises(DmaBufError) as e:
        gpu.write(bo, b"x" * 8193)
    assert e.value.errno == errno.EINVAL
    other = gpu.alloc_bo(4096)
    with pytest.raises(DmaBufError) as e:
        gpu.copy(bo, other)
    assert e.value.errno == errno.EINVAL
    gpu.free_bo(other)
    with pytest.raises(ContractViolation):
        gpu.fill(other, 0)                           # use after free


# --------------------------------------------------------------------------- P2P export


def test_vram_export_same_switch_bus_addr(plat: Platform) -> None:
    gpu = plat.bind(Gpu, "gpu0", vram_size=GiB)
    nic = plat.bind(Device, "nic0")
    bo, data = filled_bo(gpu, 8 * MiB)
    assert bo.mem_type is TtmPl.VRAM and gpu.checksum(bo) == crc(data)
    buf = gpu.export(bo)
    assert buf.is_dynamic and buf.resv is bo.resv and buf.size == 8 * MiB and bo.refcount == 2
    imp = Importer(nic, buf)
    assert imp.attach.peer2peer is True
    t = imp.map()
    # bus addresses of the BAR window, flagged SG_DMA_BUS_ADDRESS, the BO stayed in VRAM
    assert t.is_dma_only and bool(np.all(t.dma_flags() & SG_DMA_BUS_ADDRESS))
    expected = bo.bar_ranges()
    got = t.dma_ranges()
    assert int(got["len"].sum()) == bo.size
    assert int(got["addr"][0]) == int(expected["addr"][0]) == gpu.bar.start
    assert bo.mem_type is TtmPl.VRAM and bo.moves == 0
    # the NIC's DMA reads exactly the bytes the GPU wrote (no IOMMU on the switch path)
    assert imp.checksum(bo.owner) == crc(data)
    assert nic.dma.iommu is not None and nic.dma.iommu.stats.translations == 0
    # and what the NIC writes, the GPU reads
    new = pattern(bo.size, 7)
    nic.dma_write(t, new, owner=bo.owner)
    assert np.array_equal(gpu.read(bo), new)
    imp.close()
    buf.put()
    assert bo.refcount == 1 and bo.dmabuf is None


def test_vram_export_thru_host_bridge_amd(plat: Platform) -> None:
    """GPU0 -> NIC1 crosses the root complex: allowed on AMD Zen, mapped through the IOMMU."""
    gpu = plat.bind(Gpu, "gpu0", vram_size=GiB)
    nic1 = plat.bind(Device, "nic1")
    bo, data = filled_bo(gpu, 4 * MiB)
    buf = gpu.export(bo)
    imp = Importer(nic1, buf)
    assert imp.attach.peer2peer is True
    t = imp.map()
    assert bo.mem_type is TtmPl.VRAM and not bool(np.any(t.dma_flags() & SG_DMA_BUS_ADDRESS))
    assert imp.checksum(bo.owner) == crc(data)
    dom = nic1.dma.iommu
    assert dom is not None and dom.stats.translations >= 1
    imp.close()
    buf.put()


def test_non_p2p_importer_gets_gtt_staging(machine: Machine) -> None:
    p = Platform(intel_topology(), ram_size=4 * GiB)
    gpu = p.bind(Gpu, "gpu0", vram_size=GiB)
    near = p.bind(Device, "nic0")
    far = p.bind(Device, "nic1")
    bo, data = filled_bo(gpu, 4 * MiB)
    buf = gpu.export(bo)
    a = Importer(near, buf)
    ta = a.map()
    assert bo.mem_type is TtmPl.VRAM and a.checksum(bo.owner) == crc(data)
    b = Importer(far, buf)
    assert b.attach.peer2peer is False           # pci_p2pdma_distance < 0 across root ports
    buf.resv.lock()
    try:
        tb = b.attach.map(BIDI)
        assert isinstance(tb, SgTable)
        # the migration fence is in the resv as KERNEL, from the GPU's sdma timeline
        kernel = [f for f, _ in buf.resv.for_each_fence(DmaResvUsage.KERNEL)]
        b.table = tb
        b.map_locked()
    finally:
        buf.resv.unlock()
    assert bo.mem_type is TtmPl.TT and bo.moves == 1
    sdma = gpu.queue("sdma")
    assert [(f.context, f.seqno) for f in kernel] == [(sdma.context, sdma.seqno)]
    # the far importer's DMA goes through its IOMMU to the GTT pages: same bytes
    assert not bool(np.any(tb.dma_flags() & SG_DMA_BUS_ADDRESS))
    assert b.checksum(bo.owner) == crc(data)
    # the near importer was told (move_notify) and its old VRAM mapping now faults
    assert a.invalidations == 1 and a.stale
    with pytest.raises(IommuFault) as f:
        near.dma_checksum(ta, owner=bo.owner)
    assert "poisoned" in str(f.value)
    assert p.phys.read([(gpu.bar.start, 16)]).tolist() == [POISON_FREE] * 16
    # remapping gives the near importer the GTT pages too
    a.map()
    assert a.checksum(bo.owner) == crc(data)
    a.close()
    b.close()
    buf.put()
    p.close()


def test_importer_not_allowing_p2p_and_static_importer(plat: Platform) -> None:
    gpu = plat.bind(Gpu, "gpu0", vram_size=GiB)
    nic = plat.bind(Device, "nic0")
    bo, data = filled_bo(gpu, 2 * MiB)
    buf = gpu.export(bo)
    imp = Importer(nic, buf, p2p=False)
    assert imp.attach.peer2peer is False
    imp.map()
    assert bo.mem_type is TtmPl.TT and imp.checksum(bo.owner) == crc(data)
    imp.close()
    # a static importer: the core pins around the mapping and waits the KERNEL fences
    gpu.validate(bo)
    assert bo.mem_type is TtmPl.VRAM and bo.moves == 2
    st = buf.attach(nic.dma)
    t = st.map_unlocked(BIDI)
    assert bo.pin_count == 1 and bo.mem_type is TtmPl.TT and st.map_pins == 1
    assert nic.dma_checksum(t, owner=bo.owner) == crc(data)
    with pytest.raises(DmaBufError) as e:
        gpu.evict(bo)
    assert e.value.errno == errno.EBUSY
    st.unmap_unlocked(t, BIDI)
    assert bo.pin_count == 0
    st.detach()
    buf.put()


# --------------------------------------------------------------------------- eviction


def test_eviction_with_dynamic_importer(machine: Machine, plat: Platform) -> None:
    gpu = plat.bind(Gpu, "gpu0", vram_size=16 * MiB)
    nic = plat.bind(Device, "nic0")
    a, data = filled_bo(gpu, 8 * MiB, seed=3)
    buf = gpu.export(a)
    imp = Importer(nic, buf)
    t_old = imp.map()
    assert a.mem_type is TtmPl.VRAM
    old_bar = a.bar_ranges()
    # the importer has DMA in flight: a 5 ms job, its fence published as READ
    buf.resv.lock()
    job = nic.submit(lambda: nic.dma_checksum(t_old, owner=a.owner), duration=0.005,
                     name="rdma read")
    buf.resv.reserve_fences(1)
    buf.resv.add_fence(job, DmaResvUsage.READ)
    buf.resv.unlock()
    with machine.trace.record("") as events:
        b = gpu.alloc_bo(12 * MiB, name="pressure")      # VRAM full: evicts the LRU BO (a)
    assert gpu.evictions == 1 and a.mem_type is TtmPl.TT and b.mem_type is TtmPl.VRAM
    names = [e.name for e in events]
    assert names.index("ttm_bo_evict") < names.index("dma_buf_invalidate_mappings")
    assert imp.invalidations == 1 and imp.stale
    # the eviction waited for the importer's fence before moving the bytes
    assert job.get_status() == 1 and job.error == 0
    move = next(e for e in events if e.name == "ttm_bo_move")
    done = next(e for e in events if e.name == "device_job_done"
                and e.fields["seqno"] == job.seqno and e.fields["timeline"] == "nic0.dma")
    assert events.index(done) < events.index(move)
    # stale DMA through the old mapping faults: the VRAM pages are free/reused
    with pytest.raises(IommuFault) as f:
        nic.dma_checksum(t_old, owner=a.owner)
    assert f.value.errno == errno.EFAULT
    assert len(machine.state(DmaFaultLog)) >= 1
    owners = set(plat.phys.owners_of(old_bar).tolist())
    assert a.owner not in owners
    # data intact after remap
    imp.map()
    assert imp.checksum(a.owner) == crc(data) and gpu.checksum(a) == crc(data)
    imp.close()
    buf.put()


def test_pinned_bo_never_moves_and_enomem(plat: Platform) -> None:
    gpu = plat.bind(Gpu, "gpu0", vram_size=16 * MiB)
    nic = plat.bind(Device, "nic0")
    pinned, pdata = filled_bo(gpu, 8 * MiB, seed=5, name="pinned")
    other, odata = filled_bo(gpu, 4 * MiB, seed=6, name="other")
    buf = gpu.export(pinned)
    imp = Importer(nic, buf)
    buf.resv.lock()
    imp.attach.pin()                                # all attachments P2P: pinned in VRAM
    buf.resv.unlock()
    assert pinned.pin_count == 1 and pinned.mem_type is TtmPl.VRAM and pinned.visible
    c = gpu.alloc_bo(8 * MiB, name="c")             # must evict: picks "other", not "pinned"
    assert other.mem_type is TtmPl.TT and pinned.mem_type is TtmPl.VRAM
    assert pinned.moves == 0 and c.mem_type is TtmPl.VRAM
    with pytest.raises(DmaBufError) as e:
        gpu.evict(pinned)
    assert e.value.errno == errno.EBUSY
    gpu.pin(c)
    with pytest.raises(DmaBufError) as e:
        gpu.alloc_bo(4 * MiB)                       # everything left in VRAM is pinned
    assert e.value.errno == errno.ENOMEM and "nothing can be evicted" in str(e.value)
    with pytest.raises(DmaBufError) as e:
        gpu.evict_vram(4 * MiB)
    assert e.value.errno == errno.ENOMEM
    assert gpu.checksum(pinned) == crc(pdata) and gpu.checksum(other) == crc(odata)
    imp.map()
    assert imp.checksum(pinned.owner) == crc(pdata) and imp.invalidations == 0
    buf.resv.lock()
    imp.attach.unpin()
    buf.resv.unlock()
    assert pinned.pin_count == 0
    imp.close()
    gpu.unpin(c)
    assert gpu.evict_vram() == 2 and gpu.vram_free == 16 * MiB
    assert pinned.mem_type is TtmPl.TT and gpu.checksum(pinned) == crc(pdata)
    buf.put()


def test_lru_order_and_explicit_eviction(plat: Platform) -> None:
    gpu = plat.bind(Gpu, "gpu0", vram_size=12 * MiB)
    bos = [filled_bo(gpu, 4 * MiB, seed=i)[0] for i in range(3)]
    assert gpu.lru == bos
    assert gpu.fill(bos[0], 0x11).wait_timeout(False, 10.0) > 0     # touch the oldest
    assert gpu.lru == [bos[1], bos[2], bos[0]]
    gpu.alloc_bo(4 * MiB)
    assert [b.mem_type for b in bos] == [TtmPl.VRAM, TtmPl.TT, TtmPl.VRAM]
    f = gpu.evict(bos[2])
    assert f is not None and f.get_status() == 1 and bos[2].mem_type is TtmPl.TT
    assert gpu.evict(bos[2]) is None                                   # not in VRAM
    assert gpu.read(bos[0], 0, 8).tolist() == [0x11] * 8


def test_small_bar_visible_window(plat: Platform) -> None:
    gpu = plat.bind(Gpu, "gpu0", vram_size=64 * MiB, visible_vram_size=16 * MiB)
    nic = plat.bind(Device, "nic0")
    assert gpu.vram_invisible is not None and gpu.vram_invisible.size == 48 * MiB
    bo, data = filled_bo(gpu, 8 * MiB)
    assert bo.mem_type is TtmPl.VRAM and not bo.visible              # invisible part first
    with pytest.raises(DmaBufError) as e:
        bo.bar_ranges()
    assert e.value.errno == errno.EINVAL
    buf = gpu.export(bo)
    imp = Importer(nic, buf)
    imp.map()                                                         # moved into the window
    assert bo.mem_type is TtmPl.VRAM and bo.visible and bo.moves == 1
    assert bo.cpu_access_required
    assert imp.checksum(bo.owner) == crc(data)
    with pytest.raises(DmaBufError) as e:
        gpu.alloc_bo(17 * MiB, cpu_access_required=True)
    assert e.value.errno == errno.ENOMEM
    imp.close()
    buf.put()
    # a CPU mapping of a BO in invisible VRAM faults it into the window (or GTT)
    hidden, hdata = filled_bo(gpu, 4 * MiB, seed=4)
    assert hidden.mem_type is TtmPl.VRAM and not hidden.visible
    hbuf = gpu.export(hidden)
    vma = Vma(length=hidden.size)
    hbuf.mmap(vma, 0)
    assert np.array_equal(vma.view.read(0, 4096), hdata[:4096])
    assert vma.view.faults == 1 and hidden.visible and hidden.moves == 1
    hbuf.put()


def test_unbind_gpu_frees_its_bos(plat: Platform) -> None:
    gpu = plat.bind(Gpu, "gpu0", vram_size=16 * MiB)
    bo, _ = filled_bo(gpu, 4 * MiB)
    gtt = gpu.alloc_bo(MiB, domain=AmdgpuDomain.GTT)
    plat.unbind("gpu0")
    assert gpu.removed and bo.freed and gtt.freed and gpu.gtt_used == 0
    assert gpu.pdev.p2pdma is not None        # the topology's own provider state stays
    with pytest.raises(DmaBufError) as e:
        gpu.alloc_bo(4096)
    assert e.value.errno == errno.ENODEV
    again = plat.bind(Gpu, "gpu0", vram_size=16 * MiB)     # same VRAM region, all free
    assert again.vram_visible is gpu.vram_visible and again.vram_free == 16 * MiB
    b2, d2 = filled_bo(again, 4 * MiB)
    assert again.checksum(b2) == crc(d2)
    plat.unbind("gpu0")
    with pytest.raises(DmaBufError) as e:
        plat.bind(Gpu, "gpu0", vram_size=32 * MiB)
    assert e.value.errno == errno.EBUSY


def test_free_bo_poisons_vram(plat: Platform) -> None:
    gpu = plat.bind(Gpu, "gpu0", vram_size=16 * MiB)
    bo, _ = filled_bo(gpu, 4 * MiB, cpu_access_required=True)
    bar = bo.bar_ranges()
    gpu.free_bo(bo)
    assert bo.freed and gpu.vram_free == 16 * MiB
    assert set(plat.phys.read(bar)[:4096].tolist()) == {POISON_FREE}
    assert set(plat.phys.owners_of(bar).tolist()) == {-1}


# --------------------------------------------------------------------------- CPU access


def test_cpu_access_mmap_vmap(plat: Platform) -> None:
    gpu = plat.bind(Gpu, "gpu0", vram_size=GiB)
    bo, data = filled_bo(gpu, 1 * MiB)
    buf = gpu.export(bo)
    assert bo.mem_type is TtmPl.VRAM
    buf.begin_cpu_access(2)                          # DMA_FROM_DEVICE: a CPU read
    assert bo.mem_type is TtmPl.TT                   # moved to GTT for fast CPU reads
    vma = Vma(length=64 * 1024)
    buf.mmap(vma, 1)
    view = vma.view
    assert np.array_equal(view.read(), data[4096:4096 + 64 * 1024])
    view.write(0, b"\xaa" * 16)
    buf.end_cpu_access(2)
    assert gpu.read(bo, 4096, 16).tolist() == [0xAA] * 16
    # the mapping re-faults after a move: now through the BAR window
    gpu.validate(bo)
    assert bo.mem_type is TtmPl.VRAM
    assert view.read(0, 16).tolist() == [0xAA] * 16
    # vmap pins, vunmap unpins
    m = buf.vmap_unlocked()
    assert bo.pin_count == 1 and m.read(4096, 4).tolist() == [0xAA] * 4
    buf.vunmap_unlocked(m)
    assert bo.pin_count == 0
    buf.put()
    gpu.free_bo(bo)
    with pytest.raises(DmaBufError) as e:
        view.read(0, 1)
    assert e.value.errno == errno.EFAULT


# --------------------------------------------------------------------------- GPU jobs


def test_gpu_jobs_and_fence_traffic(plat: Platform) -> None:
    gpu = plat.bind(Gpu, "gpu0", vram_size=GiB)
    a = gpu.alloc_bo(MiB, name="a")
    b = gpu.alloc_bo(MiB, domain=AmdgpuDomain.GTT, name="b")
    assert b.mem_type is TtmPl.TT and b.allowed_domains == AmdgpuDomain.GTT
    assert a.allowed_domains == AmdgpuDomain.VRAM | AmdgpuDomain.GTT
    f1 = gpu.fill(a, 0x42, duration=0.02)
    f2 = gpu.copy(b, a)                              # waits for the fill (implicit sync)
    a.resv.lock()
    pending = [(f.context, f.seqno, u) for f, u in a.resv.for_each_fence(DmaResvUsage.BOOKKEEP)]
    a.resv.unlock()
    assert f2.wait_timeout(False, 10.0) > 0 and f1.get_status() == 1
    assert f1.timestamp is not None and f2.timestamp is not None
    assert f1.timestamp <= f2.timestamp
    assert f1.context == gpu.queue("gfx").context and f2.context == gpu.queue("sdma").context
    assert gpu.read(b, 0, 4).tolist() == [0x42] * 4
    a.resv.lock()
    entries = [(f.context, f.seqno, u) for f, u in a.resv.for_each_fence(DmaResvUsage.BOOKKEEP)]
    a.resv.unlock()
    # the fill (WRITE, gfx) and the copy (READ, sdma); a fill already signalled when the copy was
    # added would have been replaced by it (dma_resv_add_fence reuses signalled entries)
    assert entries == pending
    assert entries[-1] == (f2.context, f2.seqno, DmaResvUsage.READ)
    assert entries[:-1] in ([], [(f1.context, f1.seqno, DmaResvUsage.WRITE)])

    def boom(r: list[np.ndarray]) -> None:
        raise DmaBufError(errno.ENOSPC, "shader out of scratch")

    bad = gpu.compute([(a, True)], boom, name="bad")
    assert bad.wait_timeout(False, 10.0) > 0 and bad.error == -errno.ENOSPC
    ok = gpu.compute([(a, False), (b, True)], lambda r: plat.phys.copy(r[1], r[0]),
                     implicit_sync=False)
    assert ok.wait_timeout(False, 10.0) > 0 and ok.error == 0
    b.resv.lock()
    bk = [(f.context, f.seqno, u) for f, u in b.resv.for_each_fence(DmaResvUsage.BOOKKEEP)]
    b.resv.unlock()
    assert (ok.context, ok.seqno, DmaResvUsage.BOOKKEEP) in bk
    assert gpu.wait_idle(10.0)


# --------------------------------------------------------------------------- schedules


def test_eviction_vs_importer_dma_race() -> None:
    """An importer mapping + DMA-ing while the exporter evicts/re-validates, over seeds."""

    def scenario(m: Machine) -> None:
        p = Platform(machine=m, ram_size=GiB)
        gpu = p.bind(Gpu, "gpu0", vram_size=8 * MiB)
        nic = p.bind(Device, "nic0")
        bo, data = filled_bo(gpu, 1 * MiB, seed=9)
        expect = crc(data)
        buf = gpu.export(bo)
        imp = Importer(nic, buf)
        results: list[int] = []

        def importer() -> None:
            for _ in range(3):
                buf.resv.lock()
                try:
                    t = imp.map_locked()
                    job = nic.submit(lambda t=t: results.append(  # type: ignore[misc]
                        nic.dma_checksum(t, owner=bo.owner)), duration=0.0005)
                    buf.resv.reserve_fences(1)
                    buf.resv.add_fence(job, DmaResvUsage.READ)
                finally:
                    buf.resv.unlock()
                assert job.wait_timeout(False, 5.0) > 0
                assert job.error == 0, job.error

        def evictor() -> None:
            for _ in range(2):
                gpu.evict(bo)
                filler = gpu.alloc_bo(1 * MiB)     # reuses the pages bo just left
                gpu.validate(bo)                    # back to VRAM, elsewhere
                gpu.free_bo(filler)

        t1 = m.sched.spawn(importer, name="importer")
        t2 = m.sched.spawn(evictor, name="evictor")
        assert t1.join(30.0) and t2.join(30.0)
        t1.result()
        t2.result()
        assert results == [expect] * 3
        assert nic.faults == []
        assert gpu.queue("sdma").exceptions == [] and nic.queue().exceptions == []
        assert gpu.evictions == 2 and bo.moves == 4
        imp.close()
        buf.put()
        p.close()

    res = explore(scenario, 5)
    assert res.seeds == 5
