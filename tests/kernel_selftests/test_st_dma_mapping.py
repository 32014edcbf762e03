"""Port of drivers/dma-buf/st-dma-mapping.c — KUnit suite ``dma-buf-mapping`` [PROPOSED].

The suite exists only in Jason Gunthorpe's mapping-type RFC ("[PATCH RFC 26/26] dma-buf: Add
kunit tests for mapping type", 2026-02-17); it checks ``dma_buf_match_mapping()``'s rules and the
SGT attach wrappers. One test per KUnit case (the parametrised ``test_sgt_attach`` runs for both
exporters, as ``KUNIT_CASE_PARAM``). The mocks record whether ``match``/``finish_match`` ran and
with which arguments; ``reset_mock_state`` (the suite's ``.init``) runs before each test.

The extension is opt-in in the model: each test enables ``MappingTypeConfig`` on its machine;
``test_disabled_by_default`` (model-only) checks the switch.

Kernel: RFC drivers/dma-buf/st-dma-mapping.c; spec kernel-dmabuf-core.md §12.6.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dmabuf.buf.device import DirectDev
from dmabuf.buf.dma_buf import (
    DmaBufAttachOps,
    DmaBufExportInfo,
    DmaBufOps,
    dma_buf_export,
)
from dmabuf.buf.mapping_type import (
    MAPPING_SGT,
    DmaBufMappingMatch,
    DmaBufMappingType,
    DmaBufMatchArgs,
    MappingTypeConfig,
    SgtExpOps,
    emapping_sgt,
    mapping_attach,
    match_mapping,
    sgt_attach,
    sgt_dma_device,
    sgt_p2p_allowed,
    simple_sgt_exp_match,
)
from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm import PAGE_SIZE, MemKind, PhysMemory


@dataclass
class _Mock:
    """The suite's static mock state."""

    match_called: bool = False
    match_exp_arg: Any = None
    match_imp_arg: Any = None
    match_ret: int = 0
    finish_called: bool = False
    finish_args_arg: Any = None
    finish_exp_arg: Any = None
    finish_imp_arg: Any = None


mock = _Mock()


def _mock_match(dmabuf: Any, exp: DmaBufMappingMatch, imp: DmaBufMappingMatch) -> int:
    mock.match_called = True
    mock.match_exp_arg = exp
    mock.match_imp_arg = imp
    return mock.match_ret


def _mock_finish_match(args: DmaBufMatchArgs, exp: DmaBufMappingMatch,
                       imp: DmaBufMappingMatch) -> None:
    mock.finish_called = True
    mock.finish_args_arg = args
    mock.finish_exp_arg = exp
    mock.finish_imp_arg = imp
    if args.attach is not None:   # "Test doesn't always set attach"
        args.attach.map_type = DmaBufMappingMatch(exp.type, exp.exp_ops)


mock_type_a = DmaBufMappingType("mock_type_a", _mock_match, _mock_finish_match)
mock_type_b = DmaBufMappingType("mock_type_b", _mock_match, _mock_finish_match)


@pytest.fixture(autouse=True)
def reset_mock_state(machine: Machine) -> Iterator[None]:
    """``reset_mock_state()`` (the suite's init) + enable the RFC extension."""
    global mock
    mock = _Mock()
    machine.state(MappingTypeConfig).enabled = True
    yield


def _errno_of(fn: Any) -> int:
    with pytest.raises(DmaBufError) as e:
        fn()
    return int(e.value.errno)


def test_match_fail() -> None:
    """st-dma-mapping.c test_match_fail: empty exporter list, empty importer list and disjoint
    types all give -EINVAL without calling match or finish_match."""
    matches = [DmaBufMappingMatch(mock_type_a)]
    exp = [DmaBufMappingMatch(mock_type_b)]
    args = DmaBufMatchArgs(imp_matches=matches)

    assert _errno_of(lambda: match_mapping(args, [])) == errno.EINVAL
    assert not mock.match_called and not mock.finish_called

    args = DmaBufMatchArgs()
    assert _errno_of(lambda: match_mapping(args, matches)) == errno.EINVAL
    assert not mock.match_called and not mock.finish_called

    args = DmaBufMatchArgs(imp_matches=matches)
    assert _errno_of(lambda: match_mapping(args, exp)) == errno.EINVAL
    assert not mock.match_called and not mock.finish_called


def test_match_no_match_callback() -> None:
    """st-dma-mapping.c test_match_no_match_callback: a type without ``match`` matches its own
    type; finish_match gets (args, &exp[0], &imp[0])."""
    mock_type_no_match = DmaBufMappingType("mock_type_no_match", None, _mock_finish_match)
    matches = [DmaBufMappingMatch(mock_type_no_match)]
    args = DmaBufMatchArgs(imp_matches=matches)

    assert match_mapping(args, matches) == 0
    assert not mock.match_called
    assert mock.finish_called
    assert mock.finish_args_arg is args
    assert mock.finish_exp_arg is matches[0]
    assert mock.finish_imp_arg is matches[0]


def test_match_callback_returns() -> None:
    """st-dma-mapping.c test_match_callback_returns: -EOPNOTSUPP from match skips (overall
    -EINVAL); any other error (-ENOMEM) stops at once and is returned; finish never runs."""
    matches = [DmaBufMappingMatch(mock_type_a)]
    args = DmaBufMatchArgs(imp_matches=matches)

    mock.match_ret = -errno.EOPNOTSUPP
    assert _errno_of(lambda: match_mapping(args, matches)) == errno.EINVAL
    assert mock.match_called and not mock.finish_called

    mock.match_ret = -errno.ENOMEM
    assert _errno_of(lambda: match_mapping(args, matches)) == errno.ENOMEM
    assert mock.match_called and not mock.finish_called


def test_match_exporter_priority() -> None:
    """st-dma-mapping.c test_match_exporter_priority: importer [A, B]; exporter [A, B] picks
    (exp[0], imp[0]); exporter [B] picks (exp[0], imp[1])."""
    exp1 = [DmaBufMappingMatch(mock_type_a), DmaBufMappingMatch(mock_type_b)]
    exp2 = [DmaBufMappingMatch(mock_type_b)]
    imp = [DmaBufMappingMatch(mock_type_a), DmaBufMappingMatch(mock_type_b)]
    args = DmaBufMatchArgs(imp_matches=imp)

    assert match_mapping(args, exp1) == 0
    assert mock.finish_called
    assert mock.finish_exp_arg is exp1[0] and mock.finish_imp_arg is imp[0]

    assert match_mapping(args, exp2) == 0
    assert mock.finish_called
    assert mock.finish_exp_arg is exp2[0] and mock.finish_imp_arg is imp[1]


def test_match_importer_priority() -> None:
    """st-dma-mapping.c test_match_importer_priority: exporter [A, B]; importer [B] picks
    (exp[1], imp[0]); importer [B, A] picks (exp[0], imp[1]) — the exporter's order wins."""
    exp = [DmaBufMappingMatch(mock_type_a), DmaBufMappingMatch(mock_type_b)]
    imp1 = [DmaBufMappingMatch(mock_type_b)]
    imp2 = [DmaBufMappingMatch(mock_type_b), DmaBufMappingMatch(mock_type_a)]

    args = DmaBufMatchArgs(imp_matches=imp1)
    assert match_mapping(args, exp) == 0
    assert mock.finish_called
    assert mock.finish_exp_arg is exp[1] and mock.finish_imp_arg is imp1[0]

    args = DmaBufMatchArgs(imp_matches=imp2)
    assert match_mapping(args, exp) == 0
    assert mock.finish_called
    assert mock.finish_exp_arg is exp[0] and mock.finish_imp_arg is imp2[1]


# -- exporters for the attach tests --------------------------------------------------------


def _mock_map_dma_buf(attach: Any, direction: int) -> Any:
    raise DmaBufError(errno.ENODEV, "mock exporter cannot map")


def _mock_unmap_dma_buf(attach: Any, table: Any, direction: int) -> None:
    pass


class _SimpleSgtOps(DmaBufOps):
    """``mock_dmabuf_simple_sgt_ops``: ``DMA_BUF_SIMPLE_SGT_EXP_MATCH(map, unmap)``."""

    single_exporter_match = simple_sgt_exp_match(_mock_map_dma_buf, _mock_unmap_dma_buf)

    def map_dma_buf(self, attach: Any, direction: Any) -> Any:
        return _mock_map_dma_buf(attach, direction)

    def unmap_dma_buf(self, attach: Any, table: Any, direction: Any) -> None:
        _mock_unmap_dma_buf(attach, table, direction)

    def release(self, dmabuf: Any) -> None:
        pass


class _TwoExpOps(_SimpleSgtOps):
    """``mock_dmabuf_two_exp_ops``: ``match_mapping`` offering [mock_type_a, SGT]."""

    single_exporter_match = None

    def match_mapping(self, args: DmaBufMatchArgs) -> int:
        sgt_ops = SgtExpOps(_mock_map_dma_buf, _mock_unmap_dma_buf)
        sgt_match = [DmaBufMappingMatch(mock_type_a), emapping_sgt(sgt_ops)]
        return match_mapping(args, sgt_match)


class _Priv:
    def __init__(self, phys: PhysMemory) -> None:
        self.phys = phys


@pytest.fixture
def phys() -> PhysMemory:
    p = PhysMemory()
    p.add_region("ram0", 16 * PAGE_SIZE, MemKind.RAM)
    return p


def _mock_dmabuf_export(ops: DmaBufOps, phys: PhysMemory) -> Any:
    return dma_buf_export(DmaBufExportInfo(exp_name="st-dma-mapping", ops=ops, size=PAGE_SIZE,
                                           priv=_Priv(phys)))


@pytest.mark.parametrize("ops_cls", [_SimpleSgtOps, _TwoExpOps], ids=["simple_sgt", "two_exp"])
def test_sgt_attach(ops_cls: type[DmaBufOps], phys: PhysMemory) -> None:
    """st-dma-mapping.c test_sgt_attach (KUNIT_CASE_PARAM over simple_sgt and two_exp):
    dma_buf_sgt_attach() succeeds with the SGT type, the importing device, and no P2P."""
    dev = DirectDev("dma-buf-test", phys)
    dmabuf = _mock_dmabuf_export(ops_cls(), phys)
    attach = sgt_attach(dmabuf, dev)
    assert attach is not None
    assert attach.map_type.type is MAPPING_SGT
    assert sgt_dma_device(attach) is dev
    assert not sgt_p2p_allowed(attach)
    dmabuf.detach(attach)
    dmabuf.put()
    assert dmabuf.released


def test_mock_attach(phys: PhysMemory) -> None:
    """st-dma-mapping.c test_mock_attach: an exporter offering [mock_type_a, SGT] and an
    importer asking for [mock_type_a] (dynamic, with invalidate_mappings) get mock_type_a."""
    imp = [DmaBufMappingMatch(mock_type_a)]
    dmabuf = _mock_dmabuf_export(_TwoExpOps(), phys)
    importer_ops = DmaBufAttachOps(invalidate_mappings=lambda attach: None)
    attach = mapping_attach(dmabuf, imp, importer_ops, None)
    assert attach is not None
    assert attach.map_type.type is mock_type_a
    dmabuf.detach(attach)
    dmabuf.put()


def test_disabled_by_default(phys: PhysMemory) -> None:
    """Model-only: without MappingTypeConfig.enabled the RFC API refuses with -EOPNOTSUPP."""
    with Machine(name="plain") as m:
        assert m.state(MappingTypeConfig).enabled is False
        matches = [DmaBufMappingMatch(mock_type_a)]
        with pytest.raises(DmaBufError) as e:
            match_mapping(DmaBufMatchArgs(imp_matches=matches), matches)
        assert e.value.errno == errno.EOPNOTSUPP
        assert "MappingTypeConfig" in str(e.value)
        assert not mock.match_called
