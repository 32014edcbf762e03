"""The fluid timing model: flows over a fabric, max-min shared, timed event by event.

Kernel: none. This is layer 6's clock for DMA: it says *how long* the transfers the lower layers
perform would take on real hardware, so a simulation can put them on the controlled scheduler's
virtual clock. Default figures: spec kernel-p2p-dma.md §6, sources in docs/timing-model.md.

The model
    A :class:`FlowSpec` is one DMA transfer: ``bytes`` over a path of ``(link, direction)``
    hops of a :class:`~dmabuf.sim.fabric.Fabric`, issued at ``start_time``. Its life:

    1. **set-up** (no bandwidth used): ``setup`` seconds plus, when ``map_ranges > 0``, the
       DMA-mapping cost (:meth:`TimingParams.map_cost`: IOVA allocation, page-table writes and
       an IOTLB sync on a translated path; nothing on a BUS_ADDR path);
    2. **drain**: the bytes flow as a fluid at the flow's current rate. Rates are the max-min
       fair allocation (:mod:`dmabuf.sim.fairshare`) of every channel's capacity among the
       flows draining at that moment, each flow also held under its own **ceiling**;
    3. **latency**: the last byte lands ``latency`` after it left (links + switches + root
       complexes crossed); the flow is *complete* then;
    4. **tear-down** (no bandwidth): the DMA-unmapping cost when the flow mapped.

    A flow's **ceiling** is ``1 / (1 / (efficiency x narrowest capacity) + stall_per_byte)``:
    ``efficiency`` is the lowest of the bridges it crosses (a switch's, a root complex's — P2P
    write or read, memory or cross-socket; see :meth:`Fabric.resolve_path`), and on a path
    translated by an IOMMU (``iommu=True``, by default when the path crosses a root complex),
    ``stall_per_byte = iotlb_miss_penalty / page_size``. Alone on its path a flow therefore
    drains in exactly ``bytes / (efficiency x narrowest) + bytes / page_size x penalty``.
    Choice and reason: the measured bridge efficiencies and IOTLB stalls are single-stream
    losses (latency, credits, page walks) that slow the stream itself without putting more
    bytes on the wire, so they limit the flow, not the links; when sharing already holds a flow
    below its ceiling, its stalls overlap with its wait for bandwidth.

Two ways to run it
    :class:`FlowSimulator` — the pure event-driven simulator: add flows with their start times,
    :meth:`FlowSimulator.run` processes events (activations and drains, simultaneous events
    together), recomputing the allocation at each, and returns a :class:`SimResult`: per-flow
    :class:`FlowResult` and a :class:`Timeline` of channel loads (piecewise constant, for plots
    and utilisation). Deterministic: ties are broken by insertion order; no clock, no threads.

    :class:`FabricClock` / :func:`transfer` — the same fluid shared by threads of a
    :class:`~dmabuf.machine.Machine`: ``transfer(machine, flow)`` blocks the calling thread for
    the modelled duration through ``machine.sched`` (``sleep`` for set-up, latency and
    tear-down; a condition wait while draining). Under the controlled scheduler that is virtual
    time: two threads transferring over a shared link at once finish exactly when the
    simulator says they would.

Concurrency in :class:`FabricClock`
    One per machine (``machine.state(FabricClock)``), holding the fluid state under one
    scheduler lock. ``transfer`` sleeps its set-up, then, under the lock, *advances* the fluid
    to ``now`` (processing, in time order, every drain that fell due — so a late wake-up in
    free mode is still exact), adds its flow, recomputes the rates and ``notify_all``s. It then
    waits on the condition with a timeout equal to its predicted drain time; whoever changes
    the rates (an arrival or a drain) notifies, and every waiter recomputes its deadline. The
    controlled scheduler's clock jumps to the earliest deadline, which is the next drain, so
    drains are processed at their exact virtual times. The lock is never held across a sleep.
    In free mode the same code runs against the monotonic clock (a real-time emulation whose
    precision is that of OS timers).
"""

from __future__ import annotations

import errno
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dmabuf.errors import DmaBufError
from dmabuf.sim.fabric import Direction, Fabric, FlowKind, Hop, PathInfo
from dmabuf.sim.fairshare import DEMAND, _max_min_core

if TYPE_CHECKING:
    from dmabuf.machine import Machine

__all__ = [
    "Allocation",
    "FabricClock",
    "FlowResult",
    "FlowSimulator",
    "FlowSpec",
    "SimResult",
    "Timeline",
    "allocate",
    "fabric_clock",
    "transfer",
]


# ----------------------------------------------------------------------------------------------
# Flows
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowSpec:
    """One DMA transfer to time: ``bytes`` over ``path`` from ``start_time``.

    Args:
        name: label in results (unique within a :class:`FlowSimulator`).
        path: ``(link name, direction)`` hops, contiguous (``Fabric.route`` builds one); the
            direction is a :class:`~dmabuf.sim.fabric.Direction` or ``"down"``/``"up"``.
            Stored normalised, as a tuple of ``(str, Direction)``; the links are checked
            against a fabric when the flow is added or transferred.
        bytes: bytes moved (int >= 0).
        start_time: when the transfer is issued, seconds >= 0 (for :func:`transfer`: not before
            this virtual time).
        kind: :class:`~dmabuf.sim.fabric.FlowKind` WRITE (posted) or READ (non-posted); only
            root-complex P2P efficiency depends on it.
        iommu: whether the DMA is translated by an IOMMU (pays IOTLB misses and IOMMU mapping
            costs). None (default): yes iff the path crosses a root complex whose IOMMU is on —
            a BUS_ADDR path through a switch bypasses the IOMMU.
        page_size: IOMMU page size of the mapping (default ``params.iommu_page_size``; 2 MiB
            for hugepage-backed buffers).
        map_ranges: 0 when the buffer is already mapped; else the transfer first maps it as
            that many ranges (``ceil(bytes / page_size)`` pages) and unmaps it afterwards.
        setup: extra seconds before the first byte moves (driver work, a doorbell…).
    """

    name: str
    path: Sequence[tuple[str, Direction | str]]
    bytes: int
    start_time: float = 0.0
    kind: FlowKind = FlowKind.WRITE
    iommu: bool | None = None
    page_size: int | None = None
    map_ranges: int = 0
    setup: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DmaBufError(errno.EINVAL, f"flow name {self.name!r}: must be a non-empty str")
        n = self.bytes
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise DmaBufError(errno.EINVAL, f"flow {self.name!r}: bytes={n!r} must be an int")
        if n < 0:
            raise DmaBufError(errno.EINVAL, f"flow {self.name!r}: negative size bytes={n}; a "
                              "transfer moves >= 0 bytes")
        object.__setattr__(self, "bytes", int(n))
        for fname in ("start_time", "setup"):
            v = getattr(self, fname)
            if (isinstance(v, bool) or not isinstance(v, numbers.Real)
                    or not math.isfinite(float(v)) or v < 0):
                raise DmaBufError(errno.EINVAL, f"flow {self.name!r}: {fname}={v!r} must be a "
                                  "finite number of seconds >= 0")
            object.__setattr__(self, fname, float(v))
        object.__setattr__(self, "kind", FlowKind.parse(self.kind))
        if self.iommu is not None and not isinstance(self.iommu, bool):
            raise DmaBufError(errno.EINVAL, f"flow {self.name!r}: iommu must be True, False or "
                              "None (decide from the path)")
        ps = self.page_size
        if ps is not None and (isinstance(ps, bool) or not isinstance(ps, numbers.Integral)
                               or ps <= 0):
            raise DmaBufError(errno.EINVAL, f"flow {self.name!r}: page_size={ps!r} must be a "
                              "positive int")
        mr = self.map_ranges
        if isinstance(mr, bool) or not isinstance(mr, numbers.Integral) or mr < 0:
            raise DmaBufError(errno.EINVAL, f"flow {self.name!r}: map_ranges={mr!r} must be an "
                              "int >= 0")
        try:
            items = tuple(self.path)
        except TypeError:
            raise DmaBufError(errno.EINVAL, f"flow {self.name!r}: path must be a sequence of "
                              "(link, direction) hops") from None
        hops: list[Hop] = []
        for i, h in enumerate(items):
            if (not isinstance(h, Sequence) or isinstance(h, str) or len(h) != 2
                    or not isinstance(h[0], str)):
                raise DmaBufError(errno.EINVAL, f"flow {self.name!r}: hop {i} is {h!r}; each "
                                  "hop is a (link name, direction) pair")
            hops.append((h[0], Direction.parse(h[1])))
        object.__setattr__(self, "path", tuple(hops))


@dataclass(frozen=True)
class _Resolved:
    """A flow checked against a fabric: everything the fluid needs, precomputed."""

    spec: FlowSpec
    info: PathInfo
    iommu: bool
    page_size: int
    ceiling: float
    setup: float
    teardown: float
    ceiling_reason: str


def _resolve(fabric: Fabric, flow: FlowSpec) -> _Resolved:
    if not isinstance(flow, FlowSpec):
        raise DmaBufError(errno.EINVAL, f"expected a FlowSpec, got {type(flow).__name__}")
    p = fabric.params
    info = fabric.resolve_path(flow.path, flow.kind, what=f"flow {flow.name!r}")
    iommu = info.iommu if flow.iommu is None else flow.iommu
    page_size = p.iommu_page_size if flow.page_size is None else int(flow.page_size)
    stall = p.iotlb_miss_penalty / page_size if iommu else 0.0
    base = info.efficiency * info.min_capacity
    if stall > 0.0:
        ceiling = 1.0 / (1.0 / base + stall)
        reason = "IOTLB misses" if info.efficiency >= 1.0 else \
            f"{info.bottleneck_node} efficiency + IOTLB misses"
    elif info.efficiency < 1.0:
        ceiling = base
        reason = f"{info.bottleneck_node} efficiency"
    else:
        ceiling = math.inf
        reason = ""
    setup = flow.setup
    teardown = 0.0
    if flow.map_ranges:
        pages = -(-flow.bytes // page_size)
        setup += p.map_cost(pages, flow.map_ranges, iommu=iommu)
        teardown = p.unmap_cost(pages, flow.map_ranges, iommu=iommu)
    return _Resolved(flow, info, iommu, page_size, ceiling, setup, teardown, reason)


@dataclass(frozen=True)
class FlowResult:
    """When one flow ran, and how fast.

    ``start`` issue time; ``data_start`` first byte moves (after set-up); ``drain_end`` last byte
    leaves; ``complete`` last byte lands (``drain_end + latency``); ``end`` tear-down done.
    ``ceiling`` is the flow's own rate limit (``inf`` when only links bound it).
    """

    name: str
    bytes: int
    start: float
    data_start: float
    drain_end: float
    complete: float
    end: float
    latency: float
    setup: float
    teardown: float
    iommu: bool
    efficiency: float
    ceiling: float

    @property
    def duration(self) -> float:
        """``end - start`` seconds."""
        return self.end - self.start

    @property
    def throughput(self) -> float:
        """Bytes per second as the issuer sees it: ``bytes / (end - start)`` (0 if instant)."""
        d = self.end - self.start
        return self.bytes / d if d > 0 else 0.0

    @property
    def transfer_rate(self) -> float:
        """Mean drain rate: ``bytes / (drain_end - data_start)`` (0 for an empty flow)."""
        d = self.drain_end - self.data_start
        return self.bytes / d if d > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The result as a plain dict — no kernel counterpart.

        Context: pure; never blocks.
        Returns: every field plus ``throughput`` and ``transfer_rate`` (for ``--json``).
        Raises: nothing.
        Kernel: none.
        """
        return {"name": self.name, "bytes": self.bytes, "start": self.start,
                "data_start": self.data_start, "drain_end": self.drain_end,
                "complete": self.complete, "end": self.end, "latency": self.latency,
                "setup": self.setup, "teardown": self.teardown, "iommu": self.iommu,
                "efficiency": self.efficiency, "ceiling": self.ceiling,
                "throughput": self.throughput, "transfer_rate": self.transfer_rate}


def _result(r: _Resolved, start: float, data_start: float, drain_end: float) -> FlowResult:
    complete = drain_end + r.info.latency
    return FlowResult(r.spec.name, r.spec.bytes, start, data_start, drain_end, complete,
                      complete + r.teardown, r.info.latency, r.setup, r.teardown, r.iommu,
                      r.info.efficiency, r.ceiling)


# ----------------------------------------------------------------------------------------------
# Timeline
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Timeline:
    """Channel loads over time, piecewise constant: ``load[i]`` holds on ``[times[i], times[i+1])``.

    ``load`` is ``(segments, channels)`` bytes/s; ``capacity`` per channel; ``channels`` names
    each channel ``(link, direction)`` (direction None for a shared link). For a plot:
    ``t, u = tl.utilisation("rp0", "up"); plt.stairs(u, t)``.
    """

    times: np.ndarray
    load: np.ndarray
    capacity: np.ndarray
    channels: tuple[tuple[str, Direction | None], ...]
    _index: dict[tuple[str, Direction | None], int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self._index:
            self._index.update({c: i for i, c in enumerate(self.channels)})

    def _chan(self, link: str, direction: Direction | str | None) -> int:
        if (link, None) in self._index:
            return self._index[(link, None)]
        if direction is None:
            if (link, Direction.DOWN) in self._index:
                raise DmaBufError(errno.EINVAL, f"link {link!r} is full duplex: say which "
                                  "direction ('down' or 'up')")
            raise DmaBufError(errno.EINVAL, f"unknown link {link!r} in the timeline")
        key = (link, Direction.parse(direction))
        if key not in self._index:
            raise DmaBufError(errno.EINVAL, f"unknown link {link!r} in the timeline")
        return self._index[key]

    @property
    def span(self) -> float:
        """Seconds covered (0 for an empty timeline)."""
        return float(self.times[-1] - self.times[0]) if self.times.size else 0.0

    def utilisation(self, link: str, direction: Direction | str | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Utilisation of one channel over time, ready for ``plt.stairs(u, t)``.

        Args:
            link: link name.
            direction: required for a full-duplex link, ignored for a shared one.
        Context: pure; never blocks.
        Returns: ``(times, utilisation)`` with ``len(times) == len(utilisation) + 1``.
        Raises: DmaBufError(EINVAL) for an unknown link or a missing direction.
        Kernel: none.
        """
        c = self._chan(link, direction)
        return self.times, self.load[:, c] / self.capacity[c]

    def bytes_through(self, link: str, direction: Direction | str | None = None) -> float:
        """Bytes that crossed one channel: the integral of its load.

        Args / Raises: as :meth:`utilisation`.
        Context: pure; never blocks.
        Returns: bytes (float).
        Kernel: none.
        """
        c = self._chan(link, direction)
        if not self.times.size:
            return 0.0
        return float(np.dot(self.load[:, c], np.diff(self.times)))

    def mean_utilisation(self, link: str, direction: Direction | str | None = None) -> float:
        """Time-averaged utilisation of one channel over the timeline's span.

        Args / Raises: as :meth:`utilisation`.
        Context: pure; never blocks.
        Returns: a fraction in [0, 1] (0 for an empty timeline).
        Kernel: none.
        """
        span = self.span
        if span <= 0:
            return 0.0
        return self.bytes_through(link, direction) / (span * float(self.capacity[
            self._chan(link, direction)]))

    def peak_utilisation(self) -> np.ndarray:
        """Highest utilisation each channel reached.

        Context: pure; never blocks.
        Returns: array of fractions, one per channel (zeros for an empty timeline).
        Raises: nothing.
        Kernel: none.
        """
        if not self.load.size:
            return np.zeros(self.capacity.size)
        return np.asarray(self.load.max(axis=0) / self.capacity)

    def busiest(self, n: int = 5) -> list[tuple[str, Direction | None, float]]:
        """The busiest channels by mean utilisation.

        Args:
            n: how many.
        Context: pure; never blocks.
        Returns: up to ``n`` tuples ``(link, direction, mean utilisation)``, busiest first.
        Raises: nothing.
        Kernel: none.
        """
        span = self.span
        if span <= 0 or not self.load.size:
            return []
        mean = (np.diff(self.times) @ self.load) / (span * self.capacity)
        order = np.argsort(-mean, kind="stable")[:n]
        return [(*self.channels[int(i)], float(mean[int(i)])) for i in order]


# ----------------------------------------------------------------------------------------------
# The fluid
# ----------------------------------------------------------------------------------------------


def _tol(t: float) -> float:
    return 1e-12 * max(abs(t), 1e-9)


class _Fluid:
    """The fluid state shared by :class:`FlowSimulator` and :class:`FabricClock`.

    Flows are *registered* (their incidence entries appended to flat arrays), then *activated*
    at a time; :meth:`advance` moves time forward processing drains in order.
    """

    def __init__(self, capacity: np.ndarray, *, record: bool = True) -> None:
        self.cap = np.array(capacity, dtype=np.float64)
        self.record = record
        self.t: float | None = None
        self.n = 0
        self._fi = np.zeros(0, np.int64)
        self._ci = np.zeros(0, np.int64)
        self._w = np.zeros(0, np.float64)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.bytes = np.zeros(0, np.float64)
        self.ceiling = np.zeros(0, np.float64)
        self.remaining = np.zeros(0, np.float64)
        self.rate = np.zeros(0, np.float64)
        self.active = np.zeros(0, bool)
        self.drained = np.zeros(0, bool)
        self.data_start = np.zeros(0, np.float64)
        self.drain_end = np.zeros(0, np.float64)
        self.bottleneck = np.zeros(0, np.int64)
        self._load = np.zeros(self.cap.size)
        self.segments: list[tuple[float, float, np.ndarray | None]] = []
        self.allocations = 0
        self.events = 0
        self._last_event: float | None = None
        self._dirty = False
        self.nent = np.zeros(0, np.int64)
        self._dead = 0  # entries of drained flows still in the flat arrays

    # registration -------------------------------------------------------------------------
    def grow_channels(self, capacity: np.ndarray) -> None:
        if capacity.size > self.cap.size:
            self.cap = np.array(capacity, dtype=np.float64)
            self._load = np.concatenate((self._load, np.zeros(capacity.size - self._load.size)))

    def register(self, flows: Sequence[_Resolved]) -> int:
        """Append flows; return the index of the first."""
        first = self.n
        k = len(flows)
        if k == 0:
            return first
        if self.n + k > self.bytes.size:
            size = max(16, 2 * (self.n + k))
            for name in ("bytes", "ceiling", "remaining", "rate", "data_start", "drain_end"):
                arr = getattr(self, name)
                new = np.zeros(size, np.float64)
                new[: arr.size] = arr
                setattr(self, name, new)
            for name in ("active", "drained"):
                arr = getattr(self, name)
                newb = np.zeros(size, bool)
                newb[: arr.size] = arr
                setattr(self, name, newb)
            newi = np.full(size, DEMAND, np.int64)
            newi[: self.bottleneck.size] = self.bottleneck
            self.bottleneck = newi
            newn = np.zeros(size, np.int64)
            newn[: self.nent.size] = self.nent
            self.nent = newn
        lens = np.fromiter((r.info.channels.size for r in flows), np.int64, k)
        fi = np.repeat(np.arange(first, first + k, dtype=np.int64), lens)
        ci = np.concatenate([r.info.channels for r in flows])
        w = np.concatenate([r.info.counts for r in flows])
        self._pending.append((fi, ci, w))
        sl = slice(first, first + k)
        self.nent[sl] = lens
        self.bytes[sl] = [r.spec.bytes for r in flows]
        self.remaining[sl] = self.bytes[sl]
        self.ceiling[sl] = [r.ceiling for r in flows]
        self.n += k
        return first

    def _flush(self) -> None:
        if self._pending:
            parts = [(self._fi, self._ci, self._w), *self._pending]
            self._fi = np.concatenate([p[0] for p in parts])
            self._ci = np.concatenate([p[1] for p in parts])
            self._w = np.concatenate([p[2] for p in parts])
            self._pending.clear()

    # time ---------------------------------------------------------------------------------
    def _step(self, t_new: float) -> None:
        """Drain every active flow at its rate from ``self.t`` to ``t_new`` (no events inside)."""
        assert self.t is not None
        dt = t_new - self.t
        if dt <= 0:
            return
        act = self.active[: self.n]
        if act.any():
            idx = np.flatnonzero(act)
            self.remaining[idx] -= self.rate[idx] * dt
            load: np.ndarray | None = self._load
        else:
            load = None
        if self.record:
            if self.segments and self.segments[-1][2] is load and self.segments[-1][1] == self.t:
                t0 = self.segments[-1][0]
                self.segments[-1] = (t0, t_new, load)
            else:
                self.segments.append((self.t, t_new, load))
        self.t = t_new

    def _recompute(self) -> None:
        self._dirty = False
        self._flush()
        n = self.n
        act = self.active[:n]
        ids = np.flatnonzero(act)
        self.rate[:n] = 0.0
        if ids.size == 0:
            self._load = np.zeros(self.cap.size)
            return
        if self._dead > 4096 and 2 * self._dead > self._fi.size:
            # A long run: forget the entries of drained flows.
            keep = ~self.drained[self._fi]
            self._fi, self._ci, self._w = self._fi[keep], self._ci[keep], self._w[keep]
            self._dead = 0
        ent = act[self._fi]
        local = np.full(n, -1, np.int64)
        local[ids] = np.arange(ids.size, dtype=np.int64)
        mm = _max_min_core(local[self._fi[ent]], self._ci[ent], self._w[ent], self.cap,
                           ids.size, self.ceiling[ids])
        self.rate[ids] = mm.rates
        self.bottleneck[ids] = mm.bottleneck
        self._load = mm.load
        self.allocations += 1

    def _event(self, t: float) -> None:
        if self._last_event is None or abs(t - self._last_event) > _tol(t):
            self.events += 1
        self._last_event = t

    def activate(self, ids: Sequence[int] | np.ndarray, t: float) -> None:
        """Start draining flows ``ids`` at time ``t`` (processing earlier drains first; drains
        due at ``t`` itself share this event's single reallocation)."""
        if self.t is None:
            self.t = t
        self.advance(t, defer_at_target=True)
        ids = np.asarray(ids, dtype=np.int64)
        self.data_start[ids] = t
        empty = ids[self.bytes[ids] <= 0]
        self.drained[empty] = True
        self.drain_end[empty] = t
        self._dead += int(self.nent[empty].sum())
        full = ids[self.bytes[ids] > 0]
        self._event(t)
        if full.size:
            self.active[full] = True
        if full.size or self._dirty:
            self._recompute()

    def predicted_drain(self, i: int) -> float:
        """When flow ``i`` would finish at current rates."""
        if self.drained[i]:
            return float(self.drain_end[i])
        assert self.t is not None
        return self.t + float(self.remaining[i] / self.rate[i])

    def advance(self, t_target: float, *, defer_at_target: bool = False) -> bool:
        """Move time to ``t_target`` (``inf``: until every flow drained), processing drains in
        order. Returns True when the rates changed. With ``defer_at_target``, drains due at
        ``t_target`` itself leave the reallocation to the caller (``_dirty``)."""
        changed = False
        if self.t is None:
            if math.isfinite(t_target):
                self.t = t_target
            return False
        while True:
            idx = np.flatnonzero(self.active[: self.n])
            if idx.size == 0:
                if math.isfinite(t_target) and t_target > self.t:
                    self._step(t_target)
                return changed
            dt = self.remaining[idx] / self.rate[idx]
            dmin = float(dt.min())
            t_next = self.t + dmin
            if t_next <= t_target + _tol(t_target if math.isfinite(t_target) else t_next):
                t0 = self.t
                done = idx[t0 + dt <= t_next + _tol(t_next)]
                self._step(t_next)
                self.remaining[done] = 0.0
                self.active[done] = False
                self.drained[done] = True
                self.drain_end[done] = t_next
                self._dead += int(self.nent[done].sum())
                self._event(t_next)
                changed = True
                if defer_at_target and t_next >= t_target - _tol(t_target):
                    self._dirty = True  # the caller reallocates once, after its arrivals
                    return changed
                self._recompute()
                continue
            self._step(t_target)
            return changed

    def timeline(self, fabric: Fabric) -> Timeline:
        """The recorded loads as a :class:`Timeline` over ``fabric``'s channels."""
        c = self.cap.size
        chans = tuple(fabric.channel_name(i) for i in range(c))
        if not self.segments:
            return Timeline(np.zeros(0), np.zeros((0, c)), self.cap.copy(), chans)
        times = np.empty(len(self.segments) + 1)
        load = np.zeros((len(self.segments), c))
        for i, (t0, t1, ld) in enumerate(self.segments):
            times[i] = t0
            times[i + 1] = t1
            if ld is not None:
                load[i, : ld.size] = ld
        return Timeline(times, load, self.cap.copy(), chans)


# ----------------------------------------------------------------------------------------------
# Static allocation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Allocation:
    """The max-min rates of flows that are all active at once.

    ``rates``: name -> bytes/s. ``bottleneck``: name -> what froze it: ``"link:down"`` /
    ``"link:up"`` / ``"link"`` (shared) for a saturated channel, ``"ceiling (…)"`` for its own
    limit. ``load``/``utilisation``: per channel. ``ceilings``: name -> the flow's own limit.
    """

    rates: dict[str, float]
    bottleneck: dict[str, str]
    ceilings: dict[str, float]
    load: np.ndarray
    utilisation: np.ndarray
    rounds: int


def _channel_label(fabric: Fabric, c: int) -> str:
    link, d = fabric.channel_name(c)
    return link if d is None else f"{link}:{d.value}"


def allocate(fabric: Fabric, flows: Iterable[FlowSpec]) -> Allocation:
    """Max-min fair rates of ``flows`` all draining at once on ``fabric`` (no time).

    Start times, set-up and sizes do not matter here; every flow is assumed active.

    Args:
        fabric: the fabric (its params give efficiencies and IOMMU costs).
        flows: the flows (unique names).
    Context: pure; never blocks.
    Returns: an :class:`Allocation`.
    Raises: DmaBufError(EINVAL) for a bad flow or path; EEXIST for a duplicate name.
    Kernel: none.
    """
    res = _resolve_all(fabric, flows)
    k = len(res)
    lens = np.fromiter((r.info.channels.size for r in res), np.int64, k)
    fi = np.repeat(np.arange(k, dtype=np.int64), lens)
    ci = np.concatenate([r.info.channels for r in res]) if k else np.zeros(0, np.int64)
    w = np.concatenate([r.info.counts for r in res]) if k else np.zeros(0)
    cap = fabric.capacity
    mm = _max_min_core(fi, ci, w, cap, k, np.array([r.ceiling for r in res], np.float64))
    names = [r.spec.name for r in res]
    bott: dict[str, str] = {}
    for i, r in enumerate(res):
        b = int(mm.bottleneck[i])
        bott[r.spec.name] = (f"ceiling ({r.ceiling_reason})" if b == DEMAND
                             else _channel_label(fabric, b))
    return Allocation(dict(zip(names, (float(x) for x in mm.rates), strict=True)), bott,
                      {r.spec.name: r.ceiling for r in res}, mm.load, mm.load / cap, mm.rounds)


def _resolve_all(fabric: Fabric, flows: Iterable[FlowSpec]) -> list[_Resolved]:
    if not isinstance(fabric, Fabric):
        raise DmaBufError(errno.EINVAL, f"expected a Fabric, got {type(fabric).__name__}")
    out: list[_Resolved] = []
    seen: set[str] = set()
    for f in flows:
        r = _resolve(fabric, f)
        if r.spec.name in seen:
            raise DmaBufError(errno.EEXIST, f"two flows are named {r.spec.name!r}; names must "
                              "be unique")
        seen.add(r.spec.name)
        out.append(r)
    return out


# ----------------------------------------------------------------------------------------------
# The event-driven simulator
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SimResult:
    """What :meth:`FlowSimulator.run` produced.

    ``flows``: name -> :class:`FlowResult` of every flow whose last byte left, in insertion
    order. ``unfinished``: name -> bytes not yet sent, for flows still draining or not started
    at the ``until`` horizon (empty for a run to completion). ``timeline``: channel loads.
    ``events``: event times processed (activations + drains, simultaneous ones once);
    ``allocations``: max-min recomputations.
    """

    flows: dict[str, FlowResult]
    timeline: Timeline
    events: int
    allocations: int
    unfinished: dict[str, float] = field(default_factory=dict)

    @property
    def makespan(self) -> float:
        """From the first issue to the last end (0 without flows)."""
        if not self.flows:
            return 0.0
        return (max(f.end for f in self.flows.values())
                - min(f.start for f in self.flows.values()))

    def rows(self) -> list[dict[str, Any]]:
        """The finished flows as rows for tables and JSON — no kernel counterpart.

        Context: pure; never blocks.
        Returns: one :meth:`FlowResult.as_dict` per finished flow, in insertion order.
        Raises: nothing.
        Kernel: none.
        """
        return [f.as_dict() for f in self.flows.values()]


class FlowSimulator:
    """Event-driven fluid simulation of flows on a fabric — deterministic, no threads.

    Args:
        fabric: the fabric; its ``params`` give every figure.
        record: keep the channel-load timeline (default True).
    """

    def __init__(self, fabric: Fabric, *, record: bool = True) -> None:
        if not isinstance(fabric, Fabric):
            raise DmaBufError(errno.EINVAL, f"expected a Fabric, got {type(fabric).__name__}")
        self.fabric = fabric
        self.record = record
        self._flows: list[_Resolved] = []
        self._names: set[str] = set()

    def __repr__(self) -> str:
        return f"<FlowSimulator {self.fabric.name} flows={len(self._flows)}>"

    @property
    def flows(self) -> list[FlowSpec]:
        """The flows added so far."""
        return [r.spec for r in self._flows]

    def add(self, flow: FlowSpec) -> None:
        """Add a flow (checked against the fabric now) — no kernel counterpart.

        Args:
            flow: a :class:`FlowSpec` with a name not used yet.
        Context: never blocks.
        Returns: None.
        Raises: DmaBufError(EINVAL) for a bad path (unknown link, not contiguous, empty);
            EEXIST for a duplicate name.
        Kernel: none.
        """
        r = _resolve(self.fabric, flow)
        if r.spec.name in self._names:
            raise DmaBufError(errno.EEXIST, f"a flow named {r.spec.name!r} was already added")
        self._names.add(r.spec.name)
        self._flows.append(r)

    def add_flows(self, flows: Iterable[FlowSpec]) -> None:
        """Add several flows, in order — see :meth:`add`.

        Args:
            flows: :class:`FlowSpec` s.
        Context: never blocks.
        Returns: None.
        Raises: as :meth:`add` (flows before the bad one stay added).
        Kernel: none.
        """
        for f in flows:
            self.add(f)

    def run(self, until: float | None = None) -> SimResult:
        """Simulate the flows to completion, or up to time ``until`` — no kernel counterpart.

        Events are flow activations (``start_time + set-up``) and drains; simultaneous events
        are processed together and the max-min allocation is recomputed once per event time.
        Running again gives the same result.

        Args:
            until: stop at this simulated time (seconds >= 0); flows whose last byte has not
                left by then are reported in ``SimResult.unfinished``. None: run to the end.
        Context: pure computation; never blocks.
        Returns: a :class:`SimResult`.
        Raises: DmaBufError(EINVAL) for a negative or non-finite ``until``.
        Kernel: none.
        """
        horizon = math.inf
        if until is not None:
            if (isinstance(until, bool) or not isinstance(until, numbers.Real)
                    or not math.isfinite(float(until)) or until < 0):
                raise DmaBufError(errno.EINVAL, f"until={until!r}: must be a finite time >= 0 "
                                  "(or None to run to the end)")
            horizon = float(until)
        flows = self._flows
        fluid = _Fluid(self.fabric.capacity, record=self.record)
        fluid.register(flows)
        act = np.array([r.spec.start_time + r.setup for r in flows], np.float64)
        order = np.lexsort((np.arange(len(flows)), act))
        i = 0
        while i < len(order):
            t = float(act[order[i]])
            if t > horizon:
                break
            j = i
            while j < len(order) and act[order[j]] == t:
                j += 1
            fluid.activate(order[i:j], t)
            i = j
        fluid.advance(horizon)
        results = {}
        unfinished = {}
        for k, r in enumerate(flows):
            if fluid.drained[k]:
                results[r.spec.name] = _result(r, r.spec.start_time, float(fluid.data_start[k]),
                                               float(fluid.drain_end[k]))
            else:
                unfinished[r.spec.name] = float(fluid.remaining[k])
        return SimResult(results, fluid.timeline(self.fabric), fluid.events, fluid.allocations,
                         unfinished)


# ----------------------------------------------------------------------------------------------
# Threads on the scheduler's clock
# ----------------------------------------------------------------------------------------------


class FabricClock:
    """The fluid fabric shared by a machine's threads; :meth:`transfer` blocks for modelled time.

    One per machine: get it with :func:`fabric_clock` (``machine.state(FabricClock)``). See the
    module docstring for how concurrent transfers share links.

    Args:
        machine: the machine whose scheduler gives time, sleeps and the lock.
        fabric: the fabric (or attach one later with :meth:`attach`).
        record: keep the channel-load timeline.
    """

    def __init__(self, machine: Machine, fabric: Fabric | None = None, *,
                 record: bool = True) -> None:
        self.machine = machine
        self.record = record
        self._lock = machine.sched.lock("fabric_clock")
        self._cond = machine.sched.condition(self._lock, "fabric_clock")
        self._fabric: Fabric | None = None
        self._fluid: _Fluid | None = None
        self._in_flight = 0
        self._results: list[FlowResult] = []
        if fabric is not None:
            self.attach(fabric)

    def __repr__(self) -> str:
        name = self._fabric.name if self._fabric is not None else None
        return f"<FabricClock {name} in_flight={self._in_flight}>"

    @property
    def fabric(self) -> Fabric | None:
        """The attached fabric."""
        return self._fabric

    @property
    def results(self) -> list[FlowResult]:
        """Results of the transfers finished so far, in completion order."""
        return list(self._results)

    @property
    def events(self) -> int:
        """Timing-model events processed since the fabric was attached: event times of flow
        activations and drains (simultaneous ones once), counted as :class:`FlowSimulator`
        counts them (``SimResult.events``); 0 without a fabric."""
        return self._fluid.events if self._fluid is not None else 0

    def attach(self, fabric: Fabric) -> None:
        """Use ``fabric`` for the next transfers (the timeline starts afresh).

        Args:
            fabric: a :class:`~dmabuf.sim.fabric.Fabric`.
        Context: takes the clock's lock briefly (a scheduling point); must not be called while
            transfers are draining.
        Returns: None.
        Raises: DmaBufError(EBUSY) while transfers are in flight; EINVAL for a non-Fabric.
        Kernel: none.
        """
        if not isinstance(fabric, Fabric):
            raise DmaBufError(errno.EINVAL, f"expected a Fabric, got {type(fabric).__name__}")
        if self._in_flight:
            raise DmaBufError(errno.EBUSY, f"{self._in_flight} transfer(s) in flight on the "
                              "fabric clock; attach a new fabric when they are done")
        self._fabric = fabric
        self._fluid = _Fluid(fabric.capacity, record=self.record)
        self._results = []

    def transfer(self, flow: FlowSpec) -> FlowResult:
        """Block the calling thread for the modelled duration of ``flow`` — a DMA on the fabric.

        Waits until ``flow.start_time`` if that is later than now, sleeps the set-up (plus the
        mapping cost when ``map_ranges``), drains the bytes sharing the fabric max-min fairly
        with every other transfer in flight, then sleeps latency and tear-down.

        Args:
            flow: the :class:`FlowSpec` (names need not be unique here).
        Context: may block (scheduler sleeps and a condition wait); takes the clock's lock,
            never across a sleep. Call it without holding model locks another transfer needs.
        Returns: the :class:`FlowResult`, in the scheduler's time.
        Raises: DmaBufError(EINVAL) for a bad flow or when no fabric is attached.
        Kernel: none (the duration of a DMA the device drivers issue).
        """
        fabric = self._fabric
        if fabric is None or self._fluid is None:
            raise DmaBufError(errno.EINVAL, "no fabric attached to this machine's fabric clock: "
                              "call dmabuf.sim.fabric_clock(machine, fabric) first")
        r = _resolve(fabric, flow)
        sched = self.machine.sched
        now = sched.now()
        if flow.start_time > now:
            sched.sleep(flow.start_time - now)
        start = sched.now()
        self.machine.trace.emit("fabric_transfer_start", flow=flow.name, bytes=flow.bytes)
        if r.setup > 0:
            sched.sleep(r.setup)
        with self._cond:
            fluid = self._fluid
            self._in_flight += 1
            try:
                fluid.grow_channels(fabric.capacity)
                fid = fluid.register([r])
                fluid.activate([fid], sched.now())
                self._cond.notify_all()
                while not fluid.drained[fid]:
                    wait = max(fluid.predicted_drain(fid) - sched.now(), 0.0)
                    self._cond.wait(wait, what=f"fabric transfer {flow.name!r} draining")
                    if fluid.advance(sched.now()):
                        self._cond.notify_all()
            finally:
                self._in_flight -= 1
            data_start = float(fluid.data_start[fid])
            drain_end = float(fluid.drain_end[fid])
        tail = r.info.latency + r.teardown
        if tail > 0:
            sched.sleep(tail)
        res = _result(r, start, data_start, drain_end)
        with self._lock:
            self._results.append(res)
        self.machine.trace.emit("fabric_transfer_end", flow=flow.name, bytes=flow.bytes,
                                start=res.start, end=res.end)
        return res

    def timeline(self) -> Timeline:
        """Channel loads recorded since the fabric was attached — no kernel counterpart.

        Context: never blocks; call it when transfers are not draining (the snapshot is taken
            without the clock's lock).
        Returns: a :class:`Timeline` in the scheduler's time.
        Raises: DmaBufError(EINVAL) when no fabric is attached.
        Kernel: none.
        """
        if self._fabric is None or self._fluid is None:
            raise DmaBufError(errno.EINVAL, "no fabric attached to this fabric clock")
        return self._fluid.timeline(self._fabric)


def fabric_clock(machine: Machine, fabric: Fabric | None = None) -> FabricClock:
    """The machine's :class:`FabricClock`; attach ``fabric`` to it when given.

    Args:
        machine: the machine.
        fabric: a fabric to attach (see :meth:`FabricClock.attach`), or None to just get it.
    Context: may take the clock's lock when attaching.
    Returns: the per-machine :class:`FabricClock`.
    Raises: as :meth:`FabricClock.attach`.
    Kernel: none.
    """
    clock = machine.state(FabricClock)
    if fabric is not None:
        clock.attach(fabric)
    return clock


def transfer(machine: Machine, flow: FlowSpec) -> FlowResult:
    """Block the calling thread for the modelled duration of ``flow`` on ``machine``'s fabric.

    Shorthand for ``fabric_clock(machine).transfer(flow)``; see :meth:`FabricClock.transfer`.

    Args:
        machine: the machine (a fabric must be attached with :func:`fabric_clock`).
        flow: the :class:`FlowSpec`.
    Context: may block; see :meth:`FabricClock.transfer`.
    Returns: the :class:`FlowResult`.
    Raises: DmaBufError(EINVAL) for a bad flow or no attached fabric.
    Kernel: none.
    """
    return fabric_clock(machine).transfer(flow)
