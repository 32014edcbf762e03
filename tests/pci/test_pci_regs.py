"""Config-space decoding (include/uapi/linux/pci_regs.h)."""

from __future__ import annotations

import struct

import pytest

from dmabuf.errors import DmaBufError
from dmabuf.pci.pci_regs import PcieType, acs_bits_from_names, acs_names, decode_config


def make_cfg(*, pcie_type: int | None = 4, acs: tuple[int, int] | None = (0x5F, 0x1D),
             size: int = 4096, loop: bool = False) -> bytes:
    b = bytearray(size)
    struct.pack_into("<HH", b, 0, 0x8086, 0x1234)
    b[0x0E] = 0x81                                    # bridge header, multi-function
    if pcie_type is not None:
        struct.pack_into("<H", b, 0x06, 0x10)         # capability list
        b[0x34] = 0x40
        b[0x40], b[0x41] = 0x01, 0x60                 # PM cap -> next 0x60
        b[0x60], b[0x61] = 0x10, 0x60 if loop else 0  # PCIe cap (loops to itself if asked)
        struct.pack_into("<H", b, 0x62, pcie_type << 4)
        struct.pack_into("<I", b, 0x60 + 0x0C, 0x5 | (16 << 4))        # LNKCAP: 32 GT/s x16
        struct.pack_into("<H", b, 0x60 + 0x12, 0x3 | (8 << 4))         # LNKSTA: 8 GT/s x8
    if acs is not None and size >= 0x200:
        struct.pack_into("<I", b, 0x100, 0x0001 | (1 << 16) | (0x140 << 20))  # AER -> 0x140
        struct.pack_into("<I", b, 0x140, 0x000D | (1 << 16))
        struct.pack_into("<HH", b, 0x144, *acs)
    return bytes(b)


def test_decode_root_port_with_acs() -> None:
    info = decode_config(make_cfg(), "cfg")
    assert info.pcie_type == PcieType.ROOT_PORT and info.multifunction and info.header_type == 1
    assert (info.acs_cap, info.acs_ctrl) == (0x5F, 0x1D)
    assert (info.lnkcap_speed, info.lnkcap_width) == (32.0, 16)
    assert (info.lnksta_speed, info.lnksta_width) == (8.0, 8)
    assert not info.truncated


def test_decode_conventional_and_short_images() -> None:
    info = decode_config(make_cfg(pcie_type=None, acs=None, size=256), "cfg")
    assert info.pcie_type is None and info.acs_cap is None and info.truncated
    short = decode_config(make_cfg()[:64], "cfg")
    assert short.pcie_type is None and short.acs_cap is None and short.truncated
    with pytest.raises(DmaBufError) as ei:
        decode_config(b"\0" * 10, "cfgfile")
    assert "cfgfile" in str(ei.value)


def test_looping_capability_list_terminates() -> None:
    info = decode_config(make_cfg(loop=True), "cfg")
    assert info.pcie_type == PcieType.ROOT_PORT


def test_reserved_port_type_is_an_error() -> None:
    with pytest.raises(DmaBufError):
        decode_config(make_cfg(pcie_type=0xF), "cfg")


def test_acs_names() -> None:
    assert acs_names(0x1D) == ["SV", "RR", "CR", "UF"]
    assert acs_bits_from_names(["rr", "CR", "EC"], "x") == 0x2C
    with pytest.raises(DmaBufError):
        acs_bits_from_names(["XX"], "x")
