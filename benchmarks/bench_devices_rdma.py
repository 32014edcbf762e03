"""Benchmarks of the RDMA NIC (dmabuf.devices.rdma): GPUDirect RDMA WRITE, invalidation storms.

* ``devices.rdma.write`` — one RDMA WRITE of 256 MiB (quick: 16 MiB) from GPU0's VRAM (NIC0,
  bus addresses through the switch) to GPU1's VRAM (NIC1, IOVAs through the IOMMU): MKey/MTT
  translation, the two NICs' DMA views, ownership checks and the copy, against one raw
  ``np.copyto`` of the same bytes between the same two memories. Target >= 0.8.
* ``devices.rdma.invalidation_storm`` — one GPU buffer with N dynamic MRs attached is evicted
  (every MR's invalidate callback ZAPs its MTT and unmaps) and then every MR is faulted back in
  (``pagefault_dmabuf_mr``: map under the reservation lock, UMR reload). Reported: the cost per
  attachment at 1,000 attachments against the cost per attachment at 100 (quick: 100 vs 20) —
  a ratio near 1 means the storm is linear in the number of attachments. Target >= 0.8.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from dmabuf.bench import BenchResult, benchmark, measure
from dmabuf.buf.file import current_process
from dmabuf.devices.gpu import Gpu
from dmabuf.devices.platform import Platform
from dmabuf.devices.rdma import verbs as v
from dmabuf.devices.rdma.odp import mlx5_ib_page_fault
from dmabuf.machine import Machine

MiB = 1 << 20
ACCESS = v.IBV_ACCESS_LOCAL_WRITE | v.IBV_ACCESS_REMOTE_WRITE | v.IBV_ACCESS_REMOTE_READ


def _platform(m: Machine, vram: int) -> tuple[Platform, Gpu, Gpu]:
    p = Platform(machine=m, ram_size=4 << 30, poison_on_free=False)
    g0 = p.bind(Gpu, "gpu0", vram_size=vram)
    g1 = p.bind(Gpu, "gpu1", vram_size=vram)
    return p, g0, g1


@benchmark("devices.rdma.write",
           claim="RDMA WRITE of 256 MiB GPU0 VRAM -> NIC0 => NIC1 -> GPU1 VRAM through the "
                 "model vs raw np.copyto (>= 0.8)")
def bench_rdma_write(quick: bool) -> BenchResult:
    size = (16 * MiB) if quick else (256 * MiB)
    with Machine(name="bench") as m:
        p, g0, g1 = _platform(m, max(2 * size, 64 * MiB))
        try:
            bo0 = g0.alloc_bo(size, name="src")
            bo1 = g1.alloc_bo(size, name="dst")
            g0.fill(bo0, 0x5A).wait()
            g1.fill(bo1, 0).wait()                      # touch every page of both sides
            fd0, fd1 = g0.export(bo0).fd(), g1.export(bo1).fd()
            c0, c1 = v.Context(p, "nic0"), v.Context(p, "nic1")
            pd0, pd1 = v.PD(c0), v.PD(c1)
            cq0, cq1 = v.CQ(c0, 16), v.CQ(c1, 16)
            qp0 = v.QP(pd0, v.QPInitAttr(scq=cq0, rcq=cq0, cap=v.QPCap(16, 16)))
            qp1 = v.QP(pd1, v.QPInitAttr(scq=cq1, rcq=cq1, cap=v.QPCap(16, 16)))
            v.connect_rc(qp0, qp1)
            src = v.DmaBufMR(pd0, size, ACCESS, dmabuf=fd0)
            dst = v.DmaBufMR(pd1, size, ACCESS, dmabuf=fd1)
            wr = v.SendWR(opcode=v.IBV_WR_RDMA_WRITE, sg=[v.SGE(src.offset, size, src.lkey)])
            wr.set_wr_rdma(dst.rkey, dst.offset)

            def rdma() -> None:
                qp0.post_send(wr)
                v.poll_cq(cq0)

            # Baseline: raw np.copyto between the same two memories (GPU0 BAR -> GPU1 BAR).
            a = p.phys.view(int(bo0.bar_ranges()["addr"][0]), size)
            b = p.phys.view(int(bo1.bar_ranges()["addr"][0]), size)
            contiguous = bo0.pages.size == 1 and bo1.pages.size == 1

            def raw() -> None:
                np.copyto(b, a)

            rdma()
            raw()
            tm: list[float] = []
            tr: list[float] = []
            for _ in range(3 if quick else 5):
                tr.append(measure(raw, repeat=1))
                tm.append(measure(rdma, repeat=1))
            t_model, t_raw = statistics.median(tm), statistics.median(tr)
            ratio = statistics.median([r / x for r, x in zip(tr, tm, strict=True)])
            ok = g1.checksum(bo1) == g0.checksum(bo0)
            details: dict[str, Any] = {"bytes": size, "t_model_s": t_model, "t_raw_s": t_raw,
                                       "data_ok": ok, "contiguous": contiguous,
                                       "src_path": src.mr.describe_mapping()["path"],
                                       "dst_path": dst.mr.describe_mapping()["path"]}
            for o in (src, dst, qp0, qp1, cq0, cq1, pd0, pd1, c0, c1):
                o.close()
        finally:
            p.close()
    return BenchResult(
        name="devices.rdma.write", figure=size / t_model / 1e9, unit="GB/s",
        baseline=size / t_raw / 1e9, baseline_name="np.copyto of the same bytes",
        ratio=ratio, target=0.8, target_text=">= 0.8", details=details)


def _storm(p: Platform, g0: Gpu, n: int) -> tuple[float, float]:
    """Register ``n`` dynamic MRs on one GPU buffer; time evict (all invalidated) and the
    remap of every MR (the HCA page-fault path). Returns (t_invalidate, t_remap) seconds."""
    bo = g0.alloc_bo(64 * 1024, name=f"storm{n}")
    fd = g0.export(bo).fd()
    g0.free_bo(bo)
    ctx = v.Context(p, "nic0")
    pd = v.PD(ctx)
    mrs = [v.DmaBufMR(pd, 64 * 1024, ACCESS, dmabuf=fd) for _ in range(n)]
    dev = ctx.device
    t0 = time.perf_counter()
    g0.evict(bo)                                   # n invalidate callbacks: ZAP + unmap
    t1 = time.perf_counter()
    for mr in mrs:                                 # n page faults: map + UMR reload
        mlx5_ib_page_fault(dev, mr.lkey, mr.mr.iova, mr.length)
    t2 = time.perf_counter()
    assert all(mr.mr.invalidations == 1 and mr.mr.mmkey.present for mr in mrs)
    pd.close()                                     # deregisters the MRs (detach)
    current_process(p.machine).fds.close(fd)       # last reference: the BO is freed
    ctx.close()
    return t1 - t0, t2 - t1


@benchmark("devices.rdma.invalidation_storm",
           claim="evict a buffer with 1,000 dynamic MRs, invalidate + remap all: per-attachment "
                 "cost at 1,000 vs at 100 (linear: >= 0.8)")
def bench_invalidation_storm(quick: bool) -> BenchResult:
    small, large = (20, 100) if quick else (100, 1000)
    with Machine(name="bench") as m:
        p, g0, _g1 = _platform(m, 256 * MiB)
        try:
            _storm(p, g0, 10)                                  # warm-up
            per: dict[int, float] = {}
            inv: dict[int, float] = {}
            remap: dict[int, float] = {}
            for n in (small, large):
                runs = [_storm(p, g0, n) for _ in range(3 if quick else 2)]
                ti = statistics.median(r[0] for r in runs)
                tr = statistics.median(r[1] for r in runs)
                inv[n], remap[n] = ti, tr
                per[n] = (ti + tr) / n
        finally:
            p.close()
    return BenchResult(
        name="devices.rdma.invalidation_storm", figure=per[large] * 1e6,
        unit=f"us/attachment at {large}", baseline=per[small] * 1e6,
        baseline_name=f"same at {small} attachments", ratio=per[small] / per[large],
        target=0.8, target_text=">= 0.8 (linear)",
        details={"attachments": [small, large],
                 "invalidate_s": {str(k): x for k, x in inv.items()},
                 "remap_s": {str(k): x for k, x in remap.items()},
                 "invalidate_us_per_attachment": {str(k): inv[k] / k * 1e6 for k in inv},
                 "remap_us_per_attachment": {str(k): remap[k] / k * 1e6 for k in remap}})
