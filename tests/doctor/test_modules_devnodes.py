"""dmabuf.doctor.modules and .devnodes on synthetic roots (a captured case plus replaced files)."""

from __future__ import annotations

from pathlib import Path

from dmabuf.doctor import Severity, diagnose

from .helpers import needs_fixtures, node, root_of, synthetic

pytestmark = needs_fixtures

MODS = """nvidia_uvm 1974272 0 - Live 0x0000000000000000 (POE)
nvidia 64876544 1 nvidia_uvm, Live 0x0000000000000000 (POE)
mlx5_core 2568192 0 - Live 0x0000000000000000
ib_core 491520 0 - Live 0x0000000000000000
nvme 61440 2 - Live 0x0000000000000000
"""

CONFIG_ALL = "\n".join([
    "CONFIG_MODULES=y", "CONFIG_DMA_SHARED_BUFFER=y", "CONFIG_SYNC_FILE=y",
    "CONFIG_UDMABUF=y", "CONFIG_DMABUF_HEAPS=y", "CONFIG_DMABUF_HEAPS_SYSTEM=y",
    "CONFIG_PCI_P2PDMA=y", "CONFIG_ZONE_DEVICE=y", "CONFIG_VFIO=m", "CONFIG_VFIO_PCI=m",
    "CONFIG_IOMMUFD=m", "CONFIG_DRM=m", "CONFIG_INFINIBAND=m",
    "CONFIG_INFINIBAND_USER_ACCESS=m", "CONFIG_INFINIBAND_USER_MEM=y", ""])


def test_nvidia_without_peermem_and_mlx5_without_ib(tmp_path: Path) -> None:
    r = diagnose(synthetic(tmp_path, modules=MODS))
    lst = r.finding("modules.list")
    assert lst.severity == Severity.OK
    assert lst.title == "5 modules loaded, 5 relevant to dma-buf/P2P"
    assert r.sections["modules"]["loaded"] == ["ib_core", "mlx5_core", "nvidia", "nvidia_uvm",
                                               "nvme"]
    pm = r.finding("modules.nvidia_peermem")
    assert pm.severity == Severity.WARN and "modprobe nvidia-peermem" in (pm.remedy or "")
    assert r.finding("modules.mlx5_ib").remedy == "modprobe mlx5_ib"
    ub = r.finding("modules.ib_uverbs")
    assert ub.severity == Severity.WARN and ub.evidence["drivers"] == ["mlx5_core"]


def test_peermem_registered_and_open_modules(tmp_path: Path) -> None:
    root = synthetic(tmp_path, modules=MODS + "nvidia_peermem 16384 0 - Live 0x0\n"
                     "mlx5_ib 475136 0 - Live 0x0\nib_uverbs 188416 1 mlx5_ib, Live 0x0\n")
    peers = root / "sys/kernel/mm/memory_peers/nv_mem"
    peers.mkdir(parents=True)
    (peers / "version").write_text("1.3\n")
    nv = root / "proc/driver/nvidia"
    nv.mkdir(parents=True)
    (nv / "version").write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  "
                                "570.86.15  Release Build\nGCC version: gcc 12\n")
    r = diagnose(root)
    assert r.finding("modules.nvidia_peermem").severity == Severity.OK
    assert r.finding("modules.nvidia_peermem").evidence["memory_peers"] == {"nv_mem": "1.3"}
    fl = r.finding("modules.nvidia_flavour")
    assert fl.severity == Severity.OK and fl.title == "NVIDIA open kernel modules"
    assert not r.has("modules.mlx5_ib") and not r.has("modules.ib_uverbs")
    (nv / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.1\n")
    fl = diagnose(root).finding("modules.nvidia_flavour")
    assert fl.severity == Severity.WARN and fl.remedy is not None


def test_no_modules_with_modules_off_vs_missing_proc_modules(tmp_path: Path) -> None:
    root = synthetic(tmp_path, modules="")
    (root / "proc/modules").unlink()   # captured (manifest) but absent: a fact
    r = diagnose(root)
    f = r.finding("modules.list")
    assert f.title == "no loadable modules (CONFIG_MODULES is off)"
    assert "nvme" in f.reason and "pcieport" in f.reason
    root2 = synthetic(tmp_path / "b", modules="", config=CONFIG_ALL)
    (root2 / "proc/modules").unlink()
    f = diagnose(root2).finding("modules.list")
    assert f.severity == Severity.WARN and f.title == "/proc/modules missing"


def test_device_nodes_from_the_manifest(tmp_path: Path) -> None:
    nodes = [node("/dev/dma_heap", "dir", mode="drwxr-xr-x"),
             node("/dev/dma_heap/system", r=True, w=False, mode="crw-r--r--"),
             node("/dev/udmabuf"),
             node("/dev/dri", "dir", mode="drwxr-xr-x"),
             node("/dev/dri/card0", r=False, w=False, mode="crw-------"),
             node("/dev/dri/renderD128"),
             node("/dev/nvidia0"), node("/dev/nvidiactl")]
    user = {"uid": 1000, "gid": 1000, "name": "alice", "groups": ["alice", "render"]}
    r = diagnose(synthetic(tmp_path, config=CONFIG_ALL, devnodes=nodes, user=user))
    assert r.sections["devices"]["source"] == "capture manifest"
    u = r.finding("devnode.user")
    assert u.severity == Severity.OK and "uid 1000 (alice) at capture time" in u.title
    h = r.finding("devnode.dma_heap")
    assert h.severity == Severity.WARN and "/dev/dma_heap/system (access r-)" in h.reason
    assert "udev rule" in (h.remedy or "")
    assert r.finding("devnode.udmabuf").severity == Severity.OK
    d = r.finding("devnode.dri")       # card0 restricted is normal, renderD128 usable
    assert d.severity == Severity.OK and "2 node(s)" in d.title
    assert r.finding("devnode.nvidia").severity == Severity.OK
    # VFIO=m, IOMMUFD=m: modules not loaded -> modprobe; RDMA needs hardware -> info
    assert r.finding("devnode.iommufd").remedy == "modprobe iommufd"
    assert r.finding("devnode.infiniband").severity == Severity.INFO
    assert r.capabilities["udmabuf"]["available"] is True
    assert r.capabilities["dma_heap"]["available"] is False
    assert r.capabilities["drm_prime"]["available"] is True
    assert any("udmabuf (/dev/udmabuf)" in v and "DRM PRIME" in v for v in r.verdict)


def test_configured_node_missing_is_an_error(tmp_path: Path) -> None:
    r = diagnose(synthetic(tmp_path, config=CONFIG_ALL, devnodes=[]))
    f = r.finding("devnode.udmabuf")
    assert f.severity == Severity.ERROR and f.title == "/dev/udmabuf: missing"
    assert "devtmpfs" in (f.remedy or "")
    assert r.finding("devnode.dma_heap").severity == Severity.ERROR
    assert r.finding("devnode.dri").severity == Severity.INFO   # no GPU in this capture


def test_heaps_on_without_heap_drivers(tmp_path: Path) -> None:
    cfg = CONFIG_ALL.replace("CONFIG_DMABUF_HEAPS_SYSTEM=y", "# CONFIG_DMABUF_HEAPS_SYSTEM "
                             "is not set")
    r = diagnose(synthetic(tmp_path, config=cfg, devnodes=[]))
    f = r.finding("devnode.dma_heap")
    assert f.severity == Severity.INFO and "no heap built" in f.title
    assert r.finding("config.DMABUF_HEAPS_SYSTEM").severity == Severity.WARN


def test_a_root_with_its_own_dev_directory(tmp_path: Path) -> None:
    root = synthetic(tmp_path)
    (root / "dev" / "dri").mkdir(parents=True)
    (root / "dev" / "dri" / "renderD128").write_text("")   # not a device file: ignored
    r = diagnose(root)
    assert r.sections["devices"]["source"] == str(root / "dev")
    assert "absent" in r.finding("devnode.dri").title
    kinds = [n["kind"] for n in r.sections["devices"]["nodes"]["dri"]]
    assert kinds == ["dir", "file"]
    assert r.finding("devnode.udmabuf").severity == Severity.ERROR   # UDMABUF=y in this config


def test_fixture_without_manifest_is_unknown() -> None:
    r = diagnose(root_of("e_multifunction_intel"))
    assert r.sections["devices"]["source"] == "not captured"
    assert r.capabilities["udmabuf"]["available"] is None     # built in, nodes unknown
    assert r.capabilities["vfio"]["available"] is False       # CONFIG_VFIO is not set
    assert "nodes not captured" in r.capabilities["vfio"]["basis"]
