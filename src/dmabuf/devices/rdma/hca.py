"""The HCA's transport engine: executing work requests, moving real bytes through MKeys (hardware).

The kernel has no such file: this is the ConnectX silicon the driver programs. When a send
queue's doorbell rings, :meth:`Hca.process_sq` executes the queue in order, in the posting
thread (the model's HCA runs synchronously with the doorbell):

1. **requester checks** — each local SGE's lkey must name a live MKey of this device, in the QP's
   PD, covering the range, with ``LOCAL_WRITE`` where the HCA writes (RDMA READ and atomic
   results): else ``IBV_WC_LOC_PROT_ERR``;
2. **transport** — the request travels to ``ah_attr.dlid`` (:class:`~dmabuf.devices.rdma.network.
   IbSubnet`); a port down, an unknown LID, no QP ``dest_qp_num`` there, or a responder not in
   RTR/RTS drops it and the requester ends with ``IBV_WC_RETRY_EXC_ERR``. SEND and RDMA WRITE
   with immediate need a receive WQE at the responder: without one the request is RNR-NAKed —
   with ``rnr_retry == 7`` (infinite) the WQE waits at the head of the queue until the responder
   posts a receive, otherwise ``IBV_WC_RNR_RETRY_EXC_ERR``;
3. **responder checks** — the QP must allow the operation (``qp_access_flags``: else
   ``IBV_WC_REM_INV_REQ_ERR``); the rkey must name a live MKey of the responder in the
   responder QP's PD, covering the range, with the remote right (else
   ``IBV_WC_REM_ACCESS_ERR``); a receive buffer too small is ``IBV_WC_LOC_LEN_ERR`` at the
   responder and ``IBV_WC_REM_INV_REQ_ERR`` at the requester; a bad receive lkey is
   ``IBV_WC_LOC_PROT_ERR`` at the responder and ``IBV_WC_REM_OP_ERR`` at the requester;
4. **data movement** — every MKey involved is locked (its hardware lock, in a global order), each
   range is translated through the MKey's MTT into DMA addresses, the DMA addresses through the
   owning NIC's DMA view (IOMMU page table or PCIe bus decode: :class:`~dmabuf.buf.dma_engine.
   DmaEngine`, which also checks every page still belongs to the owners the MKey was loaded
   for), and the bytes are copied by numpy (one ``np.copyto`` per physically contiguous piece).
   A non-present MTT entry on an ODP key releases the locks and raises a **page fault** handled
   by the key's driver (:func:`~dmabuf.devices.rdma.odp.mlx5_ib_page_fault`: remap under the
   reservation lock), then the transfer is retried; on a non-ODP key (pinned, revoked, disabled)
   it is a protection error. A DMA fault (:class:`~dmabuf.errors.IommuFault`: unmapped IOVA,
   freed/poisoned/reassigned page — a stale translation) completes the request with the local
   (``LOC_PROT_ERR``) or remote (``REM_ACCESS_ERR``) error and ``vendor_err = 0xFA17``;
5. **completions** — on the requester's send CQ if signalled (or ``sq_sig_all``) or failed; on the
   responder's receive CQ for consumed receives. Any error moves the QP(s) involved to ERR and
   flushes their outstanding work with ``IBV_WC_WR_FLUSH_ERR``.

Model notes: no PSNs, retransmission timers or packetisation (a message moves at once); atomics
are 8-byte compare-and-swap / fetch-and-add executed under the MKey locks (atomic with respect to
other HCA operations, as the hardware guarantees); the vendor syndromes are the model's own.

Locking (order): QP ``sq_lock`` → (a responder's ``rq_lock``, only to pop) → dma-buf
reservation lock (page faults) → MKey hardware locks (sorted). No lock is held while a page fault
waits for the exporter, except the requester's ``sq_lock``.

Kernel: none (hardware: the HCA the mlx5 driver programs). Related: drivers/infiniband/hw/mlx5/
odp.c (the page-fault events it raises), IB spec vol. 1 ch. 9 (transport, NAK codes) and 10.8
(completion statuses).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dmabuf.devices.rdma.cq import IbWc
from dmabuf.devices.rdma.ib_verbs import (
    IbAccess,
    IbQpState,
    IbSendFlags,
    IbWcFlags,
    IbWcOpcode,
    IbWcStatus,
    IbWrOpcode,
)
from dmabuf.devices.rdma.network import IbSubnet
from dmabuf.devices.rdma.odp import mlx5_ib_page_fault
from dmabuf.devices.rdma.qp import IbSendWr, IbSge, Mlx5IbQp, wr_to_wc_opcode
from dmabuf.devices.rdma.umr import Mlx5Mkey
from dmabuf.errors import DmaBufError, IommuFault
from dmabuf.mm.ranges import RANGE_DTYPE

if TYPE_CHECKING:
    from dmabuf.devices.rdma.mlx5_ib import RdmaNic
    from dmabuf.devices.rdma.mr import Mlx5IbMr

__all__ = ["MAX_FAULT_RETRIES", "VENDOR_ERR_DMA_FAULT", "VENDOR_ERR_PAGE_FAULT", "Hca"]

#: ``vendor_err`` of a completion whose DMA faulted (IOMMU fault / stale page) — model value.
VENDOR_ERR_DMA_FAULT = 0xFA17
#: ``vendor_err`` of a completion whose ODP page fault could not be resolved — model value.
VENDOR_ERR_PAGE_FAULT = 0x51
#: Page faults one transfer may take before it gives up (an exporter moving the buffer again
#: and again between fault and retry).
MAX_FAULT_RETRIES = 64

_SEND_OPS = (IbWrOpcode.SEND, IbWrOpcode.SEND_WITH_IMM)
_WRITE_OPS = (IbWrOpcode.RDMA_WRITE, IbWrOpcode.RDMA_WRITE_WITH_IMM)
_ATOMIC_OPS = (IbWrOpcode.ATOMIC_CMP_AND_SWP, IbWrOpcode.ATOMIC_FETCH_AND_ADD)


@dataclass
class _Seg:
    """One range of one MKey the transfer touches."""

    dev: RdmaNic
    mr: Mlx5IbMr
    va: int
    length: int
    remote: bool

    @property
    def mk(self) -> Mlx5Mkey:
        return self.mr.mmkey


class _SegError(Exception):
    """A segment could not be accessed (protection, DMA fault, failed page fault)."""

    def __init__(self, seg: _Seg | None, vendor_err: int, why: str) -> None:
        super().__init__(why)
        self.seg = seg
        self.vendor_err = vendor_err
        self.why = why


class _Outcome:
    """Result of one send WQE: requester status, byte count, vendor error; or RNR wait."""

    __slots__ = ("byte_len", "status", "vendor_err")

    def __init__(self, status: int, byte_len: int = 0, vendor_err: int = 0) -> None:
        self.status = status
        self.byte_len = byte_len
        self.vendor_err = vendor_err


_RNR_WAIT = _Outcome(-1)


class Hca:
    """The transport engine of one NIC (see the module docstring).

    Attributes:
        device: the NIC.
        executed / failed: send WQEs completed successfully / with an error.
        page_faults: page faults this engine raised (requester or responder side).
        dma_faults: transfers stopped by a DMA fault.
    """

    def __init__(self, device: RdmaNic) -> None:
        self.device = device
        self.executed = 0
        self.failed = 0
        self.page_faults = 0
        self.dma_faults = 0

    def __repr__(self) -> str:
        return f"<Hca {self.device.name} executed={self.executed} failed={self.failed}>"

    # ------------------------------------------------------------------ queue execution
    def process_sq(self, qp: Mlx5IbQp) -> None:
        """Execute ``qp``'s send queue until it is empty, RNR-blocked or the QP failed.

        Context: takes ``qp.sq_lock`` (blocks while another thread executes the queue); may
            block in page faults (reservation locks, exporter fences).

        Model-only: the HCA transport engine is hardware.
        """
        with qp.sq_lock:
            while qp.sq:
                if qp.state == IbQpState.ERR:
                    qp._flush_sq_locked()
                    return
                wr = qp.sq[0]
                out = self._execute(qp, wr)
                if out is _RNR_WAIT:
                    qp.rnr_stalled = True
                    return
                qp.sq.popleft()
                qp.rnr_stalled = False
                ok = out.status == IbWcStatus.SUCCESS
                if ok:
                    self.executed += 1
                else:
                    self.failed += 1
                if not ok or wr.send_flags & IbSendFlags.SIGNALED or qp.sq_sig_all:
                    qp.send_cq.push(IbWc(wr.wr_id, out.status, wr_to_wc_opcode(wr.opcode),
                                         vendor_err=out.vendor_err, byte_len=out.byte_len,
                                         qp_num=qp.qp_num))
                if not ok:
                    qp.set_error()          # flushes the RQ now, the SQ in the next iteration

    def kick_remote(self, rqp: Mlx5IbQp) -> None:
        """A receive was posted on ``rqp``: resume the connected requester if it is RNR-stalled.

        Model-only: the HCA transport engine is hardware.
        """
        peer = self._peer_of(rqp)
        if peer is not None and peer.rnr_stalled:
            peer.device.hca.process_sq(peer)

    def _peer_of(self, qp: Mlx5IbQp) -> Mlx5IbQp | None:
        port = self.device.ports.get(qp.attr.port_num)
        if port is None:
            return None
        dst = IbSubnet.of(self.device.machine).route(port, qp.attr.ah_attr.dlid)
        if dst is None:
            return None
        return dst.device.qps.get(qp.attr.dest_qp_num)

    # ------------------------------------------------------------------ one WQE
    def _execute(self, qp: Mlx5IbQp, wr: IbSendWr) -> _Outcome:
        op = IbWrOpcode(wr.opcode)
        total = wr.length
        try:
            local = [] if wr.inline_data is not None else \
                self._local_segs(qp, wr.sg_list, write=op is IbWrOpcode.RDMA_READ
                                 or op in _ATOMIC_OPS)
        except _SegError as e:
            return _Outcome(IbWcStatus.LOC_PROT_ERR, 0, e.vendor_err)
        rqp = self._peer_of(qp)
        if rqp is None or rqp.destroyed or rqp.state not in (IbQpState.RTR, IbQpState.RTS) \
                or rqp.attr.dest_qp_num != qp.qp_num:
            return _Outcome(IbWcStatus.RETRY_EXC_ERR)
        recv = None
        if op in _SEND_OPS or op is IbWrOpcode.RDMA_WRITE_WITH_IMM:
            recv = rqp.pop_recv()
            if recv is None:
                if qp.attr.rnr_retry == 7:
                    return _RNR_WAIT
                return _Outcome(IbWcStatus.RNR_RETRY_EXC_ERR)
        if op in _SEND_OPS:
            return self._send(qp, rqp, wr, local, recv, total)
        needed = {IbWrOpcode.RDMA_WRITE: IbAccess.REMOTE_WRITE,
                  IbWrOpcode.RDMA_WRITE_WITH_IMM: IbAccess.REMOTE_WRITE,
                  IbWrOpcode.RDMA_READ: IbAccess.REMOTE_READ,
                  IbWrOpcode.ATOMIC_CMP_AND_SWP: IbAccess.REMOTE_ATOMIC,
                  IbWrOpcode.ATOMIC_FETCH_AND_ADD: IbAccess.REMOTE_ATOMIC}[op]
        if not rqp.attr.qp_access_flags & needed:
            return self._responder_fail(rqp, recv, IbWcStatus.REM_INV_REQ_ERR, None)
        if op in _ATOMIC_OPS:
            if total != 8 or len(local) != 1:
                return _Outcome(IbWcStatus.LOC_LEN_ERR)
            if wr.remote_addr & 7:
                return self._responder_fail(rqp, recv, IbWcStatus.REM_INV_REQ_ERR, None)
        try:
            remote = self._remote_seg(rqp, wr.rkey, wr.remote_addr, total, needed)
        except _SegError as e:
            return self._responder_fail(rqp, recv, IbWcStatus.REM_ACCESS_ERR, e)
        try:
            if op in _WRITE_OPS:
                self._move(local, remote, wr.inline_data)
            elif op is IbWrOpcode.RDMA_READ:
                self._move(remote, local, None)
            else:
                self._atomic(remote, local, op, wr.compare_add, wr.swap)
        except _SegError as e:
            if e.seg is not None and e.seg.remote:
                return self._responder_fail(rqp, recv, IbWcStatus.REM_ACCESS_ERR, e)
            if recv is not None:
                self._recv_done(rqp, recv, IbWcStatus.WR_FLUSH_ERR, 0, qp, wr)
            return _Outcome(IbWcStatus.LOC_PROT_ERR, 0, e.vendor_err)
        self._count(qp, rqp, total)
        if recv is not None:        # RDMA WRITE with immediate
            self._recv_done(rqp, recv, IbWcStatus.SUCCESS, total, qp, wr,
                            opcode=IbWcOpcode.RECV_RDMA_WITH_IMM)
        return _Outcome(IbWcStatus.SUCCESS, total)

    def _send(self, qp: Mlx5IbQp, rqp: Mlx5IbQp, wr: IbSendWr, local: list[_Seg],
              recv: Any, total: int) -> _Outcome:
        try:
            rsegs = self._local_segs(rqp, recv.sg_list, write=True, remote=True)
        except _SegError:
            self._recv_done(rqp, recv, IbWcStatus.LOC_PROT_ERR, 0, qp, wr)
            rqp.set_error()
            return _Outcome(IbWcStatus.REM_OP_ERR)
        room = sum(s.length for s in rsegs)
        if total > room:
            self._recv_done(rqp, recv, IbWcStatus.LOC_LEN_ERR, 0, qp, wr)
            rqp.set_error()
            return _Outcome(IbWcStatus.REM_INV_REQ_ERR)
        dst = _truncate(rsegs, total)
        try:
            self._move(local, dst, wr.inline_data)
        except _SegError as e:
            if e.seg is not None and e.seg.remote:
                self._recv_done(rqp, recv, IbWcStatus.LOC_PROT_ERR, 0, qp, wr,
                                vendor_err=e.vendor_err)
                rqp.set_error()
                return _Outcome(IbWcStatus.REM_OP_ERR, 0, e.vendor_err)
            self._recv_done(rqp, recv, IbWcStatus.WR_FLUSH_ERR, 0, qp, wr)
            return _Outcome(IbWcStatus.LOC_PROT_ERR, 0, e.vendor_err)
        self._count(qp, rqp, total)
        self._recv_done(rqp, recv, IbWcStatus.SUCCESS, total, qp, wr)
        return _Outcome(IbWcStatus.SUCCESS, total)

    def _responder_fail(self, rqp: Mlx5IbQp, recv: Any, status: int,
                        err: _SegError | None) -> _Outcome:
        """A class-C responder error: NAK, responder QP to ERR, requester completes ``status``."""
        if recv is not None:
            with rqp.rq_lock:
                rqp.rq.appendleft(recv)     # not consumed; flushed by the error below
        rqp.set_error()
        return _Outcome(status, 0, 0 if err is None else err.vendor_err)

    def _recv_done(self, rqp: Mlx5IbQp, recv: Any, status: int, byte_len: int, qp: Mlx5IbQp,
                   wr: IbSendWr, *, opcode: int = IbWcOpcode.RECV, vendor_err: int = 0) -> None:
        imm = wr.opcode in (IbWrOpcode.SEND_WITH_IMM, IbWrOpcode.RDMA_WRITE_WITH_IMM)
        port = qp.device.ports.get(qp.attr.port_num)
        rqp.recv_cq.push(IbWc(recv.wr_id, status, opcode, vendor_err=vendor_err,
                              byte_len=byte_len, qp_num=rqp.qp_num, src_qp=qp.qp_num,
                              imm_data=wr.imm_data if imm else 0,
                              wc_flags=int(IbWcFlags.WITH_IMM) if imm and status == 0 else 0,
                              slid=port.lid if port is not None else 0))

    def _count(self, qp: Mlx5IbQp, rqp: Mlx5IbQp, n: int) -> None:
        sp = qp.device.ports.get(qp.attr.port_num)
        dp = rqp.device.ports.get(rqp.attr.port_num)
        if sp is not None:
            sp.tx_bytes += n
        if dp is not None:
            dp.rx_bytes += n

    # ------------------------------------------------------------------ key checks
    def _local_segs(self, qp: Mlx5IbQp, sges: list[IbSge], *, write: bool,
                    remote: bool = False) -> list[_Seg]:
        dev = qp.device
        out = []
        for s in sges:
            if s.length == 0:
                continue
            mr = dev.lookup_mr(s.lkey)
            if mr is None or mr.pd is not qp.pd:
                raise _SegError(None, 0, f"lkey {s.lkey:#x} is not an MR of QP {qp.qp_num:#x}'s "
                                "PD")
            if not mr.mmkey.in_bounds(s.addr, s.length):
                raise _SegError(None, 0, f"[{s.addr:#x}+{s.length:#x}) outside MR "
                                f"{s.lkey:#x}")
            if write and not mr.access & IbAccess.LOCAL_WRITE:
                raise _SegError(None, 0, f"MR {s.lkey:#x} has no LOCAL_WRITE")
            out.append(_Seg(dev, mr, s.addr, s.length, remote))
        return out

    def _remote_seg(self, rqp: Mlx5IbQp, rkey: int, addr: int, length: int,
                    right: IbAccess) -> list[_Seg]:
        if length == 0:
            return []
        dev = rqp.device
        mr = dev.lookup_mr(rkey)
        if mr is None or mr.pd is not rqp.pd:
            raise _SegError(None, 0, f"rkey {rkey:#x} is not an MR of the responder's PD")
        if not mr.mmkey.in_bounds(addr, length):
            raise _SegError(None, 0, f"[{addr:#x}+{length:#x}) outside MR {rkey:#x}")
        if not mr.access & right:
            raise _SegError(None, 0, f"MR {rkey:#x} does not grant {right.name}")
        return [_Seg(dev, mr, addr, length, True)]

    # ------------------------------------------------------------------ data movement
    def _move(self, src: list[_Seg], dst: list[_Seg], inline: bytes | None) -> None:
        def copy(sp: list[np.ndarray], dp: list[np.ndarray]) -> None:
            phys = self.device.phys
            d = _cat(dp)
            if inline is not None:
                phys.write(d, np.frombuffer(inline, dtype=np.uint8))
            else:
                phys.copy(d, _cat(sp))

        self._locked(src, dst, copy, src_write=False)

    def _atomic(self, remote: list[_Seg], local: list[_Seg], op: IbWrOpcode, compare_add: int,
                swap: int) -> None:
        def rmw(rp: list[np.ndarray], lp: list[np.ndarray]) -> None:
            phys = self.device.phys
            r = _cat(rp)
            old = int(np.frombuffer(phys.read(r).tobytes(), dtype="<u8")[0])
            if op is IbWrOpcode.ATOMIC_FETCH_AND_ADD:
                new = (old + compare_add) & ((1 << 64) - 1)
            else:
                new = swap if old == compare_add else old
            phys.write(r, np.frombuffer(new.to_bytes(8, "little"), dtype=np.uint8))
            phys.write(_cat(lp), np.frombuffer(old.to_bytes(8, "little"), dtype=np.uint8))

        self._locked(remote, local, rmw, src_write=True)

    def _locked(self, src: list[_Seg], dst: list[_Seg],
                action: Callable[[list[np.ndarray], list[np.ndarray]], None], *,
                src_write: bool) -> None:
        """Lock every MKey, translate, check, run ``action(src_phys, dst_phys)``; fault-retry."""
        for _ in range(MAX_FAULT_RETRIES):
            segs = src + dst
            keys: dict[int, Mlx5Mkey] = {}
            for s in segs:
                keys.setdefault(id(s.mk), s.mk)
            ordered = sorted(keys.values(), key=lambda k: k.order)
            fault: _Seg | None = None
            for k in ordered:
                k.hw_lock.acquire()
            try:
                for s in segs:
                    if not s.mk.enabled or s.mr.deregistered:
                        raise _SegError(s, 0, f"MKey {s.mk.key:#x} is disabled")
                dmas: list[tuple[_Seg, np.ndarray]] = []
                for s in segs:
                    d = s.mk.xlate(s.va, s.length)
                    if d is None:
                        fault = s
                        break
                    dmas.append((s, d))
                if fault is None:
                    nsrc = len(src)
                    sp = [self._resolve(s, d, src_write) for s, d in dmas[:nsrc]]
                    dp = [self._resolve(s, d, True) for s, d in dmas[nsrc:]]
                    action(sp, dp)
                    return
            finally:
                for k in reversed(ordered):
                    k.hw_lock.release()
            # the page fault runs with no MKey lock held
            assert fault is not None
            if not fault.mk.odp:
                raise _SegError(fault, 0, f"MKey {fault.mk.key:#x}: translation not present "
                                "and the key is not an ODP key")
            self.page_faults += 1
            try:
                mlx5_ib_page_fault(fault.dev, fault.mk.key, fault.va, fault.length)
            except DmaBufError as e:
                raise _SegError(fault, VENDOR_ERR_PAGE_FAULT,
                                f"page fault on MKey {fault.mk.key:#x} failed: {e}") from e
        raise _SegError(src[0] if src else (dst[0] if dst else None), VENDOR_ERR_PAGE_FAULT,
                        f"{MAX_FAULT_RETRIES} page faults in one transfer: the buffer keeps "
                        "moving")

    def _resolve(self, s: _Seg, dma: np.ndarray, write: bool) -> np.ndarray:
        try:
            return s.dev.engine.resolve(dma, owner=s.mk.owners,
                                        op=f"rdma.{'write' if write else 'read'}", write=write)
        except IommuFault as f:
            self.dma_faults += 1
            raise _SegError(s, VENDOR_ERR_DMA_FAULT, f"DMA fault: {f}") from f


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=RANGE_DTYPE)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _truncate(segs: list[_Seg], total: int) -> list[_Seg]:
    out = []
    left = total
    for s in segs:
        if left <= 0:
            break
        n = min(s.length, left)
        out.append(_Seg(s.dev, s.mr, s.va, n, s.remote))
        left -= n
    return out

