"""DOC: locking convention — drivers/dma-buf/dma-buf.c, as data, checked at every entry point.

To avoid deadlocks between exporters and importers, every dma-buf user follows one convention
about the buffer's reservation lock (``dmabuf->resv``, a ww_mutex). The kernel states it once,
in the ``DOC: locking convention`` block of dma-buf.c; the model states it once, here, as the
table :data:`LOCKING_CONVENTION`, and

* every model function named in the table asserts its row at entry (:func:`check_entry`,
  through the machine's lock tracker: ``dma_resv_assert_held()`` for "must hold",
  the lockdep ``might_lock``/recursion check for "must not hold");
* the dma-buf core calls every exporter callback through :func:`check_callback`, which asserts
  the lock state the table promises the exporter ("called locked" / "called unlocked");
* ``tests/buf/test_locking_convention.py`` walks the table and checks each function against it,
  with the lock held and not held, and each exporter callback's lock state on entry.

The convention (v7.1 names; ``dma_buf_move_notify`` is the pre-7.1 name of
``dma_buf_invalidate_mappings`` and keeps its row):

Importers **must hold** the resv lock when calling: ``dma_buf_pin``, ``dma_buf_unpin``,
``dma_buf_map_attachment``, ``dma_buf_unmap_attachment``, ``dma_buf_vmap``, ``dma_buf_vunmap``.

Importers **must not hold** it when calling: ``dma_buf_attach``, ``dma_buf_dynamic_attach``,
``dma_buf_detach``, ``dma_buf_export``, ``dma_buf_fd``, ``dma_buf_get``, ``dma_buf_put``,
``dma_buf_mmap``, ``dma_buf_begin_cpu_access``, ``dma_buf_end_cpu_access``,
``dma_buf_map_attachment_unlocked``, ``dma_buf_unmap_attachment_unlocked``,
``dma_buf_vmap_unlocked``, ``dma_buf_vunmap_unlocked``.

Exporter callbacks **called unlocked** (the exporter may take the lock): ``attach``, ``detach``,
``release``, ``begin_cpu_access``, ``end_cpu_access``, ``mmap``.

Exporter callbacks **called locked** (the exporter must not take it): ``pin``, ``unpin``,
``map_dma_buf``, ``unmap_dma_buf``, ``vmap``, ``vunmap``.

Exporters **must hold** it when calling ``dma_buf_invalidate_mappings()``.

Importer callbacks: ``dma_buf_attach_ops.invalidate_mappings`` (``move_notify``) is called with
the lock held (it is a row too, so the test checks it).

Rows marked ``documented=False`` are not in the kernel's DOC block but follow from the code
(``dma_buf_poll`` and ``IMPORT_SYNC_FILE`` take the lock themselves; ``put_dma_buf`` may run
the exporter's ``release``) — the model asserts them the same way.

Kernel: drivers/dma-buf/dma-buf.c (DOC: locking convention, dma_resv_assert_held() in
dma_buf_pin/unpin/map/unmap/vmap/vunmap/invalidate_mappings, might_lock() in
dma_buf_begin/end_cpu_access), include/linux/dma-buf.h (kdoc of struct dma_buf_ops).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from dmabuf.errors import ContractViolation
from dmabuf.machine import Machine

__all__ = [
    "LOCKING_CONVENTION",
    "LockingRule",
    "Party",
    "ResvRule",
    "check_callback",
    "check_entry",
    "rule",
    "rules",
]


class ResvRule(enum.Enum):
    """What a row of the convention says about ``dmabuf->resv``."""

    #: The caller must hold the resv lock (``dma_resv_assert_held`` at entry).
    MUST_HOLD = "must hold"
    #: The caller must not hold it: the function takes it (or may take it) itself.
    MUST_NOT_HOLD = "must not hold"
    #: An exporter/importer callback the core invokes with the lock held; it must not take it.
    CALLED_LOCKED = "called locked"
    #: An exporter callback the core invokes without the lock; it may take it.
    CALLED_UNLOCKED = "called unlocked"


class Party(enum.Enum):
    """Who calls (for functions) or who implements (for callbacks)."""

    IMPORTER = "importer"
    EXPORTER = "exporter"
    CORE = "core"  # called by the core on behalf of user space (file operations)


@dataclass(frozen=True)
class LockingRule:
    """One row of ``DOC: locking convention``.

    Attributes:
        symbol: the kernel symbol: a function (``dma_buf_map_attachment``) or a callback
            (``dma_buf_ops.pin``, ``dma_buf_attach_ops.invalidate_mappings``).
        rule: the :class:`ResvRule`.
        party: who calls the function / implements the callback.
        model: where the model implements it (``DmaBufAttachment.map``).
        documented: whether the kernel's DOC block lists it (False: follows from the code).
    """

    symbol: str
    rule: ResvRule
    party: Party
    model: str
    documented: bool = True

    @property
    def is_callback(self) -> bool:
        """True for ``dma_buf_ops.*`` / ``dma_buf_attach_ops.*`` rows."""
        return "." in self.symbol and self.symbol.split(".")[0] in ("dma_buf_ops",
                                                                    "dma_buf_attach_ops")


_H, _N = ResvRule.MUST_HOLD, ResvRule.MUST_NOT_HOLD
_L, _U = ResvRule.CALLED_LOCKED, ResvRule.CALLED_UNLOCKED
_I, _E, _C = Party.IMPORTER, Party.EXPORTER, Party.CORE

#: ``DOC: locking convention``, one row per symbol, in the DOC block's order.
LOCKING_CONVENTION: tuple[LockingRule, ...] = (
    # 1. Importers must hold the dma-buf reservation lock when calling these functions:
    LockingRule("dma_buf_pin", _H, _I, "DmaBufAttachment.pin"),
    LockingRule("dma_buf_unpin", _H, _I, "DmaBufAttachment.unpin"),
    LockingRule("dma_buf_map_attachment", _H, _I, "DmaBufAttachment.map"),
    LockingRule("dma_buf_unmap_attachment", _H, _I, "DmaBufAttachment.unmap"),
    LockingRule("dma_buf_vmap", _H, _I, "DmaBuf.vmap"),
    LockingRule("dma_buf_vunmap", _H, _I, "DmaBuf.vunmap"),
    # 2. Importers must not hold the dma-buf reservation lock when calling these functions:
    LockingRule("dma_buf_attach", _N, _I, "DmaBuf.attach"),
    LockingRule("dma_buf_dynamic_attach", _N, _I, "DmaBuf.dynamic_attach"),
    LockingRule("dma_buf_detach", _N, _I, "DmaBuf.detach"),
    LockingRule("dma_buf_export", _N, _E, "dma_buf_export"),
    LockingRule("dma_buf_fd", _N, _E, "DmaBuf.fd"),
    LockingRule("dma_buf_get", _N, _I, "dma_buf_get"),
    LockingRule("dma_buf_put", _N, _I, "DmaBuf.put"),
    LockingRule("dma_buf_mmap", _N, _I, "DmaBuf.mmap"),
    LockingRule("dma_buf_begin_cpu_access", _N, _I, "DmaBuf.begin_cpu_access"),
    LockingRule("dma_buf_end_cpu_access", _N, _I, "DmaBuf.end_cpu_access"),
    LockingRule("dma_buf_map_attachment_unlocked", _N, _I, "DmaBufAttachment.map_unlocked"),
    LockingRule("dma_buf_unmap_attachment_unlocked", _N, _I, "DmaBufAttachment.unmap_unlocked"),
    LockingRule("dma_buf_vmap_unlocked", _N, _I, "DmaBuf.vmap_unlocked"),
    LockingRule("dma_buf_vunmap_unlocked", _N, _I, "DmaBuf.vunmap_unlocked"),
    # Exporters: 1. callbacks invoked with the reservation unlocked (the exporter may lock):
    LockingRule("dma_buf_ops.attach", _U, _E, "DmaBufOps.attach"),
    LockingRule("dma_buf_ops.detach", _U, _E, "DmaBufOps.detach"),
    LockingRule("dma_buf_ops.release", _U, _E, "DmaBufOps.release"),
    LockingRule("dma_buf_ops.begin_cpu_access", _U, _E, "DmaBufOps.begin_cpu_access"),
    LockingRule("dma_buf_ops.end_cpu_access", _U, _E, "DmaBufOps.end_cpu_access"),
    LockingRule("dma_buf_ops.mmap", _U, _E, "DmaBufOps.mmap"),
    # 2. callbacks invoked with the reservation locked (the exporter can't take the lock):
    LockingRule("dma_buf_ops.pin", _L, _E, "DmaBufOps.pin"),
    LockingRule("dma_buf_ops.unpin", _L, _E, "DmaBufOps.unpin"),
    LockingRule("dma_buf_ops.map_dma_buf", _L, _E, "DmaBufOps.map_dma_buf"),
    LockingRule("dma_buf_ops.unmap_dma_buf", _L, _E, "DmaBufOps.unmap_dma_buf"),
    LockingRule("dma_buf_ops.vmap", _L, _E, "DmaBufOps.vmap"),
    LockingRule("dma_buf_ops.vunmap", _L, _E, "DmaBufOps.vunmap"),
    # 3. Exporters must hold the dma-buf reservation lock when calling these functions:
    LockingRule("dma_buf_invalidate_mappings", _H, _E, "DmaBuf.invalidate_mappings"),
    LockingRule("dma_buf_move_notify", _H, _E, "DmaBuf.move_notify"),
    # Importer callback (kdoc of struct dma_buf_attach_ops): called with the lock held.
    LockingRule("dma_buf_attach_ops.invalidate_mappings", _L, _I,
                "DmaBufAttachOps.invalidate_mappings"),
    # Not in the DOC block; follows from the code (they take the lock themselves).
    LockingRule("dma_buf_poll", _N, _C, "DmaBufFileOps.poll", documented=False),
    LockingRule("dma_buf_import_sync_file", _N, _C, "DmaBuf.import_sync_file",
                documented=False),
    LockingRule("dma_buf_export_sync_file", _N, _C, "DmaBuf.export_sync_file",
                documented=False),
    LockingRule("dma_buf_debug_show", _N, _C, "dma_buf_bufinfo", documented=False),
    # The exporter's revoke sequence (vfio-pci) takes the lock itself.
    LockingRule("vfio_pci_dma_buf_move", _N, _E, "Revoker.revoke", documented=False),
)

_BY_SYMBOL: dict[str, LockingRule] = {r.symbol: r for r in LOCKING_CONVENTION}
if len(_BY_SYMBOL) != len(LOCKING_CONVENTION):  # pragma: no cover - guards edits of the table
    raise RuntimeError("duplicate symbol in LOCKING_CONVENTION")


def rule(symbol: str) -> LockingRule:
    """The row of ``symbol`` (``"dma_buf_map_attachment"``, ``"dma_buf_ops.pin"``).

    Raises: KeyError naming the symbol when the convention has no such row.

    Model-only: lookup in the locking-convention table (dma-buf.c DOC: locking convention).
    """
    try:
        return _BY_SYMBOL[symbol]
    except KeyError:
        raise KeyError(f"{symbol!r} is not in DOC: locking convention") from None


def rules(kind: ResvRule | None = None, *, callbacks: bool | None = None) -> list[LockingRule]:
    """Rows filtered by rule and by whether they are callbacks (None: either).

    Model-only: lookup in the locking-convention table (dma-buf.c DOC: locking convention).
    """
    return [r for r in LOCKING_CONVENTION
            if (kind is None or r.rule is kind)
            and (callbacks is None or r.is_callback == callbacks)]


def _held(machine: Machine, resv: Any) -> bool:
    return machine.lockdep.is_held(resv_lockdep_key(resv))


def resv_lockdep_key(resv: Any) -> object:
    """The object the lock tracker knows ``resv``'s lock by: its ww_mutex (``resv->lock``).

    Model-only: maps a resv to the key the model's lock tracker uses (the kernel's lockdep class of
    resv->lock).
    """
    return getattr(resv, "ww_mutex", resv)


def check_entry(symbol: str, machine: Machine, resv: Any) -> None:
    """Assert the convention's row for ``symbol`` at the entry of a model function.

    * ``MUST_HOLD`` — ``dma_resv_assert_held(resv)``: raises unless the calling thread holds it.
    * ``MUST_NOT_HOLD`` — the function takes the lock itself; holding it already is a
      recursive-locking deadlock (what lockdep's ``might_lock()`` reports).

    Checks only when the machine's lock tracker is enabled (as lockdep is a debug option).

    Args:
        symbol: kernel symbol of the function being entered.
        machine: whose lock tracker to ask.
        resv: the buffer's reservation object.
    Context: any; never blocks.
    Raises: ContractViolation naming the symbol and the rule.
    Kernel: include/linux/dma-resv.h, dma_resv_assert_held(); include/linux/lockdep.h,
        might_lock().
    """
    if not machine.lockdep.enabled:
        return
    r = _BY_SYMBOL[symbol]
    held = _held(machine, resv)
    if r.rule is ResvRule.MUST_HOLD and not held:
        raise _violation(machine, symbol, f"{symbol}() must be called with the dma-buf's "
                         "reservation lock held (DOC: locking convention): lock it with "
                         "resv.lock() first, or call the _unlocked variant")
    if r.rule is ResvRule.MUST_NOT_HOLD and held:
        raise _violation(machine, symbol, f"{symbol}() must be called WITHOUT the dma-buf's "
                         "reservation lock (it takes the lock itself; DOC: locking "
                         "convention): unlock first, or call the locked variant")


def check_callback(symbol: str, machine: Machine, resv: Any) -> None:
    """Assert the lock state the convention promises a callback before the core invokes it.

    ``CALLED_LOCKED`` — the resv lock must be held by the calling thread;
    ``CALLED_UNLOCKED`` — it must not be (the callee may take it).

    A failure here is a bug in the model's core (or in code calling exporter ops directly),
    never in the exporter. Checks only with the lock tracker enabled.

    Raises: ContractViolation naming the callback.

    Model-only: the kernel documents this convention in prose (dma-buf.c DOC: locking convention);
    the model checks it.
    """
    if not machine.lockdep.enabled:
        return
    r = _BY_SYMBOL[symbol]
    held = _held(machine, resv)
    if r.rule is ResvRule.CALLED_LOCKED and not held:
        raise _violation(machine, symbol, f"{symbol} must be invoked with the reservation "
                         "lock held (DOC: locking convention)")
    if r.rule is ResvRule.CALLED_UNLOCKED and held:
        raise _violation(machine, symbol, f"{symbol} must be invoked without the reservation "
                         "lock (the exporter may take it; DOC: locking convention)")


def _violation(machine: Machine, symbol: str, message: str) -> ContractViolation:
    machine.lockdep.violations.append(f"dma_buf_locking_convention: {message}")
    return ContractViolation(f"dma_buf_locking_convention({symbol})", message)
