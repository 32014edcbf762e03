"""Device-node errors on this machine (no /dev/dma_heap, /dev/udmabuf or DRM), and the checks
the bindings make before any ioctl — exercised against /dev/null standing in for the device."""

from __future__ import annotations

import errno
import os

import pytest

from dmabuf.errors import DmaBufError
from dmabuf.uapi import DmaHeap, Memfd, SyncFile, Udmabuf, VgemDevice, list_heaps
from dmabuf.uapi.memfd import F_SEAL_WRITE
from dmabuf.uapi.vgem import drm_driver_name

PAGE = os.sysconf("SC_PAGE_SIZE")
HAS_HEAPS = os.path.isdir("/dev/dma_heap")
HAS_UDMABUF = os.path.exists("/dev/udmabuf")


@pytest.mark.skipif(HAS_HEAPS, reason="this machine has dma-buf heaps")
def test_missing_dma_heap_names_the_kernel_config() -> None:
    assert list_heaps() == []
    with pytest.raises(DmaBufError) as ei:
        DmaHeap.open("system")
    assert ei.value.errno == errno.ENOENT
    msg = str(ei.value)
    assert "CONFIG_DMABUF_HEAPS" in msg and "CONFIG_DMABUF_HEAPS_SYSTEM" in msg
    assert "/proc/config.gz" in msg


def test_unknown_heap_lists_the_existing_ones(tmp_path: os.PathLike[str]) -> None:
    root = os.fspath(tmp_path)
    open(os.path.join(root, "linux,cma"), "w").close()
    assert list_heaps(root=root) == ["linux,cma"]
    with pytest.raises(DmaBufError) as ei:
        DmaHeap.open("system", root=root)
    assert ei.value.errno == errno.ENOENT and "['linux,cma']" in str(ei.value)


def test_heap_permission_error_says_what_to_do(tmp_path: os.PathLike[str]) -> None:
    class Denied:
        page_size = PAGE

        def open(self, path: str, flags: int, mode: int = 0o600) -> int:
            raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(DmaBufError) as ei:
        DmaHeap.open("system", Denied())  # type: ignore[arg-type]
    assert ei.value.errno == errno.EACCES and "udev" in str(ei.value)


@pytest.mark.parametrize("name", ["", "../x", "a/b"])
def test_heap_name_must_be_plain(name: str) -> None:
    with pytest.raises(DmaBufError) as ei:
        DmaHeap.open(name)
    assert ei.value.errno == errno.EINVAL


def _null_heap() -> DmaHeap:
    return DmaHeap(os.open("/dev/null", os.O_RDONLY), name="null")


@pytest.mark.parametrize(("kw", "text"), [
    ({"size": 0}, "size must be"), ({"size": -4096}, "size must be"),
    ({"size": PAGE, "heap_flags": 1}, "heap_flags"),
    ({"size": PAGE, "fd_flags": os.O_RDWR | os.O_CREAT}, "O_ACCMODE")])
def test_heap_alloc_checks_before_ioctl(kw: dict[str, int], text: str) -> None:
    with _null_heap() as heap, pytest.raises(DmaBufError, match=text) as ei:
        heap.alloc(**kw)
    assert ei.value.errno == errno.EINVAL


def test_heap_alloc_on_a_non_heap_is_enotty() -> None:
    with _null_heap() as heap, pytest.raises(DmaBufError) as ei:
        heap.alloc(PAGE)
    assert ei.value.errno == errno.ENOTTY and "not a dma-heap" in str(ei.value)


@pytest.mark.skipif(HAS_UDMABUF, reason="this machine has /dev/udmabuf")
def test_missing_udmabuf_names_the_kernel_config() -> None:
    with pytest.raises(DmaBufError) as ei:
        Udmabuf.open()
    assert ei.value.errno == errno.ENOENT
    assert "CONFIG_UDMABUF" in str(ei.value) and "modprobe udmabuf" in str(ei.value)


def _null_udmabuf() -> Udmabuf:
    return Udmabuf(os.open("/dev/null", os.O_RDWR))


@pytest.mark.parametrize(("offset", "size", "text"), [
    (100, PAGE, "offset 100 is not page-aligned"), (0, PAGE + 1, f"use {PAGE} or {2 * PAGE}"),
    (0, 0, "size is 0"), (3 * PAGE, 2 * PAGE, "exceeds the memfd"),
    (-PAGE, PAGE, "must be an int")])
def test_udmabuf_range_checks_before_ioctl(offset: int, size: int, text: str) -> None:
    with _null_udmabuf() as dev, Memfd.create("u", 4 * PAGE) as m:
        m.seal_for_udmabuf()
        with pytest.raises(DmaBufError, match=text) as ei:
            dev.create(m, offset, size)
        assert ei.value.errno == errno.EINVAL


def test_udmabuf_seal_checks_before_ioctl() -> None:
    with _null_udmabuf() as dev:
        with Memfd.create("u", PAGE) as m, pytest.raises(DmaBufError,
                                                          match="lacks F_SEAL_SHRINK") as ei:
            dev.create(m)
        assert ei.value.errno == errno.EINVAL
        with Memfd.create("w", PAGE) as m:
            m.seal_for_udmabuf()
            m.add_seals(F_SEAL_WRITE)
            with pytest.raises(DmaBufError, match="write-sealed"):
                dev.create(m)


def test_udmabuf_non_memfd_is_ebadfd() -> None:
    r, w = os.pipe()
    try:
        with _null_udmabuf() as dev, pytest.raises(DmaBufError, match="not a memfd") as ei:
            dev.create(r, 0, PAGE)
        assert ei.value.errno == errno.EBADFD
        with _null_udmabuf() as dev, pytest.raises(DmaBufError, match="not open") as ei:
            dev.create(987654, 0, PAGE)
        assert ei.value.errno == errno.EBADFD
    finally:
        os.close(r)
        os.close(w)


def test_udmabuf_create_list_checks_every_item() -> None:
    with _null_udmabuf() as dev, Memfd.create("u", 4 * PAGE) as m:
        m.seal_for_udmabuf()
        with pytest.raises(DmaBufError, match="at least one"):
            dev.create_list([])
        with pytest.raises(DmaBufError, match="item 1: offset 5"):
            dev.create_list([(m, 0, PAGE), (m, 5, PAGE)])
        with pytest.raises(DmaBufError) as ei:  # valid: reaches /dev/null, which is no udmabuf
            dev.create_list([(m, 0, PAGE), (m, PAGE, PAGE)])
        assert ei.value.errno == errno.ENOTTY


def test_no_vgem_names_modprobe() -> None:
    if os.path.isdir("/dev/dri"):
        pytest.skip("this machine has DRM devices")
    with pytest.raises(DmaBufError) as ei:
        VgemDevice.open()
    assert ei.value.errno == errno.ENOENT
    assert "modprobe vgem" in str(ei.value) and "CONFIG_DRM_VGEM" in str(ei.value)


def test_drm_version_on_non_drm_fd_is_enotty() -> None:
    with Memfd.create("x", 0) as m, pytest.raises(DmaBufError, match="not a DRM") as ei:
        drm_driver_name(m.fileno())
    assert ei.value.errno == errno.ENOTTY


def test_sync_file_ops_on_a_non_sync_file() -> None:
    with Memfd.create("x", 0) as m:
        sf = SyncFile(os.dup(m.fileno()))
        with sf:
            with pytest.raises(DmaBufError, match="not a sync_file") as ei:
                sf.info()
            assert ei.value.errno == errno.ENOTTY
            with pytest.raises(DmaBufError, match="at most 31"):
                sf.merge(sf, "n" * 32)
            with pytest.raises(DmaBufError) as ei:
                sf.set_deadline(1)
            assert ei.value.errno == errno.ENOTTY
