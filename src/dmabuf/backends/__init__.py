"""Backends of the uAPI bindings: the pydmabuf model behind :mod:`dmabuf.uapi`'s system calls.

``dmabuf.uapi`` performs every system call through a
:class:`~dmabuf.uapi.backend.UapiBackend`; the default is the running kernel. This package
provides the other one: :class:`~dmabuf.backends.model.ModelBackend`, a model kernel on a
:class:`~dmabuf.machine.Machine` (system heap, udmabuf, vgem, memfd, sync_file, procfs and
debugfs files, fd passing, fork's fd-table copy), so code written for the real kernel runs and
is tested without one::

    from dmabuf.backends import model_uapi_backend
    from dmabuf.uapi import DmaHeap

    be = model_uapi_backend()
    with DmaHeap.open("system", be) as heap, heap.alloc(1 << 20) as buf:
        with buf.cpu_access(write=True) as v:
            v[:5] = b"hello"

Modules: :mod:`~dmabuf.backends.model` (the system calls), :mod:`~dmabuf.backends.vgem`
(the vgem DRM driver). User guide: ``docs/uapi.md``, "Model backend".
"""

from __future__ import annotations

from dmabuf.backends.model import (
    MODEL_RELEASE,
    ModelBackend,
    ModelKernel,
    ModelMapping,
    model_uapi_backend,
)
from dmabuf.backends.vgem import VgemDriver

__all__ = [
    "MODEL_RELEASE",
    "ModelBackend",
    "ModelKernel",
    "ModelMapping",
    "VgemDriver",
    "model_uapi_backend",
]
