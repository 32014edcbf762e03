"""The backend interface: KernelBackend implements it; revoke() detaches a mapping."""

from __future__ import annotations

import mmap
import os
import socket
import typing

from dmabuf.uapi import KernelBackend, Memfd, UapiBackend, default_backend
from dmabuf.uapi.backend import MappedRegion


def test_kernel_backend_implements_every_protocol_member() -> None:
    members = [n for n in UapiBackend.__dict__ if not n.startswith("_")]
    members += list(typing.get_type_hints(UapiBackend))
    kb = KernelBackend()
    for n in set(members):
        assert hasattr(kb, n), n
    assert default_backend() is default_backend()
    assert kb.page_size == mmap.PAGESIZE


def test_mmap_region_matches_mapped_region_protocol() -> None:
    be = default_backend()
    with Memfd.create("r", 4096) as m:
        region = be.mmap(m.fileno(), 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                         flags=mmap.MAP_SHARED)
        assert isinstance(region, MappedRegion)
        view = memoryview(region)  # type: ignore[arg-type]
        try:
            region.close()
            raise AssertionError("close() must refuse while a view is exported")
        except BufferError:
            pass
        view.release()
        region.close()
        assert region.closed


def test_revoke_cuts_a_mapping_off_its_file() -> None:
    be = default_backend()
    with Memfd.create("r", 8192) as m:
        m.write(0, b"file")
        region = be.mmap(m.fileno(), 8192, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                         flags=mmap.MAP_SHARED)
        view = memoryview(region)  # type: ignore[arg-type]
        assert bytes(view[:4]) == b"file"
        be.revoke(region)
        assert bytes(view[:4]) == b"\0\0\0\0"
        view[:4] = b"anon"
        assert m.read(0, 4) == b"file"
        view.release()
        region.close()


def test_recv_fds_sets_cloexec() -> None:
    be = default_backend()
    a, b = socket.socketpair()
    with a, b, Memfd.create("c", 0, cloexec=False) as m:
        assert os.get_inheritable(m.fileno()) is True
        be.send_fds(a, b"x", [m.fileno()])
        data, fds, flags = be.recv_fds(b, 16, 1)
        assert data == b"x" and not flags & socket.MSG_CTRUNC and len(fds) == 1
        assert os.get_inheritable(fds[0]) is False
        os.close(fds[0])
