"""Exporter-side revoke and move — the documented sequence of dma-buf.c (v7.1) as a helper.

An exporter whose storage can be taken away (a VFIO device's BAR across a reset, device memory
on hot-unplug) must stop every importer's access, and know when it has stopped. The kdoc of
``dma_buf_invalidate_mappings()`` and ``dma_buf_attach_revocable()`` (v7.1, Leon Romanovsky's
series "dma-buf: Use revoke mechanism to invalidate shared buffers") documents the sequence, and
vfio-pci implements it (``vfio_pci_dma_buf_move()``)::

    dma_resv_lock(resv)
    revoked = true                       # new attach / map_dma_buf now fail (-ENODEV)
    dma_buf_invalidate_mappings(dmabuf)  # each revocable importer starts unmapping
    dma_resv_wait_timeout(resv, BOOKKEEP, intr=false, MAX)   # wait 1: in-flight DMA retires
    dma_resv_unlock(resv)
    wait until every importer has unmapped                    # wait 2: kref + completion

Between the invalidation and its unmap an importer may still speculatively *read* (and
discard) but must not write. Only importers for which ``dma_buf_attach_revocable()`` is true
promise to unmap in bounded time, so a revoking exporter rejects the others at attach
(``-EOPNOTSUPP``); VFIO also requires ``attach->peer2peer``. Wait 2 is bounded in VFIO (1 s,
then a WARN) to catch importers that claimed to be revocable but do not unmap: that is a bug
in the importer, reported, not an endless hang.

:class:`Revoker` packages this for exporters: call :meth:`Revoker.check_attach` from the
``attach`` op, :meth:`Revoker.map_get` / :meth:`Revoker.map_put` from ``map_dma_buf`` /
``unmap_dma_buf`` (it counts live mappings as VFIO's kref does), and :meth:`Revoker.revoke` /
:meth:`Revoker.unrevoke` when the storage goes and comes back. The waits go through the machine's
scheduler (fences, condition variables), so the sequence runs the same under the controlled
scheduler.

:func:`invalidate_and_wait` is the exporter side of the *movable* flow: invalidate, then wait for
the resv fences before moving the bytes (the importers' in-flight DMA must retire first).

Kernel: drivers/dma-buf/dma-buf.c (dma_buf_invalidate_mappings() kdoc,
dma_buf_attach_revocable()), drivers/vfio/pci/vfio_pci_dmabuf.c (vfio_pci_dma_buf_attach,
vfio_pci_dma_buf_map, vfio_pci_dma_buf_unmap, vfio_pci_dma_buf_move, vfio_pci_dma_buf_done).
"""

from __future__ import annotations

import errno
import math
from typing import Any

from dmabuf.buf.dma_buf import DmaBuf, DmaBufAttachment
from dmabuf.buf.locking import check_callback, check_entry
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.sync.dma_resv import DmaResvUsage

__all__ = ["VFIO_UNMAP_TIMEOUT", "Revoker", "invalidate_and_wait"]

#: How long vfio-pci waits for importers to unmap after a revoke before it WARNs (seconds).
VFIO_UNMAP_TIMEOUT = 1.0


def invalidate_and_wait(dmabuf: DmaBuf, *, usage: DmaResvUsage = DmaResvUsage.BOOKKEEP,
                        timeout: float | None = None) -> bool:
    """Invalidate every importer's mappings, then wait for the resv fences (movable flow).

    The exporter holds the resv lock (asserted), calls ``dma_buf_invalidate_mappings()`` and
    waits, non-interruptibly, until the fences of ``usage`` (default BOOKKEEP: all of them)
    have signalled — after that no importer DMA is in flight and the storage can be moved.
    Importers remap on their next use (which blocks on the lock the exporter still holds).

    Args:
        dmabuf: the buffer.
        usage: the fences to wait for.
        timeout: seconds, or None to wait forever (``MAX_SCHEDULE_TIMEOUT``).
    Context: resv lock held; may block.
    Returns: True when all fences signalled, False on timeout.
    Raises: ContractViolation: lock not held.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_invalidate_mappings();
        drivers/dma-buf/dma-resv.c, dma_resv_wait_timeout().
    """
    dmabuf.invalidate_mappings()
    return dmabuf.resv.wait_timeout(usage, False, timeout) > 0


class Revoker:
    """Exporter-side revoke state of one dma-buf, VFIO style (see the module docstring).

    Args:
        require_revocable: reject non-revocable importers at attach with ``-EOPNOTSUPP``
            (VFIO since v7.1). Default True.
        require_peer2peer: reject importers that cannot take P2P addresses (``-EOPNOTSUPP``;
            VFIO, whose memory is a BAR). Default False.
        unmap_timeout: how long :meth:`revoke` waits for importers to unmap (seconds; VFIO:
            1 s). None waits forever.
        machine: default the current machine.

    Attributes:
        revoked: the storage is gone: attach and map fail with ``-ENODEV`` (protected by the
            resv lock).
        live: mappings handed out and not yet unmapped (VFIO's kref minus its initial ref).
        revokes / timeouts: statistics.

    Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c (struct vfio_pci_dma_buf: revoked, kref, comp).
    """

    def __init__(self, *, require_revocable: bool = True, require_peer2peer: bool = False,
                 unmap_timeout: float | None = VFIO_UNMAP_TIMEOUT,
                 machine: Machine | None = None) -> None:
        if unmap_timeout is not None and not unmap_timeout >= 0:
            raise DmaBufError(errno.EINVAL, f"unmap_timeout {unmap_timeout!r} must be >= 0")
        self.machine = machine if machine is not None else current_machine()
        self.require_revocable = require_revocable
        self.require_peer2peer = require_peer2peer
        self.unmap_timeout = unmap_timeout
        self.dmabuf: DmaBuf | None = None
        self.revoked = False
        self.live = 0
        self.revokes = 0
        self.timeouts = 0
        self._lock = self.machine.sched.lock("revoker")
        self._done = self.machine.sched.condition(self._lock, "revoker.unmapped")

    def __repr__(self) -> str:
        return f"<Revoker revoked={self.revoked} live={self.live}>"

    def bind(self, dmabuf: DmaBuf) -> None:
        """Attach this helper to the buffer it guards (right after ``dma_buf_export``).

        Raises: ContractViolation("Revoker.bind"): already bound to another buffer.

        Model-only: the kernel's revoke sequence is open-coded by each exporter (dma-buf.c DOC); the
        model packages it as a helper.
        """
        if self.dmabuf is not None and self.dmabuf is not dmabuf:
            raise ContractViolation("Revoker.bind", "a Revoker guards one dma-buf")
        self.dmabuf = dmabuf

    def _buf(self) -> DmaBuf:
        if self.dmabuf is None:
            raise ContractViolation("Revoker", "bind(dmabuf) the Revoker after dma_buf_export")
        return self.dmabuf

    # -- exporter ops hooks --------------------------------------------------------------
    def check_attach(self, attach: DmaBufAttachment) -> None:
        """The checks of ``vfio_pci_dma_buf_attach()``; call from the exporter's ``attach``.

        Raises: DmaBufError(EOPNOTSUPP): P2P required and ``not attach.peer2peer``;
            DmaBufError(ENODEV): revoked; DmaBufError(EOPNOTSUPP): revocability required and
            the importer has no ``invalidate_mappings``.
        Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_dma_buf_attach().
        """
        if self.require_peer2peer and not attach.peer2peer:
            raise DmaBufError(errno.EOPNOTSUPP, f"{attach.dev.name}: this exporter's memory is "
                              "peer (MMIO) memory; the importer must allow_peer2peer")
        if self.revoked:
            raise DmaBufError(errno.ENODEV, "the buffer's storage is revoked")
        if self.require_revocable and not attach.revocable:
            raise DmaBufError(errno.EOPNOTSUPP, f"{attach.dev.name}: the importer is not "
                              "revocable (no invalidate_mappings); this exporter may revoke "
                              "its memory and needs importers that unmap on request")

    def map_get(self, attach: DmaBufAttachment) -> None:
        """Call at the start of ``map_dma_buf`` (resv held): fail if revoked, count the map.

        Raises: DmaBufError(ENODEV): revoked; ContractViolation: resv not held.
        Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_dma_buf_map() (kref_get).
        """
        buf = self._buf()
        check_callback("dma_buf_ops.map_dma_buf", buf.machine, buf.resv)
        if self.revoked:
            raise DmaBufError(errno.ENODEV, f"{attach.dev.name}: the buffer's storage is "
                              "revoked; mappings fail until it is restored")
        with self._lock:
            self.live += 1

    def map_undo(self) -> None:
        """Undo :meth:`map_get` when ``map_dma_buf`` fails after it.

        Model-only: part of the model's revoke helper; exporters open-code it in the kernel.
        """
        self.map_put(None)

    def map_put(self, attach: DmaBufAttachment | None) -> None:
        """Call from ``unmap_dma_buf``: one mapping fewer; the last one completes a revoke.

        Raises: ContractViolation("Revoker.map_put"): more puts than maps.
        Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_dma_buf_unmap() (kref_put ->
            vfio_pci_dma_buf_done -> complete).
        """
        with self._lock:
            if self.live <= 0:
                raise ContractViolation("Revoker.map_put", "unmap without a map")
            self.live -= 1
            if self.live == 0:
                self._done.notify_all()

    # -- revoke / unrevoke ---------------------------------------------------------------
    def revoke(self) -> bool:
        """Revoke the storage: the documented two-wait sequence.

        Under the resv lock: set ``revoked`` (new attach/map fail ``-ENODEV``), invalidate
        every importer's mappings, wait (not interruptible, no timeout) for every fence up to
        BOOKKEEP; unlock; then wait up to ``unmap_timeout`` until every mapping is unmapped.
        On timeout the importers that still hold mappings are named in a WARN
        (``machine.warn("dma_buf_revoke", …)``) and False is returned; the buffer stays
        revoked either way. Revoking twice is a no-op returning True if nothing is mapped.

        Context: must not hold the resv lock (takes it); may block.
        Returns: True when every importer unmapped in time.
        Raises: ContractViolation: resv already held; not bound.
        Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_dma_buf_move(vdev, true).
        """
        buf = self._buf()
        check_entry("vfio_pci_dma_buf_move", buf.machine, buf.resv)
        tr = self.machine.trace
        buf.resv.lock(None)
        try:
            self.revoked = True
            self.revokes += 1
            tr.emit("dma_buf_revoke_begin", ino=buf.ino)
            buf.invalidate_mappings()
            buf.resv.wait_timeout(DmaResvUsage.BOOKKEEP, False, None)
        finally:
            buf.resv.unlock()
        ok = self._wait_unmapped()
        tr.emit("dma_buf_revoke_end", ino=buf.ino, complete=ok)
        return ok

    def _wait_unmapped(self) -> bool:
        sched = self.machine.sched
        t = self.unmap_timeout
        deadline = math.inf if t is None else sched.now() + t
        with self._lock:
            while self.live > 0:
                remaining = deadline - sched.now()
                if remaining <= 0:
                    break
                self._done.wait(None if math.isinf(remaining) else remaining,
                                what="revoke: wait for importers to unmap")
            live = self.live
        if live == 0:
            return True
        self.timeouts += 1
        buf = self._buf()
        holders = [f"{a.dev.name} ({a.live_mappings} mapping(s), "
                   f"{'revocable' if a.revocable else 'NOT revocable'})"
                   for a in buf.attachments if a.live_mappings]
        self.machine.warn("dma_buf_revoke", f"{live} mapping(s) of {buf.exp_name}#{buf.ino} "
                          f"not unmapped {self.unmap_timeout} s after invalidate_mappings: "
                          f"{', '.join(holders) or 'unknown importer'} — an importer ignores "
                          "invalidation")
        return False

    def unrevoke(self) -> None:
        """Make the storage available again: clear ``revoked`` under the resv lock.

        Importers may map again (they were told to drop their mappings, not that the buffer
        is gone for good; a pinned importer may have given up).

        Context: must not hold the resv lock; may block.
        Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_dma_buf_move(vdev, false).
        """
        buf = self._buf()
        check_entry("vfio_pci_dma_buf_move", buf.machine, buf.resv)
        buf.resv.lock(None)
        try:
            self.revoked = False
        finally:
            buf.resv.unlock()
        self.machine.trace.emit("dma_buf_unrevoke", ino=buf.ino)

    def describe(self) -> dict[str, Any]:
        """Snapshot: revoked, live mappings, statistics.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {"revoked": self.revoked, "live": self.live, "revokes": self.revokes,
                "timeouts": self.timeouts}
