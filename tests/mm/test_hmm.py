"""mm/hmm.py (hmm_range_fault) and the HMM mirror device (lib/test_hmm.c model).

Unit tests drive ``hmm_range_fault`` directly on a layer-2 address space; the acceptance tests
use :class:`dmabuf.devices.hmm_mirror.HmmMirror` on a platform, where every device access is a
real DMA through the device's translation (IOVA behind the IOMMU, bus addresses for P2P).
"""

from __future__ import annotations

import errno
import zlib

import numpy as np
import pytest

from dmabuf.devices import Platform
from dmabuf.devices.hmm_mirror import HmmMirror, Mirror
from dmabuf.devices.nvme import Nvme
from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.mm.hmm import (
    HMM_PFN_DMA_MAPPED,
    HMM_PFN_ERROR,
    HMM_PFN_P2PDMA,
    HMM_PFN_P2PDMA_BUS,
    HMM_PFN_REQ_FAULT,
    HMM_PFN_REQ_WRITE,
    HMM_PFN_VALID,
    HMM_PFN_WRITE,
    HmmRange,
    hmm_pfn_to_map_order,
    hmm_pfn_to_phys,
    hmm_range_fault,
)
from dmabuf.mm.memremap import zero_page
from dmabuf.mm.mmu_notifier import (
    MmuIntervalNotifier,
    MmuNotifierRange,
    mmu_interval_notifier_insert,
    mmu_interval_read_begin,
    mmu_interval_read_retry,
    mmu_interval_set_seq,
)
from dmabuf.mm.phys import PAGE_SIZE
from dmabuf.mm.vma import (
    MADV_DONTNEED,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
    MmStruct,
    Vma,
    remap_pfn_range,
)
from dmabuf.pci import loads_toml
from dmabuf.pci.topo_toml import default_topology_path
from dmabuf.sched import explore

from .mm_helpers import FakeDevmem, FakeP2pmem, make_phys

MiB = 1 << 20
FIXTURES = "/work/shared/fixtures/sysfs-roots"


class Sub:
    """A minimal driver: interval notifier + user lock + invalidation counter."""

    def __init__(self, mm: MmStruct, start: int, length: int) -> None:
        self.mm = mm
        self.lock = mm.machine.sched.lock("test.user_lock")
        self.invalidations = 0
        self.sub = MmuIntervalNotifier()
        mmu_interval_notifier_insert(self.sub, mm, start, length, self)

    def invalidate(self, sub: MmuIntervalNotifier, rng: MmuNotifierRange, cur_seq: int) -> bool:
        with self.lock:
            mmu_interval_set_seq(sub, cur_seq)
            self.invalidations += 1
        return True

    def fault(self, start: int, npages: int, default: int = 0, mask: int = 0,
              pfns: np.ndarray | None = None, owner: object = None) -> HmmRange:
        rng = HmmRange(self.sub, mmu_interval_read_begin(self.sub), start,
                       start + npages * PAGE_SIZE,
                       hmm_pfns=pfns if pfns is not None else np.zeros(npages, np.uint64),
                       default_flags=default, pfn_flags_mask=mask, dev_private_owner=owner)
        with self.mm.read_locked():
            hmm_range_fault(rng)
        return rng

    def fault_retry(self, start: int, npages: int, default: int) -> tuple[HmmRange, int]:
        """The canonical loop: retry -EBUSY and read_retry; returns (range, retries)."""
        retries = 0
        while True:
            try:
                rng = self.fault(start, npages, default)
            except DmaBufError as e:
                assert e.errno == errno.EBUSY
                retries += 1
                assert retries < 100
                continue
            with self.lock:
                if mmu_interval_read_retry(self.sub, rng.notifier_seq):
                    retries += 1
                    continue
                return rng, retries


@pytest.fixture
def mm(machine: Machine) -> MmStruct:
    return MmStruct(make_phys(machine), name="proc")


# ------------------------------------------------------------------------------------------------
# hmm_range_fault, unit level
# ------------------------------------------------------------------------------------------------


def test_snapshot_without_faulting(mm: MmStruct) -> None:
    a = mm.mmap(4 * PAGE_SIZE)
    mm.write(a + PAGE_SIZE, b"x")
    d = Sub(mm, a - PAGE_SIZE, 6 * PAGE_SIZE)
    rng = d.fault(a - PAGE_SIZE, 6)             # no request flags: report, never fault
    pfn, _ = mm.lookup(a, 4)
    assert int(rng.hmm_pfns[0]) == HMM_PFN_ERROR     # no VMA
    assert int(rng.hmm_pfns[1]) == 0                 # hole in a VMA
    assert int(rng.hmm_pfns[2]) == HMM_PFN_VALID | HMM_PFN_WRITE | int(pfn[1])
    assert int(rng.hmm_pfns[3]) == 0 and int(rng.hmm_pfns[4]) == 0
    assert int(rng.hmm_pfns[5]) == HMM_PFN_ERROR     # past the VMA
    assert mm.stats["faults"] == 1                   # only the CPU write faulted
    assert hmm_pfn_to_phys(rng.hmm_pfns[2]) == int(pfn[1]) << 12
    assert hmm_pfn_to_map_order(rng.hmm_pfns[2]) == 0


def test_read_fault_maps_zero_pages_read_only(mm: MmStruct) -> None:
    a = mm.mmap(3 * PAGE_SIZE)
    d = Sub(mm, a, 3 * PAGE_SIZE)
    rng = d.fault(a, 3, HMM_PFN_REQ_FAULT)
    z = zero_page(mm.phys) >> 12
    assert [int(x) for x in rng.hmm_pfns] == [HMM_PFN_VALID | z] * 3
    assert d.invalidations == 0


def test_write_fault_on_zero_pages_cows_and_returns_ebusy_first(mm: MmStruct) -> None:
    a = mm.mmap(3 * PAGE_SIZE)
    d = Sub(mm, a, 3 * PAGE_SIZE)
    d.fault(a, 3, HMM_PFN_REQ_FAULT)
    with pytest.raises(DmaBufError) as e:            # our own COW invalidated the range
        d.fault(a, 3, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE)
    assert e.value.errno == errno.EBUSY and d.invalidations == 1
    rng, retries = d.fault_retry(a, 3, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE)
    assert retries == 0
    pfn, _ = mm.lookup(a, 3)
    assert [int(x) for x in rng.hmm_pfns] == \
        [HMM_PFN_VALID | HMM_PFN_WRITE | int(p) for p in pfn]


def test_pfn_flags_mask_selects_pages(mm: MmStruct) -> None:
    a = mm.mmap(4 * PAGE_SIZE)
    d = Sub(mm, a, 4 * PAGE_SIZE)
    req = np.array([0, HMM_PFN_REQ_FAULT, 0, HMM_PFN_REQ_FAULT], dtype=np.uint64)
    rng = d.fault(a, 4, 0, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE, pfns=req)
    valid = (rng.hmm_pfns & np.uint64(HMM_PFN_VALID)) != 0
    assert list(valid) == [False, True, False, True]
    _, pte = mm.lookup(a, 4)
    assert [bool(p) for p in pte] == [False, True, False, True]
    # mask 0: per-page requests are ignored, only default_flags count
    rng2 = d.fault(a, 4, 0, 0, pfns=np.full(4, HMM_PFN_REQ_FAULT, dtype=np.uint64))
    assert [bool(x & np.uint64(HMM_PFN_VALID)) for x in rng2.hmm_pfns] == [False, True,
                                                                            False, True]


def test_sticky_dma_flags_survive(mm: MmStruct) -> None:
    a = mm.mmap(2 * PAGE_SIZE)
    d = Sub(mm, a, 2 * PAGE_SIZE)
    sticky = HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA
    pfns = np.array([sticky, 0], dtype=np.uint64)
    rng = d.fault(a, 2, HMM_PFN_REQ_FAULT, pfns=pfns)
    assert int(rng.hmm_pfns[0]) & sticky == sticky and int(rng.hmm_pfns[1]) & sticky == 0
    assert int(rng.hmm_pfns[0]) & HMM_PFN_VALID


def test_eperm_efault_einval(mm: MmStruct) -> None:
    ro = mm.mmap(2 * PAGE_SIZE, PROT_READ)
    d = Sub(mm, ro - 4 * PAGE_SIZE, 8 * PAGE_SIZE)
    with pytest.raises(DmaBufError) as e:
        d.fault(ro, 2, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE)
    assert e.value.errno == errno.EPERM
    with pytest.raises(DmaBufError) as e:
        d.fault(ro - 2 * PAGE_SIZE, 2, HMM_PFN_REQ_FAULT)    # no VMA, fault requested
    assert e.value.errno == errno.EFAULT
    for bad in ((ro + 1, ro + PAGE_SIZE), (ro, ro)):
        with pytest.raises(DmaBufError) as e, mm.read_locked():
            hmm_range_fault(HmmRange(d.sub, 0, *bad, hmm_pfns=np.zeros(1, np.uint64)))
        assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e, mm.read_locked():
        hmm_range_fault(HmmRange(d.sub, mmu_interval_read_begin(d.sub), ro, ro + PAGE_SIZE,
                                 hmm_pfns=np.zeros(2, np.uint64)))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(ContractViolation):                    # mmap lock not held
        hmm_range_fault(HmmRange(d.sub, mmu_interval_read_begin(d.sub), ro, ro + PAGE_SIZE))


class BarFile:
    def __init__(self, base: int) -> None:
        self.base = base

    def mmap(self, vma: Vma) -> None:
        remap_pfn_range(vma, vma.start, self.base >> 12, vma.end - vma.start)


def test_pfnmap_is_invisible_but_p2p_pages_are_visible(mm: MmStruct) -> None:
    bar = mm.phys.region("bar")
    raw = mm.mmap(2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=BarFile(bar.base))
    d = Sub(mm, raw, 2 * PAGE_SIZE)
    rng = d.fault(raw, 2)
    assert [int(x) for x in rng.hmm_pfns] == [HMM_PFN_ERROR] * 2
    with pytest.raises(DmaBufError) as e:
        d.fault(raw, 2, HMM_PFN_REQ_FAULT)
    assert e.value.errno == errno.EFAULT
    p2p = FakeP2pmem(mm.phys, "bar")
    p2p.next = bar.base + 2 * MiB
    pm = mm.mmap(2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=p2p)
    d2 = Sub(mm, pm, 2 * PAGE_SIZE)
    rng = d2.fault(pm, 2, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE)
    assert [int(x) for x in rng.hmm_pfns] == [
        HMM_PFN_VALID | HMM_PFN_WRITE | ((bar.base + 2 * MiB) >> 12) + k for k in range(2)]


def test_device_private_pages_owner_rules(mm: MmStruct) -> None:
    dev = FakeDevmem(mm.phys)
    a = mm.mmap(2 * PAGE_SIZE)
    mm.fill(a, 2 * PAGE_SIZE, 0x21)
    dev.to_device(mm, a, 2)
    dpfn, _ = mm.lookup(a, 2)
    d = Sub(mm, a, 2 * PAGE_SIZE)
    # the owner's own pages are reported without faulting
    rng = d.fault(a, 2, HMM_PFN_REQ_FAULT, owner=dev)
    assert [int(x) for x in rng.hmm_pfns] == [HMM_PFN_VALID | HMM_PFN_WRITE | int(p)
                                              for p in dpfn]
    assert dev.faults == 0
    # another owner: no request → 0; a request faults them back through migrate_to_ram
    rng = d.fault(a, 2, 0, owner=None)
    assert [int(x) for x in rng.hmm_pfns] == [0, 0]
    rng, _ = d.fault_retry(a, 2, HMM_PFN_REQ_FAULT)
    assert dev.faults == 2
    pfn, _ = mm.lookup(a, 2)
    assert [int(x) for x in rng.hmm_pfns] == [HMM_PFN_VALID | HMM_PFN_WRITE | int(p)
                                              for p in pfn]
    assert bytes(mm.phys.read(np.array([(int(pfn[0]) << 12, 2)], dtype=[
        ("addr", "<u8"), ("len", "<u8")]))) == b"\x21\x21"


def test_ebusy_retry_under_concurrent_invalidation_explored() -> None:
    """Driver loop vs a thread zapping and rewriting the range: the final mirror is exact."""

    def scenario(m: Machine) -> None:
        phys = make_phys(m, ram=16 * MiB, devmem=0, bar=0)
        mm = MmStruct(phys, name="p")
        a = mm.mmap(4 * PAGE_SIZE)
        mm.fill(a, 4 * PAGE_SIZE, 1)
        d = Sub(mm, a, 4 * PAGE_SIZE)

        def mutator() -> None:
            for v in (2, 3):
                mm.madvise(a, 4 * PAGE_SIZE, MADV_DONTNEED)
                mm.fill(a, 4 * PAGE_SIZE, v)

        t = m.sched.spawn(mutator, name="mutator")
        rng, _ = d.fault_retry(a, 4, HMM_PFN_REQ_FAULT)
        with d.lock:       # valid under the user lock: the pfns are the current pages
            if not mmu_interval_read_retry(d.sub, rng.notifier_seq):
                pfn, _ = mm.lookup(a, 4)
                assert [int(x) & ((1 << 53) - 1) for x in rng.hmm_pfns] == \
                    [int(p) for p in pfn]
        assert t.join(10.0)
        rng, _ = d.fault_retry(a, 4, HMM_PFN_REQ_FAULT)
        data = phys.read(np.array([(int(hmm_pfn_to_phys(rng.hmm_pfns[0])), 8)],
                                  dtype=[("addr", "<u8"), ("len", "<u8")]))
        assert bytes(data) == b"\x03" * 8

    explore(scenario, seeds=range(6))


# ------------------------------------------------------------------------------------------------
# the HMM mirror device (acceptance)
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def platform(machine: Machine) -> Platform:
    with Platform(ram_size=1 << 30, machine=machine) as p:
        yield p


def test_mirror_sees_cpu_writes_after_invalidation(platform: Platform) -> None:
    dev = platform.bind(HmmMirror, "gpu1")
    assert dev.dma.uses_dma_iommu                 # behind the IOMMU: one IOVA window
    mm = MmStruct(platform.phys, name="app")
    n = 16
    a = mm.mmap(n * PAGE_SIZE)
    mr = dev.mirror(mm, a, n * PAGE_SIZE)
    assert mr.dmap.state.size == n * PAGE_SIZE
    assert bytes(mr.read(a, 64)) == b"\0" * 64    # device faults: zero pages, read-only
    assert mr.stats == {"faults": 1, "hmm_retries": 0, "invalidations": 0, "dma_bytes": 64}
    data = np.random.default_rng(3).integers(0, 256, n * PAGE_SIZE, dtype=np.uint8)
    mm.write(a, data)                             # COW: the notifier invalidates the device
    assert mr.stats["invalidations"] == 1
    assert not bool(mr.mirrored()[0])
    assert np.array_equal(mr.read(a, n * PAGE_SIZE), data)   # re-fault, new bytes via DMA
    assert mr.stats["faults"] == 2
    mr.write(a + 10, b"from-device")              # device write: write fault, same pages
    assert bytes(mm.read(a + 10, 11)) == b"from-device"
    mm.munmap(a, n * PAGE_SIZE)
    assert not bool(mr.mirrored().any())
    with pytest.raises(DmaBufError) as e:         # nothing mapped any more
        mr.read(a, 1)
    assert e.value.errno == errno.EFAULT


class DeafMirror(Mirror):
    """A buggy driver: acknowledges invalidations but keeps its device mappings."""

    def _invalidate(self, rng: MmuNotifierRange, cur_seq: int) -> bool:
        with self.lock:
            mmu_interval_set_seq(self.notifier, cur_seq)
        return True


def test_a_mirror_that_ignores_invalidations_faults_on_the_freed_page(
        platform: Platform) -> None:
    dev = platform.bind(HmmMirror, "gpu1")
    mm = MmStruct(platform.phys, name="app")
    a = mm.mmap(PAGE_SIZE)
    mm.fill(a, PAGE_SIZE, 5)
    mr = DeafMirror(dev, mm, a, a + PAGE_SIZE)
    dev.mirrors.append(mr)
    assert bytes(mr.read(a, 2)) == b"\x05\x05"
    mm.madvise(a, PAGE_SIZE, MADV_DONTNEED)       # page freed and poisoned
    with pytest.raises(IommuFault):
        mr.read(a, 2)
    assert dev.faults and "poisoned" in dev.faults[-1].message


def test_mirror_retry_loop_under_concurrent_invalidation_free_mode(
        platform: Platform) -> None:
    dev = platform.bind(HmmMirror, "gpu1")
    mm = MmStruct(platform.phys, name="app")
    n = 8
    a = mm.mmap(n * PAGE_SIZE)
    mm.fill(a, n * PAGE_SIZE, 1)
    mr = dev.mirror(mm, a, n * PAGE_SIZE)
    sched = platform.machine.sched

    def mutator() -> None:
        for v in range(2, 12):
            mm.madvise(a, n * PAGE_SIZE, MADV_DONTNEED)
            mm.fill(a, n * PAGE_SIZE, v)

    t = sched.spawn(mutator, name="mutator")
    seen: set[int] = set()
    for _ in range(20):
        seen |= set(np.unique(mr.read(a, n * PAGE_SIZE)).tolist())
    assert t.join(30.0)
    assert seen <= set(range(0, 12))              # never poison (0x6b) or foreign bytes
    assert bytes(mr.read(a, 4)) == b"\x0b" * 4
    assert not dev.faults


def test_mirror_under_schedule_exploration() -> None:
    def scenario(m: Machine) -> None:
        with Platform(ram_size=1 << 28, machine=m, iommu="off") as p:
            dev = p.bind(HmmMirror, "gpu1")
            mm = MmStruct(p.phys, name="app")
            a = mm.mmap(4 * PAGE_SIZE)
            mm.fill(a, 4 * PAGE_SIZE, 1)
            mr = dev.mirror(mm, a, 4 * PAGE_SIZE)

            def mutator() -> None:
                for v in (2, 3):
                    mm.madvise(a, 4 * PAGE_SIZE, MADV_DONTNEED)
                    mm.fill(a, 4 * PAGE_SIZE, v)

            t = m.sched.spawn(mutator, name="mutator")
            vals = set(np.unique(mr.read(a, 4 * PAGE_SIZE)).tolist())
            assert vals <= {0, 1, 2, 3}
            assert t.join(10.0)
            assert bytes(mr.read(a, 4)) == b"\x03" * 4
            assert not dev.faults

    explore(scenario, seeds=range(4))


def test_migration_to_device_private_and_back_through_the_mirror(platform: Platform) -> None:
    dev = platform.bind(HmmMirror, "gpu1", devmem_size=4 * MiB)
    mm = MmStruct(platform.phys, name="app")
    n = 32
    a = mm.mmap(n * PAGE_SIZE)
    data = np.random.default_rng(11).integers(0, 256, n * PAGE_SIZE, dtype=np.uint8)
    mm.write(a, data)
    mr = dev.mirror(mm, a, n * PAGE_SIZE)
    assert mr.migrate_to_device(a, n) == n
    assert dev.stats["migrate_to_device"] == n
    assert bool(mr.local.all())                    # the device reaches its own memory
    assert np.array_equal(mr.read(a, n * PAGE_SIZE), data)
    mr.write(a, b"GPU")                            # device writes its private copy
    # The CPU touches a device-private page: migrate_to_ram brings it back, bytes intact.
    assert bytes(mm.read(a, 3)) == b"GPU"
    assert dev.stats["migrate_to_ram"] == 1
    assert not bool(mr.local[0]) and bool(mr.local[1:].all())
    expect = data.copy()
    expect[:3] = np.frombuffer(b"GPU", np.uint8)
    assert zlib.crc32(expect.tobytes()) == mm.checksum(a, n * PAGE_SIZE)
    assert dev.stats["migrate_to_ram"] == n
    assert dev.pgmap is not None and not np.any(dev.pgmap.refcount)
    assert np.array_equal(mr.read(a, n * PAGE_SIZE), expect)   # mirrored RAM again


def _p2p_setup(p: Platform, provider: str, client: str) -> tuple[Mirror, MmStruct, int]:
    nv = p.bind(Nvme, provider)
    dev = p.bind(HmmMirror, client)
    mm = MmStruct(p.phys, name="app")
    assert nv.p2pmem is not None
    a = mm.mmap(4 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=nv.p2pmem.allocate)
    mm.write(a, b"p2p-bytes")
    return dev.mirror(mm, a, 4 * PAGE_SIZE), mm, a


@pytest.mark.parametrize("client, flag", [("gpu0", HMM_PFN_P2PDMA_BUS),
                                          ("gpu1", HMM_PFN_P2PDMA)])
def test_mirror_of_p2pmem_uses_the_p2p_map_type(machine: Machine, client: str,
                                                 flag: int) -> None:
    with Platform(ram_size=1 << 28, machine=machine) as p:
        mr, _mm, a = _p2p_setup(p, "nvme0", client)
        assert bytes(mr.read(a, 9)) == b"p2p-bytes"
        pf = int(mr.dmap.pfn_list[0])
        assert pf & HMM_PFN_DMA_MAPPED and pf & flag
        other = HMM_PFN_P2PDMA if flag == HMM_PFN_P2PDMA_BUS else HMM_PFN_P2PDMA_BUS
        assert not pf & other
        if flag == HMM_PFN_P2PDMA_BUS:     # bus address = the BAR address on x86, no IOVA
            assert int(mr.dmap.dma_list[0]) == hmm_pfn_to_phys(pf)


def test_mirror_bus_address_uses_the_kernel_sign_of_bus_offset(machine: Machine) -> None:
    """hmm_dma_map_pfn: ``bus = paddr + bus_offset`` (pci_p2pdma_bus_addr_map)."""
    off = 0x100_0000_0000                   # the host bridge puts nvme0's CMB 1 TiB higher
    text = default_topology_path()
    with open(text, encoding="utf-8") as f:
        toml = f.read().replace("address = 0x11040000000\n",
                                f"address = 0x11040000000\n  bus_offset = {off}\n", 1)
    with Platform(loads_toml(toml), ram_size=1 << 28, machine=machine) as p:
        mr, _mm, a = _p2p_setup(p, "nvme0", "gpu0")
        assert bytes(mr.read(a, 9)) == b"p2p-bytes"         # the device's DMA decodes it back
        pf = int(mr.dmap.pfn_list[0])
        assert pf & HMM_PFN_P2PDMA_BUS and pf & HMM_PFN_DMA_MAPPED
        assert int(mr.dmap.dma_list[0]) == hmm_pfn_to_phys(pf) + off
        assert p.bars["0000:05:00.0 BAR2"].base <= hmm_pfn_to_phys(pf) < \
            p.bars["0000:05:00.0 BAR2"].end


def test_mirror_of_p2pmem_refused_across_intel_root_ports(machine: Machine) -> None:
    with Platform(f"{FIXTURES}/a_switch_intel/root", ram_size=1 << 28, machine=machine,
                  iommu="off") as p:
        mr, _mm, a = _p2p_setup(p, "0000:04:00.0", "0000:05:00.0")
        with pytest.raises(DmaBufError) as e:
            mr.read(a, 9)
        assert e.value.errno == errno.EREMOTEIO


def test_mirror_of_a_raw_bar_mapping_is_refused(platform: Platform) -> None:
    dev = platform.bind(HmmMirror, "gpu1")
    mm = MmStruct(platform.phys, name="app")
    bar = platform.bars["0000:03:00.0 BAR1"]
    a = mm.mmap(2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=BarFile(bar.base))
    mr = dev.mirror(mm, a, 2 * PAGE_SIZE)
    with pytest.raises(DmaBufError) as e:
        mr.read(a, 1)
    assert e.value.errno == errno.EFAULT


def test_fast_path_equals_the_general_walk(mm: MmStruct) -> None:
    """Uniform requests take the table-lookup fast path; per-page masks the general walk."""
    a = mm.mmap(6 * PAGE_SIZE)
    mm.write(a, b"x")                                  # page 0: anon RW
    mm.read(a + PAGE_SIZE, 1)                          # page 1: zero page
    mm.write(a + 2 * PAGE_SIZE, b"y")
    mm.mprotect(a + 2 * PAGE_SIZE, PAGE_SIZE, PROT_READ)   # page 2: anon RO (own VMA)
    p2p = FakeP2pmem(mm.phys)
    b = mm.mmap(2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=p2p)
    d = Sub(mm, b, a + 6 * PAGE_SIZE - b)
    n = (a + 6 * PAGE_SIZE - b) // PAGE_SIZE
    sticky = np.full(n, HMM_PFN_DMA_MAPPED, dtype=np.uint64)
    fast = d.fault(b, n, 0, 0, pfns=sticky.copy())
    slow = d.fault(b, n, 0, HMM_PFN_REQ_FAULT, pfns=sticky.copy())   # mask set: general walk
    assert np.array_equal(fast.hmm_pfns, slow.hmm_pfns)
    assert int(fast.hmm_pfns[0]) & HMM_PFN_VALID and int(fast.hmm_pfns[0]) & HMM_PFN_DMA_MAPPED
    assert mm.stats["faults"] == 3                     # only the three CPU faults above


def test_partial_invalidation_unlinks_only_that_part_of_the_iova_window(
        platform: Platform) -> None:
    dev = platform.bind(HmmMirror, "gpu1")
    mm = MmStruct(platform.phys, name="app")
    n = 8
    a = mm.mmap(n * PAGE_SIZE)
    mm.fill(a, n * PAGE_SIZE, 0x31)
    mr = dev.mirror(mm, a, n * PAGE_SIZE)
    assert bytes(mr.read(a, n * PAGE_SIZE)) == b"\x31" * (n * PAGE_SIZE)
    iova = int(mr.dmap.dma_list[0])
    dom = dev.dma.iommu
    assert dom is not None and dom.mapped_bytes(iova, n * PAGE_SIZE) == n * PAGE_SIZE
    mm.madvise(a + 3 * PAGE_SIZE, 2 * PAGE_SIZE, MADV_DONTNEED)
    assert list(mr.mirrored()) == [True] * 3 + [False] * 2 + [True] * 3
    assert dom.mapped_bytes(iova, n * PAGE_SIZE) == (n - 2) * PAGE_SIZE
    data = mr.read(a, n * PAGE_SIZE)              # re-faults the hole: zero pages
    assert bytes(data[3 * PAGE_SIZE:5 * PAGE_SIZE]) == b"\0" * (2 * PAGE_SIZE)
    assert bytes(data[:8]) == b"\x31" * 8
    assert dom.mapped_bytes(iova, n * PAGE_SIZE) == n * PAGE_SIZE
    platform.unbind("gpu1")                       # closes the mirror: all unlinked, IOVA freed
    assert dom.mapped_bytes(iova, n * PAGE_SIZE) == 0 and mr.closed


@pytest.mark.parametrize("flags", [HMM_PFN_REQ_FAULT, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE])
def test_fast_fault_planning_equals_the_general_walk(machine: Machine, flags: int) -> None:
    """Two identical address spaces: one walked with a uniform request (table path), the other
    with the same request per page (general path); outputs, PTEs and stats must match."""
    outs = []
    for uniform in (True, False):
        mm = MmStruct(make_phys(machine, ram=16 * MiB, devmem=0, bar=0), name="p")
        a = mm.mmap(8 * PAGE_SIZE)
        mm.write(a + PAGE_SIZE, b"x")
        mm.read(a + 3 * PAGE_SIZE, 1)
        d = Sub(mm, a, 8 * PAGE_SIZE)
        if uniform:
            rng, _ = d.fault_retry(a, 8, flags)
        else:
            retries = 0
            while True:
                try:
                    rng = d.fault(a, 8, 0, flags, pfns=np.full(8, flags, dtype=np.uint64))
                    break
                except DmaBufError as e:
                    assert e.errno == errno.EBUSY
                    retries += 1
                    assert retries < 10
        outs.append((rng.hmm_pfns.copy(), mm.lookup(a, 8), dict(mm.stats), d.invalidations))
    (p1, (f1, t1), s1, i1), (p2, (f2, t2), s2, i2) = outs
    assert np.array_equal(p1, p2) and np.array_equal(f1, f2) and np.array_equal(t1, t2)
    assert s1 == s2 and i1 == i2
    assert bool(np.all((p1 & np.uint64(HMM_PFN_VALID)) != 0))
