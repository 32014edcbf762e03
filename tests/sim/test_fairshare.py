"""Max-min fair sharing (dmabuf.sim.fairshare): exact small cases, optimality certificate."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmabuf.errors import DmaBufError
from dmabuf.sim import max_min_fair, max_min_fair_matrix, max_min_fair_reference


def test_three_flows_different_bottlenecks_matrix() -> None:
    # channels: L1 = 10, L2 = 6, L3 = 2. A crosses L1+L2, B crosses L1, C crosses L2+L3.
    # C is held by L3 at 2; A then by L2 at 6 - 2 = 4; B takes the rest of L1, 10 - 4 = 6.
    inc = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=float)
    mm = max_min_fair_matrix(inc, [10.0, 6.0, 2.0])
    assert mm.rates.tolist() == [4.0, 6.0, 2.0]
    assert mm.bottleneck.tolist() == [1, 0, 2]
    assert mm.load.tolist() == [10.0, 6.0, 2.0]
    assert mm.rounds == 3
    assert max_min_fair_reference([[0, 1], [0], [1, 2]], [10.0, 6.0, 2.0]) == [4.0, 6.0, 2.0]


def test_equal_split_and_demand_ceiling() -> None:
    mm = max_min_fair([0, 1], [0, 0], [10.0], n_flows=2)
    assert mm.rates.tolist() == [5.0, 5.0]
    mm = max_min_fair([0, 1], [0, 0], [10.0], n_flows=2, demand=[3.0, np.inf])
    assert mm.rates.tolist() == [3.0, 7.0]
    assert mm.bottleneck.tolist() == [-1, 0]
    mm = max_min_fair([0, 1], [0, 0], [10.0], n_flows=2, demand=[0.0, 20.0])
    assert mm.rates.tolist() == [0.0, 10.0]


def test_weight_counts_a_channel_crossed_twice() -> None:
    mm = max_min_fair([0, 1], [0, 0], [9.0], n_flows=2, weight=[2.0, 1.0])
    assert mm.rates.tolist() == [3.0, 3.0]
    assert max_min_fair_reference([[0, 0], [0]], [9.0]) == [3.0, 3.0]


def test_flow_without_channels_gets_its_demand() -> None:
    mm = max_min_fair([1], [0], [4.0], n_flows=2, demand=[2.5, np.inf])
    assert mm.rates.tolist() == [2.5, 4.0]


def test_empty_problem() -> None:
    mm = max_min_fair([], [], [1.0], n_flows=0)
    assert mm.rates.size == 0 and mm.load.tolist() == [0.0] and mm.rounds == 0


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"flow_idx": [0], "chan_idx": [0, 0]}, "entries"),
    ({"flow_idx": [3]}, "flow index out of range"),
    ({"chan_idx": [5]}, "unknown channel"),
    ({"capacity": [0.0]}, "zero bandwidth"),
    ({"capacity": [np.inf]}, "finite"),
    ({"demand": [-1.0]}, "demands"),
    ({"demand": [1.0, 2.0]}, "demand has 2"),
    ({"weight": [0.0]}, "weights"),
    ({"n_flows": 2}, "infinite"),
    ({"n_flows": -1}, "n_flows"),
    ({"rtol": 0.5}, "rtol"),
])
def test_bad_input_is_einval(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"flow_idx": [0], "chan_idx": [0], "capacity": [1.0], "n_flows": 1}
    args.update(kwargs)
    with pytest.raises(DmaBufError) as ei:
        max_min_fair(**args)  # type: ignore[arg-type]
    assert ei.value.errno == errno.EINVAL
    assert needle in str(ei.value)


def test_matrix_shape_checked() -> None:
    with pytest.raises(DmaBufError, match="shape"):
        max_min_fair_matrix(np.ones((2, 3)), [1.0, 1.0])
    with pytest.raises(DmaBufError, match=">= 0"):
        max_min_fair_matrix(-np.ones((1, 1)), [1.0])


@st.composite
def _instances(draw: st.DrawFn) -> tuple[list[list[int]], list[float], list[float]]:
    n_chan = draw(st.integers(1, 12))
    caps = draw(st.lists(st.sampled_from([1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 63.0]),
                         min_size=n_chan, max_size=n_chan))
    n_flows = draw(st.integers(1, 25))
    paths = [sorted(draw(st.sets(st.integers(0, n_chan - 1), min_size=1, max_size=4)))
             for _ in range(n_flows)]
    demand = draw(st.lists(st.one_of(st.just(np.inf), st.floats(0.0, 20.0)),
                           min_size=n_flows, max_size=n_flows))
    return paths, caps, demand


@settings(max_examples=200, deadline=None)
@given(_instances())
def test_max_min_optimality_certificate(inst: tuple[list[list[int]], list[float],
                                                    list[float]]) -> None:
    """Feasible, and every flow is at its ceiling or has a saturated channel on which it has
    the largest rate (the max-min optimality certificate); agrees with the Python oracle."""
    paths, caps, demand = inst
    fi = np.repeat(np.arange(len(paths)), [len(p) for p in paths])
    ci = np.concatenate([np.asarray(p) for p in paths])
    cap = np.asarray(caps)
    mm = max_min_fair(fi, ci, cap, n_flows=len(paths), demand=demand)
    r = mm.rates
    tol = 1e-9
    load = np.zeros(cap.size)
    np.add.at(load, ci, r[fi])
    assert np.all(load <= cap * (1 + tol))
    assert np.all(r <= np.asarray(demand) * (1 + tol) + 1e-12)
    assert np.all(r >= 0)
    np.testing.assert_allclose(mm.load, load, rtol=1e-12, atol=1e-12)
    for f, path in enumerate(paths):
        if demand[f] != np.inf and r[f] >= demand[f] * (1 - tol):
            continue
        ok = False
        for c in path:
            on_c = [g for g, pg in enumerate(paths) if c in pg]
            if load[c] >= cap[c] * (1 - tol) and r[f] >= max(r[g] for g in on_c) * (1 - tol):
                ok = True
                # the reported bottleneck is itself such a channel
        assert ok, f"flow {f} (rate {r[f]}) is not bottlenecked on a saturated channel"
        b = int(mm.bottleneck[f])
        assert b in path
        assert load[b] >= cap[b] * (1 - tol)
    ref = max_min_fair_reference(paths, caps, demand)
    np.testing.assert_allclose(r, ref, rtol=1e-9, atol=1e-12)
