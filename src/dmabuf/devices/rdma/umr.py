"""drivers/infiniband/hw/mlx5/umr.c + the HCA's memory keys: MKeys, their MTT, and UMR updates.

An mlx5 memory region is, in hardware, a **memory key** (MKey): a context (``mkc``: PD, access
rights, start iova, length, ``free`` bit) plus a translation table. For user and dma-buf MRs
the table is an **MTT**: one 8-byte entry per page (``struct mlx5_mtt {__be64 ptag}``) holding
the DMA address of the page ORed with ``MLX5_IB_MTT_READ | MLX5_IB_MTT_WRITE``
(``MLX5_IB_MTT_PRESENT``). dma-buf MKeys always use ``PAGE_SIZE`` entries
(``mlx5_umem_dmabuf_default_pgsz``) so that any scatterlist the exporter returns after a move
fits the same MKey.

The driver changes an MKey with **UMR** work requests posted on an internal QP and waited for
(:func:`mlx5r_umr_update_mr_pas`, :func:`mlx5r_umr_revoke_mr`):

* ``MLX5_IB_UPD_XLT_ENABLE`` — write every entry from the umem's DMA addresses and enable the
  key (``free = 0``);
* ``MLX5_IB_UPD_XLT_ZAP`` — for dma-buf MRs write ``ptag = 0`` everywhere: the entries are *not
  present*, so the next HCA access raises a page fault (the ODP machinery) instead of reaching
  the old pages;
* revoke — set ``free = 1``: the key stops working altogether (deregistration).

Hardware ordering, as the model enforces it: each MKey has a **hardware lock**
(:attr:`Mlx5Mkey.hw_lock`). The HCA holds it for the whole of a transfer through the key
(translation *and* data movement); a UMR update takes it too, so a ZAP posted from an
exporter's invalidation returns only after in-flight DMA through the key finished — the
guarantee ``mlx5r_umr_post_send_wait`` gives the kernel. Lock order: the dma-buf reservation
lock, then MKey hardware locks (the HCA never takes a reservation lock while holding one; when a
transfer needs two keys it takes them in :attr:`Mlx5Mkey.order` order).

Model notes: the MTT is a ``uint64`` numpy array (8 bytes per page, as the hardware's); a
coalesced copy of the present translation is cached for speed and dropped on every update.
UMR WQEs complete instantly (no UMR QP is modelled; ``-EIO`` from a failed UMR never happens).

Kernel: drivers/infiniband/hw/mlx5/umr.c (mlx5r_umr_update_mr_pas, _mlx5r_umr_update_mr_pas,
mlx5r_umr_revoke_mr), drivers/infiniband/hw/mlx5/mlx5_ib.h (MLX5_IB_MTT_*, MLX5_IB_UPD_XLT_*,
struct mlx5_ib_mkey), drivers/infiniband/hw/mlx5/mr.c (mlx5_umem_dmabuf_default_pgsz).
"""

from __future__ import annotations

import errno
import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

from dmabuf.errors import DmaBufError
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE
from dmabuf.mm.ranges import RANGE_DTYPE, coalesce, ranges_aligned, slice_ranges, split_ranges

if TYPE_CHECKING:
    from dmabuf.devices.rdma.mr import Mlx5IbMr

__all__ = [
    "MLX5_IB_MTT_PRESENT",
    "MLX5_IB_MTT_READ",
    "MLX5_IB_MTT_WRITE",
    "MLX5_IB_UPD_XLT_ENABLE",
    "MLX5_IB_UPD_XLT_ZAP",
    "Mlx5Mkey",
    "mlx5r_umr_revoke_mr",
    "mlx5r_umr_update_mr_pas",
]

MLX5_IB_MTT_READ = 1 << 0
MLX5_IB_MTT_WRITE = 1 << 1
#: ``MLX5_IB_MTT_PRESENT``: both bits; a ZAPped entry is 0.
MLX5_IB_MTT_PRESENT = MLX5_IB_MTT_READ | MLX5_IB_MTT_WRITE

MLX5_IB_UPD_XLT_ZAP = 1 << 0
MLX5_IB_UPD_XLT_ENABLE = 1 << 1
MLX5_IB_UPD_XLT_ATOMIC = 1 << 2
MLX5_IB_UPD_XLT_ADDR = 1 << 3
MLX5_IB_UPD_XLT_PD = 1 << 4
MLX5_IB_UPD_XLT_ACCESS = 1 << 5

_PAGE_MASK = PAGE_SIZE - 1
_ADDR_MASK = np.uint64(~np.uint64(_PAGE_MASK))
_order = itertools.count(1)


class Mlx5Mkey:
    """One memory key — ``struct mlx5_ib_mkey`` + the hardware context and MTT.

    Args:
        key: the 32-bit key (``mkey_index << 8 | variant``); the MR's lkey and rkey.
        pd: the protection domain.
        iova: first byte address the key translates. length: bytes.
        access: ``IB_ACCESS_*`` rights.
        lock: the hardware lock (from the machine scheduler).
        odp: the key raises page faults for non-present entries (it is in ``odp_mkeys``).

    Attributes:
        mtt: ``uint64`` ptags, one per page from ``ALIGN_DOWN(iova)``.
        enabled: ``mkc.free == 0``.
        owners: page owners the present translation reaches (model check), or None.
        updates / zaps: UMR counters.
        order: global order for taking two keys' locks.
    """

    def __init__(self, key: int, pd: Any, iova: int, length: int, access: int, lock: Any,
                 *, odp: bool = False) -> None:
        self.key = key
        self.pd = pd
        self.iova = iova
        self.length = length
        self.access = access
        self.hw_lock = lock
        self.odp = odp
        self.base = iova & ~_PAGE_MASK
        self.npages = ((iova + length + _PAGE_MASK) & ~_PAGE_MASK) - self.base >> PAGE_SHIFT
        self.mtt = np.zeros(self.npages, dtype=np.uint64)
        self.enabled = False
        self.owners: frozenset[int] | None = None
        self.updates = 0
        self.zaps = 0
        self.order = next(_order)
        self._ranges: np.ndarray | None = None

    def __repr__(self) -> str:
        return (f"<Mlx5Mkey {self.key:#x} iova={self.iova:#x} len={self.length:#x} "
                f"{'enabled' if self.enabled else 'free'}{' odp' if self.odp else ''}>")

    @property
    def present(self) -> bool:
        """Every MTT entry is present (the cached translation is valid)."""
        return self._ranges is not None

    @property
    def mtt_nbytes(self) -> int:
        """Bytes of MTT the hardware holds for this key (8 per page)."""
        return int(self.mtt.nbytes)

    def in_bounds(self, va: int, length: int) -> bool:
        """``[va, va + length)`` lies inside the key's range.

        Model-only: the HCA's MKey bounds check is hardware.
        """
        return self.iova <= va and va + length <= self.iova + self.length

    # ------------------------------------------------------------------ hardware side
    def xlate(self, va: int, length: int) -> np.ndarray | None:
        """The DMA ranges behind ``[va, va + length)``, or None if an entry is not present.

        Context: the caller (the HCA) holds :attr:`hw_lock`; bounds already checked.

        Model-only: the HCA's MTT translation is hardware.
        """
        if length == 0:
            return np.zeros(0, dtype=RANGE_DTYPE)
        off = va - self.base
        if self._ranges is not None:
            return slice_ranges(self._ranges, off, length)
        p0 = off >> PAGE_SHIFT
        p1 = (off + length - 1) >> PAGE_SHIFT
        ent = self.mtt[p0:p1 + 1]
        if not bool(np.all((ent & np.uint64(MLX5_IB_MTT_PRESENT))
                           == np.uint64(MLX5_IB_MTT_PRESENT))):
            return None
        r = np.empty(ent.size, dtype=RANGE_DTYPE)
        r["addr"] = ent & _ADDR_MASK
        r["len"] = PAGE_SIZE
        return slice_ranges(coalesce(r), off - (p0 << PAGE_SHIFT), length)

    # ------------------------------------------------------------------ UMR (driver side)
    def _load(self, dma: np.ndarray) -> None:
        if not ranges_aligned(dma, PAGE_SIZE):
            raise DmaBufError(errno.EINVAL, f"MKey {self.key:#x}: the DMA list is not "
                              "PAGE_SIZE aligned (mlx5_umem_dmabuf_default_pgsz() is 0)")
        pages = split_ranges(dma, PAGE_SIZE)
        if pages.size != self.npages:
            raise DmaBufError(errno.EINVAL, f"MKey {self.key:#x}: {pages.size} pages of DMA "
                              f"addresses for an MTT of {self.npages}")
        self.mtt[:] = pages["addr"] | np.uint64(MLX5_IB_MTT_PRESENT)
        self._ranges = coalesce(dma)

    def _zap(self) -> None:
        self.mtt[:] = 0
        self._ranges = None


def mlx5r_umr_update_mr_pas(mr: Mlx5IbMr, flags: int) -> None:
    """Rewrite the MR's MTT through a UMR WQE and wait for it — ``mlx5r_umr_update_mr_pas()``.

    ``MLX5_IB_UPD_XLT_ZAP``: every ptag becomes 0 (dma-buf MRs) — the hardware stops using the
    pages once the WQE completes (in-flight transfers through the key finish first: the update
    takes the key's hardware lock). Otherwise the entries are written from the umem's current
    DMA addresses (``mr.umem_dma()``), and ``MLX5_IB_UPD_XLT_ENABLE`` enables the key.

    Args:
        mr: the MR (its ``mmkey`` and umem).
        flags: ``MLX5_IB_UPD_XLT_*``.
    Context: may block (waits for the key's in-flight transfers); for dma-buf MRs the caller
        holds the buffer's reservation lock.
    Raises: DmaBufError(EINVAL): the DMA list does not fit the MKey layout (not page aligned /
        wrong page count).
    Kernel: drivers/infiniband/hw/mlx5/umr.c, mlx5r_umr_update_mr_pas().
    """
    mk = mr.mmkey
    with mk.hw_lock:
        if flags & MLX5_IB_UPD_XLT_ZAP:
            mk._zap()
            mk.owners = None
            mk.zaps += 1
        else:
            dma, owners = mr.umem_dma()
            mk._load(dma)
            mk.owners = owners
            if flags & MLX5_IB_UPD_XLT_ENABLE:
                mk.enabled = True
        mk.updates += 1
    mr.device.machine.trace.emit("mlx5_umr_update_mr_pas", device=mr.device.name, key=mk.key,
                                 zap=bool(flags & MLX5_IB_UPD_XLT_ZAP),
                                 enable=bool(flags & MLX5_IB_UPD_XLT_ENABLE))


def mlx5r_umr_revoke_mr(mr: Mlx5IbMr) -> None:
    """Disable the MKey (``free = 1``) through UMR and wait — ``mlx5r_umr_revoke_mr()``.

    After it returns no HCA access through the key succeeds (in-flight ones finished first).

    Context: may block.
    Kernel: drivers/infiniband/hw/mlx5/umr.c, mlx5r_umr_revoke_mr().
    """
    mk = mr.mmkey
    with mk.hw_lock:
        mk.enabled = False
        mk._zap()
        mk.owners = None
        mk.updates += 1
    mr.device.machine.trace.emit("mlx5_umr_revoke_mr", device=mr.device.name, key=mk.key)
