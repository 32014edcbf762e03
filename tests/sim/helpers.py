"""Shared helpers of the sim tests: the scenario texts several test files build on, and running
a scenario text."""

from __future__ import annotations

from typing import Any

from dmabuf.sim.runner import run_scenario
from dmabuf.sim.scenario import loads_scenario


def run_toml(text: str, path: str) -> dict[str, Any]:
    """Parse ``text`` as the scenario file ``path`` and run it; the report."""
    return run_scenario(loads_scenario(text, path=path))


def _table(header: str, **fields: str | int | None) -> str:
    """One TOML table: ``header`` then ``key = value`` lines (strings quoted, unless they are
    an inline table; None left out)."""
    lines = [header]
    for key, v in fields.items():
        if v is None:
            continue
        text = str(v) if isinstance(v, int) or v.startswith("{") else f'"{v}"'
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def _scenario(tables: list[str], spaced: bool) -> str:
    return ("\n" if spaced else "").join(tables)


def gpu_nic_scenario(*, seed: int, act_mode: str, count: int, name: str | None = None,
                     size: str = "16MiB", act_repr: str | None = None,
                     nic0_params: str | None = None, direction: str | None = None,
                     concurrency: int | None = None,
                     events: tuple[tuple[str, str], ...] = (), spaced: bool = False) -> str:
    """GPU0's buffer ``act`` streamed by NIC0 (imported with ``act_mode``) into ``sink``, a
    system buffer NIC1 pins: stream ``tx`` of ``count`` 1 MiB transfers; ``events`` are
    ``(at, action)`` on ``act``; ``spaced`` puts a blank line between tables."""
    tables = [
        _table("format = 1", name=name, seed=seed),
        _table("[topology]", ram="1GiB"),
        _table("[[device]]", name="gpu0", kind="gpu", vram="128MiB"),
        _table("[[device]]", name="nic0", kind="nic", params=nic0_params),
        _table("[[device]]", name="nic1", kind="nic"),
        _table("[[buffer]]", name="act", exporter="gpu0", size=size),
        _table("[[buffer]]", name="sink", exporter="system", size=size),
        _table("[[import]]", buffer="act", device="nic0", mode=act_mode, repr=act_repr),
        _table("[[import]]", buffer="sink", device="nic1", mode="pinned"),
        _table("[[stream]]", name="tx", device="nic0", buffer="act", direction=direction,
               peer="nic1", peer_buffer="sink", size="1MiB", count=count,
               concurrency=concurrency),
    ]
    tables += [_table("[[event]]", at=at, action=action, buffer="act") for at, action in events]
    return _scenario(tables, spaced)


def cmb_write_scenario(dev: str, peer: str, *, mode: str, rep: str) -> str:
    """Stream ``w``: ``peer``'s system buffer ``staging`` written by ``dev`` into ``cmb``, the
    CMB nvme0 exports, which ``dev`` imports with ``mode`` and ``repr = rep`` (8 x 1 MiB)."""
    return _scenario([
        _table("format = 1", seed=5),
        _table("[topology]", ram="1GiB"),
        _table("[[device]]", name="nvme0", kind="nvme"),
        _table("[[device]]", name="nic0", kind="nic"),
        _table("[[device]]", name="nic1", kind="nic"),
        _table("[[buffer]]", name="cmb", exporter="nvme0", size="4MiB"),
        _table("[[buffer]]", name="staging", exporter="system", size="4MiB"),
        _table("[[import]]", buffer="cmb", device=dev, mode=mode, repr=rep),
        _table("[[import]]", buffer="staging", device=peer, mode="pinned"),
        _table("[[stream]]", name="w", device=dev, buffer="cmb", direction="write", peer=peer,
               peer_buffer="staging", size="1MiB", count=8),
    ], spaced=False)
