"""Public test kits of pydmabuf (``dmabuf.testing``).

* :func:`model_uapi_backend` — run code written against :mod:`dmabuf.uapi` on the model instead
  of a kernel.
* :mod:`dmabuf.testing.qemu` — boot a real Linux under QEMU (TCG) and run checks in it
  (imported explicitly: ``from dmabuf.testing import qemu``).
* :mod:`dmabuf.testing.paths` — where the shared fixtures live.
"""

from __future__ import annotations

from dmabuf.backends import ModelBackend as ModelBackend
from dmabuf.backends import model_uapi_backend as model_uapi_backend
from dmabuf.testing.paths import shared_dir as shared_dir
from dmabuf.testing.paths import sysfs_roots_dir as sysfs_roots_dir

__all__ = ["ModelBackend", "model_uapi_backend", "shared_dir", "sysfs_roots_dir"]
