"""drivers/infiniband/core/uverbs_std_types_mr.c + uverbs_cmd.c: the MR system-call entry points.

What the kernel checks between ``ibv_reg_dmabuf_mr()`` / ``ibv_reg_mr()`` in user space and the
driver, in the kernel's order:

``UVERBS_METHOD_REG_DMABUF_MR`` (:func:`ib_uverbs_reg_dmabuf_mr`):

1. the device implements ``reg_user_mr_dmabuf`` (else ``-EOPNOTSUPP``);
2. ``offset`` and ``iova`` have the same offset within a page (else ``-EINVAL``);
3. ``uverbs_get_flags32(access, LOCAL_WRITE | REMOTE_READ | REMOTE_WRITE | REMOTE_ATOMIC |
   RELAXED_ORDERING)`` — any other bit (``ON_DEMAND``, ``ZERO_BASED``, ``MW_BIND``…) is
   ``-EINVAL``;
4. :func:`~dmabuf.devices.rdma.ib_verbs.ib_check_mr_access` — ``REMOTE_WRITE`` /
   ``REMOTE_ATOMIC`` without ``LOCAL_WRITE`` is ``-EINVAL``;
5. the driver (:func:`~dmabuf.devices.rdma.mr.mlx5_ib_reg_user_mr_dmabuf`), whose umem code
   rejects overflow, a window past the end of the buffer and length 0 with ``-EINVAL``, a bad fd
   with ``-EBADF``;
6. ``pd->usecnt++``; lkey and rkey are returned.

``IB_USER_VERBS_CMD_REG_MR`` (:func:`ib_uverbs_reg_mr`): ``start`` and ``hca_va`` must share
their page offset (``-EINVAL``); :func:`ib_check_mr_access`; the driver
(:func:`~dmabuf.devices.rdma.mr.mlx5_ib_reg_user_mr`; ``ON_DEMAND`` user MRs are not modelled:
``-EOPNOTSUPP``).

The model-only ``kind`` argument selects the dma-buf MR flavour (see
:class:`~dmabuf.devices.rdma.mr.MrKind`); the real uAPI reaches the pinned flavours through
provider calls (``mlx5dv_reg_dmabuf_mr(..., MLX5DV_REG_DMABUF_ACCESS_DATA_DIRECT)``) or drivers
that only pin (efa, irdma, bnxt_re).

Kernel: drivers/infiniband/core/uverbs_std_types_mr.c
(UVERBS_HANDLER(UVERBS_METHOD_REG_DMABUF_MR)), drivers/infiniband/core/uverbs_cmd.c
(ib_uverbs_reg_mr, ib_uverbs_dereg_mr), drivers/infiniband/core/uverbs_ioctl.c
(uverbs_get_flags32); spec kernel-p2p-dma.md §3.3.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from dmabuf.buf.dma_buf import DmaBuf
from dmabuf.devices.rdma.ib_verbs import REG_DMABUF_MR_ACCESS, IbAccess, ib_check_mr_access
from dmabuf.devices.rdma.mr import (
    Mlx5IbMr,
    MrKind,
    mlx5_ib_dereg_mr,
    mlx5_ib_reg_user_mr,
    mlx5_ib_reg_user_mr_dmabuf,
)
from dmabuf.errors import DmaBufError
from dmabuf.mm.phys import PAGE_SIZE

if TYPE_CHECKING:
    from dmabuf.devices.rdma.mlx5_ib import IbPd

__all__ = ["ib_uverbs_dereg_mr", "ib_uverbs_reg_dmabuf_mr", "ib_uverbs_reg_mr",
           "uverbs_get_flags32"]

_PAGE_MASK = PAGE_SIZE - 1


def uverbs_get_flags32(value: int, allowed: int) -> int:
    """Read a 32-bit flags attribute — ``uverbs_get_flags32()``.

    Raises: DmaBufError(EINVAL): bits outside ``allowed`` or beyond 32 bits; TypeError.
    Kernel: drivers/infiniband/core/uverbs_ioctl.c, uverbs_get_flags64/32().
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"access flags must be an int, not {type(value).__name__}")
    if value < 0 or value >= 1 << 32:
        raise DmaBufError(errno.EINVAL, f"flags {value:#x} do not fit 32 bits")
    if value & ~allowed:
        bad = value & ~allowed
        names = [f.name for f in IbAccess if f & bad and f.name] or [hex(bad)]
        raise DmaBufError(errno.EINVAL, f"access flags {value:#x}: {', '.join(names)} not "
                          f"accepted here (allowed: {allowed:#x})")
    return value


def _u64(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value < 1 << 64:
        raise DmaBufError(errno.EINVAL, f"{what} {value:#x} is not a u64")
    return value


def ib_uverbs_reg_dmabuf_mr(pd: IbPd, offset: int, length: int, iova: int, fd: int | DmaBuf,
                            access: int, *, kind: MrKind | str = MrKind.DYNAMIC) -> Mlx5IbMr:
    """Register a dma-buf MR — ``UVERBS_METHOD_REG_DMABUF_MR`` (``ibv_reg_dmabuf_mr``).

    Args:
        pd: protection domain. offset: window start in the buffer (u64). length: bytes (u64).
        iova: the MR's address in work requests (u64; same page offset as ``offset``).
        fd: dma-buf fd of the current process (or a :class:`DmaBuf`).
        access: ``IB_ACCESS_*``.
        kind: model selector of the MR flavour (default: mlx5's dynamic MR).
    Context: must not hold the buffer's reservation lock; may block.
    Returns: the MR (``lkey``/``rkey``).
    Raises: DmaBufError(EINVAL / EOPNOTSUPP / EBADF / exporter errnos) as listed in the module
        docstring; TypeError for non-int arguments.
    Kernel: drivers/infiniband/core/uverbs_std_types_mr.c,
        UVERBS_HANDLER(UVERBS_METHOD_REG_DMABUF_MR).
    """
    dev = pd.device
    dev.check_alive("reg_dmabuf_mr")
    offset = _u64(offset, "offset")
    length = _u64(length, "length")
    iova = _u64(iova, "iova")
    if (offset & _PAGE_MASK) != (iova & _PAGE_MASK):
        raise DmaBufError(errno.EINVAL, f"offset {offset:#x} and iova {iova:#x} must have the "
                          "same offset within a page")
    access = uverbs_get_flags32(access, REG_DMABUF_MR_ACCESS)
    ib_check_mr_access(access, odp=dev.odp)
    return mlx5_ib_reg_user_mr_dmabuf(pd, offset, length, iova, fd, access, kind)


def ib_uverbs_reg_mr(pd: IbPd, start: int, length: int, hca_va: int, access: int) -> Mlx5IbMr:
    """Register user memory — ``IB_USER_VERBS_CMD_REG_MR`` (``ibv_reg_mr_iova2``).

    Raises: DmaBufError(EINVAL): page offsets of ``start`` and ``hca_va`` differ; bad access
        flags; DmaBufError(EOPNOTSUPP): ``ON_DEMAND``; DmaBufError(EFAULT): unmapped memory.
    Kernel: drivers/infiniband/core/uverbs_cmd.c, ib_uverbs_reg_mr().
    """
    dev = pd.device
    dev.check_alive("reg_mr")
    start = _u64(start, "start")
    length = _u64(length, "length")
    hca_va = _u64(hca_va, "hca_va")
    if (start & _PAGE_MASK) != (hca_va & _PAGE_MASK):
        raise DmaBufError(errno.EINVAL, f"start {start:#x} and hca_va {hca_va:#x} must have the "
                          "same offset within a page")
    if isinstance(access, bool) or not isinstance(access, int):
        raise TypeError("access flags must be an int")
    ib_check_mr_access(access, odp=dev.odp)
    return mlx5_ib_reg_user_mr(pd, start, length, hca_va, access)


def ib_uverbs_dereg_mr(mr: Mlx5IbMr) -> None:
    """Destroy an MR — ``IB_USER_VERBS_CMD_DEREG_MR`` → ``ib_dereg_mr_user``.

    Raises: ContractViolation: deregistered twice (the handle is gone in the kernel).
    Kernel: drivers/infiniband/core/uverbs_cmd.c, ib_uverbs_dereg_mr();
        drivers/infiniband/core/verbs.c, ib_dereg_mr_user().
    """
    mlx5_ib_dereg_mr(mr)
