"""Errors of the model and of the uAPI bindings — the Python form of the kernel's ``-EXXX``.

Linux reports failure by returning a negative errno (or an ``ERR_PTR``). The model raises instead,
with one convention everywhere: where the kernel returns ``-EXXX``, the model raises
:class:`DmaBufError` (an :class:`OSError`, so ``e.errno`` is the Linux value and ``except OSError``
works) or one of its subclasses; where the kernel returns a value callers branch on (a bool, the
remaining jiffies of a wait) the model returns it. The message always says what was wrong and what
to do about it.

Misuse of a documented contract — what the kernel answers with ``WARN_ON``/``BUG_ON`` or lockdep
splats (unlocking a lock you do not hold, adding a fence without reserving a slot, waiting for a
fence inside a signalling section) — raises :class:`ContractViolation` naming the rule. Such an
error is a bug in the caller, never an expected outcome.

Kernel: include/uapi/asm-generic/errno-base.h, errno.h; include/linux/err.h.
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "ERESTARTSYS",
    "ContractViolation",
    "DeadlockDetected",
    "DmaBufError",
    "IommuFault",
    "WouldDeadlock",
    "errno_name",
]

#: Kernel-internal "restart the system call" (never reaches user space; the model reports it for
#: interruptible waits that were interrupted, as the kernel does before the syscall layer maps it).
ERESTARTSYS = 512


def errno_name(value: int) -> str:
    """Return the symbolic name of a Linux errno (``EINVAL``), or ``E<value>`` if unknown."""
    value = abs(value)
    if value == ERESTARTSYS:
        return "ERESTARTSYS"
    return _errno.errorcode.get(value, f"E{value}")


class DmaBufError(OSError):
    """An operation failed with a Linux errno, exactly where the kernel returns ``-errno``.

    ``DmaBufError(errno.EINVAL, "size must be page-aligned; round it up to 4096")``.
    ``str(e)`` reads ``[EINVAL] size must be …``. The errno is always positive, as in ``OSError``.
    """

    def __init__(self, err: int, message: str) -> None:
        err = abs(int(err))
        super().__init__(err, message)
        self.errno = err
        self.strerror = message

    def __str__(self) -> str:
        return f"[{errno_name(self.errno or 0)}] {self.strerror}"

    def __reduce__(self) -> tuple[type, tuple[int, str]]:
        return (type(self), (self.errno or 0, self.strerror or ""))


class WouldDeadlock(DmaBufError):
    """``-EDEADLK`` from a ww_mutex: back off (drop every lock of the context) and retry.

    Kernel: kernel/locking/ww_mutex.h, __ww_mutex_check_kill() / __ww_mutex_kill().
    """

    def __init__(self, message: str = "ww_mutex: back off: unlock all, then lock_slow()") -> None:
        super().__init__(_errno.EDEADLK, message)

    def __reduce__(self) -> tuple[type, tuple[str]]:  # type: ignore[override]
        return (type(self), (self.strerror or "",))


class IommuFault(DmaBufError):
    """A DMA reached an address with no valid translation, or memory its mapping no longer owns.

    Raised by the DMA engines of the model where real hardware would raise an IOMMU fault (or
    silently corrupt memory): a DMA through an unmapped IOVA, a bus address outside any BAR, or a
    page that was freed, migrated or revoked after the mapping was made. ``errno`` is ``EFAULT``.
    """

    def __init__(self, message: str, *, dma_addr: int | None = None, device: str = "") -> None:
        super().__init__(_errno.EFAULT, message)
        self.dma_addr = dma_addr
        self.device = device

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_rebuild_fault, (self.strerror or "", self.dma_addr, self.device))


def _rebuild_fault(message: str, dma_addr: int | None, device: str) -> IommuFault:
    return IommuFault(message, dma_addr=dma_addr, device=device)


class ContractViolation(AssertionError):
    """A caller broke a documented kernel contract (what lockdep, WARN_ON or BUG_ON would catch).

    ``rule`` names the rule (e.g. ``"dma_resv_assert_held"``); the message says who did what.
    """

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule


class DeadlockDetected(RuntimeError):
    """The controlled scheduler found every thread blocked with no timer pending.

    ``waits`` maps each blocked thread's name to its wait point; ``seed`` replays the run.
    """

    def __init__(self, message: str, *, seed: int | None = None,
                 waits: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.seed = seed
        self.waits = dict(waits or {})
