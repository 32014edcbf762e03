"""Docstring rule: every public function names the kernel code it models.

CONVENTIONS.md: "Every public function/method docstring: one-line summary naming the kernel
symbol it models, then Args / Context / Returns / Raises / Kernel." This test enforces the
machine-checkable part of that rule for the model layers: each public top-level function and
each public method of a public class must have a docstring containing a line starting with
``Kernel:`` (the kernel file/symbol modelled) or the words ``Model-only`` (a helper with no
kernel counterpart, with the reason given in one clause).

Skipped: nested functions, properties, dunder methods, names imported from elsewhere, and
methods overriding a base-class method (same name, earlier in the MRO) whose docstring is
already compliant -- an ops override inherits the documentation of the op it implements.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import dmabuf

PACKAGES = ("sync", "dma", "pci", "mm", "buf", "devices")


def _modules() -> list[ModuleType]:
    mods: list[ModuleType] = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(f"dmabuf.{pkg_name}")
        mods.append(pkg)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
            mods.append(importlib.import_module(info.name))
    return mods


def _compliant(doc: str | None) -> bool:
    if not doc:
        return False
    if "Model-only" in doc:
        return True
    return any(line.strip().startswith("Kernel:") for line in doc.splitlines())


def _unwrap(attr: object) -> object | None:
    """Return the function behind a class attribute, or None if it is not a method."""
    if isinstance(attr, (staticmethod, classmethod)):
        return attr.__func__
    if inspect.isfunction(attr):
        return attr
    return None


def _base_compliant(cls: type, name: str) -> bool:
    for base in cls.__mro__[1:]:
        if name in vars(base):
            func = _unwrap(vars(base)[name])
            if func is not None and _compliant(inspect.getdoc(func)):
                return True
    return False


def _offenders() -> list[str]:
    bad: list[str] = []
    for mod in _modules():
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj):
                if not _compliant(obj.__doc__):
                    bad.append(f"{mod.__name__}.{name}")
            elif inspect.isclass(obj):
                for mname, attr in vars(obj).items():
                    if mname.startswith("_"):
                        continue
                    func = _unwrap(attr)
                    if func is None or _compliant(func.__doc__):
                        continue
                    if _base_compliant(obj, mname):
                        continue
                    bad.append(f"{mod.__name__}.{name}.{mname}")
    return sorted(set(bad))


def test_compliance_predicate() -> None:
    assert _compliant("Do x.\n\nKernel: drivers/dma-buf/dma-buf.c, dma_buf_get().")
    assert _compliant("Helper.\n\nModel-only: no kernel counterpart, test scaffolding.")
    assert not _compliant("Do x; see Kernel: inline is not a line start.")
    assert not _compliant(None)
    assert not _compliant("")


def test_every_public_function_names_its_kernel_symbol() -> None:
    bad = _offenders()
    if bad:
        pytest.fail(
            f"{len(bad)} public functions lack a 'Kernel:' line or 'Model-only' note:\n  "
            + "\n  ".join(bad)
        )


def test_packages_are_the_model_layers() -> None:
    for pkg_name in PACKAGES:
        assert hasattr(importlib.import_module(f"dmabuf.{pkg_name}"), "__path__")
    assert dmabuf.__name__ == "dmabuf"
