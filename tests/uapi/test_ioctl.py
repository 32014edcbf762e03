"""ioctl numbers and structure layouts of the uAPI bindings (include/uapi/asm-generic/ioctl.h)."""

from __future__ import annotations

import ctypes

import pytest

from dmabuf.uapi import dma_buf, dma_heap, sync_file, udmabuf, vgem
from dmabuf.uapi.ioctl import IO, IOC, IOR, IOW, IOWR, ioc_dir, ioc_nr, ioc_size, ioc_type

# Values recorded from the real headers (machine-and-real-kernel.md §3) and, for DRM/vgem,
# computed by hand from drm.h/drm_mode.h/vgem_drm.h on x86-64.
RECORDED = {
    "UDMABUF_CREATE": (udmabuf.UDMABUF_CREATE, 0x40187542),
    "UDMABUF_CREATE_LIST": (udmabuf.UDMABUF_CREATE_LIST, 0x40087543),
    "DMA_HEAP_IOCTL_ALLOC": (dma_heap.DMA_HEAP_IOCTL_ALLOC, 0xC0184800),
    "DMA_BUF_IOCTL_SYNC": (dma_buf.DMA_BUF_IOCTL_SYNC, 0x40086200),
    "DMA_BUF_SET_NAME_B": (dma_buf.DMA_BUF_SET_NAME_B, 0x40086201),
    "DMA_BUF_SET_NAME_A": (dma_buf.DMA_BUF_SET_NAME_A, 0x40046201),
    "DMA_BUF_IOCTL_EXPORT_SYNC_FILE": (dma_buf.DMA_BUF_IOCTL_EXPORT_SYNC_FILE, 0xC0086202),
    "DMA_BUF_IOCTL_IMPORT_SYNC_FILE": (dma_buf.DMA_BUF_IOCTL_IMPORT_SYNC_FILE, 0x40086203),
    "SYNC_IOC_MERGE": (sync_file.SYNC_IOC_MERGE, 0xC0303E03),
    "SYNC_IOC_FILE_INFO": (sync_file.SYNC_IOC_FILE_INFO, 0xC0383E04),
    "SYNC_IOC_SET_DEADLINE": (sync_file.SYNC_IOC_SET_DEADLINE, 0x40103E05),
    "DRM_IOCTL_VERSION": (vgem.DRM_IOCTL_VERSION, 0xC0406400),
    "DRM_IOCTL_GEM_CLOSE": (vgem.DRM_IOCTL_GEM_CLOSE, 0x40086409),
    "DRM_IOCTL_PRIME_HANDLE_TO_FD": (vgem.DRM_IOCTL_PRIME_HANDLE_TO_FD, 0xC00C642D),
    "DRM_IOCTL_PRIME_FD_TO_HANDLE": (vgem.DRM_IOCTL_PRIME_FD_TO_HANDLE, 0xC00C642E),
    "DRM_IOCTL_MODE_CREATE_DUMB": (vgem.DRM_IOCTL_MODE_CREATE_DUMB, 0xC02064B2),
    "DRM_IOCTL_MODE_MAP_DUMB": (vgem.DRM_IOCTL_MODE_MAP_DUMB, 0xC01064B3),
    "DRM_IOCTL_VGEM_FENCE_ATTACH": (vgem.DRM_IOCTL_VGEM_FENCE_ATTACH, 0xC0106441),
    "DRM_IOCTL_VGEM_FENCE_SIGNAL": (vgem.DRM_IOCTL_VGEM_FENCE_SIGNAL, 0x40086442),
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_ioctl_number_matches_header(name: str) -> None:
    computed, recorded = RECORDED[name]
    assert computed == recorded, f"{name}: {computed:#x} != {recorded:#x}"


def test_set_name_is_pointer_sized_variant() -> None:
    """DMA_BUF_SET_NAME uses sizeof(const char *): B on 64-bit, A on 32-bit."""
    expect = dma_buf.DMA_BUF_SET_NAME_B if ctypes.sizeof(ctypes.c_void_p) == 8 else \
        dma_buf.DMA_BUF_SET_NAME_A
    assert expect == dma_buf.DMA_BUF_SET_NAME


SIZES = {
    dma_buf.DmaBufSync: 8, dma_buf.DmaBufExportSyncFile: 8, dma_buf.DmaBufImportSyncFile: 8,
    dma_heap.DmaHeapAllocationData: 24, udmabuf.UdmabufCreate: 24,
    udmabuf.UdmabufCreateItem: 24, udmabuf.UdmabufCreateList: 8,
    sync_file.SyncMergeData: 48, sync_file.SyncFenceInfoStruct: 80,
    sync_file.SyncFileInfoStruct: 56, sync_file.SyncSetDeadline: 16, vgem.DrmVersion: 64,
    vgem.DrmGemClose: 8, vgem.DrmPrimeHandle: 12, vgem.DrmModeCreateDumb: 32,
    vgem.DrmModeMapDumb: 16, vgem.DrmVgemFenceAttach: 16, vgem.DrmVgemFenceSignal: 8,
}


@pytest.mark.parametrize("struct", list(SIZES), ids=lambda s: s.__name__)
def test_struct_size(struct: type[ctypes.Structure]) -> None:
    assert ctypes.sizeof(struct) == SIZES[struct]


def test_field_offsets_follow_the_headers() -> None:
    assert dma_heap.DmaHeapAllocationData.fd.offset == 8
    assert dma_heap.DmaHeapAllocationData.heap_flags.offset == 16
    assert udmabuf.UdmabufCreate.offset.offset == 8
    assert sync_file.SyncFileInfoStruct.num_fences.offset == 40
    assert sync_file.SyncFileInfoStruct.sync_fence_info.offset == 48
    assert sync_file.SyncFenceInfoStruct.timestamp_ns.offset == 72
    assert vgem.DrmVersion.name.offset == 24


def test_ioc_fields_roundtrip() -> None:
    req = IOWR("b", 2, 8)
    assert (ioc_dir(req), ioc_type(req), ioc_nr(req), ioc_size(req)) == (3, ord("b"), 2, 8)
    assert IO("b", 4) == 0x6204
    assert IOR("b", 1, 4) == 0x80046201
    assert IOW(0x62, 0, dma_buf.DmaBufSync) == dma_buf.DMA_BUF_IOCTL_SYNC
    assert IOC(0, "b", 0, 0) == 0x6200


@pytest.mark.parametrize("args", [(4, "b", 0, 0), (0, "b", 256, 0), (0, "b", 0, 1 << 14),
                                  (0, 256, 0, 0)])
def test_ioc_rejects_fields_that_do_not_fit(args: tuple[int, str | int, int, int]) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        IOC(*args)
