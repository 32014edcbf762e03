"""The uAPI behaviour table: every check the parity tier compares, independent of the backend.

Each :class:`Behaviour` is a function ``fn(env) -> observation`` that drives **only the public
``dmabuf.uapi`` API** with ``env.backend`` and returns a JSON-able dict of what it saw, plus the
``expect`` dict of what Linux does (from the kernel source, confirmed on Debian's 6.12 under
QEMU). The same functions run

* inside a QEMU guest against the real kernel (``guest_main.py`` writes the observations to
  JSON; ``test_uapi_parity.py`` compares them on the host), and
* in-process against the model backend (an :class:`Env` whose ``backend`` is
  ``dmabuf.backends.model_uapi_backend()``; its ``run_child`` is the backend's, which copies the
  fd table like ``fork`` and runs the child side on a thread).

Expectations are those of the kernel the QEMU tier boots (6.12). Where a later kernel behaves
differently on purpose, the behaviour lists the difference in ``since``: ``{"7.1": {key:
value}}`` overrides those keys for releases >= 7.1 (:meth:`Behaviour.expect_for`, keyed on the
release the environment reports: ``/proc/sys/kernel/osrelease``). Each such entry is explained in
docs/model-vs-kernel.md, "uAPI parity".

Observations use errno *names* (``"EINVAL"``) and ``"ok"`` for success, so a difference reads
plainly. Sources are the IGT ``dmabuf_sync_file``/``vgem_basic``/``prime_self_import`` tests,
the kernel selftests ``dmabuf-heaps`` and ``udmabuf`` (ecosystem-and-users.md §2.1–2.3), and
kernel-dmabuf-core.md §7 for poll, llseek, fdinfo and bufinfo.

Guest-side rules: no sleeps to synchronise (a "does it block?" check waits on an Event with a
short timeout that must expire, then signals and waits for completion with a bounded timeout);
every vgem fence is signalled (closing the vgem device signals leftovers); every thread is
joined with a timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import gc
import mmap
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from dmabuf.errors import DmaBufError
from dmabuf.uapi import (
    DmaBufFile,
    DmaHeap,
    Memfd,
    SyncFile,
    Udmabuf,
    VgemDevice,
    list_heaps,
    process_dmabufs,
    read_bufinfo,
    read_fdinfo,
    recv_dmabuf,
    send_dmabuf,
)
from dmabuf.uapi.backend import UapiBackend, default_backend
from dmabuf.uapi.dma_buf import (
    DMA_BUF_SET_NAME_A,
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
    DMA_BUF_SYNC_WRITE,
)
from dmabuf.uapi.dma_heap import dma_heap_ioctl_alloc
from dmabuf.uapi.ioctl import IOWR
from dmabuf.uapi.memfd import F_SEAL_FUTURE_WRITE, F_SEAL_GROW, F_SEAL_SHRINK, F_SEAL_WRITE
from dmabuf.uapi.sync_file import SYNC_IOC_FILE_INFO, SyncFileInfoStruct
from dmabuf.uapi.udmabuf import udmabuf_ioctl_create, udmabuf_ioctl_create_list

Obs = dict[str, Any]
PAGE = mmap.PAGESIZE


# ============================================================================================
# the table


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """One compared behaviour: a function, what it needs, and the expected observation."""

    name: str
    fn: Callable[[Env], Obs]
    expect: Obs
    needs: tuple[str, ...]
    source: str
    doc: str
    #: ``{"7.1": {key: value}}``: expected values that changed in that release (>=).
    since: dict[str, Obs] = dataclasses.field(default_factory=dict)

    def expect_for(self, release: str | None = None) -> Obs:
        """The expectation for a kernel ``release`` (``uname -r``; None: the 6.12 baseline)."""
        out = dict(self.expect)
        if release is None:
            return out
        have = release_tuple(release)
        for version in sorted(self.since, key=release_tuple):
            if have >= release_tuple(version):
                out.update(self.since[version])
        return out


def release_tuple(release: str) -> tuple[int, int]:
    """``"6.12.107+deb12-amd64"`` -> ``(6, 12)``; ``"7.1.0-pydmabuf"`` -> ``(7, 1)``."""
    import re

    m = re.match(r"(\d+)\.(\d+)", release)
    if m is None:
        raise ValueError(f"not a kernel release: {release!r}")
    return int(m.group(1)), int(m.group(2))


REGISTRY: list[Behaviour] = []


def behaviour(name: str, *, expect: Obs, needs: tuple[str, ...] = (), source: str = "",
              since: dict[str, Obs] | None = None
              ) -> Callable[[Callable[[Env], Obs]], Callable[[Env], Obs]]:
    """Register ``fn`` as behaviour ``name`` with its expected observation.

    ``since`` lists keys whose expected value changed in a later release (see the module
    docstring); every key it names must exist in ``expect``.
    """

    def deco(fn: Callable[[Env], Obs]) -> Callable[[Env], Obs]:
        if any(b.name == name for b in REGISTRY):
            raise ValueError(f"duplicate behaviour {name}")
        for version, keys in (since or {}).items():
            release_tuple(version)
            unknown = set(keys) - set(expect)
            if unknown:
                raise ValueError(f"{name}: since[{version!r}] names keys not in expect: "
                                 f"{sorted(unknown)}")
        REGISTRY.append(Behaviour(name, fn, expect, needs, source, (fn.__doc__ or "").strip(),
                                  dict(since or {})))
        return fn

    return deco


def run_behaviours(env: Env, only: set[str] | None = None, *, budget_s: int = 0,
                   progress: Callable[[str, dict[str, Any]], None] | None = None
                   ) -> dict[str, dict[str, Any]]:
    """Run the table on ``env``: name -> ``{"observed", "seconds"}``, ``{"error"}`` or
    ``{"skipped"}`` (a feature in ``needs`` is missing).

    Args:
        env: the environment (its backend decides kernel or model).
        only: run only these names.
        budget_s: per-behaviour SIGALRM budget (0: none; main thread only).
        progress: called after each behaviour.
    """
    import signal
    import traceback

    features = env.features()
    results: dict[str, dict[str, Any]] = {}

    def alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"behaviour exceeded its {budget_s} s budget")

    old = signal.signal(signal.SIGALRM, alarm) if budget_s else None
    try:
        for b in REGISTRY:
            if only and b.name not in only:
                continue
            missing = [f"{n}: {features.get(n)}" for n in b.needs if features.get(n, "unknown")]
            if missing:
                results[b.name] = {"skipped": "; ".join(missing)}
                continue
            t = time.monotonic()
            if budget_s:
                signal.alarm(budget_s)
            try:
                results[b.name] = {"observed": b.fn(env)}
            except Exception:
                results[b.name] = {"error": traceback.format_exc()}
            finally:
                if budget_s:
                    signal.alarm(0)
            results[b.name]["seconds"] = round(time.monotonic() - t, 3)
            if progress is not None:
                progress(b.name, results[b.name])
    finally:
        if old is not None:
            signal.signal(signal.SIGALRM, old)
    return results


def compare(b: Behaviour, observed: Obs, release: str | None = None) -> list[str]:
    """The differences between an observation and ``b.expect_for(release)`` (empty: parity)."""
    diffs = []
    for key, want in b.expect_for(release).items():
        if key not in observed:
            diffs.append(f"{key}: missing (observed keys: {sorted(observed)})")
        elif observed[key] != want:
            diffs.append(f"{key}: expected {want!r}, observed {observed[key]!r}")
    return diffs


# ============================================================================================
# environment


class Env:
    """What a behaviour may use besides the backend: child 'processes' and feature probes.

    Args:
        backend: the uAPI backend (None: the running kernel).
    """

    def __init__(self, backend: UapiBackend | None = None) -> None:
        self.backend = backend if backend is not None else default_backend()
        self.page = self.backend.page_size

    def kernel_release(self) -> str:
        """``uname -r`` of the kernel behind the backend (``/proc/sys/kernel/osrelease``)."""
        try:
            return self.backend.read_text("/proc/sys/kernel/osrelease").strip()
        except OSError:
            import platform

            return platform.release()

    def features(self) -> dict[str, str | None]:
        """feature -> None if present, else the reason it is missing."""
        out: dict[str, str | None] = {}
        try:
            Udmabuf.open(self.backend).close()
            out["udmabuf"] = None
        except DmaBufError as e:
            out["udmabuf"] = str(e)
        out["heap"] = None if "system" in list_heaps(self.backend) else "no system heap"
        try:
            VgemDevice.open(self.backend).close()
            out["vgem"] = None
        except DmaBufError as e:
            out["vgem"] = str(e)
        try:
            bufinfo(self.backend)
            out["debugfs"] = None
        except DmaBufError as e:
            out["debugfs"] = str(e)
        return out

    def run_child(self, fn: Callable[[], int], timeout: float = 20.0) -> int:
        """Run ``fn`` in a child process (fork); return its exit status (``fn``'s result).

        The kernel environment forks, so the child starts with a copy of the fd table (which
        shows in dma-buf counts); a backend with its own ``run_child`` (the model backend:
        fd-table copy, child on a thread) emulates that. The wait is a poll on a pidfd, bounded
        by ``timeout``.
        """
        runner = getattr(self.backend, "run_child", None)
        if runner is not None:
            return int(runner(fn, timeout))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 99
            try:
                code = int(fn())
            finally:
                os._exit(code)
        pidfd = os.pidfd_open(pid)
        try:
            ready = select.poll()
            ready.register(pidfd, select.POLLIN)
            if not ready.poll(int(timeout * 1000)):  # the pidfd polls readable at exit
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise TimeoutError(f"child {pid} did not finish within {timeout} s")
        finally:
            os.close(pidfd)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def bufinfo(backend: UapiBackend) -> tuple[Any, str]:
    """``read_bufinfo(backend)`` and the format of its fence lines.

    Returns ``(BufInfo, fmt)``: ``fmt`` is ``"driver timeline seq N"`` for the fence lines of
    ``dma_fence_describe()`` up to the 6.12 family, ``"context:seqno timeline driver"`` for the
    newer format (``"%llu:%llu %s %s %ssignalled"``, names empty once signalled; the binding
    parses both and gives the newer lines a ``context``), ``"none"`` without fence lines.
    """
    info = read_bufinfo(backend)
    fences = [f for o in info.objects for f in o.fences]
    if any(f.context is not None for f in fences):
        fmt = "context:seqno timeline driver"
    elif fences:
        fmt = "driver timeline seq N"
    else:
        fmt = "none"
    return info, fmt


def err(fn: Callable[[], object]) -> str:
    """Run ``fn``: ``"ok"`` or the errno name of the OSError/DmaBufError it raised."""
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return "ok"


def err_msg(fn: Callable[[], object]) -> tuple[str, str]:
    """Like :func:`err` but also return the message."""
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno)), str(e)
    return "ok", ""


def blocks_until(start: Callable[[], object], release: Callable[[], object], *,
                 must_block: float = 0.3, timeout: float = 8.0) -> Obs:
    """Does ``start()`` (run in a thread) block until ``release()`` is called?

    Returns ``{"blocked": bool, "finished": bool, "error": errno name or None}``.
    """
    done = threading.Event()
    box: dict[str, str | None] = {"error": None}

    def run() -> None:
        try:
            start()
        except OSError as e:
            box["error"] = errno.errorcode.get(e.errno or 0, str(e.errno))
        finally:
            done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    blocked = not done.wait(must_block)
    release()
    finished = done.wait(timeout)
    t.join(timeout)
    return {"blocked": blocked, "finished": finished and not t.is_alive(),
            "error": box["error"]}


@contextlib.contextmanager
def udmabuf_of(env: Env, pages: int = 16, *, name: str = "parity") -> Iterator[
        tuple[DmaBufFile, Memfd]]:
    """A sealed memfd of ``pages`` pages and a udmabuf over all of it."""
    with Memfd.create(name, pages * env.page, backend=env.backend) as m:
        m.seal_for_udmabuf()
        with Udmabuf.open(env.backend) as dev, dev.create(m) as buf:
            yield buf, m


@contextlib.contextmanager
def heap_buf(env: Env, size: int = 16 * PAGE, **kw: Any) -> Iterator[DmaBufFile]:
    """A system-heap dma-buf."""
    with DmaHeap.open("system", env.backend) as heap, heap.alloc(size, **kw) as buf:
        yield buf


def busy_state(buf: DmaBufFile) -> str:
    """IGT's view: poll busy for R/W/RW and sync_file busy for R/W/RW: ``"p:R0W1X1 s:R0W1X1"``."""
    p = "".join(f"{k}{int(buf.busy(read=r, write=w))}"
                for k, r, w in (("R", True, False), ("W", False, True), ("X", True, True)))
    s = ""
    for k, r, w in (("R", True, False), ("W", False, True), ("X", True, True)):
        with buf.export_sync_file(read=r, write=w) as sf:
            s += f"{k}{int(not sf.signaled)}"
    return f"p:{p} s:{s}"


IDLE = "p:R0W0X0 s:R0W0X0"
READ_BUSY = "p:R0W1X1 s:R0W1X1"  # a pending read fence: writers wait, readers do not
ALL_BUSY = "p:R1W1X1 s:R1W1X1"


def vgem_sync_file(dev: VgemDevice, *, write: bool = True) -> tuple[SyncFile, Any, Any]:
    """A sync_file holding one unsignalled vgem fence (a stand-in for a sw_sync timeline).

    Returns ``(sync_file, fence, bo)``; signal ``fence`` to signal the sync_file.
    """
    bo = dev.create_dumb(32, 32, 32)
    fence = bo.attach_fence(write=write)
    with bo.export() as d:
        sf = d.export_sync_file(read=False, write=True)
    return sf, fence, bo


# ============================================================================================
# DMA_BUF_IOCTL_SYNC


@behaviour("sync.start_end", needs=("udmabuf", "heap"),
           expect={"udmabuf": ["ok"] * 6, "system": ["ok"] * 6},
           source="dma-buf.c dma_buf_ioctl(SYNC)")
def _sync_start_end(env: Env) -> Obs:
    """SYNC START/END with READ, WRITE and RW succeed on udmabuf and system-heap buffers."""
    out: Obs = {}
    with udmabuf_of(env) as (u, _), heap_buf(env) as h:
        for key, buf in (("udmabuf", u), ("system", h)):
            res = []
            for rw in (DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_RW):
                res.append(err(lambda b=buf, f=rw: b.sync(DMA_BUF_SYNC_START | f)))
                res.append(err(lambda b=buf, f=rw: b.sync(DMA_BUF_SYNC_END | f)))
            out[key] = res
    return out


@behaviour("sync.invalid_flags", needs=("udmabuf",),
           expect={"kernel": ["EINVAL", "EINVAL", "EINVAL", "EINVAL", "EINVAL"],
                   "binding": ["EINVAL", "EINVAL", "EINVAL", "EINVAL", "EINVAL"]},
           source="dma-buf.c dma_buf_ioctl(SYNC): flags & ~VALID_FLAGS_MASK, !(flags & RW)")
def _sync_invalid(env: Env) -> Obs:
    """Unknown bits, START alone, END alone: EINVAL from the kernel and from the binding."""
    bad = [0xDEAD0000, DMA_BUF_SYNC_START, DMA_BUF_SYNC_END, 8, 1 << 40]
    with udmabuf_of(env) as (u, _):
        kernel = [err(lambda f=f: u.sync(f, validate=False)) for f in bad]
        binding = [err(lambda f=f: u.sync(f)) for f in bad]
    return {"kernel": kernel, "binding": binding}


@behaviour("sync.end_without_start", needs=("udmabuf", "heap"),
           expect={"udmabuf": "EINVAL", "udmabuf_after_start": "ok", "system": "ok"},
           source="udmabuf.c end_cpu_udmabuf(): no sg table before the first begin")
def _sync_end_first(env: Env) -> Obs:
    """udmabuf refuses END before any START (no sg table yet); the system heap accepts it."""
    with udmabuf_of(env) as (u, _), heap_buf(env) as h:
        first = err(lambda: u.sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW))
        u.sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW)
        u.sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW)
        again = err(lambda: u.sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW))
        sysh = err(lambda: h.sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW))
    return {"udmabuf": first, "udmabuf_after_start": again, "system": sysh}


@behaviour("sync.enotty_on_other_files", needs=("vgem",),
           expect={"memfd": "ENOTTY", "memfd_message_says_not_dmabuf": True,
                   "sync_file": "ENOTTY", "from_fd_check": "ENOTTY"},
           source="dma-buf.c dma_buf_ioctl(): -ENOTTY; IGT has_dmabuf_export_sync_file")
def _sync_enotty(env: Env) -> Obs:
    """DMA_BUF_IOCTL_SYNC on a memfd or a sync_file is ENOTTY; the message says why."""
    with Memfd.create("not-a-dmabuf", PAGE, backend=env.backend) as m:
        fake = DmaBufFile(env.backend.dup(m.fileno()), env.backend)
        with fake:
            code, msg = err_msg(lambda: fake.sync_start())
        fromfd = err(lambda: DmaBufFile.from_fd(m.fileno(), env.backend))
    with VgemDevice.open(env.backend) as dev, dev.create_dumb(16, 16) as bo, \
            bo.export() as d, d.export_sync_file() as sf:
        wrapped = DmaBufFile(env.backend.dup(sf.fileno()), env.backend)
        with wrapped:
            sfc = err(lambda: wrapped.sync_start())
    return {"memfd": code, "memfd_message_says_not_dmabuf": "not a dma-buf" in msg,
            "sync_file": sfc, "from_fd_check": fromfd}


# ============================================================================================
# llseek, mmap, CPU access


@behaviour("llseek.size", needs=("udmabuf", "heap", "vgem"),
           expect={"udmabuf": 16 * PAGE, "system_rounded": 3 * PAGE, "vgem": 1 << 20,
                   "seek_set_0": 0},
           source="dma-buf.c dma_buf_llseek(); IGT prime_self_import basic-llseek-size")
def _llseek_size(env: Env) -> Obs:
    """lseek(SEEK_END) gives the size; heaps round up to pages; SEEK_SET 0 gives 0."""
    with udmabuf_of(env) as (u, _), heap_buf(env, 2 * PAGE + 1) as h, \
            VgemDevice.open(env.backend) as dev, dev.create_dumb(1024, 1024, 8) as bo, \
            bo.export() as v:
        return {"udmabuf": u.size, "system_rounded": h.size, "vgem": v.size,
                "seek_set_0": u.llseek(0, os.SEEK_SET)}


@behaviour("llseek.bad", needs=("udmabuf",),
           expect={"minus1_end": "EINVAL", "one_set": "EINVAL", "zero_cur": "EINVAL",
                   "one_end": "EINVAL"},
           source="dma-buf.c dma_buf_llseek(); IGT prime_self_import basic-llseek-bad")
def _llseek_bad(env: Env) -> Obs:
    """Only offset 0 with SEEK_SET/SEEK_END is accepted."""
    with udmabuf_of(env) as (u, _):
        return {"minus1_end": err(lambda: u.llseek(-1, os.SEEK_END)),
                "one_set": err(lambda: u.llseek(1, os.SEEK_SET)),
                "zero_cur": err(lambda: u.llseek(0, os.SEEK_CUR)),
                "one_end": err(lambda: u.llseek(1, os.SEEK_END))}


@behaviour("mmap.bounds", needs=("udmabuf", "heap"),
           expect={"too_long": "EINVAL", "offset_past_end": "EINVAL", "last_page": "ok",
                   "udmabuf_private": "EINVAL", "heap_too_long": "EINVAL",
                   "binding_range": "EINVAL"},
           source="dma-buf.c dma_buf_mmap_internal(); udmabuf.c mmap_udmabuf() VM_SHARED")
def _mmap_bounds(env: Env) -> Obs:
    """mmap beyond the buffer is EINVAL; udmabuf refuses MAP_PRIVATE; cpu_access checks range."""
    be = env.backend
    rw = mmap.PROT_READ | mmap.PROT_WRITE

    def mm(buf: DmaBufFile, length: int, offset: int = 0, flags: int = mmap.MAP_SHARED) -> None:
        be.mmap(buf.fileno(), length, prot=rw, flags=flags, offset=offset).close()

    with udmabuf_of(env, 4) as (u, _), heap_buf(env, 4 * PAGE) as h:
        def binding() -> None:
            with u.cpu_access(offset=3 * PAGE, length=2 * PAGE):
                pass

        return {"too_long": err(lambda: mm(u, 5 * PAGE)),
                "offset_past_end": err(lambda: mm(u, PAGE, 4 * PAGE)),
                "last_page": err(lambda: mm(u, PAGE, 3 * PAGE)),
                "udmabuf_private": err(lambda: mm(u, PAGE, 0, mmap.MAP_PRIVATE)),
                "heap_too_long": err(lambda: mm(h, 5 * PAGE)),
                "binding_range": err(binding)}


@behaviour("cpu.udmabuf_zero_copy", needs=("udmabuf",),
           expect={"dmabuf_to_memfd": b"PYDB".hex(), "memfd_to_dmabuf": b"MEMF".hex(),
                   "offset_view": b"MEMF".hex()},
           source="udmabuf selftest test-5; machine-and-real-kernel.md §3")
def _cpu_zero_copy(env: Env) -> Obs:
    """Writes through the dma-buf mapping show in the memfd and vice versa (same pages)."""
    with udmabuf_of(env, 4) as (u, m):
        with u.cpu_access(write=True) as v:
            v[PAGE:PAGE + 4] = b"PYDB"
        a = m.read(PAGE, 4).hex()
        m.write(3 * PAGE + 100, b"MEMF")
        with u.cpu_access(read=True) as v:
            b = bytes(v[3 * PAGE + 100: 3 * PAGE + 104]).hex()
        with u.cpu_access(offset=3 * PAGE + 100, length=4) as v:
            c = bytes(v).hex()
    return {"dmabuf_to_memfd": a, "memfd_to_dmabuf": b, "offset_view": c}


@behaviour("cpu.view_lifetime", needs=("udmabuf",),
           expect={"memoryview_released": True, "numpy_readonly_after": True,
                   "stale_slice_cut_off": True, "buffer_intact": b"KEEP".hex(),
                   "readonly_view_for_read": True, "fdinfo_count_inside": 3,
                   "fdinfo_count_after": 1},
           source="dmabuf.uapi design: no view outlives its SYNC bracket")
def _cpu_lifetime(env: Env) -> Obs:
    """Views die with the cpu_access block; kept slices/arrays are revoked, never aliasing."""
    import numpy as np

    with udmabuf_of(env, 2) as (u, m):
        with u.cpu_access(write=True) as v:
            v[:4] = b"KEEP"
            count_inside = u.fdinfo().count
            kept = v
            kept_slice = v[:8]
        try:
            kept[0]
            released = False
        except ValueError:
            released = True
        kept_slice[:4] = b"XXXX"  # goes to private memory after revoke, not the buffer
        with u.cpu_access(write=True, dtype=np.uint8) as arr:
            pass
        ro_after = not arr.flags.writeable
        with u.cpu_access(read=True) as v:
            ro = v.readonly
        intact = m.read(0, 4).hex()
        del arr, kept_slice, kept
        gc.collect()
        count_after = u.fdinfo().count
    return {"memoryview_released": released, "numpy_readonly_after": ro_after,
            "stale_slice_cut_off": intact == b"KEEP".hex(), "buffer_intact": intact,
            "readonly_view_for_read": ro, "fdinfo_count_inside": count_inside,
            "fdinfo_count_after": count_after}


@behaviour("cpu.numpy_fill", needs=("heap",),
           expect={"sum": 255 * (1 << 20), "first": 255, "last": 255},
           source="dmabuf-heaps selftest test_alloc_and_import (fill under SYNC)")
def _cpu_numpy(env: Env) -> Obs:
    """A 1 MiB heap buffer filled through a numpy view under SYNC reads back."""
    import numpy as np

    with heap_buf(env, 1 << 20) as h:
        with h.cpu_access(write=True, dtype=np.uint8) as a:
            a[:] = 0xFF
        with h.cpu_access(read=True, dtype=np.uint8) as a:
            s, first, last = int(a.sum(dtype=np.uint64)), int(a[0]), int(a[-1])
            del a
    return {"sum": s, "first": first, "last": last}


@behaviour("cpu.readonly_fd", needs=("heap",),
           expect={"write_map": "EACCES", "read_map": "ok", "fd_flags_accmode": os.O_RDONLY},
           source="dma-heap.c fd_flags; mm/mmap.c (PROT_WRITE on an O_RDONLY file)")
def _cpu_readonly(env: Env) -> Obs:
    """A dma-buf allocated with fd_flags O_RDONLY maps for reading only."""
    with heap_buf(env, PAGE, fd_flags=os.O_RDONLY | os.O_CLOEXEC) as h:
        def w() -> None:
            with h.cpu_access(write=True):
                pass

        def r() -> None:
            with h.cpu_access(read=True) as v:
                bytes(v[:1])

        fl = h.fdinfo().flags or 0
        return {"write_map": err(w), "read_map": err(r), "fd_flags_accmode": fl & os.O_ACCMODE}


# ============================================================================================
# name and fdinfo


@behaviour("name.set_get", needs=("udmabuf",),
           expect={"before": None, "link_before": "/dmabuf:", "after": "parity-name",
                   "link_after": "/dmabuf:parity-name", "renamed": "second",
                   "variant_a": "via-A", "empty": ""},
           source="dma-buf.c dma_buf_set_name(), dma_buf_show_fdinfo(), dmabuffs_dname()")
def _name(env: Env) -> Obs:
    """SET_NAME shows in fdinfo and the fd link; renaming works; SET_NAME_A is accepted."""
    be = env.backend
    with udmabuf_of(env) as (u, _):
        before, lb = u.name, be.readlink(f"/proc/self/fd/{u.fileno()}")
        u.set_name("parity-name")
        after, la = u.name, be.readlink(f"/proc/self/fd/{u.fileno()}")
        u.set_name("second")
        renamed = u.name
        be.ioctl(u.fileno(), DMA_BUF_SET_NAME_A, bytearray(b"via-A\0"))
        va = u.name
        u.set_name("")
        empty = u.name
    return {"before": before, "link_before": lb, "after": after, "link_after": la,
            "renamed": renamed, "variant_a": va, "empty": empty}


@behaviour("name.length_limit", needs=("udmabuf",),
           expect={"kernel_31": "ok", "kernel_32": "EINVAL", "binding_31": "ok",
                   "binding_32": "EINVAL", "kept_after_failure": "a" * 31},
           source="dma-buf.c dma_buf_set_name(): strndup_user(buf, DMA_BUF_NAME_LEN)")
def _name_len(env: Env) -> Obs:
    """Names of 31 bytes are accepted, 32 (no room for the NUL) are EINVAL."""
    with udmabuf_of(env) as (u, _):
        k31 = err(lambda: u.set_name("a" * 31, validate=False))
        k32 = err(lambda: u.set_name("b" * 32, validate=False))
        kept = u.name
        b31 = err(lambda: u.set_name("a" * 31))
        b32 = err(lambda: u.set_name("b" * 32))
    return {"kernel_31": k31, "kernel_32": k32, "binding_31": b31, "binding_32": b32,
            "kept_after_failure": kept}


@behaviour("fdinfo.fields", needs=("udmabuf", "heap", "vgem"),
           expect={"udmabuf": [16 * PAGE, 1, "udmabuf"], "system": [4 * PAGE, 1, "system"],
                   "vgem": [PAGE, 3, "drm"], "rdwr_cloexec": [os.O_RDWR, True],
                   "ino_matches_fstat": True},
           source="dma-buf.c dma_buf_show_fdinfo()")
def _fdinfo_fields(env: Env) -> Obs:
    """fdinfo: size, count, exp_name per exporter, f_flags, ino.

    A PRIME export counts 3: the fd, the GEM object's export cache (``obj->dma_buf``) and the
    exporting file's PRIME handle table (drm_prime.c, drm_gem_prime_handle_to_fd()).
    """
    with udmabuf_of(env) as (u, _), heap_buf(env, 4 * PAGE) as h, \
            VgemDevice.open(env.backend) as dev, dev.create_dumb(32, 32, 32) as bo, \
            bo.export() as v:
        out: Obs = {}
        for key, buf in (("udmabuf", u), ("system", h), ("vgem", v)):
            fi = buf.fdinfo()
            out[key] = [fi.size, fi.count, fi.exp_name]
        fi = h.fdinfo()
        out["rdwr_cloexec"] = [(fi.flags or 0) & os.O_ACCMODE,
                               bool((fi.flags or 0) & os.O_CLOEXEC)]
        out["ino_matches_fstat"] = fi.ino == h.inode
    return out


@behaviour("fdinfo.count", needs=("udmabuf",),
           expect={"one": 1, "dup": 2, "dup_closed": 1, "mapped": 3, "unmapped": 1},
           source="dma-buf.c dma_buf_show_fdinfo(): file_count(file) - 1")
def _fdinfo_count(env: Env) -> Obs:
    """count counts file references: each fd and each mapping.

    Inside ``cpu_access`` the count rises by 2: the VMA holds the file, and CPython's
    ``mmap.mmap`` keeps a dup of the fd for its own use (until Python 3.13's trackfd=False).
    """
    with udmabuf_of(env) as (u, _):
        one = u.fdinfo().count
        d = u.dup()
        dup = u.fdinfo().count
        d.close()
        dup_closed = u.fdinfo().count
        with u.cpu_access():
            mapped = u.fdinfo().count
        unmapped = u.fdinfo().count
    return {"one": one, "dup": dup, "dup_closed": dup_closed, "mapped": mapped,
            "unmapped": unmapped}


@behaviour("fdinfo.not_dmabuf", expect={"memfd": "ENOTTY", "closed_fd": "ENOENT"},
           source="fs/proc/fd.c; dmabuf.uapi.fdinfo")
def _fdinfo_not(env: Env) -> Obs:
    """fdinfo of a memfd has no dma-buf lines; a closed fd has no fdinfo."""
    with Memfd.create("x", PAGE, backend=env.backend) as m:
        memfd = err(lambda: read_fdinfo(m.fileno(), env.backend))
        fd = m.fileno()
    return {"memfd": memfd, "closed_fd": err(lambda: read_fdinfo(fd, env.backend))}


@behaviour("fdinfo.process_dmabufs", needs=("udmabuf", "heap"),
           expect={"listed": True, "exporters": ["system", "udmabuf"]},
           source="dmabuf.uapi.fdinfo.process_dmabufs (/proc/self/fd + fdinfo)")
def _process_dmabufs(env: Env) -> Obs:
    """Every dma-buf fd of the process is found through /proc/self/fd."""
    with udmabuf_of(env) as (u, _), heap_buf(env) as h:
        found = process_dmabufs("self", env.backend)
        return {"listed": u.fileno() in found and h.fileno() in found,
                "exporters": sorted({found[u.fileno()].exp_name, found[h.fileno()].exp_name})}


# ============================================================================================
# bufinfo


@behaviour("bufinfo.entry", needs=("udmabuf", "debugfs"),
           expect={"found": True, "size": 8 * PAGE, "exp_name": "udmabuf",
                   "name": "bufinfo-entry", "count": 1, "fences": [], "devices": [],
                   "totals_consistent": True, "gone_after_close": True},
           source="dma-buf.c dma_buf_debug_show()")
def _bufinfo_entry(env: Env) -> Obs:
    """bufinfo lists the buffer with size, exporter, name, count, no fences, no devices."""
    with udmabuf_of(env, 8) as (u, _):
        u.set_name("bufinfo-entry")
        ino = u.inode
        bi = bufinfo(env.backend)[0]
        o = bi.find(ino)
        totals = (bi.total_objects == len(bi.objects)
                  and bi.total_bytes == sum(x.size for x in bi.objects))
        out: Obs = {"found": o is not None, "totals_consistent": totals}
        if o is not None:
            out.update(size=o.size, exp_name=o.exp_name, name=o.name, count=o.count,
                       fences=[f.usage for f in o.fences], devices=list(o.attached_devices))
    out["gone_after_close"] = bufinfo(env.backend)[0].find(ino) is None
    return out


@behaviour("bufinfo.fences", needs=("udmabuf", "vgem", "debugfs"),
           expect={"stub_write": [["write", "stub", "stub", 0, True]],
                   "vgem_read_pending": [["read", "vgem", "unbound", 1, False]],
                   "vgem_read_signalled": [["read", "vgem", "unbound", 1, True]],
                   "fence_line_format": ["driver timeline seq N"]},
           since={"7.1": {"stub_write": [["write", "", "", 0, True]],
                          "vgem_read_signalled": [["read", "", "", 1, True]],
                          "fence_line_format": ["context:seqno timeline driver"]}},
           source="dma-resv.c dma_resv_describe(); dma-fence.c dma_fence_describe()")
def _bufinfo_fences(env: Env) -> Obs:
    """Imported stub fence and vgem read fence appear with usage, driver, timeline, state.

    v7.1 prints ``context:seqno timeline driver`` and leaves both names empty once a fence has
    signalled (``dma_fence_describe()`` reads them only while unsignalled, under RCU).
    """

    formats: list[str] = []

    def fences(ino: int) -> list[list[Any]]:
        info, fmt = bufinfo(env.backend)
        formats.append(fmt)
        o = info.find(ino)
        return [] if o is None else [[f.usage, f.driver, f.timeline, f.seqno, f.signalled]
                                     for f in o.fences]

    with udmabuf_of(env) as (u, _):
        with u.export_sync_file() as sf:
            u.import_sync_file(sf, write=True)
        stub = fences(u.inode)
    with VgemDevice.open(env.backend) as dev, dev.create_dumb(32, 32, 32) as bo, \
            bo.export() as d:
        f = bo.attach_fence(write=False)
        pending = fences(d.inode)
        f.signal()
        signalled = fences(d.inode)
    return {"stub_write": stub, "vgem_read_pending": pending, "vgem_read_signalled": signalled,
            "fence_line_format": sorted(set(formats))}


# ============================================================================================
# poll


@behaviour("poll.idle", needs=("udmabuf",),
           expect={"both": select.POLLIN | select.POLLOUT, "in_only": select.POLLIN,
                   "out_only": select.POLLOUT, "none": 0},
           source="dma-buf.c dma_buf_poll(): events masked to EPOLLIN|EPOLLOUT")
def _poll_idle(env: Env) -> Obs:
    """An idle dma-buf is ready for what was asked, and only that."""
    with udmabuf_of(env) as (u, _):
        return {"both": u.poll(select.POLLIN | select.POLLOUT),
                "in_only": u.poll(select.POLLIN), "out_only": u.poll(select.POLLOUT),
                "none": u.poll(0)}


@behaviour("poll.wakes_on_signal", needs=("vgem",),
           expect={"write_fence_poll_in": {"blocked": True, "finished": True, "error": None},
                   "read_fence_poll_out": {"blocked": True, "finished": True, "error": None},
                   "read_fence_poll_in_ready": True},
           source="dma-buf.c dma_buf_poll_cb(); IGT vgem_basic dmabuf-fence")
def _poll_wakes(env: Env) -> Obs:
    """poll(POLLIN) sleeps on a write fence, poll(POLLOUT) on a read fence, until signalled."""
    with VgemDevice.open(env.backend) as dev, dev.create_dumb(32, 32, 32) as bo, \
            bo.export() as d:
        f = bo.attach_fence(write=True)
        a = blocks_until(lambda: d.wait(write=False, timeout=8), f.signal)
        g = bo.attach_fence(write=False)
        ready_in = bool(d.poll(select.POLLIN) & select.POLLIN)
        b = blocks_until(lambda: d.wait(write=True, timeout=8), g.signal)
    return {"write_fence_poll_in": a, "read_fence_poll_out": b,
            "read_fence_poll_in_ready": ready_in}


# ============================================================================================
# sync_file


@behaviour("sync_file.export_idle_stub", needs=("udmabuf",),
           expect={"status": 1, "num_fences": 1, "signaled": True,
                   "fence": ["stub", "stub", 1], "cloexec": True, "name": "stub-stub0-0"},
           since={"7.1": {"fence": ["detached-driver", "signaled-timeline", 1],
                          "name": "detached-driver-signaled-timeli"}},
           source="dma-buf.c dma_buf_export_sync_file(): dma_fence_get_stub()")
def _sf_stub(env: Env) -> Obs:
    """EXPORT_SYNC_FILE of an idle buffer: one signalled stub fence (not an empty file).

    v7.1 detaches a names-only fence's ops when it signals, so the (always signalled) stub
    reports ``detached-driver``/``signaled-timeline`` and the derived sync_file name is that,
    cut to 31 bytes (``sync_file_get_name()``: ``"%s-%s%llu-%lld"``).
    """
    with udmabuf_of(env) as (u, _), u.export_sync_file(read=True, write=True) as sf:
        info = sf.info()
        f = info.fences[0]
        cloexec = bool(env.backend.fcntl(sf.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        return {"status": info.status, "num_fences": info.num_fences, "signaled": sf.signaled,
                "fence": [f.driver_name, f.obj_name, f.status], "name": info.name,
                "cloexec": cloexec}


@behaviour("sync_file.bad_flags", needs=("udmabuf",),
           expect={"export_kernel": ["EINVAL", "EINVAL", "EINVAL"],
                   "export_binding": ["EINVAL", "EINVAL", "EINVAL"],
                   "import_kernel": ["EINVAL", "EINVAL", "EINVAL"],
                   "import_binding": ["EINVAL", "EINVAL", "EINVAL"]},
           source="dma-buf.c dma_buf_{export,import}_sync_file(): flags & ~RW, !(flags & RW)")
def _sf_bad_flags(env: Env) -> Obs:
    """EXPORT/IMPORT_SYNC_FILE take READ/WRITE only: 0, END (4) and 8 are EINVAL."""
    bad = [0, DMA_BUF_SYNC_END, 8]
    with udmabuf_of(env) as (u, _), u.export_sync_file() as sf:
        def exp(f: int, v: bool) -> None:
            u.export_sync_file_flags(f, validate=v).close()

        return {"export_kernel": [err(lambda f=f: exp(f, False)) for f in bad],
                "export_binding": [err(lambda f=f: exp(f, True)) for f in bad],
                "import_kernel": [err(lambda f=f: u.import_sync_file_flags(sf, f,
                                                                           validate=False))
                                  for f in bad],
                "import_binding": [err(lambda f=f: u.import_sync_file_flags(sf, f))
                                   for f in bad]}


@behaviour("sync_file.import_not_sync_file", needs=("udmabuf",),
           expect={"memfd": "EINVAL", "dmabuf": "EINVAL", "bad_fd": "EINVAL"},
           source="dma-buf.c dma_buf_import_sync_file(): sync_file_get_fence() == NULL")
def _sf_import_bad(env: Env) -> Obs:
    """Importing something that is not a sync_file is EINVAL (even a closed fd)."""
    with udmabuf_of(env) as (u, m):
        return {"memfd": err(lambda: u.import_sync_file(m.fileno())),
                "dmabuf": err(lambda: u.import_sync_file(u.fileno())),
                "bad_fd": err(lambda: u.import_sync_file(9999))}


@behaviour("sync_file.merge", needs=("vgem",),
           expect={"two_contexts": [2, 0], "after_one": 0, "after_both": 1,
                   "same_twice": 1, "fence_status_after": [1, 1], "timestamps_set": True,
                   "merge_memfd": "ENOENT", "merge_name": "merged-name"},
           source="sync_file.c sync_file_merge(); IGT sw_sync merge semantics")
def _sf_merge(env: Env) -> Obs:
    """MERGE keeps one fence per context; status follows the fences; per-fence info.

    Merging with a non-sync_file fd is ENOENT (sync_file_ioctl_merge(): sync_file_fdget()).
    """
    with VgemDevice.open(env.backend) as dev, \
            Memfd.create("m", PAGE, backend=env.backend) as mfd:
        a, fa, boa = vgem_sync_file(dev)
        b, fb, bob = vgem_sync_file(dev)
        with a, b, boa, bob:
            with a.merge(b, "merged-name") as ab:
                i = ab.info()
                two = [i.num_fences, i.status]
                fa.signal()
                one = ab.status
                fb.signal()
                both = ab.status
                i2 = ab.info()
                name = i2.name
            with a.merge(a) as aa:
                same = aa.info().num_fences
            merge_memfd = err(lambda: a.merge(mfd.fileno()).close())
    return {"two_contexts": two, "after_one": one, "after_both": both, "same_twice": same,
            "fence_status_after": [f.status for f in i2.fences],
            "timestamps_set": all(f.timestamp_ns > 0 for f in i2.fences),
            "merge_memfd": merge_memfd, "merge_name": name}


@behaviour("sync_file.info_errors", needs=("udmabuf",),
           expect={"count_only": [1, 0], "flags_nonzero": "EINVAL", "on_dmabuf": "ENOTTY",
                   "deadline_on_dmabuf": "ENOTTY"},
           source="sync_file.c sync_file_ioctl_fence_info()")
def _sf_info(env: Env) -> Obs:
    """FILE_INFO with num_fences 0 returns the count only; flags != 0 is EINVAL."""
    import ctypes

    with udmabuf_of(env) as (u, _), u.export_sync_file() as sf:
        buf = bytearray(ctypes.sizeof(SyncFileInfoStruct))
        env.backend.ioctl(sf.fileno(), SYNC_IOC_FILE_INFO, buf)
        head = SyncFileInfoStruct.from_buffer(buf)
        count_only = [head.num_fences, head.sync_fence_info]
        buf2 = bytearray(ctypes.sizeof(SyncFileInfoStruct))
        SyncFileInfoStruct.from_buffer(buf2).flags = 1
        flags = err(lambda: env.backend.ioctl(sf.fileno(), SYNC_IOC_FILE_INFO, buf2))
        fake = SyncFile(env.backend.dup(u.fileno()), env.backend)
        with fake:
            on_dmabuf = err(lambda: fake.info())
            deadline = err(lambda: fake.set_deadline(1))
    return {"count_only": count_only, "flags_nonzero": flags, "on_dmabuf": on_dmabuf,
            "deadline_on_dmabuf": deadline}


@behaviour("sync_file.wait_and_deadline", needs=("vgem",),
           expect={"pending": False, "deadline": "ok", "wait": {"blocked": True,
                                                               "finished": True,
                                                               "error": None},
                   "signaled": True},
           source="sync_file.c sync_file_poll(), sync_file_ioctl_set_deadline()")
def _sf_wait(env: Env) -> Obs:
    """A sync_file polls ready only after its fence signals; SET_DEADLINE is accepted."""
    with VgemDevice.open(env.backend) as dev:
        sf, f, bo = vgem_sync_file(dev)
        with sf, bo:
            pending = sf.signaled
            dl = err(lambda: sf.set_deadline(time.monotonic_ns() + 10**6))
            w = blocks_until(lambda: sf.wait(8), f.signal)
            return {"pending": pending, "deadline": dl, "wait": w, "signaled": sf.signaled}


# ============================================================================================
# IGT dmabuf_sync_file (vgem fences)


@behaviour("igt.export_basic", needs=("vgem",),
           expect={"fresh": IDLE, "read_fence": READ_BUSY, "read_signalled": IDLE,
                   "write_fence": ALL_BUSY, "write_signalled": IDLE},
           source="IGT tests/dmabuf_sync_file.c export-basic")
def _igt_export_basic(env: Env) -> Obs:
    """Idle; a read fence makes W and RW busy (poll and sync_file); a write fence all."""
    with VgemDevice.open(env.backend) as dev, dev.create_dumb(64, 64, 32) as bo, \
            bo.export() as d:
        out = {"fresh": busy_state(d)}
        f = bo.attach_fence(write=False)
        out["read_fence"] = busy_state(d)
        f.signal()
        out["read_signalled"] = busy_state(d)
        f = bo.attach_fence(write=True)
        out["write_fence"] = busy_state(d)
        f.signal()
        out["write_signalled"] = busy_state(d)
    return out


@behaviour("igt.export_before_signal", needs=("vgem",),
           expect={"read_pending": [False, True], "read_after": [False, False],
                   "write_pending": [True, True], "write_after": [False, False]},
           source="IGT tests/dmabuf_sync_file.c export-before-signal")
def _igt_export_before(env: Env) -> Obs:
    """sync_files exported while a fence is pending track that fence until it signals."""
    out: Obs = {}
    with VgemDevice.open(env.backend) as dev, dev.create_dumb(64, 64, 32) as bo, \
            bo.export() as d:
        for key, write in (("read", False), ("write", True)):
            f = bo.attach_fence(write=write)
            with d.export_sync_file(read=True, write=False) as r, \
                    d.export_sync_file(read=False, write=True) as w:
                out[f"{key}_pending"] = [not r.signaled, not w.signaled]
                f.signal()
                out[f"{key}_after"] = [not r.signaled, not w.signaled]
    return out


@behaviour("igt.export_multiwait", needs=("vgem",),
           expect={"both_pending": True, "first_signalled": True, "both_signalled": False,
                   "later_fence_ignored": False},
           source="IGT tests/dmabuf_sync_file.c export-multiwait")
def _igt_multiwait(env: Env) -> Obs:
    """A WRITE sync_file waits for both read fences; a fence attached later is not included."""
    with VgemDevice.open(env.backend) as dev, dev.create_dumb(64, 64, 32) as bo, \
            bo.export() as d:
        f1 = bo.attach_fence(write=False)
        f2 = bo.attach_fence(write=False)
        with d.export_sync_file(read=False, write=True) as w:
            out = {"both_pending": not w.signaled}
            f1.signal()
            out["first_signalled"] = not w.signaled
            f3 = bo.attach_fence(write=False)
            f2.signal()
            out["both_signalled"] = not w.signaled
            out["later_fence_ignored"] = not w.signaled
            f3.signal()
    return out


@behaviour("igt.export_wait_after_attach", needs=("vgem",),
           expect={"read_sf": False, "write_sf": False, "dmabuf_now_busy_w": True},
           source="IGT tests/dmabuf_sync_file.c export-wait-after-attach")
def _igt_after_attach(env: Env) -> Obs:
    """sync_files snapshot the fence set: ones exported before a fence never become busy."""
    with VgemDevice.open(env.backend) as dev, dev.create_dumb(64, 64, 32) as bo, \
            bo.export() as d, d.export_sync_file(read=True, write=False) as r, \
                d.export_sync_file(read=False, write=True) as w:
        f = bo.attach_fence(write=True)
        out = {"read_sf": not r.signaled, "write_sf": not w.signaled,
               "dmabuf_now_busy_w": d.busy(write=True)}
        f.signal()
    return out


@behaviour("igt.import_basic", needs=("vgem",),
           expect={"as_read": READ_BUSY, "as_read_signalled": IDLE, "as_write": ALL_BUSY,
                   "as_write_signalled": IDLE, "as_rw": ALL_BUSY, "as_rw_signalled": IDLE},
           source="IGT tests/dmabuf_sync_file.c import-basic (vgem fence for sw_sync)")
def _igt_import_basic(env: Env) -> Obs:
    """Imported as READ: writers wait; as WRITE or RW: everybody waits; signal clears it."""
    out: Obs = {}
    with VgemDevice.open(env.backend) as dev, dev.create_dumb(64, 64, 32) as bo, \
            bo.export() as d:
        for key, flags in (("as_read", DMA_BUF_SYNC_READ), ("as_write", DMA_BUF_SYNC_WRITE),
                           ("as_rw", DMA_BUF_SYNC_RW)):
            sf, f, src = vgem_sync_file(dev)
            with sf, src:
                d.import_sync_file_flags(sf, flags)
                out[key] = busy_state(d)
                f.signal()
                out[f"{key}_signalled"] = busy_state(d)
    return out


def _import_multiple(env: Env, write: bool) -> Obs:
    n = 32
    out: Obs = {}
    with VgemDevice.open(env.backend) as dev, dev.create_dumb(64, 64, 32) as bo, \
            bo.export() as d, contextlib.ExitStack() as stack:
        fences = []
        for _ in range(n):
            sf, f, src = vgem_sync_file(dev)
            stack.enter_context(sf)
            stack.enter_context(src)
            d.import_sync_file(sf, read=True, write=False)
            fences.append(f)
        wf = None
        if write:
            sf, wf, src = vgem_sync_file(dev)
            stack.enter_context(sf)
            stack.enter_context(src)
            d.import_sync_file(sf, write=True)
        out["initial"] = [d.busy(read=True), d.busy(write=True)]
        still_busy = []
        for f in fences:
            f.signal()
            still_busy.append(d.busy(write=True))
        out["write_busy_until_last"] = still_busy == [True] * (n - 1) + [write]
        out["after_reads"] = [d.busy(read=True), d.busy(write=True)]
        if wf is not None:
            wf.signal()
        out["after_all"] = [d.busy(read=True), d.busy(write=True)]
    return out


@behaviour("igt.import_multiple_read_only", needs=("vgem",),
           expect={"initial": [False, True], "write_busy_until_last": True,
                   "after_reads": [False, False], "after_all": [False, False]},
           source="IGT tests/dmabuf_sync_file.c import-multiple-read-only")
def _igt_multi_ro(env: Env) -> Obs:
    """32 imported read fences block writers, not readers, until the last signals."""
    return _import_multiple(env, False)


@behaviour("igt.import_multiple_read_write", needs=("vgem",),
           expect={"initial": [True, True], "write_busy_until_last": True,
                   "after_reads": [True, True], "after_all": [False, False]},
           source="IGT tests/dmabuf_sync_file.c import-multiple-read-write")
def _igt_multi_rw(env: Env) -> Obs:
    """With an extra imported write fence, readers are blocked too, until it signals."""
    return _import_multiple(env, True)


@behaviour("igt.sync_start_waits", needs=("vgem", "udmabuf"),
           expect={"vgem_write_fence_read_start": {"blocked": True, "finished": True,
                                                   "error": None},
                   "vgem_read_fence_read_start_blocked": False,
                   "vgem_read_fence_write_start": {"blocked": True, "finished": True,
                                                   "error": None},
                   "udmabuf_imported_fence": {"blocked": True, "finished": True,
                                              "error": None}},
           source="IGT prime_vgem sync; machine-and-real-kernel.md §3 (SYNC START blocks)")
def _igt_sync_waits(env: Env) -> Obs:
    """SYNC START waits for the fences its access conflicts with (implicit sync)."""
    out: Obs = {}
    with VgemDevice.open(env.backend) as dev, dev.create_dumb(64, 64, 32) as bo, \
            bo.export() as d:
        f = bo.attach_fence(write=True)
        out["vgem_write_fence_read_start"] = blocks_until(
            lambda: d.sync_start(read=True), f.signal)
        d.sync_end(read=True)
        g = bo.attach_fence(write=False)
        r = blocks_until(lambda: d.sync_start(read=True), lambda: None, must_block=0.2)
        out["vgem_read_fence_read_start_blocked"] = r["blocked"]
        d.sync_end(read=True)
        out["vgem_read_fence_write_start"] = blocks_until(
            lambda: d.sync_start(write=True, read=False), g.signal)
        d.sync_end(write=True, read=False)
        with udmabuf_of(env) as (u, _):
            sf, h, src = vgem_sync_file(dev)
            with sf, src:
                u.import_sync_file(sf, write=True)
                out["udmabuf_imported_fence"] = blocks_until(
                    lambda: u.sync_start(read=True), h.signal)
                u.sync_end(read=True)
    return out


# ============================================================================================
# vgem_basic / prime_self_import


@behaviour("vgem.create", needs=("vgem",),
           expect={"1024x1024x8": 1 << 20, "pitch": 1024, "odd_rounds": PAGE, "zero": "EINVAL"},
           source="IGT tests/vgem_basic.c create")
def _vgem_create(env: Env) -> Obs:
    """Dumb sizes round up to pages; a zero size is EINVAL."""
    with VgemDevice.open(env.backend) as dev:
        with dev.create_dumb(1024, 1024, 8) as a, dev.create_dumb(3, 3, 8) as b:
            out = {"1024x1024x8": a.size, "pitch": a.pitch, "odd_rounds": b.size}
        out["zero"] = err(lambda: dev.create_dumb(0, 0, 32))
    return out


@behaviour("vgem.dmabuf_mmap", needs=("vgem",),
           expect={"prime_to_vgem": b"PRIME".hex(), "vgem_to_prime": b"VGEM".hex()},
           source="IGT tests/vgem_basic.c dmabuf-mmap")
def _vgem_mmap(env: Env) -> Obs:
    """Writes through the PRIME dma-buf mapping show in vgem's own mapping, and back."""
    with VgemDevice.open(env.backend) as dev, dev.create_dumb(64, 64, 32) as bo, \
            bo.export() as d:
        with d.cpu_access(write=True) as v:
            v[:5] = b"PRIME"
        with dev.map_dumb(bo) as m:
            a = bytes(m[:5]).hex()
            m[100:104] = b"VGEM"
        with d.cpu_access(read=True) as v:
            b = bytes(v[100:104]).hex()
    return {"prime_to_vgem": a, "vgem_to_prime": b}


@behaviour("vgem.fence_errors", needs=("vgem",),
           expect={"write_while_read": "EBUSY", "read_while_read": "ok",
                   "read_while_write": "EBUSY", "bad_flag": "EINVAL", "bad_pad": "EINVAL",
                   "bad_handle": "ENOENT", "bad_fence": "ENOENT", "signal_twice": "ENOENT",
                   "signal_flags": "EINVAL"},
           source="IGT tests/vgem_basic.c busy-fence, bad-flag, bad-pad, bad-handle, bad-fence")
def _vgem_errors(env: Env) -> Obs:
    """vgem's fence ioctls: conflicts are EBUSY; bad flags/pad EINVAL; unknown ids ENOENT."""
    with VgemDevice.open(env.backend) as dev, dev.create_dumb(32, 32, 32) as bo:
        r1 = bo.attach_fence(write=False)
        out = {"write_while_read": err(lambda: bo.attach_fence(write=True))}
        r2: list[Any] = []
        out["read_while_read"] = err(lambda: r2.append(bo.attach_fence(write=False)))
        r1.signal()
        for f in r2:
            f.signal()
        w = bo.attach_fence(write=True)
        out["read_while_write"] = err(lambda: bo.attach_fence(write=False))
        out["signal_flags"] = err(lambda: dev.signal_fence(w.id, flags=1))
        w.signal()
        out["signal_twice"] = err(w.signal)
        out["bad_flag"] = err(lambda: dev.attach_fence(bo, flags=2))
        out["bad_pad"] = err(lambda: dev.attach_fence(bo, pad=1))
        out["bad_handle"] = err(lambda: dev.attach_fence(bo.handle + 1000))
        out["bad_fence"] = err(lambda: dev.signal_fence(12345))
    return out


@behaviour("vgem.prime_identity", needs=("vgem",),
           expect={"self_import_same_handle": True, "export_twice_same_inode": True,
                   "fd_dup_same_handle": True},
           source="IGT tests/intel/prime_self_import.c basic-with_one_bo, basic-with_fd_dup")
def _vgem_identity(env: Env) -> Obs:
    """Re-importing a PRIME export gives the same handle; exporting twice the same dma-buf."""
    with VgemDevice.open(env.backend) as dev, dev.create_dumb(32, 32, 32) as bo, \
            bo.export() as d1, bo.export() as d2, d1.dup() as d3:
        h1 = dev.import_dmabuf(d1)
        h3 = dev.import_dmabuf(d3)
        return {"self_import_same_handle": h1 == bo.handle,
                "export_twice_same_inode": d1.inode == d2.inode,
                "fd_dup_same_handle": h3 == bo.handle}


@behaviour("vgem.prime_errors", needs=("vgem",),
           expect={"import_memfd": "EINVAL", "import_closed_fd": "EBADF",
                   "export_unknown_handle": "ENOENT", "gem_close_unknown": "EINVAL",
                   "export_bad_flags": "EINVAL"},
           source="drm_prime.c drm_prime_fd_to_handle_ioctl(), drm_prime_handle_to_fd_ioctl();"
                  " drm_gem.c drm_gem_close_ioctl()")
def _vgem_prime_errors(env: Env) -> Obs:
    """PRIME import of a non-dma-buf is EINVAL (closed fd EBADF); unknown handles ENOENT/EINVAL."""
    from dmabuf.uapi.vgem import DRM_IOCTL_PRIME_HANDLE_TO_FD, DrmPrimeHandle

    with VgemDevice.open(env.backend) as dev, dev.create_dumb(16, 16) as bo, \
            Memfd.create("p", PAGE, backend=env.backend) as m:
        import ctypes

        buf = bytearray(ctypes.sizeof(DrmPrimeHandle))
        a = DrmPrimeHandle.from_buffer(buf)
        a.handle, a.flags = bo.handle, 0x40  # O_CREAT: not DRM_CLOEXEC | DRM_RDWR
        return {"import_memfd": err(lambda: dev.import_dmabuf(m.fileno())),
                "import_closed_fd": err(lambda: dev.import_dmabuf(9999)),
                "export_unknown_handle": err(lambda: dev.export(bo.handle + 100).close()),
                "gem_close_unknown": err(lambda: dev.gem_close(bo.handle + 100)),
                "export_bad_flags": err(lambda: env.backend.ioctl(
                    dev.fileno(), DRM_IOCTL_PRIME_HANDLE_TO_FD, buf))}


@behaviour("vgem.close_signals_fences", needs=("vgem",),
           expect={"busy_before": True, "busy_after_close": False},
           source="vgem_fence.c vgem_fence_close()")
def _vgem_close(env: Env) -> Obs:
    """Closing the vgem file signals every fence it still holds."""
    dev = VgemDevice.open(env.backend)
    with dev:
        bo = dev.create_dumb(32, 32, 32)
        d = bo.export()
        bo.attach_fence(write=True)
        before = d.busy(read=True)
    with d:
        after = d.busy(read=True)
    return {"busy_before": before, "busy_after_close": after}


# ============================================================================================
# dmabuf-heaps selftest


@behaviour("heap.list_and_open", needs=("heap",),
           expect={"has_system": True, "missing": "ENOENT", "missing_lists_heaps": True},
           source="dmabuf-heaps selftest main loop over /dev/dma_heap")
def _heap_list(env: Env) -> Obs:
    """list_heaps finds 'system'; opening an unknown heap is ENOENT naming the real ones."""
    code, msg = err_msg(lambda: DmaHeap.open("no-such-heap", env.backend))
    return {"has_system": "system" in list_heaps(env.backend), "missing": code,
            "missing_lists_heaps": "'system'" in msg}


@behaviour("heap.alloc_and_import", needs=("heap", "vgem", "debugfs"),
           expect={"size": 1 << 20, "filled": True, "import_handle_positive": True,
                   "sync_while_imported": ["ok", "ok"], "attached_while_imported": ["vgem"],
                   "attached_after_gem_close": []},
           source="dmabuf-heaps selftest test_alloc_and_import")
def _heap_import(env: Env) -> Obs:
    """Allocate 1 MiB, fill under SYNC, import into vgem; SYNC still works while imported.

    While vgem holds the import, bufinfo lists the attachment (device ``vgem``).
    """
    with heap_buf(env, 1 << 20) as h:
        size = h.size
        with h.cpu_access(write=True) as v:
            v[:] = b"\x5a" * len(v)
        with h.cpu_access(read=True) as v:
            filled = bytes(v[:16]) == b"\x5a" * 16 and v[-1] == 0x5A
        with VgemDevice.open(env.backend) as dev:
            handle = dev.import_dmabuf(h)
            s = [err(lambda: h.sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW)),
                 err(lambda: h.sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW))]
            o = bufinfo(env.backend)[0].find(h.inode)
            attached = list(o.attached_devices) if o else None
            dev.gem_close(handle)
            o = bufinfo(env.backend)[0].find(h.inode)
            after = list(o.attached_devices) if o else None
    return {"size": size, "filled": filled,
            "import_handle_positive": handle > 0, "sync_while_imported": s,
            "attached_while_imported": attached, "attached_after_gem_close": after}


@behaviour("heap.alloc_zeroed", needs=("heap",),
           expect={"4096": True, "1048576": True},
           source="dmabuf-heaps selftest test_alloc_zeroed")
def _heap_zeroed(env: Env) -> Obs:
    """32 buffers filled with 0xff and freed; 32 new ones read back as zeros."""
    import numpy as np

    out: Obs = {}
    with DmaHeap.open("system", env.backend) as heap:
        for size in (4096, 1 << 20):
            bufs = [heap.alloc(size) for _ in range(32)]
            for b in bufs:
                with b.cpu_access(write=True, dtype=np.uint8) as a:
                    a[:] = 0xFF
                b.close()
            clean = True
            bufs = [heap.alloc(size) for _ in range(32)]
            for b in bufs:
                with b.cpu_access(read=True, dtype=np.uint8) as a:
                    clean = clean and not a.any()
                    del a
                b.close()
            out[str(size)] = clean
    return out


@behaviour("heap.alloc_compat", needs=("heap",),
           expect={"older_16": "ok", "newer_32": "ok", "sizes": [PAGE, PAGE]},
           source="dmabuf-heaps selftest test_alloc_compat")
def _heap_compat(env: Env) -> Obs:
    """An older (16-byte) and a newer (32-byte, garbage tail) structure both allocate."""
    with DmaHeap.open("system", env.backend) as heap:
        fds: list[int] = []
        older = err(lambda: fds.append(dma_heap_ioctl_alloc(env.backend, heap.fileno(), PAGE,
                                                            struct_size=16)))
        newer = err(lambda: fds.append(dma_heap_ioctl_alloc(env.backend, heap.fileno(), PAGE,
                                                            struct_size=32)))
        sizes = []
        for fd in fds:
            with DmaBufFile(fd, env.backend) as b:
                sizes.append(b.size)
    return {"older_16": older, "newer_32": newer, "sizes": sizes}


@behaviour("heap.alloc_errors", needs=("heap",),
           expect={"invalid_heap_fd": "ENOTTY", "heap_flags": ["EINVAL", "EINVAL"],
                   "fd_flags": ["EINVAL", "EINVAL"], "fd_in_nonzero": "EINVAL",
                   "zero_len": ["EINVAL", "EINVAL"], "unknown_ioctl": "EINVAL",
                   "wronly_fd_flags": "ok"},
           source="dmabuf-heaps selftest test_alloc_errors; dma-heap.c dma_heap_ioctl()")
def _heap_errors(env: Env) -> Obs:
    """Bad heap fd, heap_flags, fd_flags, fd in, zero length: errors from kernel and binding."""
    be = env.backend
    with DmaHeap.open("system", be) as heap, Memfd.create("h", PAGE, backend=be) as m:
        def raw(**kw: Any) -> str:
            fds: list[int] = []
            r = err(lambda: fds.append(dma_heap_ioctl_alloc(be, heap.fileno(), kw.pop(
                "length", PAGE), **kw)))
            for fd in fds:
                be.close(fd)
            return r

        bad_fd_flags = ~(os.O_RDWR | os.O_CLOEXEC) & 0xFFFFFFFF
        out = {
            "invalid_heap_fd": err(lambda: dma_heap_ioctl_alloc(be, m.fileno(), PAGE)),
            "heap_flags": [raw(heap_flags=0x111111),
                           err(lambda: heap.alloc(PAGE, heap_flags=0x111111))],
            "fd_flags": [raw(fd_flags=bad_fd_flags),
                         err(lambda: heap.alloc(PAGE, fd_flags=bad_fd_flags))],
            "fd_in_nonzero": raw(fd_in=3),
            "zero_len": [raw(length=0), err(lambda: heap.alloc(0))],
            "unknown_ioctl": err(lambda: be.ioctl(heap.fileno(), IOWR("H", 1, 24),
                                                  bytearray(24))),
            "wronly_fd_flags": raw(fd_flags=os.O_WRONLY),
        }
    return out


# ============================================================================================
# udmabuf selftest


@behaviour("udmabuf.selftest_1_to_4", needs=("udmabuf",),
           expect={"test1_offset": ["EINVAL", "EINVAL"], "test2_size": ["EINVAL", "EINVAL"],
                   "test3_not_memfd": ["EBADFD", "EBADFD"], "test4_valid": ["ok", "ok"]},
           source="tools/testing/selftests/drivers/dma-buf/udmabuf.c tests 1-4")
def _udmabuf_1_4(env: Env) -> Obs:
    """Unaligned offset/size EINVAL; a non-memfd EBADFD; a sealed memfd works (kernel, binding)."""
    be = env.backend
    with Memfd.create("udmabuf-test", 64 * PAGE, backend=be) as m, Udmabuf.open(be) as dev:
        m.seal_for_udmabuf()
        r, w = os.pipe()

        def raw(fd: int, off: int, size: int) -> str:
            fds: list[int] = []
            res = err(lambda: fds.append(udmabuf_ioctl_create(be, dev.fileno(), fd, off, size)))
            for x in fds:
                be.close(x)
            return res

        def bind(fd: int, off: int, size: int) -> str:
            return err(lambda: dev.create(fd, off, size).close())

        try:
            return {
                "test1_offset": [raw(m.fileno(), PAGE + 1, PAGE),
                                 bind(m.fileno(), PAGE + 1, PAGE)],
                "test2_size": [raw(m.fileno(), 0, PAGE + 1), bind(m.fileno(), 0, PAGE + 1)],
                "test3_not_memfd": [raw(r, 0, PAGE), bind(r, 0, PAGE)],
                "test4_valid": [raw(m.fileno(), 0, 64 * PAGE), bind(m.fileno(), 0, 64 * PAGE)],
            }
        finally:
            os.close(r)
            os.close(w)


@behaviour("udmabuf.selftest_5_create_list", needs=("udmabuf",),
           expect={"size": 16 * PAGE, "cloexec": True, "migrated_contents": True},
           source="tools/testing/selftests/drivers/dma-buf/udmabuf.c test-5")
def _udmabuf_5(env: Env) -> Obs:
    """CREATE_LIST 4 x 4 pages of a 1024-page memfd; new memfd contents show in the mapping."""
    import numpy as np

    be = env.backend
    with Memfd.create("udmabuf-list", 1024 * PAGE, backend=be) as m, Udmabuf.open(be) as dev:
        m.seal_for_udmabuf()
        offsets = [0, 256 * PAGE, 512 * PAGE, 1020 * PAGE]
        with dev.create_list([(m, off, 4 * PAGE) for off in offsets], cloexec=True) as buf:
            cloexec = bool(be.fcntl(buf.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
            for i, off in enumerate(offsets):
                m.write(off, bytes([0x10 + i]) * (4 * PAGE))
            with buf.cpu_access(read=True, dtype=np.uint8) as a:
                ok = all(bool((a[i * 4 * PAGE:(i + 1) * 4 * PAGE] == 0x10 + i).all())
                         for i in range(4))
                del a
            return {"size": buf.size, "cloexec": cloexec, "migrated_contents": ok}


@behaviour("udmabuf.seals", needs=("udmabuf",),
           expect={"no_shrink": ["EINVAL", "EINVAL"], "write_seal": ["EINVAL", "EINVAL"],
                   "future_write_seal": ["EINVAL", "EINVAL"], "shrink_and_grow": ["ok", "ok"],
                   "seal_helper_refuses_write_sealed": "EINVAL",
                   "no_allow_sealing": ["EINVAL", "EINVAL"]},
           source="udmabuf.c check_memfd_seals(): SEALS_WANTED / SEALS_DENIED")
def _udmabuf_seals(env: Env) -> Obs:
    """F_SEAL_SHRINK required; F_SEAL_WRITE / FUTURE_WRITE refused; binding says so first."""
    be = env.backend

    def case(seals: int, allow: bool = True) -> list[str]:
        with Memfd.create("s", 4 * PAGE, allow_sealing=allow, backend=be) as m, \
                Udmabuf.open(be) as dev:
            if seals:
                m.add_seals(seals)
            fds: list[int] = []
            raw = err(lambda: fds.append(udmabuf_ioctl_create(be, dev.fileno(), m.fileno(), 0,
                                                              4 * PAGE)))
            for x in fds:
                be.close(x)
            return [raw, err(lambda: dev.create(m).close())]

    with Memfd.create("w", PAGE, backend=be) as m:
        m.add_seals(F_SEAL_WRITE)
        helper = err(m.seal_for_udmabuf)
    return {"no_shrink": case(0), "write_seal": case(F_SEAL_SHRINK | F_SEAL_WRITE),
            "future_write_seal": case(F_SEAL_SHRINK | F_SEAL_FUTURE_WRITE),
            "shrink_and_grow": case(F_SEAL_SHRINK | F_SEAL_GROW),
            "seal_helper_refuses_write_sealed": helper,
            "no_allow_sealing": case(0, allow=False)}


@behaviour("udmabuf.limits", needs=("udmabuf",),
           expect={"size_zero": ["EINVAL", "EINVAL"], "past_memfd_end": ["EINVAL", "EINVAL"],
                   "over_size_limit": "EINVAL", "list_over_limit": "EINVAL",
                   "list_empty": ["EINVAL", "EINVAL"], "unknown_ioctl": "ENOTTY",
                   "cloexec_off": False},
           source="udmabuf.c udmabuf_create(): size_limit_mb, list_limit, !pgcnt")
def _udmabuf_limits(env: Env) -> Obs:
    """Zero size, a range past the memfd, > size_limit_mb (64 MiB), > list_limit: EINVAL."""
    be = env.backend
    with Memfd.create("lim", 65 * (1 << 20), backend=be) as m, Udmabuf.open(be) as dev:
        m.seal_for_udmabuf()

        def raw(off: int, size: int) -> str:
            fds: list[int] = []
            r = err(lambda: fds.append(udmabuf_ioctl_create(be, dev.fileno(), m.fileno(), off,
                                                            size)))
            for x in fds:
                be.close(x)
            return r

        def rawlist(items: list[tuple[int, int, int]], count: int | None = None) -> str:
            fds: list[int] = []
            r = err(lambda: fds.append(udmabuf_ioctl_create_list(be, dev.fileno(), items,
                                                                 count=count)))
            for x in fds:
                be.close(x)
            return r

        end = 65 * (1 << 20)
        out = {"size_zero": [raw(0, 0), err(lambda: dev.create(m, 0, 0).close())],
               "past_memfd_end": [raw(end - PAGE, 2 * PAGE),
                                  err(lambda: dev.create(m, end - PAGE, 2 * PAGE).close())],
               "over_size_limit": raw(0, 65 * (1 << 20)),
               "list_over_limit": rawlist([(m.fileno(), 0, PAGE)], count=1025),
               "list_empty": [rawlist([]), err(lambda: dev.create_list([]).close())],
               "unknown_ioctl": err(lambda: be.ioctl(dev.fileno(), IOWR("u", 0x44, 8),
                                                     bytearray(8)))}
        with dev.create(m, 0, PAGE, cloexec=False) as b:
            out["cloexec_off"] = bool(be.fcntl(b.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
    return out


# ============================================================================================
# fd passing and lifetime


@behaviour("scm.pass_to_child", needs=("udmabuf",),
           expect={"child_exit": 0, "child_write_visible": b"CHILD!".hex(),
                   "count_while_child_holds": 3, "count_after": 1},
           source="machine-and-real-kernel.md §3 (SCM_RIGHTS); net/core/scm.c")
def _scm_child(env: Env) -> Obs:
    """A dma-buf sent with SCM_RIGHTS to a child is the same buffer: its writes are visible.

    While the child holds it the count is 3: the parent's fd, the child's inherited copy of
    that fd (fork duplicates the fd table) and the fd received over the socket.
    """
    with udmabuf_of(env, 2) as (u, _):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with a, b:
            def child() -> int:
                # The child never touches its copy of ``a`` (a model child is a thread sharing
                # the parent's socket objects, so it must not close it either).
                with recv_dmabuf(b, backend=env.backend) as got:
                    with got.cpu_access(write=True) as v:
                        v[:6] = b"CHILD!"
                    b.sendall(b"%d" % got.fdinfo().count)
                    b.recv(1)  # hold the fd until the parent has looked
                return 0

            counts: list[int] = []

            def parent_side() -> None:
                send_dmabuf(a, u)
                counts.append(int(a.recv(8)))
                a.sendall(b"x")

            t = threading.Thread(target=parent_side, daemon=True)
            t.start()
            code = env.run_child(child)
            t.join(10)
        with u.cpu_access(read=True) as v:
            seen = bytes(v[:6]).hex()
        return {"child_exit": code, "child_write_visible": seen,
                "count_while_child_holds": counts[0] if counts else None,
                "count_after": u.fdinfo().count}


@behaviour("scm.recv_checks", expect={"not_dmabuf": "ENOTTY", "peer_closed": "EPIPE"},
           source="dmabuf.uapi.scm.recv_dmabuf")
def _scm_checks(env: Env) -> Obs:
    """Receiving a non-dma-buf fd as a dma-buf is ENOTTY; a closed peer is EPIPE."""
    a, b = socket.socketpair()
    with a, b, Memfd.create("scm", PAGE, backend=env.backend) as m:
        from dmabuf.uapi.scm import send_fds

        send_fds(a, [m], backend=env.backend)
        nd = err(lambda: recv_dmabuf(b, backend=env.backend))
        a.close()
        pc = err(lambda: recv_dmabuf(b, backend=env.backend))
    return {"not_dmabuf": nd, "peer_closed": pc}


@behaviour("lifetime.close_and_finalize", needs=("heap", "debugfs"),
           expect={"close_twice": "ok", "fileno_after_close": "EBADF",
                   "finalizer_closed_fd": "EBADF", "freed_in_bufinfo": True},
           source="dmabuf.uapi.fd.FdObject; dma-buf.c dma_buf_file_release()")
def _lifetime(env: Env) -> Obs:
    """close() is idempotent; a dropped object's fd is closed and the dma-buf freed."""
    be = env.backend
    with DmaHeap.open("system", be) as heap:
        b = heap.alloc(PAGE)
        b.close()
        twice = err(b.close)
        after = err(b.fileno)
        c = heap.alloc(PAGE)
        fd, ino = c.fileno(), c.inode
        del c
        gc.collect()
        fin = err(lambda: be.fstat(fd))
        freed = bufinfo(be)[0].find(ino) is None
    return {"close_twice": twice, "fileno_after_close": after, "finalizer_closed_fd": fin,
            "freed_in_bufinfo": freed}


@behaviour("errors.missing_devices",
           expect={"heap_enoent": "ENOENT", "heap_names_config": True,
                   "udmabuf_enoent": "ENOENT", "udmabuf_names_config": True},
           source="dmabuf.uapi error messages (what to check)")
def _missing(env: Env) -> Obs:
    """Opening devices under a missing root says which kernel option or module to check."""
    c1, m1 = err_msg(lambda: DmaHeap.open("system", env.backend, root="/nonexistent/dma_heap"))
    c2, m2 = err_msg(lambda: Udmabuf.open(env.backend, path="/nonexistent/udmabuf"))
    return {"heap_enoent": c1, "heap_names_config": "CONFIG_DMABUF_HEAPS" in m1,
            "udmabuf_enoent": c2, "udmabuf_names_config": "CONFIG_UDMABUF" in m2}


# ============================================================================================
# more ioctl error paths (each ioctl's argument checks, on both backends)


@behaviour("errors.sync_file_ioctls", needs=("vgem",),
           expect={"merge_flags": "EINVAL", "merge_pad": "EINVAL", "merge_closed_fd2": "ENOENT",
                   "info_flags": "EINVAL", "info_pad": "EINVAL", "info_too_few": "EINVAL",
                   "info_two_pass": [2, 0, 2], "deadline_pad": "EINVAL",
                   "unknown_ioctl": "ENOTTY"},
           source="sync_file.c sync_file_ioctl_merge(), sync_file_ioctl_fence_info(), "
                  "sync_file_ioctl_set_deadline(), sync_file_ioctl()")
def _sf_ioctl_errors(env: Env) -> Obs:
    """Raw SYNC_IOC_*: flags/pad must be 0, fd2 must be a sync_file, FILE_INFO needs room."""
    import ctypes

    from dmabuf.uapi.sync_file import (
        SYNC_IOC_MERGE,
        SYNC_IOC_SET_DEADLINE,
        SyncFenceInfoStruct,
        SyncMergeData,
        SyncSetDeadline,
    )

    be = env.backend
    out: Obs = {}
    with VgemDevice.open(be) as dev:
        a, fa, boa = vgem_sync_file(dev)
        b, fb, bob = vgem_sync_file(dev)
        with a, b, boa, bob, a.merge(b) as ab:
            def merge(**fields: int) -> None:
                buf = bytearray(ctypes.sizeof(SyncMergeData))
                d = SyncMergeData.from_buffer(buf)
                d.name, d.fd2 = b"m", fields.get("fd2", b.fileno())
                d.flags, d.pad = fields.get("flags", 0), fields.get("pad", 0)
                be.ioctl(a.fileno(), SYNC_IOC_MERGE, buf)
                be.close(SyncMergeData.from_buffer(buf).fence)

            out["merge_flags"] = err(lambda: merge(flags=1))
            out["merge_pad"] = err(lambda: merge(pad=1))
            out["merge_closed_fd2"] = err(lambda: merge(fd2=9999))
            arr = (SyncFenceInfoStruct * 2)()

            def info(**fields: int) -> SyncFileInfoStruct:
                buf = bytearray(ctypes.sizeof(SyncFileInfoStruct))
                s = SyncFileInfoStruct.from_buffer(buf)
                s.sync_fence_info = ctypes.addressof(arr)
                for k, v in fields.items():
                    setattr(s, k, v)
                be.ioctl(ab.fileno(), SYNC_IOC_FILE_INFO, buf)
                return SyncFileInfoStruct.from_buffer_copy(buf)

            out["info_flags"] = err(lambda: info(flags=1))
            out["info_pad"] = err(lambda: info(pad=1))
            out["info_too_few"] = err(lambda: info(num_fences=1))
            first = info(num_fences=0)
            second = info(num_fences=2)
            out["info_two_pass"] = [first.num_fences, second.status, second.num_fences]
            dl = bytearray(ctypes.sizeof(SyncSetDeadline))
            SyncSetDeadline.from_buffer(dl).pad = 1
            out["deadline_pad"] = err(lambda: be.ioctl(ab.fileno(), SYNC_IOC_SET_DEADLINE, dl))
            out["unknown_ioctl"] = err(lambda: be.ioctl(ab.fileno(), IOWR(">", 9, 8),
                                                        bytearray(8)))
            fa.signal()
            fb.signal()
    return out


@behaviour("errors.dmabuf_ioctls", needs=("udmabuf",),
           expect={"unknown_b_ioctl": "ENOTTY", "name_32_no_nul": "EINVAL",
                   "export_then_import_rw": "ok", "import_closed_fd": "EINVAL",
                   "mmap_sync_file_read": "ENODEV", "mmap_sync_file_shared_write": "EACCES"},
           source="dma-buf.c dma_buf_ioctl() default, dma_buf_set_name(); mm/mmap.c do_mmap()")
def _dmabuf_ioctl_errors(env: Env) -> Obs:
    """Unknown 'b' ioctl ENOTTY; a 32-byte name without NUL EINVAL; sync_files cannot be mapped.

    A sync_file is read-only: a shared writable mapping is refused before its (missing) mmap
    operation is asked (EACCES); a read-only one reaches it (ENODEV).
    """
    from dmabuf.uapi.dma_buf import DMA_BUF_SET_NAME_B
    from dmabuf.uapi.ioctl import IOW

    be = env.backend
    with udmabuf_of(env) as (u, _):
        fd = u.fileno()
        out: Obs = {"unknown_b_ioctl": err(lambda: be.ioctl(fd, IOW("b", 9, 8), bytearray(8))),
                    "name_32_no_nul": err(lambda: be.ioctl(fd, DMA_BUF_SET_NAME_B,
                                                           bytearray(b"n" * 32)))}
        with u.export_sync_file(read=True, write=True) as sf:
            out["export_then_import_rw"] = err(lambda: u.import_sync_file(sf, read=True,
                                                                          write=True))
            out["mmap_sync_file_read"] = err(lambda: be.mmap(
                sf.fileno(), PAGE, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED).close())
            out["mmap_sync_file_shared_write"] = err(lambda: be.mmap(
                sf.fileno(), PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                flags=mmap.MAP_SHARED).close())
            sfd = be.dup(sf.fileno())
            be.close(sfd)
            out["import_closed_fd"] = err(lambda: u.import_sync_file(sfd))
    return out


@behaviour("errors.vgem_ioctls", needs=("vgem", "heap"),
           expect={"dumb_bpp_zero": "EINVAL", "dumb_overflow": "EINVAL",
                   "map_dumb_unknown": "ENOENT", "map_dumb_imported": "EINVAL",
                   "mmap_bad_offset": "EINVAL", "mmap_too_long": "EINVAL",
                   "mmap_private": "EINVAL", "prime_mmap_private": "EINVAL",
                   "rdonly_export_write_map": "EACCES", "unknown_driver_ioctl": "EINVAL",
                   "driver_ioctl_without_function": "EINVAL", "map_dumb_offsets_distinct": True},
           source="drm_dumb_buffers.c drm_mode_create_dumb(); drm_gem.c drm_gem_dumb_map_offset(),"
                  " drm_gem_mmap(); drm_gem_shmem_helper.c drm_gem_shmem_mmap(); drm_ioctl.c")
def _vgem_more_errors(env: Env) -> Obs:
    """Dumb-buffer, MAP_DUMB, DRM mmap and DRM ioctl-table error paths of vgem."""
    import ctypes

    from dmabuf.uapi.vgem import DRM_IOCTL_MODE_MAP_DUMB, DrmModeMapDumb

    be = env.backend
    rw = mmap.PROT_READ | mmap.PROT_WRITE

    def map_dumb(dev: VgemDevice, handle: int) -> int:
        buf = bytearray(ctypes.sizeof(DrmModeMapDumb))
        DrmModeMapDumb.from_buffer(buf).handle = handle
        be.ioctl(dev.fileno(), DRM_IOCTL_MODE_MAP_DUMB, buf)
        return int(DrmModeMapDumb.from_buffer(buf).offset)

    def mm(fd: int, length: int, offset: int, flags: int = mmap.MAP_SHARED) -> None:
        be.mmap(fd, length, prot=rw, flags=flags, offset=offset).close()

    with VgemDevice.open(be) as dev, dev.create_dumb(32, 32, 32) as bo, \
            dev.create_dumb(16, 16, 32) as bo2, heap_buf(env, PAGE) as h:
        out: Obs = {"dumb_bpp_zero": err(lambda: dev.create_dumb(8, 8, 0)),
                    "dumb_overflow": err(lambda: dev.create_dumb(1 << 30, 1 << 30, 32)),
                    "map_dumb_unknown": err(lambda: map_dumb(dev, bo.handle + 100))}
        imported = dev.import_dmabuf(h)
        out["map_dumb_imported"] = err(lambda: map_dumb(dev, imported))
        dev.gem_close(imported)
        off = map_dumb(dev, bo.handle)
        off2 = map_dumb(dev, bo2.handle)
        out["map_dumb_offsets_distinct"] = off != off2 and off % PAGE == 0
        out["mmap_bad_offset"] = err(lambda: mm(dev.fileno(), PAGE, off + 64 * PAGE))
        out["mmap_too_long"] = err(lambda: mm(dev.fileno(), 2 * PAGE, off))
        out["mmap_private"] = err(lambda: mm(dev.fileno(), PAGE, off, mmap.MAP_PRIVATE))
        with bo.export() as d:
            out["prime_mmap_private"] = err(lambda: mm(d.fileno(), PAGE, 0, mmap.MAP_PRIVATE))
        with bo2.export(rdwr=False) as ro:
            out["rdonly_export_write_map"] = err(lambda: mm(ro.fileno(), PAGE, 0))
        out["unknown_driver_ioctl"] = err(lambda: be.ioctl(dev.fileno(), IOWR("d", 0x43, 8),
                                                           bytearray(8)))
        out["driver_ioctl_without_function"] = err(lambda: be.ioctl(
            dev.fileno(), IOWR("d", 0x40, 8), bytearray(8)))
    return out


@behaviour("errors.udmabuf_list_partial", needs=("udmabuf",),
           expect={"bad_second_item": "EBADFD", "write_seal_after": "ok",
                   "bad_second_offset": "EINVAL"},
           source="udmabuf.c udmabuf_create(): err path unpins every folio pinned so far")
def _udmabuf_partial(env: Env) -> Obs:
    """A list whose second item fails pins nothing: F_SEAL_WRITE (EBUSY while pinned) works."""
    be = env.backend
    with Memfd.create("partial", 4 * PAGE, backend=be) as m, Udmabuf.open(be) as dev:
        m.seal_for_udmabuf()

        def raw(items: list[tuple[int, int, int]]) -> str:
            fds: list[int] = []
            r = err(lambda: fds.append(udmabuf_ioctl_create_list(be, dev.fileno(), items)))
            for x in fds:
                be.close(x)
            return r

        out = {"bad_second_item": raw([(m.fileno(), 0, PAGE), (dev.fileno(), 0, PAGE)]),
               "bad_second_offset": raw([(m.fileno(), 0, PAGE), (m.fileno(), 1, PAGE)]),
               "write_seal_after": err(lambda: m.add_seals(F_SEAL_WRITE))}
    return out


@behaviour("errors.scm_truncation", needs=("udmabuf",),
           expect={"recv_one_of_two": "EMSGSIZE", "count_after": 1, "two_of_two": [2, 2]},
           source="net/core/scm.c scm_detach_fds() (MSG_CTRUNC); dmabuf.uapi.scm.recv_fds")
def _scm_truncation(env: Env) -> Obs:
    """Two fds sent, room for one: the binding reports EMSGSIZE; no reference is left behind."""
    from dmabuf.uapi.scm import recv_fds, send_fds

    be = env.backend
    with udmabuf_of(env) as (u, _):
        a, b = socket.socketpair()
        with a, b:
            send_fds(a, [u, u], backend=be)
            trunc = err(lambda: recv_fds(b, 1, backend=be))
            count = u.fdinfo().count
            send_fds(a, [u, u], backend=be)
            _, fds = recv_fds(b, 2, backend=be)
            both = [len(fds), u.fdinfo().count - 1]
            for fd in fds:
                be.close(fd)
    return {"recv_one_of_two": trunc, "count_after": count, "two_of_two": both}


@behaviour("llseek.keeps_pos", needs=("udmabuf",),
           expect={"size": 16 * PAGE, "pos_after_seek_end": 0, "pos_after_seek_set": 0},
           source="dma-buf.c dma_buf_llseek() returns base + offset without touching f_pos")
def _llseek_pos(env: Env) -> Obs:
    """lseek on a dma-buf reports the size but leaves the file position (fdinfo ``pos``) at 0."""
    with udmabuf_of(env) as (u, _):
        size = u.llseek(0, os.SEEK_END)
        after_end = u.fdinfo().pos
        u.llseek(0, os.SEEK_SET)
        return {"size": size, "pos_after_seek_end": after_end,
                "pos_after_seek_set": u.fdinfo().pos}
