"""drivers/infiniband/hw/mlx5/qp.c + wr.c (+ core/verbs.c ib_modify_qp): queue pairs.

A reliable-connected queue pair (:class:`Mlx5IbQp`) is a send queue and a receive queue bound to
completion queues, a PD, a port and — once connected — one remote QP (``dest_qp_num`` at
``ah_attr.dlid``). Its life follows the IB state machine (:func:`ib_modify_qp_is_ok`): RESET →
INIT (port, pkey, access flags) → RTR (path, remote QPN, PSN, responder resources) → RTS
(timeouts, retry counts, PSN); any state → ERR or RESET. A modify that breaks the table —
an unknown transition, a missing required attribute, an attribute the transition does not take —
fails with ``-EINVAL`` and leaves the QP unchanged.

Posting (what the user-space provider checks before ringing the doorbell, ``mlx5_post_send`` /
``mlx5_post_recv``): a send queue accepts work only in RTS (``-EINVAL`` before: the IB spec's
"immediate error"; in ERR posted work is completed at once with ``IBV_WC_WR_FLUSH_ERR``); a
receive queue accepts work from INIT on (``-EINVAL`` in RESET); too many scatter/gather entries
→ ``-EINVAL``; a full queue → ``-ENOMEM``; an opcode the QP type cannot carry → ``-EINVAL``;
inline data larger than ``max_inline_data`` → ``-EINVAL``. The doorbell then lets the HCA
(:mod:`~dmabuf.devices.rdma.hca`) execute the send queue.

Transitions to ERR flush every outstanding work request with ``IBV_WC_WR_FLUSH_ERR``
completions; to RESET drop them silently.

Model scope: RC only for data transfer (creating UC/UD QPs is ``-EOPNOTSUPP``); PSNs, path MTU
and timers are recorded, not simulated.

Locking: ``state_lock`` protects the state and attributes; ``rq_lock`` the receive queue (held
only to push/pop); ``sq_lock`` is the send-queue engine, held by whoever executes the queue
(never while waiting for anything but a dma-buf reservation lock, exporter fences during a page
fault, and MKey hardware locks).

Kernel: drivers/infiniband/core/verbs.c (ib_modify_qp, _ib_modify_qp, ib_modify_qp_is_ok),
drivers/infiniband/hw/mlx5/qp.c (mlx5_ib_create_qp, mlx5_ib_modify_qp); rdma-core
providers/mlx5/qp.c (mlx5_post_send, mlx5_post_recv); IB spec vol. 1 ch. 10.3 (QP states).
"""

from __future__ import annotations

import collections
import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dmabuf.devices.rdma.cq import IbWc, Mlx5IbCq
from dmabuf.devices.rdma.ib_verbs import (
    IbAccess,
    IbQpAttrMask,
    IbQpState,
    IbQpType,
    IbSendFlags,
    IbWcOpcode,
    IbWcStatus,
    IbWrOpcode,
    ib_modify_qp_is_ok,
)
from dmabuf.errors import DmaBufError

if TYPE_CHECKING:
    from dmabuf.devices.rdma.mlx5_ib import IbPd, RdmaNic

__all__ = [
    "IbAhAttr",
    "IbQpAttr",
    "IbQpCap",
    "IbQpInitAttr",
    "IbRecvWr",
    "IbSendWr",
    "IbSge",
    "Mlx5IbQp",
    "wr_to_wc_opcode",
]


@dataclass
class IbSge:
    """One scatter/gather entry — ``struct ibv_sge``: address (MR iova space), length, lkey."""

    addr: int
    length: int
    lkey: int


@dataclass
class IbSendWr:
    """A send work request — ``struct ibv_send_wr`` (``wr.rdma`` and ``wr.atomic`` flattened).

    ``inline_data`` is filled by the post path for ``IBV_SEND_INLINE`` (the provider copies the
    bytes into the WQE at post time).
    """

    wr_id: int = 0
    opcode: int = IbWrOpcode.SEND
    send_flags: int = IbSendFlags.SIGNALED
    sg_list: list[IbSge] = field(default_factory=list)
    imm_data: int = 0
    remote_addr: int = 0
    rkey: int = 0
    compare_add: int = 0
    swap: int = 0
    inline_data: bytes | None = None

    @property
    def length(self) -> int:
        """Total bytes of the gather list (or the inline data)."""
        if self.inline_data is not None:
            return len(self.inline_data)
        return sum(s.length for s in self.sg_list)


@dataclass
class IbRecvWr:
    """A receive work request — ``struct ibv_recv_wr``."""

    wr_id: int = 0
    sg_list: list[IbSge] = field(default_factory=list)


@dataclass
class IbQpCap:
    """Queue sizes — ``struct ibv_qp_cap``."""

    max_send_wr: int = 1
    max_recv_wr: int = 10
    max_send_sge: int = 1
    max_recv_sge: int = 1
    max_inline_data: int = 0


@dataclass
class IbQpInitAttr:
    """QP creation attributes — ``struct ibv_qp_init_attr``."""

    qp_type: int = IbQpType.RC
    send_cq: Mlx5IbCq | None = None
    recv_cq: Mlx5IbCq | None = None
    cap: IbQpCap = field(default_factory=IbQpCap)
    sq_sig_all: bool = False


@dataclass
class IbAhAttr:
    """Address vector — ``struct ibv_ah_attr`` (LID routing; GRH not modelled)."""

    dlid: int = 0
    port_num: int = 1
    sl: int = 0
    is_global: bool = False


@dataclass
class IbQpAttr:
    """QP attributes for modify/query — ``struct ibv_qp_attr``."""

    qp_state: int = IbQpState.RESET
    cur_qp_state: int = IbQpState.RESET
    path_mtu: int = 5
    qp_access_flags: int = 0
    pkey_index: int = 0
    port_num: int = 1
    qkey: int = 0
    ah_attr: IbAhAttr = field(default_factory=IbAhAttr)
    dest_qp_num: int = 0
    rq_psn: int = 0
    sq_psn: int = 0
    max_rd_atomic: int = 1
    max_dest_rd_atomic: int = 1
    min_rnr_timer: int = 12
    timeout: int = 14
    retry_cnt: int = 7
    rnr_retry: int = 7


_WR_TO_WC = {
    IbWrOpcode.RDMA_WRITE: IbWcOpcode.RDMA_WRITE,
    IbWrOpcode.RDMA_WRITE_WITH_IMM: IbWcOpcode.RDMA_WRITE,
    IbWrOpcode.SEND: IbWcOpcode.SEND,
    IbWrOpcode.SEND_WITH_IMM: IbWcOpcode.SEND,
    IbWrOpcode.RDMA_READ: IbWcOpcode.RDMA_READ,
    IbWrOpcode.ATOMIC_CMP_AND_SWP: IbWcOpcode.COMP_SWAP,
    IbWrOpcode.ATOMIC_FETCH_AND_ADD: IbWcOpcode.FETCH_ADD,
}


def wr_to_wc_opcode(opcode: int) -> IbWcOpcode:
    """The completion opcode of a send work request opcode.

    Model-only: the HCA chooses the completion opcode; there is no kernel table.
    """
    return _WR_TO_WC[IbWrOpcode(opcode)]


_ATTR_FIELDS: tuple[tuple[IbQpAttrMask, tuple[str, ...]], ...] = (
    (IbQpAttrMask.ACCESS_FLAGS, ("qp_access_flags",)),
    (IbQpAttrMask.PKEY_INDEX, ("pkey_index",)),
    (IbQpAttrMask.PORT, ("port_num",)),
    (IbQpAttrMask.QKEY, ("qkey",)),
    (IbQpAttrMask.AV, ("ah_attr",)),
    (IbQpAttrMask.PATH_MTU, ("path_mtu",)),
    (IbQpAttrMask.TIMEOUT, ("timeout",)),
    (IbQpAttrMask.RETRY_CNT, ("retry_cnt",)),
    (IbQpAttrMask.RNR_RETRY, ("rnr_retry",)),
    (IbQpAttrMask.RQ_PSN, ("rq_psn",)),
    (IbQpAttrMask.MAX_QP_RD_ATOMIC, ("max_rd_atomic",)),
    (IbQpAttrMask.MIN_RNR_TIMER, ("min_rnr_timer",)),
    (IbQpAttrMask.SQ_PSN, ("sq_psn",)),
    (IbQpAttrMask.MAX_DEST_RD_ATOMIC, ("max_dest_rd_atomic",)),
    (IbQpAttrMask.DEST_QPN, ("dest_qp_num",)),
)


class Mlx5IbQp:
    """A queue pair — ``struct mlx5_ib_qp`` (see the module docstring).

    Created by :meth:`RdmaNic.create_qp <dmabuf.devices.rdma.mlx5_ib.RdmaNic.create_qp>`.

    Attributes:
        device, pd, qp_num, qp_type, send_cq, recv_cq, cap, sq_sig_all, state, attr (the
        current :class:`IbQpAttr`), sq / rq (pending work), rnr_stalled (the head send WQE
        waits for the responder to post a receive), destroyed.
    """

    def __init__(self, device: RdmaNic, pd: IbPd, qp_num: int, init: IbQpInitAttr) -> None:
        if init.send_cq is None or init.recv_cq is None:
            raise DmaBufError(errno.EINVAL, "a QP needs a send CQ and a receive CQ")
        if init.qp_type != IbQpType.RC:
            raise DmaBufError(errno.EOPNOTSUPP, f"QP type {init.qp_type}: the model carries data "
                              "on RC QPs only")
        cap = init.cap
        for v, lim, nm in ((cap.max_send_wr, device.max_qp_wr, "max_send_wr"),
                           (cap.max_recv_wr, device.max_qp_wr, "max_recv_wr"),
                           (cap.max_send_sge, device.max_sge, "max_send_sge"),
                           (cap.max_recv_sge, device.max_sge, "max_recv_sge"),
                           (cap.max_inline_data, device.max_inline_data, "max_inline_data")):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > lim:
                raise DmaBufError(errno.EINVAL, f"{nm}={v!r} is outside 0..{lim}")
        m = device.machine
        self.device = device
        self.pd = pd
        self.qp_num = qp_num
        self.qp_type = IbQpType(init.qp_type)
        self.send_cq: Mlx5IbCq = init.send_cq
        self.recv_cq: Mlx5IbCq = init.recv_cq
        self.cap = IbQpCap(**vars(cap))
        self.sq_sig_all = bool(init.sq_sig_all)
        self.state = IbQpState.RESET
        self.attr = IbQpAttr()
        self.sq: collections.deque[IbSendWr] = collections.deque()
        self.rq: collections.deque[IbRecvWr] = collections.deque()
        self.rnr_stalled = False
        self.destroyed = False
        self.state_lock = m.sched.lock(f"{device.name}.qp{qp_num:#x}.state")
        self.rq_lock = m.sched.lock(f"{device.name}.qp{qp_num:#x}.rq")
        self.sq_lock = m.sched.lock(f"{device.name}.qp{qp_num:#x}.sq")
        self.send_cq.usecnt += 1
        self.recv_cq.usecnt += 1

    def __repr__(self) -> str:
        return (f"<Mlx5IbQp {self.device.name} qpn={self.qp_num:#x} {self.state.name} "
                f"sq={len(self.sq)} rq={len(self.rq)}>")

    # ------------------------------------------------------------------ modify
    def modify(self, attr: IbQpAttr, mask: int) -> None:
        """Change state and attributes — ``ib_modify_qp()`` → ``mlx5_ib_modify_qp()``.

        Args:
            attr: the attributes (only the fields named by ``mask`` are used).
            mask: :class:`~dmabuf.devices.rdma.ib_verbs.IbQpAttrMask` bits.
        Context: may block briefly (QP locks); flushing completes outstanding work.
        Raises: DmaBufError(EINVAL): illegal transition or attributes (``ib_modify_qp_is_ok``),
            a port number the device does not have, a destroyed QP.
        Kernel: drivers/infiniband/core/verbs.c, _ib_modify_qp(); mlx5 qp.c, mlx5_ib_modify_qp().
        """
        if self.destroyed:
            raise DmaBufError(errno.EINVAL, "modify of a destroyed QP")
        with self.state_lock:
            cur = IbQpState(attr.cur_qp_state) if mask & IbQpAttrMask.CUR_STATE else self.state
            new = IbQpState(attr.qp_state) if mask & IbQpAttrMask.STATE else cur
            if mask & IbQpAttrMask.CUR_STATE and cur != self.state:
                raise DmaBufError(errno.EINVAL, f"cur_qp_state {cur.name} does not match the QP's "
                                  f"state {self.state.name}")
            if not ib_modify_qp_is_ok(cur, new, self.qp_type, mask):
                raise DmaBufError(errno.EINVAL, f"QP {self.qp_num:#x}: modify {cur.name} -> "
                                  f"{new.name} with mask {mask:#x} is not allowed for "
                                  f"{self.qp_type.name} (missing or extra attributes?)")
            if mask & IbQpAttrMask.PORT and attr.port_num not in self.device.ports:
                raise DmaBufError(errno.EINVAL, f"port {attr.port_num} does not exist on "
                                  f"{self.device.name}")
            if mask & IbQpAttrMask.ACCESS_FLAGS and attr.qp_access_flags & ~int(
                    IbAccess.LOCAL_WRITE | IbAccess.REMOTE_WRITE | IbAccess.REMOTE_READ
                    | IbAccess.REMOTE_ATOMIC):
                raise DmaBufError(errno.EINVAL, f"qp_access_flags {attr.qp_access_flags:#x}: only "
                                  "LOCAL_WRITE and REMOTE_* apply to a QP")
            for bit, names in _ATTR_FIELDS:
                if mask & bit:
                    for nm in names:
                        v = getattr(attr, nm)
                        if nm == "ah_attr":
                            v = IbAhAttr(**vars(v))
                        setattr(self.attr, nm, v)
            self.state = new
            self.attr.qp_state = new
            self.attr.cur_qp_state = new
        self.device.machine.trace.emit("ib_modify_qp", device=self.device.name, qpn=self.qp_num,
                                       cur=cur.name, new=new.name, mask=int(mask))
        if new == IbQpState.RESET:
            with self.rq_lock:
                self.rq.clear()
            with self.sq_lock:
                self.sq.clear()
                self.rnr_stalled = False
        elif new == IbQpState.ERR:
            self.flush()

    def query(self) -> IbQpAttr:
        """A copy of the current attributes — ``ib_query_qp()``.

        Kernel: drivers/infiniband/hw/mlx5/qp.c, mlx5_ib_query_qp() (ib_query_qp()).
        """
        with self.state_lock:
            a = IbQpAttr(**{k: v for k, v in vars(self.attr).items() if k != "ah_attr"})
            a.ah_attr = IbAhAttr(**vars(self.attr.ah_attr))
            return a

    # ------------------------------------------------------------------ errors and flushing
    def set_error(self) -> None:
        """Move to ERR (a transport error) and flush what can be flushed now.

        Model-only: a transport error moving the QP to ERR is detected by hardware.
        """
        with self.state_lock:
            if self.state == IbQpState.ERR:
                return
            self.state = IbQpState.ERR
            self.attr.qp_state = IbQpState.ERR
        self.device.machine.trace.emit("ib_qp_error", device=self.device.name, qpn=self.qp_num)
        self.flush()

    def flush(self) -> None:
        """Complete every outstanding WR with ``IBV_WC_WR_FLUSH_ERR`` (state ERR).

        Model-only: flushing WRs with IBV_WC_WR_FLUSH_ERR is done by the HCA on the ERR transition.
        """
        with self.rq_lock:
            rwrs = list(self.rq)
            self.rq.clear()
        for rwr in rwrs:
            self.recv_cq.push(IbWc(rwr.wr_id, IbWcStatus.WR_FLUSH_ERR, IbWcOpcode.RECV,
                                   qp_num=self.qp_num))
        if self.sq_lock.acquire(blocking=False):
            try:
                self._flush_sq_locked()
            finally:
                self.sq_lock.release()
        # else: the thread executing the send queue sees ERR and flushes it

    def _flush_sq_locked(self) -> None:
        while self.sq:
            wr = self.sq.popleft()
            self.send_cq.push(IbWc(wr.wr_id, IbWcStatus.WR_FLUSH_ERR, wr_to_wc_opcode(wr.opcode),
                                   qp_num=self.qp_num))
        self.rnr_stalled = False

    # ------------------------------------------------------------------ posting
    def post_send(self, wrs: list[IbSendWr]) -> None:
        """Queue send work requests and ring the doorbell — ``ibv_post_send()``.

        Every request is checked before any is queued (the model reports the first bad one and
        queues none; the provider queues the good prefix and returns ``bad_wr``).

        Context: may block while the HCA executes the queue in this thread (page faults may take
            dma-buf reservation locks).
        Raises: DmaBufError(EINVAL): state RESET/INIT/RTR/SQD, too many SGEs, bad opcode for the
            QP type, inline data too long; DmaBufError(ENOMEM): send queue full;
            DmaBufError(EFAULT): inline data from an unmapped user address.
        Kernel: rdma-core providers/mlx5/qp.c, _mlx5_post_send().
        """
        self._check_alive()
        with self.state_lock:
            state = self.state
        if state in (IbQpState.RESET, IbQpState.INIT, IbQpState.RTR, IbQpState.SQD):
            raise DmaBufError(errno.EINVAL, f"post_send on QP {self.qp_num:#x} in state "
                              f"{state.name}: move it to RTS first")
        for wr in wrs:
            self._check_send_wr(wr)
        with self.sq_lock:
            if len(self.sq) + len(wrs) > self.cap.max_send_wr:
                raise DmaBufError(errno.ENOMEM, f"send queue of QP {self.qp_num:#x} is full "
                                  f"({self.cap.max_send_wr} WRs): poll completions first")
            for wr in wrs:
                if wr.send_flags & IbSendFlags.INLINE:
                    wr.inline_data = self.device.read_user(wr.sg_list)
                self.sq.append(wr)
        self.device.hca.process_sq(self)

    def _check_send_wr(self, wr: IbSendWr) -> None:
        try:
            op = IbWrOpcode(wr.opcode)
        except ValueError:
            raise DmaBufError(errno.EINVAL, f"unknown send opcode {wr.opcode}") from None
        if op in (IbWrOpcode.ATOMIC_CMP_AND_SWP, IbWrOpcode.ATOMIC_FETCH_AND_ADD) \
                and not self.device.atomic:
            raise DmaBufError(errno.EINVAL, f"{self.device.name} has no HCA atomics")
        if len(wr.sg_list) > self.cap.max_send_sge:
            raise DmaBufError(errno.EINVAL, f"{len(wr.sg_list)} SGEs > max_send_sge "
                              f"{self.cap.max_send_sge}")
        if wr.send_flags & IbSendFlags.INLINE:
            if op not in (IbWrOpcode.SEND, IbWrOpcode.SEND_WITH_IMM, IbWrOpcode.RDMA_WRITE,
                          IbWrOpcode.RDMA_WRITE_WITH_IMM):
                raise DmaBufError(errno.EINVAL, f"IBV_SEND_INLINE with {op.name}")
            if sum(s.length for s in wr.sg_list) > self.cap.max_inline_data:
                raise DmaBufError(errno.EINVAL, "inline data longer than max_inline_data "
                                  f"{self.cap.max_inline_data}")

    def post_recv(self, wrs: list[IbRecvWr]) -> None:
        """Queue receive work requests — ``ibv_post_recv()``.

        Context: may run the remote QP's stalled send queue (RNR) in this thread.
        Raises: DmaBufError(EINVAL): state RESET, too many SGEs; DmaBufError(ENOMEM): full.
        Kernel: rdma-core providers/mlx5/qp.c, mlx5_post_recv().
        """
        self._check_alive()
        with self.state_lock:
            state = self.state
        if state == IbQpState.RESET:
            raise DmaBufError(errno.EINVAL, f"post_recv on QP {self.qp_num:#x} in RESET")
        for wr in wrs:
            if len(wr.sg_list) > self.cap.max_recv_sge:
                raise DmaBufError(errno.EINVAL, f"{len(wr.sg_list)} SGEs > max_recv_sge "
                                  f"{self.cap.max_recv_sge}")
        with self.rq_lock:
            if len(self.rq) + len(wrs) > self.cap.max_recv_wr:
                raise DmaBufError(errno.ENOMEM, f"receive queue of QP {self.qp_num:#x} is full "
                                  f"({self.cap.max_recv_wr} WRs)")
            self.rq.extend(wrs)
        if state == IbQpState.ERR:
            self.flush()
            return
        self.device.hca.kick_remote(self)

    def pop_recv(self) -> IbRecvWr | None:
        """The responder consumes the head receive WQE (HCA side).

        Model-only: the responder consuming a receive WQE is hardware.
        """
        with self.rq_lock:
            return self.rq.popleft() if self.rq else None

    def _check_alive(self) -> None:
        if self.destroyed:
            raise DmaBufError(errno.EINVAL, f"QP {self.qp_num:#x} was destroyed")

    def describe(self) -> dict[str, Any]:
        """Snapshot: number, state, queue depths, peer.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {"qp_num": self.qp_num, "state": self.state.name, "sq": len(self.sq),
                "rq": len(self.rq), "dest_qp_num": self.attr.dest_qp_num,
                "dlid": self.attr.ah_attr.dlid, "rnr_stalled": self.rnr_stalled}

