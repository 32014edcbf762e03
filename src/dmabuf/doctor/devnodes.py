"""Device nodes and their permissions — drivers/base/devtmpfs.c and the drivers that register them.

The nodes through which user space reaches dma-buf exporters and importers:

=================  ===========================================  ================================
group              nodes                                         registered by (config)
=================  ===========================================  ================================
``dma_heap``       ``/dev/dma_heap/<heap>`` (``system``, CMA)    drivers/dma-buf/dma-heap.c
                                                                 (DMABUF_HEAPS)
``udmabuf``        ``/dev/udmabuf``                              drivers/dma-buf/udmabuf.c
                                                                 (UDMABUF, misc device)
``dri``            ``/dev/dri/card*``, ``/dev/dri/renderD*``     drivers/gpu/drm (DRM; needs a GPU
                                                                 or vgem)
``infiniband``     ``/dev/infiniband/uverbs*``, ``rdma_cm``       drivers/infiniband/core
                                                                 (INFINIBAND_USER_ACCESS; needs
                                                                 an RDMA device)
``vfio``           ``/dev/vfio/vfio``, ``/dev/vfio/<group>``,    drivers/vfio (VFIO)
                   ``/dev/vfio/devices/vfio*``
``iommufd``        ``/dev/iommu``                                drivers/iommu/iommufd (IOMMUFD)
``kfd``            ``/dev/kfd``                                  amdgpu's KFD (HSA_AMD)
``accel``          ``/dev/accel/accel*``                         drivers/accel (DRM_ACCEL:
                                                                 habanalabs…)
``nvidia``         ``/dev/nvidia*``                              NVIDIA's out-of-tree driver
=================  ===========================================  ================================

Nodes are ``lstat``-ed, never opened. Access is ``access(2)`` with the effective ids of the
current user on the live machine; a pydmabuf capture records the capturing user's access in its
manifest (so a capture made by root shows everything accessible — the doctor says so). Running as
root hides permission problems: the doctor reports that too.

Kernel: drivers/base/devtmpfs.c, drivers/dma-buf/dma-heap.c (dma_heap_devnode),
drivers/dma-buf/udmabuf.c (udmabuf_misc), drivers/gpu/drm/drm_drv.c, drivers/infiniband/core/
uverbs_main.c, drivers/vfio/vfio_main.c, drivers/iommu/iommufd/main.c.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from typing import Any

from dmabuf.doctor.kconfig import DoctorContext
from dmabuf.doctor.report import Finding, Severity
from dmabuf.doctor.sysroot import SysRoot

__all__ = ["NODE_GROUPS", "DevNode", "NodeGroup", "devnode_findings", "read_devnodes",
           "stat_node"]


@dataclass(frozen=True)
class NodeGroup:
    """One family of device nodes.

    Attributes:
        key: finding suffix (``devnode.<key>``).
        path: ``/dev`` entry — a file (``udmabuf``) or a directory (``dma_heap``).
        prefixes: for a directory, entry-name prefixes that count (empty: every entry).
        config: the option that creates the nodes (``None``: out of tree).
        needs_hw: nodes appear only when a device is present (a GPU, an RDMA NIC).
        what: what the nodes give.
        access_remedy: how to grant access.
        required: entry-name prefixes that must be accessible (``renderD`` for DRM: ``card*``
            nodes are normally restricted).
    """

    key: str
    path: str
    prefixes: tuple[str, ...]
    config: str | None
    needs_hw: bool
    what: str
    access_remedy: str
    required: tuple[str, ...] = ()


NODE_GROUPS: tuple[NodeGroup, ...] = (
    NodeGroup("dma_heap", "dev/dma_heap", (), "DMABUF_HEAPS", False,
              "allocate dma-bufs from a heap (DMA_HEAP_IOCTL_ALLOC)",
              "a udev rule, e.g. SUBSYSTEM==\"dma_heap\", KERNEL==\"system\", MODE=\"0660\", "
              "GROUP=\"video\", and add the user to that group"),
    NodeGroup("udmabuf", "dev/udmabuf", (), "UDMABUF", False,
              "turn a sealed memfd into a dma-buf (UDMABUF_CREATE)",
              "a udev rule, e.g. KERNEL==\"udmabuf\", MODE=\"0660\", GROUP=\"video\", and add "
              "the user to that group"),
    NodeGroup("dri", "dev/dri", ("card", "renderD"), "DRM", True,
              "GPU buffers and PRIME dma-buf export/import",
              "add the user to the 'render' group (usermod -aG render USER) for renderD*; in a "
              "container pass --device=/dev/dri", ("renderD",)),
    NodeGroup("infiniband", "dev/infiniband", ("uverbs", "rdma_cm"), "INFINIBAND_USER_ACCESS",
              True, "RDMA verbs, including dma-buf memory regions (ibv_reg_dmabuf_mr)",
              "rdma-core's udev rules make uverbs* 0666; in a container pass "
              "--device=/dev/infiniband/uverbsN and --device=/dev/infiniband/rdma_cm",
              ("uverbs",)),
    NodeGroup("vfio", "dev/vfio", (), "VFIO", True,
              "VFIO device assignment; vfio-pci BAR dma-bufs (6.19+)",
              "give the user the group node (udev: SUBSYSTEM==\"vfio\", OWNER=\"USER\") and "
              "raise its locked-memory limit"),
    NodeGroup("iommufd", "dev/iommu", (), "IOMMUFD", False,
              "iommufd I/O page tables (maps dma-bufs from 6.19)",
              "a udev rule for KERNEL==\"iommu\" (MODE/GROUP), or run as a user that owns it"),
    NodeGroup("kfd", "dev/kfd", (), "HSA_AMD", True,
              "AMD ROCm compute (KFD)", "add the user to the 'render' (or 'video') group"),
    NodeGroup("accel", "dev/accel", ("accel",), "DRM_ACCEL", True,
              "compute accelerators (habanalabs, ivpu, qaic)",
              "a udev rule for SUBSYSTEM==\"accel\" (MODE/GROUP)"),
    NodeGroup("nvidia", "dev", ("nvidia",), None, True,
              "the NVIDIA driver's control and GPU nodes",
              "the NVIDIA driver creates them 0666 (nvidia-modprobe); in a container use the "
              "NVIDIA container toolkit"),
)


@dataclass
class DevNode:
    """One node: what ``lstat`` and ``access`` say.

    Attributes:
        path: absolute path on the machine (``/dev/dma_heap/system``).
        kind: ``chr``, ``blk``, ``dir``, ``link``, ``file`` or ``other``.
        rdev: ``"major:minor"`` for device files.
        mode: ``ls -l`` style (``crw-rw----``).
        uid / gid / owner / group: ownership (names ``None`` when unknown).
        readable / writable: for the checking user.
    """

    path: str
    kind: str
    rdev: str | None
    mode: str
    uid: int
    gid: int
    owner: str | None
    group: str | None
    readable: bool
    writable: bool

    def describe(self) -> dict[str, Any]:
        """JSON form (also the manifest's record format)."""
        return {"path": self.path, "kind": self.kind, "rdev": self.rdev, "mode": self.mode,
                "uid": self.uid, "gid": self.gid, "owner": self.owner, "group": self.group,
                "readable": self.readable, "writable": self.writable}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> DevNode:
        """Inverse of :meth:`describe` (manifest records)."""
        return DevNode(str(d["path"]), str(d.get("kind", "other")), d.get("rdev"),
                       str(d.get("mode", "")), int(d.get("uid", -1)), int(d.get("gid", -1)),
                       d.get("owner"), d.get("group"), bool(d.get("readable")),
                       bool(d.get("writable")))


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "chr"
    if stat.S_ISBLK(mode):
        return "blk"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def stat_node(fs_path: str, shown_path: str) -> DevNode | None:
    """``lstat`` + ``access`` one node, never opening it.

    Args:
        fs_path: where it is on this file system.
        shown_path: the path to report (``/dev/…`` even inside a captured root).

    Returns:
        A :class:`DevNode`, or ``None`` if nothing exists there.

    Kernel: fs/stat.c (lstat), fs/open.c (faccessat with AT_EACCESS).
    """
    try:
        st = os.lstat(fs_path)
    except OSError:
        return None
    try:
        owner: str | None = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = None
    try:
        group: str | None = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = None
    eff = os.access in os.supports_effective_ids
    rd = os.access(fs_path, os.R_OK, effective_ids=eff)
    wr = os.access(fs_path, os.W_OK, effective_ids=eff)
    kind = _kind(st.st_mode)
    rdev = (f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if kind in ("chr", "blk")
            else None)
    return DevNode(shown_path, kind, rdev, stat.filemode(st.st_mode), st.st_uid, st.st_gid,
                   owner, group, rd, wr)


def scan_group(root_path: str, group: NodeGroup) -> list[DevNode]:
    """The nodes of one group under a directory laid out like ``/`` (``root_path``).

    Returns:
        The group's directory (if it is one) followed by its matching entries (and, for VFIO,
        the ``devices/`` sub-directory's entries), in name order.

    Kernel: drivers/base/devtmpfs.c (the names the drivers register).
    """
    base = os.path.join(root_path, group.path)
    shown_base = "/" + group.path
    out: list[DevNode] = []
    if group.key == "nvidia":
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return []
        for n in names:
            if n.startswith(group.prefixes):
                node = stat_node(os.path.join(base, n), f"{shown_base}/{n}")
                if node is not None:
                    out.append(node)
        return out
    top = stat_node(base, shown_base)
    if top is None:
        return []
    out.append(top)
    if top.kind != "dir":
        return out
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return out
    for n in names:
        if group.prefixes and not n.startswith(group.prefixes):
            continue
        p = os.path.join(base, n)
        node = stat_node(p, f"{shown_base}/{n}")
        if node is None:
            continue
        out.append(node)
        if node.kind == "dir" and group.key == "vfio":   # /dev/vfio/devices/vfio*
            try:
                subs = sorted(os.listdir(p))
            except OSError:
                continue
            for s in subs:
                sn = stat_node(os.path.join(p, s), f"{shown_base}/{n}/{s}")
                if sn is not None:
                    out.append(sn)
    return out


@dataclass
class DevNodes:
    """Nodes by group, and where they came from."""

    source: str                      # "live", "root dev/", "capture manifest", "not captured"
    groups: dict[str, list[DevNode]]
    user: dict[str, Any]

    @property
    def known(self) -> bool:
        """False when device nodes were not captured."""
        return self.source != "not captured"

    def describe(self) -> dict[str, Any]:
        """JSON form."""
        return {"source": self.source, "user": self.user,
                "nodes": {k: [n.describe() for n in v] for k, v in self.groups.items()}}


def current_user() -> dict[str, Any]:
    """The checking user: uid, gid, supplementary groups (names where known)."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        name: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    groups = []
    for g in sorted(set(os.getgroups()) | {gid}):
        try:
            groups.append(grp.getgrgid(g).gr_name)
        except KeyError:
            groups.append(str(g))
    return {"uid": uid, "gid": gid, "name": name, "groups": groups}


def read_devnodes(root: SysRoot) -> DevNodes:
    """Collect the nodes of every :data:`NODE_GROUPS` entry for ``root``.

    Live: ``/dev``. A captured root: its own ``dev/`` directory if it has one, else the
    manifest's records, else "not captured".

    Returns:
        A :class:`DevNodes` with the source, the nodes per group and the checking user.

    Kernel: drivers/base/devtmpfs.c.
    """
    if root.live or (root.path / "dev").is_dir():
        groups = {g.key: scan_group(str(root.path), g) for g in NODE_GROUPS}
        return DevNodes("live" if root.live else f"{root.file('dev')}", groups, current_user())
    if root.manifest is not None and "dev" in root.manifest.get("captured", []):
        recs = [DevNode.from_dict(d) for d in root.manifest.get("devnodes", [])]
        groups = {}
        for g in NODE_GROUPS:
            base = "/" + g.path
            if g.key == "nvidia":
                groups[g.key] = [n for n in recs if n.path.startswith("/dev/nvidia")]
            else:
                groups[g.key] = [n for n in recs if n.path == base
                                 or n.path.startswith(base + "/")]
        user = dict(root.manifest.get("user", {}))
        return DevNodes("capture manifest", groups, user)
    return DevNodes("not captured", {g.key: [] for g in NODE_GROUPS}, {})


def _entries(nodes: list[DevNode]) -> list[DevNode]:
    """The device files of a group (not its directory)."""
    return [n for n in nodes if n.kind in ("chr", "blk")]


def devnode_findings(dn: DevNodes, ctx: DoctorContext, hw: dict[str, bool]) -> list[Finding]:
    """One ``devnode.<group>`` finding per group, plus ``devnode.user``.

    Args:
        dn: from :func:`read_devnodes`.
        ctx: kernel config (to tell "absent as expected" from "missing").
        hw: which hardware the PCI scan found (keys as the groups: ``{"dri": True, …}``).

    Returns:
        ``devnode.user``, then one ``devnode.<group>`` per :data:`NODE_GROUPS` entry (or only
        ``devnode.source`` when the nodes were not captured).

    Kernel: the registering drivers (see the module docstring).
    """
    out: list[Finding] = []
    if not dn.known:
        out.append(Finding("devnode.source", Severity.INFO, "devices", "device nodes not captured",
                           "this root has no dev/ and no pydmabuf manifest: /dev/dma_heap, "
                           "/dev/udmabuf, /dev/dri, /dev/infiniband, /dev/vfio and /dev/iommu "
                           "cannot be checked",
                           "capture with 'dmabuf doctor --capture DIR' (it records the nodes)",
                           {"source": dn.source}))
        return out
    user = dn.user
    who = (f"uid {user.get('uid')}" + (f" ({user.get('name')})" if user.get("name") else "")
           if user else "the checking user")
    if dn.source == "capture manifest":
        who += " at capture time"
    if user.get("uid") == 0:
        out.append(Finding("devnode.user", Severity.INFO, "devices",
                           "checked as root: every node is accessible to root",
                           f"access was checked for {who}; root bypasses file permissions, so "
                           "permission problems of the account that runs the workload do not "
                           "show", "run 'dmabuf doctor' as the user that runs the workload",
                           {"user": user, "source": dn.source}))
    else:
        out.append(Finding("devnode.user", Severity.OK, "devices", f"access checked for {who}",
                           f"groups: {', '.join(user.get('groups', [])) or '-'}", None,
                           {"user": user, "source": dn.source}))
    for g in NODE_GROUPS:
        nodes = dn.groups.get(g.key, [])
        devs = _entries(nodes)
        cfg = ctx.value(g.config) if g.config else "out-of-tree"
        ev: dict[str, Any] = {"nodes": [n.describe() for n in nodes], "config": cfg,
                              "config_option": f"CONFIG_{g.config}" if g.config else None}
        fid = f"devnode.{g.key}"
        shown = "/dev/nvidia*" if g.key == "nvidia" else "/" + g.path
        if devs:
            req = [n for n in devs if not g.required
                   or os.path.basename(n.path).startswith(g.required)]
            bad = [n for n in req if not (n.readable and n.writable)]
            names = ", ".join(f"{n.path} ({n.mode} {n.owner or n.uid}:{n.group or n.gid})"
                              for n in devs[:8]) + (f", … ({len(devs)} in all)"
                                                    if len(devs) > 8 else "")
            if bad:
                acc = ", ".join(f"{n.path} (access {'r' if n.readable else '-'}"
                                f"{'w' if n.writable else '-'})" for n in bad)
                out.append(Finding(fid, Severity.WARN, "devices",
                                   f"{shown}: present but not usable by {who}",
                                   f"{acc}: read and write access is needed to {g.what}. "
                                   f"All nodes: {names}", g.access_remedy, ev))
            elif not req:
                out.append(Finding(fid, Severity.INFO, "devices",
                                   f"{shown}: only restricted nodes",
                                   f"{names}; none of the {'/'.join(g.required)}* nodes that "
                                   f"{g.what} exists", None, ev))
            else:
                out.append(Finding(fid, Severity.OK, "devices", f"{shown}: {len(devs)} node(s), "
                                   "accessible", f"{names}; they {g.what}", None, ev))
            continue
        # absent
        if g.key == "dma_heap" and ctx.on("DMABUF_HEAPS") and not (
                ctx.on("DMABUF_HEAPS_SYSTEM") or ctx.on("DMABUF_HEAPS_CMA")):
            out.append(Finding(fid, Severity.INFO, "devices", f"{shown}: absent (no heap built)",
                               "CONFIG_DMABUF_HEAPS is on but no heap driver (DMABUF_HEAPS_SYSTEM"
                               ", DMABUF_HEAPS_CMA) is built, so no heap registers", None, ev))
        elif cfg in ("n", "absent"):
            out.append(Finding(fid, Severity.INFO, "devices", f"{shown}: absent (as expected)",
                               f"CONFIG_{g.config} is {cfg}, so nothing can {g.what}",
                               None, ev))
        elif cfg == "out-of-tree":
            out.append(Finding(fid, Severity.INFO, "devices", f"{shown}: absent",
                               f"the out-of-tree driver is not loaded ({g.what})", None, ev))
        elif cfg == "unknown":
            out.append(Finding(fid, Severity.INFO, "devices", f"{shown}: absent",
                               f"kernel config unknown; nothing here can {g.what}", None, ev))
        elif g.needs_hw:
            has_hw = hw.get(g.key, False)
            sev = Severity.WARN if has_hw else Severity.INFO
            out.append(Finding(
                fid, sev, "devices", f"{shown}: absent",
                (f"CONFIG_{g.config}={cfg} and matching hardware is present, but no node: the "
                 "driver is not bound or not loaded, or (in a container) the node was not "
                 "passed in") if has_hw else
                (f"CONFIG_{g.config}={cfg}, but the nodes appear only with a device (none "
                 "found)"),
                ("load/bind the device's driver; in a container pass the node with --device"
                 if has_hw else None), ev))
        elif cfg == "m":
            mod = {"UDMABUF": "udmabuf", "VFIO": "vfio", "IOMMUFD": "iommufd",
                   "DMABUF_HEAPS": "(a heap module)"}.get(g.config or "", g.key)
            out.append(Finding(fid, Severity.WARN, "devices", f"{shown}: absent (module not "
                               "loaded)", f"CONFIG_{g.config}=m but the module is not loaded, "
                               f"so nothing can {g.what}", f"modprobe {mod}", ev))
        else:
            out.append(Finding(fid, Severity.ERROR, "devices", f"{shown}: missing",
                               f"CONFIG_{g.config}=y but {shown} does not exist: devtmpfs is "
                               "not mounted on /dev, a udev rule removed it, or (in a "
                               "container) it was not passed in",
                               "mount -t devtmpfs devtmpfs /dev (or let udev create it); in a "
                               f"container pass --device={shown}", ev))
    return out
