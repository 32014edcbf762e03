"""Parity tier: the uAPI behaviour table, observed on a real kernel (QEMU), compared exactly.

Every entry of :data:`behaviours.REGISTRY` becomes one test per backend. The ``kernel`` backend
boots Debian's 6.12 kernel under QEMU (TCG) once per session; the guest runs
``guest_main.py`` with the host's Python over 9p, i.e. this tree's ``dmabuf.uapi``, and the
observations are compared here key by key with each behaviour's ``expect``. The ``model``
backend (``dmabuf.backends.model_uapi_backend()``: the pydmabuf model behind the same
``UapiBackend`` interface) runs the same functions in-process, once per module, and is compared
with the same expectations. Expectations are version-aware (``Behaviour.expect_for``): each
backend is compared for the release it reports (6.12 in the guest, 7.1 for the model).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from dmabuf.machine import Machine

from .behaviours import REGISTRY, Behaviour, Env, compare, run_behaviours

# The first kernel test pays for the boot (~20 s; minutes on a loaded machine).
BACKENDS = [pytest.param("kernel", marks=[pytest.mark.qemu, pytest.mark.timeout(600)],
                         id="kernel"),
            pytest.param("model", id="model")]
NAMES = [b.name for b in REGISTRY]


def _get(name: str) -> Behaviour:
    return next(b for b in REGISTRY if b.name == name)


@pytest.fixture(scope="module")
def model_observations() -> dict[str, Any]:
    """The whole table run in-process against the model backend on its own machine."""
    from dmabuf.backends import model_uapi_backend

    t0 = time.monotonic()
    m = Machine(debug=True, name="uapi-parity-model")
    be = model_uapi_backend(m)
    env = Env(be)
    results = run_behaviours(env)
    meta = {"kernel": env.kernel_release(), "features": env.features(),
            "page_size": env.page, "seconds": round(time.monotonic() - t0, 3),
            "timer_thread_gone": be.shutdown(), "warnings": list(m.warnings)}
    return {"meta": meta, "results": results}


@pytest.fixture(params=BACKENDS)
def observations(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The observations of one backend: ``{"meta", "results"}``."""
    obs: dict[str, Any] = request.getfixturevalue(f"{request.param}_observations")
    return obs


@pytest.mark.parametrize("name", NAMES)
def test_behaviour(observations: dict[str, Any], name: str) -> None:
    """The backend's observation of behaviour ``name`` equals the expected Linux behaviour."""
    b = _get(name)
    res = observations["results"].get(name)
    assert res is not None, f"{name} was not run by the guest"
    if "skipped" in res:
        pytest.skip(f"{name}: needs {res['skipped']}")
    assert "error" not in res, f"{name} raised:\n{res['error']}"
    diffs = compare(b, res["observed"], observations["meta"].get("kernel"))
    assert not diffs, f"{name} ({b.source}):\n  " + "\n  ".join(diffs)


@pytest.mark.qemu
@pytest.mark.timeout(600)
def test_guest_ran_this_tree(kernel_observations: dict[str, Any]) -> None:
    """The guest imported this checkout's dmabuf.uapi (the binding under test)."""
    import dmabuf.uapi

    observations = kernel_observations
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


def test_model_backend_parity(model_observations: dict[str, Any]) -> None:
    """The whole table against the model backend: every behaviour ran, 0 disagreements.

    The model reports release 7.1; expectations that changed after 6.12 come from each
    behaviour's ``since`` (docs/model-vs-kernel.md, "uAPI parity").
    """
    meta = model_observations["meta"]
    results = model_observations["results"]
    assert meta["kernel"].startswith("7.1.")
    assert meta["features"] == {"udmabuf": None, "heap": None, "vgem": None, "debugfs": None}
    assert meta["timer_thread_gone"] is True
    assert meta["warnings"] == []
    assert set(results) == set(NAMES)
    failures: list[str] = []
    for b in REGISTRY:
        res = results[b.name]
        if "error" in res:
            failures.append(f"{b.name}: raised {res['error'].strip().splitlines()[-1]}")
        elif "skipped" in res:
            failures.append(f"{b.name}: skipped ({res['skipped']})")
        else:
            failures += [f"{b.name}: {d}" for d in compare(b, res["observed"], meta["kernel"])]
    compared = sum(1 for r in results.values() if "observed" in r)
    keys = sum(len(b.expect_for(meta["kernel"])) for b in REGISTRY)
    assert not failures, f"{len(failures)} disagreement(s) in {compared} behaviours:\n" + \
        "\n".join(failures)
    assert (compared, keys) == (len(REGISTRY), sum(len(b.expect) for b in REGISTRY))
