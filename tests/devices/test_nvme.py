"""devices/nvme.py: the CMB as a p2pmem provider, the sysfs ``allocate`` mmap rules, O_DIRECT.

The pair tests replay the real-kernel observations recorded in
``/work/shared/fixtures/sysfs-roots/<case>/expected.json`` (machine spec §4): for every
provider x client pair of the captured machine, an O_DIRECT read and write between the client's
disk and the provider's p2pmem must succeed with the right bytes, or fail with EREMOTEIO,
exactly as the kernel did.
"""

from __future__ import annotations

import errno
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dmabuf.devices import Device, Platform
from dmabuf.devices.nvme import (
    NVME_CMBSZ_RDS,
    NVME_CMBSZ_SQS,
    Nvme,
    VirtioBlk,
)
from dmabuf.dma.defs import DmaDataDirection
from dmabuf.dma.fabric import PciP2pdmaMapType
from dmabuf.dma.mapping import dma_map_phys_ranges, dma_unmap_phys_ranges
from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm.memremap import memremap_registry
from dmabuf.mm.phys import PAGE_SIZE
from dmabuf.mm.vma import MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE, MmStruct
from dmabuf.pci import loads_toml, pci_p2pmem_alloc_sgl, pci_p2pmem_find_many
from dmabuf.pci.p2pdma import map_types_idx

MiB = 1 << 20
ROOTS = Path("/work/shared/fixtures/sysfs-roots")
needs_fixtures = pytest.mark.skipif(not ROOTS.is_dir(),
                                    reason="shared fixtures (sysfs roots) not present")


def _pairs(case: str) -> list[Any]:
    f = ROOTS / case / "expected.json"
    if not f.is_file():
        return []
    return [pytest.param(case, p, id=f"{case}:{p['provider']}<-{p['client']}")
            for p in json.loads(f.read_text())["pairs"]]


def _bind_all(p: Platform, providers: list[str], clients: list[tuple[str, str]]) -> None:
    for bdf in providers:
        if bdf not in p.devices and bdf not in {d.bdf for d in p.devices.values()}:
            p.bind(Nvme, bdf)
    for bdf, drv in clients:
        if bdf in {d.bdf for d in p.devices.values()}:
            continue
        p.bind(VirtioBlk if drv.startswith("virtio") else Nvme, bdf)


@needs_fixtures
@pytest.mark.parametrize("case, pair", _pairs("a_switch_intel") + _pairs("b_switch_epyc")
                         + _pairs("e_multifunction_intel"))
def test_o_direct_pairs_match_the_real_kernel(machine: Machine, case: str,
                                             pair: dict[str, Any]) -> None:
    with Platform(ROOTS / case / "root", ram_size=256 * MiB, machine=machine,
                  iommu="off") as p:
        _bind_all(p, [pair["provider"]], [(pair["client"], pair["client_driver"])])
        prov = p.device(pair["provider"])
        client = p.device(pair["client"])
        assert isinstance(prov, Nvme) and prov.p2pmem is not None
        disk = client.disk  # type: ignore[attr-defined]
        mm = MmStruct(p.phys, name="p2p_pair")
        n = 256 * 1024
        avail = int(prov.p2pmem.available)
        buf = mm.mmap(n, PROT_READ | PROT_WRITE, MAP_SHARED, file=prov.p2pmem.allocate)
        assert int(prov.p2pmem.available) == avail - n
        media = np.random.default_rng(7).integers(0, 256, 2 * MiB, dtype=np.uint8)
        disk.media.write(0, media)
        ok = pair["real_result"] == "ok"
        if ok:
            assert disk.direct_read(mm, buf, n, 512 * 1024) == n
            assert mm.checksum(buf, n) == zlib.crc32(media[512 * 1024:512 * 1024 + n].tobytes())
        else:
            with pytest.raises(DmaBufError) as e:
                disk.direct_read(mm, buf, n, 512 * 1024)
            assert e.value.errno == errno.EREMOTEIO
        pattern = np.full(n, 0xA5, dtype=np.uint8)
        mm.write(buf, pattern)
        w_ok = pair["write_result"] == "ok"
        if w_ok:
            assert disk.direct_write(mm, buf, n, 0) == n
            assert bytes(disk.media.read(0, n)) == pattern.tobytes()
        else:
            with pytest.raises(DmaBufError) as e:
                disk.direct_write(mm, buf, n, 0)
            assert e.value.errno == errno.EREMOTEIO
            assert np.array_equal(disk.media.read(0, n), media[:n])   # nothing written
        # the kernel's log lines for this pair
        for line in pair["dmesg"]:
            assert line in p.topology.log
        if not ok and pair["client_p2pdma_queue"]:
            assert any(x.startswith(f"critical target error, dev {disk.name}, sector 1024")
                       for x in p.topology.log)
        mm.munmap(buf, n)
        assert int(prov.p2pmem.available) == avail


@needs_fixtures
def test_captured_provider_is_adopted_with_its_queues(machine: Machine) -> None:
    with Platform(ROOTS / "a_switch_intel" / "root", ram_size=256 * MiB,
                  machine=machine, iommu="off") as p:
        nv = p.bind(Nvme, "0000:04:00.0")
        assert nv.cmb_adopted and nv.cmb_size == 16 * MiB and nv.cmb_bar == 2
        assert nv.p2pmem is not None
        assert (nv.p2pmem.size, nv.p2pmem.available, nv.p2pmem.published) == \
            ("16777216\n", "16646144\n", "1\n")
        assert nv.disk.name == "nvme0n1"
        assert p.bind(Nvme, "0000:03:00.0").p2pmem is None      # no CMB BAR
        reg = memremap_registry(p.phys)
        pm = reg.pgmap_of(0xFB000000)
        assert pm is not None and pm.provider == "0000:04:00.0"
        p.unbind("0000:04:00.0")
        assert p.pci_dev("0000:04:00.0").p2pdma is not None     # adopted: left in place


def test_sysfs_allocate_mmap_rules(machine: Machine) -> None:
    with Platform(ram_size=256 * MiB, machine=machine) as p:
        nv = p.bind(Nvme, "nvme0")
        sysfs = nv.p2pmem
        assert sysfs is not None
        assert sysfs.read("size") == f"{1 << 30}\n" and sysfs.read("published") == "1\n"
        with pytest.raises(DmaBufError) as e:
            sysfs.read("allocate")
        assert e.value.errno == errno.EIO
        with pytest.raises(DmaBufError) as e:
            sysfs.read("nope")
        assert e.value.errno == errno.ENOENT
        mm = MmStruct(p.phys, name="fio")
        avail = int(sysfs.available)
        with pytest.raises(DmaBufError) as e:
            mm.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, file=sysfs.allocate)
        assert e.value.errno == errno.EINVAL
        assert p.topology.log[-1] == "nvme 0000:05:00.0: fio: fail, attempted private mapping"
        with pytest.raises(DmaBufError) as e:
            mm.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=sysfs.allocate,
                    offset=PAGE_SIZE)
        assert e.value.errno == errno.EINVAL
        assert p.topology.log[-1].endswith("attempted mapping with non-zero offset")
        with pytest.raises(DmaBufError) as e:
            mm.mmap(avail + PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                    file=sysfs.allocate)
        assert e.value.errno == errno.ENOMEM
        assert mm.vmas == [] and int(sysfs.available) == avail
        a = mm.mmap(2 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED, file=sysfs.allocate)
        mm.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=sysfs.allocate)
        assert int(sysfs.available) == avail - 2 * MiB - PAGE_SIZE
        cmb = p.bars["0000:05:00.0 BAR2"]
        pfn, _ = mm.lookup(a, 1)
        assert cmb.base <= int(pfn[0]) << 12 < cmb.end
        mm.write(a + 3, b"cmb")                     # CPU writes land in the BAR memory
        assert bytes(p.phys.view((int(pfn[0]) << 12) + 3, 3)) == b"cmb"
        mm.munmap(a, MiB)                            # partial unmap returns those pages
        assert int(sysfs.available) == avail - MiB - PAGE_SIZE
        mm.exit()
        assert int(sysfs.available) == avail


def test_amd_root_port_client_goes_through_the_host_bridge_with_an_iova(
        machine: Machine) -> None:
    with Platform(ram_size=256 * MiB, machine=machine) as p:       # AMD Zen, IOMMU lazy
        prov = p.bind(Nvme, "nvme0")
        client = p.bind(Nvme, "nvme1")
        assert prov.p2pmem is not None and client.dma.uses_dma_iommu
        mm = MmStruct(p.phys)
        buf = mm.mmap(MiB, PROT_READ | PROT_WRITE, MAP_SHARED, file=prov.p2pmem.allocate)
        data = np.random.default_rng(1).integers(0, 256, MiB, dtype=np.uint8)
        client.disk.media.write(4096, data)
        before = client.dma.stats["iommu_maps"]
        assert client.disk.direct_read(mm, buf, MiB, 4096) == MiB
        assert client.dma.stats["iommu_maps"] > before and client.dma.stats["bus_addr_maps"] == 0
        assert mm.checksum(buf, MiB) == zlib.crc32(data.tobytes())
        assert client.disk.stats == {"reads": 1, "writes": 0, "bytes": MiB, "errors": 0}


def test_same_switch_client_uses_bus_addresses(machine: Machine) -> None:
    with Platform(ram_size=256 * MiB, machine=machine) as p:
        prov = p.bind(Nvme, "nvme0")
        gpu = p.bind(Device, "gpu0")         # any DMA master under the switch
        assert prov.p2pmem is not None
        mm = MmStruct(p.phys)
        buf = mm.mmap(64 * 1024, PROT_READ | PROT_WRITE, MAP_SHARED, file=prov.p2pmem.allocate)
        mm.write(buf, b"hello peer")
        pfn, _ = mm.lookup(buf, 16)
        rng = np.array([(int(pfn[0]) << 12, 64 * 1024)], dtype=[("addr", "<u8"), ("len", "<u8")])
        m = dma_map_phys_ranges(gpu.dma, rng, DmaDataDirection.BIDIRECTIONAL)
        try:
            assert bool(m.bus_address.all()) and gpu.dma.stats["bus_addr_maps"] == 1
            assert bytes(gpu.dma_read(m.dma, owner=None, length=10)) == b"hello peer"
        finally:
            dma_unmap_phys_ranges(gpu.dma, m)


def test_acs_redirect_turns_the_switch_pair_into_a_host_bridge_path(machine: Machine) -> None:
    with Platform(ram_size=256 * MiB, machine=machine, iommu="off") as p:
        p.topology.set_acs_ctrl("dsp2", 0x0C)            # RR | CR on the provider's port
        prov = p.bind(Nvme, "nvme0")
        nic = p.bind(Device, "nic0")
        assert prov.p2pmem is not None
        assert p.topology.p2p_map_type("nvme0", "nic0").name == "THRU_HOST_BRIDGE"
        assert any("ACS redirect is set" in line for line in p.topology.log)
        del nic


def test_nic_to_p2pmem_to_nvme_staging(machine: Machine) -> None:
    """nvmet's P2P flow: find p2pmem close to both, the NIC DMAs in, the NVMe writes it out."""
    with Platform(ram_size=256 * MiB, machine=machine) as p:
        nv = p.bind(Nvme, "nvme0")
        nic = p.bind(Device, "nic0")
        prov = pci_p2pmem_find_many(p.topology, ["nic0", "nvme0"], np.random.default_rng(0))
        assert prov is not None and prov.bdf == nv.bdf
        sgl = pci_p2pmem_alloc_sgl(prov, 128 * 1024)
        assert sgl is not None
        payload = np.random.default_rng(2).integers(0, 256, 128 * 1024, dtype=np.uint8)
        m = dma_map_phys_ranges(nic.dma, sgl, DmaDataDirection.FROM_DEVICE)
        try:
            nic.dma_write(m.dma, payload, owner=None)       # RDMA WRITE lands in the CMB
        finally:
            dma_unmap_phys_ranges(nic.dma, m)
        nv.disk.submit_bio(True, 1 * MiB, sgl)             # the NVMe reads its own CMB
        assert np.array_equal(nv.disk.media.read(MiB, payload.size), payload)


def test_virtio_blk_works_with_ram_and_refuses_p2pmem(machine: Machine) -> None:
    with Platform(ROOTS / "a_switch_intel" / "root", ram_size=256 * MiB, machine=machine,
                  iommu="off") if ROOTS.is_dir() else Platform(ram_size=256 * MiB,
                                                               machine=machine) as p:
        if not ROOTS.is_dir():
            pytest.skip("shared fixtures (sysfs roots) not present")
        prov = p.bind(Nvme, "0000:04:00.0")
        vd = p.bind(VirtioBlk, "0000:00:11.0")
        assert vd.disk.name == "vda" and not vd.disk.blk_queue_pci_p2pdma()
        mm = MmStruct(p.phys)
        ram = mm.mmap(64 * 1024)
        mm.write(ram, b"ram is fine")
        assert vd.disk.direct_write(mm, ram, 4096, 0) == 4096
        assert bytes(vd.disk.media.read(0, 11)) == b"ram is fine"
        assert prov.p2pmem is not None
        buf = mm.mmap(4096, PROT_READ | PROT_WRITE, MAP_SHARED, file=prov.p2pmem.allocate)
        n_log = len(p.topology.log)
        with pytest.raises(DmaBufError) as e:
            vd.disk.direct_read(mm, buf, 4096, 0)
        assert e.value.errno == errno.EREMOTEIO and "FOLL_PCI_P2PDMA" in str(e.value)
        assert len(p.topology.log) == n_log                 # refused before any P2P decision


def test_o_direct_argument_rules(machine: Machine) -> None:
    with Platform(ram_size=256 * MiB, machine=machine) as p:
        nv = p.bind(Nvme, "nvme1", namespace_size=MiB)
        disk = nv.disk
        mm = MmStruct(p.phys)
        buf = mm.mmap(64 * 1024)
        for args in ((buf, 100, 0), (buf, 512, 100), (buf + 2, 512, 0)):
            with pytest.raises(DmaBufError) as e:
                disk.direct_read(mm, *args)
            assert e.value.errno == errno.EINVAL
        assert disk.direct_read(mm, buf + 4, 512, 0) == 512      # 4-byte aligned is enough
        assert disk.direct_read(mm, buf, 8192, MiB - 4096) == 4096   # short at the end
        assert disk.direct_read(mm, buf, 512, MiB) == 0
        with pytest.raises(DmaBufError) as e:
            disk.direct_write(mm, buf, 512, MiB)
        assert e.value.errno == errno.ENOSPC
        ro = mm.mmap(4096, PROT_READ)
        with pytest.raises(DmaBufError) as e:                    # read into read-only memory
            disk.direct_read(mm, ro, 512, 0)
        assert e.value.errno == errno.EFAULT
        assert disk.direct_write(mm, ro, 512, 0) == 512          # writing from it is fine


_CMB_TOPO = """
format = 1
[cpu]
vendor_id = "AuthenticAMD"
family = 0x19
[[host_bridge]]
domain = 0
bus = 0
vendor = 0x1022
device = 0x14a4
[[device]]
bdf = "0000:00:01.1"
name = "rp0"
type = "root_port"
vendor = 0x1022
device = 0x14ab
[[device]]
bdf = "0000:01:00.0"
name = "ssd"
type = "endpoint"
parent = "rp0"
vendor = 0x144d
device = 0xa80c
class = 0x010802
  [[device.bar]]
  index = 0
  size = "16KiB"
  address = 0xe1000000
  mem64 = true
  [[device.bar]]
  index = 2
  size = "64MiB"
  address = 0x20000000000
  mem64 = true
  prefetchable = true
"""


def test_probe_registers_the_cmb_and_places_the_sqs(machine: Machine) -> None:
    with Platform(loads_toml(_CMB_TOPO), ram_size=256 * MiB, machine=machine) as p:
        nv = p.bind(Nvme, "ssd", nr_io_queues=2)
        assert not nv.cmb_adopted and nv.cmb_size == 64 * MiB
        assert "nvme 0000:01:00.0: added peer-to-peer DMA memory " \
            "0x20000000000-0x20003ffffff" in p.topology.log
        assert nv.p2pmem is not None
        assert int(nv.p2pmem.available) == 64 * MiB - 2 * 1024 * 64     # two 64 KiB SQs
        assert nv.p2pmem.published == "1\n"
        mm = MmStruct(p.phys)
        a = mm.mmap(MiB, PROT_READ | PROT_WRITE, MAP_SHARED, file=nv.p2pmem.allocate)
        mm.write(a, b"x")
        p.unbind("ssd")                        # devm teardown: zap users, release provider
        assert p.pci_dev("ssd").p2pdma is None
        with pytest.raises(DmaBufError) as e:
            mm.read(a, 1)
        assert e.value.errno == errno.EFAULT   # SIGBUS: the pages were taken away
        assert memremap_registry(p.phys).pgmap_of(0x20000000000) is None


def test_cmb_without_wds_rds_is_not_published(machine: Machine) -> None:
    with Platform(loads_toml(_CMB_TOPO), ram_size=256 * MiB, machine=machine) as p:
        nv = p.bind(Nvme, "ssd", cmbsz=NVME_CMBSZ_SQS | NVME_CMBSZ_RDS, use_cmb_sqes=False,
                    cmb_size=8 * MiB, cmb_offset=8 * MiB)
        assert nv.p2pmem is not None and nv.p2pmem.published == "0\n"
        assert nv.p2pmem.available == f"{8 * MiB}\n"
        assert pci_p2pmem_find_many(p.topology, ["ssd"], np.random.default_rng(0)) is None


def test_cmb_registration_failure_is_logged_and_probe_continues(machine: Machine) -> None:
    with Platform(loads_toml(_CMB_TOPO), ram_size=256 * MiB, machine=machine) as p:
        nv = p.bind(Nvme, "ssd", cmb_size=3 * MiB)          # not 2 MiB aligned
        assert nv.p2pmem is None and nv.cmb_size == 0
        assert "failed to register the CMB" in p.topology.log[-1]
        with pytest.raises(DmaBufError) as e:
            p.bind(Nvme, "rp0")
        assert e.value.errno == errno.ENODEV


@needs_fixtures
def test_dma_asks_no_p2p_decision_for_providers_it_never_maps(machine: Machine) -> None:
    """03:00.0 DMAs to RAM and to 04:00.0's CMB (same switch) but never to 05:00.0's CMB (across
    root ports): no decision for 05:00.0 <- 03:00.0 is computed, cached or logged."""
    with Platform(ROOTS / "a_switch_intel" / "root", ram_size=256 * MiB, machine=machine,
                  iommu="off") as p:
        near = p.bind(Nvme, "0000:04:00.0")
        far = p.bind(Nvme, "0000:05:00.0")
        client = p.bind(Nvme, "0000:03:00.0")
        assert near.p2pmem is not None and far.p2pmem is not None
        mm = MmStruct(p.phys, name="app")
        ram = mm.mmap(64 * 1024)
        mm.write(ram, b"to the disk")
        assert client.disk.direct_write(mm, ram, 4096, 0) == 4096        # RAM: no P2P at all
        buf = mm.mmap(64 * 1024, PROT_READ | PROT_WRITE, MAP_SHARED, file=near.p2pmem.allocate)
        assert client.disk.direct_read(mm, buf, 4096, 0) == 4096         # BUS_ADDR peer
        assert bytes(mm.read(buf, 11)) == b"to the disk"
        client_idx = map_types_idx(p.pci_dev("0000:03:00.0"))
        far_state = p.pci_dev("0000:05:00.0").p2pdma
        near_state = p.pci_dev("0000:04:00.0").p2pdma
        assert far_state is not None and near_state is not None
        assert client_idx not in far_state.map_types
        assert near_state.map_types == {client_idx: PciP2pdmaMapType.BUS_ADDR}
        assert not any("0000:03:00.0: cannot be used for peer-to-peer" in line
                       for line in p.topology.log)
