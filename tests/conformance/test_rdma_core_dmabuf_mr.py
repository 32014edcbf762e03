"""Ports of rdma-core ``tests/test_mr.py`` ``DmaBufMRTest`` / ``DmaBufTestCase`` to the facade.

The originals run against a real HCA and a DRM GPU (``--gpu``, ``--gtt``); the ports run the same
steps against the model: ``Context(platform, "nic0")`` is the HCA, ``gpu0`` (an amdgpu-like
exporter under the same PCIe switch) allocates the dma-bufs (VRAM, or GTT for the ``gtt``
variants), and ``DmaBufMR`` registers them with ``ibv_reg_dmabuf_mr`` semantics. Randomness
(``get_mr_length``, offsets, I/O lengths, the bad-flag samples) comes from a seeded
``random.Random`` so every run is the same; where the original would draw a zero MR length
(which the kernel rejects with ``EINVAL``) the port redraws.

Helpers ported from rdma-core ``tests/utils.py``: ``get_mr_length`` (``MAX_MR_SIZE`` 4 MiB),
``filter_illegal_access_flags``, ``get_dmabuf_access_flags`` (the HCA reports
``IBV_ATOMIC_HCA``); ``MAX_IO_LEN`` is 1 MiB as in ``test_mr.py``.

Source: linux-rdma/rdma-core tests/test_mr.py (DmaBufMRTest, DmaBufRC, DmaBufTestCase),
tests/utils.py (spec ecosystem-and-users.md §2.5).
"""

from __future__ import annotations

import errno
import itertools
import random
from collections.abc import Iterator

import pytest

from dmabuf.devices.gpu import Gpu
from dmabuf.devices.platform import Platform
from dmabuf.devices.rdma import verbs as v
from dmabuf.machine import Machine

MAX_MR_SIZE = 4194304
MAX_IO_LEN = 1048576


@pytest.fixture
def platform(machine: Machine) -> Iterator[Platform]:
    p = Platform(machine=machine, ram_size=8 << 30)
    p.bind(Gpu, "gpu0", vram_size=1 << 30)
    yield p
    p.close()


def rc_pair(a: v.Context, b: v.Context, access: int) -> tuple[v.QP, v.QP, v.CQ, v.CQ]:
    """``RCResources`` of both players, connected (``pre_run``): QP, CQ per side."""
    qps, cqs = [], []
    for ctx in (a, b):
        pd = v.PD(ctx)
        cq = v.CQ(ctx, 100)
        qps.append(v.QP(pd, v.QPInitAttr(qp_type=v.IBV_QPT_RC, scq=cq, rcq=cq,
                                         cap=v.QPCap(max_send_wr=10, max_recv_wr=10))))
        cqs.append(cq)
    v.connect_rc(qps[0], qps[1], access=access)
    return qps[0], qps[1], cqs[0], cqs[1]


@pytest.fixture
def ctx(platform: Platform) -> Iterator[v.Context]:
    c = v.Context(platform, "nic0")
    yield c
    c.close()


def get_mr_length(rng: random.Random) -> int:
    """``utils.get_mr_length``: ``int(MAX_MR_SIZE * random.random())`` (0 redrawn)."""
    while True:
        n = int(MAX_MR_SIZE * rng.random())
        if n:
            return n


def filter_illegal_access_flags(element: tuple[int, ...]) -> bool:
    """``utils.filter_illegal_access_flags``: REMOTE_WRITE/ATOMIC need LOCAL_WRITE."""
    if v.IBV_ACCESS_REMOTE_ATOMIC in element or v.IBV_ACCESS_REMOTE_WRITE in element:
        return v.IBV_ACCESS_LOCAL_WRITE in element
    return True


def get_dmabuf_access_flags(ctx: v.Context) -> list[int]:
    """``utils.get_dmabuf_access_flags``: every legal combination of the dma-buf MR flags."""
    attr = ctx.query_device()
    vals = [v.IBV_ACCESS_LOCAL_WRITE, v.IBV_ACCESS_REMOTE_WRITE, v.IBV_ACCESS_REMOTE_READ,
            v.IBV_ACCESS_REMOTE_ATOMIC, v.IBV_ACCESS_RELAXED_ORDERING]
    if not attr.atomic_caps & v.IBV_ATOMIC_HCA:
        vals.remove(v.IBV_ACCESS_REMOTE_ATOMIC)
    arr = []
    for i in range(1, len(vals)):
        for t in filter(filter_illegal_access_flags, itertools.combinations(vals, i)):
            arr.append(sum(t))
    return arr


def test_get_dmabuf_access_flags_matches_rdma_core(ctx: v.Context) -> None:
    """The helper yields the 18 legal combinations (sizes 1-4 of 5 flags) on an HCA with
    atomics, as rdma-core's does."""
    flags = get_dmabuf_access_flags(ctx)
    assert len(flags) == 18 and len(set(flags)) == 18
    assert all(not (f & (v.IBV_ACCESS_REMOTE_WRITE | v.IBV_ACCESS_REMOTE_ATOMIC))
               or f & v.IBV_ACCESS_LOCAL_WRITE for f in flags)


def test_dmabuf_reg_mr(ctx: v.Context) -> None:
    """Port of ``DmaBufMRTest.test_dmabuf_reg_mr``: ibv_reg_dmabuf_mr() with every legal flag
    combination at offset 0 and len/2."""
    rng = random.Random(1)
    with v.PD(ctx) as pd:
        for f in get_dmabuf_access_flags(ctx):
            length = get_mr_length(rng)
            for off in [0, length // 2]:
                with v.DmaBufMR(pd, length, f, offset=off, gpu=0, gtt=0) as mr:
                    assert mr.mr.length == length and mr.mr.iova == off
                    assert mr.mr.access == f
                    assert mr.mr.describe_mapping()["mapped"]
        assert pd.pd.usecnt == 0


def test_dmabuf_dereg_mr(ctx: v.Context) -> None:
    """Port of ``DmaBufMRTest.test_dmabuf_dereg_mr``: ibv_dereg_mr() with DmaBufMR."""
    rng = random.Random(2)
    dev = ctx.device
    with v.PD(ctx) as pd:
        for f in get_dmabuf_access_flags(ctx):
            length = get_mr_length(rng)
            for off in [0, length // 2]:
                with v.DmaBufMR(pd, length, f, offset=off, gpu=0, gtt=0) as mr:
                    key = mr.lkey
                    kbuf = mr.mr.umem.dmabuf
                    mr.close()
                    assert mr.mr.deregistered
                    assert dev.lookup_mr(key) is None
                    assert kbuf.released          # the MR's own dma-buf went with it
        assert dev.mrs == []


def test_dmabuf_dereg_mr_twice(ctx: v.Context) -> None:
    """Port of ``DmaBufMRTest.test_dmabuf_dereg_mr_twice``: an explicit second close() of a
    DmaBufMR does not fail."""
    rng = random.Random(3)
    with v.PD(ctx) as pd:
        for f in get_dmabuf_access_flags(ctx):
            length = get_mr_length(rng)
            for off in [0, length // 2]:
                with v.DmaBufMR(pd, length, f, offset=off, gpu=0, gtt=0) as mr:
                    mr.close()
                    mr.close()
                    assert mr.closed


def test_dmabuf_reg_mr_bad_flags(ctx: v.Context) -> None:
    """Port of ``DmaBufMRTest.test_dmabuf_reg_mr_bad_flags``: REMOTE_WRITE / REMOTE_ATOMIC
    without LOCAL_WRITE fail with 'Failed to register a dma-buf MR' (EINVAL)."""
    rng = random.Random(4)
    with v.PD(ctx) as pd:
        for _ in range(5):
            flags = rng.sample([v.IBV_ACCESS_REMOTE_WRITE, v.IBV_ACCESS_REMOTE_ATOMIC],
                               rng.randint(1, 2))
            mr_flags = sum(flags)
            with pytest.raises(v.PyverbsRDMAError) as ei:
                v.DmaBufMR(pd, get_mr_length(rng), mr_flags, gpu=0, gtt=0)
            assert "Failed to register a dma-buf MR" in ei.value.args[0]
            assert ei.value.error_code == errno.EINVAL
        assert pd.pd.usecnt == 0
    gpu = ctx.platform.device("gpu0")
    assert gpu.bos == []        # the DmaBufs the failed registrations allocated were freed


def test_dmabuf_write(ctx: v.Context) -> None:
    """Port of ``DmaBufMRTest.test_dmabuf_write``: writing to DmaBufMR's buffer (random
    length at offsets 0 and len/2); the model also reads the bytes back."""
    rng = random.Random(5)
    with v.PD(ctx) as pd:
        for _ in range(10):
            mr_len = get_mr_length(rng)
            for f in get_dmabuf_access_flags(ctx):
                for mr_off in [0, mr_len // 2]:
                    with v.DmaBufMR(pd, mr_len, f, offset=mr_off, gpu=0, gtt=0) as mr:
                        write_len = min(rng.randint(1, MAX_IO_LEN), mr_len)
                        mr.write("a" * write_len, write_len)
                        assert mr.read(write_len, 0) == b"a" * write_len


def test_dmabuf_read(ctx: v.Context) -> None:
    """Port of ``DmaBufMRTest.test_dmabuf_read``: reading from DmaBufMR's buffer — the read
    data is a substring of what was written."""
    rng = random.Random(6)
    with v.PD(ctx) as pd:
        for _ in range(10):
            mr_len = get_mr_length(rng)
            for f in get_dmabuf_access_flags(ctx):
                for mr_off in [0, mr_len // 2]:
                    with v.DmaBufMR(pd, mr_len, f, offset=mr_off, gpu=0, gtt=0) as mr:
                        write_len = min(rng.randint(1, MAX_IO_LEN), mr_len)
                        write_str = "a" * write_len
                        mr.write(write_str, write_len)
                        read_len = rng.randint(1, write_len)
                        offset = rng.randint(0, write_len - read_len)
                        read_str = mr.read(read_len, offset).decode()
                        assert read_str in write_str
                        assert read_str == "a" * read_len


def test_dmabuf_lkey(ctx: v.Context) -> None:
    """Port of ``DmaBufMRTest.test_dmabuf_lkey``: reading the lkey property."""
    rng = random.Random(7)
    keys = set()
    with v.PD(ctx) as pd:
        for f in get_dmabuf_access_flags(ctx):
            with v.DmaBufMR(pd, get_mr_length(rng), f, gpu=0, gtt=0) as mr:
                assert mr.lkey == mr.mr.mmkey.key and mr.lkey >> 8 > 0
                keys.add(mr.lkey)
    assert len(keys) == len(get_dmabuf_access_flags(ctx))   # the variant byte makes keys unique


def test_dmabuf_rkey(ctx: v.Context) -> None:
    """Port of ``DmaBufMRTest.test_dmabuf_rkey``: reading the rkey property (== lkey on mlx5)."""
    rng = random.Random(8)
    with v.PD(ctx) as pd:
        for f in get_dmabuf_access_flags(ctx):
            with v.DmaBufMR(pd, get_mr_length(rng), f, gpu=0, gtt=0) as mr:
                assert mr.rkey == mr.lkey


def test_dmabuf_rc_traffic(ctx: v.Context) -> None:
    """Port of ``DmaBufTestCase.test_dmabuf_rc_traffic``: send/recv between dma-buf MRs over
    RC, 100 iterations (``u.traffic``: client sends, server receives and echoes back)."""
    platform = ctx.platform
    server_ctx = v.Context(platform, "nic1")
    access = v.IBV_ACCESS_LOCAL_WRITE | v.IBV_ACCESS_REMOTE_WRITE
    msg_size = 1024
    qa, qb, cqa, cqb = rc_pair(ctx, server_ctx, access)
    cmr = v.DmaBufMR(qa.pd, msg_size, access, gpu=0)
    smr = v.DmaBufMR(qb.pd, msg_size, access, gpu=0)
    for i in range(100):
        c_msg = bytes([ord("c")]) * msg_size
        s_msg = bytes([ord("s")]) * msg_size
        qb.post_recv(v.RecvWR(i, 1, [v.SGE(smr.offset, msg_size, smr.lkey)]))
        cmr.write(c_msg, msg_size)
        qa.post_send(v.SendWR(i, sg=[v.SGE(cmr.offset, msg_size, cmr.lkey)]))
        v.poll_cq(cqa)
        (wc,) = v.poll_cq(cqb)
        assert (wc.opcode, wc.byte_len, wc.wr_id) == (v.IBV_WC_RECV, msg_size, i)
        assert smr.read(msg_size, 0) == c_msg
        qa.post_recv(v.RecvWR(i, 1, [v.SGE(cmr.offset, msg_size, cmr.lkey)]))
        smr.write(s_msg, msg_size)
        qb.post_send(v.SendWR(i, sg=[v.SGE(smr.offset, msg_size, smr.lkey)]))
        v.poll_cq(cqb)
        v.poll_cq(cqa)
        assert cmr.read(msg_size, 0) == s_msg
    for o in (cmr, smr, qa, qb, cqa, cqb):
        o.close()
    server_ctx.close()


def test_dmabuf_rdma_traffic(ctx: v.Context) -> None:
    """Port of ``DmaBufTestCase.test_dmabuf_rdma_traffic``: RDMA WRITE between dma-buf MRs,
    100 iterations (``u.rdma_traffic`` with ``IBV_WR_RDMA_WRITE``; remote_addr = mr.offset)."""
    platform = ctx.platform
    server_ctx = v.Context(platform, "nic1")
    access = v.IBV_ACCESS_LOCAL_WRITE | v.IBV_ACCESS_REMOTE_WRITE
    msg_size = 1024
    qa, qb, cqa, cqb = rc_pair(ctx, server_ctx, access)
    cmr = v.DmaBufMR(qa.pd, msg_size, access, gpu=0)
    smr = v.DmaBufMR(qb.pd, msg_size, access, gpu=0)
    for i in range(100):
        c_msg = bytes([ord("c") + i % 20]) * msg_size
        s_msg = bytes([ord("S") - i % 20]) * msg_size
        cmr.write(c_msg, msg_size)
        wr = v.SendWR(i, opcode=v.IBV_WR_RDMA_WRITE, sg=[v.SGE(cmr.offset, msg_size, cmr.lkey)])
        wr.set_wr_rdma(smr.rkey, smr.offset)
        qa.post_send(wr)
        (wc,) = v.poll_cq(cqa)
        assert wc.opcode == v.IBV_WC_RDMA_WRITE
        assert smr.read(msg_size, 0) == c_msg
        smr.write(s_msg, msg_size)
        wr = v.SendWR(i, opcode=v.IBV_WR_RDMA_WRITE, sg=[v.SGE(smr.offset, msg_size, smr.lkey)])
        wr.set_wr_rdma(cmr.rkey, cmr.offset)
        qb.post_send(wr)
        v.poll_cq(cqb)
        assert cmr.read(msg_size, 0) == s_msg
    for o in (cmr, smr, qa, qb, cqa, cqb):
        o.close()
    server_ctx.close()
