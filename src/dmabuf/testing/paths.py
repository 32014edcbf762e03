"""Where the project's shared inputs live: specs, captured sysfs roots, the P2PDMA kernel kit.

The project is developed and tested with a sibling folder ``shared/`` beside the clone (CI clones
``main`` fresh and puts ``shared/`` beside it). :func:`shared_dir` finds it: ``$PYDMABUF_SHARED``
if set, else ``<clone>/../shared``, else ``/work/shared``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fixtures_dir", "repo_root", "shared_dir", "sysfs_roots_dir"]


def repo_root() -> Path | None:
    """The clone this package was installed from (editable install), or None."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "dmabuf").is_dir():
            return parent
    return None


def shared_dir() -> Path:
    """The ``shared/`` folder (see the module docstring); may not exist on a user's machine."""
    env = os.environ.get("PYDMABUF_SHARED")
    if env:
        return Path(env)
    root = repo_root()
    if root is not None and (root.parent / "shared").is_dir():
        return root.parent / "shared"
    return Path("/work/shared")


def fixtures_dir() -> Path:
    """``shared/fixtures``."""
    return shared_dir() / "fixtures"


def sysfs_roots_dir() -> Path:
    """``shared/fixtures/sysfs-roots``: captured roots with the real kernel's P2P outcomes."""
    return fixtures_dir() / "sysfs-roots"
