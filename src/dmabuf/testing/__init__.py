"""Public test kits of pydmabuf (``dmabuf.testing``).

Submodules are imported explicitly (``from dmabuf.testing import qemu``); importing this package
has no side effects.
"""

from __future__ import annotations

__all__: list[str] = []
