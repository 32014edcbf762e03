"""Memfd and udmabuf's sealing rules (mm/memfd.c, udmabuf.c check_memfd_seals())."""

from __future__ import annotations

import errno

import pytest

from dmabuf.errors import DmaBufError
from dmabuf.uapi import Memfd
from dmabuf.uapi.memfd import (
    F_SEAL_FUTURE_WRITE,
    F_SEAL_GROW,
    F_SEAL_SEAL,
    F_SEAL_SHRINK,
    F_SEAL_WRITE,
    check_udmabuf_seals,
    seal_names,
)


def test_create_size_read_write() -> None:
    with Memfd.create("mf", 8192) as m:
        assert m.size == 8192 and m.seals == 0
        assert m.write(100, b"hello") == 5
        assert m.read(100, 5) == b"hello"
        m.truncate(4096)
        assert m.size == 4096


def test_seal_for_udmabuf_sets_shrink_only_and_is_idempotent() -> None:
    with Memfd.create("mf", 8192) as m:
        m.seal_for_udmabuf()
        assert m.seals == F_SEAL_SHRINK
        m.seal_for_udmabuf()
        assert m.seals == F_SEAL_SHRINK
        m.write(0, b"still writable")  # never F_SEAL_WRITE
        with pytest.raises(DmaBufError) as ei:
            m.truncate(4096)
        assert ei.value.errno == errno.EPERM and "seal" in str(ei.value)
        m.truncate(3 * 4096)  # growing is allowed


def test_seal_for_udmabuf_refuses_a_write_sealed_memfd() -> None:
    with Memfd.create("mf", 4096) as m:
        m.add_seals(F_SEAL_WRITE)
        with pytest.raises(DmaBufError) as ei:
            m.seal_for_udmabuf()
        assert ei.value.errno == errno.EINVAL
        assert "F_SEAL_WRITE" in str(ei.value) and "new memfd" in str(ei.value)


def test_seal_for_udmabuf_without_allow_sealing() -> None:
    with Memfd.create("mf", 4096, allow_sealing=False) as m:
        assert m.seals == F_SEAL_SEAL
        with pytest.raises(DmaBufError) as ei:
            m.seal_for_udmabuf()
        assert ei.value.errno == errno.EPERM and "MFD_ALLOW_SEALING" in str(ei.value)
        with pytest.raises(DmaBufError) as ei:
            m.add_seals(F_SEAL_SHRINK)
        assert ei.value.errno == errno.EPERM


@pytest.mark.parametrize(("seals", "text"), [
    (0, "lacks F_SEAL_SHRINK"), (F_SEAL_GROW, "lacks F_SEAL_SHRINK"),
    (F_SEAL_SEAL, "MFD_ALLOW_SEALING"), (F_SEAL_SHRINK | F_SEAL_WRITE, "write-sealed"),
    (F_SEAL_SHRINK | F_SEAL_FUTURE_WRITE, "FUTURE_WRITE")])
def test_check_udmabuf_seals_rejects(seals: int, text: str) -> None:
    with pytest.raises(DmaBufError, match=text) as ei:
        check_udmabuf_seals(seals)
    assert ei.value.errno == errno.EINVAL


@pytest.mark.parametrize("seals", [F_SEAL_SHRINK, F_SEAL_SHRINK | F_SEAL_GROW,
                                   F_SEAL_SHRINK | F_SEAL_SEAL])
def test_check_udmabuf_seals_accepts(seals: int) -> None:
    check_udmabuf_seals(seals)


def test_seal_names() -> None:
    assert seal_names(F_SEAL_SHRINK | F_SEAL_GROW) == ["SHRINK", "GROW"]
    assert seal_names(0x100) == ["0x100"]


@pytest.mark.parametrize("size", [-1, 1.5, True])
def test_bad_sizes(size: object) -> None:
    with pytest.raises(DmaBufError) as ei:
        Memfd.create("x", size)  # type: ignore[arg-type]
    assert ei.value.errno == errno.EINVAL


def test_seals_on_non_memfd_is_einval_with_message() -> None:
    import os

    m = Memfd(os.open("/dev/null", os.O_RDONLY))
    with m, pytest.raises(DmaBufError, match="not a memfd") as ei:
        m.seals  # noqa: B018
    assert ei.value.errno == errno.EINVAL
