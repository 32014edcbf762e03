"""drivers/infiniband/hw/mlx5/odp.c: HCA page faults, and how dma-buf MRs are (re)mapped on demand.

mlx5 dma-buf MRs reuse the on-demand-paging machinery. The MKey of a dynamic dma-buf MR is
stored in ``dev->odp_mkeys`` so that when the HCA reaches a non-present MTT entry — after the
exporter's invalidation ZAPped them, or before the first mapping — it raises a **page fault**
event instead of a protection error. The driver's handler (``mlx5_ib_eqe_pf_action`` →
``pagefault_single_data_segment`` → :func:`pagefault_mr`) finds the MKey and, for dma-buf MRs,
calls :func:`pagefault_dmabuf_mr`:

1. ``dma_resv_lock``; :func:`~dmabuf.devices.rdma.umem_dmabuf.ib_umem_dmabuf_map_pages` (maps
   through the exporter — at the buffer's *current* location — and waits for its KERNEL fences);
2. the page size must be ``PAGE_SIZE`` (else unmap, ``-EINVAL``); a UMR rewrites the whole MTT
   (:func:`~dmabuf.devices.rdma.umr.mlx5r_umr_update_mr_pas`, ENABLE at registration);
3. unlock; the whole MR is mapped on any fault (no partial mapping for dma-buf) and the faulting
   QP resumes.

:func:`mlx5_ib_init_dmabuf_mr` is the same call at registration (``MLX5_PF_FLAGS_ENABLE``).
:func:`mlx5_ib_page_fault` is the event entry point the model's HCA calls; it holds a use count
on the MKey so deregistration waits for a running fault (``mlx5r_deref_wait_odp_mkey``).

Kernel: drivers/infiniband/hw/mlx5/odp.c (pagefault_dmabuf_mr, pagefault_mr,
mlx5_ib_init_dmabuf_mr, pagefault_single_data_segment, mlx5r_deref_odp_mkey);
spec kernel-p2p-dma.md §3.2.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from dmabuf.devices.rdma.umem_dmabuf import (
    IbUmemDmabuf,
    ib_umem_dmabuf_map_pages,
    ib_umem_dmabuf_unmap_pages,
)
from dmabuf.devices.rdma.umr import MLX5_IB_UPD_XLT_ENABLE, mlx5r_umr_update_mr_pas
from dmabuf.errors import DmaBufError

if TYPE_CHECKING:
    from dmabuf.devices.rdma.mlx5_ib import RdmaNic
    from dmabuf.devices.rdma.mr import Mlx5IbMr

__all__ = [
    "MLX5_PF_FLAGS_DOWNGRADE",
    "MLX5_PF_FLAGS_ENABLE",
    "MLX5_PF_FLAGS_PREFETCH",
    "MLX5_PF_FLAGS_SNAPSHOT",
    "mlx5_ib_init_dmabuf_mr",
    "mlx5_ib_page_fault",
    "pagefault_dmabuf_mr",
    "pagefault_mr",
]

MLX5_PF_FLAGS_DOWNGRADE = 1 << 1
MLX5_PF_FLAGS_SNAPSHOT = 1 << 2
MLX5_PF_FLAGS_ENABLE = 1 << 3
MLX5_PF_FLAGS_PREFETCH = 1 << 4


def pagefault_dmabuf_mr(mr: Mlx5IbMr, bcnt: int, flags: int) -> int:
    """Map a dma-buf MR's whole window and load its MTT — ``pagefault_dmabuf_mr()``.

    Args:
        mr: the MR (its umem is an :class:`IbUmemDmabuf`).
        bcnt: bytes the fault asked for (the whole MR is mapped anyway).
        flags: ``MLX5_PF_FLAGS_*``; ``ENABLE`` enables the MKey (registration).
    Context: must not hold the buffer's reservation lock (takes it); may block (exporter map,
        fence wait, UMR).
    Returns: the number of pages mapped (``ib_umem_num_pages``).
    Raises: DmaBufError(EINVAL): the umem was revoked, or the DMA list does not fit the
        PAGE_SIZE MKey; what the exporter's map raised (-ENODEV, -EREMOTEIO, …).
    Kernel: drivers/infiniband/hw/mlx5/odp.c, pagefault_dmabuf_mr().
    """
    umem = mr.umem
    if not isinstance(umem, IbUmemDmabuf):
        raise DmaBufError(errno.EINVAL, "pagefault_dmabuf_mr on a non-dma-buf MR")
    xlt_flags = MLX5_IB_UPD_XLT_ENABLE if flags & MLX5_PF_FLAGS_ENABLE else 0
    resv = umem.resv
    resv.lock(None)
    try:
        ib_umem_dmabuf_map_pages(umem)
        try:
            mlx5r_umr_update_mr_pas(mr, xlt_flags)
        except DmaBufError:
            ib_umem_dmabuf_unmap_pages(umem)
            raise
    finally:
        resv.unlock()
    mr.faults += 1
    mr.device.machine.trace.emit("mlx5_pagefault_dmabuf_mr", device=mr.device.name,
                                 key=mr.lkey, bcnt=bcnt, npages=umem.npages)
    return umem.npages


def mlx5_ib_init_dmabuf_mr(mr: Mlx5IbMr) -> None:
    """Map a new dynamic dma-buf MR and enable its MKey — ``mlx5_ib_init_dmabuf_mr()``.

    Raises: as :func:`pagefault_dmabuf_mr`.
    Kernel: drivers/infiniband/hw/mlx5/odp.c, mlx5_ib_init_dmabuf_mr().
    """
    pagefault_dmabuf_mr(mr, mr.length, MLX5_PF_FLAGS_ENABLE)


def pagefault_mr(mr: Mlx5IbMr, io_virt: int, bcnt: int, flags: int) -> int:
    """Resolve a page fault on ``mr`` — ``pagefault_mr()`` (dma-buf MRs only in the model).

    Raises: DmaBufError(EFAULT): the range is outside the MR; DmaBufError(EOPNOTSUPP): not a
        dma-buf MR (ODP user-memory MRs are not modelled); as :func:`pagefault_dmabuf_mr`.
    Kernel: drivers/infiniband/hw/mlx5/odp.c, pagefault_mr().
    """
    if not mr.mmkey.in_bounds(io_virt, bcnt):
        raise DmaBufError(errno.EFAULT, f"fault at [{io_virt:#x}+{bcnt:#x}) outside MR "
                          f"{mr.lkey:#x}")
    if isinstance(mr.umem, IbUmemDmabuf):
        return pagefault_dmabuf_mr(mr, bcnt, flags)
    raise DmaBufError(errno.EOPNOTSUPP, "ODP user-memory MRs are not modelled")


def mlx5_ib_page_fault(dev: RdmaNic, key: int, io_virt: int, bcnt: int) -> int:
    """Handle an HCA page-fault event on ``key`` — the EQ path to ``pagefault_mr()``.

    Looks the MKey up in ``odp_mkeys`` (a key not there — a pinned MR, a deregistered one —
    cannot be faulted in: ``-EFAULT``, the QP resumes with an error), holds its use count while
    the fault runs, and calls :func:`pagefault_mr`.

    Context: must not hold any MKey hardware lock or the reservation lock; may block.
    Returns: pages mapped. Raises: DmaBufError (the fault failed: the WQE completes in error).
    Kernel: drivers/infiniband/hw/mlx5/odp.c, pagefault_single_data_segment(),
        mlx5_ib_mr_wqe_pfault_handler(), mlx5r_deref_odp_mkey().
    """
    mr = dev.odp_get(key)
    if mr is None:
        raise DmaBufError(errno.EFAULT, f"{dev.name}: page fault on MKey {key:#x}, which is not "
                          "an ODP key (pinned, deregistered or invalid)")
    try:
        return pagefault_mr(mr, io_virt, bcnt, 0)
    finally:
        dev.odp_put(mr)
