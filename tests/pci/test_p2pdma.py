"""calc_map_type_and_dist() and friends against the kernel's rules (drivers/pci/p2pdma.c)."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.dma.fabric import P2PFabric, PciP2pdmaMapType
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.memremap import MemoryType, memremap_registry
from dmabuf.mm.phys import PhysMemory
from dmabuf.pci import (
    PciP2pdmaMapState,
    Topology,
    calc_map_type_and_dist,
    generate_topology,
    loads_toml,
    p2p_matrix,
    p2pmem_alloc_mmap,
    pci_alloc_p2pmem,
    pci_free_p2pmem,
    pci_has_p2pmem,
    pci_p2pdma_add_resource,
    pci_p2pdma_distance,
    pci_p2pdma_distance_many,
    pci_p2pdma_enable_store,
    pci_p2pdma_map_type,
    pci_p2pdma_pgmaps,
    pci_p2pdma_release,
    pci_p2pdma_state,
    pci_p2pmem_alloc_sgl,
    pci_p2pmem_find_many,
    pci_p2pmem_free_sgl,
    pci_p2pmem_publish,
    pci_p2pmem_virt_to_bus,
    pcim_p2pdma_init,
    pcim_p2pdma_provider,
)
from dmabuf.pci.p2pdma import _acs_list_text
from dmabuf.pci.topology import CpuInfo

from .helpers import AMD_ZEN, INTEL, bar, dev, hb, switch_fabric

BUS = PciP2pdmaMapType.BUS_ADDR
THB = PciP2pdmaMapType.THRU_HOST_BRIDGE
NS = PciP2pdmaMapType.NOT_SUPPORTED

NOT_SHARE = ("nvme 0000:{c}: cannot be used for peer-to-peer DMA as the client and provider "
             "({p}) do not share an upstream bridge or whitelisted host bridge")


def two_root_ports(cpu: str, hb_id: tuple[int, int] = (0x8086, 0x29C0)) -> Topology:
    text = "format = 1\n" + cpu + hb(*hb_id)
    text += dev("0000:00:02.0", "rp0", "root_port")
    text += dev("0000:01:00.0", "a", parent="rp0", extra='driver = "nvme"\n' + bar(0xF000_0000))
    text += dev("0000:00:03.0", "rp1", "root_port")
    text += dev("0000:02:00.0", "b", parent="rp1", extra='driver = "nvme"\n' + bar(0xF200_0000))
    return loads_toml(text)


def two_host_bridges(cpu: str, id0: tuple[int, int], id1: tuple[int, int]) -> Topology:
    text = "format = 1\n" + cpu + hb(*id0) + hb(*id1, bus=0x40, name="hb1")
    text += dev("0000:00:02.0", "rp0", "root_port")
    text += dev("0000:01:00.0", "a", parent="rp0", extra='driver = "nvme"\n' + bar(0xF000_0000))
    text += dev("0000:40:01.0", "rp1", "root_port")
    text += dev("0000:41:00.0", "b", parent="rp1", extra='driver = "nvme"\n' + bar(0xF200_0000))
    text += dev("0000:00:03.0", "rp2", "root_port")
    text += dev("0000:02:00.0", "c", parent="rp2", extra='driver = "nvme"\n' + bar(0xF400_0000))
    return loads_toml(text)


# ------------------------------------------------------------------ the kernel comment's distances
def test_same_function_is_distance_0_bus_addr() -> None:
    t = switch_fabric()
    a = t.device("ep_a")
    assert calc_map_type_and_dist(a, a) == (BUS, 0)
    assert t.log == []


def test_two_functions_behind_one_port_is_distance_2() -> None:
    text = "format = 1\n" + INTEL + hb()
    text += dev("0000:00:02.0", "rp0", "root_port")
    text += dev("0000:01:00.0", "f0", parent="rp0", extra="multifunction = true\n")
    text += dev("0000:01:00.1", "f1", parent="rp0")
    t = loads_toml(text)
    assert t.calc_map_type_and_dist("f0", "f1") == (BUS, 2)
    assert t.calc_map_type_and_dist("f1", "f0") == (BUS, 2)


def test_two_vfs_and_pf_vf_are_distance_2() -> None:
    text = "format = 1\n" + INTEL + hb()
    text += dev("0000:00:02.0", "rp0", "root_port")
    text += dev("0000:01:00.0", "pf", parent="rp0",
                extra="sriov = { num_vfs = 2, vf_device = 0x101e }\n")
    t = loads_toml(text)
    vf0, vf1, pf = t.device("pf_vf0"), t.device("pf_vf1"), t.device("pf")
    assert (vf0.bdf, vf1.bdf) == ("0000:01:00.1", "0000:01:00.2")
    assert vf0.physfn is pf and vf0.upstream_bridge() is t.device("rp0")
    assert calc_map_type_and_dist(vf0, vf1) == (BUS, 2)
    assert calc_map_type_and_dist(pf, vf1) == (BUS, 2)


def test_two_devices_under_one_switch_is_distance_4_bus_addr() -> None:
    t = switch_fabric()
    assert t.calc_map_type_and_dist("ep_a", "ep_b") == (BUS, 4)
    assert t.calc_map_type_and_dist("ep_b", "ep_a") == (BUS, 4)


def test_two_root_ports_amd_zen_is_thru_host_bridge_distance_4() -> None:
    t = two_root_ports(AMD_ZEN)
    assert t.calc_map_type_and_dist("a", "b") == (THB, 4)
    assert t.log == []
    assert t.distance("a", "b") == 4


@pytest.mark.parametrize("vendor, family", [("AuthenticAMD", 0x17), ("AuthenticAMD", 0x19),
                                            ("AuthenticAMD", 0x1A)])
def test_amd_zen_families_allow_host_bridge(vendor: str, family: int) -> None:
    t = two_root_ports(f'[cpu]\nvendor_id = "{vendor}"\nfamily = {family:#x}\n')
    assert t.calc_map_type_and_dist("a", "b") == (THB, 4)


@pytest.mark.parametrize("vendor, family", [("AuthenticAMD", 0x16), ("HygonGenuine", 0x18),
                                            ("GenuineIntel", 6), ("", 0)])
def test_non_zen_cpus_are_refused_on_unlisted_root(vendor: str, family: int) -> None:
    cpu = f'[cpu]\nvendor_id = "{vendor}"\nfamily = {family:#x}\n' if vendor else ""
    t = two_root_ports(cpu)
    assert t.calc_map_type_and_dist("a", "b") == (NS, 4)
    assert t.log == [NOT_SHARE.format(c="02:00.0", p="0000:01:00.0")]
    assert t.distance("a", "b") == -1


def test_two_root_ports_intel_not_allow_listed_logs_kernel_text() -> None:
    t = two_root_ports(INTEL)
    assert t.p2p_map_type("a", "b") == PciP2pdmaMapType.NOT_SUPPORTED  # no p2pdma: no calc
    assert t.log == []
    pcim_p2pdma_init(t.device("a"))
    assert t.p2p_map_type("a", "b") == NS
    assert t.log == ["nvme 0000:02:00.0: cannot be used for peer-to-peer DMA as the client and "
                     "provider (0000:01:00.0) do not share an upstream bridge or whitelisted "
                     "host bridge"]


# ------------------------------------------------------------------ ACS
def test_acs_redirect_on_downstream_port_intel_refused_with_kernel_text() -> None:
    t = switch_fabric(INTEL, dsp1_acs='["RR", "CR"]')
    pcim_p2pdma_init(t.device("ep_b"))
    assert t.p2p_map_type("ep_b", "ep_a") == NS
    assert t.log == [
        "pci 0000:03:00.0: ACS redirect is set between the client and provider (0000:04:00.0)",
        "pci 0000:03:00.0: to disable ACS redirect for this path, add the kernel parameter: "
        "pci=disable_acs_redir=0000:02:01.0",
        "pci 0000:00:00.0: Host bridge not in P2PDMA whitelist: 8086:29c0",
        "pci 0000:03:00.0: cannot be used for peer-to-peer DMA as the client and provider "
        "(0000:04:00.0) do not share an upstream bridge or whitelisted host bridge",
    ]
    assert t.distance("ep_b", "ep_a") == -1


def test_acs_redirect_on_downstream_port_amd_goes_thru_host_bridge() -> None:
    t = switch_fabric(AMD_ZEN, dsp0_acs='["EC"]')
    assert t.calc_map_type_and_dist("ep_a", "ep_b") == (THB, 4)
    assert t.log == [
        "pci 0000:04:00.0: ACS redirect is set between the client and provider (0000:03:00.0)",
        "pci 0000:04:00.0: to disable ACS redirect for this path, add the kernel parameter: "
        "pci=disable_acs_redir=0000:02:00.0",
    ]
    assert t.distance("ep_a", "ep_b") == 4   # distance is reported for THRU_HOST_BRIDGE too


def test_acs_list_orders_provider_side_then_client_side() -> None:
    t = switch_fabric(AMD_ZEN, dsp0_acs='["RR"]', dsp1_acs='["CR"]', usp_acs='["RR"]')
    assert t.calc_map_type_and_dist("ep_b", "ep_a") == (THB, 4)
    assert t.log[1].endswith("pci=disable_acs_redir=0000:02:01.0;0000:01:00.0;0000:02:00.0")


def test_acs_on_the_common_upstream_port_counts() -> None:
    t = switch_fabric(INTEL, usp_acs='["RR", "CR"]')
    assert t.calc_map_type_and_dist("ep_a", "ep_b") == (NS, 4)
    assert "pci=disable_acs_redir=0000:01:00.0" in t.log[1]


def test_acs_above_the_common_port_does_not_matter() -> None:
    t = switch_fabric(INTEL, rp_acs='["SV", "RR", "CR", "UF"]')
    assert t.calc_map_type_and_dist("ep_a", "ep_b") == (BUS, 4)
    assert t.log == []


def test_only_rr_cr_ec_redirect() -> None:
    t = switch_fabric(INTEL, dsp0_acs='["SV", "UF"]', dsp1_acs='["SV", "UF"]')
    assert t.calc_map_type_and_dist("ep_a", "ep_b") == (BUS, 4)
    t.set_acs_ctrl("dsp0", 0x20)     # EC
    assert t.calc_map_type_and_dist("ep_a", "ep_b")[0] == NS


def test_acs_on_an_endpoint_itself_counts() -> None:
    text = "format = 1\n" + INTEL + hb()
    text += dev("0000:00:02.0", "rp0", "root_port")
    text += dev("0000:01:00.0", "f0", parent="rp0", acs='["RR"]',
                extra="multifunction = true\n")
    text += dev("0000:01:00.1", "f1", parent="rp0")
    t = loads_toml(text)
    assert t.calc_map_type_and_dist("f0", "f1") == (NS, 2)
    assert t.calc_map_type_and_dist("f1", "f0") == (NS, 2)


def test_acs_on_two_functions_root_port_refused_like_g_iommu() -> None:
    text = "format = 1\n" + INTEL + hb()
    text += dev("0000:00:04.0", "rp", "root_port", acs='["SV", "RR", "CR", "UF"]')
    text += dev("0000:06:00.0", "f0", parent="rp", extra='driver = "nvme"\n'
                'multifunction = true\n')
    text += dev("0000:06:00.1", "f1", parent="rp", extra='driver = "nvme"\n')
    t = loads_toml(text)
    assert t.calc_map_type_and_dist("f0", "f1") == (NS, 2)
    assert t.log[1] == ("nvme 0000:06:00.1: to disable ACS redirect for this path, add the "
                        "kernel parameter: pci=disable_acs_redir=0000:00:04.0")


def test_no_common_bridge_ignores_acs_and_does_not_warn_whitelist() -> None:
    t = switch_fabric(INTEL, dsp0_acs='["RR"]')
    assert t.calc_map_type_and_dist("ep_a", "ep_c") == (NS, 6)
    assert t.log == [NOT_SHARE.format(c="05:00.0", p="0000:03:00.0").replace("nvme", "pci")]


def test_whitelist_warning_is_printed_even_when_not_verbose() -> None:
    # The kernel passes acs_redirects (not verbose) as host_bridge_whitelist()'s warn flag.
    t = switch_fabric(INTEL, dsp0_acs='["RR"]')
    assert t.calc_map_type_and_dist("ep_a", "ep_b", verbose=False) == (NS, 4)
    assert t.log == ["pci 0000:00:00.0: Host bridge not in P2PDMA whitelist: 8086:29c0"]


def test_acs_list_is_a_128_byte_seq_buf() -> None:
    t = switch_fabric()
    devs = [t.device("ep_a")] * 12
    full = ";".join(d.bdf for d in devs)
    assert _acs_list_text(devs[:9]) == full[:9 * 13 - 1]      # 116 chars: fits
    assert _acs_list_text(devs) == (full + ";")[:127]          # overflow: cut at 127


# ------------------------------------------------------------------ host-bridge allow-list
def test_allow_listed_same_host_bridge_root_ports() -> None:
    t = two_root_ports(INTEL, (0x8086, 0x2F00))       # Xeon E5 v3, REQ_SAME_HOST_BRIDGE
    assert t.calc_map_type_and_dist("a", "b") == (THB, 4)
    assert t.log == []


def test_different_host_bridges_without_same_requirement_allowed() -> None:
    t = two_host_bridges(INTEL, (0x8086, 0x2020), (0x8086, 0x2020))    # Skylake-E
    assert t.calc_map_type_and_dist("a", "b") == (THB, 4)


def test_different_host_bridges_with_same_requirement_refused() -> None:
    t = two_host_bridges(INTEL, (0x8086, 0x2F00), (0x8086, 0x2F00))
    assert t.calc_map_type_and_dist("a", "b") == (NS, 4)
    assert t.calc_map_type_and_dist("a", "c") == (THB, 4)   # same host bridge: fine


def test_different_host_bridges_one_unlisted_refused() -> None:
    t = two_host_bridges(INTEL, (0x8086, 0x2020), (0x1B36, 0x000C))
    assert t.calc_map_type_and_dist("a", "b") == (NS, 4)
    assert t.calc_map_type_and_dist("b", "a") == (NS, 4)


def test_google_any_device_and_new_intel_accelerator_ids() -> None:
    assert two_root_ports(INTEL, (0x1AE0, 0x1234)).calc_map_type_and_dist("a", "b")[0] == THB
    for did in (0x09A2, 0x0B25, 0x0CFE, 0x11FB, 0x1212, 0x1216, 0x4940, 0x4942, 0x4944, 0x4946,
                0x4948, 0x2030, 0x2031, 0x2032, 0x2033, 0x3C00, 0x3C01, 0x2F01):
        t = two_root_ports(INTEL, (0x8086, did))
        assert t.calc_map_type_and_dist("a", "b")[0] == THB, hex(did)
    for did in (0x29C0, 0x0D57, 0x2034):
        assert two_root_ports(INTEL, (0x8086, did)).calc_map_type_and_dist("a", "b")[0] == NS


def test_host_bridge_root_device_must_be_00_0_or_root_port() -> None:
    # Skylake-like: no 00.0 function; the first device on the root bus is a Root Port at 00:05.0
    text = "format = 1\n" + INTEL + '[[host_bridge]]\nname = "hb0"\n'
    text += dev("0000:00:05.0", "rp0", "root_port", vendor=0x8086, device=0x2030)
    text += dev("0000:01:00.0", "a", parent="rp0")
    text += dev("0000:00:06.0", "rp1", "root_port", vendor=0x8086, device=0x2031)
    text += dev("0000:02:00.0", "b", parent="rp1")
    t = loads_toml(text)
    assert t.host_bridges[0].root_dev() is t.device("rp0")
    assert t.calc_map_type_and_dist("a", "b") == (THB, 4)
    # a plain endpoint first on the bus (not 00.0, not a Root Port): nothing to check
    text2 = text.replace('type = "root_port"\nvendor = 0x8086\ndevice = 0x2030',
                         'type = "rciep"\nvendor = 0x8086\ndevice = 0x2030', 1)
    text2 = text2.replace('parent = "rp0"', 'parent = "rp1"').replace('"0000:01:00.0"',
                                                                      '"0000:02:00.1"')
    t2 = loads_toml(text2)
    assert t2.host_bridges[0].root_dev() is None


# ------------------------------------------------------------------ the cache
def test_cache_is_not_re_evaluated_after_acs_changes() -> None:
    t = switch_fabric(INTEL)
    a, b = t.device("ep_a"), t.device("ep_b")
    pcim_p2pdma_init(b)
    assert t.p2p_map_type("ep_b", "ep_a") == BUS
    t.set_acs_ctrl("dsp0", 0x000C)              # RR | CR after the first decision
    assert t.p2p_map_type("ep_b", "ep_a") == BUS
    assert t.log == []                          # no re-evaluation, nothing logged
    assert calc_map_type_and_dist(b, a, _store=False, verbose=False)[0] == NS
    assert t.explain("ep_b", "ep_a").cached == "BUS_ADDR"
    # pci_p2pdma_distance_many() calls calc_map_type_and_dist() directly: it overwrites
    assert pci_p2pdma_distance(b, a) == -1
    assert t.p2p_map_type("ep_b", "ep_a") == NS
    # unbinding the provider (pci_p2pdma_release -> xa_destroy) forgets everything
    pci_p2pdma_release(b)
    assert t.p2p_map_type("ep_b", "ep_a") == NS     # no p2pdma -> NOT_SUPPORTED


def test_cache_logs_once_and_is_keyed_by_domain_bus_devfn() -> None:
    t = two_root_ports(INTEL)
    pcim_p2pdma_init(t.device("a"))
    for _ in range(3):
        assert t.p2p_map_type("a", "b") == NS
    assert len(t.log) == 1
    p2p = t.device("a").p2pdma
    assert p2p is not None and p2p.map_types == {0x0200: NS}


def test_map_type_non_pci_client_is_not_supported() -> None:
    t = switch_fabric()
    pcim_p2pdma_init(t.device("ep_a"))
    assert t.p2p_map_type("ep_a", "platform-dma0") == NS
    prov = pcim_p2pdma_provider(t.device("ep_a"), 2)
    assert prov is not None and pci_p2pdma_map_type(prov, "nope") == NS


# ------------------------------------------------------------------ distance_many / find_many
def test_distance_many_sums_and_refuses() -> None:
    t = switch_fabric(INTEL)
    a, b, c = (t.device(n) for n in ("ep_a", "ep_b", "ep_c"))
    assert pci_p2pdma_distance_many(a, []) == -1
    assert pci_p2pdma_distance_many(a, [a, b]) == 4
    assert pci_p2pdma_distance_many(a, [b, b]) == 8
    assert pci_p2pdma_distance_many(a, [b, c]) == -1
    assert t.log == []
    assert pci_p2pdma_distance_many(a, ["usb0"], verbose=True) == -1
    assert t.log == ["usb0: cannot be used for peer-to-peer DMA as it is not a PCI device"]


def test_find_many_picks_min_distance_with_seeded_rng() -> None:
    t = switch_fabric(AMD_ZEN)
    a, b, c = (t.device(n) for n in ("ep_a", "ep_b", "ep_c"))
    rng = np.random.default_rng(1)
    assert pci_p2pmem_find_many(t, [a], rng) is None          # nothing published
    for d in (b, c):
        pci_p2pdma_add_resource(d, 2)
    assert pci_p2pmem_find_many(t, [a], rng) is None          # added but not published
    pci_p2pmem_publish(b, True)
    pci_p2pmem_publish(c, True)
    assert pci_has_p2pmem(b) and pci_has_p2pmem(c)
    assert pci_p2pmem_find_many(t, [a], rng) is b             # 4 beats 6
    assert pci_p2pmem_find_many(t, [c], rng) is c             # itself: 0
    # several clients: distances add up (b: 4 + 6 = 10, c: 6 + 0 = 6)
    picks = {pci_p2pmem_find_many(t, [a, c], np.random.default_rng(s)) for s in range(20)}
    assert picks == {c}
    with pytest.raises(TypeError):
        pci_p2pmem_find_many(t, [a], None)  # type: ignore[arg-type]


def test_find_many_ties_are_drawn_from_the_generator() -> None:
    t = generate_topology(4, root_ports=4, switch_depth=0, p2pmem_every=1)
    eps = t.endpoints()
    client = eps[0]
    # the three others are all at distance 2 + 2 = 4 from ep0... but ep0 itself (0) wins
    assert pci_p2pmem_find_many(t, [client], np.random.default_rng(0)) is client
    pci_p2pmem_publish(client, False)
    picks = [pci_p2pmem_find_many(t, [client], np.random.default_rng(s)) for s in range(40)]
    assert {p.name for p in picks if p is not None} == {"ep1", "ep2", "ep3"}
    again = [pci_p2pmem_find_many(t, [client], np.random.default_rng(s)) for s in range(40)]
    assert picks == again                                     # seeded: reproducible


# ------------------------------------------------------------------ providers and pools
def test_add_resource_validation_errnos() -> None:
    text = "format = 1\n" + AMD_ZEN + hb()
    text += dev("0000:00:02.0", "rp0", "root_port")
    text += dev("0000:01:00.0", "a", parent="rp0", extra='driver = "nvme"\n'
                + bar(0xF000_0000, "16MiB", 2)
                + '[[device.bar]]\nindex = 4\nsize = "256"\nio = true\naddress = 0x1000\n'
                + '[[device.bar]]\nindex = 0\nsize = "16KiB"\naddress = 0xF100_0000\n')
    t = loads_toml(text)
    a = t.device("a")
    for args, code in [((4,), errno.EINVAL), ((1,), errno.EINVAL), ((2, 0, 16 << 20), errno.EINVAL),
                       ((2, 16 << 20, 2 << 20), errno.EINVAL), ((2, 1 << 20), errno.EINVAL),
                       ((0,), errno.EINVAL), ((7,), errno.EINVAL)]:
        with pytest.raises(DmaBufError) as ei:
            pci_p2pdma_add_resource(a, *args)
        assert ei.value.errno == code, args
    assert a.p2pdma is None
    pci_p2pdma_add_resource(a, 2, 4 << 20, 2 << 20)
    assert t.log == ["nvme 0000:01:00.0: added peer-to-peer DMA memory 0xf0200000-0xf05fffff"]
    with pytest.raises(DmaBufError) as ei:
        pci_p2pdma_add_resource(a, 2, 2 << 20, 4 << 20)      # overlaps the first range
    assert ei.value.errno == errno.ENOMEM
    pci_p2pdma_add_resource(a, 2, 0, 8 << 20)                 # size 0: to the end of the BAR
    p2p = a.p2pdma
    assert p2p is not None and p2p.describe()["size"] == (4 << 20) + (8 << 20)
    assert p2p.describe()["published"] == 0


def test_non_mappable_bars_refuse_p2pdma() -> None:
    text = "format = 1\n" + AMD_ZEN + hb()
    text += dev("0000:00:02.0", "rp0", "root_port")
    text += dev("0000:01:00.0", "a", parent="rp0",
                extra="non_mappable_bars = true\n" + bar(0xF000_0000))
    t = loads_toml(text)
    with pytest.raises(DmaBufError) as ei:
        pci_p2pdma_add_resource(t.device("a"), 2)
    assert ei.value.errno == errno.EOPNOTSUPP
    with pytest.raises(ContractViolation):
        pcim_p2pdma_provider(t.device("a"), 2)
    assert pcim_p2pdma_provider(t.device("a"), 5) is None


def test_pool_alloc_free_first_fit_and_bus_addresses() -> None:
    text = "format = 1\n" + AMD_ZEN + hb()
    text += dev("0000:00:02.0", "rp0", "root_port")
    text += dev("0000:01:00.0", "a", parent="rp0", extra=bar(0xF000_0000, "4MiB").replace(
        "prefetchable = true\n", "prefetchable = true\nbus_offset = -2147483648\n"))
    t = loads_toml(text)
    a = t.device("a")
    assert pci_alloc_p2pmem(a, 4096) is None                  # no pool yet
    pci_p2pdma_add_resource(a, 2)
    x = pci_alloc_p2pmem(a, 4096)
    y = pci_alloc_p2pmem(a, 5000)                             # rounds up to 2 pages
    z = pci_alloc_p2pmem(a, 4096)
    assert (x, y, z) == (0xF000_0000, 0xF000_1000, 0xF000_3000)
    assert pci_p2pmem_virt_to_bus(a, y) == 0x7000_1000       # bus = cpu + bus_offset
    assert pci_p2pmem_virt_to_bus(a, None) == 0
    assert pci_alloc_p2pmem(a, 0) is None
    assert y is not None
    pci_free_p2pmem(a, y, 5000)
    assert pci_alloc_p2pmem(a, 8192) == 0xF000_1000           # first fit reuses the hole
    with pytest.raises(ContractViolation):
        pci_free_p2pmem(a, 0xF000_5000, 4096)                 # never allocated
    big = pci_alloc_p2pmem(a, (4 << 20) - 4 * 4096)
    assert big == 0xF000_4000
    assert pci_alloc_p2pmem(a, 4096) is None                  # exhausted
    p2p = a.p2pdma
    assert p2p is not None and p2p.describe()["available"] == 0
    pci_p2pdma_release(a)
    assert pci_alloc_p2pmem(a, 4096) is None


def test_alloc_sgl_and_mmap_of_p2pmem_allocate() -> None:
    t = switch_fabric(AMD_ZEN)
    b = t.device("ep_b")
    with pytest.raises(DmaBufError) as ei:
        p2pmem_alloc_mmap(b, 4096)
    assert ei.value.errno == errno.ENODEV
    pci_p2pdma_add_resource(b, 2)
    sgl = pci_p2pmem_alloc_sgl(b, 1 << 20)
    assert sgl is not None and sgl.dtype.itemsize == 16 and len(sgl) == 1
    assert (int(sgl[0]["addr"]), int(sgl[0]["len"])) == (0xF200_0000, 1 << 20)
    pci_p2pmem_free_sgl(b, sgl)
    for kw, code in [({"shared": False}, errno.EINVAL), ({"pgoff": 1}, errno.EINVAL)]:
        with pytest.raises(DmaBufError) as ei:
            p2pmem_alloc_mmap(b, 4096, **kw)  # type: ignore[arg-type]
        assert ei.value.errno == code
    r = p2pmem_alloc_mmap(b, 16 << 20)
    assert int(r[0]["addr"]) == 0xF200_0000
    with pytest.raises(DmaBufError) as ei:
        p2pmem_alloc_mmap(b, 4096)
    assert ei.value.errno == errno.ENOMEM


def test_add_resource_gives_the_range_p2pdma_pages() -> None:
    """devm_memremap_pages() in pci_p2pdma_add_resource: a MEMORY_DEVICE_PCI_P2PDMA page map
    whose freed pages go back to the pool; ranges added before the topology had memory get
    theirs from attach_memory; release tears them down first."""
    t = switch_fabric(AMD_ZEN)
    a, b = t.device("ep_a"), t.device("ep_b")
    pci_p2pdma_add_resource(b, 2, 4 << 20)                   # no memory yet: no pages
    with pytest.raises(DmaBufError) as ei:
        pci_p2pdma_pgmaps(b)
    assert ei.value.errno == errno.ENODEV and "attach_memory" in str(ei.value)
    with pytest.raises(DmaBufError) as ei:
        pci_p2pdma_pgmaps(a)                                  # no p2pmem at all
    assert ei.value.errno == errno.ENODEV
    phys = PhysMemory()
    t.attach_memory(phys)
    reg = memremap_registry(phys)
    (pb,) = pci_p2pdma_pgmaps(b)
    assert reg.pgmap_of(0xF200_0000) is pb and pb.live
    assert (pb.type, pb.start, pb.size, pb.provider, pb.owner) == \
        (MemoryType.MEMORY_DEVICE_PCI_P2PDMA, 0xF200_0000, 4 << 20, b.bdf, b)
    pci_p2pdma_add_resource(a, 2, 2 << 20, 2 << 20)           # memory attached: pages at once
    (pa,) = pci_p2pdma_pgmaps(a)
    assert reg.pgmap_of(0xF020_0000) is pa and reg.pgmap_of(0xF000_0000) is None
    # a page handed out and freed returns to the pool through p2pdma_folio_free
    x = pci_alloc_p2pmem(b, 4096)
    assert x == 0xF200_0000 and b.p2pdma is not None
    avail = b.p2pdma.describe()["available"]
    pb.page_init([x])
    pb.put_pages([x])
    assert b.p2pdma.describe()["available"] == avail + 4096
    # release with a page still referenced keeps everything; then it tears the pages down
    assert pci_alloc_p2pmem(b, 4096) == x
    pb.page_init([x])
    with pytest.raises(ContractViolation):
        pci_p2pdma_release(b)
    assert b.p2pdma is not None and pb.live
    pb.put_pages([x])
    pci_p2pdma_release(b)
    assert b.p2pdma is None and not pb.live and reg.pgmap_of(0xF200_0000) is None
    pci_p2pdma_add_resource(b, 2, 4 << 20)                   # the range can be added again
    assert reg.pgmap_of(0xF200_0000) is not None


def test_p2pdma_state_for_pages_and_provider_at() -> None:
    t = switch_fabric(INTEL)
    a, b, c = (t.device(n) for n in ("ep_a", "ep_b", "ep_c"))
    assert t.provider_at(0xF200_0000) is None                  # not initialised
    pci_p2pdma_add_resource(b, 2, 8 << 20)
    pcim_p2pdma_init(c)
    assert t.provider_at(0xF200_1234) == ("0000:04:00.0", 0)
    assert t.provider_at(0xF2FF_FFFF) == ("0000:04:00.0", 0)    # whole BAR is a provider
    assert t.provider_at(0xF300_0000) is None
    assert t.provider_at(0xF400_0000) == ("0000:05:00.0", 0)
    st = PciP2pdmaMapState()
    assert pci_p2pdma_state(st, a, t, 0x1000) == PciP2pdmaMapType.NONE
    assert pci_p2pdma_state(st, a, t, 0xF200_0000) == BUS
    assert st.mem is not None and st.mem.owner is b
    assert pci_p2pdma_state(st, a, t, 0xF280_0000) == PciP2pdmaMapType.NONE   # no pages there
    assert pci_p2pdma_state(st, c, t, 0xF200_2000) == BUS    # same provider: state reused
    assert st.mem.bus_addr_map(0xF200_0000) == 0xF200_0000


def test_topology_is_a_p2p_fabric() -> None:
    t = switch_fabric()
    assert isinstance(t, P2PFabric)
    assert t.iommu_group("ep_a") is None
    with pytest.raises(DmaBufError) as ei:
        t.iommu_group("nope")
    assert ei.value.errno == errno.ENODEV


def test_enable_store() -> None:
    t = switch_fabric(AMD_ZEN)
    b = t.device("ep_b")
    assert pci_p2pdma_enable_store(t, "1") == (None, True)
    assert pci_p2pdma_enable_store(t, "off\n") == (None, False)
    with pytest.raises(DmaBufError) as ei:
        pci_p2pdma_enable_store(t, "0000:04:00.0")
    assert ei.value.errno == errno.ENODEV
    pci_p2pdma_add_resource(b, 2)
    pci_p2pmem_publish(b, True)
    assert pci_p2pdma_enable_store(t, "0000:04:00.0\n") == (b, True)
    with pytest.raises(DmaBufError):
        pci_p2pdma_enable_store(t, "0000:09:00.0")        # "0…" but not a device, not a bool


# ------------------------------------------------------------------ the vectorised matrix
def _check_matrix(t: Topology) -> int:
    devs = t.endpoints()
    m = p2p_matrix(t, devs)
    n = 0
    for i, p in enumerate(devs):
        for j, c in enumerate(devs):
            mt, d = calc_map_type_and_dist(p, c, verbose=False, _store=False, _log=[])
            assert (int(m.map_type[i, j]), int(m.distance[i, j])) == (int(mt), d), (p, c)
            n += 1
    return n


@pytest.mark.parametrize("seed", range(3))
def test_matrix_equals_per_pair_walk(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hbs = []
    for depth, cpu in ((0, CpuInfo("GenuineIntel", 6)), (1, CpuInfo("AuthenticAMD", 0x19)),
                       (2, CpuInfo("GenuineIntel", 6))):
        t = generate_topology(24, root_ports=3, switch_depth=depth, fanout=3, cpu=cpu,
                              host_bridge_id=(0x8086, 0x2F00), acs_redirect_fraction=0.3,
                              rng=rng)
        assert _check_matrix(t) == 24 * 24
        hbs.append(len(t.host_bridges))
    assert hbs == [8, 3, 1]


def test_matrix_counts_and_json() -> None:
    t = switch_fabric(INTEL)
    m = t.matrix(["ep_a", "ep_b", "ep_c"])
    assert m.counts() == {"BUS_ADDR": 2, "THRU_HOST_BRIDGE": 0, "NOT_SUPPORTED": 4}
    d = m.as_dict()
    assert d["map_type"][0] == ["BUS_ADDR", "BUS_ADDR", "NOT_SUPPORTED"]
    assert d["distance"][0] == [0, 4, 6]
    assert m.get(t.device("ep_c"), t.device("ep_a")) == (NS, 6)
    assert t.log == []
