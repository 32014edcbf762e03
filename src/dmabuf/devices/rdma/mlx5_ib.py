"""drivers/infiniband/hw/mlx5/main.c: the RDMA NIC driver, an ``ib_device`` on a PCI function.

:class:`RdmaNic` is the model's ConnectX-class HCA driver (mlx5_core + mlx5_ib): bound to a NIC
endpoint of a :class:`~dmabuf.devices.platform.Platform` (``platform.bind(RdmaNic, "nic0")``),
it owns

* its DMA view (:attr:`dma`, a :class:`~dmabuf.dma.device.DmaDevice` with a 64-bit mask — the
  ``struct device`` dma-bufs are attached and mapped for) and DMA engine (:attr:`engine`);
* ports on the machine's :class:`~dmabuf.devices.rdma.network.IbSubnet` (a LID each);
* protection domains (:class:`IbPd`), the MKey table and the ``odp_mkeys`` xarray, completion
  queues, queue pairs, and the transport engine (:attr:`hca`,
  :class:`~dmabuf.devices.rdma.hca.Hca`).

Driver parameters (probe options): ``odp`` — on-demand paging support (mlx5: yes; without it
dynamic dma-buf MRs fail with ``-EOPNOTSUPP`` and only pinned ones work, like efa/irdma);
``atomic`` — HCA atomics; ``ports``; ``max_umr_pages`` — None when the device has extended UMR
translation offsets (ConnectX-5+), else the MTT size limit of ``mlx5r_umr_can_load_pas``;
``ignore_invalidate`` — model a *buggy* importer whose invalidation callback does nothing (for
tests: its DMA through stale translations is caught by the DMA engine).

Removal (:meth:`RdmaNic.remove`) destroys QPs, deregisters MRs (detaching from dma-bufs), drops
CQs and PDs and unplugs the ports, as ``ib_unregister_device`` → uverbs disassociation does.

Locking: the device lock (a scheduler lock) protects the object tables; it is held only inside
table updates, never across a page fault, an exporter call or a transfer. ``odp_mkeys`` use
counts are waited for on a condition of that lock.

Kernel: drivers/infiniband/hw/mlx5/main.c (mlx5_ib_add, mlx5_ib_alloc_pd), mlx5 mr.c
(mlx5_ib_create_mkey, assign_mkey_variant, mlx5r_store_odp_mkey), odp.c
(mlx5r_deref_wait_odp_mkey), drivers/infiniband/core/device.c (ib_register_device),
drivers/net/ethernet/mellanox/mlx5/core/main.c (set_dma_caps: 64-bit DMA mask).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, ClassVar

from dmabuf.devices.base import Device
from dmabuf.devices.rdma.cq import Mlx5IbCq
from dmabuf.devices.rdma.hca import Hca
from dmabuf.devices.rdma.network import IbPort, IbSubnet
from dmabuf.devices.rdma.qp import IbQpInitAttr, IbSge, Mlx5IbQp
from dmabuf.devices.rdma.umem import UserMemory
from dmabuf.devices.rdma.umr import Mlx5Mkey
from dmabuf.errors import DmaBufError
from dmabuf.mm.phys import PAGE_SIZE
from dmabuf.pci.topology import PciDev

if TYPE_CHECKING:
    from dmabuf.devices.platform import Platform
    from dmabuf.devices.rdma.mr import Mlx5IbMr

__all__ = ["IbPd", "RdmaNic"]


class IbPd:
    """A protection domain — ``struct ib_pd`` (``mlx5_ib_alloc_pd``).

    Attributes: device, pdn, usecnt (MRs and QPs using it), deallocated.
    """

    def __init__(self, device: RdmaNic, pdn: int) -> None:
        self.device = device
        self.pdn = pdn
        self.usecnt = 0
        self.deallocated = False

    def __repr__(self) -> str:
        return f"<IbPd {self.device.name} pdn={self.pdn} usecnt={self.usecnt}>"


class RdmaNic(Device):
    """A ConnectX-like RDMA NIC driver instance (see the module docstring).

    Args:
        platform, pdev, name: as :class:`~dmabuf.devices.base.Device`.
        odp: on-demand paging (dynamic dma-buf MRs). Default True.
        atomic: HCA atomics (``IBV_ATOMIC_HCA``). Default True.
        ports: number of ports (1..2). Default 1.
        max_umr_pages: MTT entries a UMR can load, None = unlimited.
        ignore_invalidate: model a buggy importer (see the module docstring). Default False.

    Class limits (``ibv_query_device``): ``max_qp_wr`` 32768, ``max_sge`` 30,
    ``max_cqe`` 4194303, ``max_inline_data`` 256, ``max_mr_size`` 2**64 - 1.

    Raises: DmaBufError(EINVAL): bad parameters; what :class:`Device` raises.
    Kernel: drivers/infiniband/hw/mlx5/main.c, mlx5r_probe() / __mlx5_ib_add().
    """

    driver_name: ClassVar[str] = "mlx5_core"
    dma_bits: ClassVar[int] = 64
    rings: ClassVar[tuple[str, ...]] = ()
    class_codes: ClassVar[tuple[int, ...] | None] = (0x02,)

    max_qp_wr: ClassVar[int] = 32768
    max_sge: ClassVar[int] = 30
    max_cqe: ClassVar[int] = (1 << 22) - 1
    max_inline_data: ClassVar[int] = 256

    def __init__(self, platform: Platform, pdev: PciDev, *, name: str | None = None,
                 odp: bool = True, atomic: bool = True, ports: int = 1,
                 max_umr_pages: int | None = None, ignore_invalidate: bool = False) -> None:
        if isinstance(ports, bool) or not isinstance(ports, int) or not 1 <= ports <= 2:
            raise DmaBufError(errno.EINVAL, f"ports={ports!r}: a ConnectX has 1 or 2 ports")
        if max_umr_pages is not None and (isinstance(max_umr_pages, bool)
                                          or not isinstance(max_umr_pages, int)
                                          or max_umr_pages <= 0):
            raise DmaBufError(errno.EINVAL, f"max_umr_pages={max_umr_pages!r} must be > 0 or "
                              "None")
        super().__init__(platform, pdev, name=name)
        m = self.machine
        self.odp = bool(odp)
        self.atomic = bool(atomic)
        self.max_umr_pages = max_umr_pages
        self.ignore_invalidate = bool(ignore_invalidate)
        self._lock = m.sched.lock(f"{self.name}.ib_device")
        self._odp_cond = m.sched.condition(self._lock, f"{self.name}.odp_mkeys")
        self._next_pdn = 1
        self._next_cqn = 1
        self._next_qpn = 0x100
        self._next_mkey_index = 1
        self._mkey_var = 0
        self.pds: list[IbPd] = []
        self.cqs: list[Mlx5IbCq] = []
        self.qps: dict[int, Mlx5IbQp] = {}
        self._mrs: dict[int, Mlx5IbMr] = {}
        self._odp_mkeys: dict[int, Mlx5IbMr] = {}
        self.async_events: list[tuple[str, dict[str, Any]]] = []
        self.hca = Hca(self)
        subnet = IbSubnet.of(m)
        self.ports: dict[int, IbPort] = {p: subnet.add_port(self, p) for p in range(1, ports + 1)}
        m.trace.emit("ib_register_device", device=self.name, ports=ports, odp=self.odp)

    # ------------------------------------------------------------------ helpers
    def check_alive(self, what: str) -> None:
        """Raise ``-ENODEV`` when the device was removed (uverbs disassociated).

        Kernel: drivers/infiniband/core/uverbs_main.c, ib_uverbs_disassociate_ucontext() (after it,
        verbs on the device fail; the model raises ENODEV).
        """
        self._check_alive(what)

    def umr_can_load_pas(self, length: int) -> bool:
        """``mlx5r_umr_can_load_pas()``: can UMR load an MTT for ``length`` bytes?

        Kernel: drivers/infiniband/hw/mlx5/umr.c, mlx5r_umr_can_load_pas().
        """
        if self.max_umr_pages is None:
            return True
        return length < self.max_umr_pages * PAGE_SIZE

    def async_event(self, name: str, **fields: Any) -> None:
        """Record an asynchronous event (``ib_dispatch_event``), e.g. ``CQ_ERR``.

        Kernel: drivers/infiniband/core/device.c, ib_dispatch_event().
        """
        self.async_events.append((name, fields))
        self.machine.trace.emit("ib_async_event", device=self.name, event=name, **fields)

    def read_user(self, sges: list[IbSge]) -> bytes:
        """Read user memory at the SGE addresses (the provider's inline-data copy).

        Raises: DmaBufError(EFAULT): an address not mapped in the process.

        Model-only: the user-space provider (rdma-core mlx5) copies inline data; no kernel code
        runs.
        """
        mm = UserMemory.of(self.machine)
        out = bytearray()
        for s in sges:
            if s.length == 0:
                continue
            buf = mm.lookup(s.addr, s.length)
            out += buf.read(s.addr - buf.va, s.length).tobytes()
        return bytes(out)

    # ------------------------------------------------------------------ PDs
    def alloc_pd(self) -> IbPd:
        """Allocate a protection domain — ``ib_alloc_pd`` / ``mlx5_ib_alloc_pd``.

        Raises: DmaBufError(ENODEV): device removed.

        Kernel: drivers/infiniband/hw/mlx5/main.c, mlx5_ib_alloc_pd().
        """
        self._check_alive("alloc_pd")
        with self._lock:
            pd = IbPd(self, self._next_pdn)
            self._next_pdn += 1
            self.pds.append(pd)
        return pd

    def dealloc_pd(self, pd: IbPd) -> None:
        """Free a PD — ``ib_dealloc_pd_user`` via uverbs.

        Raises: DmaBufError(EBUSY): MRs or QPs still use it (``ib_destroy_usecnt``).

        Kernel: drivers/infiniband/core/verbs.c, ib_dealloc_pd_user().
        """
        with self._lock:
            if pd.usecnt:
                raise DmaBufError(errno.EBUSY, f"PD {pd.pdn} is used by {pd.usecnt} MR(s)/QP(s); "
                                  "destroy them first")
            if pd in self.pds:
                self.pds.remove(pd)
            pd.deallocated = True

    # ------------------------------------------------------------------ MKeys and MRs
    def alloc_mkey(self, pd: IbPd, iova: int, length: int, access: int, *,
                   odp: bool) -> Mlx5Mkey:
        """Create an MKey — ``mlx5_ib_create_mkey`` with ``assign_mkey_variant``.

        The key is ``index << 8 | variant`` (variant: a per-device 8-bit counter).

        Kernel: drivers/infiniband/hw/mlx5/mr.c, mlx5_ib_create_mkey() / assign_mkey_variant().
        """
        with self._lock:
            idx = self._next_mkey_index
            self._next_mkey_index += 1
            self._mkey_var = (self._mkey_var + 1) & 0xFF
            key = (idx << 8) | self._mkey_var
        lock = self.machine.sched.lock(f"{self.name}.mkey{key:#x}.hw")
        return Mlx5Mkey(key, pd, iova, length, access, lock, odp=odp)

    def register_mr(self, mr: Mlx5IbMr) -> None:
        """Make ``mr`` visible to the HCA's key lookups (the MKey exists in hardware).

        Model-only: makes the MKey visible to the model HCA's lookups (hardware state).
        """
        with self._lock:
            self._mrs[mr.lkey >> 8] = mr
            mr.pd.usecnt += 1

    def free_mkey(self, mr: Mlx5IbMr) -> None:
        """Destroy the MKey of a deregistered MR — ``destroy_mkey``.

        Kernel: drivers/infiniband/hw/mlx5/mr.c, destroy_mkey().
        """
        with self._lock:
            if self._mrs.get(mr.lkey >> 8) is mr:
                del self._mrs[mr.lkey >> 8]
                mr.pd.usecnt -= 1

    def lookup_mr(self, key: int) -> Mlx5IbMr | None:
        """The MR whose MKey is ``key`` (index and variant must match), or None (HCA lookup).

        Model-only: the HCA's MKey lookup is hardware (index and variant both checked).
        """
        mr = self._mrs.get(int(key) >> 8)
        if mr is None or mr.lkey != key or mr.deregistered:
            return None
        return mr

    @property
    def mrs(self) -> list[Mlx5IbMr]:
        """Live MRs (a copy)."""
        with self._lock:
            return list(self._mrs.values())

    def odp_store(self, mr: Mlx5IbMr) -> None:
        """``mlx5r_store_odp_mkey``: page faults on the key find ``mr``.

        Kernel: drivers/infiniband/hw/mlx5/odp.c, mlx5r_store_odp_mkey().
        """
        with self._lock:
            self._odp_mkeys[mr.lkey >> 8] = mr

    def odp_get(self, key: int) -> Mlx5IbMr | None:
        """Look an ODP key up and take a use count (``xa_load`` + ``refcount_inc``).

        Kernel: drivers/infiniband/hw/mlx5/odp.c, xa_load(&dev->odp_mkeys) + refcount_inc()
        (pagefault_single_data_segment()).
        """
        with self._lock:
            mr = self._odp_mkeys.get(int(key) >> 8)
            if mr is None or mr.lkey != key:
                return None
            mr.usecount += 1
            return mr

    def odp_put(self, mr: Mlx5IbMr) -> None:
        """Drop a use count (``mlx5r_deref_odp_mkey``) and wake a waiting deregistration.

        Kernel: drivers/infiniband/hw/mlx5/mlx5_ib.h, mlx5r_deref_odp_mkey().
        """
        with self._lock:
            mr.usecount -= 1
            if mr.usecount == 0:
                self._odp_cond.notify_all()

    def odp_erase_and_wait(self, mr: Mlx5IbMr) -> None:
        """``xa_erase(odp_mkeys)`` + ``mlx5r_deref_wait_odp_mkey``: no new fault finds the key,
        running faults finish.

        Kernel: drivers/infiniband/hw/mlx5/mr.c, xa_erase(&dev->odp_mkeys) +
        mlx5r_deref_wait_odp_mkey().
        """
        with self._lock:
            if self._odp_mkeys.get(mr.lkey >> 8) is mr:
                del self._odp_mkeys[mr.lkey >> 8]
            while mr.usecount:
                self._odp_cond.wait(None, what=f"{self.name}: page faults on MR {mr.lkey:#x}")

    # ------------------------------------------------------------------ CQs and QPs
    def create_cq(self, cqe: int) -> Mlx5IbCq:
        """Create a completion queue — ``mlx5_ib_create_cq``.

        Raises: DmaBufError(EINVAL): ``cqe`` out of range; DmaBufError(ENODEV): removed.

        Kernel: drivers/infiniband/hw/mlx5/cq.c, mlx5_ib_create_cq().
        """
        self._check_alive("create_cq")
        with self._lock:
            cqn = self._next_cqn
            self._next_cqn += 1
        cq = Mlx5IbCq(self, cqe, cqn)
        with self._lock:
            self.cqs.append(cq)
        return cq

    def destroy_cq(self, cq: Mlx5IbCq) -> None:
        """Destroy a CQ — ``mlx5_ib_destroy_cq``.

        Raises: DmaBufError(EBUSY): QPs still use it.

        Kernel: drivers/infiniband/hw/mlx5/cq.c, mlx5_ib_destroy_cq().
        """
        with self._lock:
            if cq.usecnt:
                raise DmaBufError(errno.EBUSY, f"CQ {cq.cqn} is used by {cq.usecnt} QP(s)")
            if cq in self.cqs:
                self.cqs.remove(cq)
            cq.destroyed = True

    def create_qp(self, pd: IbPd, init: IbQpInitAttr) -> Mlx5IbQp:
        """Create a queue pair in RESET — ``mlx5_ib_create_qp``.

        Raises: DmaBufError(EINVAL): missing CQs, capabilities beyond the device's;
            DmaBufError(EOPNOTSUPP): not RC; DmaBufError(ENODEV): removed.

        Kernel: drivers/infiniband/hw/mlx5/qp.c, mlx5_ib_create_qp().
        """
        self._check_alive("create_qp")
        if pd.device is not self:
            raise DmaBufError(errno.EINVAL, "the PD belongs to another device")
        for cq in (init.send_cq, init.recv_cq):
            if cq is not None and cq.device is not self:
                raise DmaBufError(errno.EINVAL, "a CQ of another device")
        with self._lock:
            qpn = self._next_qpn
            self._next_qpn += 1
        qp = Mlx5IbQp(self, pd, qpn, init)
        with self._lock:
            self.qps[qpn] = qp
            pd.usecnt += 1
        return qp

    def destroy_qp(self, qp: Mlx5IbQp) -> None:
        """Destroy a QP — ``mlx5_ib_destroy_qp`` (outstanding work is dropped).

        Kernel: drivers/infiniband/hw/mlx5/qp.c, mlx5_ib_destroy_qp().
        """
        with qp.sq_lock:
            qp.destroyed = True
            qp.sq.clear()
        with self._lock:
            if self.qps.get(qp.qp_num) is qp:
                del self.qps[qp.qp_num]
                qp.pd.usecnt -= 1
                qp.send_cq.usecnt -= 1
                qp.recv_cq.usecnt -= 1

    # ------------------------------------------------------------------ queries
    def query_device(self) -> dict[str, Any]:
        """``ibv_query_device`` (the fields the model has).

        Kernel: drivers/infiniband/hw/mlx5/main.c, mlx5_ib_query_device() (ibv_query_device fields).
        """
        return {"max_qp_wr": self.max_qp_wr, "max_sge": self.max_sge, "max_cqe": self.max_cqe,
                "max_mr_size": (1 << 64) - 1, "page_size_cap": PAGE_SIZE,
                "atomic_caps": 1 if self.atomic else 0, "phys_port_cnt": len(self.ports),
                "odp": self.odp, "vendor_id": self.pdev.vendor, "vendor_part_id": self.pdev.device}

    # ------------------------------------------------------------------ teardown
    def remove(self) -> None:
        """Unbind: destroy QPs, deregister MRs, free CQs/PDs, unplug ports; then the base.

        Context: may block (MR deregistration takes reservation locks).
        Kernel: drivers/infiniband/core/device.c, ib_unregister_device();
            uverbs disassociate_ucontext.
        """
        if self.removed:
            return
        from dmabuf.devices.rdma.mr import mlx5_ib_dereg_mr
        for qp in list(self.qps.values()):
            self.destroy_qp(qp)
        for mr in self.mrs:
            if not mr.deregistered:
                mlx5_ib_dereg_mr(mr)
        with self._lock:
            self.cqs.clear()
            for pd in self.pds:
                pd.deallocated = True
            self.pds.clear()
        subnet = IbSubnet.of(self.machine)
        for p in self.ports.values():
            subnet.remove_port(p)
        super().remove()

    def describe(self) -> dict[str, Any]:
        """Snapshot: the base's, plus ports, object counts and engine counters.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        d = super().describe()
        d.update({"ports": {n: {"lid": p.lid, "state": p.state, "tx": p.tx_bytes,
                                "rx": p.rx_bytes} for n, p in self.ports.items()},
                  "pds": len(self.pds), "cqs": len(self.cqs), "qps": len(self.qps),
                  "mrs": len(self._mrs), "odp_mkeys": len(self._odp_mkeys),
                  "hca": {"executed": self.hca.executed, "failed": self.hca.failed,
                          "page_faults": self.hca.page_faults,
                          "dma_faults": self.hca.dma_faults},
                  "odp": self.odp, "ignore_invalidate": self.ignore_invalidate})
        return d

