"""DOC: locking convention — every row of dmabuf.buf.locking.LOCKING_CONVENTION checked.

* every function row: called in the wrong lock state it raises the convention's
  ContractViolation (naming the symbol) before doing anything; in the right state it works;
* every callback row: the core invokes the exporter's (and importer's) callback in the lock
  state the row promises, observed from inside the callback;
* the table names real model entry points, and matches the kernel DOC block's lists.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dmabuf_mocks import BIDI, DynamicMockExporter, MiB, make_phys

import dmabuf.buf.dma_buf as dma_buf_mod
from dmabuf.buf import dma_buf_file, locking
from dmabuf.buf.device import DirectDev
from dmabuf.buf.dma_buf import (
    DmaBuf,
    DmaBufAttachment,
    DmaBufAttachOps,
    DmaBufExportInfo,
    DmaBufOps,
    Vma,
)
from dmabuf.buf.dma_buf_file import (
    DMA_BUF_SYNC_READ,
    DmaBufFileOps,
    dma_buf_bufinfo,
    install_sync_file,
)
from dmabuf.buf.file import EPOLLIN, current_process
from dmabuf.buf.locking import LOCKING_CONVENTION, LockingRule, ResvRule
from dmabuf.buf.revoke import Revoker
from dmabuf.errors import ContractViolation
from dmabuf.machine import Machine
from dmabuf.mm.phys import PAGE_SIZE
from dmabuf.sync.dma_fence import dma_fence_get_stub
from dmabuf.sync.sync_file import SyncFile

# The kernel's DOC block, transcribed (drivers/dma-buf/dma-buf.c, v7.1 names).
KERNEL_DOC = {
    ResvRule.MUST_HOLD: {"dma_buf_pin", "dma_buf_unpin", "dma_buf_map_attachment",
                         "dma_buf_unmap_attachment", "dma_buf_vmap", "dma_buf_vunmap",
                         "dma_buf_invalidate_mappings", "dma_buf_move_notify"},
    ResvRule.MUST_NOT_HOLD: {"dma_buf_attach", "dma_buf_dynamic_attach", "dma_buf_detach",
                             "dma_buf_export", "dma_buf_fd", "dma_buf_get", "dma_buf_put",
                             "dma_buf_mmap", "dma_buf_begin_cpu_access",
                             "dma_buf_end_cpu_access", "dma_buf_map_attachment_unlocked",
                             "dma_buf_unmap_attachment_unlocked", "dma_buf_vmap_unlocked",
                             "dma_buf_vunmap_unlocked"},
    ResvRule.CALLED_UNLOCKED: {"dma_buf_ops.attach", "dma_buf_ops.detach", "dma_buf_ops.release",
                               "dma_buf_ops.begin_cpu_access", "dma_buf_ops.end_cpu_access",
                               "dma_buf_ops.mmap"},
    ResvRule.CALLED_LOCKED: {"dma_buf_ops.pin", "dma_buf_ops.unpin", "dma_buf_ops.map_dma_buf",
                             "dma_buf_ops.unmap_dma_buf", "dma_buf_ops.vmap",
                             "dma_buf_ops.vunmap", "dma_buf_attach_ops.invalidate_mappings"},
}

_CLASSES = {"DmaBuf": DmaBuf, "DmaBufAttachment": DmaBufAttachment, "DmaBufOps": DmaBufOps,
            "DmaBufAttachOps": DmaBufAttachOps, "DmaBufFileOps": DmaBufFileOps,
            "Revoker": Revoker}


def test_table_matches_the_kernel_doc_block() -> None:
    for kind, symbols in KERNEL_DOC.items():
        documented = {r.symbol for r in locking.rules(kind) if r.documented}
        assert documented == symbols, kind


@pytest.mark.parametrize("row", LOCKING_CONVENTION, ids=lambda r: r.symbol)
def test_row_names_a_model_entry_point(row: LockingRule) -> None:
    if "." in row.model:
        cls, attr = row.model.split(".")
        assert hasattr(_CLASSES[cls], attr), row.model
    else:
        assert hasattr(dma_buf_mod, row.model) or hasattr(dma_buf_file, row.model), row.model
    if row.documented and not row.is_callback:
        # every DOC function also exists under its kernel name, for literal ports
        assert callable(getattr(dma_buf_mod, row.symbol)), row.symbol


# -- function rows ----------------------------------------------------------------------------


@dataclass
class Env:
    m: Machine
    phys: Any
    e: DynamicMockExporter
    b: DmaBuf
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def dyn(self) -> DmaBufAttachment:
        a = self.b.dynamic_attach(DirectDev(f"d{len(self.cleanups)}", self.phys),
                                  DmaBufAttachOps(invalidate_mappings=lambda a: None))
        self.cleanups.append(lambda: a.detach() if not a.detached else None)
        return a


Call = Callable[[], Any]


def _locked(env: Env, fn: Call) -> Call:
    def run() -> Any:
        env.b.resv.lock(None)
        try:
            return fn()
        finally:
            env.b.resv.unlock()
    return run


def prep(symbol: str, env: Env) -> Call:
    """Set up what ``symbol`` needs (unlocked) and return the call itself."""
    b = env.b
    if symbol == "dma_buf_pin":
        a = env.dyn()
        env.cleanups.insert(0, lambda: _locked(env, a.unpin)() if a.pin_count else None)
        return lambda: dma_buf_mod.dma_buf_pin(a)
    if symbol == "dma_buf_unpin":
        a = env.dyn()
        _locked(env, a.pin)()
        return lambda: dma_buf_mod.dma_buf_unpin(a)
    if symbol in ("dma_buf_map_attachment", "dma_buf_map_attachment_unlocked"):
        a = env.dyn()
        fn = getattr(dma_buf_mod, symbol)
        env.cleanups.insert(0, lambda: [a.unmap_unlocked(t, BIDI)
                                        for t in [e[0] for e in list(a._live.values())]])
        return lambda: fn(a, BIDI)
    if symbol in ("dma_buf_unmap_attachment", "dma_buf_unmap_attachment_unlocked"):
        a = env.dyn()
        t = a.map_unlocked(BIDI)
        fn = getattr(dma_buf_mod, symbol)
        return lambda: fn(a, t, BIDI)
    if symbol in ("dma_buf_vmap", "dma_buf_vmap_unlocked"):
        fn = getattr(dma_buf_mod, symbol)
        env.cleanups.insert(0, lambda: b.vunmap_unlocked(b.vmap_ptr) if b.vmap_ptr is not None
                            else None)
        return lambda: fn(b)
    if symbol in ("dma_buf_vunmap", "dma_buf_vunmap_unlocked"):
        p = b.vmap_unlocked()
        fn = getattr(dma_buf_mod, symbol)
        return lambda: fn(b, p)
    if symbol in ("dma_buf_attach", "dma_buf_dynamic_attach"):
        got: list[DmaBufAttachment] = []
        env.cleanups.insert(0, lambda: [a.detach() for a in got])
        if symbol == "dma_buf_attach":
            return lambda: got.append(dma_buf_mod.dma_buf_attach(b, DirectDev("s", env.phys)))
        return lambda: got.append(dma_buf_mod.dma_buf_dynamic_attach(
            b, DirectDev("s", env.phys), DmaBufAttachOps()))
    if symbol == "dma_buf_detach":
        a = env.dyn()
        return lambda: dma_buf_mod.dma_buf_detach(b, a)
    if symbol == "dma_buf_export":
        made: list[DmaBuf] = []
        env.cleanups.insert(0, lambda: [x.put() for x in made])
        ops = DmaBufOps(map_dma_buf=lambda a, d: None, unmap_dma_buf=lambda a, t, d: None,
                        release=lambda x: None)
        info = DmaBufExportInfo("shared", ops, PAGE_SIZE, resv=b.resv, priv=1)
        return lambda: made.append(dma_buf_mod.dma_buf_export(info, env.m))
    if symbol == "dma_buf_fd":
        b.get()
        fds: list[int] = []
        env.cleanups.insert(0, lambda: current_process().fds.close(fds[0]) if fds else b.put())
        return lambda: fds.append(dma_buf_mod.dma_buf_fd(b))
    if symbol == "dma_buf_get":
        fd = b.get().fd()
        env.cleanups.insert(0, lambda: current_process().fds.close(fd))
        return lambda: dma_buf_mod.dma_buf_get(fd).put()
    if symbol == "dma_buf_put":
        b.get()
        done: list[bool] = []
        env.cleanups.insert(0, lambda: None if done else b.put())
        return lambda: (dma_buf_mod.dma_buf_put(b), done.append(True))
    if symbol == "dma_buf_mmap":
        return lambda: dma_buf_mod.dma_buf_mmap(b, Vma(PAGE_SIZE), 0)
    if symbol in ("dma_buf_begin_cpu_access", "dma_buf_end_cpu_access"):
        fn = getattr(dma_buf_mod, symbol)
        return lambda: fn(b, BIDI)
    if symbol in ("dma_buf_invalidate_mappings", "dma_buf_move_notify"):
        fn = getattr(dma_buf_mod, symbol)
        return lambda: fn(b)
    if symbol == "dma_buf_poll":
        return lambda: b.file.poll(EPOLLIN)
    if symbol == "dma_buf_export_sync_file":
        fds2: list[int] = []
        env.cleanups.insert(0, lambda: [current_process().fds.close(f) for f in fds2])
        return lambda: fds2.append(b.export_sync_file(DMA_BUF_SYNC_READ))
    if symbol == "dma_buf_import_sync_file":
        stub = dma_fence_get_stub(env.m)
        sfd = install_sync_file(SyncFile(stub))
        stub.put()
        env.cleanups.insert(0, lambda: current_process().fds.close(sfd))
        return lambda: b.import_sync_file(DMA_BUF_SYNC_READ, sfd)
    if symbol == "dma_buf_debug_show":
        return lambda: dma_buf_bufinfo(env.m)
    if symbol == "vfio_pci_dma_buf_move":
        r = Revoker(require_revocable=False, machine=env.m)
        r.bind(b)
        env.cleanups.insert(0, r.unrevoke)
        return r.revoke
    raise AssertionError(f"no invoker for {symbol}")


FUNCTION_ROWS = [r for r in LOCKING_CONVENTION if not r.is_callback]


@pytest.mark.parametrize("row", FUNCTION_ROWS, ids=lambda r: r.symbol)
def test_function_row_is_enforced(machine: Machine, row: LockingRule) -> None:
    phys = make_phys(4 * MiB, 4 * MiB)
    e = DynamicMockExporter(phys, size=MiB, region="ram0")
    env = Env(machine, phys, e, e.export())
    must_hold = row.rule is ResvRule.MUST_HOLD
    try:
        # 1) wrong state: the convention's violation, raised before any side effect
        call = prep(row.symbol, env)
        calls_before = list(e.calls)
        wrong = call if must_hold else _locked(env, call)
        with pytest.raises(ContractViolation) as ei:
            wrong()
        assert ei.value.rule == f"dma_buf_locking_convention({row.symbol})"
        assert e.calls == calls_before
        # 2) right state: works
        right = _locked(env, call) if must_hold else call
        right()
    finally:
        for c in env.cleanups:
            c()
        env.b.put()
    assert not env.b.resv.is_locked()


def test_checks_are_off_without_the_lock_tracker() -> None:
    with Machine(debug=False, name="nodebug") as m:
        phys = make_phys(4 * MiB, 4 * MiB)
        b = DynamicMockExporter(phys, size=MiB, region="ram0").export(machine=m)
        a = b.dynamic_attach(DirectDev("d", phys), DmaBufAttachOps())
        a.pin()                      # not asserted (lockdep off), as in a production kernel
        a.unpin()
        a.detach()
        b.put()


# -- callback rows ------------------------------------------------------------------------------


def test_callbacks_are_invoked_in_the_promised_lock_state(machine: Machine) -> None:
    phys = make_phys(4 * MiB, 4 * MiB)
    e = DynamicMockExporter(phys, size=MiB, region="ram0")
    b = e.export()
    seen: list[tuple[str, bool]] = []
    a = b.dynamic_attach(DirectDev("imp", phys), DmaBufAttachOps(
        invalidate_mappings=lambda at: seen.append(("invalidate_mappings", b.resv.held()))))
    s = b.attach(DirectDev("static", phys))
    b.resv.lock(None)
    a.pin()
    a.unpin()
    b.invalidate_mappings()
    b.resv.unlock()
    t = s.map_unlocked(BIDI)                 # pin_on_map -> pin + map
    s.unmap_unlocked(t, BIDI)                # unmap + unpin
    b.begin_cpu_access(BIDI)
    b.end_cpu_access(BIDI)
    b.mmap(Vma(PAGE_SIZE), 1)
    b.file.mmap(Vma(PAGE_SIZE, pgoff=2))
    p = b.vmap_unlocked()
    b.vunmap_unlocked(p)
    a.detach()
    s.detach()
    b.put()
    observed: dict[str, set[bool]] = {}
    for op, held in e.calls:
        observed.setdefault(f"dma_buf_ops.{op}", set()).add(held)
    for op, held in seen:
        observed.setdefault(f"dma_buf_attach_ops.{op}", set()).add(held)
    for row in locking.rules(callbacks=True):
        assert row.symbol in observed, f"{row.symbol} was never invoked"
        want = row.rule is ResvRule.CALLED_LOCKED
        assert observed[row.symbol] == {want}, (row.symbol, observed[row.symbol])


def test_exporter_taking_the_lock_in_a_locked_callback_is_caught(machine: Machine) -> None:
    """A 'called locked' exporter op that takes the resv lock would self-deadlock: lockdep
    reports the recursion."""
    phys = make_phys(4 * MiB, 4 * MiB)

    class Greedy(DynamicMockExporter):
        def pin(self, attach):
            attach.dmabuf.resv.lock(None)

    b = Greedy(phys, size=MiB, region="ram0").export()
    s = b.attach(DirectDev("s", phys))
    with pytest.raises(ContractViolation, match="lockdep"):
        s.map_unlocked(BIDI)
    s.detach()
    b.put()
