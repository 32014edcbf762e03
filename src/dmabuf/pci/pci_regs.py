"""PCI configuration-space registers — include/uapi/linux/pci_regs.h, include/linux/ioport.h.

The topology loaders read the same bits the kernel reads: the header type (multi-function bit),
the PCI Express capability (device/port type, link capabilities and status) and the Access
Control Services extended capability (capability and control words). This module holds the
register offsets and bit values under their kernel names and a small decoder,
:func:`decode_config`, that turns a binary ``config`` file (as exposed by sysfs) into those
fields. The decoder walks capability lists with a step limit, so a corrupted or looping list ends
with an error instead of a hang.

Only 64 bytes of config space are readable by non-root users in sysfs; with a short file the
extended capabilities (ACS) are simply absent, and the decoder says so (``truncated``) so callers
can warn that ACS state is unknown.

Kernel: include/uapi/linux/pci_regs.h (PCI_ACS_*, PCI_EXP_TYPE_*, PCI_EXP_LNKCAP/LNKSTA),
drivers/pci/pci.c (pci_find_ext_capability(), __pci_find_next_cap_ttl()),
include/linux/ioport.h (IORESOURCE_*).
"""

from __future__ import annotations

import enum
import errno
import struct
from dataclasses import dataclass

from dmabuf.errors import DmaBufError

__all__ = [
    "ACS_BITS",
    "IORESOURCE_DISABLED",
    "IORESOURCE_IO",
    "IORESOURCE_MEM",
    "IORESOURCE_MEM_64",
    "IORESOURCE_PREFETCH",
    "IORESOURCE_UNSET",
    "LINK_SPEEDS",
    "PCI_ACS_CR",
    "PCI_ACS_DT",
    "PCI_ACS_EC",
    "PCI_ACS_RR",
    "PCI_ACS_SV",
    "PCI_ACS_TB",
    "PCI_ACS_UF",
    "PCI_EXT_CAP_ID_ACS",
    "PCI_STD_NUM_BARS",
    "ConfigInfo",
    "PcieType",
    "acs_bits_from_names",
    "acs_names",
    "decode_config",
]

#: Number of standard BARs of a type-0 header (include/linux/pci.h, PCI_STD_NUM_BARS).
PCI_STD_NUM_BARS = 6

# Standard header (pci_regs.h).
PCI_STATUS = 0x06
PCI_STATUS_CAP_LIST = 0x10
PCI_HEADER_TYPE = 0x0E
PCI_HEADER_TYPE_MFD = 0x80
PCI_CAPABILITY_LIST = 0x34
PCI_CB_CAPABILITY_LIST = 0x14
PCI_CAP_ID_EXP = 0x10
PCI_CFG_SPACE_SIZE = 256
PCI_CFG_SPACE_EXP_SIZE = 4096

# PCI Express capability (offsets relative to the capability).
PCI_EXP_FLAGS = 0x02
PCI_EXP_FLAGS_TYPE = 0x00F0
PCI_EXP_LNKCAP = 0x0C
PCI_EXP_LNKSTA = 0x12

# Access Control Services extended capability.
PCI_EXT_CAP_ID_ACS = 0x0D
PCI_ACS_CAP = 0x04
PCI_ACS_CTRL = 0x06
PCI_ACS_SV = 0x0001  #: Source Validation
PCI_ACS_TB = 0x0002  #: Translation Blocking
PCI_ACS_RR = 0x0004  #: P2P Request Redirect
PCI_ACS_CR = 0x0008  #: P2P Completion Redirect
PCI_ACS_UF = 0x0010  #: Upstream Forwarding
PCI_ACS_EC = 0x0020  #: P2P Egress Control
PCI_ACS_DT = 0x0040  #: Direct Translated P2P

#: ACS capability/control bit names in register order, as ``lspci -vvv`` prints them.
ACS_BITS: dict[str, int] = {
    "SV": PCI_ACS_SV, "TB": PCI_ACS_TB, "RR": PCI_ACS_RR, "CR": PCI_ACS_CR,
    "UF": PCI_ACS_UF, "EC": PCI_ACS_EC, "DT": PCI_ACS_DT,
}

# struct resource flags (include/linux/ioport.h) as printed in the sysfs ``resource`` file.
IORESOURCE_IO = 0x00000100
IORESOURCE_MEM = 0x00000200
IORESOURCE_PREFETCH = 0x00002000
IORESOURCE_MEM_64 = 0x00100000
IORESOURCE_DISABLED = 0x10000000
IORESOURCE_UNSET = 0x20000000

#: PCI_EXP_LNKCAP_SLS / PCI_EXP_LNKSTA_CLS encodings -> GT/s.
LINK_SPEEDS: dict[int, float] = {1: 2.5, 2: 5.0, 3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0}

_CAP_TTL = 48          # __pci_find_next_cap_ttl(): at most 48 standard capabilities
_EXT_CAP_TTL = (PCI_CFG_SPACE_EXP_SIZE - PCI_CFG_SPACE_SIZE) // 8   # pci_find_next_ext_capability


class PcieType(enum.IntEnum):
    """PCI Express device/port type — ``PCI_EXP_TYPE_*`` (bits 7:4 of the PCIe Capabilities reg).

    Kernel: include/uapi/linux/pci_regs.h; pci_pcie_type().
    """

    ENDPOINT = 0x0       #: PCI_EXP_TYPE_ENDPOINT
    LEG_END = 0x1        #: PCI_EXP_TYPE_LEG_END (legacy endpoint)
    ROOT_PORT = 0x4      #: PCI_EXP_TYPE_ROOT_PORT
    UPSTREAM = 0x5       #: PCI_EXP_TYPE_UPSTREAM (switch upstream port)
    DOWNSTREAM = 0x6     #: PCI_EXP_TYPE_DOWNSTREAM (switch downstream port)
    PCI_BRIDGE = 0x7     #: PCI_EXP_TYPE_PCI_BRIDGE (PCIe-to-PCI/PCI-X bridge)
    PCIE_BRIDGE = 0x8    #: PCI_EXP_TYPE_PCIE_BRIDGE (PCI/PCI-X-to-PCIe bridge)
    RC_END = 0x9         #: PCI_EXP_TYPE_RC_END (root-complex integrated endpoint)
    RC_EC = 0xA          #: PCI_EXP_TYPE_RC_EC (root-complex event collector)

    @property
    def is_bridge(self) -> bool:
        """True for the port types that forward to a secondary bus."""
        return self in (PcieType.ROOT_PORT, PcieType.UPSTREAM, PcieType.DOWNSTREAM,
                        PcieType.PCI_BRIDGE, PcieType.PCIE_BRIDGE)


def acs_names(bits: int) -> list[str]:
    """Names of the ACS bits set in ``bits`` (``0x1d`` -> ``['SV', 'RR', 'CR', 'UF']``).

    Model-only: renders PCI_ACS_* bits as lspci-style names.
    """
    return [n for n, b in ACS_BITS.items() if bits & b]


def acs_bits_from_names(names: list[str] | tuple[str, ...], what: str) -> int:
    """Turn ``['RR', 'CR']`` into ``0x000c``; unknown names raise ``DmaBufError(EINVAL)``.

    Args:
        names: ACS bit names (case-insensitive): SV, TB, RR, CR, UF, EC, DT.
        what: where the list came from, for the error message.

    Model-only: parses the user-facing ACS names (as setpci/lspci print them) into PCI_ACS_* bits.
    """
    bits = 0
    for n in names:
        if not isinstance(n, str) or n.upper() not in ACS_BITS:
            raise DmaBufError(errno.EINVAL, f"{what}: unknown ACS bit {n!r}; use some of "
                              f"{', '.join(ACS_BITS)}")
        bits |= ACS_BITS[n.upper()]
    return bits


@dataclass(frozen=True)
class ConfigInfo:
    """What :func:`decode_config` found in a configuration-space image.

    Attributes:
        header_type: header layout (0 endpoint, 1 PCI-PCI bridge, 2 CardBus), MFD bit cleared.
        multifunction: the MFD bit (0x80) of the header type.
        pcie_type: :class:`PcieType` from the PCIe capability, ``None`` for conventional PCI.
        acs_cap / acs_ctrl: ACS capability and control words, ``None`` without the capability.
        lnkcap_speed / lnkcap_width: max link speed (GT/s) and width from Link Capabilities.
        lnksta_speed / lnksta_width: negotiated speed and width from Link Status.
        truncated: the image is shorter than the 4096-byte extended space (e.g. 64 bytes when
            read without CAP_SYS_ADMIN): extended capabilities, ACS included, are unknown.
    """

    header_type: int
    multifunction: bool
    pcie_type: PcieType | None
    acs_cap: int | None
    acs_ctrl: int | None
    lnkcap_speed: float | None
    lnkcap_width: int | None
    lnksta_speed: float | None
    lnksta_width: int | None
    truncated: bool


def _u8(b: bytes, off: int) -> int:
    return b[off]


def _u16(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<H", b, off)[0])


def _u32(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", b, off)[0])


def decode_config(cfg: bytes, where: str) -> ConfigInfo:
    """Decode the fields a topology needs from a config-space image — pci_find_*capability().

    Args:
        cfg: the bytes of the sysfs ``config`` file (64, 256 or 4096 bytes).
        where: path of the file, named in error messages.

    Context:
        Pure function; never blocks.

    Returns:
        A :class:`ConfigInfo`.

    Raises:
        DmaBufError(EINVAL): shorter than the 64-byte header, or a capability pointer that points
            outside the image.

    Kernel: drivers/pci/pci.c, __pci_find_next_cap_ttl(), pci_find_next_ext_capability();
    drivers/pci/probe.c, set_pcie_port_type().
    """
    if not isinstance(cfg, (bytes, bytearray)):
        raise TypeError(f"config image must be bytes, not {type(cfg).__name__}")
    n = len(cfg)
    if n < 64:
        raise DmaBufError(errno.EINVAL, f"{where}: config space is {n} bytes, shorter than the "
                          "64-byte PCI header; the file is truncated or not a config file")
    hdr = _u8(cfg, PCI_HEADER_TYPE)
    header_type = hdr & 0x7F
    pcie_type: PcieType | None = None
    lnkcap_speed = lnksta_speed = None
    lnkcap_width = lnksta_width = None
    if _u16(cfg, PCI_STATUS) & PCI_STATUS_CAP_LIST:
        pos = _u8(cfg, PCI_CB_CAPABILITY_LIST if header_type == 2 else PCI_CAPABILITY_LIST)
        for _ in range(_CAP_TTL):
            if pos < 0x40:
                break
            pos &= ~3
            if pos + 2 > n:
                # Beyond a 64-byte unprivileged read: the list continues but we cannot see it.
                break
            cap_id = _u8(cfg, pos)
            if cap_id == 0xFF:
                break
            if cap_id == PCI_CAP_ID_EXP and pos + 0x14 <= n:
                flags = _u16(cfg, pos + PCI_EXP_FLAGS)
                raw = (flags & PCI_EXP_FLAGS_TYPE) >> 4
                try:
                    pcie_type = PcieType(raw)
                except ValueError:
                    raise DmaBufError(errno.EINVAL, f"{where}: PCIe capability at {pos:#x} has "
                                      f"reserved device/port type {raw:#x}") from None
                lnkcap = _u32(cfg, pos + PCI_EXP_LNKCAP)
                lnksta = _u16(cfg, pos + PCI_EXP_LNKSTA)
                lnkcap_speed = LINK_SPEEDS.get(lnkcap & 0xF)
                lnkcap_width = ((lnkcap >> 4) & 0x3F) or None
                lnksta_speed = LINK_SPEEDS.get(lnksta & 0xF)
                lnksta_width = ((lnksta >> 4) & 0x3F) or None
                break
            pos = _u8(cfg, pos + 1)
    acs_cap = acs_ctrl = None
    truncated = n < PCI_CFG_SPACE_EXP_SIZE
    if n >= PCI_CFG_SPACE_SIZE + 8:
        pos = PCI_CFG_SPACE_SIZE
        for _ in range(_EXT_CAP_TTL):
            if pos + 4 > n:
                raise DmaBufError(errno.EINVAL, f"{where}: extended capability pointer {pos:#x} "
                                  f"points past the {n}-byte config image")
            header = _u32(cfg, pos)
            if header == 0 or header == 0xFFFFFFFF:
                break
            if header & 0xFFFF == PCI_EXT_CAP_ID_ACS:
                if pos + 8 > n:
                    raise DmaBufError(errno.EINVAL, f"{where}: ACS capability at {pos:#x} is cut "
                                      "off by the end of the config image")
                acs_cap = _u16(cfg, pos + PCI_ACS_CAP)
                acs_ctrl = _u16(cfg, pos + PCI_ACS_CTRL)
                break
            pos = header >> 20
            if pos < PCI_CFG_SPACE_SIZE:
                break
    return ConfigInfo(header_type=header_type, multifunction=bool(hdr & PCI_HEADER_TYPE_MFD),
                      pcie_type=pcie_type, acs_cap=acs_cap, acs_ctrl=acs_ctrl,
                      lnkcap_speed=lnkcap_speed, lnkcap_width=lnkcap_width,
                      lnksta_speed=lnksta_speed, lnksta_width=lnksta_width, truncated=truncated)
