"""RDMA memory regions: uverbs/umem_dmabuf validation, the four dma-buf MR kinds, teardown.

Errnos are the kernel's (uverbs_std_types_mr.c, umem_dmabuf.c, umem.c, mlx5 mr.c); exporters are
the system heap (static), a GPU (dynamic, amdgpu-like) and a vfio-like revocable exporter.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import numpy as np
import pytest

from dmabuf.buf.heaps import system_heap_create
from dmabuf.devices.platform import Platform
from dmabuf.devices.rdma import IbAccess, MrKind, ib_check_mr_access, ib_modify_qp_is_ok
from dmabuf.devices.rdma import verbs as v
from dmabuf.devices.rdma.mlx5_ib import RdmaNic
from dmabuf.devices.rdma.mr import Mlx5DmabufAttachOps, mlx5_ib_dereg_mr
from dmabuf.devices.rdma.umem_dmabuf import (
    ib_umem_dmabuf_get,
    ib_umem_dmabuf_map_pages,
    ib_umem_dmabuf_release,
    ib_umem_dmabuf_unmap_pages,
)
from dmabuf.devices.rdma.uverbs import ib_uverbs_reg_dmabuf_mr
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine
from dmabuf.sched import replay
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps
from dmabuf.sync.dma_resv import DmaResvUsage

from .test_rdma_support import MiB, RevocableExporter, make_platform, rc_pair, rdma_write

L, RW, RR, RA = (v.IBV_ACCESS_LOCAL_WRITE, v.IBV_ACCESS_REMOTE_WRITE, v.IBV_ACCESS_REMOTE_READ,
                 v.IBV_ACCESS_REMOTE_ATOMIC)


@pytest.fixture
def platform(machine: Machine) -> Iterator[Platform]:
    p = make_platform(machine, gpus=("gpu0",), vram=256 * MiB)
    yield p
    p.close()


@pytest.fixture
def ctx(platform: Platform) -> Iterator[v.Context]:
    c = v.Context(platform, "nic0")
    yield c
    c.close()


@pytest.fixture
def heap_buf(platform: Platform) -> Iterator[v.DmaBuf]:
    b = v.DmaBuf(1 * MiB, platform=platform, heap="system")
    yield b
    b.close()


def _errno(excinfo: pytest.ExceptionInfo[v.PyverbsRDMAError]) -> int:
    return excinfo.value.error_code


# ------------------------------------------------------------------ ib_check_mr_access & co
@pytest.mark.parametrize(("flags", "odp", "err"), [
    (RW, True, errno.EINVAL),                       # remote write needs local write
    (RA, True, errno.EINVAL),                       # remote atomic needs local write
    (RW | RA, True, errno.EINVAL),
    (L | RW | RR | RA, True, 0),
    (1 << 12, True, errno.EINVAL),                  # outside IB_ACCESS_SUPPORTED
    (1 << 30, True, errno.EINVAL),
    (int(IbAccess.ON_DEMAND), False, errno.EOPNOTSUPP),
    (int(IbAccess.ON_DEMAND), True, 0),
    (int(IbAccess.FLUSH_GLOBAL), True, errno.EOPNOTSUPP),
    (int(IbAccess.RELAXED_ORDERING), True, 0),
])
def test_ib_check_mr_access(flags: int, odp: bool, err: int) -> None:
    if err:
        with pytest.raises(DmaBufError) as ei:
            ib_check_mr_access(flags, odp=odp)
        assert ei.value.errno == err
    else:
        ib_check_mr_access(flags, odp=odp)


def test_ib_modify_qp_is_ok_table() -> None:
    S, M = v, v
    rc = v.IBV_QPT_RC
    init = M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS
    assert ib_modify_qp_is_ok(S.IBV_QPS_RESET, S.IBV_QPS_INIT, rc, init)
    assert not ib_modify_qp_is_ok(S.IBV_QPS_RESET, S.IBV_QPS_INIT, rc, init & ~M.IBV_QP_PORT)
    assert not ib_modify_qp_is_ok(S.IBV_QPS_RESET, S.IBV_QPS_INIT, rc, init | M.IBV_QP_DEST_QPN)
    assert not ib_modify_qp_is_ok(S.IBV_QPS_RESET, S.IBV_QPS_RTR, rc, M.IBV_QP_STATE)
    assert ib_modify_qp_is_ok(S.IBV_QPS_INIT, S.IBV_QPS_RTR, rc, v.RC_RTR_MASK)
    assert not ib_modify_qp_is_ok(S.IBV_QPS_INIT, S.IBV_QPS_RTR, rc,
                                  v.RC_RTR_MASK & ~M.IBV_QP_MIN_RNR_TIMER)
    assert ib_modify_qp_is_ok(S.IBV_QPS_INIT, S.IBV_QPS_RTR, v.IBV_QPT_UC,
                              v.RC_RTR_MASK & ~(M.IBV_QP_MIN_RNR_TIMER
                                                | M.IBV_QP_MAX_DEST_RD_ATOMIC))
    assert ib_modify_qp_is_ok(S.IBV_QPS_RTR, S.IBV_QPS_RTS, rc, v.RC_RTS_MASK)
    assert ib_modify_qp_is_ok(S.IBV_QPS_RTS, S.IBV_QPS_RTS, rc, M.IBV_QP_ACCESS_FLAGS)
    assert not ib_modify_qp_is_ok(S.IBV_QPS_INIT, S.IBV_QPS_INIT, rc,
                                  M.IBV_QP_CUR_STATE | M.IBV_QP_STATE)
    for s in range(7):
        assert ib_modify_qp_is_ok(s, S.IBV_QPS_ERR, rc, M.IBV_QP_STATE)
        assert ib_modify_qp_is_ok(s, S.IBV_QPS_RESET, rc, M.IBV_QP_STATE)
    assert not ib_modify_qp_is_ok(S.IBV_QPS_ERR, S.IBV_QPS_RTS, rc, M.IBV_QP_STATE)


# ------------------------------------------------------------------ uverbs REG_DMABUF_MR
@pytest.mark.parametrize(("kw", "err"), [
    ({"length": 4096, "access": RW}, errno.EINVAL),                  # ib_check_mr_access
    ({"length": 4096, "access": RA | RR}, errno.EINVAL),
    ({"length": 4096, "access": L | v.IBV_ACCESS_ON_DEMAND}, errno.EINVAL),   # flags32 mask
    ({"length": 4096, "access": L | v.IBV_ACCESS_ZERO_BASED}, errno.EINVAL),
    ({"length": 4096, "access": L | v.IBV_ACCESS_MW_BIND}, errno.EINVAL),
    ({"length": 4096, "access": L, "offset": 0x10, "iova": 0x20}, errno.EINVAL),  # page offs
    ({"length": 0, "access": L}, errno.EINVAL),                      # no page
    ({"length": 1 * MiB, "access": L, "offset": 4096, "iova": 4096}, errno.EINVAL),  # too big
    ({"length": 2 * MiB, "access": L}, errno.EINVAL),
    ({"length": 4096, "access": L, "offset": (1 << 64) - 4096,
      "iova": (1 << 64) - 4096}, errno.EINVAL),                      # offset + size overflows
])
def test_reg_dmabuf_mr_rejects(ctx: v.Context, heap_buf: v.DmaBuf, kw: dict[str, int],
                               err: int) -> None:
    pd = v.PD(ctx)
    offset = kw.pop("offset", 0)
    iova = kw.pop("iova", offset)
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.DmaBufMR(pd, kw["length"], kw["access"], dmabuf=heap_buf, offset=offset, iova=iova)
    assert _errno(ei) == err
    assert "Failed to register a dma-buf MR" in ei.value.args[0]
    assert heap_buf.dmabuf.attachments == []            # nothing left attached
    assert pd.pd.usecnt == 0 and ctx.device.mrs == []


def test_reg_dmabuf_mr_bad_fds(ctx: v.Context, platform: Platform) -> None:
    pd = v.PD(ctx)
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.DmaBufMR(pd, 4096, L, dmabuf=999)
    assert _errno(ei) == errno.EBADF
    heap = system_heap_create(platform.phys, machine=platform.machine)
    heap_fd = heap.open()                               # a file that is not a dma-buf
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.DmaBufMR(pd, 4096, L, dmabuf=heap_fd)
    assert _errno(ei) == errno.EINVAL


def test_reg_dmabuf_mr_whole_and_window(ctx: v.Context, heap_buf: v.DmaBuf) -> None:
    """A window at an unaligned offset: the MR covers exactly the pages of the window."""
    pd = v.PD(ctx)
    with v.DmaBufMR(pd, 1 * MiB, L, dmabuf=heap_buf) as mr:
        assert mr.mr.umem.npages == 256
        assert mr.mr.mmkey.npages == 256
    with v.DmaBufMR(pd, 8192, L | RW, dmabuf=heap_buf.fd, offset=4096 + 100) as mr:
        u = mr.mr.umem
        assert (u.address, u.length, u.npages) == (4196, 8192, 3)
        assert int(u.dma["len"].sum()) == 3 * 4096
        assert mr.mr.iova == 4196 and mr.mr.mmkey.base == 4096
        assert pd.pd.usecnt == 1


def test_dynamic_mr_needs_odp(platform: Platform, heap_buf: v.DmaBuf) -> None:
    ctx = v.Context(platform, "nic1", odp=False)
    pd = v.PD(ctx)
    for kind in ("dynamic", "odp"):
        with pytest.raises(v.PyverbsRDMAError) as ei:
            v.DmaBufMR(pd, 4096, L, dmabuf=heap_buf, kind=kind)
        assert _errno(ei) == errno.EOPNOTSUPP
    with v.DmaBufMR(pd, 4096, L, dmabuf=heap_buf, kind="pinned") as mr:
        assert mr.mr.kind is MrKind.PINNED and mr.mr.umem.pinned
    with pytest.raises(v.PyverbsRDMAError) as ei2:
        v.DmaBufMR(pd, 4096, L, dmabuf=heap_buf, kind="bogus")
    assert _errno(ei2) == errno.EINVAL


def test_umr_can_load_pas_limit(platform: Platform, heap_buf: v.DmaBuf) -> None:
    ctx = v.Context(platform, "nic1", max_umr_pages=16)
    pd = v.PD(ctx)
    with v.DmaBufMR(pd, 15 * 4096, L, dmabuf=heap_buf):
        pass
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.DmaBufMR(pd, 16 * 4096, L, dmabuf=heap_buf)
    assert _errno(ei) == errno.EINVAL


def test_pd_in_use_and_dereg_twice(ctx: v.Context, heap_buf: v.DmaBuf) -> None:
    dev: RdmaNic = ctx.device
    pd = dev.alloc_pd()
    mr = ib_uverbs_reg_dmabuf_mr(pd, 0, 4096, 0, heap_buf.fd, L)
    with pytest.raises(DmaBufError) as ei:
        dev.dealloc_pd(pd)
    assert ei.value.errno == errno.EBUSY
    mlx5_ib_dereg_mr(mr)
    with pytest.raises(ContractViolation):
        mlx5_ib_dereg_mr(mr)
    dev.dealloc_pd(pd)
    assert pd.deallocated and heap_buf.dmabuf.attachments == []


# ------------------------------------------------------------------ plain (host memory) MRs
def test_reg_mr_host_memory(ctx: v.Context) -> None:
    pd = v.PD(ctx)
    with v.MR(pd, 10000, L | RW) as mr:
        assert mr.buf % 4096 == 0 and mr.mr.iova == mr.buf
        mr.write(b"hello", 5, 100)
        assert mr.read(5, 100) == b"hello"
        assert mr.mr.describe_mapping()["path"] == "iommu"
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.MR(pd, 4096, L, address=0x1000)                 # not mapped
    assert _errno(ei) == errno.EFAULT
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.MR(pd, 4096, L | v.IBV_ACCESS_ON_DEMAND)        # ODP user MRs are not modelled
    assert _errno(ei) == errno.EOPNOTSUPP
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.MR(pd, 4096, L | v.IBV_ACCESS_FLUSH_GLOBAL)
    assert _errno(ei) == errno.EOPNOTSUPP
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.MR(pd, 4096, RW)
    assert _errno(ei) == errno.EINVAL
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.MR(pd, 4096, L, iova=0x123)                     # page offset differs from buf
    assert _errno(ei) == errno.EINVAL


def test_host_mr_keeps_pages_pinned_after_munmap(ctx: v.Context) -> None:
    """A long-term pin keeps the pages: munmap while registered frees them only at dereg."""
    pd = v.PD(ctx)
    mr = v.MR(pd, 8192, L)
    buf = mr._buffer
    assert buf is not None
    mr.write(b"x" * 16, 16)
    buf.munmap()
    assert buf.pins == 1 and not buf._freed
    mr.close()
    assert buf._freed


# ------------------------------------------------------------------ ib_umem_dmabuf mechanics
def test_umem_dmabuf_maps_only_when_asked(ctx: v.Context, heap_buf: v.DmaBuf) -> None:
    dev: RdmaNic = ctx.device
    kbuf = heap_buf.dmabuf
    umem = ib_umem_dmabuf_get(dev, 4096, 8192, heap_buf.fd, L, Mlx5DmabufAttachOps())
    assert umem.sgt is None and kbuf.attachments[0].live_mappings == 0     # v6.15+: no map
    assert umem.attach is not None and umem.attach.peer2peer and umem.attach.revocable
    with pytest.raises(ContractViolation):
        ib_umem_dmabuf_map_pages(umem)                                     # resv not held
    kbuf.resv.lock(None)
    try:
        ib_umem_dmabuf_map_pages(umem)
        ib_umem_dmabuf_map_pages(umem)                                     # already mapped
        assert umem.maps == 1 and umem.attach.live_mappings == 1
        assert int(umem.dma["len"].sum()) == 8192
        assert umem.owners == frozenset({kbuf.priv.owner})
        ib_umem_dmabuf_unmap_pages(umem)
        ib_umem_dmabuf_unmap_pages(umem)                                   # no-op
        assert umem.unmaps == 1 and umem.attach.live_mappings == 0 and umem.dma is None
    finally:
        kbuf.resv.unlock()
    ib_umem_dmabuf_release(umem)
    assert kbuf.attachments == []
    with pytest.raises(ContractViolation):
        ib_umem_dmabuf_release(umem)


def test_umem_dmabuf_get_requires_invalidate_op(ctx: v.Context, heap_buf: v.DmaBuf) -> None:
    with pytest.raises(DmaBufError) as ei:
        ib_umem_dmabuf_get(ctx.device, 0, 4096, heap_buf.fd, L, v_attach_ops_without_cb())
    assert ei.value.errno == errno.EINVAL


def v_attach_ops_without_cb() -> object:
    from dmabuf.buf.dma_buf import DmaBufAttachOps
    return DmaBufAttachOps(allow_peer2peer=True)


def test_map_pages_waits_for_kernel_fences() -> None:
    """ib_umem_dmabuf_map_pages() returns only after the exporter's KERNEL fence signalled
    (controlled scheduler: the mapper blocks; virtual time moves; the fence signals)."""

    def scenario(m: Machine) -> list[str]:
        p = make_platform(m, gpus=())
        ctx = v.Context(p, "nic0")
        buf = v.DmaBuf(64 * 1024, platform=p, heap="system")
        umem = ib_umem_dmabuf_get(ctx.device, 0, 65536, buf.fd, L, Mlx5DmabufAttachOps())
        resv = buf.dmabuf.resv

        class Ops(DmaFenceOps):
            def get_driver_name(self, f: DmaFence) -> str:
                return "test"

            def get_timeline_name(self, f: DmaFence) -> str:
                return "migration"

        fence = DmaFence(Ops(), m.fence_context_alloc(1), 1, machine=m)
        resv.lock(None)
        resv.reserve_fences(1)
        resv.add_fence(fence, DmaResvUsage.KERNEL)
        resv.unlock()
        order: list[str] = []

        def mapper() -> None:
            resv.lock(None)
            try:
                ib_umem_dmabuf_map_pages(umem)
                order.append("mapped")
            finally:
                resv.unlock()

        t = m.sched.spawn(mapper, name="mapper")
        m.sched.sleep(1.0)
        order.append("signal")
        fence.signal()
        assert t.join(10.0)
        t.result()
        ib_umem_dmabuf_release(umem)
        buf.close()
        ctx.close()
        p.close()
        return order

    assert replay(scenario, seed=3) == ["signal", "mapped"]


# ------------------------------------------------------------------ kinds
def test_pinned_mr_pins_the_gpu_bo(ctx: v.Context, platform: Platform) -> None:
    pd = v.PD(ctx)
    with v.DmaBufMR(pd, 1 * MiB, L | RW, gpu=0, kind="pinned") as mr:
        bo = mr._own.bo  # type: ignore[union-attr]
        assert bo.pin_count == 1 and bo.in_vram
        assert mr.mr.umem.attach.pin_count == 1
        assert not mr.mr.umem.attach.revocable       # v7.1 pinned ops: no invalidate
        d = mr.mr.describe_mapping()
        assert d["path"] == "bus" and d["p2p_map_type"] == "BUS_ADDR"
        with pytest.raises(DmaBufError) as ei:
            platform.device("gpu0").evict(bo)
        assert ei.value.errno == errno.EBUSY
    assert bo.freed                                  # unpinned, released with the MR


def test_odp_mr_maps_on_first_access(ctx: v.Context, platform: Platform) -> None:
    pd = v.PD(ctx)
    pair = rc_pair(ctx, ctx, pd_a=pd, pd_b=pd)
    src = v.DmaBufMR(pd, 64 * 1024, L | RW | RR, gpu=0, kind="odp")
    dst = v.MR(pd, 64 * 1024, L | RW)
    u = src.mr.umem
    assert u.maps == 0 and not src.mr.mmkey.present and src.mr.mmkey.enabled
    src.write(b"odp!" * 16384, 65536)
    wc = rdma_write(pair, src, dst, 65536)
    assert wc.status == v.IBV_WC_SUCCESS
    assert u.maps == 1 and src.mr.faults == 1 and ctx.device.hca.page_faults == 1
    assert dst.read(65536) == b"odp!" * 16384
    wc = rdma_write(pair, src, dst, 65536)
    assert src.mr.faults == 1                         # mapped now: no more faults
    for o in (src, dst):
        o.close()
    pair.close()


def test_revocable_exporter_rejects_plain_pinned(platform: Platform, ctx: v.Context) -> None:
    """vfio-pci-style exporters require revocable importers: the v7.1 pinned MR fails cleanly
    with -EOPNOTSUPP (at attach); dynamic and pinned-revocable MRs work."""
    exp = RevocableExporter(platform, 1 * MiB)
    kbuf = exp.export()
    pd = v.PD(ctx)
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.DmaBufMR(pd, 1 * MiB, L | RW, dmabuf=kbuf, kind="pinned")
    assert _errno(ei) == errno.EOPNOTSUPP
    assert kbuf.attachments == [] and exp.maps == 0
    with v.DmaBufMR(pd, 1 * MiB, L | RW, dmabuf=kbuf, kind="dynamic") as mr:
        assert mr.mr.umem.sgt is not None
    mr2 = v.DmaBufMR(pd, 1 * MiB, L | RW | RR, dmabuf=kbuf, kind="pinned_revocable")
    assert mr2.mr.umem.pinned and mr2.mr.umem.attach.revocable
    mr2.close()
    kbuf.put()


def test_pinned_revocable_revoke_stops_dma(platform: Platform) -> None:
    ctx0, ctx1 = v.Context(platform, "nic0"), v.Context(platform, "nic1")
    pair = rc_pair(ctx0, ctx1)
    exp = RevocableExporter(platform, 1 * MiB)
    kbuf = exp.export()
    src = v.DmaBufMR(pair.pd_a, 1 * MiB, L | RW | RR, dmabuf=kbuf, kind="pinned_revocable")
    dst = v.MR(pair.pd_b, 1 * MiB, L | RW)
    src.write(b"\x5a" * 4096, 4096)
    assert rdma_write(pair, src, dst, 4096).status == v.IBV_WC_SUCCESS
    assert dst.read(4096) == b"\x5a" * 4096
    assert exp.revoker.revoke() is True             # every importer unmapped in time
    u = src.mr.umem
    assert u.revoked and not u.pinned and u.sgt is None and exp.revoker.live == 0
    assert not src.mr.mmkey.enabled
    wc = rdma_write(pair, src, dst, 4096, wr_id=2)
    assert (wc.status, wc.wr_id) == (v.IBV_WC_LOC_PROT_ERR, 2)
    resv = kbuf.resv
    resv.lock(None)
    try:
        with pytest.raises(DmaBufError) as ei:
            ib_umem_dmabuf_map_pages(u)
        assert ei.value.errno == errno.EINVAL        # map after revoke
    finally:
        resv.unlock()
    assert platform.machine.warnings == []
    for o in (src, dst):
        o.close()
    pair.close()
    kbuf.put()


def test_dynamic_mr_on_revoke_faults_and_fails(platform: Platform) -> None:
    """A dynamic MR whose exporter revoked: invalidated, and the remap on the next access
    fails (-ENODEV from the exporter) so the WQE completes in error."""
    ctx0 = v.Context(platform, "nic0")
    pair = rc_pair(ctx0, ctx0)
    exp = RevocableExporter(platform, 1 * MiB)
    kbuf = exp.export()
    src = v.DmaBufMR(pair.pd_a, 1 * MiB, L | RW | RR, dmabuf=kbuf)
    dst = v.MR(pair.pd_b, 1 * MiB, L | RW)
    assert exp.revoker.revoke() is True
    assert src.mr.invalidations == 1 and not src.mr.mmkey.present
    wc = rdma_write(pair, src, dst, 4096)
    assert wc.status == v.IBV_WC_LOC_PROT_ERR and wc.vendor_err == 0x51
    exp.revoker.unrevoke()
    for o in (src, dst):
        o.close()
    pair.close()
    kbuf.put()


def test_remove_nic_with_live_mrs(platform: Platform, heap_buf: v.DmaBuf) -> None:
    """Unbinding the NIC deregisters its MRs: the dma-buf loses its attachments."""
    ctx = v.Context(platform, "nic1")
    pd = v.PD(ctx)
    v.DmaBufMR(pd, 8192, L, dmabuf=heap_buf)
    assert len(heap_buf.dmabuf.attachments) == 1
    platform.unbind("nic1")
    assert heap_buf.dmabuf.attachments == []
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.PD(ctx)
    assert _errno(ei) == errno.ENODEV


def test_describe_mapping_system_memory(ctx: v.Context, heap_buf: v.DmaBuf) -> None:
    pd = v.PD(ctx)
    with v.DmaBufMR(pd, 1 * MiB, L, dmabuf=heap_buf) as mr:
        d = mr.mr.describe_mapping()
        assert d["mapped"] and d["path"] == "iommu" and d["p2p_map_type"] is None
        assert not bool(np.any(d["bus_address"]))
        assert d["owners"] == frozenset({heap_buf.dmabuf.priv.owner})
