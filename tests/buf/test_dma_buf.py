"""drivers/dma-buf/dma-buf.c core: export, lifetime, attach, pin, map, invalidate, CPU access,
mmap, vmap, iteration — behaviour beyond the errno table (test_dma_buf_errnos.py)."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dmabuf_mocks import BIDI, DynamicMockExporter, MiB, MockExporter, MockImporter, make_phys

from dmabuf.buf.device import DirectDev, DmaDataDirection
from dmabuf.buf.dma_buf import (
    DmaBufAttachOps,
    DmaBufExportInfo,
    DmaBufOps,
    DmaBufRegistry,
    ExporterModule,
    Vma,
    VmOps,
    dma_buf_attach_revocable,
    dma_buf_export,
    dma_buf_get,
    dma_buf_iter_begin,
    dma_buf_iter_next,
    dma_buf_move_notify,
    for_each_dma_buf,
)
from dmabuf.buf.dma_engine import DmaEngine
from dmabuf.buf.file import O_CLOEXEC, O_NONBLOCK, O_RDWR, current_process
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.buf.sg_table import SgTable
from dmabuf.errors import ERESTARTSYS, ContractViolation, DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm.phys import PAGE_SIZE
from dmabuf.mm.vma import (
    PROT_READ,
    VM_MAYEXEC,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
)
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps, Interrupts
from dmabuf.sync.dma_resv import DmaResv, DmaResvUsage

FOPS = DmaFenceOps("test", "tl")
O_APPEND_TEST = 0o2000


def fence(m: Machine, seq: int = 1) -> DmaFence:
    return DmaFence(FOPS, m.fence_context_alloc(1), seq, machine=m)


def add_fence(resv: DmaResv, f: DmaFence, usage: DmaResvUsage) -> None:
    resv.lock(None)
    try:
        resv.reserve_fences(1)
        resv.add_fence(f, usage)
    finally:
        resv.unlock()


@pytest.fixture
def phys():
    return make_phys(16 * MiB, 16 * MiB)


# -- export -----------------------------------------------------------------------------------


def test_export_embedded_resv_flags_ino_and_list_order(machine: Machine, phys) -> None:
    e1, e2 = MockExporter(phys), MockExporter(phys)
    b1 = e1.export(flags=O_RDWR | O_CLOEXEC | O_NONBLOCK | O_APPEND_TEST)
    b2 = e2.export()
    assert b1.file.f_flags == O_RDWR | O_NONBLOCK       # masked to O_ACCMODE | O_NONBLOCK
    assert b1.file.count == 1 and b1.embedded_resv
    assert (b1.ino, b2.ino) == (1, 2)
    assert machine.state(DmaBufRegistry).buffers() == [b2, b1]   # list_add at the head
    assert b1.size == MiB and b1.exp_name == "mock" and b1.priv is e1
    b1.put()
    b2.put()
    assert machine.state(DmaBufRegistry).buffers() == []
    assert (e1.released, e2.released) == (1, 1)


def test_export_shared_resv_is_not_finalised(machine: Machine, phys) -> None:
    resv = DmaResv(machine=machine)
    f = fence(machine)
    add_fence(resv, f, DmaResvUsage.WRITE)
    b = MockExporter(phys).export(resv=resv)
    assert b.resv is resv and not b.embedded_resv
    b.put()
    assert resv.num_fences == 1          # not dma_resv_fini'ed: the exporter owns it
    f.signal()
    resv.fini()
    f.put()


def test_export_size_zero_is_accepted_like_the_kernel(machine: Machine) -> None:
    class Ops(DmaBufOps):
        def map_dma_buf(self, a, d):  # pragma: no cover - never mapped
            raise AssertionError

        def unmap_dma_buf(self, a, t, d):  # pragma: no cover
            raise AssertionError

        def release(self, b):
            pass

    b = dma_buf_export(DmaBufExportInfo("zero", Ops(), 0, priv=1))
    assert b.size == 0
    b.put()


def test_export_takes_and_release_drops_module_ref(machine: Machine, phys) -> None:
    mod = ExporterModule("mockdrv")
    e = MockExporter(phys)
    b = dma_buf_export(DmaBufExportInfo("mock", e, e.size, O_RDWR, priv=e, owner=mod))
    assert mod.refcount == 1
    b.put()
    assert mod.refcount == 0


def test_ops_by_keyword_and_provides(machine: Machine) -> None:
    ops = DmaBufOps(map_dma_buf=lambda a, d: None, unmap_dma_buf=lambda a, t, d: None,
                    release=lambda b: None)
    assert ops.provides("map_dma_buf") and not ops.provides("pin")
    with pytest.raises(TypeError):
        DmaBufOps(bogus=lambda: None)
    with pytest.raises(ValueError):
        ops.provides("cache_sgt_mapping")   # gone since 6.15

    class NoSuperInit(DmaBufOps):
        def __init__(self) -> None:         # forgets super().__init__()
            self.x = 1

        def release(self, b):
            pass

    assert NoSuperInit().provides("release") and not NoSuperInit().provides("pin")


# -- file references, fds ----------------------------------------------------------------------


def test_fd_consumes_reference_get_adds_one_close_releases_once(machine: Machine, phys) -> None:
    e = MockExporter(phys)
    b = e.export()
    fd = b.fd(O_CLOEXEC)
    assert b.file.count == 1                   # the fd consumed the exporter's reference
    assert current_process().fds.is_cloexec(fd)
    b2 = dma_buf_get(fd)
    assert b2 is b and b.file.count == 2
    b2.put()
    current_process().fds.close(fd)
    assert b.released and e.released == 1
    with pytest.raises(ContractViolation):
        b.put()                                # one put too many
    assert e.released == 1


def test_fd_in_other_process_and_dup(machine: Machine, phys) -> None:
    from dmabuf.buf.file import ProcessTable
    b = MockExporter(phys).export()
    fd = b.fd()
    child = machine.state(ProcessTable).spawn("child")
    f = current_process().fds.fget(fd)
    cfd = child.fds.install(f)                 # SCM_RIGHTS-like passing
    with child:
        assert dma_buf_get(cfd) is b
        b.put()
    with pytest.raises(DmaBufError) as ei, child:
        dma_buf_get(fd + 7)
    assert ei.value.errno == errno.EBADF
    d = current_process().fds.dup(fd)
    assert b.file.count == 3
    current_process().fds.close(fd)
    current_process().fds.close(d)
    assert not b.released
    child.exit()
    assert b.released


# -- release-time checks ----------------------------------------------------------------------


def test_release_with_attachment_warns(machine: Machine, phys) -> None:
    b = MockExporter(phys).export()
    b.attach(DirectDev("dev0", phys))
    b.put()
    assert [w[0] for w in machine.warnings] == ["dma_buf_release"]


def test_release_with_vmap_is_a_bug(machine: Machine, phys) -> None:
    b = MockExporter(phys).export()
    b.vmap_unlocked()
    with pytest.raises(ContractViolation, match="vmapping_counter"):
        b.put()


def test_release_with_active_poll_slot_is_a_bug(machine: Machine, phys) -> None:
    b = MockExporter(phys).export()
    b.cb_out.active = 4                         # impossible without a ref imbalance
    with pytest.raises(ContractViolation, match="poll callback"):
        b.put()


# -- attachments -------------------------------------------------------------------------------


def test_attach_static_and_dynamic_fields_and_order(machine: Machine, phys) -> None:
    e = MockExporter(phys)
    b = e.export()
    d1, d2 = DirectDev("d1", phys), DirectDev("d2", phys)
    a1 = b.attach(d1)
    a2 = b.dynamic_attach(d2, DmaBufAttachOps(True), "priv2")
    assert (a1.is_dynamic, a1.peer2peer, a1.importer_priv) == (False, False, None)
    assert (a2.is_dynamic, a2.peer2peer, a2.importer_priv) == (True, True, "priv2")
    assert b.attachments == [a2, a1]             # head first
    assert e.maps == 0                           # no mapping at attach time (v6.15+)
    assert [c for c in e.calls] == [("attach", False), ("attach", False)]
    b.detach(a1)
    b.detach(a2)
    assert e.calls[-2:] == [("detach", False), ("detach", False)]
    assert b.attachments == []
    b.put()


def test_exporter_attach_rejection_propagates_and_leaves_no_attachment(machine, phys) -> None:
    e = MockExporter(phys, fail_attach=errno.EBUSY)
    b = e.export()
    with pytest.raises(DmaBufError) as ei:
        b.attach(DirectDev("d", phys))
    assert ei.value.errno == errno.EBUSY
    assert b.attachments == []
    b.put()
    assert machine.warnings == []


def test_detach_twice_and_foreign(machine: Machine, phys) -> None:
    b1 = MockExporter(phys).export()
    b2 = MockExporter(phys).export()
    a = b1.attach(DirectDev("d", phys))
    b2.detach(a)                                  # foreign: WARN and return
    assert machine.warnings[-1][0] == "dma_buf_detach" and b1.attachments == [a]
    a.detach()
    with pytest.raises(ContractViolation, match="already detached"):
        b1.detach(a)
    b1.put()
    b2.put()


def test_detach_with_live_mapping_warns(machine: Machine, phys) -> None:
    b = MockExporter(phys).export()
    a = b.attach(DirectDev("d", phys))
    t = a.map_unlocked(BIDI)
    b.detach(a)
    assert machine.warnings[-1][0] == "dma_buf_detach"
    assert isinstance(t, SgTable)
    b.put()


def test_move_notify_alias_and_revocable_matrix(machine: Machine, phys) -> None:
    calls: list[str] = []
    b = MockExporter(phys).export()
    static = b.attach(DirectDev("s", phys))
    pinned_only = b.dynamic_attach(DirectDev("p", phys), DmaBufAttachOps(True))
    legacy = b.dynamic_attach(DirectDev("l", phys),
                              DmaBufAttachOps(move_notify=lambda a: calls.append("legacy")))

    class Sub(DmaBufAttachOps):
        def move_notify(self, attach):
            calls.append("sub")

    class SubSub(Sub):
        pass

    assert SubSub().has_invalidate_mappings            # an inherited override counts
    sub = b.dynamic_attach(DirectDev("x", phys), Sub())
    assert [dma_buf_attach_revocable(a) for a in (static, pinned_only, legacy, sub)] == \
        [False, False, True, True]
    with pytest.raises(TypeError):
        DmaBufAttachOps(invalidate_mappings=lambda a: None, move_notify=lambda a: None)
    b.resv.lock(None)
    try:
        dma_buf_move_notify(b)                    # the pre-7.1 name
    finally:
        b.resv.unlock()
    assert calls == ["sub", "legacy"]              # list order: most recent first
    assert (sub.invalidations, legacy.invalidations, pinned_only.invalidations) == (1, 1, 0)
    for a in (static, pinned_only, legacy, sub):
        a.detach()
    b.put()


# -- pin / map ---------------------------------------------------------------------------------


def test_static_importer_pins_on_map_dynamic_does_not(machine: Machine, phys) -> None:
    e = DynamicMockExporter(phys)
    b = e.export()
    assert b.is_dynamic
    s = b.attach(DirectDev("s", phys))
    d = b.dynamic_attach(DirectDev("d", phys), DmaBufAttachOps(invalidate_mappings=lambda a: 0))
    t1 = s.map_unlocked(BIDI)
    t2 = s.map_unlocked(BIDI)
    assert e.pins == 2 == s.live_mappings == s.map_pins        # I-B2
    t3 = d.map_unlocked(BIDI)
    assert e.pins == 2                                           # no pin for dynamic importers
    assert e.maps == 3 and len({id(t1), id(t2), id(t3)}) == 3    # no caching
    s.unmap_unlocked(t1, BIDI)
    assert e.pins == 1
    s.unmap_unlocked(t2, BIDI)
    d.unmap_unlocked(t3, BIDI)
    assert e.pins == 0 and e.unmaps == 3
    b.resv.lock(None)
    d.pin()
    assert e.pins == 1 and d.pin_count == 1
    d.unpin()
    b.resv.unlock()
    s.detach()
    d.detach()
    b.put()


def test_pin_by_static_importer_warns_but_proceeds(machine: Machine, phys) -> None:
    e = DynamicMockExporter(phys)
    b = e.export()
    s = b.attach(DirectDev("s", phys))
    b.resv.lock(None)
    s.pin()
    s.unpin()
    b.resv.unlock()
    assert [w[0] for w in machine.warnings] == ["dma_buf_pin", "dma_buf_unpin"]
    s.detach()
    b.put()


def test_pin_without_exporter_pin_succeeds_trivially(machine: Machine, phys) -> None:
    b = MockExporter(phys).export()
    a = b.dynamic_attach(DirectDev("d", phys), DmaBufAttachOps())
    b.resv.lock(None)
    a.pin()
    assert a.pin_count == 1
    a.unpin()
    with pytest.raises(ContractViolation, match="unpin without a pin"):
        a.unpin()
    b.resv.unlock()
    a.detach()
    b.put()


def test_map_errors_unwind_the_pin(machine: Machine, phys) -> None:
    e = DynamicMockExporter(phys, fail_map=errno.ENOMEM)
    b = e.export()
    s = b.attach(DirectDev("s", phys))
    with pytest.raises(DmaBufError) as ei:
        s.map_unlocked(BIDI)
    assert ei.value.errno == errno.ENOMEM and e.pins == 0 and s.live_mappings == 0
    s.detach()
    b.put()


def test_pin_ebusy_under_static_importer_warns(machine: Machine, phys) -> None:
    e = DynamicMockExporter(phys, fail_pin=errno.EBUSY)
    b = e.export()
    s = b.attach(DirectDev("s", phys))
    with pytest.raises(DmaBufError):
        s.map_unlocked(BIDI)
    assert machine.warnings[-1][0] == "dma_buf_map_attachment"
    s.detach()
    b.put()


def test_static_map_waits_for_kernel_fences_only(machine: Machine, phys) -> None:
    e = MockExporter(phys)
    b = e.export()
    s = b.attach(DirectDev("s", phys))
    w = fence(machine)
    add_fence(b.resv, w, DmaResvUsage.WRITE)
    t = s.map_unlocked(BIDI)                     # an unsignalled WRITE fence does not block
    s.unmap_unlocked(t, BIDI)
    k = fence(machine)
    add_fence(b.resv, k, DmaResvUsage.KERNEL)
    # I-B3: the wait is interruptible; a pending signal makes it fail -> unmap, no mapping.
    Interrupts.of(machine).send(None)
    try:
        with pytest.raises(DmaBufError) as ei:
            s.map_unlocked(BIDI)
    finally:
        Interrupts.of(machine).clear()
    assert ei.value.errno == ERESTARTSYS
    assert e.maps == e.unmaps == 2 and s.live_mappings == 0
    # a dynamic importer does not wait for the kernel fence
    d = b.dynamic_attach(DirectDev("d", phys), DmaBufAttachOps())
    Interrupts.of(machine).send(None)
    try:
        t = d.map_unlocked(BIDI)
    finally:
        Interrupts.of(machine).clear()
    d.unmap_unlocked(t, BIDI)
    # and once signalled, the static importer gets its mapping
    task = machine.sched.spawn(lambda: s.map_unlocked(BIDI), name="mapper")
    assert not task.join(0.05)                    # blocked on the KERNEL fence
    k.signal()
    assert task.join(10)
    t = task.result()
    s.unmap_unlocked(t, BIDI)
    w.signal()
    for f in (w, k):
        f.put()
    s.detach()
    d.detach()
    b.put()


def test_map_result_checks(machine: Machine, phys) -> None:
    pages = phys.alloc("ram0", PAGE_SIZE, phys.new_owner("x"))
    cached: dict[str, object] = {}

    class Caching(DmaBufOps):
        mode = "same"

        def map_dma_buf(self, a, d):
            if self.mode == "none":
                return None
            if self.mode == "wrong":
                return [(0, 4096)]
            if "t" not in cached:
                cached["t"] = SgTable.from_pages(pages).map(a.dev, d)
            return cached["t"]

        def unmap_dma_buf(self, a, t, d):
            pass

        def release(self, b):
            pass

    ops = Caching()
    b = dma_buf_export(DmaBufExportInfo("c", ops, PAGE_SIZE, priv=ops))
    a = b.attach(DirectDev("d", phys))
    t = a.map_unlocked(BIDI)
    with pytest.raises(ContractViolation, match="must not cache"):
        a.map_unlocked(BIDI)
    ops.mode = "none"
    with pytest.raises(DmaBufError) as ei:
        a.map_unlocked(BIDI)
    assert ei.value.errno == errno.ENOMEM
    ops.mode = "wrong"
    with pytest.raises(ContractViolation, match="SgTable or a PhysVec"):
        a.map_unlocked(BIDI)
    a.unmap_unlocked(t, BIDI)
    a.detach()
    b.put()


def test_unmap_checks(machine: Machine, phys) -> None:
    b = MockExporter(phys).export()
    a1 = b.attach(DirectDev("a1", phys))
    a2 = b.attach(DirectDev("a2", phys))
    t = a1.map_unlocked(BIDI)
    with pytest.raises(ContractViolation, match="did not map"):
        a2.unmap_unlocked(t, BIDI)
    with pytest.raises(ContractViolation, match="direction"):
        a1.unmap_unlocked(t, DmaDataDirection.FROM_DEVICE)
    a1.unmap_unlocked(None, BIDI)  # type: ignore[arg-type]
    assert machine.warnings[-1][0] == "dma_buf_unmap_attachment"
    a1.unmap_unlocked(t, BIDI)
    with pytest.raises(ContractViolation, match="unmapped twice"):
        a1.unmap_unlocked(t, BIDI)
    a1.detach()
    a2.detach()
    b.put()


def test_debug_wrap_hides_pages_and_unwraps_on_unmap(machine: Machine, phys) -> None:
    e = MockExporter(phys)
    b = e.export()
    assert machine.state(DmaBufRegistry).debug_wrap        # lock tracker on => DMABUF_DEBUG
    a = b.attach(DirectDev("d", phys))
    t = a.map_unlocked(BIDI)
    assert isinstance(t, SgTable) and t.is_dma_only
    with pytest.raises(ContractViolation, match="dma_buf_sg_page"):
        t.sg_page(0)
    eng = DmaEngine(a.dev)
    eng.write(t, np.full(8, 7, np.uint8), owner=e.owner)
    a.unmap_unlocked(t, BIDI)                  # the exporter got its own table back
    assert t.freed and e.unmaps == 1
    assert e.read_back()[:8].tolist() == [7] * 8
    a.detach()
    b.put()


def test_physvec_mapping(machine: Machine, phys) -> None:
    e = MockExporter(phys, mode="physvec")
    b = e.export()
    a = b.attach(DirectDev("d", phys))
    t = a.map_unlocked(BIDI)
    assert isinstance(t, PhysVec) and t.total_len == MiB and t.nbytes == 16 * len(t)
    DmaEngine(a.dev).fill(t, 0x5A, owner=e.owner)
    a.unmap_unlocked(t, BIDI)
    assert int(e.read_back().min()) == 0x5A
    a.detach()
    b.put()


# -- invalidate ---------------------------------------------------------------------------------


def test_invalidate_mappings_order_and_skips(machine: Machine, phys) -> None:
    order: list[str] = []
    b = MockExporter(phys).export()
    for name in ("first", "second"):
        b.dynamic_attach(DirectDev(name, phys),
                         DmaBufAttachOps(invalidate_mappings=lambda a, n=name: order.append(n)))
    b.dynamic_attach(DirectDev("no-op", phys), DmaBufAttachOps())
    b.attach(DirectDev("static", phys))
    b.resv.lock(None)
    b.invalidate_mappings()
    b.resv.unlock()
    assert order == ["second", "first"]
    for a in b.attachments:
        a.detach()
    b.put()


# -- CPU access ---------------------------------------------------------------------------------


@pytest.mark.parametrize("direction,usage,waits", [
    (DmaDataDirection.FROM_DEVICE, DmaResvUsage.KERNEL, True),
    (DmaDataDirection.FROM_DEVICE, DmaResvUsage.WRITE, True),
    (DmaDataDirection.FROM_DEVICE, DmaResvUsage.READ, False),
    (DmaDataDirection.FROM_DEVICE, DmaResvUsage.BOOKKEEP, False),
    (DmaDataDirection.TO_DEVICE, DmaResvUsage.READ, True),
    (DmaDataDirection.BIDIRECTIONAL, DmaResvUsage.READ, True),
    (DmaDataDirection.TO_DEVICE, DmaResvUsage.BOOKKEEP, False),
])
def test_begin_cpu_access_waits_by_direction(machine: Machine, phys, direction, usage,
                                             waits) -> None:
    e = MockExporter(phys)
    b = e.export()
    f = fence(machine)
    add_fence(b.resv, f, usage)
    Interrupts.of(machine).send(None)     # an interruptible wait on f fails at once
    try:
        if waits:
            with pytest.raises(DmaBufError) as ei:
                b.begin_cpu_access(direction)
            assert ei.value.errno == ERESTARTSYS
        else:
            b.begin_cpu_access(direction)
    finally:
        Interrupts.of(machine).clear()
    assert e.calls[-1] == ("begin_cpu_access", False)
    b.end_cpu_access(direction)
    assert e.calls[-1] == ("end_cpu_access", False)
    f.signal()
    b.begin_cpu_access(direction)          # nothing pending any more
    f.put()
    b.put()


# -- mmap / vmap --------------------------------------------------------------------------------


def test_mmap_maps_real_bytes(machine: Machine, phys) -> None:
    e = MockExporter(phys, region="ram0")
    b = e.export()
    vma = Vma(2 * PAGE_SIZE)
    b.mmap(vma, 3)
    assert vma.file is b.file and vma.pgoff == 3
    vma.view[:4] = [1, 2, 3, 4]
    assert e.read_back()[3 * PAGE_SIZE:3 * PAGE_SIZE + 4].tolist() == [1, 2, 3, 4]
    vma2 = Vma(PAGE_SIZE, pgoff=255)
    b.file.mmap(vma2)                        # dma_buf_mmap_internal: last page is fine
    b.put()


def test_vma_flags_and_close_hook() -> None:
    may = VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
    rw = Vma(PAGE_SIZE)                                    # mmap(RW, MAP_SHARED)
    assert rw.vm_flags == VM_READ | VM_WRITE | VM_SHARED | VM_MAYSHARE | may
    assert rw.shared and rw.writable and rw.vm_ops is None
    assert Vma.for_mmap(PAGE_SIZE).vm_flags == rw.vm_flags
    ro = Vma.for_mmap(2 * PAGE_SIZE, pgoff=3, prot=PROT_READ, shared=False)
    assert (ro.length, ro.pgoff, ro.vm_flags) == (2 * PAGE_SIZE, 3, VM_READ | may)
    assert not ro.shared and not ro.writable
    ro.close()                                             # no vm_ops: nothing to run
    seen: list[Vma] = []
    ro.vm_ops = VmOps(close=seen.append)
    ro.close()
    assert seen == [ro]


def test_vmap_refcount(machine: Machine, phys) -> None:
    e = MockExporter(phys)
    b = e.export()
    b.resv.lock(None)
    p1 = b.vmap()
    p2 = b.vmap()
    assert p1 is p2 and b.vmapping_counter == 2 and e.vmaps == 1     # I-B4
    with pytest.raises(ContractViolation, match="not the buffer's vmap"):
        b.vunmap(np.zeros(1))
    b.vunmap(p1)
    assert b.vmap_ptr is p1 and e.vmaps == 1
    b.vunmap(p2)
    assert b.vmap_ptr is None and b.vmapping_counter == 0 and e.vmaps == 0
    with pytest.raises(ContractViolation, match="vunmap without a vmap"):
        b.vunmap(p2)
    b.resv.unlock()
    p = b.vmap_unlocked()
    b.vunmap_unlocked(p)
    assert ("vmap", True) in e.calls and ("vunmap", True) in e.calls
    b.put()


def test_vmap_failure_warns(machine: Machine, phys) -> None:
    class Bad(MockExporter):
        def vmap(self, dmabuf):
            raise DmaBufError(errno.ENOMEM, "no vmalloc space")

    b = Bad(phys).export()
    with pytest.raises(DmaBufError):
        b.vmap_unlocked()
    assert machine.warnings[-1][0] == "dma_buf_vmap" and b.vmapping_counter == 0
    b.put()


# -- iteration, describe, name --------------------------------------------------------------------


def test_iteration_skips_dying_and_holds_references(machine: Machine, phys) -> None:
    bs = [MockExporter(phys).export() for _ in range(3)]
    seen = []
    for b in for_each_dma_buf(machine):
        seen.append(b.ino)
        assert b.file.count == 2
    assert seen == [3, 2, 1]
    assert [b.file.count for b in bs] == [1, 1, 1]
    first = dma_buf_iter_begin(machine)
    assert first is bs[2]
    nxt = dma_buf_iter_next(first)
    assert nxt is bs[1] and bs[2].file.count == 1
    nxt.put()
    for b in bs:
        b.put()
    assert dma_buf_iter_begin(machine) is None


def test_describe(machine: Machine, phys) -> None:
    b = DynamicMockExporter(phys).export()
    a = b.dynamic_attach(DirectDev("nic", phys), DmaBufAttachOps(True, invalidate_mappings=print))
    b.set_name("frame")
    d = b.describe()
    assert d["name"] == "frame" and d["dynamic_exporter"] and d["count"] == 1
    assert d["attachments"] == [{"dev": "nic", "dynamic": True, "peer2peer": True,
                                 "revocable": True, "mappings": 0, "pins": 0, "map_pins": 0,
                                 "invalidations": 0}]
    a.detach()
    b.put()


def test_dma_engine_roundtrip_through_the_protocol(machine: Machine, phys) -> None:
    e = MockExporter(phys)
    b = e.export()
    imp = MockImporter(b, phys, "gpu1")
    data = np.arange(MiB, dtype=np.uint64).view(np.uint8)[:MiB]
    imp.write(data, e.owner)
    assert np.array_equal(e.read_back(), data)
    assert np.array_equal(imp.read(MiB, e.owner), data)
    imp.release()
    b.put()


def test_trace_events_of_a_session(machine: Machine, phys) -> None:
    e = DynamicMockExporter(phys)
    with machine.trace.record("dma_buf") as events:
        b = e.export()
        a = b.dynamic_attach(DirectDev("nic", phys), DmaBufAttachOps(
            invalidate_mappings=lambda at: None))
        b.resv.lock(None)
        a.pin()
        t = a.map(BIDI)
        b.invalidate_mappings()
        a.unmap(t, BIDI)
        a.unpin()
        b.resv.unlock()
        a.detach()
        b.put()
    assert [ev.name for ev in events] == [
        "dma_buf_export", "dma_buf_attach", "dma_buf_pin", "dma_buf_map_attachment",
        "dma_buf_invalidate_mappings", "dma_buf_unmap_attachment", "dma_buf_unpin",
        "dma_buf_detach", "dma_buf_release"]
    assert events[3].fields == {"ino": b.ino, "dev": "nic", "direction": "BIDIRECTIONAL",
                                "nbytes": MiB}
