"""A hypothesis state machine over the dma-buf protocol: attach / pin / map / DMA / unmap /
invalidate / move / revoke / unrevoke / vmap / get / put / detach, checking spec §10's dma-buf
invariants after every step, with REAL bytes:

* I-B1 — the resv lock is never left held, attachments change only through the API;
* I-B2 — exporter pins == explicit pins of dynamic importers + live mappings of static ones;
* I-B3 — (static maps wait for KERNEL fences: none are pending here, every map returns);
* I-B4 — ``vmapping_counter >= 0`` and ``vmap_ptr`` set ⇔ counter > 0;
* I-B5 — at the end: released exactly once, no vmap, no poll callback, no attachment WARN;
* I-B6 — while revoked, no revocable importer holds a mapping, and maps fail with ENODEV;
* I-B7 — ``revocable`` ⇔ dynamic with ``invalidate_mappings``;
* I-B8 — fdinfo ``count`` = file refcount − 1 (procfs' reference excluded);
* data — a shadow copy of the buffer always equals what the exporter's pages hold, across
  moves between VRAM and RAM: **no DMA ever lands on a page the buffer does not own** (the DMA
  engine checks the owner of every page it touches and the fault log stays empty).

Importers follow the rules of spec §2.6: a pinned-only importer (no invalidate_mappings) maps
only while pinned; a static importer is pinned by the core while mapped.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

sys.path.insert(0, str(Path(__file__).parents[1] / "buf"))
from dmabuf_mocks import DynamicMockExporter, MockImporter, make_phys

from dmabuf.buf.dma_engine import DmaFaultLog
from dmabuf.buf.file import current_process
from dmabuf.buf.revoke import Revoker
from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm.phys import PAGE_SIZE

SIZE = 16 * PAGE_SIZE
KINDS = ("static", "dynamic", "pinned")


class Imp:
    """One importer of the state machine."""

    def __init__(self, mi: MockImporter, kind: str) -> None:
        self.mi = mi
        self.kind = kind
        self.alive = True

    @property
    def mapped(self) -> bool:
        return self.mi.table is not None

    @property
    def pins(self) -> int:
        return self.mi.attach.pin_count


IDX = st.integers(0, 63)


class DmaBufProtocol(RuleBasedStateMachine):

    def __init__(self) -> None:
        super().__init__()
        self.m = Machine(debug=True, name="prop")
        self.m.__enter__()
        self.phys = make_phys(SIZE * 4, SIZE * 4)
        self.rev = Revoker(require_revocable=False, unmap_timeout=0.0, machine=self.m)
        self.e = DynamicMockExporter(self.phys, SIZE, revoker=self.rev)
        self.b = self.e.export(machine=self.m)
        self.fd = self.b.fd()               # the fd takes over the exporter's reference
        self.refs = 0                      # extra references taken by get_ref
        self.shadow = np.zeros(SIZE, np.uint8)
        self.vmaps: list[object] = []
        self.n = 0
        self.expected_warnings = 0
        self.all: list[Imp] = []

    # -- helpers ------------------------------------------------------------------------------
    def _locked(self, fn):  # type: ignore[no-untyped-def]
        self.b.resv.lock(None)
        try:
            return fn()
        finally:
            self.b.resv.unlock()

    def _live(self) -> list[Imp]:
        return [i for i in self.all if i.alive]

    def _pick(self, idx: int) -> Imp:
        live = self._live()
        return live[idx % len(live)]

    def _map(self, imp: Imp) -> bool:
        """Map like a well-behaved importer (a pinned-only importer pins first)."""
        if imp.kind == "pinned" and not imp.pins:
            self._locked(imp.mi.attach.pin)
        try:
            self._locked(imp.mi.map_locked)
        except DmaBufError as err:
            assert err.errno == errno.ENODEV and self.rev.revoked       # I-B6
            return False
        assert not self.rev.revoked
        return True

    # -- rules ----------------------------------------------------------------------------------
    @initialize()
    def three_importers(self) -> None:
        for kind in KINDS:
            self.attach(kind)

    @rule(kind=st.sampled_from(KINDS))
    def attach(self, kind: str) -> None:
        self.n += 1
        try:
            mi = MockImporter(self.b, self.phys, f"{kind}{self.n}", dynamic=kind != "static",
                              revocable=kind == "dynamic", machine=self.m)
        except DmaBufError as err:
            assert self.rev.revoked and err.errno == errno.ENODEV
            return
        assert not self.rev.revoked
        self.all.append(Imp(mi, kind))
        assert mi.attach.revocable == (kind == "dynamic")             # I-B7
        assert self.b.attachments[0] is mi.attach                     # list_add at the head

    @precondition(lambda self: self._live())
    @rule(idx=IDX)
    def pin(self, idx: int) -> None:
        imp = self._pick(idx)
        if imp.kind != "static":
            self._locked(imp.mi.attach.pin)

    @precondition(lambda self: self._live())
    @rule(idx=IDX)
    def unpin(self, idx: int) -> None:
        imp = self._pick(idx)
        if imp.kind == "static" or not imp.pins:
            return
        if imp.kind == "pinned" and imp.pins == 1 and imp.mapped:
            self._locked(imp.mi._drop_locked)  # a pinned-only importer maps only while pinned
        self._locked(imp.mi.attach.unpin)

    @precondition(lambda self: self._live())
    @rule(idx=IDX)
    def map(self, idx: int) -> None:
        imp = self._pick(idx)
        if not imp.mapped:
            self._map(imp)

    @precondition(lambda self: self._live())
    @rule(idx=IDX)
    def unmap(self, idx: int) -> None:
        imp = self._pick(idx)
        if imp.mapped:
            self._locked(imp.mi._drop_locked)

    @precondition(lambda self: self._live())
    @rule(idx=IDX, data=st.data())
    def dma_write(self, idx: int, data: st.DataObject) -> None:
        imp = self._pick(idx)
        if not imp.mapped and not self._map(imp):
            return
        off = data.draw(st.integers(0, SIZE - 1), label="offset")
        n = data.draw(st.integers(1, min(SIZE - off, 3 * PAGE_SIZE)), label="length")
        payload = np.random.default_rng(off * 7919 + n).integers(0, 256, n, dtype=np.uint8)
        imp.mi.engine.write(imp.mi.table, payload, owner=self.e.owner, offset=off)  # checked
        self.shadow[off:off + n] = payload

    @precondition(lambda self: self._live())
    @rule(idx=IDX)
    def dma_read(self, idx: int) -> None:
        imp = self._pick(idx)
        if not imp.mapped and not self._map(imp):
            return
        got = imp.mi.engine.read(imp.mi.table, owner=self.e.owner)
        assert np.array_equal(got, self.shadow)

    @rule()
    def invalidate(self) -> None:
        self._locked(self.b.invalidate_mappings)
        for i in self._live():
            if i.kind == "dynamic":
                assert not i.mapped

    @rule()
    def move(self) -> None:
        to = "ram0" if self.e.region == "vram0" else "vram0"
        try:
            self.e.migrate(to)
        except DmaBufError as err:
            assert err.errno == errno.EBUSY and self.e.pins > 0
            return
        assert self.e.pins == 0
        assert all(not i.mapped for i in self._live())   # no pin => no static/pinned mapping

    @rule()
    def revoke(self) -> None:
        holders = [i for i in self._live() if i.mapped and i.kind != "dynamic"]
        ok = self.rev.revoke()
        assert ok == (not holders)
        if not ok:
            self.expected_warnings += 1
        for i in self._live():
            if i.kind == "dynamic":
                assert not i.mapped                                     # I-B6

    @rule()
    def unrevoke(self) -> None:
        if self.rev.revoked:
            self.rev.unrevoke()

    @rule()
    def vmap(self) -> None:
        self.vmaps.append(self.b.vmap_unlocked())

    @rule()
    def vunmap(self) -> None:
        if self.vmaps:
            self.b.vunmap_unlocked(self.vmaps.pop())

    @rule()
    def get_ref(self) -> None:
        self.b.get()
        self.refs += 1

    @rule()
    def put_ref(self) -> None:
        if self.refs:
            self.b.put()
            self.refs -= 1

    @precondition(lambda self: self._live())
    @rule(idx=IDX)
    def detach(self, idx: int) -> None:
        imp = self._pick(idx)
        if imp.mapped:
            self._locked(imp.mi._drop_locked)
        while imp.pins:
            self._locked(imp.mi.attach.unpin)
        imp.mi.release()
        imp.alive = False
        assert imp.mi.attach not in self.b.attachments

    # -- invariants -------------------------------------------------------------------------------
    @invariant()
    def lock_not_leaked(self) -> None:
        assert not self.b.resv.is_locked()                              # I-B1
        assert self.m.lockdep.violations == []

    @invariant()
    def pins_match(self) -> None:
        live = self._live()
        explicit = sum(i.pins for i in live if i.kind != "static")
        static_maps = sum(i.mi.attach.live_mappings for i in live if i.kind == "static")
        assert self.e.pins == explicit + static_maps                    # I-B2
        for i in live:
            if i.kind == "static":
                assert i.mi.attach.map_pins == i.mi.attach.live_mappings

    @invariant()
    def vmap_counter(self) -> None:
        c = self.b.vmapping_counter
        assert c == len(self.vmaps) >= 0                                # I-B4
        assert (self.b.vmap_ptr is not None) == (c > 0)

    @invariant()
    def revoke_state(self) -> None:
        live_maps = sum(i.mi.attach.live_mappings for i in self._live())
        assert self.rev.live == live_maps
        if self.rev.revoked:
            assert all(not i.mapped for i in self._live() if i.kind == "dynamic")   # I-B6

    @invariant()
    def fdinfo_count(self) -> None:
        text = current_process(self.m).fds.fdinfo(self.fd)
        assert f"count:\t{self.b.file.count}\n" in text                 # I-B8
        assert self.b.file.count == 1 + self.refs

    @invariant()
    def bytes_are_where_the_buffer_is(self) -> None:
        assert np.array_equal(self.e.read_back(), self.shadow)
        assert len(self.m.state(DmaFaultLog)) == 0
        assert len(self.m.warnings) == self.expected_warnings

    def teardown(self) -> None:
        try:
            for i in self._live():
                if i.mapped:
                    self._locked(i.mi._drop_locked)
                while i.pins:
                    self._locked(i.mi.attach.unpin)
                i.mi.release()
            while self.vmaps:
                self.b.vunmap_unlocked(self.vmaps.pop())
            for _ in range(self.refs):
                self.b.put()
            current_process(self.m).fds.close(self.fd)
            assert self.b.released and self.e.released == 1              # I-B5
            assert self.e.pins == 0 and self.rev.live == 0
            assert len(self.m.warnings) == self.expected_warnings
        finally:
            self.m.__exit__(None, None, None)


DmaBufProtocol.TestCase.settings = settings(
    max_examples=50, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestDmaBufProtocol = DmaBufProtocol.TestCase
