"""include/uapi/asm-generic/ioctl.h — ioctl request numbers, computed as the C macros do.

An ioctl request number packs four fields into 32 bits: the number ``nr`` (8 bits), the "type"
or magic character (8 bits), the size of the argument structure (14 bits) and the direction
(2 bits: ``_IOC_WRITE`` = user space writes, the kernel reads; ``_IOC_READ`` = the kernel
writes back)::

    dir(2) | size(14) | type(8) | nr(8)

The bindings never hard-code a request number: each is computed here from the macro the uAPI
header uses and the ``ctypes`` size of its structure, and ``tests/uapi/test_ioctl.py`` checks
the results against the values recorded from the real headers (machine-and-real-kernel.md §3).
Because the size is part of the number, an ioctl whose structure grew (``dma_heap``'s
``heap_flags``) has two numbers; drivers like dma-heap accept both (``_IOC_SIZE`` tells them
which), most others compare the whole number and answer ``ENOTTY``.

Kernel: include/uapi/asm-generic/ioctl.h (_IOC, _IO, _IOR, _IOW, _IOWR, _IOC_SIZE…).
"""

from __future__ import annotations

import ctypes

__all__ = [
    "IO",
    "IOC",
    "IOC_NONE",
    "IOC_READ",
    "IOC_WRITE",
    "IOR",
    "IOW",
    "IOWR",
    "ioc_dir",
    "ioc_nr",
    "ioc_size",
    "ioc_type",
]

IOC_NRBITS = 8
IOC_TYPEBITS = 8
IOC_SIZEBITS = 14
IOC_DIRBITS = 2
IOC_NRSHIFT = 0
IOC_TYPESHIFT = IOC_NRSHIFT + IOC_NRBITS
IOC_SIZESHIFT = IOC_TYPESHIFT + IOC_TYPEBITS
IOC_DIRSHIFT = IOC_SIZESHIFT + IOC_SIZEBITS
#: Directions (from user space's point of view of the kernel: WRITE = copy_from_user).
IOC_NONE = 0
IOC_WRITE = 1
IOC_READ = 2

SizeSpec = int | type[ctypes.Structure] | type[ctypes._SimpleCData]


def _size(size: SizeSpec) -> int:
    n = size if isinstance(size, int) else ctypes.sizeof(size)
    if not 0 <= n < (1 << IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {n} does not fit in {IOC_SIZEBITS} bits")
    return n


def _type(t: str | int) -> int:
    v = ord(t) if isinstance(t, str) else int(t)
    if not 0 <= v < (1 << IOC_TYPEBITS):
        raise ValueError(f"ioctl type {t!r} does not fit in {IOC_TYPEBITS} bits")
    return v


def IOC(direction: int, type_: str | int, nr: int, size: SizeSpec) -> int:
    """Build a request number from its four fields — ``_IOC(dir, type, nr, size)``.

    Args:
        direction: ``IOC_NONE``, ``IOC_WRITE``, ``IOC_READ`` or ``IOC_READ | IOC_WRITE``.
        type_: the magic character (``'b'`` for dma-buf) or its code.
        nr: the command number (0–255).
        size: the argument size in bytes, or a ctypes type whose size is taken.

    Returns:
        The 32-bit request number.

    Raises:
        ValueError: a field does not fit its bits.

    Kernel: include/uapi/asm-generic/ioctl.h, _IOC().
    """
    if not 0 <= direction < (1 << IOC_DIRBITS):
        raise ValueError(f"ioctl direction {direction} does not fit in {IOC_DIRBITS} bits")
    if not 0 <= nr < (1 << IOC_NRBITS):
        raise ValueError(f"ioctl nr {nr} does not fit in {IOC_NRBITS} bits")
    return ((direction << IOC_DIRSHIFT) | (_type(type_) << IOC_TYPESHIFT)
            | (nr << IOC_NRSHIFT) | (_size(size) << IOC_SIZESHIFT))


def IO(type_: str | int, nr: int) -> int:
    """A request without argument — ``_IO(type, nr)``. Kernel: asm-generic/ioctl.h, _IO()."""
    return IOC(IOC_NONE, type_, nr, 0)


def IOR(type_: str | int, nr: int, size: SizeSpec) -> int:
    """The kernel writes the argument back — ``_IOR(type, nr, T)``. Kernel: _IOR()."""
    return IOC(IOC_READ, type_, nr, size)


def IOW(type_: str | int, nr: int, size: SizeSpec) -> int:
    """The kernel reads the argument — ``_IOW(type, nr, T)``. Kernel: _IOW()."""
    return IOC(IOC_WRITE, type_, nr, size)


def IOWR(type_: str | int, nr: int, size: SizeSpec) -> int:
    """The kernel reads and writes back — ``_IOWR(type, nr, T)``. Kernel: _IOWR()."""
    return IOC(IOC_READ | IOC_WRITE, type_, nr, size)


def ioc_dir(request: int) -> int:
    """The direction field — ``_IOC_DIR(nr)``."""
    return (request >> IOC_DIRSHIFT) & ((1 << IOC_DIRBITS) - 1)


def ioc_type(request: int) -> int:
    """The type (magic) field — ``_IOC_TYPE(nr)``."""
    return (request >> IOC_TYPESHIFT) & ((1 << IOC_TYPEBITS) - 1)


def ioc_nr(request: int) -> int:
    """The number field — ``_IOC_NR(nr)``."""
    return (request >> IOC_NRSHIFT) & ((1 << IOC_NRBITS) - 1)


def ioc_size(request: int) -> int:
    """The argument size field — ``_IOC_SIZE(nr)``."""
    return (request >> IOC_SIZESHIFT) & ((1 << IOC_SIZEBITS) - 1)
