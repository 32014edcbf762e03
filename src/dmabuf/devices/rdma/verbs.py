"""A pure-Python "verbs" facade with the shapes of rdma-core's pyverbs, over the model's NIC.

User code written against pyverbs reads almost unchanged::

    from dmabuf.devices.rdma import verbs as v
    ctx = v.Context(platform, "nic0")              # pyverbs: Context(name="mlx5_0")
    pd = v.PD(ctx)
    mr = v.DmaBufMR(pd, 1 << 20, v.IBV_ACCESS_LOCAL_WRITE | v.IBV_ACCESS_REMOTE_WRITE,
                    dmabuf=fd)                     # ibv_reg_dmabuf_mr(pd, 0, len, 0, fd, access)
    cq = v.CQ(ctx, 16)
    qp = v.QP(pd, v.QPInitAttr(qp_type=v.IBV_QPT_RC, scq=cq, rcq=cq, cap=v.QPCap(16, 16)))
    ...                                            # to_init / to_rtr / to_rts, post_send, poll

Objects: :class:`Context`, :class:`PD`, :class:`MR` (host memory, with ``buf``/``write``/``read``),
:class:`DmaBuf` (a GPU/heap dma-buf with an fd, as ``pyverbs.dmabuf.DmaBuf``), :class:`DmaBufMR`
(``ibv_reg_dmabuf_mr``; allocates its own :class:`DmaBuf` when none is given, like pyverbs),
:class:`CQ` (``poll``), :class:`QP` (``to_init``/``to_rtr``/``to_rts``/``modify``/``query``,
``post_send``/``post_recv``), :class:`QPInitAttr`, :class:`QPCap`, :class:`QPAttr`,
:class:`AHAttr`, :class:`SGE`, :class:`SendWR` (``set_wr_rdma``, ``set_wr_atomic``),
:class:`RecvWR`, :data:`WC`; helpers :func:`poll_cq` (as rdma-core ``tests/utils.poll_cq``) and
:func:`connect_rc` (both sides of an RC connection to RTS). Constants ``IBV_ACCESS_*``,
``IBV_WR_*``, ``IBV_WC_*``, ``IBV_QPS_*``, ``IBV_QPT_*``, ``IBV_QP_*``, ``IBV_SEND_*``.

Errors are :class:`PyverbsRDMAError` (a :class:`~dmabuf.errors.DmaBufError`, so ``errno`` and
``error_code`` both hold the errno; ``args[0]`` is pyverbs' message text, e.g.
``"Failed to register a dma-buf MR. ... Errno: 22, Invalid argument"``). ``close()`` is
idempotent everywhere and closing a parent (PD, Context) closes its children first, as in
pyverbs. Every object is a context manager.

Model additions (keyword-only, not in pyverbs): ``Context(..., **nic_params)`` binds the NIC
driver with those parameters if nothing is bound yet; ``DmaBufMR(..., kind=...)`` picks the MR
flavour (``"dynamic"`` — mlx5's default, ``"odp"``, ``"pinned"``, ``"pinned_revocable"``) and
``iova=`` overrides pyverbs' ``iova = offset``; ``DmaBuf(..., heap="system")`` allocates from a
dma-buf heap instead of a GPU. Differences from pyverbs: ``QPInitAttr`` defaults to RC (pyverbs:
UD, which the model does not carry), and work requests execute when posted (the model's HCA runs
in the posting thread), so completions are there when ``post_send`` returns.

Kernel/user space: rdma-core pyverbs (pyverbs/device.pyx, pd.pyx, mr.pyx, dmabuf.pyx, cq.pyx,
qp.pyx, wr.pyx, pyverbs_error.py, tests/utils.py poll_cq), libibverbs/verbs.h.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Any

from dmabuf.buf.dma_buf import DmaBuf as KDmaBuf
from dmabuf.buf.dma_buf import Vma
from dmabuf.buf.file import current_process
from dmabuf.buf.heaps import dma_heap_find, system_heap_create
from dmabuf.devices.platform import Platform
from dmabuf.devices.rdma.cq import IbWc, Mlx5IbCq
from dmabuf.devices.rdma.ib_verbs import (
    IbAccess,
    IbQpAttrMask,
    IbQpState,
    IbQpType,
    IbSendFlags,
    IbWcFlags,
    IbWcOpcode,
    IbWcStatus,
    IbWrOpcode,
    wc_status_str,
)
from dmabuf.devices.rdma.mlx5_ib import IbPd, RdmaNic
from dmabuf.devices.rdma.mr import Mlx5IbMr, MrKind
from dmabuf.devices.rdma.qp import (
    IbAhAttr,
    IbQpAttr,
    IbQpCap,
    IbQpInitAttr,
    IbRecvWr,
    IbSendWr,
    IbSge,
    Mlx5IbQp,
)
from dmabuf.devices.rdma.umem import UserBuffer, UserMemory
from dmabuf.devices.rdma.uverbs import (
    ib_uverbs_dereg_mr,
    ib_uverbs_reg_dmabuf_mr,
    ib_uverbs_reg_mr,
)
from dmabuf.errors import DmaBufError
from dmabuf.mm.phys import PAGE_SIZE

__all__ = [
    "CQ", "MR", "PD", "QP", "SGE", "WC", "AHAttr", "Context", "DeviceAttr", "DmaBuf",
    "DmaBufMR", "PortAttr", "PyverbsError", "PyverbsRDMAError", "PyverbsUserError", "QPAttr",
    "QPCap", "QPInitAttr", "RecvWR", "SendWR", "connect_rc", "poll_cq", "wc_status_to_str",
]

# ---------------------------------------------------------------------------------- constants
IBV_ACCESS_LOCAL_WRITE = int(IbAccess.LOCAL_WRITE)
IBV_ACCESS_REMOTE_WRITE = int(IbAccess.REMOTE_WRITE)
IBV_ACCESS_REMOTE_READ = int(IbAccess.REMOTE_READ)
IBV_ACCESS_REMOTE_ATOMIC = int(IbAccess.REMOTE_ATOMIC)
IBV_ACCESS_MW_BIND = int(IbAccess.MW_BIND)
IBV_ACCESS_ZERO_BASED = int(IbAccess.ZERO_BASED)
IBV_ACCESS_ON_DEMAND = int(IbAccess.ON_DEMAND)
IBV_ACCESS_HUGETLB = int(IbAccess.HUGETLB)
IBV_ACCESS_FLUSH_GLOBAL = int(IbAccess.FLUSH_GLOBAL)
IBV_ACCESS_FLUSH_PERSISTENT = int(IbAccess.FLUSH_PERSISTENT)
IBV_ACCESS_RELAXED_ORDERING = int(IbAccess.RELAXED_ORDERING)

IBV_WR_RDMA_WRITE = int(IbWrOpcode.RDMA_WRITE)
IBV_WR_RDMA_WRITE_WITH_IMM = int(IbWrOpcode.RDMA_WRITE_WITH_IMM)
IBV_WR_SEND = int(IbWrOpcode.SEND)
IBV_WR_SEND_WITH_IMM = int(IbWrOpcode.SEND_WITH_IMM)
IBV_WR_RDMA_READ = int(IbWrOpcode.RDMA_READ)
IBV_WR_ATOMIC_CMP_AND_SWP = int(IbWrOpcode.ATOMIC_CMP_AND_SWP)
IBV_WR_ATOMIC_FETCH_AND_ADD = int(IbWrOpcode.ATOMIC_FETCH_AND_ADD)

IBV_SEND_FENCE = int(IbSendFlags.FENCE)
IBV_SEND_SIGNALED = int(IbSendFlags.SIGNALED)
IBV_SEND_SOLICITED = int(IbSendFlags.SOLICITED)
IBV_SEND_INLINE = int(IbSendFlags.INLINE)

IBV_WC_SEND = int(IbWcOpcode.SEND)
IBV_WC_RDMA_WRITE = int(IbWcOpcode.RDMA_WRITE)
IBV_WC_RDMA_READ = int(IbWcOpcode.RDMA_READ)
IBV_WC_COMP_SWAP = int(IbWcOpcode.COMP_SWAP)
IBV_WC_FETCH_ADD = int(IbWcOpcode.FETCH_ADD)
IBV_WC_RECV = int(IbWcOpcode.RECV)
IBV_WC_RECV_RDMA_WITH_IMM = int(IbWcOpcode.RECV_RDMA_WITH_IMM)
IBV_WC_WITH_IMM = int(IbWcFlags.WITH_IMM)

IBV_WC_SUCCESS = int(IbWcStatus.SUCCESS)
IBV_WC_LOC_LEN_ERR = int(IbWcStatus.LOC_LEN_ERR)
IBV_WC_LOC_QP_OP_ERR = int(IbWcStatus.LOC_QP_OP_ERR)
IBV_WC_LOC_PROT_ERR = int(IbWcStatus.LOC_PROT_ERR)
IBV_WC_WR_FLUSH_ERR = int(IbWcStatus.WR_FLUSH_ERR)
IBV_WC_LOC_ACCESS_ERR = int(IbWcStatus.LOC_ACCESS_ERR)
IBV_WC_REM_INV_REQ_ERR = int(IbWcStatus.REM_INV_REQ_ERR)
IBV_WC_REM_ACCESS_ERR = int(IbWcStatus.REM_ACCESS_ERR)
IBV_WC_REM_OP_ERR = int(IbWcStatus.REM_OP_ERR)
IBV_WC_RETRY_EXC_ERR = int(IbWcStatus.RETRY_EXC_ERR)
IBV_WC_RNR_RETRY_EXC_ERR = int(IbWcStatus.RNR_RETRY_EXC_ERR)
IBV_WC_GENERAL_ERR = int(IbWcStatus.GENERAL_ERR)

IBV_QPT_RC = int(IbQpType.RC)
IBV_QPT_UC = int(IbQpType.UC)
IBV_QPT_UD = int(IbQpType.UD)

IBV_QPS_RESET = int(IbQpState.RESET)
IBV_QPS_INIT = int(IbQpState.INIT)
IBV_QPS_RTR = int(IbQpState.RTR)
IBV_QPS_RTS = int(IbQpState.RTS)
IBV_QPS_SQD = int(IbQpState.SQD)
IBV_QPS_SQE = int(IbQpState.SQE)
IBV_QPS_ERR = int(IbQpState.ERR)

IBV_QP_STATE = int(IbQpAttrMask.STATE)
IBV_QP_CUR_STATE = int(IbQpAttrMask.CUR_STATE)
IBV_QP_ACCESS_FLAGS = int(IbQpAttrMask.ACCESS_FLAGS)
IBV_QP_PKEY_INDEX = int(IbQpAttrMask.PKEY_INDEX)
IBV_QP_PORT = int(IbQpAttrMask.PORT)
IBV_QP_QKEY = int(IbQpAttrMask.QKEY)
IBV_QP_AV = int(IbQpAttrMask.AV)
IBV_QP_PATH_MTU = int(IbQpAttrMask.PATH_MTU)
IBV_QP_TIMEOUT = int(IbQpAttrMask.TIMEOUT)
IBV_QP_RETRY_CNT = int(IbQpAttrMask.RETRY_CNT)
IBV_QP_RNR_RETRY = int(IbQpAttrMask.RNR_RETRY)
IBV_QP_RQ_PSN = int(IbQpAttrMask.RQ_PSN)
IBV_QP_MAX_QP_RD_ATOMIC = int(IbQpAttrMask.MAX_QP_RD_ATOMIC)
IBV_QP_MIN_RNR_TIMER = int(IbQpAttrMask.MIN_RNR_TIMER)
IBV_QP_SQ_PSN = int(IbQpAttrMask.SQ_PSN)
IBV_QP_MAX_DEST_RD_ATOMIC = int(IbQpAttrMask.MAX_DEST_RD_ATOMIC)
IBV_QP_DEST_QPN = int(IbQpAttrMask.DEST_QPN)

IBV_ATOMIC_NONE = 0
IBV_ATOMIC_HCA = 1
IBV_MTU_4096 = 5
IBV_PORT_ACTIVE = 4
IBV_PORT_DOWN = 1

#: pyverbs ``get_qp_mask`` for RC: the attributes each transition sets.
RC_INIT_MASK = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS
RC_RTR_MASK = (IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN
               | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)
RC_RTS_MASK = (IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY
               | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC)


# ---------------------------------------------------------------------------------- errors
class PyverbsError(DmaBufError):
    """Base of the facade's errors — ``pyverbs.pyverbs_error.PyverbsError``."""

    def __init__(self, msg: str, error_code: int = errno.EINVAL) -> None:
        code = abs(int(error_code)) or errno.EINVAL
        text = f"{msg}. Errno: {code}, {os.strerror(code)}"
        super().__init__(code, text)
        self.args = (text,)
        self.error_code = code
        self._msg = msg

    def __reduce__(self) -> tuple[type, tuple[str, int]]:  # type: ignore[override]
        return (type(self), (self._msg, self.error_code))


class PyverbsRDMAError(PyverbsError):
    """A verb failed with an errno — ``pyverbs.pyverbs_error.PyverbsRDMAError``."""


class PyverbsUserError(PyverbsError):
    """The caller passed something invalid — ``PyverbsUserError``."""


def _wrap(msg: str, e: DmaBufError) -> PyverbsRDMAError:
    err = PyverbsRDMAError(f"{msg}: {e.strerror}", e.errno or errno.EINVAL)
    err.__cause__ = e
    return err


def wc_status_to_str(status: int) -> str:
    """``ibv_wc_status_str()``.

    Model-only: mirrors rdma-core ibv_wc_status_str() (user space).
    """
    return wc_status_str(status)


# ---------------------------------------------------------------------------------- base
class _Object:
    """Common close/children/context-manager behaviour of pyverbs objects.

    A parent keeps its children alive until they are closed (pyverbs keeps weak references and
    closes an object when it is garbage collected; the model keeps strong ones so that an
    object a caller dropped is still released, deterministically, when its parent closes).
    """

    def __init__(self) -> None:
        self._closed = False
        self._children: dict[int, _Object] = {}
        self._parents: list[_Object] = []

    def _add_child(self, obj: _Object) -> None:
        self._children[id(obj)] = obj
        obj._parents.append(self)

    def close(self) -> None:
        """Release the resource (children first). Idempotent."""
        if self._closed:
            return
        for child in list(self._children.values()):
            child.close()
        self._closed = True
        for parent in self._parents:
            parent._children.pop(id(self), None)
        self._parents.clear()
        self._destroy()

    def _destroy(self) -> None:
        """Release this object's own resource."""

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise PyverbsUserError(f"{type(self).__name__}.{what}: the object is closed",
                                   errno.EINVAL)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class DeviceAttr:
    """``ibv_device_attr`` (the fields the model has)."""

    max_qp_wr: int
    max_sge: int
    max_cqe: int
    max_mr_size: int
    page_size_cap: int
    atomic_caps: int
    phys_port_cnt: int
    vendor_id: int
    vendor_part_id: int


@dataclass
class PortAttr:
    """``ibv_port_attr`` (the fields the model has)."""

    state: int
    lid: int
    active_mtu: int = IBV_MTU_4096
    max_mtu: int = IBV_MTU_4096


class Context(_Object):
    """An opened RDMA device — ``pyverbs.device.Context`` (``ibv_open_device``).

    Args:
        platform: the :class:`~dmabuf.devices.platform.Platform`.
        name: the NIC's name or BDF (``"nic0"``). If no driver is bound to it yet the
            :class:`~dmabuf.devices.rdma.mlx5_ib.RdmaNic` driver is bound with ``nic_params``.
        **nic_params: driver parameters for that bind (``odp``, ``atomic``, …).
    Raises: PyverbsRDMAError(ENODEV): no such function, or a non-RDMA driver is bound to it;
        PyverbsRDMAError(EBUSY): ``nic_params`` differ from those of the bound driver.
    """

    def __init__(self, platform: Platform, name: str = "nic0", **nic_params: Any) -> None:
        super().__init__()
        if not isinstance(platform, Platform):
            raise PyverbsUserError("Context needs the Platform the NIC lives on", errno.EINVAL)
        bound = True
        try:
            try:
                dev: Any = platform.device(name)
            except DmaBufError as e:
                if e.errno != errno.ENODEV or platform.pci_dev(name) is None:
                    raise
                dev = platform.bind(RdmaNic, name, **nic_params)
                bound = False
        except DmaBufError as e:
            raise _wrap(f"Failed to open device {name}", e) from e
        if not isinstance(dev, RdmaNic):
            raise PyverbsRDMAError(f"Failed to open device {name}: {dev.driver_name} is bound, "
                                   "not an RDMA driver", errno.ENODEV)
        if bound and nic_params:
            current = {"odp": dev.odp, "atomic": dev.atomic, "ports": len(dev.ports),
                       "max_umr_pages": dev.max_umr_pages,
                       "ignore_invalidate": dev.ignore_invalidate}
            differ = {k: val for k, val in nic_params.items() if current.get(k, object()) != val}
            if differ:
                raise PyverbsRDMAError(f"Failed to open device {name}: the driver is already "
                                       f"bound with other parameters ({differ}); unbind it "
                                       "first", errno.EBUSY)
        self.platform = platform
        self.device: RdmaNic = dev
        self.name = dev.name

    def __repr__(self) -> str:
        return f"<Context {self.name}>"

    def query_device(self) -> DeviceAttr:
        """``ibv_query_device``.

        Model-only: mirrors rdma-core pyverbs (user space ibv_query_device()); the kernel side is
        ib_uverbs_query_device().
        """
        self._check_open("query_device")
        q = self.device.query_device()
        return DeviceAttr(q["max_qp_wr"], q["max_sge"], q["max_cqe"], q["max_mr_size"],
                          q["page_size_cap"], q["atomic_caps"], q["phys_port_cnt"],
                          q["vendor_id"], q["vendor_part_id"])

    def query_port(self, port_num: int = 1) -> PortAttr:
        """``ibv_query_port``. Raises PyverbsRDMAError(EINVAL): no such port.

        Model-only: mirrors rdma-core pyverbs (user space ibv_query_port()); the kernel side is
        ib_uverbs_query_port().
        """
        self._check_open("query_port")
        p = self.device.ports.get(port_num)
        if p is None:
            raise PyverbsRDMAError(f"Failed to query port {port_num}", errno.EINVAL)
        return PortAttr(p.state, p.lid)


class PD(_Object):
    """A protection domain — ``pyverbs.pd.PD`` (``ibv_alloc_pd``)."""

    def __init__(self, ctx: Context) -> None:
        super().__init__()
        ctx._check_open("PD")
        try:
            self.pd: IbPd = ctx.device.alloc_pd()
        except DmaBufError as e:
            raise _wrap("Failed to allocate PD", e) from e
        self.ctx = ctx
        ctx._add_child(self)

    def _destroy(self) -> None:
        try:
            self.ctx.device.dealloc_pd(self.pd)
        except DmaBufError as e:
            raise _wrap("Failed to dealloc PD", e) from e


# ---------------------------------------------------------------------------------- MRs
class _MrKeys(_Object):
    """The keys every memory region shows (pyverbs' ``MR.lkey``/``MR.rkey``).

    Model-only: the facade's shared part of ``MR`` and ``DmaBufMR``; ``self.mr`` is the driver MR.
    """

    mr: Mlx5IbMr

    @property
    def lkey(self) -> int:
        """``mr->lkey``."""
        self._check_open("lkey")
        return self.mr.lkey

    @property
    def rkey(self) -> int:
        """``mr->rkey``."""
        self._check_open("rkey")
        return self.mr.rkey


class MR(_MrKeys):
    """A memory region over freshly allocated host memory — ``pyverbs.mr.MR``.

    Args:
        pd: the PD. length: bytes (> 0). access: ``IBV_ACCESS_*``.
        address: register this user address instead of allocating (must be mapped).
        iova: the MR's address in work requests (default: the buffer address, as
            ``ibv_reg_mr``).
    Attributes: buf (user virtual address), length, lkey, rkey, mr (the driver MR).
    Raises: PyverbsRDMAError: registration failed (errno of the kernel).
    """

    def __init__(self, pd: PD, length: int, access: int, address: int | None = None, *,
                 iova: int | None = None) -> None:
        super().__init__()
        pd._check_open("MR")
        self.pd = pd
        self._buffer: UserBuffer | None = None
        dev = pd.ctx.device
        if address is None:
            try:
                node = dev.platform.numa_node_of(dev.pdev)
                self._buffer = UserMemory.of(dev.machine).mmap(
                    dev.phys, dev.platform.ram[node], max(int(length), 1), "pyverbs MR buffer")
            except DmaBufError as e:
                raise _wrap("Failed to allocate MR buffer", e) from e
            address = self._buffer.va
        self.buf = int(address)
        self.length = int(length)
        try:
            self.mr: Mlx5IbMr = ib_uverbs_reg_mr(pd.pd, self.buf, self.length,
                                                  self.buf if iova is None else iova, access)
        except DmaBufError as e:
            if self._buffer is not None:
                self._buffer.munmap()
            raise _wrap(f"Failed to register a MR. length: {length}, access flags: {access}",
                        e) from e
        pd._add_child(self)

    def _user(self) -> UserBuffer:
        return UserMemory.of(self.pd.ctx.device.machine).lookup(self.buf, self.length)

    def write(self, data: str | bytes | Any, length: int, offset: int = 0) -> None:
        """Copy ``length`` bytes of ``data`` to ``buf + offset`` (a CPU store).

        Model-only: a user-space CPU store.
        """
        self._check_open("write")
        raw = data.encode() if isinstance(data, str) else bytes(data)
        ub = self._user()
        ub.write(self.buf - ub.va + offset, raw[:length])

    def read(self, length: int, offset: int = 0) -> bytes:
        """``length`` bytes from ``buf + offset`` (a CPU load).

        Model-only: a user-space CPU load.
        """
        self._check_open("read")
        ub = self._user()
        return ub.read(self.buf - ub.va + offset, length).tobytes()

    def _destroy(self) -> None:
        ib_uverbs_dereg_mr(self.mr)
        if self._buffer is not None:
            self._buffer.munmap()


class DmaBuf(_Object):
    """A dma-buf allocated from a GPU (or a heap) with an fd — ``pyverbs.dmabuf.DmaBuf``.

    Args:
        size: bytes. gpu: GPU unit (``"gpu<gpu>"`` on the platform). gtt: allocate in GTT
            (system memory) instead of VRAM.
        platform: where the GPU is (keyword; pyverbs opens ``/dev/dri/renderD<128+gpu>``).
        heap: model addition — allocate from this dma-buf heap (``"system"``) instead of a GPU.
    Attributes: fd (in the current process), size, map_offset (0), dmabuf (the kernel object,
        no reference of its own), bo (the GPU buffer object, or None).
    Raises: PyverbsRDMAError(ENOENT): no such GPU/heap (pyverbs: renderD not present);
        PyverbsRDMAError(ENOMEM...): allocation failed.
    """

    def __init__(self, size: int, gpu: int = 0, gtt: int = 0, *, platform: Platform,
                 heap: str | None = None) -> None:
        super().__init__()
        from dmabuf.devices.gpu import AmdgpuDomain, Gpu
        self.size = int(size)
        self.map_offset = 0
        self.bo: Any = None
        self._machine = platform.machine
        try:
            if heap is not None:
                h = dma_heap_find(heap, machine=platform.machine)
                if h is None and heap == "system":
                    h = system_heap_create(platform.phys, machine=platform.machine)
                if h is None:
                    raise DmaBufError(errno.ENOENT, f"no dma-buf heap {heap!r}")
                kbuf = h.allocate(self.size)
            else:
                try:
                    g = platform.device(f"gpu{gpu}")
                except DmaBufError:
                    raise DmaBufError(errno.ENOENT, f"Device /dev/dri/renderD{128 + gpu} is not "
                                      f"present (no GPU driver bound to gpu{gpu})") from None
                if not isinstance(g, Gpu):
                    raise DmaBufError(errno.EOPNOTSUPP, f"gpu{gpu} is not a GPU exporter")
                bo = g.alloc_bo(self.size, domain=AmdgpuDomain.GTT if gtt else
                                AmdgpuDomain.VRAM, name="pyverbs-dmabuf")
                try:
                    kbuf = g.export(bo)
                finally:
                    g.free_bo(bo)       # the dma-buf holds the BO now
                self.bo = bo
        except DmaBufError as e:
            raise _wrap("Failed to allocate dma-buf", e) from e
        self.dmabuf: KDmaBuf = kbuf
        self.fd = kbuf.fd()

    def __repr__(self) -> str:
        return f"<DmaBuf fd={self.fd} size={self.size:#x}>"

    def _destroy(self) -> None:
        current_process(self._machine).fds.close(self.fd)


def _cpu_view(dmabuf: KDmaBuf) -> Any:
    vma = Vma(length=-(-dmabuf.size // PAGE_SIZE) * PAGE_SIZE, pgoff=0)
    dmabuf.mmap(vma, 0)
    return vma.view


class DmaBufMR(_MrKeys):
    """A dma-buf memory region — ``pyverbs.mr.DmaBufMR`` (``ibv_reg_dmabuf_mr``).

    Args:
        pd: the PD. length: bytes. access: ``IBV_ACCESS_*``.
        dmabuf: a :class:`DmaBuf`, a dma-buf fd, a kernel DmaBuf, or None to allocate one of
            ``offset + length`` bytes from GPU ``gpu`` (``gtt``: in GTT), as pyverbs does.
        offset: window start in the buffer; also the MR's iova (pyverbs passes ``offset`` as
            ``iova``).
        gpu, gtt: see above.
        iova: model addition — a different iova (same page offset as ``offset``).
        kind: model addition — MR flavour (:class:`~dmabuf.devices.rdma.mr.MrKind` name).
        heap: model addition — allocate the internal buffer from this heap.
    Attributes: lkey, rkey, offset, length, dmabuf (:class:`DmaBuf` or None), fd, mr.
    Raises: PyverbsRDMAError("Failed to register a dma-buf MR...", errno).
    """

    def __init__(self, pd: PD, length: int, access: int, dmabuf: Any = None, offset: int = 0,
                 gpu: int = 0, gtt: int = 0, *, iova: int | None = None,
                 kind: MrKind | str = MrKind.DYNAMIC, heap: str | None = None) -> None:
        super().__init__()
        pd._check_open("DmaBufMR")
        self.pd = pd
        self.offset = int(offset)
        self.length = int(length)
        self._own: DmaBuf | None = None
        if dmabuf is None:
            size = max(self.offset + self.length, 1)
            self._own = DmaBuf(-(-size // PAGE_SIZE) * PAGE_SIZE, gpu, gtt,
                               platform=pd.ctx.platform, heap=heap)
            dmabuf = self._own
        self.dmabuf = dmabuf if isinstance(dmabuf, DmaBuf) else None
        fd: int | KDmaBuf = dmabuf.fd if isinstance(dmabuf, DmaBuf) else dmabuf
        self.fd = fd
        try:
            self.mr: Mlx5IbMr = ib_uverbs_reg_dmabuf_mr(
                pd.pd, self.offset, self.length, self.offset if iova is None else iova, fd,
                access, kind=kind)
        except DmaBufError as e:
            if self._own is not None:
                self._own.close()
            raise _wrap(f"Failed to register a dma-buf MR. length: {length}, access flags: "
                        f"{access}", e) from e
        pd._add_child(self)

    def _kbuf(self) -> KDmaBuf:
        if isinstance(self.fd, KDmaBuf):
            return self.fd
        assert self.mr.is_dmabuf
        return self.mr.umem.dmabuf  # type: ignore[union-attr]

    def write(self, data: str | bytes | Any, length: int, offset: int = 0) -> None:
        """Store ``length`` bytes at ``offset`` of the MR through a CPU mapping of the buffer.

        Model-only: a user-space CPU store through a mapping of the buffer.
        """
        self._check_open("write")
        raw = data.encode() if isinstance(data, str) else bytes(data)
        _cpu_view(self._kbuf()).write(self.offset + offset, raw[:length])

    def read(self, length: int, offset: int = 0) -> bytes:
        """Load ``length`` bytes at ``offset`` of the MR through a CPU mapping of the buffer.

        Model-only: a user-space CPU load through a mapping of the buffer.
        """
        self._check_open("read")
        return bytes(_cpu_view(self._kbuf()).read(self.offset + offset, length).tobytes())

    def _destroy(self) -> None:
        ib_uverbs_dereg_mr(self.mr)
        if self._own is not None:
            self._own.close()


# ---------------------------------------------------------------------------------- CQ / QP
WC = IbWc


class CQ(_Object):
    """A completion queue — ``pyverbs.cq.CQ`` (``ibv_create_cq``)."""

    def __init__(self, ctx: Context, cqe: int, cq_context: Any = None, channel: Any = None,
                 comp_vector: int = 0) -> None:
        super().__init__()
        ctx._check_open("CQ")
        try:
            self.cq: Mlx5IbCq = ctx.device.create_cq(cqe)
        except DmaBufError as e:
            raise _wrap("Failed to create a CQ", e) from e
        self.ctx = ctx
        self.cqe = self.cq.cqe
        ctx._add_child(self)

    def poll(self, num_entries: int = 1) -> tuple[int, list[IbWc]]:
        """``ibv_poll_cq``: ``(number polled, [WC, ...])``.

        Model-only: mirrors rdma-core pyverbs CQ.poll (user space ibv_poll_cq()); the kernel side is
        mlx5_ib_poll_cq().
        """
        self._check_open("poll")
        wcs = self.cq.poll(num_entries)
        return len(wcs), wcs

    def _destroy(self) -> None:
        try:
            self.ctx.device.destroy_cq(self.cq)
        except DmaBufError as e:
            raise _wrap("Failed to destroy CQ", e) from e


@dataclass
class QPCap(IbQpCap):
    """``ibv_qp_cap`` — ``pyverbs.qp.QPCap``: the same fields, order and defaults as the
    driver's :class:`~dmabuf.devices.rdma.qp.IbQpCap`."""


@dataclass
class QPInitAttr:
    """``ibv_qp_init_attr`` — ``pyverbs.qp.QPInitAttr`` (default type RC; pyverbs: UD)."""

    qp_type: int = IBV_QPT_RC
    qp_context: Any = None
    scq: CQ | None = None
    rcq: CQ | None = None
    srq: Any = None
    cap: QPCap | None = None
    sq_sig_all: int = 1


@dataclass
class AHAttr:
    """``ibv_ah_attr`` — ``pyverbs.addr.AHAttr`` (LID addressing)."""

    port_num: int = 1
    is_global: int = 0
    dlid: int = 0
    sl: int = 0


@dataclass
class QPAttr:
    """``ibv_qp_attr`` — ``pyverbs.qp.QPAttr``."""

    qp_state: int = IBV_QPS_INIT
    cur_qp_state: int = IBV_QPS_RESET
    port_num: int = 1
    path_mtu: int = IBV_MTU_4096
    qp_access_flags: int = 0
    pkey_index: int = 0
    qkey: int = 0
    ah_attr: AHAttr = field(default_factory=AHAttr)
    dest_qp_num: int = 0
    rq_psn: int = 0
    sq_psn: int = 0
    max_rd_atomic: int = 1
    max_dest_rd_atomic: int = 1
    min_rnr_timer: int = 12
    timeout: int = 14
    retry_cnt: int = 7
    rnr_retry: int = 7

    def _to_ib(self) -> IbQpAttr:
        a = self.ah_attr
        plain = {k: v for k, v in vars(self).items() if k != "ah_attr"}   # same field names
        return IbQpAttr(**plain, ah_attr=IbAhAttr(a.dlid, a.port_num, a.sl, bool(a.is_global)))


@dataclass
class SGE:
    """``ibv_sge`` — ``pyverbs.wr.SGE(addr, length, lkey)``."""

    addr: int
    length: int
    lkey: int


class SendWR:
    """``ibv_send_wr`` — ``pyverbs.wr.SendWR``.

    Args: wr_id, wr_next (ignored: post a list instead), num_sge, imm_data, sg (list of SGE),
        opcode (``IBV_WR_*``), send_flags (``IBV_SEND_*``).
    """

    def __init__(self, wr_id: int = 0, wr_next: Any = None, num_sge: int = 0,
                 imm_data: int = 0, sg: list[SGE] | None = None, opcode: int = IBV_WR_SEND,
                 send_flags: int = IBV_SEND_SIGNALED) -> None:
        self.wr_id = wr_id
        self.wr_next = wr_next
        self.sg = list(sg or [])
        self.num_sge = num_sge if num_sge else len(self.sg)
        self.imm_data = imm_data
        self.opcode = opcode
        self.send_flags = send_flags
        self.rkey = 0
        self.remote_addr = 0
        self.compare_add = 0
        self.swap = 0

    def set_wr_rdma(self, rkey: int, addr: int) -> None:
        """``wr.rdma.rkey / remote_addr``.

        Model-only: mirrors rdma-core pyverbs SendWR.set_wr_rdma (user space).
        """
        self.rkey = rkey
        self.remote_addr = addr

    def set_wr_atomic(self, rkey: int, addr: int, compare_add: int, swap: int = 0) -> None:
        """``wr.atomic``.

        Model-only: mirrors rdma-core pyverbs SendWR.set_wr_atomic (user space).
        """
        self.rkey = rkey
        self.remote_addr = addr
        self.compare_add = compare_add
        self.swap = swap

    def _to_ib(self) -> IbSendWr:
        return IbSendWr(self.wr_id, self.opcode, self.send_flags,
                        [IbSge(s.addr, s.length, s.lkey) for s in self.sg[:self.num_sge]],
                        self.imm_data, self.remote_addr, self.rkey, self.compare_add, self.swap)


class RecvWR:
    """``ibv_recv_wr`` — ``pyverbs.wr.RecvWR(wr_id, num_sge, sg)``."""

    def __init__(self, wr_id: int = 0, num_sge: int = 0, sg: list[SGE] | None = None,
                 wr_next: Any = None) -> None:
        self.wr_id = wr_id
        self.sg = list(sg or [])
        self.num_sge = num_sge if num_sge else len(self.sg)
        self.wr_next = wr_next

    def _to_ib(self) -> IbRecvWr:
        return IbRecvWr(self.wr_id, [IbSge(s.addr, s.length, s.lkey)
                                     for s in self.sg[:self.num_sge]])


def _chain(wr: Any) -> list[Any]:
    out = []
    while wr is not None:
        out.append(wr)
        wr = getattr(wr, "wr_next", None)
    return out


class QP(_Object):
    """A queue pair — ``pyverbs.qp.QP(pd, init_attr, qp_attr=None)``.

    With ``qp_attr`` an RC QP is moved to INIT at creation (as pyverbs does).
    Attributes: qp_num, qp_state (current state), qp_type, qp (the driver QP).
    Raises: PyverbsRDMAError: creation / modify / post failures with the kernel's errno.
    """

    def __init__(self, pd: PD, init_attr: QPInitAttr, qp_attr: QPAttr | None = None) -> None:
        super().__init__()
        pd._check_open("QP")
        cap = init_attr.cap or QPCap()
        ib = IbQpInitAttr(init_attr.qp_type,
                          init_attr.scq.cq if init_attr.scq is not None else None,
                          init_attr.rcq.cq if init_attr.rcq is not None else None,
                          IbQpCap(**vars(cap)),
                          bool(init_attr.sq_sig_all))
        try:
            self.qp: Mlx5IbQp = pd.ctx.device.create_qp(pd.pd, ib)
        except DmaBufError as e:
            raise _wrap("Failed to create QP", e) from e
        self.pd = pd
        self.qp_type = init_attr.qp_type
        pd._add_child(self)
        for cq in (init_attr.scq, init_attr.rcq):
            if cq is not None:
                cq._add_child(self)
        if qp_attr is not None:
            self.to_init(qp_attr)

    @property
    def qp_num(self) -> int:
        """``qp->qp_num``."""
        return self.qp.qp_num

    @property
    def qp_state(self) -> int:
        """The current state (``IBV_QPS_*``)."""
        return int(self.qp.state)

    def modify(self, qp_attr: QPAttr, attr_mask: int) -> None:
        """``ibv_modify_qp``. Raises PyverbsRDMAError(EINVAL): illegal transition/attributes.

        Model-only: mirrors rdma-core pyverbs (user space ibv_modify_qp()); the kernel side is
        ib_modify_qp_with_udata().
        """
        self._check_open("modify")
        try:
            self.qp.modify(qp_attr._to_ib(), attr_mask)
        except DmaBufError as e:
            raise _wrap("Failed to modify QP", e) from e

    def to_init(self, qp_attr: QPAttr) -> None:
        """RESET → INIT with pyverbs' RC mask.

        Model-only: mirrors rdma-core pyverbs QP.to_init (user space).
        """
        qp_attr.qp_state = IBV_QPS_INIT
        self.modify(qp_attr, RC_INIT_MASK)

    def to_rtr(self, qp_attr: QPAttr) -> None:
        """INIT → RTR with pyverbs' RC mask.

        Model-only: mirrors rdma-core pyverbs QP.to_rtr (user space).
        """
        qp_attr.qp_state = IBV_QPS_RTR
        self.modify(qp_attr, RC_RTR_MASK)

    def to_rts(self, qp_attr: QPAttr) -> None:
        """RTR → RTS with pyverbs' RC mask.

        Model-only: mirrors rdma-core pyverbs QP.to_rts (user space).
        """
        qp_attr.qp_state = IBV_QPS_RTS
        self.modify(qp_attr, RC_RTS_MASK)

    def query(self, attr_mask: int = 0) -> tuple[QPAttr, QPInitAttr]:
        """``ibv_query_qp``: (attributes, init attributes).

        Model-only: mirrors rdma-core pyverbs (user space ibv_query_qp()); the kernel side is
        ib_uverbs_query_qp().
        """
        self._check_open("query")
        a = self.qp.query()
        qa = QPAttr(int(a.qp_state), int(a.cur_qp_state), a.port_num, a.path_mtu,
                    a.qp_access_flags, a.pkey_index, a.qkey,
                    AHAttr(a.ah_attr.port_num, int(a.ah_attr.is_global), a.ah_attr.dlid,
                           a.ah_attr.sl),
                    a.dest_qp_num, a.rq_psn, a.sq_psn, a.max_rd_atomic, a.max_dest_rd_atomic,
                    a.min_rnr_timer, a.timeout, a.retry_cnt, a.rnr_retry)
        c = self.qp.cap
        ia = QPInitAttr(int(self.qp.qp_type), None, None, None, None,
                        QPCap(c.max_send_wr, c.max_recv_wr, c.max_send_sge, c.max_recv_sge,
                              c.max_inline_data), int(self.qp.sq_sig_all))
        return qa, ia

    def post_send(self, send_wr: SendWR, bad_wr: Any = None) -> None:
        """``ibv_post_send`` (the ``wr_next`` chain is posted in order).

        Model-only: mirrors rdma-core pyverbs (user space ibv_post_send(); mlx5 posts from user
        space).
        """
        self._check_open("post_send")
        try:
            self.qp.post_send([w._to_ib() for w in _chain(send_wr)])
        except DmaBufError as e:
            raise _wrap("Failed to post send", e) from e

    def post_recv(self, recv_wr: RecvWR, bad_wr: Any = None) -> None:
        """``ibv_post_recv`` (the ``wr_next`` chain is posted in order).

        Model-only: mirrors rdma-core pyverbs (user space ibv_post_recv(); mlx5 posts from user
        space).
        """
        self._check_open("post_recv")
        try:
            self.qp.post_recv([w._to_ib() for w in _chain(recv_wr)])
        except DmaBufError as e:
            raise _wrap("Failed to post recv", e) from e

    def _destroy(self) -> None:
        self.pd.ctx.device.destroy_qp(self.qp)


# ---------------------------------------------------------------------------------- helpers
def poll_cq(cq: CQ, count: int = 1, *, timeout: float = 5.0) -> list[IbWc]:
    """Poll ``count`` completions; raise on an error status — rdma-core ``tests/utils.poll_cq``.

    Waits (up to ``timeout`` seconds on the machine's clock) for completions produced by
    another thread; with the model's synchronous HCA they are usually there already.

    Raises: PyverbsRDMAError(status): a completion with a non-success status (``error_code``
        is the WC status, as in rdma-core's helper); PyverbsError(ETIMEDOUT): not enough
        completions in time.

    Model-only: mirrors rdma-core tests/utils.poll_cq (user space).
    """
    out: list[IbWc] = []
    while len(out) < count:
        got = cq.cq.poll(count - len(out))
        if not got:
            if not cq.cq.wait(count - len(out), timeout):
                raise PyverbsError(f"Got timeout on polling ({len(out)} of {count} "
                                   "completions)", errno.ETIMEDOUT)
            continue
        for wc in got:
            if wc.status != IBV_WC_SUCCESS:
                raise PyverbsRDMAError(f"Completion status is {wc_status_str(wc.status)}",
                                       wc.status)
        out.extend(got)
    return out


def connect_rc(a: QP, b: QP, *, access: int = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE
               | IBV_ACCESS_REMOTE_READ, port_num: int = 1, rnr_retry: int = 7) -> None:
    """Move two RC QPs RESET → INIT → RTR → RTS connected to each other (any two NICs).

    Each side's ``dest_qp_num`` is the other's number and ``ah_attr.dlid`` the other's port LID
    (the same LID for a loopback pair). Raises: PyverbsRDMAError from a modify.

    Model-only: test helper in the style of rdma-core tests/utils (user space).
    """
    for me in (a, b):
        if me.qp_state == IBV_QPS_RESET:
            me.to_init(QPAttr(port_num=port_num, qp_access_flags=access))
    for me, peer in ((a, b), (b, a)):
        lid = peer.pd.ctx.query_port(port_num).lid
        attr = QPAttr(port_num=port_num, qp_access_flags=access, dest_qp_num=peer.qp_num,
                      ah_attr=AHAttr(port_num=port_num, dlid=lid), rnr_retry=rnr_retry)
        me.to_rtr(attr)
    for me in (a, b):
        me.to_rts(QPAttr(port_num=port_num, rnr_retry=rnr_retry))

