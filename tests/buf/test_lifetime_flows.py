"""The three mapping-lifetime flows of spec §2.6 — pinned, movable, revoked — end to end, with
mock exporters and importers moving REAL bytes through a DMA engine, plus the misbehaving
importer that ignores invalidation (always caught: a WARN and an IOMMU fault, never silence)."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dmabuf_mocks import (
    DynamicMockExporter,
    MiB,
    MockExporter,
    MockImporter,
    make_phys,
)

from dmabuf.buf.device import DirectDev
from dmabuf.buf.dma_buf import DmaBufAttachOps
from dmabuf.buf.dma_engine import DmaFaultLog
from dmabuf.buf.revoke import Revoker
from dmabuf.errors import DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.sched import explore

SIZE = MiB


def pattern(seed: int, n: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


# -- pinned ---------------------------------------------------------------------------------------


def test_pinned_flow_storage_never_moves(machine: Machine) -> None:
    phys = make_phys(8 * MiB, 8 * MiB)
    e = DynamicMockExporter(phys, SIZE)
    b = e.export()
    imp = MockImporter(b, phys, "nic", revocable=False)       # pinned-only importer (7.1)
    assert not imp.attach.revocable
    b.resv.lock(None)
    imp.attach.pin()
    b.resv.unlock()
    data = pattern(1)
    imp.write(data, e.owner)
    with pytest.raises(DmaBufError) as ei:
        e.migrate("ram0")                                      # the exporter cannot move it
    assert ei.value.errno == errno.EBUSY and e.region == "vram0"
    assert np.array_equal(imp.read(SIZE, e.owner), data)
    b.resv.lock(None)
    imp.attach.unpin()
    b.resv.unlock()
    imp.release()
    e.migrate("ram0")                                          # unpinned: now it may move
    assert np.array_equal(e.read_back(), data)
    b.put()


def test_static_importer_is_pinned_while_mapped(machine: Machine) -> None:
    phys = make_phys(8 * MiB, 8 * MiB)
    e = DynamicMockExporter(phys, SIZE)
    b = e.export()
    imp = MockImporter(b, phys, "scanout", dynamic=False)
    data = pattern(2)
    imp.write(data, e.owner)
    assert e.pins == 1 == imp.attach.live_mappings              # pin_on_map while mapped
    with pytest.raises(DmaBufError):
        e.migrate("ram0")
    imp.release()
    assert e.pins == 0
    e.migrate("ram0")
    assert np.array_equal(e.read_back(), data)
    b.put()


# -- movable ---------------------------------------------------------------------------------------


def test_movable_flow_invalidate_wait_migrate_remap(machine: Machine) -> None:
    phys = make_phys(8 * MiB, 8 * MiB)
    e = DynamicMockExporter(phys, SIZE)
    b = e.export()
    imp = MockImporter(b, phys, "gpu1")
    data = pattern(3)
    imp.write(data, e.owner)
    old_table = imp.table
    old_pages = e.pages.copy()
    e.migrate("ram0")
    assert imp.invalidated == 1 and imp.table is None and e.unmaps == 1
    assert set(phys.owners_of(old_pages).tolist()) == {-1}      # old VRAM freed, poisoned
    # the importer remaps before its next DMA and finds the data intact at the new place
    assert np.array_equal(imp.read(SIZE, e.owner), data)
    assert imp.table is not old_table and e.maps == 2
    assert phys.region_at(int(imp.table.dma_ranges()["addr"][0])).name == "ram0"
    imp.release()
    b.put()


def test_movable_flow_with_dma_in_flight(machine: Machine) -> None:
    """The exporter's move waits for the importer's fence: the in-flight write lands before
    the bytes are copied; the importer unmaps once its DMA retired."""
    phys = make_phys(8 * MiB, 8 * MiB)
    e = DynamicMockExporter(phys, SIZE)
    b = e.export()
    imp = MockImporter(b, phys, "gpu1")
    table, fence = imp.begin_dma()                             # DMA in flight, fence pending
    mover = machine.sched.spawn(lambda: e.migrate("ram0"), name="mover")
    data = pattern(4)
    imp.engine.write(table, data, owner=e.owner)              # the mapping is still valid
    assert e.moves == 0                       # the mover waits for our fence, whatever the timing
    imp.end_dma(fence)                                         # signal, then unmap (stale)
    assert mover.join(10)
    mover.result()
    assert e.moves == 1 and imp.table is None
    assert np.array_equal(imp.read(SIZE, e.owner), data)
    imp.release()
    b.put()


# -- revoked ---------------------------------------------------------------------------------------


def test_revoked_flow_with_dma_in_flight(machine: Machine) -> None:
    phys = make_phys(8 * MiB, 8 * MiB)
    rev = Revoker(require_peer2peer=True, machine=machine)
    e = MockExporter(phys, SIZE, revoker=rev)                   # static exporter: never moves
    b = e.export()
    with pytest.raises(DmaBufError) as ei:                      # not revocable: refused
        b.dynamic_attach(DirectDev("legacy", phys), DmaBufAttachOps(True))
    assert ei.value.errno == errno.EOPNOTSUPP
    with pytest.raises(DmaBufError) as ei:                      # no P2P: refused
        MockImporter(b, phys, "nop2p", p2p=False)
    assert ei.value.errno == errno.EOPNOTSUPP
    imp = MockImporter(b, phys, "nic")
    b.resv.lock(None)
    imp.attach.pin()                # a pinned revocable importer: the pin tells revoke from move
    b.resv.unlock()
    table, fence = imp.begin_dma()
    hw_ptes = table.dma_ranges().copy()       # what the NIC's page tables hold
    revoke = machine.sched.spawn(rev.revoke, name="revoke")
    data = pattern(5)
    imp.engine.write(table, data, owner=e.owner)               # in flight: still allowed
    imp.end_dma(fence)                                         # fence retires -> unmap
    assert revoke.join(10) and revoke.result() is True          # both waits completed
    assert rev.live == 0 and imp.table is None and imp.invalidated == 1
    assert np.array_equal(e.read_back(), data)                 # the in-flight write landed
    e.take_away()                                              # the BAR goes (reset)
    # I-B6: nobody holds a mapping, and new maps fail while revoked
    assert all(a.live_mappings == 0 for a in b.attachments)
    with pytest.raises(DmaBufError) as ei:
        imp.read(16, e.owner)
    assert ei.value.errno == errno.ENODEV
    with pytest.raises(DmaBufError) as ei:
        MockImporter(b, phys, "late")
    assert ei.value.errno == errno.ENODEV
    # the stale DMA addresses reach nothing any more (unmapped, and the pages are poisoned)
    with pytest.raises(IommuFault):
        imp.engine.read(hw_ptes, owner=e.owner, length=16)
    imp.dev.check_mapped = False              # even a device without dma-debug checks ...
    with pytest.raises(IommuFault, match="stale mapping"):
        imp.engine.read(hw_ptes, owner=e.owner, length=16)    # ... hits freed pages
    imp.dev.check_mapped = True
    # temporary revoke: the storage comes back, mappings work again
    e.give_back()
    rev.unrevoke()
    imp.write(pattern(6, 4096), e.owner)
    assert np.array_equal(e.read_back()[:4096], pattern(6, 4096))
    b.resv.lock(None)
    imp.attach.unpin()
    b.resv.unlock()
    imp.release()
    b.put()
    assert machine.warnings == []


def test_revoke_under_the_controlled_scheduler() -> None:
    """The revoke sequence is deadlock-free in every explored interleaving."""

    def scenario(m: Machine) -> None:
        phys = make_phys(1 * MiB, 1 * MiB)
        rev = Revoker(machine=m)
        e = MockExporter(phys, 64 * 1024, revoker=rev)
        b = e.export(machine=m)
        imp = MockImporter(b, phys, "nic", machine=m)

        def dma() -> None:
            try:
                imp.write(pattern(7, 4096), e.owner)
            except DmaBufError as err:
                assert err.errno == errno.ENODEV          # revoked before we mapped

        t1 = m.sched.spawn(dma, name="dma")
        t2 = m.sched.spawn(rev.revoke, name="revoke")
        assert t1.join(30) and t2.join(30)
        t1.result()
        assert t2.result() is True and rev.live == 0 and imp.table is None
        imp.release()
        b.put()

    res = explore(scenario, seeds=12)
    assert res.seeds == 12


# -- importers that ignore invalidation are caught ---------------------------------------------


def test_ignoring_importer_is_caught_on_revoke(machine: Machine) -> None:
    phys = make_phys(8 * MiB, 8 * MiB)
    rev = Revoker(unmap_timeout=0.05, machine=machine)
    e = MockExporter(phys, SIZE, revoker=rev)
    b = e.export()
    bad = MockImporter(b, phys, "bad-nic", obey=False)
    bad.write(pattern(8), e.owner)                              # keeps its mapping
    assert rev.revoke() is False                                # wait 2 timed out
    rule, msg = machine.warnings[-1]
    assert rule == "dma_buf_revoke" and "bad-nic" in msg and "ignores invalidation" in msg
    e.take_away()
    faults_before = len(machine.state(DmaFaultLog))
    with pytest.raises(IommuFault):                             # its next DMA faults
        bad.engine.write(bad.table, pattern(9, 4096), owner=e.owner)
    assert len(machine.state(DmaFaultLog)) == faults_before + 1
    bad.release()
    b.put()


def test_ignoring_importer_is_caught_on_move(machine: Machine) -> None:
    phys = make_phys(8 * MiB, 8 * MiB)
    e = DynamicMockExporter(phys, SIZE)
    b = e.export()
    good = MockImporter(b, phys, "good")
    bad = MockImporter(b, phys, "bad", obey=False)
    good.write(pattern(10), e.owner)
    bad.read(16, e.owner)
    e.migrate("ram0")
    assert good.table is None and bad.table is not None         # bad kept a stale mapping
    with pytest.raises(IommuFault, match="stale mapping"):
        bad.engine.read(bad.table, owner=e.owner, length=4096)  # old VRAM pages are poisoned
    assert np.array_equal(good.read(SIZE, e.owner), pattern(10))
    for imp in (good, bad):
        imp.release()
    b.put()
