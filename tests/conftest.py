"""Test-wide fixtures: every test runs on a fresh Machine with the lock tracker on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dmabuf.machine import Machine


@pytest.fixture(autouse=True)
def machine() -> Iterator[Machine]:
    """A fresh machine (free scheduler, lockdep-lite on), current for the test's thread."""
    with Machine(debug=True, name="test") as m:
        yield m
