"""Max-min fair sharing of link capacity by concurrent flows (water-filling), vectorised.

Kernel: none. This is how the fluid timing model divides a fabric's bandwidth: PCIe credit-based
flow control and round-robin port arbitration give competing streams roughly equal shares of a
congested link, and a stream limited elsewhere leaves its unused share to the others — the
max-min fair allocation.

Problem
    Flows ``f`` cross channels ``c`` (one direction of a full-duplex link, or a shared link)
    with weights ``a[f, c]`` (how much channel capacity one unit of the flow's rate uses: the
    number of times the path crosses the channel). Each channel has a capacity ``C[c] > 0``;
    each flow may have a demand ceiling ``d[f]`` (its own rate limit: a bridge's efficiency, an
    IOTLB-miss stall; ``inf`` when none). Find rates ``r`` with ``sum_f a[f,c] r[f] <= C[c]``,
    ``r <= d``, such that no flow's rate can grow without shrinking a flow that has a smaller or
    equal rate.

Algorithm (water-filling by local bottlenecks)
    Classic progressive filling raises every unfrozen flow at one common level and freezes the
    flows of the first channel to fill — one round per distinct rate level (68 rounds for the
    benchmark's 1,000 flows). This module freezes, in each round, *every* channel that is a
    **local bottleneck**: with ``share[c] = resid[c] / w[c]`` (residual capacity over the
    weights of the flows still rising) and ``m[f]`` = the lowest share on ``f``'s path (or
    ``f``'s demand if lower), channel ``c`` is a local bottleneck when ``share[c] <= m[f]`` for
    every flow ``f`` through it; all its flows freeze at ``share[c]``, and flows whose demand is
    their ``m`` freeze at their demand. Why this is the progressive-filling answer: filling the
    remaining flows from zero, a channel's fill level only *rises* when flows elsewhere freeze
    (its residual is shared by fewer flows), so no flow through ``c`` can freeze before
    ``share[c]`` — its other channels start at shares ``>= share[c]`` — and at ``share[c]``
    channel ``c`` is full. Frozen flows leave with their rates subtracted from every channel
    they cross (max-min allocations restrict to a max-min allocation of the rest). The global
    minimum is always a local bottleneck, so every round freezes at least one flow; on tree
    fabrics a handful of rounds suffice (6 for the benchmark). Every round is a dozen numpy
    operations over the flat incidence list (COO: ``flow_idx``, ``chan_idx``, ``weight``,
    sorted by flow, compacted as flows freeze); there is no per-flow Python loop.

Certificate
    The result is max-min fair iff every flow is either at its demand or crosses a *saturated*
    channel on which no other flow has a larger rate. :class:`MaxMin` records, per flow, the
    channel that froze it (or ``-1``: its demand), so a report can say why a flow was slow.

Tolerance: a channel is a local bottleneck when its share is within ``rtol`` (default
``1e-9``, relative) of the lowest ``m`` of its flows, so float ties freeze together.

:func:`max_min_fair_reference` is a deliberately plain pure-Python classic progressive filling
(one dict per channel, one loop per flow per level): an independent route to the same
allocation, the oracle of the tests and the baseline of ``benchmarks/bench_sim_timing.py``.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dmabuf.errors import DmaBufError

__all__ = ["MaxMin", "max_min_fair", "max_min_fair_matrix", "max_min_fair_reference"]

#: Bottleneck code of a flow frozen by its own demand ceiling rather than by a channel.
DEMAND = -1


@dataclass(frozen=True, eq=False)
class MaxMin:
    """A max-min fair allocation.

    ``rates[f]`` (bytes/s); ``bottleneck[f]``: index of the channel that froze flow ``f``, or
    ``-1`` when its demand did; ``load[c]``: ``sum_f a[f,c] * rates[f]``; ``rounds``:
    water-filling rounds taken.
    """

    rates: np.ndarray
    bottleneck: np.ndarray
    load: np.ndarray
    rounds: int


def max_min_fair(flow_idx: np.ndarray | Sequence[int], chan_idx: np.ndarray | Sequence[int],
                 capacity: np.ndarray | Sequence[float], *, n_flows: int,
                 weight: np.ndarray | Sequence[float] | None = None,
                 demand: np.ndarray | Sequence[float] | None = None,
                 rtol: float = 1e-9) -> MaxMin:
    """Max-min fair rates of flows over channels by water-filling (COO incidence).

    Args:
        flow_idx: flow index of each incidence entry (ints in ``[0, n_flows)``).
        chan_idx: channel index of each entry (ints in ``[0, len(capacity))``); a flow lists
            each channel at most once (put repeats in ``weight``).
        capacity: capacity of each channel (finite, > 0).
        n_flows: number of flows.
        weight: capacity used per unit of rate for each entry (> 0; default 1).
        demand: per-flow rate ceiling (>= 0, ``inf`` for none; default none). A flow with no
            entries must have a finite demand (it gets exactly that).
        rtol: relative tolerance for ties between fair shares.
    Context: pure; never blocks. O(rounds x live entries) numpy work.
    Returns: a :class:`MaxMin`.
    Raises: DmaBufError(EINVAL) for mismatched lengths, out-of-range indices, non-positive
        capacities or weights, negative demands, or a flow that nothing bounds.
    Kernel: none.
    """
    fi = np.asarray(flow_idx, dtype=np.int64).ravel()
    ci = np.asarray(chan_idx, dtype=np.int64).ravel()
    cap = np.asarray(capacity, dtype=np.float64).ravel()
    n_chan = cap.size
    if fi.size != ci.size:
        raise DmaBufError(errno.EINVAL, f"flow_idx has {fi.size} entries but chan_idx has "
                          f"{ci.size}: they describe the same incidence entries")
    if isinstance(n_flows, bool) or not isinstance(n_flows, int | np.integer) or n_flows < 0:
        raise DmaBufError(errno.EINVAL, f"n_flows={n_flows!r}: must be an int >= 0")
    if fi.size and (fi.min() < 0 or fi.max() >= n_flows):
        raise DmaBufError(errno.EINVAL, f"flow index out of range [0, {n_flows})")
    if ci.size and (ci.min() < 0 or ci.max() >= n_chan):
        raise DmaBufError(errno.EINVAL, f"channel index out of range [0, {n_chan}): unknown "
                          "channel")
    if n_chan and (not np.all(np.isfinite(cap)) or np.any(cap <= 0)):
        bad = int(np.flatnonzero(~np.isfinite(cap) | (cap <= 0))[0])
        raise DmaBufError(errno.EINVAL, f"channel {bad} has capacity {cap[bad]!r}: capacities "
                          "must be finite and > 0 (zero bandwidth never finishes a transfer)")
    if weight is None:
        w = np.ones(fi.size, dtype=np.float64)
    else:
        w = np.asarray(weight, dtype=np.float64).ravel()
        if w.size != fi.size:
            raise DmaBufError(errno.EINVAL, f"weight has {w.size} entries, expected {fi.size}")
        if w.size and (not np.all(np.isfinite(w)) or np.any(w <= 0)):
            raise DmaBufError(errno.EINVAL, "weights must be finite and > 0")
    if demand is None:
        dem = np.full(n_flows, np.inf)
    else:
        dem = np.asarray(demand, dtype=np.float64).ravel()
        if dem.size != n_flows:
            raise DmaBufError(errno.EINVAL, f"demand has {dem.size} entries, expected {n_flows}")
        if np.any(np.isnan(dem)) or np.any(dem < 0):
            raise DmaBufError(errno.EINVAL, "demands must be >= 0 (inf for no ceiling)")
    if isinstance(rtol, bool) or not isinstance(rtol, int | float) or not 0.0 <= rtol < 1e-3:
        raise DmaBufError(errno.EINVAL, f"rtol={rtol!r}: must be a small relative tolerance in "
                          "[0, 1e-3)")
    return _max_min_core(fi, ci, w, cap, int(n_flows), dem, rtol)


def _max_min_core(fi: np.ndarray, ci: np.ndarray, w: np.ndarray, cap: np.ndarray,
                  n_flows: int, dem: np.ndarray, rtol: float = 1e-9) -> MaxMin:
    """Water-filling by local bottlenecks on validated COO input (see :func:`max_min_fair`).

    The live entries (those of unfrozen flows, sorted by flow) are compacted after every round,
    so a round costs O(live entries + channels).
    """
    n_chan = cap.size
    if fi.size > 1 and np.any(fi[1:] < fi[:-1]):
        order = np.argsort(fi, kind="stable")
        fi, ci, w = fi[order], ci[order], w[order]
    has = np.bincount(fi, minlength=n_flows) > 0 if n_flows else np.zeros(0, bool)
    unbounded = ~has & np.isinf(dem)
    if np.any(unbounded):
        raise DmaBufError(errno.EINVAL, f"flow {int(np.flatnonzero(unbounded)[0])} crosses no "
                          "channel and has no demand ceiling: its rate would be infinite")
    rates = np.zeros(n_flows, dtype=np.float64)
    bott = np.full(n_flows, DEMAND, dtype=np.int64)
    rates[~has] = dem[~has]  # flows that cross nothing get their demand
    resid = cap.astype(np.float64, copy=True)
    rounds = 0
    fa, ca, wa = fi, ci, w
    share = np.empty(n_chan)
    cmin = np.empty(n_chan)
    slack = 1.0 + rtol
    while fa.size:
        rounds += 1
        # Fair share of every channel among the flows still rising (inf when none).
        wsum = np.bincount(ca, weights=wa, minlength=n_chan)
        share.fill(np.inf)
        np.divide(resid, wsum, out=share, where=wsum > 0)
        np.maximum(share, 0.0, out=share)
        # m[f]: the lowest share on f's path, or its demand if lower.
        starts = np.flatnonzero(np.concatenate(([True], fa[1:] != fa[:-1])))
        counts = np.diff(np.append(starts, fa.size))
        flows = fa[starts]
        m = np.minimum(np.minimum.reduceat(share[ca], starts), dem[flows])
        me = np.repeat(m, counts)
        # A channel is a local bottleneck when its share is the lowest m of all its flows.
        cmin.fill(np.inf)
        np.minimum.at(cmin, ca, me)
        on_bn = (share <= cmin * slack)[ca]
        via_chan = np.logical_or.reduceat(on_bn, starts)
        freeze = via_chan | (dem[flows] <= m * slack)
        # Name each channel-frozen flow's bottleneck: its first (lowest) bottleneck channel.
        hf, hc = fa[on_bn], ca[on_bn]
        if hf.size:
            first = np.empty(hf.size, dtype=bool)
            first[0] = True
            np.not_equal(hf[1:], hf[:-1], out=first[1:])
            bott[hf[first]] = hc[first]
        done = flows[freeze]
        rates[done] = m[freeze]
        e = np.repeat(freeze, counts)
        resid -= np.bincount(ca[e], weights=wa[e] * me[e], minlength=n_chan)
        np.maximum(resid, 0.0, out=resid)
        if not done.size:  # pragma: no cover - the global minimum is always a local one
            raise DmaBufError(errno.EINVAL, "max-min filling made no progress (NaN input?)")
        keep = ~e
        fa, ca, wa = fa[keep], ca[keep], wa[keep]
    load = np.bincount(ci, weights=w * rates[fi], minlength=n_chan) if fi.size else \
        np.zeros(n_chan)
    return MaxMin(rates, bott, load, rounds)


def max_min_fair_matrix(incidence: np.ndarray, capacity: np.ndarray | Sequence[float], *,
                        demand: np.ndarray | Sequence[float] | None = None,
                        rtol: float = 1e-9) -> MaxMin:
    """Max-min fair rates from a dense flow x channel incidence matrix.

    Args:
        incidence: ``(n_flows, n_channels)`` array; entry ``a[f, c] >= 0`` is the capacity of
            ``c`` one unit of ``f``'s rate uses (0: ``f`` does not cross ``c``).
        capacity, demand, rtol: as :func:`max_min_fair`.
    Context: pure; never blocks.
    Returns: a :class:`MaxMin`.
    Raises: DmaBufError(EINVAL) for a shape mismatch or negative entries (and as
        :func:`max_min_fair`).
    Kernel: none.
    """
    a = np.asarray(incidence, dtype=np.float64)
    cap = np.asarray(capacity, dtype=np.float64).ravel()
    if a.ndim != 2 or a.shape[1] != cap.size:
        raise DmaBufError(errno.EINVAL, f"incidence has shape {a.shape}; expected "
                          f"(n_flows, {cap.size})")
    if np.any(a < 0) or not np.all(np.isfinite(a)):
        raise DmaBufError(errno.EINVAL, "incidence entries must be finite and >= 0")
    fi, ci = np.nonzero(a)
    return max_min_fair(fi, ci, cap, n_flows=a.shape[0], weight=a[fi, ci], demand=demand,
                        rtol=rtol)


def max_min_fair_reference(paths: Sequence[Sequence[int]], capacity: Sequence[float],
                           demand: Sequence[float] | None = None,
                           rtol: float = 1e-9) -> list[float]:
    """Plain pure-Python progressive filling (one loop per flow per round): the test oracle.

    Args:
        paths: per flow, the channel indices it crosses (a repeat counts twice).
        capacity: per channel capacity (> 0).
        demand: per flow ceiling (default none).
        rtol: as :func:`max_min_fair`.
    Context: pure; never blocks. O(rounds x flows x path length) Python operations.
    Returns: the rates, a list of floats.
    Raises: DmaBufError(EINVAL) for a flow that nothing bounds.
    Kernel: none.
    """
    n = len(paths)
    dem = [math.inf] * n if demand is None else [float(x) for x in demand]
    resid = [float(c) for c in capacity]
    weights: list[dict[int, float]] = []
    for p in paths:
        d: dict[int, float] = {}
        for c in p:
            d[c] = d.get(c, 0.0) + 1.0
        weights.append(d)
    rates = [0.0] * n
    unfrozen = set()
    for f in range(n):
        if weights[f]:
            unfrozen.add(f)
        elif math.isinf(dem[f]):
            raise DmaBufError(errno.EINVAL, f"flow {f} crosses no channel and has no ceiling")
        else:
            rates[f] = dem[f]
    level = 0.0
    while unfrozen:
        wsum: dict[int, float] = {}
        for f in sorted(unfrozen):
            for c, a in weights[f].items():
                wsum[c] = wsum.get(c, 0.0) + a
        inc = math.inf
        for c, ws in wsum.items():
            inc = min(inc, resid[c] / ws)
        for f in unfrozen:
            inc = min(inc, max(dem[f] - level, 0.0))
        level += inc
        full = set()
        for c, ws in wsum.items():
            resid[c] -= inc * ws
            if resid[c] <= rtol * capacity[c]:
                resid[c] = 0.0
                full.add(c)
        frozen = []
        for f in sorted(unfrozen):
            if any(c in full for c in weights[f]):
                rates[f] = level
                frozen.append(f)
            elif math.isfinite(dem[f]) and dem[f] - level <= rtol * max(dem[f], 1e-300):
                rates[f] = dem[f]
                frozen.append(f)
        for f in frozen:
            unfrozen.discard(f)
    return rates
