"""Small topologies for the pci tests, written in the native TOML format."""

from __future__ import annotations

from dmabuf.pci import Topology, loads_toml

AMD_ZEN = '[cpu]\nvendor_id = "AuthenticAMD"\nfamily = 0x17\n'
INTEL = '[cpu]\nvendor_id = "GenuineIntel"\nfamily = 6\n'


def hb(vendor: int = 0x8086, device: int = 0x29C0, *, domain: int = 0, bus: int = 0,
       name: str = "hb0") -> str:
    """A [[host_bridge]] with its 00.0 root-complex function."""
    return (f'[[host_bridge]]\nname = "{name}"\ndomain = {domain}\nbus = {bus}\n'
            f"vendor = {vendor:#x}\ndevice = {device:#x}\n")


def dev(bdf: str, name: str, typ: str = "endpoint", parent: str | None = None, *,
        acs: str | None = None, extra: str = "", vendor: int = 0x144D,
        device: int = 0xA808) -> str:
    """A [[device]] entry; ``acs`` is the ctrl list text, e.g. '["RR", "CR"]' or '[]'."""
    s = (f'[[device]]\nbdf = "{bdf}"\nname = "{name}"\ntype = "{typ}"\n'
         f"vendor = {vendor:#x}\ndevice = {device:#x}\n")
    if parent:
        s += f'parent = "{parent}"\n'
    if acs is not None:
        s += f'acs = {{ cap = ["SV", "RR", "CR", "UF", "EC"], ctrl = {acs} }}\n'
    return s + extra


def switch_fabric(cpu: str = INTEL, *, dsp0_acs: str = "[]", dsp1_acs: str = "[]",
                  usp_acs: str | None = None, rp_acs: str = "[]", hb_id: tuple[int, int] = (
                      0x8086, 0x29C0)) -> Topology:
    """RP0 → switch → [ep_a on DSP0, ep_b on DSP1]; RP1 → ep_c; all in one host bridge."""
    text = "format = 1\n" + cpu + hb(*hb_id)
    text += dev("0000:00:02.0", "rp0", "root_port", acs=rp_acs)
    text += dev("0000:01:00.0", "usp", "upstream_port", "rp0", acs=usp_acs)
    text += dev("0000:02:00.0", "dsp0", "downstream_port", "usp", acs=dsp0_acs)
    text += dev("0000:02:01.0", "dsp1", "downstream_port", "usp", acs=dsp1_acs)
    text += dev("0000:03:00.0", "ep_a", parent="dsp0", extra=_bar(0xF000_0000))
    text += dev("0000:04:00.0", "ep_b", parent="dsp1", extra=_bar(0xF200_0000))
    text += dev("0000:00:03.0", "rp1", "root_port", acs=rp_acs)
    text += dev("0000:05:00.0", "ep_c", parent="rp1", extra=_bar(0xF400_0000))
    return loads_toml(text, path="switch_fabric.toml")


def _bar(addr: int, size: str = "16MiB", index: int = 2) -> str:
    return (f'[[device.bar]]\nindex = {index}\nsize = "{size}"\naddress = {addr:#x}\n'
            "mem64 = false\nprefetchable = true\n")


bar = _bar
