"""dma-buf statistics: ``/proc/<pid>/fdinfo/<fd>`` and debugfs ``dma_buf/bufinfo``, parsed.

**fdinfo.** For a dma-buf fd the kernel prints the generic lines (``pos``, ``flags`` in octal,
``mnt_id``, ``ino``) and then ``dma_buf_show_fdinfo()``'s, in this order::

    size:\t<bytes>
    count:\t<file_count - 1>        (the reference procfs holds while printing is excluded)
    exp_name:\t<exporter>           (system, udmabuf, drm, …)
    name:\t<name>                   (only once DMA_BUF_SET_NAME was used)

``count`` is the number of references to the *file*: one per fd (in any process) and per
mapping, plus references drivers hold (an imported PRIME buffer).

**bufinfo.** ``/sys/kernel/debug/dma_buf/bufinfo`` (root, debugfs mounted, CONFIG_DEBUG_FS)
lists every dma-buf of the system::

    \\nDma-buf Objects:
    size    \\tflags   \\tmode    \\tcount   \\texp_name\\tino     \\tname
    <size %08zu>\\t<f_flags %08x>\\t<f_mode %08x>\\t<count %08ld>\\t<exp_name>\\t
        <ino %08lu>\\t<name|<none>>                                  (one line)
    \\t<usage> fence:<fence description>                              (one per fence of the resv)
    \\tAttached Devices:
    \\t<device name>                                                  (one per attachment)
    Total <n> devices attached
    (blank line)
    \\nTotal <n> objects, <bytes> bytes

(``count`` here is ``file_count()`` itself, without fdinfo's ``- 1``.) The fence description is
``dma_fence_describe()``'s, whose format changed (both are parsed, see :class:`BufInfoFence`)::

    <driver> <timeline> seq <seqno> [un]signalled          up to the 6.12 family
    <context>:<seqno> <timeline> <driver> [un]signalled    since "dma-buf: cleanup
                                                           dma_fence_describe v3"
                                                           (late 2025; in 7.1)

The newer format leaves both names empty once the fence has signalled (a signalled fence's
names may be gone: its ops can be detached), so such a line reads ``<ctx>:<seq>   signalled``.

Kernel: drivers/dma-buf/dma-buf.c (dma_buf_show_fdinfo(), dma_buf_debug_show(),
dmabuffs_dname()); drivers/dma-buf/dma-resv.c (dma_resv_describe());
drivers/dma-buf/dma-fence.c (dma_fence_describe()); fs/proc/fd.c (seq_show()).
"""

from __future__ import annotations

import dataclasses
import errno
import re

from dmabuf.errors import DmaBufError
from dmabuf.uapi.backend import UapiBackend, default_backend
from dmabuf.uapi.dma_buf import is_dmabuf_link
from dmabuf.uapi.fd import os_error

__all__ = [
    "BUFINFO_PATH",
    "BufInfo",
    "BufInfoFence",
    "BufInfoObject",
    "DmaBufFdInfo",
    "parse_bufinfo",
    "parse_fdinfo",
    "process_dmabufs",
    "read_bufinfo",
    "read_fdinfo",
]

BUFINFO_PATH = "/sys/kernel/debug/dma_buf/bufinfo"


@dataclasses.dataclass(frozen=True)
class DmaBufFdInfo:
    """The fdinfo of one dma-buf fd — ``dma_buf_show_fdinfo()`` plus the generic lines."""

    size: int
    count: int  #: file references minus the one procfs holds while printing
    exp_name: str
    name: str | None  #: None until DMA_BUF_SET_NAME
    flags: int | None  #: the file's f_flags (from the octal ``flags:`` line)
    pos: int | None
    mnt_id: int | None
    ino: int | None
    raw: dict[str, str]  #: every ``key:\tvalue`` line as text


def parse_fdinfo(text: str, *, fd: int | str = "?") -> DmaBufFdInfo:
    """Parse the fdinfo text of a dma-buf fd.

    Args:
        text: the file's contents.
        fd: names the fd in error messages.

    Returns:
        A :class:`DmaBufFdInfo`.

    Raises:
        DmaBufError: ENOTTY when the text lacks the dma-buf lines (the fd is not a dma-buf);
            EINVAL when a numeric field is malformed.

    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_show_fdinfo(); fs/proc/fd.c, seq_show().
    """
    raw: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key and key not in raw:
            raw[key] = value.strip(" \t")
    if "exp_name" not in raw or "size" not in raw:
        raise DmaBufError(errno.ENOTTY, (
            f"fd {fd} is not a dma-buf: its fdinfo has no size/exp_name lines "
            f"(keys: {sorted(raw)})"))

    def num(key: str, base: int = 10) -> int | None:
        if key not in raw:
            return None
        try:
            return int(raw[key].split()[0], base)
        except (ValueError, IndexError) as e:
            raise DmaBufError(errno.EINVAL,
                              f"fdinfo of fd {fd}: {key}: {raw[key]!r} is not a number") from e

    size, count = num("size"), num("count")
    if size is None or count is None:
        raise DmaBufError(errno.EINVAL, f"fdinfo of fd {fd} lacks size or count")
    return DmaBufFdInfo(size=size, count=count, exp_name=raw["exp_name"],
                        name=raw.get("name"), flags=num("flags", 8), pos=num("pos"),
                        mnt_id=num("mnt_id"), ino=num("ino"), raw=raw)


def read_fdinfo(fd: int, backend: UapiBackend | None = None, *,
                pid: int | str = "self") -> DmaBufFdInfo:
    """Read and parse ``/proc/<pid>/fdinfo/<fd>`` of a dma-buf.

    Raises:
        DmaBufError: ENOENT/EBADF if the fd is not open; ENOTTY if it is not a dma-buf.

    Kernel: fs/proc/fd.c, seq_show(); drivers/dma-buf/dma-buf.c, dma_buf_show_fdinfo().
    """
    be = backend if backend is not None else default_backend()
    path = f"/proc/{pid}/fdinfo/{fd}"
    try:
        text = be.read_text(path)
    except OSError as e:
        raise os_error(e, f"reading {path}", {errno.ENOENT: f"fd {fd} is not open"}) from e
    return parse_fdinfo(text, fd=fd)


def process_dmabufs(pid: int | str = "self",
                    backend: UapiBackend | None = None) -> dict[int, DmaBufFdInfo]:
    """Every dma-buf fd a process holds, with its fdinfo (what a leak hunt starts from).

    Args:
        pid: a process id or ``"self"``.
        backend: None for the running kernel.

    Returns:
        fd -> :class:`DmaBufFdInfo`, for the fds whose link reads ``/dmabuf:…``.

    Raises:
        DmaBufError: if ``/proc/<pid>/fd`` cannot be listed (EACCES for another user's).

    Kernel: fs/proc/fd.c (proc_fd_link(), seq_show()); dma-buf.c, dmabuffs_dname().
    """
    be = backend if backend is not None else default_backend()
    try:
        fds = sorted(int(n) for n in be.listdir(f"/proc/{pid}/fd") if n.isdigit())
    except OSError as e:
        raise os_error(e, f"listing /proc/{pid}/fd") from e
    out: dict[int, DmaBufFdInfo] = {}
    for fd in fds:
        try:
            if not is_dmabuf_link(be.readlink(f"/proc/{pid}/fd/{fd}")):
                continue
            out[fd] = parse_fdinfo(be.read_text(f"/proc/{pid}/fdinfo/{fd}"), fd=fd)
        except (OSError, DmaBufError):
            continue  # closed meanwhile
    return out


@dataclasses.dataclass(frozen=True)
class BufInfoFence:
    """One fence line of bufinfo — ``dma_resv_describe()`` / ``dma_fence_describe()``.

    Both formats of ``dma_fence_describe()`` are parsed: 6.12's ``driver timeline seq N`` (then
    :attr:`context` is None) and the newer ``context:seqno timeline driver`` (then
    :attr:`driver` and :attr:`timeline` are ``""`` for a signalled fence: the kernel prints no
    names for it).
    """

    usage: str  #: kernel, write, read or bookkeep
    driver: str  #: ``""`` for a signalled fence in the newer format
    timeline: str  #: ``""`` for a signalled fence in the newer format
    seqno: int
    signalled: bool
    context: int | None = None  #: the fence context (newer format only; None for 6.12 lines)


@dataclasses.dataclass(frozen=True)
class BufInfoObject:
    """One dma-buf of bufinfo."""

    size: int
    flags: int  #: the file's f_flags
    mode: int  #: the file's f_mode
    count: int  #: file_count()
    exp_name: str
    ino: int
    name: str | None  #: None for ``<none>``
    fences: tuple[BufInfoFence, ...]
    attached_devices: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class BufInfo:
    """The parsed bufinfo file."""

    objects: tuple[BufInfoObject, ...]
    total_objects: int
    total_bytes: int

    def find(self, ino: int) -> BufInfoObject | None:
        """The object with inode ``ino`` (:attr:`dmabuf.uapi.dma_buf.DmaBufFile.inode`)."""
        return next((o for o in self.objects if o.ino == ino), None)


_OBJ_RE = re.compile(r"^(\d+)\t([0-9a-f]+)\t([0-9a-f]+)\t(-?\d+)\t(.*)\t(\d+)\t(.*)$")
# dma_fence_describe() up to 6.12: "%s %s seq %llu %ssignalled" (driver, timeline).
_FENCE_RE = re.compile(r"^\t(\w+) fence:\s?(.*) seq (\d+) (un)?signalled$")
# Since "dma-buf: cleanup dma_fence_describe v3": "%llu:%llu %s %s %ssignalled" (context, seqno,
# timeline, driver; both names "" once signalled).
_FENCE_CTX_RE = re.compile(r"^\t(\w+) fence:(\d+):(\d+) (.*) (un)?signalled$")
_ATT_RE = re.compile(r"^Total (\d+) devices attached$")
_TOTAL_RE = re.compile(r"^Total (\d+) objects, (\d+) bytes$")


def _split_driver_timeline(s: str) -> tuple[str, str]:
    driver, _, timeline = s.partition(" ")
    return driver, timeline


def _parse_fence_line(line: str) -> BufInfoFence | None:
    """One ``dma_resv_describe()`` line in either ``dma_fence_describe()`` format, or None."""
    m = _FENCE_CTX_RE.match(line)
    if m:
        # "<timeline> <driver>": driver names carry no spaces, so split at the last one.
        timeline, _, driver = m.group(4).rpartition(" ")
        return BufInfoFence(m.group(1), driver, timeline, int(m.group(3)), m.group(5) is None,
                            int(m.group(2)))
    m = _FENCE_RE.match(line)
    if m:
        driver, timeline = _split_driver_timeline(m.group(2))
        return BufInfoFence(m.group(1), driver, timeline, int(m.group(3)), m.group(4) is None)
    return None


def parse_bufinfo(text: str) -> BufInfo:
    """Parse debugfs ``dma_buf/bufinfo`` (the fence lines of 6.12 and of later kernels).

    Args:
        text: the file's contents.

    Returns:
        A :class:`BufInfo`.

    Raises:
        DmaBufError: EINVAL when the text does not follow the kernel's format (the line is
            quoted).

    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_debug_show(); dma-resv.c, dma_resv_describe();
        dma-fence.c, dma_fence_describe().
    """
    objects: list[BufInfoObject] = []
    cur: dict[str, object] | None = None
    fences: list[BufInfoFence] = []
    devices: list[str] = []
    in_devices = False
    total: tuple[int, int] | None = None
    lines = text.splitlines()
    header_seen = False
    for line in lines:
        if not line.strip():
            continue
        if line.strip() == "Dma-buf Objects:":
            header_seen = True
            continue
        if not header_seen:
            raise DmaBufError(errno.EINVAL, f"not a dma_buf/bufinfo file: it starts with {line!r} "
                                            "instead of 'Dma-buf Objects:'")
        if line.startswith("size") and "exp_name" in line:
            continue
        m = _TOTAL_RE.match(line)
        if m:
            total = (int(m.group(1)), int(m.group(2)))
            continue
        m = _ATT_RE.match(line)
        if m and cur is not None:
            objects.append(BufInfoObject(fences=tuple(fences), attached_devices=tuple(devices),
                                         **cur))  # type: ignore[arg-type]
            cur, fences, devices, in_devices = None, [], [], False
            continue
        m = _OBJ_RE.match(line)
        if m and not line.startswith("\t"):
            name = m.group(7)
            cur = {"size": int(m.group(1)), "flags": int(m.group(2), 16),
                   "mode": int(m.group(3), 16), "count": int(m.group(4)),
                   "exp_name": m.group(5), "ino": int(m.group(6)),
                   "name": None if name == "<none>" else name}
            continue
        if cur is not None and line == "\tAttached Devices:":
            in_devices = True
            continue
        fence = _parse_fence_line(line) if cur is not None and not in_devices else None
        if fence is not None:
            fences.append(fence)
            continue
        if cur is not None and in_devices and line.startswith("\t"):
            devices.append(line[1:])
            continue
        raise DmaBufError(errno.EINVAL, f"unexpected bufinfo line: {line!r}")
    if not header_seen or total is None:
        raise DmaBufError(errno.EINVAL, "not a dma_buf/bufinfo file (no 'Dma-buf Objects:' "
                                        "header or no 'Total … objects' line)")
    return BufInfo(tuple(objects), total[0], total[1])


def read_bufinfo(backend: UapiBackend | None = None, path: str = BUFINFO_PATH) -> BufInfo:
    """Read and parse debugfs ``dma_buf/bufinfo``.

    Raises:
        DmaBufError: ENOENT (debugfs not mounted, or CONFIG_DEBUG_FS off) and EACCES (needs
            root) with what to do; EINVAL for an unparsable file.

    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_debug_show().
    """
    be = backend if backend is not None else default_backend()
    try:
        text = be.read_text(path)
    except OSError as e:
        raise os_error(e, f"reading {path}", {
            errno.ENOENT: ("debugfs is not mounted (mount -t debugfs none /sys/kernel/debug) or "
                           "the kernel lacks CONFIG_DEBUG_FS / CONFIG_DMA_SHARED_BUFFER"),
            errno.EACCES: "debugfs is readable by root only",
            errno.EPERM: "debugfs access is restricted (lockdown, or debugfs=off)"}) from e
    return parse_bufinfo(text)
