"""Benchmark of the VFIO MMIO exporter (dmabuf.devices.vfio): revoke latency vs importers.

``devices.vfio.revoke_n{1,10,100}`` — one revoke of a VFIO dma-buf (clearing
``PCI_COMMAND_MEMORY`` through :meth:`VfioPciDevice.config_write_command`) while N dynamic,
revocable importers each hold a live mapping of the BAR range (a 64 KiB range of gpu1's BAR 3,
mapped for nic1 through its lazy IOMMU domain: one IOVA range per importer). Everything the
model does is timed: ``memory_lock``, the resv lock, ``dma_buf_invalidate_mappings`` (each
importer unmaps in its callback: ``dma_buf_free_sgt`` -> ``dma_iova_destroy``), the BOOKKEEP
fence wait, the wait for every unmap, the trace events. Between rounds (not timed) memory is
enabled again and every importer remaps. The figure is the per-importer cost ``T(N) / N``; the
baseline is the same per-importer cost with one importer, and the ratio ``T(1) / (T(N) / N)``
(bigger is better: the fixed part of a revoke is amortised).

``devices.vfio.revoke_linearity`` — the marginal cost of one more importer between 10 and 100
importers, ``(T(100) - T(10)) / 90``, against the marginal cost between 1 and 10,
``(T(10) - T(1)) / 9``. A linear revoke keeps the two equal (ratio ~1); a quadratic one (e.g.
a list walk per importer) would make the first several times larger.

Claim: revoke cost is linear in the number of importers — the marginal cost at 10..100
importers is at most 2x the marginal cost at 1..10 (ratio >= 0.5).
"""

from __future__ import annotations

from dmabuf.bench import BenchResult, benchmark, measure
from dmabuf.buf.dma_buf import DmaBuf, DmaBufAttachment, DmaBufAttachOps
from dmabuf.buf.sg_table import SgTable
from dmabuf.devices import Device, Platform
from dmabuf.devices.vfio import VfioPciDevice
from dmabuf.machine import Machine

KiB = 1 << 10
GiB = 1 << 30
COUNTS = (1, 10, 100)


class _Importer:
    """A revocable importer that unmaps synchronously in ``invalidate_mappings``."""

    def __init__(self, buf: DmaBuf, dev: Device) -> None:
        self.table: SgTable | None = None
        self.attach = buf.dynamic_attach(dev.dma, DmaBufAttachOps(
            True, invalidate_mappings=self._invalidate), self)

    def _invalidate(self, attach: DmaBufAttachment) -> None:
        if self.table is not None:
            attach.unmap(self.table, 0)
            self.table = None

    def map_locked(self) -> None:
        if self.table is None:
            t = self.attach.map(0)
            assert isinstance(t, SgTable)
            self.table = t


def _revoke_time(n: int, repeat: int) -> float:
    with Machine(debug=False, name="bench-vfio") as m:
        p = Platform(machine=m, ram_size=1 * GiB)
        v = p.bind(VfioPciDevice, "gpu1")
        v.open_device()
        nic = p.bind(Device, "nic1")
        buf = v.export_dma_buf(3, [(0, 64 * KiB)])
        imps = [_Importer(buf, nic) for _ in range(n)]

        def remap() -> None:
            if not v.memory_enabled:
                v.set_memory_enable(True)
            buf.resv.lock(None)
            try:
                for imp in imps:
                    imp.map_locked()
            finally:
                buf.resv.unlock()

        t = measure(lambda: v.set_memory_enable(False), repeat=repeat, setup=remap)
        assert buf.priv.revoker.live == 0 and buf.priv.revoker.timeouts == 0
        assert all(imp.table is None for imp in imps)
        v.set_memory_enable(True)
        for imp in imps:
            imp.attach.detach()
        buf.put()
        p.close()
        return t


@benchmark("devices.vfio.revoke",
           claim="a VFIO revoke is linear in its importers: the marginal cost per importer at "
                 "10..100 importers is <= 2x the one at 1..10")
def bench_revoke(quick: bool) -> list[BenchResult]:
    repeat = 3 if quick else 7
    times = {n: _revoke_time(n, repeat) for n in COUNTS}
    per1 = times[1]
    out = []
    for n in COUNTS:
        per = times[n] / n
        out.append(BenchResult(
            name=f"devices.vfio.revoke_n{n}", figure=per * 1e6, unit="us/importer",
            baseline=per1 * 1e6, baseline_name="revoke time with 1 importer (us)",
            ratio=per1 / per, details={"importers": n, "revoke_s": times[n]}))
    early = max((times[10] - times[1]) / 9, 1e-9)
    late = max((times[100] - times[10]) / 90, 1e-9)
    out.append(BenchResult(
        name="devices.vfio.revoke_linearity", figure=late * 1e6, unit="us/importer (10..100)",
        baseline=early * 1e6, baseline_name="marginal us/importer (1..10)",
        ratio=early / late, target=0.5, target_text=">= 0.5 (marginal cost at most doubles)",
        details={"revoke_s": {str(n): t for n, t in times.items()}}))
    return out
