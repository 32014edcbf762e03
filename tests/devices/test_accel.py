"""Tests of dmabuf.devices.accel: the habanalabs-like static exporter of device memory."""

from __future__ import annotations

import errno
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from dmabuf.buf.device import DirectDev
from dmabuf.buf.dma_buf import DmaBuf, DmaBufAttachOps, Vma
from dmabuf.buf.file import current_process
from dmabuf.buf.sg_table import SgTable
from dmabuf.devices import Device, Platform
from dmabuf.devices.accel import DRAM_PHYS_BASE, HL_MEM_CONTIGUOUS, Accel
from dmabuf.errors import DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.mm.phys import PAGE_SIZE

MiB = 1 << 20
BIDI = 0


@pytest.fixture
def plat(machine: Machine) -> Iterator[Platform]:
    with Platform(machine=machine) as p:
        yield p


@pytest.fixture
def acc(plat: Platform) -> Accel:
    return plat.bind(Accel, "acc0")


@pytest.fixture
def nic(plat: Platform) -> Device:
    d = plat.bind(Device, "nic1")
    d.dma.max_seg_size = 1 * MiB
    return d


def pattern(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def wait(f: object) -> int:
    from dmabuf.sync.dma_fence import DmaFence
    assert isinstance(f, DmaFence)
    assert f.wait_timeout(False, 10.0) > 0
    err = f.error
    f.put()
    return err


def attach_p2p(buf: DmaBuf, dev: Device) -> object:
    return buf.dynamic_attach(dev.dma, DmaBufAttachOps(True), None)


# ---------------------------------------------------------------- end to end


def test_export_by_va_with_offset_moves_real_bytes(acc: Accel, nic: Device) -> None:
    data = pattern(8 * MiB)
    h = acc.mem_alloc(8 * MiB)
    va = acc.mem_map(h)
    assert wait(acc.write_mem(va, data)) == 0
    buf = acc.export_dmabuf(va, 4 * MiB, offset=2 * MiB)
    assert buf.size == 4 * MiB and buf.exp_name == "habanalabs"
    assert not buf.is_dynamic                       # no pin op: static, never moves
    at = attach_p2p(buf, nic)
    assert at.peer2peer                             # acc0 -> nic1 through the host bridge
    t = at.map_unlocked(BIDI)
    assert isinstance(t, SgTable) and t.is_dma_only
    assert t.nents == 4                             # 4 MiB cut at the importer's 1 MiB segments
    want = data[2 * MiB:6 * MiB]
    assert nic.dma_checksum(t, owner=buf.priv.owner) == zlib.crc32(want.tobytes())
    # the importer writes into the accelerator's HBM; the accelerator reads it back
    nic.dma_write(t, b"\xa5" * 4096, owner=buf.priv.owner, offset=PAGE_SIZE)
    got = acc.read_mem(va + 2 * MiB + PAGE_SIZE, 4096)
    assert bytes(got) == b"\xa5" * 4096
    at.unmap_unlocked(t, BIDI)
    at.detach()
    assert acc.dmabuf_export_cnt == 1
    buf.put()
    assert acc.dmabuf_export_cnt == 0
    # release freed the export bookkeeping, not the memory
    assert bytes(acc.read_mem(va, 16)) == data[:16].tobytes()
    acc.mem_unmap(va)
    acc.mem_free(h)


def test_export_by_physical_address_no_mmu(plat: Platform, nic: Device) -> None:
    acc = plat.bind(Accel, "acc0", virtual_memory=False)
    assert acc.mem_alloc(MiB) == 0                   # Gaudi1: only accounted
    base = acc.dram_user_base_address
    data = pattern(2 * MiB, seed=7)
    assert wait(acc.write_mem(base, data)) == 0
    buf = acc.export_dmabuf(base, 2 * MiB)
    assert buf.priv.owner is None and buf.priv.device_phys_addr == base
    at = attach_p2p(buf, nic)
    t = at.map_unlocked(BIDI)
    assert nic.dma_checksum(t, owner=None) == zlib.crc32(data.tobytes())
    # the sg entries are the BAR addresses (behind the importer's IOMMU: IOVAs mapping them)
    phys = nic.dma.translate(t.dma_ranges())
    assert int(phys["addr"][0]) == acc.dram_to_bar(base)
    at.unmap_unlocked(t, BIDI)
    at.detach()
    buf.put()


def test_export_fd_and_close_releases(acc: Accel, nic: Device, machine: Machine) -> None:
    h = acc.mem_alloc(MiB)
    va = acc.mem_map(h)
    fd = acc.export_dmabuf_fd(va, MiB)
    fds = current_process(machine).fds
    assert fds.is_cloexec(fd)
    assert acc.dmabuf_export_cnt == 1
    with pytest.raises(DmaBufError) as ei:
        acc.mem_unmap(va)                           # memory is exported
    assert ei.value.errno == errno.EINVAL
    fds.close(fd)
    assert acc.dmabuf_export_cnt == 0
    acc.mem_unmap(va)
    acc.mem_free(h)


def test_noncontiguous_pages_break_sg_entries(acc: Accel, nic: Device) -> None:
    nic.dma.max_seg_size = 64 * MiB
    a = acc.mem_alloc(2 * MiB)
    b = acc.mem_alloc(2 * MiB)
    acc.mem_free(a)                                 # leaves a 2 MiB hole before b
    c = acc.mem_alloc(4 * MiB)                      # one page in the hole, one after b
    va = acc.mem_map(c)
    buf = acc.export_dmabuf(va, 4 * MiB)
    at = attach_p2p(buf, nic)
    t = at.map_unlocked(BIDI)
    assert t.nents == 2
    phys = nic.dma.translate(t.dma_ranges())
    assert phys.size == 2 and int(phys["addr"][1]) - int(phys["addr"][0]) == 4 * MiB
    at.unmap_unlocked(t, BIDI)
    at.detach()
    buf.put()
    cv = acc.mem_map(acc.mem_alloc(4 * MiB, flags=HL_MEM_CONTIGUOUS))
    buf = acc.export_dmabuf(cv, 4 * MiB)
    at = attach_p2p(buf, nic)
    t = at.map_unlocked(BIDI)
    assert t.nents == 1                             # contiguous: one chunk under 64 MiB segments
    at.unmap_unlocked(t, BIDI)
    at.detach()
    buf.put()
    acc.mem_free(b)


# ---------------------------------------------------------------- the P2P rule: -EPERM at map


def test_non_p2p_importers_attach_but_map_eperm(acc: Accel, nic: Device, plat: Platform) -> None:
    va = acc.mem_map(acc.mem_alloc(MiB))
    buf = acc.export_dmabuf(va, MiB)
    static = buf.attach(nic.dma)                    # a static importer: allow_peer2peer false
    assert not static.peer2peer
    foreign = buf.dynamic_attach(DirectDev("not-pci", plat.phys), DmaBufAttachOps(True), None)
    assert not foreign.peer2peer                    # attach cleared it: distance < 0
    for at in (static, foreign):
        with pytest.raises(DmaBufError) as ei:
            at.map_unlocked(BIDI)
        assert ei.value.errno == errno.EPERM
        at.detach()
    buf.put()


def test_map_with_tiny_max_segment_is_einval(acc: Accel, nic: Device) -> None:
    va = acc.mem_map(acc.mem_alloc(MiB))
    buf = acc.export_dmabuf(va, MiB)
    at = attach_p2p(buf, nic)
    nic.dma.max_seg_size = 2048
    with pytest.raises(DmaBufError) as ei:
        at.map_unlocked(BIDI)
    assert ei.value.errno == errno.EINVAL
    at.detach()
    buf.put()


def test_no_mmap_no_vmap(acc: Accel) -> None:
    va = acc.mem_map(acc.mem_alloc(MiB))
    buf = acc.export_dmabuf(va, MiB)
    with pytest.raises(DmaBufError) as ei:
        buf.mmap(Vma(PAGE_SIZE), 0)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as ei:
        buf.vmap_unlocked()
    assert ei.value.errno == errno.EINVAL
    buf.put()


# ---------------------------------------------------------------- export validation (errnos)


def test_export_validation_virtual(acc: Accel) -> None:
    h = acc.mem_alloc(4 * MiB)
    va = acc.mem_map(h)
    host_va = acc.map_host_va(0x7F00_0000_0000, MiB)
    cases = [
        (va + PAGE_SIZE, MiB, 0),           # not a memhash key
        (host_va, MiB, 0),                  # a host mapping: invalid handle
        (va, PAGE_SIZE - 1, 0),             # size < PAGE_SIZE
        (va, MiB, 100),                     # offset not page aligned
        (va, 3 * MiB, 2 * MiB),             # offset + size beyond the allocation
        (va, 5 * MiB, 0),
    ]
    for addr, size, off in cases:
        with pytest.raises(DmaBufError) as ei:
            acc.export_dmabuf(addr, size, offset=off)
        assert ei.value.errno == errno.EINVAL, (addr, size, off)
    assert acc.dmabuf_export_cnt == 0
    acc.mem_unmap(va)                               # every failure dropped its export count
    acc.mem_free(h)


def test_export_validation_no_mmu(plat: Platform) -> None:
    acc = plat.bind(Accel, "acc0", virtual_memory=False, dram_size=64 * MiB)
    base, end = acc.dram_user_base_address, acc.dram_end_address
    assert base == DRAM_PHYS_BASE + acc.page_size
    cases = [
        (base, MiB, PAGE_SIZE),             # offset without virtual memory
        (base + 100, MiB, 0),               # unaligned address
        (base, 100, 0),                     # size < PAGE_SIZE
        (DRAM_PHYS_BASE, MiB, 0),           # below the user DRAM (driver reserved)
        (end - MiB, 2 * MiB, 0),            # past the end of the DRAM
    ]
    for addr, size, off in cases:
        with pytest.raises(DmaBufError) as ei:
            acc.export_dmabuf(addr, size, offset=off)
        assert ei.value.errno == errno.EINVAL, (addr, size, off)
    acc.export_dmabuf(end - MiB, MiB).put()         # the last MiB is fine


def test_memory_ioctl_errnos(acc: Accel) -> None:
    with pytest.raises(DmaBufError) as ei:
        acc.mem_alloc(0)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as ei:
        acc.mem_alloc(MiB, page_size=3 * PAGE_SIZE)
    assert ei.value.errno == errno.EINVAL
    h = acc.mem_alloc(MiB)
    va = acc.mem_map(h)
    with pytest.raises(DmaBufError) as ei:
        acc.mem_free(h)                             # still mapped
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as ei:
        acc.mem_free(999)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as ei:
        acc.mem_map(999)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as ei:
        acc.mem_unmap(va + PAGE_SIZE)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as ei:
        acc.mem_alloc(acc.dram_region.size)         # more than the whole DRAM
    assert ei.value.errno == errno.ENOMEM
    acc.mem_unmap(va)
    acc.mem_free(h)


def test_device_jobs_fault_on_unmapped_va(acc: Accel) -> None:
    h = acc.mem_alloc(MiB)
    va = acc.mem_map(h)
    assert wait(acc.fill_mem(va, 0x3C, MiB)) == 0
    assert bytes(acc.read_mem(va + MiB - 4, 4)) == b"\x3c" * 4
    acc.mem_unmap(va)
    assert wait(acc.write_mem(va, b"x")) == -errno.EFAULT
    assert acc.faults and acc.faults[-1].op == "write_mem"
    with pytest.raises(DmaBufError) as ei:
        acc.read_mem(va, 4)
    assert ei.value.errno == errno.EFAULT
    acc.mem_free(h)


def test_freed_memory_faults_a_stale_owner_check(acc: Accel, nic: Device) -> None:
    # The exporter itself prevents freeing exported memory; an importer that kept raw DMA
    # addresses past the export's life is caught by the owner check once the pages are freed.
    h = acc.mem_alloc(MiB)
    va = acc.mem_map(h)
    buf = acc.export_dmabuf(va, MiB)
    owner = buf.priv.owner
    at = attach_p2p(buf, nic)
    t = at.map_unlocked(BIDI)
    dma = t.dma_ranges()
    at.unmap_unlocked(t, BIDI)
    at.detach()
    buf.put()
    acc.mem_unmap(va)
    acc.mem_free(h)
    with pytest.raises(IommuFault):
        nic.dma_read(dma, owner=owner, length=16)   # unmapped IOVA (and poisoned pages)


def test_remove_with_live_export_warns(plat: Platform, machine: Machine) -> None:
    acc = plat.bind(Accel, "acc0")
    va = acc.mem_map(acc.mem_alloc(MiB))
    buf = acc.export_dmabuf(va, MiB)
    plat.unbind("acc0")
    assert any(rule == "habanalabs" for rule, _ in machine.warnings)
    with pytest.raises(DmaBufError) as ei:
        acc.export_dmabuf(va, MiB)
    assert ei.value.errno == errno.ENODEV
    buf.put()
    assert acc.dmabuf_export_cnt == 0
    machine.warnings.clear()


def test_bind_needs_the_dram_bar(plat: Platform) -> None:
    with pytest.raises(DmaBufError) as ei:
        plat.bind(Accel, "acc0", dram_bar=1)
    assert ei.value.errno == errno.ENODEV
    with pytest.raises(DmaBufError) as ei:
        plat.bind(Accel, "nic1")                    # not a processing accelerator
    assert ei.value.errno == errno.ENODEV
