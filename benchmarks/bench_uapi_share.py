"""Benchmarks of the uAPI bindings: sharing a buffer with a second process.

A 256 MiB buffer (16 MiB in quick mode) already filled in the parent is handed to a running
child process, which maps it and verifies every byte (a uint64 sum compared with the parent's)
and answers. Three ways, timed alternately in the same run:

* **fd passing** — the buffer is a host memfd (:class:`dmabuf.uapi.Memfd`); its fd goes to the
  child with SCM_RIGHTS (:func:`dmabuf.uapi.send_fds` / :func:`dmabuf.uapi.recv_fds`) and the
  child ``mmap``\\ s it: zero copy;
* **multiprocessing.shared_memory** — the buffer lives in a ``SharedMemory`` segment; the child
  attaches by name: zero copy as well (the reference for "within 1.5x");
* **pickle through a Pipe** — the numpy array is sent with ``Connection.send`` (pickled, copied
  through the pipe, unpickled): the naive way.

The child is forked once, before the buffers exist, and serves all three; every wait on it is
bounded and the child is killed if it does not stop. The host kernel is used (the model kernel
lives inside one Python process and cannot share memory with another one).
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import socket
import statistics
import time
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from dmabuf.bench import BenchResult, benchmark, measure
from dmabuf.uapi import Memfd, recv_fds, send_fds

_REPLY_TIMEOUT = 120.0


def _checksum(buf: Any) -> int:
    """Read every byte: the wrapping uint64 sum of the buffer."""
    a = np.frombuffer(buf, dtype=np.uint64)
    s = int(a.sum(dtype=np.uint64))
    del a
    return s


def _child(conn: Connection, sock: socket.socket) -> None:  # pragma: no cover - child process
    """The second process: verify each buffer it is given and answer with the checksum."""
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        if msg[0] == "fd":
            _, fds = recv_fds(sock, 1)
            fd = fds[0]
            try:
                with mmap.mmap(fd, msg[1], mmap.MAP_SHARED, mmap.PROT_READ) as mm:
                    s = _checksum(mm)
            finally:
                os.close(fd)
        elif msg[0] == "shm":
            shm = shared_memory.SharedMemory(msg[1])
            # Attaching registers the segment with the resource tracker (Python < 3.13); the
            # parent owns it, so the child must not count as a second owner.
            resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
            try:
                s = _checksum(shm.buf)
            finally:
                shm.close()
        else:  # "pickle": the array follows on the pipe
            arr = conn.recv()
            s = _checksum(arr)
            del arr
        conn.send(s)


class _Worker:
    """The forked child, with a Pipe for commands and a Unix socket for fds."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child_conn = ctx.Pipe()
        self.sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = ctx.Process(target=_child, args=(child_conn, child_sock), daemon=True,
                                name="bench-uapi-share-child")
        self.proc.start()
        child_conn.close()
        child_sock.close()

    def ask(self, *msg: Any, payload: Any = None, send: Callable[[], object] | None = None
            ) -> int:
        self.conn.send(msg)
        if send is not None:
            send()
        if payload is not None:
            self.conn.send(payload)
        if not self.conn.poll(_REPLY_TIMEOUT):
            raise TimeoutError(f"the child did not answer {msg[0]!r} within {_REPLY_TIMEOUT} s")
        reply: int = self.conn.recv()
        return reply

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop",))
        self.proc.join(10.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5.0)
        self.conn.close()
        self.sock.close()
        assert not self.proc.is_alive(), "benchmark child could not be stopped"


@benchmark("uapi.share", claim="sharing a 256 MiB buffer with a second process: fd passing "
           "(SCM_RIGHTS) + mmap >= 10x pickle through a Pipe, within 1.5x of shared_memory")
def bench_share(quick: bool) -> list[BenchResult]:
    size = (16 << 20) if quick else (256 << 20)
    rounds = 3 if quick else 5
    worker = _Worker()          # forked before the buffers exist: it inherits none of them
    mem: Memfd | None = None
    shm: shared_memory.SharedMemory | None = None
    try:
        pattern = np.arange(size // 8, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        want = _checksum(pattern)
        mem = Memfd.create("bench-share", size)
        with mmap.mmap(mem.fileno(), size) as mm:
            np.copyto(np.frombuffer(mm, dtype=np.uint64), pattern)
        shm = shared_memory.SharedMemory(create=True, size=size)
        np.copyto(np.frombuffer(shm.buf, dtype=np.uint64), pattern)
        memfd, segment = mem, shm

        def via_fd() -> None:
            got = worker.ask("fd", size, send=lambda: send_fds(worker.sock, [memfd]))
            assert got == want, "fd passing: the child read different bytes"

        def via_shm() -> None:
            assert worker.ask("shm", segment.name) == want, "shared_memory: wrong bytes"

        def via_pickle() -> None:
            assert worker.ask("pickle", payload=pattern) == want, "pickle: wrong bytes"

        times: dict[str, list[float]] = {"fd": [], "shm": [], "pickle": []}
        fns = {"fd": via_fd, "shm": via_shm, "pickle": via_pickle}
        for fn in fns.values():
            fn()                                     # warm up (page cache, child's imports)
        for _ in range(rounds):                      # interleaved: drift hits all three
            for key, fn in fns.items():
                times[key].append(measure(fn, repeat=1))
        t_fd, t_shm, t_pickle = (statistics.median(times[k]) for k in ("fd", "shm", "pickle"))
    finally:
        worker.stop()
        if shm is not None:
            shm.close()
            shm.unlink()
        if mem is not None:
            mem.close()
    details = {"bytes": size, "rounds": rounds, "fd_ms": [round(t * 1e3, 3) for t in times["fd"]],
               "shm_ms": [round(t * 1e3, 3) for t in times["shm"]],
               "pickle_ms": [round(t * 1e3, 3) for t in times["pickle"]],
               "start_method": "fork", "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    return [
        BenchResult(name="uapi.share.vs_pickle", figure=t_fd * 1e3, unit="ms",
                    baseline=t_pickle * 1e3, baseline_name="pickle through a Pipe",
                    ratio=t_pickle / t_fd, target=10.0, target_text=">= 10", details=details),
        BenchResult(name="uapi.share.vs_shared_memory", figure=t_fd * 1e3, unit="ms",
                    baseline=t_shm * 1e3, baseline_name="multiprocessing.shared_memory",
                    ratio=t_shm / t_fd, target=1 / 1.5, target_text=">= 0.667 (within 1.5x)",
                    details=details),
    ]
