"""drivers/dma-buf/dma-buf.c + include/linux/dma-buf.h (v7.1): the dma-buf protocol core.

A **dma-buf** is a buffer one driver (the *exporter*) shares with others (the *importers*)
without copies. This module models the kernel object and the protocol around it:

* :class:`DmaBufOps` — the exporter's ops table (``struct dma_buf_ops``), validated by
  :func:`dma_buf_export`, which wraps the exporter's private object into a :class:`DmaBuf` with
  an anonymous file (its reference count *is* the buffer's; :mod:`dmabuf.buf.file`) and a
  reservation object (:class:`~dmabuf.sync.dma_resv.DmaResv`, embedded or shared).
* Importers :meth:`DmaBuf.attach` (static) or :meth:`DmaBuf.dynamic_attach` (with
  :class:`DmaBufAttachOps`), getting a :class:`DmaBufAttachment`, then map it to DMA addresses
  for their device (:meth:`DmaBufAttachment.map`, under the reservation lock) — the exporter
  returns an :class:`~dmabuf.buf.sg_table.SgTable` or a :class:`~dmabuf.buf.phys_vec.PhysVec`.
  **There is no caching** (v6.15+): every map reaches the exporter, every unmap too.
* Static importers cannot be told to unmap, so for them the core pins an exporter that can move
  (``pin_on_map``) and waits for the KERNEL fences (memory management) before returning the
  mapping. Dynamic importers pin explicitly if they need to (:meth:`DmaBufAttachment.pin`) and
  otherwise accept :meth:`DmaBuf.invalidate_mappings` (``move_notify`` up to v7.0) at any time
  the exporter holds the reservation lock.

DOC: dma buf device access — the usual sequence: the exporter calls :func:`dma_buf_export` and
:meth:`DmaBuf.fd`; user space passes the fd to importers, which call :func:`dma_buf_get`,
:meth:`DmaBuf.attach`, :meth:`DmaBufAttachment.map` / ``unmap`` around each DMA, and finally
:meth:`DmaBuf.detach` and :meth:`DmaBuf.put`. Until the map the exporter may move the storage.

DOC: mapping lifetime (pinned / movable / revoked, spec §2.6). An importer that pins the buffer
gets storage that never moves, but the exporter may still *revoke* it; one that does not pin
treats every ``invalidate_mappings`` as a move: it drops its mapping, lets its in-flight DMA
retire through its fences, and remaps before the next DMA. ``invalidate_mappings`` carries no
reason: "the pin tells a revoke from a move". The exporter side of a revoke is
:class:`dmabuf.buf.revoke.Revoker`.

DOC: locking convention — see :mod:`dmabuf.buf.locking`, where it lives once, as data; every
entry point here asserts its row (``check_entry``) and every exporter callback is invoked
through ``check_callback``.

Deliberate differences from the kernel (docs/model-vs-kernel.md): where the kernel returns
``ERR_PTR``/``-E…`` the model raises :class:`~dmabuf.errors.DmaBufError`; a WARN is
``machine.warn`` (and the kernel's early return); a BUG is a
:class:`~dmabuf.errors.ContractViolation`. Beyond the kernel the model *checks* what it only
documents: an unmap of a table this attachment did not map, a map result that is still live
(cached), a detach with live mappings (WARN), a double detach, an exporter that returns
``-EBUSY`` from ``pin`` under a static importer (WARN_ON_ONCE, as the kernel).

Kernel: drivers/dma-buf/dma-buf.c, include/linux/dma-buf.h (struct dma_buf, dma_buf_ops,
dma_buf_attachment, dma_buf_attach_ops, dma_buf_export_info).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from dmabuf.buf.device import DmaDataDirection, DmaDev, check_direction
from dmabuf.buf.dma_buf_file import DmaBufFileOps
from dmabuf.buf.file import O_ACCMODE, O_NONBLOCK, File, current_process
from dmabuf.buf.locking import check_callback, check_entry
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.buf.sg_table import SgTable
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.mm.phys import PAGE_SHIFT
from dmabuf.mm.vma import (
    PROT_READ,
    PROT_WRITE,
    VM_MAYEXEC,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_SHARED,
    VM_WRITE,
    calc_vm_prot_bits,
)
from dmabuf.sync.dma_resv import DmaResv, DmaResvUsage, usage_rw

__all__ = [
    "DMA_BUF_NAME_LEN",
    "DmaBuf",
    "DmaBufAttachOps",
    "DmaBufAttachment",
    "DmaBufExportInfo",
    "DmaBufOps",
    "DmaBufRegistry",
    "ExporterModule",
    "MapResult",
    "VmOps",
    "Vma",
    "dma_buf_attach",
    "dma_buf_attach_revocable",
    "dma_buf_begin_cpu_access",
    "dma_buf_detach",
    "dma_buf_dynamic_attach",
    "dma_buf_end_cpu_access",
    "dma_buf_export",
    "dma_buf_fd",
    "dma_buf_get",
    "dma_buf_invalidate_mappings",
    "dma_buf_iter_begin",
    "dma_buf_iter_next",
    "dma_buf_map_attachment",
    "dma_buf_map_attachment_unlocked",
    "dma_buf_mmap",
    "dma_buf_move_notify",
    "dma_buf_pin",
    "dma_buf_put",
    "dma_buf_unmap_attachment",
    "dma_buf_unmap_attachment_unlocked",
    "dma_buf_unpin",
    "dma_buf_vmap",
    "dma_buf_vmap_unlocked",
    "dma_buf_vunmap",
    "dma_buf_vunmap_unlocked",
    "for_each_dma_buf",
    "get_dma_buf",
]

#: ``DMA_BUF_NAME_LEN`` (include/uapi/linux/dma-buf.h): a name is at most 32 bytes incl. NUL.
DMA_BUF_NAME_LEN = 32
_U64 = 1 << 64

#: What ``map_dma_buf`` returns: an sg_table, or a physical/DMA range list (MMIO exporters).
MapResult = SgTable | PhysVec

_OPTIONAL_OPS = ("attach", "detach", "pin", "unpin", "begin_cpu_access", "end_cpu_access",
                 "mmap", "vmap", "vunmap")
_MANDATORY_OPS = ("map_dma_buf", "unmap_dma_buf", "release")
_ALL_OPS = _MANDATORY_OPS + _OPTIONAL_OPS


# --------------------------------------------------------------------------------------------
# Ops tables
# --------------------------------------------------------------------------------------------


class DmaBufOps:
    """The exporter's operations — ``struct dma_buf_ops``.

    Subclass it and override what the exporter provides, or pass callables as keyword
    arguments (``DmaBufOps(map_dma_buf=f, unmap_dma_buf=g, release=h)``). A member neither
    overridden nor passed counts as *not provided* (the kernel's NULL pointer): see
    :meth:`provides`. :func:`dma_buf_export` validates the table. Errors are raised as
    :class:`~dmabuf.errors.DmaBufError` (the kernel's negative return).

    Members (who calls them; mandatory or optional; lock state on entry; errors):

    * ``attach(dmabuf, attach) -> None`` — optional; from ``dma_buf_(dynamic_)attach``,
      **unlocked** (may take the resv lock). The only place an exporter can reject an importer:
      raise ``-EBUSY`` (storage not reachable by ``attach.dev``), ``-EOPNOTSUPP`` (e.g. no
      P2P: ``not attach.peer2peer``; not revocable: ``not attach.revocable``), ``-ENODEV``
      (revoked). May clear ``attach.peer2peer``; may set ``attach.priv``.
    * ``detach(dmabuf, attach) -> None`` — optional; from ``dma_buf_detach``, unlocked.
    * ``pin(attach) -> None`` — optional, **pairs with unpin** (both or neither, else export
      fails with ``-EINVAL``); presence makes the exporter *dynamic* (``dma_buf_is_dynamic``).
      Called **locked** (must not take the lock) from ``dma_buf_pin`` (dynamic importers) and
      from map for static importers (``pin_on_map``). Must make the storage usable and stop it
      moving before returning; may raise (``-ENOMEM``, ``-EOPNOTSUPP`` to refuse pinning;
      ``-EBUSY`` under a static importer is WARNed).
    * ``unpin(attach) -> None`` — paired with ``pin``; locked.
    * ``map_dma_buf(attach, direction) -> SgTable | PhysVec`` — **mandatory**; locked. Returns
      a *fresh* mapping for ``attach.dev`` (ownership passes to the caller; never the same
      object twice — no caching), PAGE_SIZE aligned; ``None`` is reported as ``-ENOMEM``. May
      raise (``-EINTR``, ``-ENODEV`` when revoked, ``-ENOMEM``). A non-dynamic exporter must
      have finished moves/clears before returning.
    * ``unmap_dma_buf(attach, table, direction) -> None`` — **mandatory**; locked.
    * ``release(dmabuf) -> None`` — **mandatory**; called once, when the last file reference
      is gone, unlocked.
    * ``begin_cpu_access(dmabuf, direction)`` / ``end_cpu_access(dmabuf, direction)`` —
      optional; unlocked; may raise ``-ERESTARTSYS``/``-EINTR``.
    * ``mmap(dmabuf, vma) -> None`` — optional (without it mmap fails ``-EINVAL``); unlocked;
      the core has checked the range fits. Set ``vma.view`` to the bytes.
    * ``vmap(dmabuf) -> map`` / ``vunmap(dmabuf, map)`` — optional; locked; ``vmap`` returns
      the kernel mapping (any object, e.g. a numpy view), cached and refcounted by the core.

    Kernel: include/linux/dma-buf.h, struct dma_buf_ops.
    """

    #: Names of the optional/mandatory members a subclass overrides (computed per subclass).
    provided: ClassVar[frozenset[str]] = frozenset()
    #: Callables passed to the constructor (a subclass that skips ``super().__init__()`` has
    #: none: this read-only empty default then applies).
    _instance_ops: Mapping[str, Callable[..., Any]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.provided = frozenset(n for n in _ALL_OPS
                                 if getattr(cls, n) is not getattr(DmaBufOps, n))

    def __init__(self, **callables: Callable[..., Any] | None) -> None:
        self._instance_ops: dict[str, Callable[..., Any]] = {}
        for name, fn in callables.items():
            if name not in _ALL_OPS:
                raise TypeError(f"{name!r} is not a dma_buf_ops member (members: "
                                f"{', '.join(_ALL_OPS)})")
            if fn is None:
                continue
            if not callable(fn):
                raise TypeError(f"dma_buf_ops.{name} must be callable, not {type(fn).__name__}")
            if name in type(self).provided:
                raise TypeError(f"dma_buf_ops.{name} is both overridden by "
                                f"{type(self).__name__} and passed to the constructor")
            self._instance_ops[name] = fn

    def provides(self, member: str) -> bool:
        """Whether ``member`` is provided — the kernel's ``ops->member != NULL``.

        Model-only: the kernel tests ``ops->member != NULL`` inline; Python needs a helper.
        """
        if member not in _ALL_OPS:
            raise ValueError(f"{member!r} is not a dma_buf_ops member")
        return member in type(self).provided or member in self._instance_ops

    def _call(self, member: str, *args: Any) -> Any:
        fn = self._instance_ops.get(member)
        if fn is not None:
            return fn(*args)
        return getattr(self, member)(*args)

    def __repr__(self) -> str:
        have = sorted(m for m in _ALL_OPS if self.provides(m))
        return f"<{type(self).__name__} provides={have}>"

    # The base versions are never called: they only mark "not provided".
    def attach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        """Accept or reject ``attach`` (unlocked). Optional.

        Context: called without the dma_resv lock.
        Kernel: include/linux/dma-buf.h, struct dma_buf_ops.attach.
        """

    def detach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        """Forget ``attach`` (unlocked). Optional.

        Context: called without the dma_resv lock.
        Kernel: include/linux/dma-buf.h, struct dma_buf_ops.detach.
        """

    def pin(self, attach: DmaBufAttachment) -> None:
        """Pin the storage for ``attach`` (locked). Optional, with ``unpin``.

        Context: called with the dma_resv lock held.
        Kernel: include/linux/dma-buf.h, struct dma_buf_ops.pin.
        """

    def unpin(self, attach: DmaBufAttachment) -> None:
        """Unpin (locked). Optional, with ``pin``.

        Context: called with the dma_resv lock held.
        Kernel: include/linux/dma-buf.h, struct dma_buf_ops.unpin.
        """

    def map_dma_buf(self, attach: DmaBufAttachment, direction: DmaDataDirection) -> MapResult:
        """Map for ``attach.dev`` (locked). Mandatory.

        Context: called with the dma_resv lock held.
        Raises: ContractViolation if the exporter does not override it (mandatory op).
        Kernel: include/linux/dma-buf.h, struct dma_buf_ops.map_dma_buf.
        """
        raise ContractViolation("dma_buf_ops.map_dma_buf", "map_dma_buf is mandatory")

    def unmap_dma_buf(self, attach: DmaBufAttachment, table: MapResult,
                      direction: DmaDataDirection) -> None:
        """Unmap a table ``map_dma_buf`` returned (locked). Mandatory.

        Context: called with the dma_resv lock held.
        Raises: ContractViolation if the exporter does not override it (mandatory op).
        Kernel: include/linux/dma-buf.h, struct dma_buf_ops.unmap_dma_buf.
        """
        raise ContractViolation("dma_buf_ops.unmap_dma_buf", "unmap_dma_buf is mandatory")

    def release(self, dmabuf: DmaBuf) -> None:
        """Last reference gone (unlocked). Mandatory.

        Context: called without the dma_resv lock, from the last dma_buf_put().
        Raises: ContractViolation if the exporter does not override it (mandatory op).
        Kernel: include/linux/dma-buf.h, struct dma_buf_ops.release.
        """
        raise ContractViolation("dma_buf_ops.release", "release is mandatory")

    def begin_cpu_access(self, dmabuf: DmaBuf, direction: DmaDataDirection) -> None:
        """Prepare CPU access (unlocked). Optional.

        Context: called without the dma_resv lock; may block.
        Kernel: include/linux/dma-buf.h, struct dma_buf_ops.begin_cpu_access.
        """

    def end_cpu_access(self, dmabuf: DmaBuf, direction: DmaDataDirection) -> None:
        """Finish CPU access (unlocked). Optional.

        Context: called without the dma_resv lock; may block.
        Kernel: include/linux/dma-buf.h, struct dma_buf_ops.end_cpu_access.
        """

    def mmap(self, dmabuf: DmaBuf, vma: Vma) -> None:
        """Map into a user VMA (unlocked; range already checked). Optional.

        Context: called without the dma_resv lock.
        Kernel: include/linux/dma-buf.h, struct dma_buf_ops.mmap.
        """

    def vmap(self, dmabuf: DmaBuf) -> Any:
        """Kernel-virtual mapping (locked). Optional, with ``vunmap``.

        Context: called with the dma_resv lock held.
        Kernel: include/linux/dma-buf.h, struct dma_buf_ops.vmap.
        """
        return None

    def vunmap(self, dmabuf: DmaBuf, vmap: Any) -> None:
        """Undo ``vmap`` (locked). Optional.

        Context: called with the dma_resv lock held.
        Kernel: include/linux/dma-buf.h, struct dma_buf_ops.vunmap.
        """


class DmaBufAttachOps:
    """The importer's operations for a dynamic attachment — ``struct dma_buf_attach_ops``.

    Args:
        allow_peer2peer: the importer can handle peer memory without ``struct page`` (P2P BAR
            addresses); becomes ``attach.peer2peer`` (the exporter's ``attach`` may clear it).
        invalidate_mappings: optional ``fn(attach)``; called by
            :meth:`DmaBuf.invalidate_mappings` with the resv lock **held**. The importer must
            drop its mapping (``unmap``) within bounded time and must not write to the memory
            any more; in-flight DMA may continue until the importer's fences in the resv
            retire. Without it the attachment is not *revocable* and can only be pinned.
        move_notify: the pre-7.1 name of ``invalidate_mappings`` (renamed in v7.1, "dma-buf:
            Rename .move_notify() callback to a clearer identifier"); accepted as an alias.
            Giving both is a TypeError.

    Subclasses may instead override :meth:`invalidate_mappings` (or ``move_notify``).

    Kernel: include/linux/dma-buf.h, struct dma_buf_attach_ops.
    """

    _has_invalidate: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inv = "invalidate_mappings" in cls.__dict__
        mv = "move_notify" in cls.__dict__
        if inv and mv:
            raise TypeError(f"{cls.__name__} overrides both invalidate_mappings and its pre-7.1 "
                            "alias move_notify; override only invalidate_mappings")
        cls._has_invalidate = inv or mv or cls._has_invalidate   # inherited overrides count
        if mv:
            cls.invalidate_mappings = cls.__dict__["move_notify"]  # type: ignore[method-assign]

    def __init__(self, allow_peer2peer: bool = False, *,
                 invalidate_mappings: Callable[[DmaBufAttachment], None] | None = None,
                 move_notify: Callable[[DmaBufAttachment], None] | None = None) -> None:
        if not isinstance(allow_peer2peer, bool):
            raise TypeError("allow_peer2peer must be a bool")
        if invalidate_mappings is not None and move_notify is not None:
            raise TypeError("give invalidate_mappings or its pre-7.1 alias move_notify, not both")
        fn = invalidate_mappings if invalidate_mappings is not None else move_notify
        if fn is not None and not callable(fn):
            raise TypeError("invalidate_mappings must be callable")
        if fn is not None and self._has_invalidate:
            raise TypeError(f"{type(self).__name__} overrides invalidate_mappings; do not also "
                            "pass one")
        self.allow_peer2peer = allow_peer2peer
        self._fn = fn

    @property
    def has_invalidate_mappings(self) -> bool:
        """Whether ``invalidate_mappings`` is provided (``ops->invalidate_mappings != NULL``)."""
        return self._fn is not None or self._has_invalidate

    def invalidate_mappings(self, attach: DmaBufAttachment) -> None:
        """The importer's invalidation callback (resv held). Optional.

        Context: called with the dma_resv lock held; must not block on fences.
        Kernel: include/linux/dma-buf.h, struct dma_buf_attach_ops.invalidate_mappings (move_notify
        before 7.1).
        """
        if self._fn is not None:
            self._fn(attach)

    def move_notify(self, attach: DmaBufAttachment) -> None:
        """Pre-7.1 name of :meth:`invalidate_mappings` (an alias).

        Kernel: include/linux/dma-buf.h, struct dma_buf_attach_ops.move_notify (pre-7.1).
        """
        self.invalidate_mappings(attach)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} p2p={self.allow_peer2peer} "
                f"invalidate={self.has_invalidate_mappings}>")


class ExporterModule:
    """The exporter's ``struct module``: ``try_module_get()`` / ``module_put()``.

    A dma-buf holds a reference to its exporter's module for its whole life; exporting from a
    module being unloaded fails with ``-ENOENT``. :meth:`unload` starts unloading (every later
    ``try_get`` fails); ``refcount`` shows the live references.

    Kernel: kernel/module/main.c, try_module_get(), module_put().
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.refcount = 0
        self.live = True
        self._lock = threading.Lock()

    def try_get(self) -> bool:
        """``try_module_get()``: False once unloading started.

        Kernel: kernel/module/main.c, try_module_get().
        """
        with self._lock:
            if not self.live:
                return False
            self.refcount += 1
            return True

    def put(self) -> None:
        """``module_put()``.

        Raises: ContractViolation on refcount underflow.
        Kernel: kernel/module/main.c, module_put().
        """
        with self._lock:
            if self.refcount <= 0:
                raise ContractViolation("module_put", f"module {self.name} refcount underflow")
            self.refcount -= 1

    def unload(self) -> None:
        """Begin unloading: later :meth:`try_get` calls fail.

        Kernel: kernel/module/main.c, delete_module() (the module enters MODULE_STATE_GOING).
        """
        with self._lock:
            self.live = False

    def __repr__(self) -> str:
        return f"<ExporterModule {self.name} refs={self.refcount} live={self.live}>"


@dataclass
class DmaBufExportInfo:
    """What an exporter passes to :func:`dma_buf_export` — ``struct dma_buf_export_info``.

    Attributes:
        exp_name: the exporter's name (``KBUILD_MODNAME`` with ``DEFINE_DMA_BUF_EXPORT_INFO``),
            shown in fdinfo and bufinfo.
        ops: the :class:`DmaBufOps` (mandatory).
        size: buffer size in bytes (``size_t``; constant for the buffer's life).
        flags: file flags of the dma-buf file (``O_RDWR``, ``O_NONBLOCK``…; masked to
            ``O_ACCMODE | O_NONBLOCK``).
        resv: a reservation object to share (``None``: an embedded one is created and finalised
            at release).
        priv: the exporter's private object (mandatory, ``dmabuf.priv``).
        owner: the exporter's module (``THIS_MODULE``), or None for built-in code.

    Kernel: include/linux/dma-buf.h, struct dma_buf_export_info, DEFINE_DMA_BUF_EXPORT_INFO.
    """

    exp_name: str
    ops: DmaBufOps | None = None
    size: int = 0
    flags: int = 0
    resv: DmaResv | None = None
    priv: Any = None
    owner: ExporterModule | None = None


@dataclass(frozen=True)
class VmOps:
    """The hooks an exporter's ``mmap`` installs on a VMA — ``struct vm_operations_struct``.

    Attributes:
        close: ``vm_ops->close(vma)``, called once when the VMA is unmapped (:meth:`Vma.close`):
            drop what the mmap took (a pin, an object reference).

    Kernel: include/linux/mm.h, struct vm_operations_struct.
    """

    close: Callable[[Vma], None] | None = None


def _mmap_vm_flags(prot: int, shared: bool) -> int:
    """``do_mmap()``'s ``vm_flags`` for a file opened read-write."""
    flags = calc_vm_prot_bits(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
    return flags | (VM_SHARED | VM_MAYSHARE) if shared else flags


@dataclass
class Vma:
    """A user mapping request — the slice of ``struct vm_area_struct`` dma-buf looks at.

    Build one for ``mmap(prot, MAP_SHARED/MAP_PRIVATE)`` with :meth:`for_mmap`; the default
    is a ``PROT_READ | PROT_WRITE``, ``MAP_SHARED`` mapping.

    Attributes:
        length: bytes mapped (``vm_end - vm_start``), a multiple of the page size.
        pgoff: offset into the file in pages (``vm_pgoff``).
        vm_flags: ``VM_*`` bits (:mod:`dmabuf.mm.vma`): ``VM_WRITE`` for a writable mapping,
            ``VM_SHARED`` for ``MAP_SHARED``, the ``VM_MAY*`` bits as ``do_mmap`` sets them.
        file: set by :meth:`DmaBuf.mmap` to the dma-buf's file (``vma_set_file``).
        view: what the exporter's ``mmap`` maps (e.g. a writable numpy view of the bytes).
        vm_ops: set by an exporter's ``mmap`` that must hear of the unmap (``close``).

    Kernel: include/linux/mm_types.h, struct vm_area_struct; vma_pages().
    """

    length: int
    pgoff: int = 0
    vm_flags: int = _mmap_vm_flags(PROT_READ | PROT_WRITE, True)
    file: File | None = None
    view: Any = None
    vm_ops: VmOps | None = None

    @classmethod
    def for_mmap(cls, length: int, *, pgoff: int = 0, prot: int = PROT_READ | PROT_WRITE,
                 shared: bool = True) -> Vma:
        """The VMA ``mmap(length, prot, MAP_SHARED or MAP_PRIVATE, pgoff)`` creates.

        Args:
            length: bytes (a multiple of the page size).
            pgoff: file offset in pages.
            prot: ``PROT_*`` bits (``calc_vm_prot_bits``: ``PROT_WRITE`` gives ``VM_WRITE``).
            shared: ``MAP_SHARED`` (``VM_SHARED | VM_MAYSHARE``) rather than ``MAP_PRIVATE``.
        Context: pure.
        Returns: a new :class:`Vma` with no file, view or ops.
        Kernel: mm/mmap.c, do_mmap() (calc_vm_prot_bits, calc_vm_flag_bits, VM_MAY*).
        """
        return cls(length, pgoff, _mmap_vm_flags(prot, shared))

    @property
    def shared(self) -> bool:
        """``VM_SHARED``: a ``MAP_SHARED`` mapping."""
        return bool(self.vm_flags & VM_SHARED)

    @property
    def writable(self) -> bool:
        """``VM_WRITE``: the mapping may be written through."""
        return bool(self.vm_flags & VM_WRITE)

    @property
    def pages(self) -> int:
        """``vma_pages(vma)``: the number of pages."""
        return -(-self.length >> PAGE_SHIFT) if self.length > 0 else 0

    def close(self) -> None:
        """Run ``vm_ops->close`` — ``vma_close()`` at unmap; whoever unmaps calls it once.

        Context: may do what the exporter's close does (unpin, drop references).
        Kernel: mm/internal.h, vma_close(); mm/vma.c, remove_vma().
        """
        ops = self.vm_ops
        if ops is not None and ops.close is not None:
            ops.close(self)


# --------------------------------------------------------------------------------------------
# Per-machine state: the global list (dmabuf_list), inode numbers, debug options
# --------------------------------------------------------------------------------------------


class DmaBufRegistry:
    """The machine's dma-buf globals: ``dmabuf_list`` + its mutex, the inode counter, options.

    Attributes:
        debug_wrap: ``CONFIG_DMABUF_DEBUG``: mapped sg_tables are handed to importers as
            DMA-only copies (page links cleared) so an importer touching ``sg_page`` fails.
            Default True when the machine's lock tracker is on.

    Kernel: drivers/dma-buf/dma-buf.c (dmabuf_list, dmabuf_list_mutex, dma_buf_getfile's
    dmabuf_inode counter), drivers/dma-buf/Kconfig (DMABUF_DEBUG).
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.list_mutex = machine.sched.lock("dmabuf_list_mutex")
        self._list: list[DmaBuf] = []
        self._ino_lock = threading.Lock()
        self._ino = 0
        self.debug_wrap = machine.lockdep.enabled
        self.fops = DmaBufFileOps()

    def next_ino(self) -> int:
        """``atomic64_inc_return(&dmabuf_inode)``: unique per machine, from 1.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_getfile() (atomic64_inc_return(&dmabuf_inode)).
        """
        with self._ino_lock:
            self._ino += 1
            return self._ino

    def _add(self, dmabuf: DmaBuf) -> None:
        with self.list_mutex:
            self._list.insert(0, dmabuf)  # list_add: at the head

    def _del(self, dmabuf: DmaBuf) -> None:
        with self.list_mutex:
            if dmabuf in self._list:
                self._list.remove(dmabuf)

    def buffers(self) -> list[DmaBuf]:
        """A snapshot of the list, head first (most recently exported first), no references.

        Kernel: drivers/dma-buf/dma-buf.c, dmabuf_list (walked under dmabuf_list_mutex).
        """
        with self.list_mutex:
            return list(self._list)

    def __len__(self) -> int:
        return len(self._list)


def _registry(machine: Machine) -> DmaBufRegistry:
    return machine.state(DmaBufRegistry)


# --------------------------------------------------------------------------------------------
# The buffer
# --------------------------------------------------------------------------------------------


class _PollCb:
    """``struct dma_buf_poll_cb_t``: one poll callback slot (``cb_in`` / ``cb_out``)."""

    __slots__ = ("active", "cb", "fence")

    def __init__(self) -> None:
        self.active = 0
        self.cb: Any = None
        self.fence: Any = None


class DmaBuf:
    """A shared buffer — ``struct dma_buf``. Created only by :func:`dma_buf_export`.

    Attributes (read-only for users; the kernel's fields):
        size: bytes; constant.
        file: the anonymous :class:`~dmabuf.buf.file.File`; its count is the buffer's refcount.
        ops: the exporter's :class:`DmaBufOps`.
        exp_name: exporter name.
        priv: exporter private data.
        resv: the :class:`~dmabuf.sync.dma_resv.DmaResv` (embedded or the exporter's).
        owner: the exporter's :class:`ExporterModule` or None.
        ino: the file's unique inode number.
        machine: the machine it lives on.
        vmapping_counter / vmap_ptr: vmap refcount and cached mapping (resv-protected).

    Locking: ``attachments`` and the vmap fields are protected by the resv lock; ``name`` by
    ``name_lock`` (a spinlock); poll slots by the poll wait-queue lock.

    Kernel: include/linux/dma-buf.h, struct dma_buf.
    """

    def __init__(self, info: DmaBufExportInfo, resv: DmaResv, embedded_resv: bool,
                 machine: Machine, _token: object = None) -> None:
        if _token is not _EXPORT_TOKEN:
            raise TypeError("a DmaBuf is created by dma_buf_export(info), never directly")
        assert info.ops is not None
        self.machine = machine
        self.size: int = info.size
        self.ops: DmaBufOps = info.ops
        self.exp_name: str = info.exp_name
        self.priv: Any = info.priv
        self.owner = info.owner
        self.resv = resv
        self._embedded_resv = embedded_resv
        self._attachments: list[DmaBufAttachment] = []
        # id(exporter's table) -> table, for every live mapping of every listed attachment: the
        # model-only "exporter returned a table that is still mapped" check in O(1).
        self._live_origs: dict[int, object] = {}
        self.vmapping_counter = 0
        self.vmap_ptr: Any = None
        self._name: str | None = None
        self.name_lock = threading.Lock()
        # poll: the wait queue (dmabuf->poll) and the two callback slots.
        self.poll_lock = machine.sched.lock("dma_buf.poll.lock")
        self.poll_wq = machine.sched.condition(self.poll_lock, "dma_buf.poll")
        self.poll_seq = 0
        self.cb_in = _PollCb()
        self.cb_out = _PollCb()
        self._released = False
        reg = _registry(machine)
        self.ino = reg.next_ino()
        self.file = File(reg.fops, self, flags=info.flags & (O_ACCMODE | O_NONBLOCK),
                         ino=self.ino, size=self.size, machine=machine)

    def __repr__(self) -> str:
        return (f"<DmaBuf {self.exp_name} ino={self.ino} size={self.size} "
                f"count={self.file.count}{' released' if self._released else ''}>")

    # -- properties -----------------------------------------------------------------------
    @property
    def is_dynamic(self) -> bool:
        """``dma_buf_is_dynamic()``: the exporter provides ``pin`` (it may move the storage)."""
        return self.ops.provides("pin")

    @property
    def attachments(self) -> list[DmaBufAttachment]:
        """A snapshot of the attachment list, head first (most recently attached first)."""
        return list(self._attachments)

    @property
    def name(self) -> str | None:
        """The user-set name (``DMA_BUF_SET_NAME``), or None; read under ``name_lock``."""
        with self.name_lock:
            return self._name

    @property
    def released(self) -> bool:
        """True once the last reference is gone and ``ops.release`` ran."""
        return self._released

    @property
    def embedded_resv(self) -> bool:
        """Whether ``resv`` is the buffer's own (created at export, finalised at release)."""
        return self._embedded_resv

    def _check_alive(self, what: str) -> None:
        if self._released or self.file.count <= 0:
            raise ContractViolation(what, f"{what} on a released dma-buf ({self.exp_name}, ino "
                                    f"{self.ino}): use after free; hold a reference")

    def _op(self, member: str, *args: Any) -> Any:
        """Invoke exporter op ``member`` with the lock state the convention promises."""
        check_callback(f"dma_buf_ops.{member}", self.machine, self.resv)
        return self.ops._call(member, *args)

    # -- lifetime -------------------------------------------------------------------------
    def get(self) -> DmaBuf:
        """Take a reference — ``get_dma_buf()``.

        Context: any; never blocks.
        Returns: ``self``.
        Raises: ContractViolation("get_file") on a released buffer.
        Kernel: include/linux/dma-buf.h, get_dma_buf().
        """
        self.file.get()
        return self

    def put(self) -> None:
        """Drop a reference — ``dma_buf_put()``; the last one releases the buffer.

        Context: must not hold the resv lock (the release may run the exporter's ``release``,
            which may take it); may block.
        Raises: ContractViolation: too many puts; resv held (locking convention).
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_put().
        """
        check_entry("dma_buf_put", self.machine, self.resv)
        self.file.put()

    def fd(self, flags: int = 0) -> int:
        """Install the buffer in the current process's fd table — ``dma_buf_fd()``.

        The fd *consumes* the caller's reference (no extra reference is taken), exactly as in
        the kernel: after a successful ``fd()`` the caller must not ``put()`` that reference.

        Args:
            flags: fd flags, ``O_CLOEXEC`` or 0.
        Context: must not hold the resv lock; never blocks.
        Returns: the new fd (≥ 3 in the model).
        Raises: DmaBufError(EINVAL): released buffer; DmaBufError(EMFILE): fd table full.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_fd().
        """
        check_entry("dma_buf_fd", self.machine, self.resv)
        if self._released or self.file.count <= 0:
            raise DmaBufError(errno.EINVAL, "dma_buf_fd: the dma-buf has no file any more")
        fd = current_process(self.machine).fds.install(self.file, flags)
        self.machine.trace.emit("dma_buf_fd", ino=self.ino, fd=fd)
        return fd

    # -- attachments ----------------------------------------------------------------------
    def dynamic_attach(self, dev: DmaDev, importer_ops: DmaBufAttachOps | None,
                       importer_priv: Any = None) -> DmaBufAttachment:
        """Attach ``dev`` as an importer — ``dma_buf_dynamic_attach()``.

        With ``importer_ops`` the attachment is *dynamic* (the importer follows the resv
        fences itself and may receive ``invalidate_mappings``); without, it is *static*
        (:meth:`attach`). v7.1: ``invalidate_mappings`` is optional (an importer without it
        is pinned-only, not revocable); v7.0 rejected such ops with WARN/-EINVAL.

        Order: allocate; ``peer2peer = importer_ops.allow_peer2peer`` (False when static);
        exporter ``attach`` (unlocked; may reject); then under the resv lock add the
        attachment at the head of the list. No mapping is made at attach time.

        Args:
            dev: the importing device (:class:`~dmabuf.buf.device.DmaDev`).
            importer_ops: :class:`DmaBufAttachOps` or None.
            importer_priv: the importer's private data (``attach.importer_priv``).
        Context: must not hold the resv lock (takes it); may block.
        Returns: the new :class:`DmaBufAttachment`.
        Raises:
            DmaBufError(EINVAL): ``dev`` is None (kernel WARN).
            DmaBufError(…): what the exporter's ``attach`` raised (-EBUSY, -EOPNOTSUPP,
                -ENODEV…).
            TypeError: ``dev`` is not a DmaDev, or ``importer_ops`` not a DmaBufAttachOps.
            ContractViolation: resv held; released buffer.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_dynamic_attach().
        """
        check_entry("dma_buf_dynamic_attach", self.machine, self.resv)
        if dev is None:
            self.machine.warn("dma_buf_dynamic_attach", "attach with a NULL device")
            raise DmaBufError(errno.EINVAL, "dma_buf_dynamic_attach: dev is None; pass the "
                              "importing device")
        if not isinstance(dev, DmaDev):
            raise TypeError(f"dev must implement the DmaDev protocol (name, phys, map_ranges, "
                            f"unmap_ranges, translate), not {type(dev).__name__}")
        if importer_ops is not None and not isinstance(importer_ops, DmaBufAttachOps):
            raise TypeError(f"importer_ops must be a DmaBufAttachOps or None, not "
                            f"{type(importer_ops).__name__}")
        self._check_alive("dma_buf_dynamic_attach")
        attach = DmaBufAttachment(self, dev, importer_ops, importer_priv, _token=_EXPORT_TOKEN)
        if self.ops.provides("attach"):
            self._op("attach", self, attach)   # an exception frees the attachment (kfree)
        self.resv.lock(None)
        try:
            self._attachments.insert(0, attach)   # list_add: at the head
            attach._listed = True
        finally:
            self.resv.unlock()
        self.machine.trace.emit("dma_buf_attach", ino=self.ino, dev=dev.name,
                                dynamic=attach.is_dynamic, peer2peer=attach.peer2peer)
        return attach

    def attach(self, dev: DmaDev) -> DmaBufAttachment:
        """Attach ``dev`` as a static importer — ``dma_buf_attach()``.

        ``dynamic_attach(dev, None, None)``: the core pins a dynamic exporter around each
        mapping and waits for KERNEL fences before returning it.

        Context/Returns/Raises: as :meth:`dynamic_attach`.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_attach().
        """
        check_entry("dma_buf_attach", self.machine, self.resv)
        return self.dynamic_attach(dev, None, None)

    def detach(self, attach: DmaBufAttachment) -> None:
        """Remove ``attach`` — ``dma_buf_detach()``: unlink under the lock, then ``ops.detach``.

        The importer must have unmapped everything first; the kernel does not check, the model
        WARNs (``machine.warn("dma_buf_detach", …)``) and continues.

        Args:
            attach: an attachment of this buffer.
        Context: must not hold the resv lock (takes it); may block.
        Raises:
            ContractViolation("dma_buf_detach"): ``attach`` was already detached (the kernel
                would use freed memory); resv held.
            (None for a foreign attachment: the kernel WARNs and returns; so does the model.)
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_detach().
        """
        check_entry("dma_buf_detach", self.machine, self.resv)
        if attach is None or not isinstance(attach, DmaBufAttachment) or attach.dmabuf is not self:
            self.machine.warn("dma_buf_detach", f"detach of {attach!r}, which is not an "
                              f"attachment of {self!r}")
            return
        if attach._detached:
            raise ContractViolation("dma_buf_detach", f"{attach!r} was already detached (double "
                                    "detach: use after free in the kernel)")
        if attach._live:
            self.machine.warn("dma_buf_detach", f"{attach.dev.name} detaches with "
                              f"{len(attach._live)} mapping(s) still live: unmap before detach")
        self.resv.lock(None)
        try:
            self._attachments.remove(attach)
            for _, orig, _, _ in attach._live.values():
                self._live_origs.pop(id(orig), None)
            attach._listed = False
            attach._detached = True
        finally:
            self.resv.unlock()
        if self.ops.provides("detach"):
            self._op("detach", self, attach)
        self.machine.trace.emit("dma_buf_detach", ino=self.ino, dev=attach.dev.name)

    def invalidate_mappings(self) -> None:
        """Tell every importer to drop its mappings — ``dma_buf_invalidate_mappings()`` (v7.1).

        For each attachment in list order (head first: most recently attached first) whose
        importer provides ``invalidate_mappings``, call it (with the lock held). Static
        attachments and importers without the op are skipped. When this returns the importers
        may still access the memory until their fences retire (wait for them:
        ``resv.wait_timeout(BOOKKEEP)``), and may request new mappings at once.

        Context: the exporter must hold the resv lock (asserted).
        Raises: ContractViolation: lock not held; released buffer.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_invalidate_mappings() (dma_buf_move_notify()
            up to v7.0).
        """
        check_entry("dma_buf_invalidate_mappings", self.machine, self.resv)
        self._invalidate()

    def move_notify(self) -> None:
        """Pre-7.1 name of :meth:`invalidate_mappings` — ``dma_buf_move_notify()``.

        Context/Raises: as :meth:`invalidate_mappings`.
        Kernel: drivers/dma-buf/dma-buf.c (≤ v7.0), dma_buf_move_notify().
        """
        check_entry("dma_buf_move_notify", self.machine, self.resv)
        self._invalidate()

    def _invalidate(self) -> None:
        self._check_alive("dma_buf_invalidate_mappings")
        tr = self.machine.trace
        for attach in list(self._attachments):
            ops = attach.importer_ops
            if ops is None or not ops.has_invalidate_mappings:
                continue
            check_callback("dma_buf_attach_ops.invalidate_mappings", self.machine, self.resv)
            attach.invalidations += 1
            tr.emit("dma_buf_invalidate_mappings", ino=self.ino, dev=attach.dev.name)
            ops.invalidate_mappings(attach)

    # -- CPU access -----------------------------------------------------------------------
    def begin_cpu_access(self, direction: int) -> None:
        """Prepare CPU access — ``dma_buf_begin_cpu_access()``.

        Calls the exporter's ``begin_cpu_access`` (if any); if it succeeds, waits for the
        implicit fences: a CPU *write* (``BIDIRECTIONAL`` or ``TO_DEVICE``) waits for every
        READ-level fence (kernel + write + read), a CPU *read* (``FROM_DEVICE``) for the
        WRITE-level ones (kernel + write). BOOKKEEP fences are never waited for.

        Args:
            direction: :class:`~dmabuf.buf.device.DmaDataDirection`.
        Context: must not hold the resv lock (``might_lock``); may block (interruptible wait).
        Raises: DmaBufError(ERESTARTSYS) when interrupted; the exporter's errors;
            ContractViolation: resv held, bad direction.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_begin_cpu_access(),
            __dma_buf_begin_cpu_access().
        """
        check_entry("dma_buf_begin_cpu_access", self.machine, self.resv)
        d = check_direction(direction)
        self._check_alive("dma_buf_begin_cpu_access")
        if self.ops.provides("begin_cpu_access"):
            self._op("begin_cpu_access", self, d)
        write = d in (DmaDataDirection.BIDIRECTIONAL, DmaDataDirection.TO_DEVICE)
        self.resv.wait_timeout(usage_rw(write), True, None)

    def end_cpu_access(self, direction: int) -> None:
        """Finish CPU access — ``dma_buf_end_cpu_access()``: the exporter's op, if any.

        Context: must not hold the resv lock; may block.
        Raises: the exporter's errors; ContractViolation: resv held, bad direction.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_end_cpu_access().
        """
        check_entry("dma_buf_end_cpu_access", self.machine, self.resv)
        d = check_direction(direction)
        self._check_alive("dma_buf_end_cpu_access")
        if self.ops.provides("end_cpu_access"):
            self._op("end_cpu_access", self, d)

    # -- mmap / vmap ----------------------------------------------------------------------
    def mmap(self, vma: Vma, pgoff: int) -> None:
        """Set up a user mapping of pages ``[pgoff, pgoff + vma.pages)`` — ``dma_buf_mmap()``.

        Args:
            vma: the :class:`Vma`; on success ``vma.file`` is the buffer's file and
                ``vma.pgoff == pgoff``.
            pgoff: first page of the buffer to map.
        Context: must not hold the resv lock; may block (the exporter's mmap).
        Raises:
            DmaBufError(EINVAL): ``vma`` is None (WARN); the exporter has no ``mmap``; the
                range goes past the end of the buffer.
            DmaBufError(EOVERFLOW): ``pgoff + pages`` overflows 64 bits.
            TypeError: negative or non-int ``pgoff``.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_mmap().
        """
        check_entry("dma_buf_mmap", self.machine, self.resv)
        if vma is None:
            self.machine.warn("dma_buf_mmap", "dma_buf_mmap with a NULL vma")
            raise DmaBufError(errno.EINVAL, "dma_buf_mmap: vma is None")
        if isinstance(pgoff, bool) or not isinstance(pgoff, int) or pgoff < 0:
            raise TypeError(f"pgoff must be a non-negative int (unsigned long), not {pgoff!r}")
        self._check_alive("dma_buf_mmap")
        if not self.ops.provides("mmap"):
            raise DmaBufError(errno.EINVAL, f"the {self.exp_name} exporter does not support "
                              "mmap")
        if pgoff + vma.pages >= _U64:
            raise DmaBufError(errno.EOVERFLOW, f"pgoff {pgoff} + {vma.pages} pages overflows")
        if pgoff + vma.pages > self.size >> PAGE_SHIFT:
            raise DmaBufError(errno.EINVAL, f"mapping pages [{pgoff}, {pgoff + vma.pages}) of a "
                              f"{self.size >> PAGE_SHIFT}-page buffer: past the end")
        vma.file = self.file
        vma.pgoff = pgoff
        self._op("mmap", self, vma)

    def vmap(self) -> Any:
        """Map the whole buffer into kernel address space — ``dma_buf_vmap()``.

        The first call asks the exporter (``ops.vmap``) and caches the mapping; later calls
        count and return the same mapping (I-B4).

        Context: must hold the resv lock (asserted).
        Returns: the mapping (what the exporter's ``vmap`` returned).
        Raises: DmaBufError(EINVAL): the exporter has no ``vmap``; the exporter's error (also
            WARNed once); ContractViolation: lock not held, or the exporter returned None.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_vmap().
        """
        check_entry("dma_buf_vmap", self.machine, self.resv)
        self._check_alive("dma_buf_vmap")
        if not self.ops.provides("vmap"):
            raise DmaBufError(errno.EINVAL, f"the {self.exp_name} exporter does not support vmap")
        if self.vmapping_counter:
            if self.vmap_ptr is None:
                raise ContractViolation("dma_buf_vmap", "vmapping_counter > 0 but no cached map")
            self.vmapping_counter += 1
            return self.vmap_ptr
        if self.vmap_ptr is not None:
            raise ContractViolation("dma_buf_vmap", "cached vmap without a count")
        try:
            ptr = self._op("vmap", self)
        except DmaBufError as e:
            self.machine.warn("dma_buf_vmap", f"{self.exp_name} vmap failed: {e}")
            raise
        if ptr is None:
            raise ContractViolation("dma_buf_ops.vmap", "vmap returned no mapping (iosys_map "
                                    "left NULL with success)")
        self.vmap_ptr = ptr
        self.vmapping_counter = 1
        return ptr

    def vunmap(self, vmap: Any) -> None:
        """Drop one vmap reference — ``dma_buf_vunmap()``; the last one calls ``ops.vunmap``.

        Args:
            vmap: the mapping :meth:`vmap` returned.
        Context: must hold the resv lock (asserted).
        Raises: ContractViolation("dma_buf_vunmap"): nothing mapped, counter 0, or a different
            mapping (BUG_ON in the kernel); lock not held.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_vunmap().
        """
        check_entry("dma_buf_vunmap", self.machine, self.resv)
        if self.vmap_ptr is None or self.vmapping_counter == 0:
            raise ContractViolation("dma_buf_vunmap", "vunmap without a vmap (BUG_ON: "
                                    "vmapping_counter == 0)")
        if vmap is not self.vmap_ptr:
            raise ContractViolation("dma_buf_vunmap", "vunmap of a mapping that is not the "
                                    "buffer's vmap (BUG_ON: !iosys_map_is_equal)")
        self.vmapping_counter -= 1
        if self.vmapping_counter == 0:
            if self.ops.provides("vunmap"):
                self._op("vunmap", self, vmap)
            self.vmap_ptr = None

    def vmap_unlocked(self) -> Any:
        """:meth:`vmap` taking the resv lock itself — ``dma_buf_vmap_unlocked()``.

        Context: must not hold the resv lock. Returns/Raises: as :meth:`vmap`.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_vmap_unlocked().
        """
        check_entry("dma_buf_vmap_unlocked", self.machine, self.resv)
        self.resv.lock(None)
        try:
            return self.vmap()
        finally:
            self.resv.unlock()

    def vunmap_unlocked(self, vmap: Any) -> None:
        """:meth:`vunmap` taking the resv lock itself — ``dma_buf_vunmap_unlocked()``.

        Context: must not hold the resv lock. Raises: as :meth:`vunmap`.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_vunmap_unlocked().
        """
        check_entry("dma_buf_vunmap_unlocked", self.machine, self.resv)
        self.resv.lock(None)
        try:
            self.vunmap(vmap)
        finally:
            self.resv.unlock()

    # -- user-space side (the file's ioctls; implemented in dma_buf_file) ------------------
    def set_name(self, name: str | bytes) -> None:
        """Set the debug name — ``DMA_BUF_SET_NAME`` (``dma_buf_set_name()``).

        Args:
            name: the name, as ``strndup_user(buf, 32)`` reads it: up to the first NUL;
                at most 31 bytes + NUL.
        Raises: DmaBufError(EINVAL): longer than 31 bytes (no NUL within 32);
            DmaBufError(EFAULT): ``name`` is None (a NULL user pointer).
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_set_name(); mm/util.c, strndup_user().
        """
        from dmabuf.buf.dma_buf_file import dma_buf_set_name
        dma_buf_set_name(self, name)

    def sync(self, flags: int) -> None:
        """``DMA_BUF_IOCTL_SYNC``: begin (``START``) or end (``END``) CPU access.

        Raises: DmaBufError(EINVAL) for invalid flags; what begin/end_cpu_access raise.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_ioctl() (DMA_BUF_IOCTL_SYNC).
        """
        from dmabuf.buf.dma_buf_file import dma_buf_sync
        dma_buf_sync(self, flags)

    def export_sync_file(self, flags: int) -> int:
        """``DMA_BUF_IOCTL_EXPORT_SYNC_FILE``: a sync_file fd of the current implicit fences.

        Returns: the new fd (``O_CLOEXEC``) in the current process.
        Raises: DmaBufError(EINVAL) for invalid flags, EMFILE.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_export_sync_file().
        """
        from dmabuf.buf.dma_buf_file import dma_buf_export_sync_file
        return dma_buf_export_sync_file(self, flags)

    def import_sync_file(self, flags: int, fd: int) -> None:
        """``DMA_BUF_IOCTL_IMPORT_SYNC_FILE``: add a sync_file's fences as implicit fences.

        Raises: DmaBufError(EINVAL): invalid flags, ``fd`` not a sync_file; ENOMEM.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_import_sync_file().
        """
        from dmabuf.buf.dma_buf_file import dma_buf_import_sync_file
        dma_buf_import_sync_file(self, flags, fd)

    # -- introspection --------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """A snapshot of the buffer: the fields fdinfo and bufinfo show, and more.

        Context: any; does not take the resv lock (fields may be mid-update).

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_show_fdinfo() and the debugfs bufinfo dump (plus
        model fields).
        """
        return {
            "ino": self.ino,
            "size": self.size,
            "exp_name": self.exp_name,
            "name": self.name,
            "count": self.file.count,
            "flags": self.file.f_flags,
            "mode": self.file.f_mode,
            "dynamic_exporter": self.is_dynamic,
            "embedded_resv": self._embedded_resv,
            "vmapping_counter": self.vmapping_counter,
            "poll_active": {"in": self.cb_in.active, "out": self.cb_out.active},
            "released": self._released,
            "attachments": [a.describe() for a in self._attachments],
        }

    # -- release (called by the file layer) -------------------------------------------------
    def _release(self) -> None:
        """``dma_buf_release()``: the dentry release after the last fput. Exactly once."""
        if self._released:
            raise ContractViolation("dma_buf_release", f"{self!r} released twice")
        if self.vmapping_counter:
            raise ContractViolation("dma_buf_release", f"released with vmapping_counter "
                                    f"{self.vmapping_counter} (BUG_ON: a vmap was not vunmapped)")
        if self.cb_in.active or self.cb_out.active:
            raise ContractViolation("dma_buf_release", "released with a poll callback active "
                                    "(BUG_ON: file reference imbalance in dma_buf_poll)")
        self._released = True
        self._op("release", self)
        if self._embedded_resv:
            self.resv.fini()
        if self._attachments:
            self.machine.warn("dma_buf_release", f"{self!r} released with "
                              f"{len(self._attachments)} attachment(s) still attached: "
                              "importers must detach before dropping their reference")
        if self.owner is not None:
            self.owner.put()
        self.machine.trace.emit("dma_buf_release", ino=self.ino, exp_name=self.exp_name)


_EXPORT_TOKEN = object()


# --------------------------------------------------------------------------------------------
# Attachment
# --------------------------------------------------------------------------------------------


class DmaBufAttachment:
    """One importer's attachment — ``struct dma_buf_attachment``. Made by ``(dynamic_)attach``.

    Attributes:
        dmabuf: the buffer.
        dev: the importing device.
        peer2peer: the importer can take P2P addresses (``importer_ops.allow_peer2peer``; the
            exporter's ``attach`` may clear it).
        importer_ops / importer_priv: the importer's ops and data (None for static).
        priv: the exporter's per-attachment data (set by its ``attach``).
        invalidations: how many times ``invalidate_mappings`` was delivered (model statistic).

    Kernel: include/linux/dma-buf.h, struct dma_buf_attachment.
    """

    def __init__(self, dmabuf: DmaBuf, dev: DmaDev, importer_ops: DmaBufAttachOps | None,
                 importer_priv: Any, _token: object = None) -> None:
        if _token is not _EXPORT_TOKEN:
            raise TypeError("attachments are created by DmaBuf.attach/dynamic_attach")
        self.dmabuf = dmabuf
        self.dev = dev
        self.importer_ops = importer_ops
        self.importer_priv = importer_priv
        self.peer2peer = importer_ops.allow_peer2peer if importer_ops is not None else False
        self.priv: Any = None
        self.invalidations = 0
        #: Live mappings handed out by :meth:`map`: id(table) -> (table given, exporter's
        #: table, direction, pinned_on_map). Model bookkeeping for the checks.
        self._live: dict[int, tuple[MapResult, MapResult, DmaDataDirection, bool]] = {}
        #: Successful explicit pins minus unpins (dma_buf_pin/unpin).
        self.pin_count = 0
        #: Core pins made for pin_on_map, minus their unpins (I-B2).
        self.map_pins = 0
        self._listed = False
        self._detached = False

    def __repr__(self) -> str:
        kind = "dynamic" if self.is_dynamic else "static"
        return (f"<DmaBufAttachment {self.dev.name} -> {self.dmabuf.exp_name}#{self.dmabuf.ino} "
                f"{kind} maps={len(self._live)}>")

    @property
    def is_dynamic(self) -> bool:
        """``dma_buf_attachment_is_dynamic()``: the importer gave ops."""
        return self.importer_ops is not None

    @property
    def revocable(self) -> bool:
        """``dma_buf_attach_revocable()`` (v7.1): the importer provides ``invalidate_mappings``.

        Only such importers are guaranteed to unmap within bounded time when the exporter
        revokes (I-B7).
        """
        return self.importer_ops is not None and self.importer_ops.has_invalidate_mappings

    @property
    def detached(self) -> bool:
        """True after :meth:`DmaBuf.detach`."""
        return self._detached

    @property
    def live_mappings(self) -> int:
        """Mappings returned by :meth:`map` and not yet unmapped."""
        return len(self._live)

    def _pin_on_map(self) -> bool:
        # dma_buf_pin_on_map() (v7.1): ops->pin && !attach->importer_ops
        return self.dmabuf.ops.provides("pin") and self.importer_ops is None

    def _check_usable(self, what: str) -> None:
        if self._detached:
            raise ContractViolation(what, f"{what} on a detached attachment ({self.dev.name}): "
                                    "use after free")
        self.dmabuf._check_alive(what)

    # -- pin ------------------------------------------------------------------------------
    def pin(self) -> None:
        """Pin the storage — ``dma_buf_pin()``. Dynamic importers only (WARN otherwise).

        Calls the exporter's ``pin`` if it has one; an exporter without ``pin`` never moves,
        so the pin succeeds trivially. Use for scanout-like long-lived uses, never for a
        temporary pin; undo with :meth:`unpin`.

        Context: must hold the resv lock (asserted).
        Raises: the exporter's error (-EOPNOTSUPP to refuse pinning, -ENOMEM…);
            ContractViolation: lock not held, detached.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_pin().
        """
        if self.importer_ops is None:
            self.dmabuf.machine.warn("dma_buf_pin", f"{self.dev.name}: only dynamic importers "
                                     "may pin (WARN_ON(!attach->importer_ops))")
        check_entry("dma_buf_pin", self.dmabuf.machine, self.dmabuf.resv)
        self._check_usable("dma_buf_pin")
        if self.dmabuf.ops.provides("pin"):
            self.dmabuf._op("pin", self)
        self.pin_count += 1
        self.dmabuf.machine.trace.emit("dma_buf_pin", ino=self.dmabuf.ino, dev=self.dev.name)

    def unpin(self) -> None:
        """Unpin — ``dma_buf_unpin()``: the exporter may move the storage again.

        Context: must hold the resv lock (asserted).
        Raises: ContractViolation: lock not held, detached, or no matching pin (model check).
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_unpin().
        """
        if self.importer_ops is None:
            self.dmabuf.machine.warn("dma_buf_unpin", f"{self.dev.name}: only dynamic importers "
                                     "may unpin (WARN_ON(!attach->importer_ops))")
        check_entry("dma_buf_unpin", self.dmabuf.machine, self.dmabuf.resv)
        self._check_usable("dma_buf_unpin")
        if self.pin_count <= 0:
            raise ContractViolation("dma_buf_unpin", f"{self.dev.name}: unpin without a pin")
        if self.dmabuf.ops.provides("unpin"):
            self.dmabuf._op("unpin", self)
        self.pin_count -= 1
        self.dmabuf.machine.trace.emit("dma_buf_unpin", ino=self.dmabuf.ino, dev=self.dev.name)

    # -- map ------------------------------------------------------------------------------
    def map(self, direction: int) -> MapResult:
        """Map the buffer for DMA by ``dev`` — ``dma_buf_map_attachment()``.

        Steps (v7.1): 1) ``pin_on_map`` (dynamic exporter, static importer): ``ops.pin``;
        2) ``ops.map_dma_buf`` (None → ``-ENOMEM``; an error unpins); 3) static importers only:
        wait for the KERNEL fences (interruptible; an error unmaps and unpins); 4) with
        ``CONFIG_DMABUF_DEBUG`` an SgTable is handed out as a DMA-only copy. No caching: every
        call reaches the exporter. Dynamic importers must wait for the fences they need
        themselves (at least KERNEL and WRITE).

        Args:
            direction: :class:`~dmabuf.buf.device.DmaDataDirection`.
        Context: must hold the resv lock (asserted); may sleep.
        Returns: the mapping (:class:`SgTable` or :class:`PhysVec` of DMA addresses for
            ``dev``); give it back with :meth:`unmap`.
        Raises: DmaBufError: the exporter's error (-ENODEV revoked, -ENOMEM, -EINTR…),
            -ERESTARTSYS from the interrupted wait; ContractViolation: lock not held, bad
            direction, detached, or the exporter returned a wrong type / a still-live table.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_map_attachment(), dma_buf_pin_on_map().
        """
        m = self.dmabuf.machine
        m.lockdep.might_sleep("dma_buf_map_attachment")
        check_entry("dma_buf_map_attachment", m, self.dmabuf.resv)
        d = check_direction(direction)
        self._check_usable("dma_buf_map_attachment")
        dmabuf = self.dmabuf
        pinned = False
        if self._pin_on_map():
            try:
                dmabuf._op("pin", self)
            except DmaBufError as e:
                if e.errno == errno.EBUSY:
                    m.warn("dma_buf_map_attachment", f"{dmabuf.exp_name}: pin returned -EBUSY "
                           "although an attachment exists (exporters must not make buffers "
                           "inaccessible under attachments)")
                raise
            pinned = True
            self.map_pins += 1
        try:
            table = dmabuf._op("map_dma_buf", self, d)
            if table is None:
                raise DmaBufError(errno.ENOMEM, f"{dmabuf.exp_name}: map_dma_buf returned "
                                  "nothing")
            if not isinstance(table, (SgTable, PhysVec)):
                raise ContractViolation("dma_buf_ops.map_dma_buf", f"{dmabuf.exp_name}: "
                                        f"map_dma_buf returned a {type(table).__name__}; it "
                                        "must return an SgTable or a PhysVec")
            if dmabuf._live_origs.get(id(table)) is table:
                raise ContractViolation(
                    "dma_buf_ops.map_dma_buf", f"{dmabuf.exp_name}: map_dma_buf "
                    "returned a table that is still mapped (exporters must not cache "
                    "mappings nor return the same table twice)")
            if self.importer_ops is None:
                try:
                    dmabuf.resv.wait_timeout(DmaResvUsage.KERNEL, True, None)
                except BaseException:
                    dmabuf._op("unmap_dma_buf", self, table, d)
                    raise
        except BaseException:
            if pinned:
                dmabuf._op("unpin", self)
                self.map_pins -= 1
            raise
        given: MapResult = table
        if isinstance(table, SgTable) and _registry(m).debug_wrap:
            given = table.wrap_dma_only()
        self._live[id(given)] = (given, table, d, pinned)
        dmabuf._live_origs[id(table)] = table
        m.trace.emit("dma_buf_map_attachment", ino=dmabuf.ino, dev=self.dev.name,
                     direction=d.name, nbytes=_result_len(given))
        return given

    def unmap(self, table: MapResult, direction: int) -> None:
        """Give a mapping back — ``dma_buf_unmap_attachment()``.

        Unwraps the debug copy, calls the exporter's ``unmap_dma_buf``, then ``unpin`` if the
        map pinned (``pin_on_map``).

        Args:
            table: what :meth:`map` returned.
            direction: the direction it was mapped with.
        Context: must hold the resv lock (asserted); may sleep.
        Raises: ContractViolation("dma_buf_unmap_attachment"): ``table`` is None (WARN in the
            kernel), not a live mapping of this attachment, or mapped with another direction;
            lock not held.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_unmap_attachment().
        """
        m = self.dmabuf.machine
        m.lockdep.might_sleep("dma_buf_unmap_attachment")
        check_entry("dma_buf_unmap_attachment", m, self.dmabuf.resv)
        d = check_direction(direction)
        if table is None:
            m.warn("dma_buf_unmap_attachment", "unmap of a NULL sg_table")
            return
        ent = self._live.get(id(table))
        if ent is None or ent[0] is not table:
            raise ContractViolation("dma_buf_unmap_attachment", f"{self.dev.name}: unmapping a "
                                    "table this attachment did not map (or unmapped twice)")
        given, orig, md, pinned = ent
        if md != d:
            raise ContractViolation("dma_buf_unmap_attachment", f"{self.dev.name}: unmap with "
                                    f"direction {d.name}, mapped with {md.name}")
        del self._live[id(table)]
        self.dmabuf._live_origs.pop(id(orig), None)
        if given is not orig and isinstance(given, SgTable):
            given.free()   # dma_buf_unwrap_sg_table(): the debug copy goes away
        self.dmabuf._op("unmap_dma_buf", self, orig, d)
        if pinned:
            self.dmabuf._op("unpin", self)
            self.map_pins -= 1
        m.trace.emit("dma_buf_unmap_attachment", ino=self.dmabuf.ino, dev=self.dev.name)

    def map_unlocked(self, direction: int) -> MapResult:
        """:meth:`map` taking the resv lock itself — ``dma_buf_map_attachment_unlocked()``.

        Context: must not hold the resv lock. Returns/Raises: as :meth:`map`.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_map_attachment_unlocked().
        """
        m = self.dmabuf.machine
        m.lockdep.might_sleep("dma_buf_map_attachment_unlocked")
        check_entry("dma_buf_map_attachment_unlocked", m, self.dmabuf.resv)
        self.dmabuf.resv.lock(None)
        try:
            return self.map(direction)
        finally:
            self.dmabuf.resv.unlock()

    def unmap_unlocked(self, table: MapResult, direction: int) -> None:
        """:meth:`unmap` taking the resv lock itself — ``dma_buf_unmap_attachment_unlocked()``.

        Context: must not hold the resv lock. Raises: as :meth:`unmap`.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_unmap_attachment_unlocked().
        """
        m = self.dmabuf.machine
        m.lockdep.might_sleep("dma_buf_unmap_attachment_unlocked")
        check_entry("dma_buf_unmap_attachment_unlocked", m, self.dmabuf.resv)
        self.dmabuf.resv.lock(None)
        try:
            self.unmap(table, direction)
        finally:
            self.dmabuf.resv.unlock()

    def detach(self) -> None:
        """``dmabuf.detach(self)`` — ``dma_buf_detach()``.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_detach().
        """
        self.dmabuf.detach(self)

    def describe(self) -> dict[str, Any]:
        """Snapshot: device, dynamic/static, p2p, revocable, live mappings, pins.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {
            "dev": self.dev.name,
            "dynamic": self.is_dynamic,
            "peer2peer": self.peer2peer,
            "revocable": self.revocable,
            "mappings": len(self._live),
            "pins": self.pin_count,
            "map_pins": self.map_pins,
            "invalidations": self.invalidations,
        }


def _result_len(t: MapResult) -> int:
    if isinstance(t, PhysVec):
        return t.total_len
    return t.size


# --------------------------------------------------------------------------------------------
# Export, get, iteration
# --------------------------------------------------------------------------------------------


def dma_buf_export(info: DmaBufExportInfo, machine: Machine | None = None) -> DmaBuf:
    """Create a dma-buf around an exporter's object — ``dma_buf_export()``.

    Validation (each a WARN + ``-EINVAL`` in the kernel): ``priv`` and ``ops`` set;
    ``map_dma_buf``, ``unmap_dma_buf`` and ``release`` provided; ``pin`` and ``unpin`` both
    provided or both absent. Then ``try_module_get(owner)`` (``-ENOENT`` while unloading). The
    file gets ``flags & (O_ACCMODE | O_NONBLOCK)``, a unique inode number and ``i_size =
    size``; the buffer gets an embedded reservation object unless ``info.resv`` is given, and
    goes at the head of the machine's list. The caller holds the one reference.

    Model choice: the kernel does not check ``size``; neither does the model for 0 (a 0-byte
    dma-buf can be exported, as in the kernel), but a negative or non-int size — impossible
    for ``size_t`` — is rejected (``EINVAL``/``TypeError``).

    Args:
        info: the :class:`DmaBufExportInfo`.
        machine: the machine (default: the current one).
    Context: must not hold ``info.resv``'s lock; may block.
    Returns: the new :class:`DmaBuf` (refcount 1).
    Raises:
        DmaBufError(EINVAL): a validation rule above (also ``machine.warn``).
        DmaBufError(ENOENT): the owner module is being unloaded.
        TypeError: wrong types (info, ops, resv, flags, exp_name).
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_export(), dma_buf_getfile().
    """
    m = machine if machine is not None else current_machine()
    if not isinstance(info, DmaBufExportInfo):
        raise TypeError(f"dma_buf_export needs a DmaBufExportInfo, not {type(info).__name__}")
    if not isinstance(info.exp_name, str):
        raise TypeError("exp_name must be a str")
    if isinstance(info.size, bool) or not isinstance(info.size, int):
        raise TypeError(f"size must be an int, not {type(info.size).__name__}")
    if info.size < 0 or info.size >= _U64:
        raise DmaBufError(errno.EINVAL, f"size {info.size} is not a valid size_t")
    if isinstance(info.flags, bool) or not isinstance(info.flags, int):
        raise TypeError("flags must be an int (O_* file flags)")
    if info.resv is not None and not isinstance(info.resv, DmaResv):
        raise TypeError(f"resv must be a DmaResv or None, not {type(info.resv).__name__}")
    if info.ops is not None and not isinstance(info.ops, DmaBufOps):
        raise TypeError(f"ops must be a DmaBufOps, not {type(info.ops).__name__}")
    if info.resv is not None:
        check_entry("dma_buf_export", m, info.resv)
    ops = info.ops
    missing = [] if ops is None else [n for n in _MANDATORY_OPS if not ops.provides(n)]
    if info.priv is None or ops is None or missing:
        what = ("priv is None" if info.priv is None else "ops is None" if ops is None
                else f"ops lack mandatory {', '.join(missing)}")
        m.warn("dma_buf_export", f"{info.exp_name}: {what}")
        raise DmaBufError(errno.EINVAL, f"dma_buf_export({info.exp_name}): {what}; exporters "
                          "must pass priv and ops with map_dma_buf, unmap_dma_buf and release")
    if ops.provides("pin") != ops.provides("unpin"):
        m.warn("dma_buf_export", f"{info.exp_name}: pin without unpin or unpin without pin")
        raise DmaBufError(errno.EINVAL, f"dma_buf_export({info.exp_name}): pin and unpin must "
                          "both be provided or both be absent")
    if info.owner is not None and not info.owner.try_get():
        raise DmaBufError(errno.ENOENT, f"dma_buf_export({info.exp_name}): module "
                          f"{info.owner.name} is being unloaded")
    embedded = info.resv is None
    resv = DmaResv(machine=m) if embedded else info.resv
    assert resv is not None
    dmabuf = DmaBuf(info, resv, embedded, m, _token=_EXPORT_TOKEN)
    _registry(m)._add(dmabuf)
    m.trace.emit("dma_buf_export", ino=dmabuf.ino, exp_name=info.exp_name, size=info.size)
    return dmabuf


def dma_buf_get(fd: int, machine: Machine | None = None) -> DmaBuf:
    """The dma-buf behind ``fd`` in the current process, with a new reference — ``dma_buf_get()``.

    Args:
        fd: a descriptor of the current process (:func:`~dmabuf.buf.file.current_process`).
        machine: default the current machine.
    Context: must not hold the buffer's resv lock; never blocks.
    Returns: the :class:`DmaBuf` (+1 reference; ``put()`` it).
    Raises: DmaBufError(EBADF): ``fd`` is not open; DmaBufError(EINVAL): ``fd`` is not a
        dma-buf.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_get().
    """
    m = machine if machine is not None else current_machine()
    f = current_process(m).fds.fget(fd)
    if f.fops is not _registry(m).fops:
        f.put()
        raise DmaBufError(errno.EINVAL, f"fd {fd} is a {f.fops.name} file, not a dma-buf")
    dmabuf: DmaBuf = f.private_data
    try:
        check_entry("dma_buf_get", m, dmabuf.resv)
    except BaseException:
        f.put()
        raise
    return dmabuf


def dma_buf_iter_begin(machine: Machine | None = None) -> DmaBuf | None:
    """The first live buffer of the machine's list, with a reference — ``dma_buf_iter_begin()``.

    Buffers being destroyed (count already 0) are skipped.

    Returns: a :class:`DmaBuf` (+1 reference) or None. Continue with :func:`dma_buf_iter_next`
        (which drops it) or ``put()`` it.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_iter_begin().
    """
    reg = _registry(machine if machine is not None else current_machine())
    with reg.list_mutex:
        for b in reg._list:
            if b.file.try_get():
                return b
    return None


def dma_buf_iter_next(prev: DmaBuf) -> DmaBuf | None:
    """The next live buffer after ``prev`` (whose reference is dropped) — ``dma_buf_iter_next()``.

    Model note: the kernel drops ``prev`` inside the list mutex (its fput is deferred); the
    model finds the successor first and drops ``prev`` after releasing the mutex, so a final
    put cannot re-enter the list mutex.

    Returns: the next :class:`DmaBuf` (+1 reference) or None.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_iter_next().
    """
    reg = _registry(prev.machine)
    nxt: DmaBuf | None = None
    with reg.list_mutex:
        try:
            i = reg._list.index(prev)
        except ValueError:
            i = len(reg._list)
        for b in reg._list[i + 1:]:
            if b.file.try_get():
                nxt = b
                break
    prev.file.put()
    return nxt


def for_each_dma_buf(machine: Machine | None = None) -> Iterator[DmaBuf]:
    """Iterate the machine's live buffers, each held by a reference while yielded.

    Built on :func:`dma_buf_iter_begin`/:func:`dma_buf_iter_next`; breaking out of the loop
    drops the current reference.

    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_iter_begin() / dma_buf_iter_next().
    """
    b = dma_buf_iter_begin(machine)
    try:
        while b is not None:
            yield b
            b = dma_buf_iter_next(b)
    finally:
        if b is not None:
            b.file.put()


# --------------------------------------------------------------------------------------------
# Kernel-named functions (thin aliases of the methods, for ports of kernel code)
# --------------------------------------------------------------------------------------------


def get_dma_buf(dmabuf: DmaBuf) -> None:
    """``get_dma_buf()``: the kernel-named form of :meth:`DmaBuf.get`.

    Context/Returns/Raises: as :meth:`DmaBuf.get`.
    Kernel: drivers/dma-buf/dma-buf.c, get_dma_buf().
    """
    dmabuf.get()


def dma_buf_put(dmabuf: DmaBuf) -> None:
    """``dma_buf_put()``: the kernel-named form of :meth:`DmaBuf.put`.

    Context/Returns/Raises: as :meth:`DmaBuf.put`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_put().
    """
    dmabuf.put()


def dma_buf_fd(dmabuf: DmaBuf, flags: int = 0) -> int:
    """``dma_buf_fd()``: the kernel-named form of :meth:`DmaBuf.fd`.

    Context/Returns/Raises: as :meth:`DmaBuf.fd`. ``dmabuf`` None raises ``EINVAL``.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_fd().
    """
    if dmabuf is None:
        raise DmaBufError(errno.EINVAL, "dma_buf_fd: dmabuf is NULL")
    return dmabuf.fd(flags)


def dma_buf_attach(dmabuf: DmaBuf, dev: DmaDev) -> DmaBufAttachment:
    """``dma_buf_attach()``: the kernel-named form of :meth:`DmaBuf.attach`.

    Context/Returns/Raises: as :meth:`DmaBuf.attach`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_attach().
    """
    return dmabuf.attach(dev)


def dma_buf_dynamic_attach(dmabuf: DmaBuf, dev: DmaDev, importer_ops: DmaBufAttachOps | None,
                           importer_priv: Any = None) -> DmaBufAttachment:
    """``dma_buf_dynamic_attach()``: the kernel-named form of :meth:`DmaBuf.dynamic_attach`.

    Context/Returns/Raises: as :meth:`DmaBuf.dynamic_attach`. ``dmabuf`` None: EINVAL.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_dynamic_attach().
    """
    if dmabuf is None:
        current_machine().warn("dma_buf_dynamic_attach", "attach to a NULL dma-buf")
        raise DmaBufError(errno.EINVAL, "dma_buf_dynamic_attach: dmabuf is NULL")
    return dmabuf.dynamic_attach(dev, importer_ops, importer_priv)


def dma_buf_detach(dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
    """``dma_buf_detach()``: the kernel-named form of :meth:`DmaBuf.detach`.

    Context/Returns/Raises: as :meth:`DmaBuf.detach`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_detach().
    """
    if dmabuf is None:
        current_machine().warn("dma_buf_detach", "detach from a NULL dma-buf")
        return
    dmabuf.detach(attach)


def dma_buf_pin(attach: DmaBufAttachment) -> None:
    """``dma_buf_pin()``: the kernel-named form of :meth:`DmaBufAttachment.pin`.

    Context/Returns/Raises: as :meth:`DmaBufAttachment.pin`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_pin().
    """
    attach.pin()


def dma_buf_unpin(attach: DmaBufAttachment) -> None:
    """``dma_buf_unpin()``: the kernel-named form of :meth:`DmaBufAttachment.unpin`.

    Context/Returns/Raises: as :meth:`DmaBufAttachment.unpin`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_unpin().
    """
    attach.unpin()


def dma_buf_map_attachment(attach: DmaBufAttachment, direction: int) -> MapResult:
    """``dma_buf_map_attachment()``: the kernel-named form of :meth:`DmaBufAttachment.map`.

    Context/Returns/Raises: as :meth:`DmaBufAttachment.map`. None attach: EINVAL.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_map_attachment().
    """
    if attach is None:
        current_machine().warn("dma_buf_map_attachment", "map of a NULL attachment")
        raise DmaBufError(errno.EINVAL, "dma_buf_map_attachment: attach is NULL")
    return attach.map(direction)


def dma_buf_unmap_attachment(attach: DmaBufAttachment, table: MapResult, direction: int) -> None:
    """``dma_buf_unmap_attachment()``: the kernel-named form of :meth:`DmaBufAttachment.unmap`.

    Context/Returns/Raises: as :meth:`DmaBufAttachment.unmap`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_unmap_attachment().
    """
    attach.unmap(table, direction)


def dma_buf_map_attachment_unlocked(attach: DmaBufAttachment, direction: int) -> MapResult:
    """``dma_buf_map_attachment_unlocked()``: the kernel name of
    :meth:`DmaBufAttachment.map_unlocked`.

    Context/Returns/Raises: as :meth:`DmaBufAttachment.map_unlocked`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_map_attachment_unlocked().
    """
    if attach is None:
        current_machine().warn("dma_buf_map_attachment_unlocked", "map of a NULL attachment")
        raise DmaBufError(errno.EINVAL, "dma_buf_map_attachment_unlocked: attach is NULL")
    return attach.map_unlocked(direction)


def dma_buf_unmap_attachment_unlocked(attach: DmaBufAttachment, table: MapResult,
                                      direction: int) -> None:
    """``dma_buf_unmap_attachment_unlocked()``: the kernel name of
    :meth:`DmaBufAttachment.unmap_unlocked`.

    Context/Returns/Raises: as :meth:`DmaBufAttachment.unmap_unlocked`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_unmap_attachment_unlocked().
    """
    attach.unmap_unlocked(table, direction)


def dma_buf_invalidate_mappings(dmabuf: DmaBuf) -> None:
    """``dma_buf_invalidate_mappings()``: the kernel name of
    :meth:`DmaBuf.invalidate_mappings`.

    Context/Returns/Raises: as :meth:`DmaBuf.invalidate_mappings`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_invalidate_mappings().
    """
    dmabuf.invalidate_mappings()


def dma_buf_move_notify(dmabuf: DmaBuf) -> None:
    """``dma_buf_move_notify()``: the kernel-named form of :meth:`DmaBuf.move_notify`.

    Context/Returns/Raises: as :meth:`DmaBuf.move_notify`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_move_notify().
    """
    dmabuf.move_notify()


def dma_buf_attach_revocable(attach: DmaBufAttachment) -> bool:
    """``dma_buf_attach_revocable()``: the kernel-named form of :attr:`DmaBufAttachment.revocable`.

    Context/Returns/Raises: as :attr:`DmaBufAttachment.revocable` (I-B7).
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_attach_revocable().
    """
    return attach.revocable


def dma_buf_begin_cpu_access(dmabuf: DmaBuf, direction: int) -> None:
    """``dma_buf_begin_cpu_access()``: the kernel-named form of :meth:`DmaBuf.begin_cpu_access`.

    Context/Returns/Raises: as :meth:`DmaBuf.begin_cpu_access`. None: EINVAL.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_begin_cpu_access().
    """
    if dmabuf is None:
        current_machine().warn("dma_buf_begin_cpu_access", "NULL dma-buf")
        raise DmaBufError(errno.EINVAL, "dma_buf_begin_cpu_access: dmabuf is NULL")
    dmabuf.begin_cpu_access(direction)


def dma_buf_end_cpu_access(dmabuf: DmaBuf, direction: int) -> None:
    """``dma_buf_end_cpu_access()``: the kernel-named form of :meth:`DmaBuf.end_cpu_access`.

    Context/Returns/Raises: as :meth:`DmaBuf.end_cpu_access`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_end_cpu_access().
    """
    dmabuf.end_cpu_access(direction)


def dma_buf_mmap(dmabuf: DmaBuf, vma: Vma, pgoff: int) -> None:
    """``dma_buf_mmap()``: the kernel-named form of :meth:`DmaBuf.mmap`.

    Context/Returns/Raises: as :meth:`DmaBuf.mmap`. None dmabuf: EINVAL (WARN).
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_mmap().
    """
    if dmabuf is None:
        current_machine().warn("dma_buf_mmap", "NULL dma-buf")
        raise DmaBufError(errno.EINVAL, "dma_buf_mmap: dmabuf is NULL")
    dmabuf.mmap(vma, pgoff)


def dma_buf_vmap(dmabuf: DmaBuf) -> Any:
    """``dma_buf_vmap()``: the kernel-named form of :meth:`DmaBuf.vmap`.

    Context/Returns/Raises: as :meth:`DmaBuf.vmap`. None: EINVAL (WARN).
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_vmap().
    """
    if dmabuf is None:
        current_machine().warn("dma_buf_vmap", "NULL dma-buf")
        raise DmaBufError(errno.EINVAL, "dma_buf_vmap: dmabuf is NULL")
    return dmabuf.vmap()


def dma_buf_vunmap(dmabuf: DmaBuf, vmap: Any) -> None:
    """``dma_buf_vunmap()``: the kernel-named form of :meth:`DmaBuf.vunmap`.

    Context/Returns/Raises: as :meth:`DmaBuf.vunmap`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_vunmap().
    """
    dmabuf.vunmap(vmap)


def dma_buf_vmap_unlocked(dmabuf: DmaBuf) -> Any:
    """``dma_buf_vmap_unlocked()``: the kernel-named form of :meth:`DmaBuf.vmap_unlocked`.

    Context/Returns/Raises: as :meth:`DmaBuf.vmap_unlocked`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_vmap_unlocked().
    """
    if dmabuf is None:
        current_machine().warn("dma_buf_vmap_unlocked", "NULL dma-buf")
        raise DmaBufError(errno.EINVAL, "dma_buf_vmap_unlocked: dmabuf is NULL")
    return dmabuf.vmap_unlocked()


def dma_buf_vunmap_unlocked(dmabuf: DmaBuf, vmap: Any) -> None:
    """``dma_buf_vunmap_unlocked()``: the kernel-named form of :meth:`DmaBuf.vunmap_unlocked`.

    Context/Returns/Raises: as :meth:`DmaBuf.vunmap_unlocked`.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_vunmap_unlocked().
    """
    dmabuf.vunmap_unlocked(vmap)

