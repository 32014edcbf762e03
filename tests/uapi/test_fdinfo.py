"""fdinfo and debugfs bufinfo parsers, on text captured from Debian's 6.12 under QEMU and on
this machine's own (empty) bufinfo."""

from __future__ import annotations

import errno
import os

import pytest

from dmabuf.errors import DmaBufError
from dmabuf.uapi import Memfd, process_dmabufs, read_bufinfo, read_fdinfo
from dmabuf.uapi.fdinfo import BufInfoFence, parse_bufinfo, parse_fdinfo

# Captured from linux 6.12.107+deb12-amd64 (see docs/real-kernel.md): a named udmabuf with an
# imported stub write fence, a system-heap buffer imported by vgem, and a vgem export with two
# pending read fences.
FDINFO_UDMABUF = (
    'pos:\t0\n'
    'flags:\t02000002\n'
    'mnt_id:\t12\n'
    'ino:\t1\n'
    'size:\t8192\n'
    'count:\t1\n'
    'exp_name:\tudmabuf\n'
    'name:\tcap-name\n'
)
FDINFO_HEAP = (
    'pos:\t0\n'
    'flags:\t02000002\n'
    'mnt_id:\t12\n'
    'ino:\t2\n'
    'size:\t4096\n'
    'count:\t1\n'
    'exp_name:\tsystem\n'
)
BUFINFO = (
    '\n'
    'Dma-buf Objects:\n'
    'size    \tflags   \tmode    \tcount   \texp_name\tino     \tname\n'
    '00004096\t00000002\t00080007\t00000003\tdrm\t00000003\t<none>\n'
    '\tread fence:vgem unbound seq 1 unsignalled\n'
    '\tread fence:vgem unbound seq 1 unsignalled\n'
    '\tAttached Devices:\n'
    'Total 0 devices attached\n'
    '\n'
    '00004096\t00000002\t00080007\t00000004\tsystem\t00000002\t<none>\n'
    '\tAttached Devices:\n'
    '\tvgem\n'
    'Total 1 devices attached\n'
    '\n'
    '00008192\t00000002\t00080007\t00000001\tudmabuf\t00000001\tcap-name\n'
    '\twrite fence:stub stub seq 0 signalled\n'
    '\tAttached Devices:\n'
    'Total 0 devices attached\n'
    '\n'
    '\n'
    'Total 3 objects, 16384 bytes\n'
)


def test_parse_fdinfo_named_udmabuf() -> None:
    fi = parse_fdinfo(FDINFO_UDMABUF)
    assert (fi.size, fi.count, fi.exp_name, fi.name) == (8192, 1, "udmabuf", "cap-name")
    assert fi.flags == os.O_RDWR | os.O_CLOEXEC and fi.pos == 0 and fi.ino == 1
    assert fi.mnt_id == 12 and fi.raw["exp_name"] == "udmabuf"


def test_parse_fdinfo_unnamed_is_none() -> None:
    fi = parse_fdinfo(FDINFO_HEAP)
    assert (fi.size, fi.exp_name, fi.name) == (4096, "system", None)


def test_parse_fdinfo_empty_name_is_empty_string() -> None:
    assert parse_fdinfo(FDINFO_HEAP + "name:\t\n").name == ""


def test_parse_fdinfo_of_a_non_dmabuf_is_enotty() -> None:
    with pytest.raises(DmaBufError, match="not a dma-buf") as ei:
        parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t1\nino:\t7\n", fd=5)
    assert ei.value.errno == errno.ENOTTY


def test_parse_fdinfo_malformed_number_is_einval() -> None:
    with pytest.raises(DmaBufError, match="size") as ei:
        parse_fdinfo("size:\tlots\ncount:\t1\nexp_name:\tx\n")
    assert ei.value.errno == errno.EINVAL


def test_parse_bufinfo_captured() -> None:
    bi = parse_bufinfo(BUFINFO)
    assert (bi.total_objects, bi.total_bytes) == (3, 16384)
    drm, heap, udma = bi.objects
    assert (drm.exp_name, drm.count, drm.ino, drm.name, drm.mode) == ("drm", 3, 3, None, 0x80007)
    assert drm.fences == (BufInfoFence("read", "vgem", "unbound", 1, False),) * 2
    assert drm.attached_devices == ()
    assert heap.attached_devices == ("vgem",) and heap.count == 4 and heap.fences == ()
    assert (udma.size, udma.name, udma.flags) == (8192, "cap-name", os.O_RDWR)
    assert udma.fences == (BufInfoFence("write", "stub", "stub", 0, True),)
    assert bi.find(2) is heap and bi.find(99) is None


# The same buffers as BUFINFO, in the fence-line format of v7.1's dma_fence_describe()
# ("%llu:%llu %s %s %ssignalled": context:seqno timeline driver, no names once signalled).
BUFINFO_V71 = (BUFINFO
               .replace("\tread fence:vgem unbound seq 1 unsignalled\n",
                        "\tread fence:7:1 unbound vgem unsignalled\n")
               .replace("\twrite fence:stub stub seq 0 signalled\n",
                        "\twrite fence:0:0   signalled\n"))


def test_parse_bufinfo_v71_fence_lines() -> None:
    assert BUFINFO_V71 != BUFINFO
    bi = parse_bufinfo(BUFINFO_V71)
    drm, heap, udma = bi.objects
    assert drm.fences == (BufInfoFence("read", "vgem", "unbound", 1, False, 7),) * 2
    assert udma.fences == (BufInfoFence("write", "", "", 0, True, 0),)
    assert heap.fences == () and heap.attached_devices == ("vgem",)
    assert (bi.total_objects, bi.total_bytes) == (3, 16384)


@pytest.mark.parametrize(("line", "want"), [
    ("\tkernel fence:12:34 gfx_0.0.0 amdgpu unsignalled",
     BufInfoFence("kernel", "amdgpu", "gfx_0.0.0", 34, False, 12)),
    ("\tbookkeep fence:18446744073709551615:5   signalled",
     BufInfoFence("bookkeep", "", "", 5, True, 18446744073709551615)),
    ("\tread fence:3:9 my timeline drv unsignalled",        # a timeline name with a space
     BufInfoFence("read", "drv", "my timeline", 9, False, 3)),
    ("\twrite fence:i915 0000:00:02.0 seq 77 unsignalled",  # 6.12: no context
     BufInfoFence("write", "i915", "0000:00:02.0", 77, False, None)),
])
def test_parse_bufinfo_fence_line_variants(line: str, want: BufInfoFence) -> None:
    text = ("\nDma-buf Objects:\n"
            "00004096\t00000002\t00080007\t00000001\tx\t00000009\t<none>\n"
            f"{line}\n\tAttached Devices:\nTotal 0 devices attached\n\n"
            "\nTotal 1 objects, 4096 bytes\n")
    assert parse_bufinfo(text).objects[0].fences == (want,)


def test_parse_bufinfo_rejects_a_mangled_v71_fence_line() -> None:
    with pytest.raises(DmaBufError, match="unexpected bufinfo line") as ei:
        parse_bufinfo(BUFINFO_V71.replace("0:0   signalled", "0:0   finished"))
    assert ei.value.errno == errno.EINVAL


def test_parse_bufinfo_rejects_other_text() -> None:
    with pytest.raises(DmaBufError, match="not a dma_buf/bufinfo") as ei:
        parse_bufinfo("hello\n")
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError, match="unexpected bufinfo line"):
        parse_bufinfo(BUFINFO.replace("\tAttached Devices:", "garbage"))


def test_host_bufinfo_reads_or_explains() -> None:
    try:
        bi = read_bufinfo()
    except DmaBufError as e:  # debugfs not mounted here
        assert e.errno in (errno.ENOENT, errno.EACCES, errno.EPERM)
        assert "debugfs" in str(e)
        return
    assert bi.total_objects == len(bi.objects)
    assert bi.total_bytes == sum(o.size for o in bi.objects)


def test_missing_bufinfo_explains_debugfs(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(DmaBufError, match="mount -t debugfs") as ei:
        read_bufinfo(path=os.path.join(os.fspath(tmp_path), "bufinfo"))
    assert ei.value.errno == errno.ENOENT


def test_read_fdinfo_of_memfd_and_closed_fd() -> None:
    with Memfd.create("fi", 4096) as m:
        with pytest.raises(DmaBufError) as ei:
            read_fdinfo(m.fileno())
        assert ei.value.errno == errno.ENOTTY
        fd = m.fileno()
    with pytest.raises(DmaBufError, match="not open") as ei:
        read_fdinfo(fd)
    assert ei.value.errno == errno.ENOENT


def test_process_dmabufs_finds_none_here() -> None:
    with Memfd.create("fi", 4096):
        assert process_dmabufs() == {}
