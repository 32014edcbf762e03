"""The benchmark harness behind ``dmabuf bench``: every figure is a ratio against a baseline.

A benchmark is a function in ``benchmarks/bench_*.py`` decorated with :func:`benchmark`. It measures
the model's operation *and* a baseline in the same run (raw ``np.copyto``, a ``threading.Event``
round trip, a per-page Python list…) and returns a :class:`BenchResult`. Machines are noisy; a ratio
measured in one run is not. Benchmarks are not tests: they never fail the test suite, they report.

Each benchmark takes ``quick: bool``: quick mode (used by the test suite's smoke test and by
``dmabuf bench --quick``) shrinks sizes so the whole set runs in seconds.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BenchResult", "benchmark", "discover", "interleaved", "measure", "registry"]


@dataclass
class BenchResult:
    """One benchmark's figure and the baseline it is compared with, both from the same run.

    ``ratio`` is always oriented so that **bigger is better for the model** (a speed-up, or
    baseline_time / model_time). ``target`` is the claim from the issue, e.g. ``">= 0.9"``.
    """

    name: str
    figure: float
    unit: str
    baseline: float
    baseline_name: str
    ratio: float
    target: float | None = None
    target_text: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        """Whether ``ratio`` meets ``target`` (None when the benchmark makes no claim)."""
        if self.target is None:
            return None
        return self.ratio >= self.target

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["met"] = self.met
        return d


BenchFn = Callable[[bool], "BenchResult | list[BenchResult]"]
_REGISTRY: dict[str, tuple[BenchFn, str]] = {}


def registry() -> dict[str, tuple[BenchFn, str]]:
    """The registered benchmarks: name -> (function, claim)."""
    return _REGISTRY


def benchmark(name: str, *, claim: str = "") -> Callable[[BenchFn], BenchFn]:
    """Register a benchmark function ``fn(quick: bool) -> BenchResult | list[BenchResult]``."""

    def deco(fn: BenchFn) -> BenchFn:
        _REGISTRY[name] = (fn, claim)
        return fn

    return deco


def measure(fn: Callable[[], object], *, repeat: int = 5, number: int = 1,
            setup: Callable[[], object] | None = None) -> float:
    """Median wall time in seconds of one call of ``fn`` over ``repeat`` rounds of ``number``."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def interleaved(model: Callable[[], object], baseline: Callable[[], object],
                rounds: int) -> tuple[float, float, float]:
    """Time ``model`` and ``baseline`` alternately, one call each per round, after one warm-up
    call of each; alternating cancels the drift of a shared, noisy machine.

    Returns: ``(median model s, median baseline s, median of the per-round baseline/model
        ratios)`` — the ratio is oriented as :attr:`BenchResult.ratio` (bigger is better).
    """
    tm: list[float] = []
    tb: list[float] = []
    model()
    baseline()
    for _ in range(rounds):
        tb.append(measure(baseline, repeat=1))
        tm.append(measure(model, repeat=1))
    ratios = [b / m for b, m in zip(tb, tm, strict=True)]
    return statistics.median(tm), statistics.median(tb), statistics.median(ratios)


def default_dir() -> Path:
    """``benchmarks/`` of the source tree this package was installed from (editable install),
    else ``./benchmarks``."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "benchmarks"
        if cand.is_dir() and (parent / "pyproject.toml").is_file():
            return cand
    return Path.cwd() / "benchmarks"


def discover(directory: Path | None = None) -> dict[str, tuple[BenchFn, str]]:
    """Import every ``bench_*.py`` in ``directory`` (registering its benchmarks)."""
    directory = directory or default_dir()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"no benchmarks directory at {directory}: run from a clone of pydmabuf "
            "or pass --dir")
    for path in sorted(directory.glob("bench_*.py")):
        modname = f"_dmabuf_bench_{path.stem}"
        if modname in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(modname, path)
        if spec is None or spec.loader is None:
            continue
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
    return _REGISTRY
