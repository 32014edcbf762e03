"""Shared helpers for the RDMA NIC tests (no tests here): platforms, exporters, QP pairs.

* :func:`make_platform` — the reference fabric with small GPUs bound (``gpu0`` under the switch
  with ``nic0``, ``gpu1`` on its own root port like ``nic1``);
* :class:`RevocableExporter` — a vfio-pci-like static exporter of RAM pages guarded by
  :class:`dmabuf.buf.revoke.Revoker` (requires revocable importers, revokes on request);
* :func:`rc_pair` — two connected RC QPs (facade objects) with their CQs;
* :func:`intel_topology` — a host whose root complex is not on the P2P allow-list, GPU,
  accelerator and NIC on different root ports (P2P ``NOT_SUPPORTED``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmabuf.buf.device import DmaDataDirection
from dmabuf.buf.dma_buf import (
    DmaBuf,
    DmaBufAttachment,
    DmaBufExportInfo,
    DmaBufOps,
    MapResult,
    Vma,
    dma_buf_export,
)
from dmabuf.buf.phys_vec import PhysView
from dmabuf.buf.revoke import Revoker
from dmabuf.buf.sg_table import SgTable
from dmabuf.devices.gpu import Gpu
from dmabuf.devices.platform import Platform
from dmabuf.devices.rdma import verbs as v
from dmabuf.machine import Machine
from dmabuf.mm.phys import PAGE_SIZE
from dmabuf.mm.ranges import slice_ranges

MiB = 1 << 20
GiB = 1 << 30
ACCESS_RW = v.IBV_ACCESS_LOCAL_WRITE | v.IBV_ACCESS_REMOTE_WRITE | v.IBV_ACCESS_REMOTE_READ


def make_platform(machine: Machine, *, gpus: tuple[str, ...] = ("gpu0", "gpu1"),
                  vram: int = 512 * MiB, topology: Any = None, ram: int = 8 * GiB,
                  **gpu_kw: Any) -> Platform:
    """A platform (default fabric unless ``topology``) with GPUs of ``vram`` bytes bound."""
    p = Platform(topology, machine=machine, ram_size=ram)
    for g in gpus:
        p.bind(Gpu, g, vram_size=vram, **gpu_kw)
    return p


@dataclass
class RcPair:
    """Two connected RC QPs and what they hang off."""

    ctx_a: v.Context
    ctx_b: v.Context
    pd_a: v.PD
    pd_b: v.PD
    cq_a: v.CQ
    cq_b: v.CQ
    qp_a: v.QP
    qp_b: v.QP

    def close(self) -> None:
        for o in (self.qp_a, self.qp_b, self.cq_a, self.cq_b):
            o.close()


def rc_pair(ctx_a: v.Context, ctx_b: v.Context, *, pd_a: v.PD | None = None,
            pd_b: v.PD | None = None, depth: int = 64, access: int = ACCESS_RW,
            rnr_retry: int = 7, sq_sig_all: int = 1, max_sge: int = 4) -> RcPair:
    """Create and connect two RC QPs (loopback when both contexts are the same NIC)."""
    pd_a = pd_a or v.PD(ctx_a)
    pd_b = pd_b or v.PD(ctx_b)
    cq_a = v.CQ(ctx_a, 4 * depth)
    cq_b = v.CQ(ctx_b, 4 * depth)
    cap = v.QPCap(depth, depth, max_sge, max_sge, 64)
    qa = v.QP(pd_a, v.QPInitAttr(scq=cq_a, rcq=cq_a, cap=cap, sq_sig_all=sq_sig_all))
    qb = v.QP(pd_b, v.QPInitAttr(scq=cq_b, rcq=cq_b, cap=cap, sq_sig_all=sq_sig_all))
    v.connect_rc(qa, qb, access=access, rnr_retry=rnr_retry)
    return RcPair(ctx_a, ctx_b, pd_a, pd_b, cq_a, cq_b, qa, qb)


def rdma_write(pair: RcPair, src: Any, dst: Any, length: int, *, src_off: int = 0,
               dst_off: int = 0, wr_id: int = 1) -> Any:
    """Post one signalled RDMA WRITE from ``src`` (on side A) to ``dst`` (side B); its WC."""
    wr = v.SendWR(wr_id=wr_id, opcode=v.IBV_WR_RDMA_WRITE,
                  sg=[v.SGE(_base(src) + src_off, length, src.lkey)])
    wr.set_wr_rdma(dst.rkey, _base(dst) + dst_off)
    pair.qp_a.post_send(wr)
    n, wcs = pair.cq_a.poll(1)
    assert n == 1
    return wcs[0]


def _base(mr: Any) -> int:
    """The iova an MR starts at (``buf`` for host MRs, ``offset`` for dma-buf MRs)."""
    return int(mr.buf) if isinstance(mr, v.MR) else int(mr.mr.iova)


def pattern(n: int, seed: int) -> bytes:
    """``n`` seeded random bytes."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


class RevocableExporter(DmaBufOps):
    """A vfio-pci-like static exporter of RAM pages (attach/map/unmap/release + a Revoker)."""

    def __init__(self, platform: Platform, size: int, *, require_revocable: bool = True) -> None:
        super().__init__()
        self.platform = platform
        self.owner, self.pages = platform.alloc_ram(size, "revocable exporter", zero=True,
                                                    max_extent=64 * PAGE_SIZE)
        self.revoker = Revoker(require_revocable=require_revocable, machine=platform.machine)
        self.maps = 0

    def export(self) -> DmaBuf:
        size = int(self.pages["len"].sum())
        buf = dma_buf_export(DmaBufExportInfo(exp_name="vfio-like", ops=self, size=size,
                                              priv=self), self.platform.machine)
        self.revoker.bind(buf)
        return buf

    def attach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        self.revoker.check_attach(attach)

    def map_dma_buf(self, attach: DmaBufAttachment, direction: DmaDataDirection) -> MapResult:
        self.revoker.map_get(attach)
        try:
            t = SgTable.from_ranges(self.pages)
            t.map(attach.dev, direction)
        except BaseException:
            self.revoker.map_undo()
            raise
        self.maps += 1
        return t

    def unmap_dma_buf(self, attach: DmaBufAttachment, table: MapResult,
                      direction: DmaDataDirection) -> None:
        assert isinstance(table, SgTable)
        table.unmap(attach.dev, direction)
        table.free()
        self.revoker.map_put(attach)

    def mmap(self, dmabuf: DmaBuf, vma: Vma) -> None:
        start = vma.pgoff * PAGE_SIZE
        vma.view = PhysView(self.platform.phys, slice_ranges(self.pages, start, vma.length))

    def release(self, dmabuf: DmaBuf) -> None:
        self.platform.free_ram(self.pages)

    def bytes(self) -> bytes:
        return self.platform.phys.read(self.pages).tobytes()


INTEL_TOPOLOGY = """
format = 1
description = "Intel host whose root complex is not on the P2P allow-list"

[cpu]
vendor_id = "GenuineIntel"
family = 6
model_name = "Intel Xeon (not allow-listed)"

[[host_bridge]]
name = "hb0"
domain = 0
bus = 0
numa_node = 0
vendor = 0x8086
device = 0x1234

[[device]]
bdf = "0000:00:01.0"
name = "rp0"
type = "root_port"
vendor = 0x8086
device = 0x1235
link = "Gen4 x16"
iommu_group = 1

[[device]]
bdf = "0000:00:02.0"
name = "rp1"
type = "root_port"
vendor = 0x8086
device = 0x1235
link = "Gen4 x16"
iommu_group = 2

[[device]]
bdf = "0000:01:00.0"
name = "gpu0"
type = "endpoint"
parent = "rp0"
vendor = 0x1002
device = 0x740f
class = 0x030200
link = "Gen4 x16"
iommu_group = 10
p2pdma = true

  [[device.bar]]
  index = 0
  size = "1GiB"
  address = 0x10000000000
  mem64 = true
  prefetchable = true

[[device]]
bdf = "0000:00:03.0"
name = "rp2"
type = "root_port"
vendor = 0x8086
device = 0x1235
link = "Gen4 x16"
iommu_group = 3

[[device]]
bdf = "0000:03:00.0"
name = "acc0"
type = "endpoint"
parent = "rp2"
vendor = 0x1da3
device = 0x1020
class = 0x120000
link = "Gen4 x16"
iommu_group = 12
p2pdma = true

  [[device.bar]]
  index = 4
  size = "256MiB"
  address = 0x12000000000
  mem64 = true
  prefetchable = true

[[device]]
bdf = "0000:02:00.0"
name = "nic0"
type = "endpoint"
parent = "rp1"
vendor = 0x15b3
device = 0x101b
class = 0x020700
link = "Gen4 x16"
iommu_group = 11

  [[device.bar]]
  index = 0
  size = "32MiB"
  address = 0x11000000000
  mem64 = true
  prefetchable = true
"""


def intel_topology(tmp_path: Path) -> Path:
    """Write :data:`INTEL_TOPOLOGY` to ``tmp_path`` and return its path."""
    path = tmp_path / "intel-no-p2p.toml"
    path.write_text(INTEL_TOPOLOGY)
    return path
