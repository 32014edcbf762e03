"""Tests of dmabuf.buf.mapping_type [PROPOSED]: the SGT P2P rule, PAL, compat, attach fields."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from dmabuf.buf.device import DirectDev
from dmabuf.buf.dma_buf import DmaBufAttachOps, DmaBufExportInfo, DmaBufOps, dma_buf_export
from dmabuf.buf.mapping_type import (
    MAPPING_PAL,
    MAPPING_SGT,
    DmaBufMappingMatch,
    DmaBufMappingType,
    DmaBufMatchArgs,
    DmaSgtP2p,
    MappingTypeConfig,
    PalExpOps,
    SgtExpOps,
    emapping_pal,
    emapping_sgt,
    emapping_sgt_p2p,
    imapping_pal,
    imapping_sgt,
    mapping_attach,
    match_mapping,
    sgt_attach,
    sgt_dma_device,
    sgt_p2p_allowed,
)
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.buf.sg_table import SgTable
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm import PAGE_SIZE, MemKind, PhysMemory


@pytest.fixture(autouse=True)
def enabled(machine: Machine) -> None:
    machine.state(MappingTypeConfig).enabled = True


@pytest.fixture
def pm() -> PhysMemory:
    p = PhysMemory()
    p.add_region("ram0", 64 * PAGE_SIZE, MemKind.RAM)
    p.add_region("bar0", 64 * PAGE_SIZE, MemKind.MMIO)
    return p


class _Pending:
    map_type: Any = None
    dev: Any = None
    peer2peer: Any = None


_SGT_OPS = SgtExpOps(lambda a, d: None, lambda a, t, d: None)


def _args(imps: list[DmaBufMappingMatch]) -> tuple[DmaBufMatchArgs, _Pending]:
    p = _Pending()
    return DmaBufMatchArgs(attach=p, imp_matches=imps), p


def test_sgt_p2p_requires_accepting_importer(pm: PhysMemory) -> None:
    dev = DirectDev("nic0", pm)
    distances: dict[str, int] = {"nic0": 2}
    exp = emapping_sgt_p2p(_SGT_OPS, "gpu-bar", lambda p, d: distances.get(d.name, -1))
    args, _ = _args([imapping_sgt(dev, accepts_p2p=False)])
    with pytest.raises(DmaBufError) as e:
        match_mapping(args, [exp])
    assert e.value.errno == errno.EINVAL
    args, pending = _args([imapping_sgt(dev, accepts_p2p=True)])
    assert match_mapping(args, [exp]) == 0
    assert pending.map_type.type is MAPPING_SGT and pending.dev is dev
    assert pending.peer2peer is True
    assert sgt_p2p_allowed(pending) and sgt_dma_device(pending) is dev
    far = DirectDev("far", pm)
    args, _ = _args([imapping_sgt(far, accepts_p2p=True)])
    with pytest.raises(DmaBufError):                      # no P2P path: distance < 0
        match_mapping(args, [exp])


def test_sgt_p2p_falls_back_to_plain_sgt(pm: PhysMemory) -> None:
    dev = DirectDev("nic0", pm)
    p2p = emapping_sgt_p2p(_SGT_OPS, "bar", lambda p, d: -1)
    plain = emapping_sgt(_SGT_OPS)
    args, pending = _args([imapping_sgt(dev, accepts_p2p=True)])
    assert match_mapping(args, [p2p, plain]) == 0
    assert pending.map_type.sgt_data.exporter_requires_p2p == DmaSgtP2p.NO_P2P
    assert not sgt_p2p_allowed(pending)


def test_p2p_item_without_distance_warns(machine: Machine, pm: PhysMemory) -> None:
    exp = emapping_sgt(_SGT_OPS)
    exp.sgt_data.exporter_requires_p2p = DmaSgtP2p.EXPORTER_REQUIRES_P2P_DISTANCE
    args, _ = _args([imapping_sgt(DirectDev("x", pm), True)])
    with pytest.raises(DmaBufError):
        match_mapping(args, [exp])
    assert [r for r, _ in machine.warnings] == ["dma_buf_sgt_match"]


def test_pal_type_and_helpers(pm: PhysMemory) -> None:
    pal_ops = PalExpOps(lambda attach: PhysVec([(pm.region("bar0").base, PAGE_SIZE)]),
                        lambda attach, phys: None)
    args, pending = _args([imapping_pal()])
    assert match_mapping(args, [emapping_sgt(_SGT_OPS), emapping_pal(pal_ops)]) == 0
    assert pending.map_type.type is MAPPING_PAL and pending.map_type.exp_ops is pal_ops
    assert sgt_dma_device(pending) is None and not sgt_p2p_allowed(pending)
    assert pending.map_type.exp_ops.map_phys(None).total_len == PAGE_SIZE
    with pytest.raises(TypeError):
        emapping_pal(_SGT_OPS)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        emapping_sgt(pal_ops)  # type: ignore[arg-type]


def test_match_callback_conventions() -> None:
    calls: list[str] = []

    def raising(dmabuf: Any, exp: Any, imp: Any) -> None:
        calls.append("r")
        raise DmaBufError(errno.EOPNOTSUPP, "skip me")

    def bad(dmabuf: Any, exp: Any, imp: Any) -> int:
        return 5

    t1 = DmaBufMappingType("raising", raising, None)
    t2 = DmaBufMappingType("bad", bad, None)
    with pytest.raises(DmaBufError) as e:
        match_mapping(DmaBufMatchArgs(imp_matches=[DmaBufMappingMatch(t1)]),
                      [DmaBufMappingMatch(t1)])
    assert e.value.errno == errno.EINVAL and calls == ["r"]
    with pytest.raises(TypeError):
        match_mapping(DmaBufMatchArgs(imp_matches=[DmaBufMappingMatch(t2)]),
                      [DmaBufMappingMatch(t2)])


class _Priv:
    def __init__(self, phys: PhysMemory) -> None:
        self.phys = phys


class _UnawareOps(DmaBufOps):
    """An exporter that knows nothing about mapping types (compat path)."""

    def __init__(self, phys: PhysMemory) -> None:
        super().__init__()
        self.phys = phys
        self.maps = 0

    def map_dma_buf(self, attach: Any, direction: Any) -> Any:
        self.maps += 1
        base = self.phys.region("ram0").base
        return SgTable.from_pages(PhysVec([(base, PAGE_SIZE)])).map(attach.dev, direction)

    def unmap_dma_buf(self, attach: Any, table: Any, direction: Any) -> None:
        table.unmap(attach.dev, direction)
        table.free()

    def release(self, dmabuf: Any) -> None:
        pass


def test_compat_attach_to_unaware_exporter_maps(pm: PhysMemory) -> None:
    ops = _UnawareOps(pm)
    buf = dma_buf_export(DmaBufExportInfo("unaware", ops=ops, size=PAGE_SIZE, priv=_Priv(pm)))
    dev = DirectDev("nic0", pm)
    attach = sgt_attach(buf, dev)
    assert attach.map_type.type is MAPPING_SGT and attach.dev is dev
    assert attach.peer2peer is False
    t = attach.map_unlocked(0)
    assert ops.maps == 1 and t.size == PAGE_SIZE
    # The compat item routes to the exporter's own ops.
    assert attach.map_type.exp_ops is not None
    attach.unmap_unlocked(t, 0)
    attach.detach()
    buf.put()


def test_non_sgt_attachment_has_no_dma_device(pm: PhysMemory) -> None:
    pal_ops = PalExpOps(lambda a: PhysVec(), lambda a, p: None)

    class _PalOps(_UnawareOps):
        def match_mapping(self, args: DmaBufMatchArgs) -> int:
            return match_mapping(args, [emapping_pal(pal_ops)])

    buf = dma_buf_export(DmaBufExportInfo("pal", ops=_PalOps(pm), size=PAGE_SIZE,
                                          priv=_Priv(pm)))
    attach = mapping_attach(buf, [imapping_pal()],
                            DmaBufAttachOps(invalidate_mappings=lambda a: None))
    assert attach.map_type.type is MAPPING_PAL
    with pytest.raises(ContractViolation):
        attach.dev.map_ranges(PhysVec().ranges, 0)
    with pytest.raises(DmaBufError) as e:
        mapping_attach(buf, [imapping_sgt(DirectDev("nic0", pm))])
    assert e.value.errno == errno.EINVAL
    attach.detach()
    buf.put()
