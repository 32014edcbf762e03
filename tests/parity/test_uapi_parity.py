"""Parity tier: the uAPI behaviour table, observed on a real kernel (QEMU), compared exactly.

Every entry of :data:`behaviours.REGISTRY` becomes one test per backend. The ``kernel`` backend
boots Debian's 6.12 kernel under QEMU (TCG) once per session; the guest runs
``guest_main.py`` with the host's Python over 9p, i.e. this tree's ``dmabuf.uapi``, and the
observations are compared here key by key with each behaviour's ``expect``. The ``model``
backend (the pydmabuf model behind the same ``UapiBackend`` interface) will run the same
functions in-process once ``dmabuf.backends`` provides it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from .behaviours import REGISTRY, Behaviour, compare

# The first kernel test pays for the boot (~20 s; minutes on a loaded machine).
BACKENDS = [pytest.param("kernel", marks=[pytest.mark.qemu, pytest.mark.timeout(600)],
                         id="kernel")]
NAMES = [b.name for b in REGISTRY]


def _get(name: str) -> Behaviour:
    return next(b for b in REGISTRY if b.name == name)


@pytest.fixture(params=BACKENDS)
def observations(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The observations of one backend: ``{"meta", "results"}``."""
    if request.param == "kernel":
        obs: dict[str, Any] = request.getfixturevalue("kernel_observations")
        return obs
    raise AssertionError(request.param)  # pragma: no cover


@pytest.mark.parametrize("name", NAMES)
def test_behaviour(observations: dict[str, Any], name: str) -> None:
    """The backend's observation of behaviour ``name`` equals the expected Linux behaviour."""
    b = _get(name)
    res = observations["results"].get(name)
    assert res is not None, f"{name} was not run by the guest"
    if "skipped" in res:
        pytest.skip(f"{name}: needs {res['skipped']}")
    assert "error" not in res, f"{name} raised in the guest:\n{res['error']}"
    diffs = compare(b, res["observed"])
    assert not diffs, f"{name} ({b.source}):\n  " + "\n  ".join(diffs)


def test_guest_ran_this_tree(observations: dict[str, Any]) -> None:
    """The guest imported this checkout's dmabuf.uapi (the binding under test)."""
    import dmabuf.uapi

    here = str(Path(dmabuf.uapi.__file__).resolve().parent)
    assert observations["meta"]["uapi_package"] == here
    assert observations["meta"]["features"] == {"udmabuf": None, "heap": None, "vgem": None,
                                                "debugfs": None}
    assert set(observations["results"]) == set(NAMES)


def test_behaviour_table_is_complete() -> None:
    """Every behaviour has a source, a docstring and a non-empty expectation (host only)."""
    assert len(REGISTRY) >= 50
    keys = sum(len(b.expect) for b in REGISTRY)
    assert keys >= 180, keys
    for b in REGISTRY:
        assert b.expect and b.source and b.doc, b.name


def test_compare_reports_differences() -> None:
    """compare() names missing keys and differing values (host only)."""
    b = Behaviour("x", lambda env: {}, {"a": 1, "b": "EINVAL"}, (), "src", "doc")
    assert compare(b, {"a": 1, "b": "EINVAL", "extra": 3}) == []
    assert compare(b, {"a": 2}) == ["a: expected 1, observed 2",
                                   "b: missing (observed keys: ['a'])"]


def test_model_backend_parity() -> None:
    """The same table against the model backend (pending: dmabuf.backends is not written)."""
    if importlib.util.find_spec("dmabuf.backends") is None:
        pytest.skip("model backend pending: dmabuf.backends does not exist yet; the table "
                    "runs in-process through behaviours.run_behaviours(Env(model_backend))")
    from dmabuf import backends  # type: ignore[attr-defined]

    make = getattr(backends, "model_uapi_backend", None)
    if make is None:
        pytest.skip("dmabuf.backends has no model_uapi_backend() yet")
    from .behaviours import Env, run_behaviours

    results = run_behaviours(Env(make()))
    failures = []
    for b in REGISTRY:
        res = results[b.name]
        if "error" in res:
            failures.append(f"{b.name}: {res['error'].splitlines()[-1]}")
        elif "observed" in res:
            failures += [f"{b.name}: {d}" for d in compare(b, res["observed"])]
    assert not failures, "\n".join(failures)


