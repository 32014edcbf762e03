"""drivers/infiniband/hw/mlx5/mr.c: memory regions — user memory and dma-buf, four dma-buf kinds.

:class:`Mlx5IbMr` is ``struct mlx5_ib_mr``: the verbs-level MR (``ib_mr``: PD, lkey, rkey,
iova, length, access) over an MKey (:class:`~dmabuf.devices.rdma.umr.Mlx5Mkey`) and a umem.

dma-buf registration (:func:`mlx5_ib_reg_user_mr_dmabuf`), per kind (:class:`MrKind`):

* ``DYNAMIC`` — mlx5's default (``reg_user_mr_dmabuf`` with MTT access mode):
  ``-EOPNOTSUPP`` unless the device has ODP (``CONFIG_INFINIBAND_ON_DEMAND_PAGING``);
  ``-EINVAL`` unless the MTT can be loaded by UMR (``mlx5r_umr_can_load_pas``);
  ``ib_umem_dmabuf_get`` with :class:`Mlx5DmabufAttachOps` (``allow_peer2peer``,
  ``invalidate_mappings = mlx5_ib_dmabuf_invalidate_cb``); the MKey (PAGE_SIZE pages: iova and
  offset must share their page offset, ``-EINVAL``); ``mlx5r_store_odp_mkey``; then
  ``mlx5_ib_init_dmabuf_mr`` maps the buffer and enables the key. On invalidation the callback
  ZAPs the MTT (waiting for in-flight DMA through the key) and unmaps; the next access faults and
  remaps (:mod:`~dmabuf.devices.rdma.odp`).
* ``ODP`` — model variant of ``DYNAMIC`` that skips the registration-time mapping: the key is
  created enabled with every MTT entry not present, so nothing is mapped until the first access
  faults the whole MR in — the state a dynamic MR is in right after an invalidation. (The kernel
  always pre-faults dma-buf MRs at registration; ``IB_ACCESS_ON_DEMAND`` is not a dma-buf MR
  flag.)
* ``PINNED`` — ``ib_umem_dmabuf_get_pinned`` (mlx5 data-direct, efa, bnxt_re…): pinned and mapped
  at registration; the MKey is not an ODP key. No ODP support needed.
* ``PINNED_REVOCABLE`` — ``ib_umem_dmabuf_get_pinned_revocable_and_lock`` (2026): pinned, but
  the exporter may revoke it; the driver's revoke callback disables the MKey (UMR revoke), so
  DMA through it stops and further access completes in error.

User memory (:func:`mlx5_ib_reg_user_mr`): ``ib_umem_get`` + ``create_real_mr`` (MTT enabled).

Deregistration (:func:`mlx5_ib_dereg_mr`): erase the key from ``odp_mkeys`` and wait for running
page faults; *stop DMA* (``mlx5_revoke_mr``: for a non-pinned dma-buf MR under the reservation
lock, UMR-revoke the key and clear ``umem_dmabuf->private`` so a racing invalidation does
nothing — the Feb 2025 fix); release the umem (unmap, unpin, detach, put); free the key.

A **buggy importer** can be modelled: an :class:`RdmaNic` built with
``ignore_invalidate=True`` registers dynamic MRs whose invalidate callback does nothing — the
MTT keeps pointing at the old pages. Its DMA after the exporter moved the buffer reaches freed
(poisoned) or reassigned pages and is caught by the DMA engine's ownership check
(:class:`~dmabuf.errors.IommuFault`; the WQE completes in error).

Kernel: drivers/infiniband/hw/mlx5/mr.c (mlx5_ib_reg_user_mr_dmabuf, reg_user_mr_dmabuf,
mlx5_ib_dmabuf_invalidate_cb, mlx5_ib_reg_user_mr, create_real_mr, mlx5_ib_dereg_mr,
mlx5_revoke_mr), drivers/infiniband/hw/mlx5/umr.c (mlx5r_umr_can_load_pas);
spec kernel-p2p-dma.md §3.2.
"""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING, Any

import numpy as np

from dmabuf.buf.dma_buf import DmaBuf, DmaBufAttachment, DmaBufAttachOps
from dmabuf.devices.rdma.odp import mlx5_ib_init_dmabuf_mr
from dmabuf.devices.rdma.umem import IbUmem, ib_umem_get, ib_umem_release
from dmabuf.devices.rdma.umem_dmabuf import (
    IbUmemDmabuf,
    ib_umem_dmabuf_get,
    ib_umem_dmabuf_get_pinned,
    ib_umem_dmabuf_get_pinned_revocable_and_lock,
    ib_umem_dmabuf_release,
    ib_umem_dmabuf_set_revoke_locked,
    ib_umem_dmabuf_unmap_pages,
)
from dmabuf.devices.rdma.umr import (
    MLX5_IB_UPD_XLT_ENABLE,
    MLX5_IB_UPD_XLT_ZAP,
    Mlx5Mkey,
    mlx5r_umr_revoke_mr,
    mlx5r_umr_update_mr_pas,
)
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.phys import PAGE_SIZE

if TYPE_CHECKING:
    from dmabuf.devices.rdma.mlx5_ib import IbPd, RdmaNic

__all__ = [
    "Mlx5DmabufAttachOps",
    "Mlx5IbMr",
    "MrKind",
    "mlx5_ib_dereg_mr",
    "mlx5_ib_dmabuf_invalidate_cb",
    "mlx5_ib_reg_user_mr",
    "mlx5_ib_reg_user_mr_dmabuf",
]

_PAGE_MASK = PAGE_SIZE - 1


class MrKind(enum.Enum):
    """How an MR holds its memory (see the module docstring)."""

    USER = "user"
    DYNAMIC = "dynamic"
    ODP = "odp"
    PINNED = "pinned"
    PINNED_REVOCABLE = "pinned_revocable"

    @classmethod
    def parse(cls, kind: MrKind | str) -> MrKind:
        """A kind from its name (``"dynamic"``, ``"odp"``, ``"pinned"``, ``"pinned_revocable"``).

        Raises: DmaBufError(EINVAL): unknown name.

        Model-only: parses the model's MR-kind names.
        """
        if isinstance(kind, MrKind):
            return kind
        try:
            return cls(str(kind).lower())
        except ValueError:
            raise DmaBufError(errno.EINVAL, f"unknown MR kind {kind!r}; use one of "
                              f"{', '.join(k.value for k in cls if k is not cls.USER)}") from None


class Mlx5IbMr:
    """A registered memory region — ``struct mlx5_ib_mr`` with its ``struct ib_mr``.

    Attributes:
        device: the :class:`~dmabuf.devices.rdma.mlx5_ib.RdmaNic`.
        pd: protection domain. lkey / rkey: the MKey (equal on mlx5).
        iova: the address the MR starts at in work requests. length: bytes.
        access: ``IB_ACCESS_*``. kind: :class:`MrKind`.
        umem: :class:`~dmabuf.devices.rdma.umem_dmabuf.IbUmemDmabuf` or
            :class:`~dmabuf.devices.rdma.umem.IbUmem`.
        mmkey: the :class:`~dmabuf.devices.rdma.umr.Mlx5Mkey`.
        faults: page faults resolved on it. invalidations: invalidate callbacks that zapped it.
        deregistered: True after :func:`mlx5_ib_dereg_mr`.
    """

    def __init__(self, device: RdmaNic, pd: IbPd, iova: int, length: int, access: int,
                 kind: MrKind, umem: IbUmemDmabuf | IbUmem, mmkey: Mlx5Mkey) -> None:
        self.device = device
        self.pd = pd
        self.iova = iova
        self.length = length
        self.access = access
        self.kind = kind
        self.umem = umem
        self.mmkey = mmkey
        self.lkey = mmkey.key
        self.rkey = mmkey.key
        self.faults = 0
        self.invalidations = 0
        self.usecount = 0
        self.deregistered = False

    def __repr__(self) -> str:
        return (f"<Mlx5IbMr {self.kind.value} key={self.lkey:#x} iova={self.iova:#x} "
                f"len={self.length:#x}{' dereg' if self.deregistered else ''}>")

    @property
    def is_dmabuf(self) -> bool:
        """The umem is a dma-buf umem (``mr->umem->is_dmabuf``)."""
        return isinstance(self.umem, IbUmemDmabuf)

    def umem_dma(self) -> tuple[np.ndarray, frozenset[int] | None]:
        """The umem's current DMA window and the page owners it reaches (for the MTT load).

        Raises: DmaBufError(EINVAL): a dma-buf umem that is not mapped.

        Kernel: drivers/infiniband/core/umem.c, the umem's DMA-mapped sg_table (umem->sgt_append)
        used by mlx5r_umr_update_mr_pas().
        """
        u = self.umem
        if isinstance(u, IbUmemDmabuf):
            if u.dma is None:
                raise DmaBufError(errno.EINVAL, f"MR {self.lkey:#x}: the dma-buf is not mapped")
            return u.dma, u.owners
        return u.dma, frozenset((u.owner,))

    def describe_mapping(self) -> dict[str, Any]:
        """How the MR reaches its memory now: DMA ranges, bus addresses, P2P map type.

        Returns a dict with ``mapped`` (bool), ``dma`` (the DMA ranges, ``RANGE_DTYPE``, or
        None), ``bus_address`` (per range: a PCI bus address routed by a switch, not through
        the IOMMU), ``p2p_map_type`` (``"BUS_ADDR"`` / ``"THRU_HOST_BRIDGE"`` for peer MMIO,
        None for system memory), ``path`` (``"bus"``, ``"iommu"``, ``"direct"`` or
        ``"mixed"``), ``mtt_present`` and ``owners`` (page owners the mapping reaches).

        Model-only: introspection of how the MR reaches its memory.
        """
        u = self.umem
        dev = self.device.dma
        mt: str | None = None
        if isinstance(u, IbUmemDmabuf):
            dma, bus, owners, mt = u.dma, u.bus_address, u.owners, u.p2p_map_type
        else:
            dma, bus, owners = u.dma, np.zeros(u.dma.size, dtype=bool), frozenset((u.owner,))
        if dma is None or bus is None:
            return {"mapped": False, "dma": None, "bus_address": None, "p2p_map_type": None,
                    "path": None, "mtt_present": self.mmkey.present, "owners": None}
        other = "iommu" if dev.uses_dma_iommu else "direct"
        kinds = {"bus" if b else other for b in bus.tolist()}
        path = kinds.pop() if len(kinds) == 1 else "mixed"
        return {"mapped": True, "dma": dma.copy(), "bus_address": bus.copy(),
                "p2p_map_type": mt, "path": path, "mtt_present": self.mmkey.present,
                "owners": owners}


class Mlx5DmabufAttachOps(DmaBufAttachOps):
    """``mlx5_ib_dmabuf_attach_ops``: ``allow_peer2peer = 1``, invalidate = the ZAP callback."""

    def __init__(self) -> None:
        super().__init__(allow_peer2peer=True)

    def invalidate_mappings(self, attach: DmaBufAttachment) -> None:
        """``mlx5_ib_dmabuf_invalidate_cb(attach)``."""
        mlx5_ib_dmabuf_invalidate_cb(attach)


class _IgnoringAttachOps(DmaBufAttachOps):
    """A buggy importer: claims an invalidate callback, does nothing in it (model only)."""

    def __init__(self) -> None:
        super().__init__(allow_peer2peer=True)

    def invalidate_mappings(self, attach: DmaBufAttachment) -> None:
        """Ignore the invalidation (the bug being modelled): the MTT keeps the old pages."""
        umem: IbUmemDmabuf = attach.importer_priv
        umem.ibdev.machine.trace.emit("rdma_invalidate_ignored", device=umem.ibdev.name,
                                      ino=umem.dmabuf.ino)


def mlx5_ib_dmabuf_invalidate_cb(attach: DmaBufAttachment) -> None:
    """The exporter moves the buffer: ZAP the MTT, then unmap — ``mlx5_ib_dmabuf_invalidate_cb()``.

    Returns at once when the umem is not mapped or the MR is being destroyed (``private`` is
    NULL). The ZAP waits for in-flight DMA through the key (its hardware lock); after it no HCA
    access reaches the old pages — the next one faults and remaps.

    Context: the exporter holds the buffer's reservation lock (asserted); may block briefly.
    Kernel: drivers/infiniband/hw/mlx5/mr.c, mlx5_ib_dmabuf_invalidate_cb().
    """
    umem: IbUmemDmabuf = attach.importer_priv
    umem.resv.assert_held()
    mr: Mlx5IbMr | None = umem.private
    if umem.sgt is None or mr is None:
        return
    mlx5r_umr_update_mr_pas(mr, MLX5_IB_UPD_XLT_ZAP)
    ib_umem_dmabuf_unmap_pages(umem)
    mr.invalidations += 1


def _check_reg_args(offset: int, length: int, virt_addr: int) -> None:
    for v, nm in ((offset, "offset"), (length, "length"), (virt_addr, "iova")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{nm} must be an int, not {type(v).__name__}")
        if not 0 <= int(v) < 1 << 64:
            raise DmaBufError(errno.EINVAL, f"{nm} {int(v):#x} is not a 64-bit unsigned value")


def _new_mkey(dev: RdmaNic, pd: IbPd, iova: int, length: int, access: int, umem_address: int,
              *, odp: bool) -> Mlx5Mkey:
    # mlx5_umem_dmabuf_default_pgsz(): iova and umem->address must share the page offset.
    if (iova ^ umem_address) & _PAGE_MASK:
        raise DmaBufError(errno.EINVAL, f"iova {iova:#x} and offset {umem_address:#x} have "
                          "different page offsets: the PAGE_SIZE MKey cannot map it")
    if iova + length > (1 << 64) - 1:
        raise DmaBufError(errno.EINVAL, f"iova {iova:#x} + length {length:#x} overflows")
    return dev.alloc_mkey(pd, iova, length, access, odp=odp)


def mlx5_ib_reg_user_mr_dmabuf(pd: IbPd, offset: int, length: int, virt_addr: int,
                               fd: int | DmaBuf, access_flags: int,
                               kind: MrKind | str = MrKind.DYNAMIC) -> Mlx5IbMr:
    """Register a dma-buf window as an MR — ``mlx5_ib_reg_user_mr_dmabuf()``.

    Args:
        pd: the protection domain (its device registers).
        offset: window start in the buffer. length: bytes. virt_addr: the MR's iova.
        fd: dma-buf fd (current process) or a :class:`DmaBuf`.
        access_flags: ``IB_ACCESS_*`` (validated by the uverbs layer before this call).
        kind: :class:`MrKind` (see the module docstring).
    Context: must not hold the buffer's reservation lock; may block (attach, pin, map, fence
        wait, UMR).
    Returns: the :class:`Mlx5IbMr`.
    Raises:
        DmaBufError(EOPNOTSUPP): dynamic/ODP kinds on a device without ODP.
        DmaBufError(EINVAL): the MTT cannot be loaded by UMR (too long for a device without
            extended translation offsets); iova/offset page offsets differ; overflow; a window
            past the end of the buffer; zero length; a revoked umem.
        DmaBufError(...): from the exporter (attach refused, pin refused / -ENOMEM, map
            -EREMOTEIO when there is no P2P path and the exporter cannot stage, -ENODEV).
    Kernel: drivers/infiniband/hw/mlx5/mr.c, mlx5_ib_reg_user_mr_dmabuf(), reg_user_mr_dmabuf().
    """
    dev = pd.device
    k = MrKind.parse(kind)
    if k is MrKind.USER:
        raise DmaBufError(errno.EINVAL, "kind 'user' is for mlx5_ib_reg_user_mr")
    _check_reg_args(offset, length, virt_addr)
    offset, length, virt_addr = int(offset), int(length), int(virt_addr)
    dev.check_alive("reg_user_mr_dmabuf")
    if k in (MrKind.DYNAMIC, MrKind.ODP) and not dev.odp:
        raise DmaBufError(errno.EOPNOTSUPP, f"{dev.name}: dynamic dma-buf MRs need on-demand "
                          "paging, which this device lacks; register a pinned one")
    if not dev.umr_can_load_pas(length):
        raise DmaBufError(errno.EINVAL, f"{dev.name}: an MR of {length:#x} bytes does not fit "
                          "a UMR-updatable MTT (mlx5r_umr_can_load_pas)")
    if k in (MrKind.DYNAMIC, MrKind.ODP):
        ops: DmaBufAttachOps = _IgnoringAttachOps() if dev.ignore_invalidate \
            else Mlx5DmabufAttachOps()
        umem = ib_umem_dmabuf_get(dev, offset, length, fd, access_flags, ops)
        mr = _register_umem_mr(pd, virt_addr, length, access_flags, k, umem, odp=True)
        dev.odp_store(mr)
        try:
            if k is MrKind.DYNAMIC:
                mlx5_ib_init_dmabuf_mr(mr)
            else:
                with mr.mmkey.hw_lock:  # created enabled, every entry not present
                    mr.mmkey.enabled = True
        except BaseException:
            mlx5_ib_dereg_mr(mr)
            raise
        return mr
    if k is MrKind.PINNED:
        umem = ib_umem_dmabuf_get_pinned(dev, offset, length, fd, access_flags)
        mr = _register_umem_mr(pd, virt_addr, length, access_flags, k, umem, odp=False)
        try:
            mlx5r_umr_update_mr_pas(mr, MLX5_IB_UPD_XLT_ENABLE)
        except BaseException:
            mlx5_ib_dereg_mr(mr)
            raise
        return mr
    # PINNED_REVOCABLE: returns with the reservation lock held
    umem = ib_umem_dmabuf_get_pinned_revocable_and_lock(dev, offset, length, fd, access_flags)
    resv = umem.resv
    try:
        mk = _new_mkey(dev, pd, virt_addr, length, access_flags, umem.address, odp=False)
        mr = Mlx5IbMr(dev, pd, virt_addr, length, access_flags, k, umem, mk)
        umem.private = mr
        mlx5r_umr_update_mr_pas(mr, MLX5_IB_UPD_XLT_ENABLE)
        ib_umem_dmabuf_set_revoke_locked(umem, _pinned_revoke_cb, mr)
        dev.register_mr(mr)
    except BaseException:
        resv.unlock()
        ib_umem_dmabuf_release(umem)
        raise
    resv.unlock()
    return mr


def _register_umem_mr(pd: IbPd, virt_addr: int, length: int, access_flags: int, k: MrKind,
                      umem: IbUmemDmabuf, *, odp: bool) -> Mlx5IbMr:
    """The MKey + MR of a dma-buf umem, registered with the device (``reg_user_mr_dmabuf``'s
    common part); a failing MKey releases the umem."""
    dev = pd.device
    try:
        mk = _new_mkey(dev, pd, virt_addr, length, access_flags, umem.address, odp=odp)
    except BaseException:
        ib_umem_dmabuf_release(umem)
        raise
    mr = Mlx5IbMr(dev, pd, virt_addr, length, access_flags, k, umem, mk)
    umem.private = mr
    dev.register_mr(mr)
    return mr


def _pinned_revoke_cb(mr: Mlx5IbMr) -> None:
    """The driver's ``pinned_revoke``: stop the hardware — UMR-revoke the MKey (resv held)."""
    mlx5r_umr_revoke_mr(mr)
    mr.invalidations += 1


def mlx5_ib_reg_user_mr(pd: IbPd, start: int, length: int, iova: int,
                        access_flags: int) -> Mlx5IbMr:
    """Register user memory — ``mlx5_ib_reg_user_mr()`` → ``create_real_mr()``.

    Args:
        pd: protection domain. start: user virtual address. length: bytes. iova: the MR's
            address in work requests (``hca_va``). access_flags: ``IB_ACCESS_*``.
    Context: may block.
    Returns: the MR (MTT loaded, key enabled).
    Raises: as :func:`~dmabuf.devices.rdma.umem.ib_umem_get`.
    Kernel: drivers/infiniband/hw/mlx5/mr.c, mlx5_ib_reg_user_mr(), create_real_mr().
    """
    dev = pd.device
    dev.check_alive("reg_user_mr")
    _check_reg_args(start, length, iova)
    umem = ib_umem_get(dev, int(start), int(length), access_flags)
    try:
        mk = _new_mkey(dev, pd, int(iova), int(length), access_flags, int(start), odp=False)
    except BaseException:
        ib_umem_release(umem)
        raise
    mr = Mlx5IbMr(dev, pd, int(iova), int(length), access_flags, MrKind.USER, umem, mk)
    dev.register_mr(mr)
    mlx5r_umr_update_mr_pas(mr, MLX5_IB_UPD_XLT_ENABLE)
    return mr


def mlx5_ib_dereg_mr(mr: Mlx5IbMr) -> None:
    """Destroy an MR: stop DMA, release the umem, free the key — ``mlx5_ib_dereg_mr()``.

    Context: must not hold the buffer's reservation lock; may block (waits for running page
        faults, takes the lock, waits in-flight DMA through the key).
    Raises: ContractViolation("mlx5_ib_dereg_mr"): deregistered twice (the kernel would use
        freed memory; pyverbs' idempotent close is the facade's job).
    Kernel: drivers/infiniband/hw/mlx5/mr.c, mlx5_ib_dereg_mr(), mlx5_revoke_mr().
    """
    if mr.deregistered:
        raise ContractViolation("mlx5_ib_dereg_mr", f"{mr!r} deregistered twice")
    mr.deregistered = True
    dev = mr.device
    # xa_erase(odp_mkeys) + mlx5r_deref_wait_odp_mkey(): no new fault finds it, running ones end
    dev.odp_erase_and_wait(mr)
    umem = mr.umem
    # Stop DMA (mlx5_revoke_mr). A non-pinned dma-buf MR takes the lock so a concurrent
    # invalidation sees private == NULL and does nothing.
    if isinstance(umem, IbUmemDmabuf) and not umem.pinned and not umem.revoked:
        resv = umem.resv
        resv.lock(None)
        try:
            mlx5r_umr_revoke_mr(mr)
            umem.private = None
        finally:
            resv.unlock()
    else:
        mlx5r_umr_revoke_mr(mr)
    if isinstance(umem, IbUmemDmabuf):
        ib_umem_dmabuf_release(umem)
    else:
        ib_umem_release(umem)
    dev.free_mkey(mr)
    dev.machine.trace.emit("mlx5_ib_dereg_mr", device=dev.name, key=mr.lkey,
                           kind=mr.kind.value)
