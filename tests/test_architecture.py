"""The layering rule of docs/architecture.md, checked on the source: no module imports upward.

Layers (bottom-up): 0 errors/debug/sched/trace/machine/bench; 1 sync; 2 mm; 3 buf; 4 dma, pci;
5 devices; 6 sim; side: uapi (only errors); top: backends, doctor, cli, testing, lowlevel and the
package's __init__. Every ``import`` counts, including ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dmabuf

SRC = Path(dmabuf.__file__).parent

LAYER = {
    "errors": 0, "debug": 0, "sched": 0, "trace": 0, "machine": 0, "bench": 0,
    "sync": 1, "mm": 2, "buf": 3, "dma": 4, "pci": 4, "devices": 5, "sim": 6,
    "backends": 9, "doctor": 9, "cli": 9, "testing": 9, "lowlevel": 9, "__init__": 9,
}
SIDE = {"uapi": {"errors", "uapi"}}


def _top(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "dmabuf":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(SRC.parent).with_suffix("")
    pkg_parts = list(rel.parts[:-1])
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
    return out


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_upward_imports(path: Path) -> None:
    rel = path.relative_to(SRC)
    me = rel.parts[0].removesuffix(".py")
    assert me in LAYER or me in SIDE, f"{rel}: module {me!r} is in no layer; add it to the table"
    bad = []
    for line, mod in _imports(path):
        top = _top(mod)
        if top is None or top == me:
            continue
        if me in SIDE:
            if top not in SIDE[me]:
                bad.append(f"{rel}:{line} imports {mod} (uapi may import only dmabuf.errors)")
            continue
        if top in SIDE:
            if LAYER[me] < 9:
                bad.append(f"{rel}:{line} imports side layer {mod}")
            continue
        assert top in LAYER, f"{rel}:{line} imports unknown package {mod}"
        if LAYER[top] > LAYER[me]:
            bad.append(f"{rel}:{line}: layer {LAYER[me]} ({me}) imports layer {LAYER[top]} "
                       f"({mod})")
    assert not bad, "\n".join(bad)


def test_public_names_exported_from_one_tier_only() -> None:
    import dmabuf.lowlevel as lowlevel

    tiers = {"dmabuf": set(dmabuf.__all__), "dmabuf.lowlevel": set(lowlevel.__all__)}
    try:
        import dmabuf.testing as testing

        tiers["dmabuf.testing"] = set(getattr(testing, "__all__", []))
    except ImportError:  # pragma: no cover
        pass
    names = list(tiers.items())
    for i, (a, sa) in enumerate(names):
        for b, sb in names[i + 1:]:
            assert not (sa & sb), f"exported from both {a} and {b}: {sorted(sa & sb)}"
    for tier, mod in (("dmabuf", dmabuf), ("dmabuf.lowlevel", lowlevel)):
        for n in tiers[tier]:
            assert hasattr(mod, n), f"{tier}.__all__ lists {n} but it is not defined"
