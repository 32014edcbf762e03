"""RDMA queue pairs and the HCA: state machine, posting rules, data movement, error completions.

Host-memory MRs on the reference fabric (``nic0`` under the switch, ``nic1`` on its own root
port, both on the machine's subnet); loopback pairs use one NIC.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import numpy as np
import pytest

from dmabuf.devices.platform import Platform
from dmabuf.devices.rdma import IbSubnet
from dmabuf.devices.rdma import verbs as v
from dmabuf.machine import Machine

from .test_rdma_support import ACCESS_RW, RcPair, make_platform, pattern, rc_pair, rdma_write

L, RW, RR, RA = (v.IBV_ACCESS_LOCAL_WRITE, v.IBV_ACCESS_REMOTE_WRITE, v.IBV_ACCESS_REMOTE_READ,
                 v.IBV_ACCESS_REMOTE_ATOMIC)
ALL = L | RW | RR | RA


@pytest.fixture
def platform(machine: Machine) -> Iterator[Platform]:
    p = make_platform(machine, gpus=())
    yield p
    p.close()


@pytest.fixture
def ctxs(platform: Platform) -> Iterator[tuple[v.Context, v.Context]]:
    a, b = v.Context(platform, "nic0"), v.Context(platform, "nic1")
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def pair(ctxs: tuple[v.Context, v.Context]) -> Iterator[RcPair]:
    p = rc_pair(*ctxs)
    yield p
    p.close()


def _err(ei: pytest.ExceptionInfo[v.PyverbsRDMAError]) -> int:
    return ei.value.error_code


# ------------------------------------------------------------------ state machine
def test_qp_state_transitions(ctxs: tuple[v.Context, v.Context]) -> None:
    a, _ = ctxs
    pd = v.PD(a)
    cq = v.CQ(a, 8)
    qp = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(4, 4)))
    assert qp.qp_state == v.IBV_QPS_RESET
    with pytest.raises(v.PyverbsRDMAError) as ei:           # RESET -> RTR does not exist
        qp.to_rtr(v.QPAttr())
    assert _err(ei) == errno.EINVAL and qp.qp_state == v.IBV_QPS_RESET
    with pytest.raises(v.PyverbsRDMAError) as ei:           # INIT needs the port
        qp.modify(v.QPAttr(qp_state=v.IBV_QPS_INIT), v.IBV_QP_STATE | v.IBV_QP_PKEY_INDEX
                  | v.IBV_QP_ACCESS_FLAGS)
    assert _err(ei) == errno.EINVAL
    with pytest.raises(v.PyverbsRDMAError) as ei:           # no such port
        qp.to_init(v.QPAttr(port_num=3))
    assert _err(ei) == errno.EINVAL
    qp.to_init(v.QPAttr(qp_access_flags=L | RW))
    assert qp.qp_state == v.IBV_QPS_INIT
    with pytest.raises(v.PyverbsRDMAError) as ei:           # INIT -> RTS skips RTR
        qp.to_rts(v.QPAttr())
    assert _err(ei) == errno.EINVAL
    with pytest.raises(v.PyverbsRDMAError) as ei:           # CUR_STATE not from INIT
        qp.modify(v.QPAttr(qp_state=v.IBV_QPS_INIT, cur_qp_state=v.IBV_QPS_INIT),
                  v.IBV_QP_STATE | v.IBV_QP_CUR_STATE)
    assert _err(ei) == errno.EINVAL
    qp.to_rtr(v.QPAttr(dest_qp_num=qp.qp_num, ah_attr=v.AHAttr(dlid=a.query_port().lid)))
    qp.to_rts(v.QPAttr())
    assert qp.qp_state == v.IBV_QPS_RTS
    qp.modify(v.QPAttr(qp_access_flags=L), v.IBV_QP_ACCESS_FLAGS)    # RTS -> RTS
    attr, init = qp.query()
    assert (attr.qp_state, attr.qp_access_flags, attr.dest_qp_num) == (v.IBV_QPS_RTS, L,
                                                                       qp.qp_num)
    assert init.cap.max_send_wr == 4
    qp.modify(v.QPAttr(qp_state=v.IBV_QPS_ERR), v.IBV_QP_STATE)
    with pytest.raises(v.PyverbsRDMAError):
        qp.modify(v.QPAttr(qp_state=v.IBV_QPS_RTS), v.IBV_QP_STATE)
    qp.modify(v.QPAttr(qp_state=v.IBV_QPS_RESET), v.IBV_QP_STATE)
    assert qp.qp_state == v.IBV_QPS_RESET
    qp.close()
    qp.close()


def test_create_qp_rejects(ctxs: tuple[v.Context, v.Context]) -> None:
    a, b = ctxs
    pd = v.PD(a)
    cq = v.CQ(a, 8)
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.QP(pd, v.QPInitAttr(qp_type=v.IBV_QPT_UD, scq=cq, rcq=cq))
    assert _err(ei) == errno.EOPNOTSUPP
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.QP(pd, v.QPInitAttr(scq=cq, rcq=None))
    assert _err(ei) == errno.EINVAL
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(max_send_sge=31)))
    assert _err(ei) == errno.EINVAL
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.QP(pd, v.QPInitAttr(scq=v.CQ(b, 8), rcq=cq))      # CQ of another device
    assert _err(ei) == errno.EINVAL
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.CQ(a, 0)
    assert _err(ei) == errno.EINVAL
    assert v.CQ(a, 5).cqe == 7                             # roundup_pow_of_two(cqe + 1) - 1


def test_posting_rules(ctxs: tuple[v.Context, v.Context]) -> None:
    a, _ = ctxs
    pd = v.PD(a)
    cq = v.CQ(a, 16)
    mr = v.MR(pd, 4096, ALL)
    qp = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(2, 2, 1, 1, 16)))
    sge = v.SGE(mr.buf, 8, mr.lkey)
    with pytest.raises(v.PyverbsRDMAError) as ei:
        qp.post_recv(v.RecvWR(1, 1, [sge]))                # RESET
    assert _err(ei) == errno.EINVAL
    qp.to_init(v.QPAttr(qp_access_flags=ALL))
    qp.post_recv(v.RecvWR(1, 1, [sge]))                    # allowed from INIT
    with pytest.raises(v.PyverbsRDMAError) as ei:
        qp.post_send(v.SendWR(1, sg=[sge]))                # INIT: immediate error
    assert _err(ei) == errno.EINVAL
    lid = a.query_port().lid
    qp.to_rtr(v.QPAttr(dest_qp_num=qp.qp_num, ah_attr=v.AHAttr(dlid=lid)))
    with pytest.raises(v.PyverbsRDMAError) as ei:
        qp.post_send(v.SendWR(1, sg=[sge]))                # RTR: still an error
    assert _err(ei) == errno.EINVAL
    qp.to_rts(v.QPAttr())
    with pytest.raises(v.PyverbsRDMAError) as ei:
        qp.post_send(v.SendWR(1, sg=[sge, sge]))           # max_send_sge 1
    assert _err(ei) == errno.EINVAL
    with pytest.raises(v.PyverbsRDMAError) as ei:
        qp.post_recv(v.RecvWR(1, 2, [sge, sge]))
    assert _err(ei) == errno.EINVAL
    with pytest.raises(v.PyverbsRDMAError) as ei:          # inline > max_inline_data
        qp.post_send(v.SendWR(1, sg=[v.SGE(mr.buf, 32, 0)],
                              send_flags=v.IBV_SEND_INLINE | v.IBV_SEND_SIGNALED))
    assert _err(ei) == errno.EINVAL
    qp.post_recv(v.RecvWR(2, 1, [sge]))
    with pytest.raises(v.PyverbsRDMAError) as ei:          # RQ of 2 is full
        qp.post_recv(v.RecvWR(3, 1, [sge]))
    assert _err(ei) == errno.ENOMEM
    with pytest.raises(v.PyverbsRDMAError) as ei:          # unknown opcode
        qp.post_send(v.SendWR(1, opcode=42, sg=[sge]))
    assert _err(ei) == errno.EINVAL


# ------------------------------------------------------------------ data movement
@pytest.mark.parametrize("loopback", [False, True])
def test_rdma_write_read_send_atomics(ctxs: tuple[v.Context, v.Context], loopback: bool) -> None:
    a, b = ctxs
    pair = rc_pair(a, a if loopback else b, access=ALL)
    n = 300_000
    src = v.MR(pair.pd_a, n, ALL)
    dst = v.MR(pair.pd_b, n, ALL)
    data = pattern(n, 1)
    src.write(data, n)
    # RDMA WRITE, two SGEs gathered, at an offset in the target
    wr = v.SendWR(1, opcode=v.IBV_WR_RDMA_WRITE, sg=[v.SGE(src.buf, 1000, src.lkey),
                                                      v.SGE(src.buf + 5000, n - 5000,
                                                            src.lkey)])
    wr.set_wr_rdma(dst.rkey, dst.buf + 7)
    pair.qp_a.post_send(wr)
    (wc,) = v.poll_cq(pair.cq_a)
    assert (wc.opcode, wc.byte_len, wc.wr_id) == (v.IBV_WC_RDMA_WRITE, n - 4000, 1)
    assert dst.read(n - 4000, 7) == data[:1000] + data[5000:]
    # RDMA READ back into src (scattered)
    src.write(b"\0" * n, n)
    rd = v.SendWR(2, opcode=v.IBV_WR_RDMA_READ, sg=[v.SGE(src.buf, 4096, src.lkey),
                                                     v.SGE(src.buf + 8192, 4096, src.lkey)])
    rd.set_wr_rdma(dst.rkey, dst.buf + 7)
    pair.qp_a.post_send(rd)
    (wc,) = v.poll_cq(pair.cq_a)
    assert (wc.opcode, wc.byte_len) == (v.IBV_WC_RDMA_READ, 8192)
    assert src.read(4096) + src.read(4096, 8192) == (data[:1000] + data[5000:])[:8192]
    # SEND with immediate into a posted receive
    pair.qp_b.post_recv(v.RecvWR(9, 1, [v.SGE(dst.buf, n, dst.lkey)]))
    src.write(data, n)
    pair.qp_a.post_send(v.SendWR(3, opcode=v.IBV_WR_SEND_WITH_IMM, imm_data=0xBEEF,
                                 sg=[v.SGE(src.buf + 10, 5000, src.lkey)]))
    v.poll_cq(pair.cq_a)
    (rwc,) = v.poll_cq(pair.cq_b)
    assert (rwc.opcode, rwc.byte_len, rwc.wr_id, rwc.imm_data) == (v.IBV_WC_RECV, 5000, 9,
                                                                   0xBEEF)
    assert rwc.wc_flags & v.IBV_WC_WITH_IMM and rwc.src_qp == pair.qp_a.qp_num
    assert dst.read(5000) == data[10:5010]
    # RDMA WRITE with immediate consumes a receive
    pair.qp_b.post_recv(v.RecvWR(10, 0, []))
    w = v.SendWR(4, opcode=v.IBV_WR_RDMA_WRITE_WITH_IMM, imm_data=7,
                 sg=[v.SGE(src.buf, 64, src.lkey)])
    w.set_wr_rdma(dst.rkey, dst.buf + 100_000)
    pair.qp_a.post_send(w)
    v.poll_cq(pair.cq_a)
    (rwc,) = v.poll_cq(pair.cq_b)
    assert (rwc.opcode, rwc.byte_len, rwc.imm_data) == (v.IBV_WC_RECV_RDMA_WITH_IMM, 64, 7)
    assert dst.read(64, 100_000) == data[:64]
    # atomics on an 8-byte word of dst
    dst.write((41).to_bytes(8, "little"), 8, 4096)
    fa = v.SendWR(5, opcode=v.IBV_WR_ATOMIC_FETCH_AND_ADD, sg=[v.SGE(src.buf, 8, src.lkey)])
    fa.set_wr_atomic(dst.rkey, dst.buf + 4096, 1)
    pair.qp_a.post_send(fa)
    (wc,) = v.poll_cq(pair.cq_a)
    assert wc.opcode == v.IBV_WC_FETCH_ADD
    assert int.from_bytes(src.read(8), "little") == 41
    assert int.from_bytes(dst.read(8, 4096), "little") == 42
    cs = v.SendWR(6, opcode=v.IBV_WR_ATOMIC_CMP_AND_SWP, sg=[v.SGE(src.buf, 8, src.lkey)])
    cs.set_wr_atomic(dst.rkey, dst.buf + 4096, 42, 1000)
    pair.qp_a.post_send(cs)
    v.poll_cq(pair.cq_a)
    assert int.from_bytes(dst.read(8, 4096), "little") == 1000
    assert int.from_bytes(src.read(8), "little") == 42
    port_a = a.device.ports[1]
    assert port_a.tx_bytes >= n - 4000
    for o in (src, dst):
        o.close()
    pair.close()


def test_inline_send_and_unsignalled(ctxs: tuple[v.Context, v.Context]) -> None:
    a, b = ctxs
    pair = rc_pair(a, b, sq_sig_all=0)
    src = v.MR(pair.pd_a, 4096, ALL)
    dst = v.MR(pair.pd_b, 4096, ALL)
    src.write(b"inline!!", 8)
    pair.qp_b.post_recv(v.RecvWR(1, 1, [v.SGE(dst.buf, 64, dst.lkey)]))
    pair.qp_a.post_send(v.SendWR(1, sg=[v.SGE(src.buf, 8, 0)],
                                 send_flags=v.IBV_SEND_INLINE))   # lkey ignored, unsignalled
    assert pair.cq_a.poll(4) == (0, [])
    (rwc,) = v.poll_cq(pair.cq_b)
    assert rwc.byte_len == 8 and dst.read(8) == b"inline!!"
    for o in (src, dst):
        o.close()
    pair.close()


# ------------------------------------------------------------------ access violations
def _two_mrs(pair: RcPair, src_access: int = ALL, dst_access: int = ALL) -> tuple[v.MR, v.MR]:
    src = v.MR(pair.pd_a, 65536, src_access)
    dst = v.MR(pair.pd_b, 65536, dst_access)
    src.write(pattern(65536, 2), 65536)
    return src, dst


def _flushed_after_error(pair: RcPair) -> None:
    """After an error both QPs are in ERR and new work completes with WR_FLUSH_ERR."""
    assert pair.qp_a.qp_state == v.IBV_QPS_ERR
    pair.qp_a.post_send(v.SendWR(77, opcode=v.IBV_WR_RDMA_WRITE, sg=[]))
    (wc,) = pair.cq_a.poll(1)[1]
    assert (wc.status, wc.wr_id) == (v.IBV_WC_WR_FLUSH_ERR, 77)


def test_wrong_rkey(pair: RcPair) -> None:
    src, dst = _two_mrs(pair)
    wr = v.SendWR(1, opcode=v.IBV_WR_RDMA_WRITE, sg=[v.SGE(src.buf, 16, src.lkey)])
    wr.set_wr_rdma(dst.rkey ^ 0x1, dst.buf)                  # wrong variant byte
    pair.qp_a.post_send(wr)
    (wc,) = pair.cq_a.poll(1)[1]
    assert wc.status == v.IBV_WC_REM_ACCESS_ERR
    assert pair.qp_b.qp_state == v.IBV_QPS_ERR               # class-C error at the responder
    assert dst.read(16) == b"\0" * 16
    _flushed_after_error(pair)


def test_out_of_bounds_remote_and_local(ctxs: tuple[v.Context, v.Context]) -> None:
    pair = rc_pair(*ctxs)
    src, dst = _two_mrs(pair)
    wc = rdma_write(pair, src, dst, 4096, dst_off=65536 - 100)
    assert wc.status == v.IBV_WC_REM_ACCESS_ERR
    pair2 = rc_pair(*ctxs)
    src2, dst2 = _two_mrs(pair2)
    wc = rdma_write(pair2, src2, dst2, 4096, src_off=65536 - 100)
    assert wc.status == v.IBV_WC_LOC_PROT_ERR
    assert pair2.qp_b.qp_state == v.IBV_QPS_RTS               # local errors stay local
    pair.close()
    pair2.close()


def test_write_to_read_only_mr(ctxs: tuple[v.Context, v.Context]) -> None:
    pair = rc_pair(*ctxs)
    src, dst = _two_mrs(pair, dst_access=L | RR)              # no REMOTE_WRITE
    assert rdma_write(pair, src, dst, 64).status == v.IBV_WC_REM_ACCESS_ERR
    assert dst.read(64) == b"\0" * 64
    pair.close()
    pair = rc_pair(*ctxs)
    src, dst = _two_mrs(pair, dst_access=L | RW)              # no REMOTE_READ
    rd = v.SendWR(1, opcode=v.IBV_WR_RDMA_READ, sg=[v.SGE(src.buf, 64, src.lkey)])
    rd.set_wr_rdma(dst.rkey, dst.buf)
    pair.qp_a.post_send(rd)
    assert pair.cq_a.poll(1)[1][0].status == v.IBV_WC_REM_ACCESS_ERR
    pair.close()
    pair = rc_pair(*ctxs)
    src, dst = _two_mrs(pair, src_access=RR)                  # READ into a read-only local MR
    rd = v.SendWR(1, opcode=v.IBV_WR_RDMA_READ, sg=[v.SGE(src.buf, 64, src.lkey)])
    rd.set_wr_rdma(dst.rkey, dst.buf)
    pair.qp_a.post_send(rd)
    assert pair.cq_a.poll(1)[1][0].status == v.IBV_WC_LOC_PROT_ERR
    pair.close()


def test_mr_of_another_pd(ctxs: tuple[v.Context, v.Context]) -> None:
    pair = rc_pair(*ctxs)
    other = v.MR(v.PD(ctxs[0]), 4096, ALL)                     # right NIC, wrong PD
    dst = v.MR(pair.pd_b, 4096, ALL)
    assert rdma_write(pair, other, dst, 64).status == v.IBV_WC_LOC_PROT_ERR
    pair.close()
    pair = rc_pair(*ctxs)
    src = v.MR(pair.pd_a, 4096, ALL)
    foreign = v.MR(v.PD(ctxs[1]), 4096, ALL)
    assert rdma_write(pair, src, foreign, 64).status == v.IBV_WC_REM_ACCESS_ERR
    pair.close()


def test_qp_access_flags_gate_remote_ops(ctxs: tuple[v.Context, v.Context]) -> None:
    pair = rc_pair(*ctxs, access=L)                           # QPs allow no remote access
    src, dst = _two_mrs(pair)
    assert rdma_write(pair, src, dst, 64).status == v.IBV_WC_REM_INV_REQ_ERR
    pair.close()


def test_receive_too_small_and_bad_recv_lkey(ctxs: tuple[v.Context, v.Context]) -> None:
    pair = rc_pair(*ctxs)
    src, dst = _two_mrs(pair)
    pair.qp_b.post_recv(v.RecvWR(5, 1, [v.SGE(dst.buf, 100, dst.lkey)]))
    pair.qp_a.post_send(v.SendWR(1, sg=[v.SGE(src.buf, 200, src.lkey)]))
    assert pair.cq_a.poll(1)[1][0].status == v.IBV_WC_REM_INV_REQ_ERR
    (rwc,) = pair.cq_b.poll(1)[1]
    assert (rwc.status, rwc.wr_id) == (v.IBV_WC_LOC_LEN_ERR, 5)
    pair.close()
    pair = rc_pair(*ctxs)
    src, dst = _two_mrs(pair)
    pair.qp_b.post_recv(v.RecvWR(6, 1, [v.SGE(dst.buf, 100, 0xdead00)]))
    pair.qp_a.post_send(v.SendWR(1, sg=[v.SGE(src.buf, 50, src.lkey)]))
    assert pair.cq_a.poll(1)[1][0].status == v.IBV_WC_REM_OP_ERR
    assert pair.cq_b.poll(1)[1][0].status == v.IBV_WC_LOC_PROT_ERR
    pair.close()


def test_rnr(ctxs: tuple[v.Context, v.Context]) -> None:
    pair = rc_pair(*ctxs, rnr_retry=0)
    src, dst = _two_mrs(pair)
    pair.qp_a.post_send(v.SendWR(1, sg=[v.SGE(src.buf, 16, src.lkey)]))
    assert pair.cq_a.poll(1)[1][0].status == v.IBV_WC_RNR_RETRY_EXC_ERR
    pair.close()
    pair = rc_pair(*ctxs, rnr_retry=7)                        # infinite: waits for a receive
    src, dst = _two_mrs(pair)
    pair.qp_a.post_send(v.SendWR(1, sg=[v.SGE(src.buf, 16, src.lkey)]))
    assert pair.cq_a.poll(1) == (0, []) and pair.qp_a.qp.rnr_stalled
    pair.qp_b.post_recv(v.RecvWR(3, 1, [v.SGE(dst.buf, 64, dst.lkey)]))
    assert v.poll_cq(pair.cq_a)[0].wr_id == 1
    assert v.poll_cq(pair.cq_b)[0].byte_len == 16
    assert dst.read(16) == src.read(16)
    pair.close()


def test_unreachable_peer_and_links(platform: Platform,
                                    ctxs: tuple[v.Context, v.Context]) -> None:
    a, b = ctxs
    subnet = IbSubnet.of(platform.machine)
    pa, pb = a.device.ports[1], b.device.ports[1]
    pair = rc_pair(a, b)
    src, dst = _two_mrs(pair)
    subnet.set_port_state(pb, False)
    assert b.query_port().state == v.IBV_PORT_DOWN
    assert rdma_write(pair, src, dst, 64).status == v.IBV_WC_RETRY_EXC_ERR
    subnet.set_port_state(pb, True)
    pair.close()
    # a third NIC-less setup: cable nic0 and nic1 back to back — still reachable
    subnet.connect(pa, pb)
    pair = rc_pair(a, b)
    src, dst = _two_mrs(pair)
    assert rdma_write(pair, src, dst, 64).status == v.IBV_WC_SUCCESS
    assert dst.read(64) == src.read(64)
    pair.close()


def test_cq_overrun_raises_async_event(ctxs: tuple[v.Context, v.Context]) -> None:
    a, b = ctxs
    pd_a, pd_b = v.PD(a), v.PD(b)
    small = v.CQ(a, 1)                                        # one usable entry
    cq_b = v.CQ(b, 16)
    qa = v.QP(pd_a, v.QPInitAttr(scq=small, rcq=small, cap=v.QPCap(8, 8)))
    qb = v.QP(pd_b, v.QPInitAttr(scq=cq_b, rcq=cq_b, cap=v.QPCap(8, 8)))
    v.connect_rc(qa, qb)
    src = v.MR(pd_a, 4096, ALL)
    dst = v.MR(pd_b, 4096, ALL)
    for i in range(2):
        wr = v.SendWR(i, opcode=v.IBV_WR_RDMA_WRITE, sg=[v.SGE(src.buf, 8, src.lkey)])
        wr.set_wr_rdma(dst.rkey, dst.buf)
        qa.post_send(wr)
    assert small.cq.overrun
    assert ("CQ_ERR", {"cq": small.cq.cqn}) in a.device.async_events
    assert small.poll(4)[0] == 1


def test_large_transfer_uses_one_copy_per_extent(pair: RcPair) -> None:
    """8 MiB through host MRs: the bytes land; nothing faulted."""
    n = 8 << 20
    src = v.MR(pair.pd_a, n, ALL)
    dst = v.MR(pair.pd_b, n, ALL)
    data = np.random.default_rng(3).integers(0, 256, n, dtype=np.uint8)
    src.write(data.tobytes(), n)
    assert rdma_write(pair, src, dst, n).status == v.IBV_WC_SUCCESS
    assert dst.read(n) == data.tobytes()
    assert pair.ctx_a.device.hca.dma_faults == 0 and pair.ctx_a.device.faults == []
    for o in (src, dst):
        o.close()


def test_access_constant_values() -> None:
    assert (v.IBV_ACCESS_LOCAL_WRITE, v.IBV_ACCESS_REMOTE_WRITE, v.IBV_ACCESS_REMOTE_READ,
            v.IBV_ACCESS_REMOTE_ATOMIC, v.IBV_ACCESS_RELAXED_ORDERING) == (1, 2, 4, 8, 1 << 20)
    assert (v.IBV_WC_SUCCESS, v.IBV_WC_LOC_PROT_ERR, v.IBV_WC_REM_ACCESS_ERR,
            v.IBV_WC_WR_FLUSH_ERR) == (0, 4, 10, 5)
    assert (v.IBV_WR_RDMA_WRITE, v.IBV_WR_SEND, v.IBV_WR_RDMA_READ) == (0, 2, 4)
    assert v.wc_status_to_str(v.IBV_WC_REM_ACCESS_ERR) == "remote access error"
    e = v.PyverbsRDMAError("Failed to post send", errno.EINVAL)
    assert e.errno == e.error_code == errno.EINVAL
    assert e.args[0] == "Failed to post send. Errno: 22, Invalid argument"
    assert ACCESS_RW == L | RW | RR


def test_pyverbs_error_pickles() -> None:
    import pickle
    e = v.PyverbsRDMAError("Failed to register a dma-buf MR", errno.EOPNOTSUPP)
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is v.PyverbsRDMAError and e2.args == e.args and e2.error_code == e.error_code


def test_context_binding_rules(platform: Platform) -> None:
    a = v.Context(platform, "nic0", odp=False)
    assert a.device.odp is False and v.Context(platform, "nic0").device is a.device
    assert v.Context(platform, "nic0", odp=False).device is a.device
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.Context(platform, "nic0", odp=True)
    assert ei.value.error_code == errno.EBUSY
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.Context(platform, "nvme0")                       # not a network controller
    assert ei.value.error_code == errno.ENODEV
    with pytest.raises(v.PyverbsRDMAError) as ei:
        v.Context(platform, "nic9")
    assert ei.value.error_code == errno.ENODEV
