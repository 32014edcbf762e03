"""drivers/infiniband/hw/mlx5/cq.c: completion queues and work completions.

A completion queue (:class:`Mlx5IbCq`) is a ring of completion entries the HCA writes and the
application polls (``ibv_poll_cq``). Its capacity is what ``mlx5_ib_create_cq`` allocates:
``roundup_pow_of_two(cqe + 1)`` entries, of which ``size - 1`` are reported usable (``cq->cqe``).
Creating a CQ with ``cqe`` < 1 or above the device's ``max_cqe`` fails with ``-EINVAL``.

A completion the HCA cannot write because the ring is full is a **CQ overrun**: the hardware
raises the ``IB_EVENT_CQ_ERR`` asynchronous event and the completion is lost; the model
records the event on the CQ (:attr:`Mlx5IbCq.overrun`) and on the device's async event list.

Entries are :class:`IbWc` — ``struct ibv_wc`` with the fields the model fills.

Locking: the CQ's lock (a scheduler lock) protects the ring; :meth:`Mlx5IbCq.wait` blocks on a
condition of that lock with a timeout (for a poller on another thread than the HCA's).

Kernel: drivers/infiniband/hw/mlx5/cq.c (mlx5_ib_create_cq, mlx5_poll_one), include/rdma/
ib_verbs.h (struct ib_wc); rdma-core libibverbs/verbs.h (struct ibv_wc).
"""

from __future__ import annotations

import collections
import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dmabuf.devices.rdma.ib_verbs import IbWcOpcode, IbWcStatus, wc_status_str
from dmabuf.errors import DmaBufError

if TYPE_CHECKING:
    from dmabuf.devices.rdma.mlx5_ib import RdmaNic

__all__ = ["IbWc", "Mlx5IbCq"]


@dataclass
class IbWc:
    """One work completion — ``struct ibv_wc``.

    Attributes: wr_id, status (:class:`IbWcStatus`), opcode (:class:`IbWcOpcode`), vendor_err
    (model: ``0xFA17`` when the HCA's DMA faulted, ``0x51`` for a failed page fault), byte_len,
    qp_num, src_qp, imm_data, wc_flags, slid.
    """

    wr_id: int
    status: int
    opcode: int
    vendor_err: int = 0
    byte_len: int = 0
    qp_num: int = 0
    src_qp: int = 0
    imm_data: int = 0
    wc_flags: int = 0
    slid: int = 0
    pkey_index: int = 0

    def __repr__(self) -> str:
        try:
            op = IbWcOpcode(self.opcode).name
        except ValueError:
            op = str(self.opcode)
        return (f"<IbWc wr_id={self.wr_id} {wc_status_str(self.status)} op={op} "
                f"len={self.byte_len} qp={self.qp_num:#x}"
                f"{f' vendor_err={self.vendor_err:#x}' if self.vendor_err else ''}>")

    @property
    def ok(self) -> bool:
        """``status == IBV_WC_SUCCESS``."""
        return self.status == IbWcStatus.SUCCESS


def _roundup_pow_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


class Mlx5IbCq:
    """A completion queue — ``struct mlx5_ib_cq``.

    Args:
        device: the NIC. cqe: entries requested (1 .. ``device.max_cqe``).
    Attributes:
        cqe: usable entries reported back (``roundup_pow_of_two(cqe + 1) - 1``).
        overrun: a completion was lost because the CQ was full (``IB_EVENT_CQ_ERR``).
        completions: total completions written.
    Raises: DmaBufError(EINVAL): ``cqe`` out of range.
    Kernel: drivers/infiniband/hw/mlx5/cq.c, mlx5_ib_create_cq().
    """

    def __init__(self, device: RdmaNic, cqe: int, cqn: int) -> None:
        if isinstance(cqe, bool) or not isinstance(cqe, int):
            raise TypeError(f"cqe must be an int, not {type(cqe).__name__}")
        if cqe < 1 or cqe > device.max_cqe:
            raise DmaBufError(errno.EINVAL, f"cqe {cqe} must be in 1..{device.max_cqe}")
        self.device = device
        self.cqn = cqn
        self.size = _roundup_pow_of_two(cqe + 1)
        self.cqe = self.size - 1
        self._ring: collections.deque[IbWc] = collections.deque()
        self._lock = device.machine.sched.lock(f"{device.name}.cq{cqn}")
        self._cond = device.machine.sched.condition(self._lock, f"{device.name}.cq{cqn}.cond")
        self.overrun = False
        self.completions = 0
        self.usecnt = 0
        self.destroyed = False

    def __repr__(self) -> str:
        return f"<Mlx5IbCq {self.device.name}#{self.cqn} cqe={self.cqe} queued={len(self._ring)}>"

    def push(self, wc: IbWc) -> bool:
        """The HCA writes a completion; False (and an overrun event) when the ring is full.

        Model-only: the HCA writing a CQE is hardware; an overrun raises IB_EVENT_CQ_ERR as in mlx5.
        """
        with self._lock:
            if len(self._ring) >= self.cqe:
                self.overrun = True
                lost = True
            else:
                self._ring.append(wc)
                self.completions += 1
                self._cond.notify_all()
                lost = False
        if lost:
            self.device.async_event("CQ_ERR", cq=self.cqn)
        return not lost

    def poll(self, num_entries: int = 1) -> list[IbWc]:
        """Take up to ``num_entries`` completions, oldest first — ``ibv_poll_cq``.

        Raises: DmaBufError(EINVAL): ``num_entries`` < 0.

        Kernel: drivers/infiniband/hw/mlx5/cq.c, mlx5_ib_poll_cq().
        """
        if num_entries < 0:
            raise DmaBufError(errno.EINVAL, "num_entries must be >= 0")
        with self._lock:
            n = min(num_entries, len(self._ring))
            return [self._ring.popleft() for _ in range(n)]

    def wait(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` completions are queued or ``timeout`` seconds pass.

        Context: may block (scheduler condition); never holds another lock.
        Returns: True if ``count`` completions are available.

        Model-only: blocking wait standing in for ibv_req_notify_cq() + the completion channel.
        """
        m = self.device.machine
        end = m.sched.now() + timeout
        with self._lock:
            while len(self._ring) < count:
                left = end - m.sched.now()
                if left <= 0:
                    return False
                self._cond.wait(left, what=f"{self.device.name} cq{self.cqn} completions")
            return True

    def __len__(self) -> int:
        return len(self._ring)
