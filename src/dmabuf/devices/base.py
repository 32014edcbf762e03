"""The device-driver base: a bound PCI function, its DMA engine, fence timelines and job queues.

What every driver of layer 5 shares, modelled on the pieces the kernel's drivers build on:

* **Binding** — a :class:`Device` is the driver instance of one PCI endpoint of a
  :class:`~dmabuf.devices.platform.Platform` (``pci_set_drvdata``); its constructor is the probe
  (``pci_driver.probe``) and :meth:`Device.remove` the remove. :meth:`Device.match` is the
  ``pci_device_id`` table (a base class code by default: any function).
* **DMA** — :attr:`Device.dma` is the function's :class:`~dmabuf.dma.device.DmaDevice` (the
  ``struct device`` the DMA API is called with; it implements the buffer layer's
  :class:`~dmabuf.buf.device.DmaDev` protocol, so it is what an importer passes to
  ``dma_buf_attach``). The probe raises its mask to ``DMA_BIT_MASK(dma_bits)`` (64 by default)
  with ``dma_set_mask_and_coherent``, as drivers do. :attr:`Device.engine` is a
  :class:`~dmabuf.buf.dma_engine.DmaEngine` on that view: every transfer resolves the DMA
  addresses it is given through the device's IOMMU domain or bus decode
  (``DmaDevice.translate``) and moves the real bytes; an unmapped address, or a page no longer
  owned by the expected owner (freed, poisoned, migrated), raises
  :class:`~dmabuf.errors.IommuFault`, recorded in the engine's and the machine's fault logs.
* **Fences and job queues** — each engine ring of the device (``rings``, e.g. ``("gfx",
  "sdma")``) is a :class:`WorkQueue` with its own fence context (``dma_fence_context_alloc(1)``)
  and :class:`DeviceFenceOps` naming the driver and the timeline (``"<device>.<ring>"``).
  :meth:`WorkQueue.submit` returns the job's fence at once; a worker thread started with
  ``machine.sched.spawn`` runs jobs in submission order — waits for the job's dependencies, lets
  ``duration`` seconds of (virtual) hardware time pass, runs the body inside
  ``dma_fence_begin_signalling``/``end_signalling``, sets an error on the fence if the body
  raised (``dma_fence_set_error``), and signals it. This is the role of the DRM GPU scheduler
  (drivers/gpu/drm/scheduler): ``drm_sched_job_add_dependency``, ``run_job`` in the fence
  signalling critical path, the finished fence.

Scheduling modes. The worker is created on demand by the first submit and exits after
``idle_timeout`` seconds without work, so a controlled run (``dmabuf.sched.explore``) ends when
the scenario's threads do — no idle thread is left blocked forever — and free-mode programs do not
keep threads around. Job bodies run in the worker thread; every wait inside them goes through the
scheduler. A job body must not wait for fences nor take a reservation lock (it runs in a
signalling section: the lock tracker reports both, as lockdep does for ``run_job``).

Errors in job bodies: a :class:`~dmabuf.errors.DmaBufError` (including ``IommuFault``) becomes
the fence error (``-errno``); any other exception (a bug, a ``ContractViolation``) becomes
``-EIO`` on the fence, is kept in :attr:`WorkQueue.exceptions` and recorded as a machine WARN —
the worker survives, so later fences still signal. A dependency that signalled with an error
propagates that error to the job, whose body is then skipped (model choice, as drm_sched's
``drm_sched_job_dependency`` error propagation does through ``dma_fence_set_error`` on the
finished fence).

Locking: a queue's lock (from the scheduler) protects its job list and counters and is never
held while a job runs or a fence is waited for.

Kernel: include/linux/pci.h (struct pci_driver, pci_set_drvdata), kernel/dma/mapping.c
(dma_set_mask_and_coherent), drivers/dma-buf/dma-fence.c (dma_fence_context_alloc,
dma_fence_begin_signalling), drivers/gpu/drm/scheduler/sched_main.c (drm_sched_run_job_work,
drm_sched_job_done), drivers/gpu/drm/scheduler/sched_entity.c (dependencies).
"""

from __future__ import annotations

import collections
import errno
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dmabuf.buf.dma_engine import DmaEngine, DmaFault, DmaFaultLog, Mapping, Owner
from dmabuf.dma.defs import dma_bit_mask
from dmabuf.dma.device import DmaDevice
from dmabuf.dma.mapping import dma_set_mask_and_coherent
from dmabuf.errors import DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.pci.topology import PciDev
from dmabuf.sched import Task
from dmabuf.sync.dma_fence import (
    DmaFence,
    DmaFenceOps,
    dma_fence_begin_signalling,
    dma_fence_end_signalling,
)

if TYPE_CHECKING:
    from dmabuf.devices.platform import Platform

__all__ = ["Device", "DeviceFenceOps", "Job", "WorkQueue"]

#: Seconds an idle worker waits for more work before it exits (a new submit starts another).
DEFAULT_IDLE_TIMEOUT = 0.05
#: Seconds :meth:`Device.remove` waits for a queue to drain before giving up with ETIMEDOUT.
REMOVE_TIMEOUT = 30.0


class DeviceFenceOps(DmaFenceOps):
    """The fence ops of one device ring — a driver's ``struct dma_fence_ops``.

    ``get_driver_name`` returns the driver's name (``"amdgpu"``), ``get_timeline_name`` the
    ring's timeline (``"gpu0.sdma"``). No optional members: the fences are signalled by the
    worker, never polled; they detach their ops on signal (v7.1).

    Args:
        driver_name: ``dev_driver_string()``.
        timeline_name: the ring's name.

    Kernel: include/linux/dma-fence.h (struct dma_fence_ops); e.g.
        drivers/gpu/drm/amd/amdgpu/amdgpu_fence.c (amdgpu_fence_ops).
    """

    def __init__(self, driver_name: str, timeline_name: str) -> None:
        super().__init__(driver_name, timeline_name)
        self.driver = driver_name
        self.timeline = timeline_name

    def get_driver_name(self, fence: DmaFence) -> str:
        """The driver's name — ``dma_fence_ops.get_driver_name``."""
        return self.driver

    def get_timeline_name(self, fence: DmaFence) -> str:
        """The ring's timeline name — ``dma_fence_ops.get_timeline_name``."""
        return self.timeline


@dataclass
class Job:
    """One queued job: body, finished fence, dependencies, simulated duration."""

    fn: Callable[[], Any]
    fence: DmaFence
    deps: tuple[DmaFence, ...]
    name: str
    duration: float = 0.0
    propagate_errors: bool = True
    result: Any = field(default=None, repr=False)


class WorkQueue:
    """One engine ring of a device: an ordered job queue with a fence timeline.

    Args:
        device: the owning device.
        name: the ring name (``"gfx"``, ``"sdma"``…).
        idle_timeout: seconds the worker waits for more work before exiting.

    Attributes:
        context: the ring's fence context (``dma_fence_context_alloc(1)``).
        ops: its :class:`DeviceFenceOps`.
        timeline_name: ``"<device name>.<ring>"``.
        completed / failed: jobs finished without / with an error.
        exceptions: non-``DmaBufError`` exceptions job bodies raised (bugs), in order.

    Kernel: drivers/gpu/drm/scheduler/sched_main.c (struct drm_gpu_scheduler: one per ring).
    """

    def __init__(self, device: Device, name: str, *,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError("ring name must be a non-empty str")
        if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)) \
                or not idle_timeout > 0:
            raise DmaBufError(errno.EINVAL, f"idle_timeout {idle_timeout!r} must be > 0 seconds")
        m = device.machine
        self.device = device
        self.machine = m
        self.name = name
        self.timeline_name = f"{device.name}.{name}"
        self.context = m.fence_context_alloc(1)
        self.ops = DeviceFenceOps(device.driver_name, self.timeline_name)
        self.idle_timeout = float(idle_timeout)
        self._lock = m.sched.lock(f"{self.timeline_name}.lock")
        self._cond = m.sched.condition(self._lock, f"{self.timeline_name}.cond")
        self._jobs: collections.deque[Job] = collections.deque()
        self._busy: Job | None = None
        self._running = False
        self._closed = False
        self._seqno = 0
        self._tasks: list[Task] = []
        self.completed = 0
        self.failed = 0
        self.exceptions: list[BaseException] = []
        self._last: DmaFence | None = None

    def __repr__(self) -> str:
        return (f"<WorkQueue {self.timeline_name} ctx={self.context} seqno={self._seqno} "
                f"pending={len(self._jobs) + (self._busy is not None)}>")

    # ------------------------------------------------------------------ submission
    def submit(self, fn: Callable[[], Any], *, deps: Iterable[DmaFence] = (), name: str = "job",
               duration: float = 0.0, propagate_errors: bool = True) -> DmaFence:
        """Queue a job; return its finished fence — ``drm_sched_job_arm`` + ``push_job``.

        Args:
            fn: the job body, called with no arguments in the worker, inside a fence-signalling
                section. It must not wait for fences or take reservation locks.
            deps: fences the job waits for before running (``drm_sched_job_add_dependency``).
            name: shown in traces and errors.
            duration: seconds of hardware time the job takes (``sched.sleep`` before the body;
                virtual time under the controlled scheduler). >= 0.
            propagate_errors: a dependency's error fails the job without running the body
                (default). False runs the body anyway — what memory-management jobs (TTM moves)
                need: the bytes must move whatever happened to earlier work.
        Context: never blocks (may start the worker thread); takes the queue lock.
        Returns: the fence (seqno = position on this ring's timeline); the caller owns one
            reference.
        Raises: TypeError: ``fn`` not callable, a dependency not a DmaFence;
            DmaBufError(EINVAL): negative duration; DmaBufError(ENODEV): the queue is closed
            (device removed).
        Kernel: drivers/gpu/drm/scheduler/sched_main.c, drm_sched_job_arm(),
            drm_sched_entity_push_job().
        """
        if not callable(fn):
            raise TypeError(f"job body must be callable, not {type(fn).__name__}")
        dl = tuple(deps)
        for d in dl:
            if not isinstance(d, DmaFence):
                raise TypeError(f"dependencies must be DmaFences, not {type(d).__name__}")
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) \
                or not duration >= 0:
            raise DmaBufError(errno.EINVAL, f"job duration {duration!r} must be >= 0 seconds")
        spawn = False
        with self._lock:
            if self._closed:
                raise DmaBufError(errno.ENODEV, f"{self.timeline_name}: the device was removed; "
                                  "no more jobs")
            self._seqno += 1
            fence = DmaFence(self.ops, self.context, self._seqno, machine=self.machine)
            job = Job(fn, fence, tuple(d.get() for d in dl), name, float(duration),
                      bool(propagate_errors))
            ret = fence.get()          # the caller's reference, before the worker can drop its own
            self._jobs.append(job)
            self._last = fence
            if not self._running:
                self._running = True
                spawn = True
            else:
                self._cond.notify()
        self.machine.trace.emit("device_job_submit", timeline=self.timeline_name,
                                seqno=fence.seqno, job=name)
        if spawn:
            task = self.machine.sched.spawn(self._worker, name=f"{self.timeline_name}-worker")
            with self._lock:
                self._tasks = [t for t in self._tasks if not t.done]
                self._tasks.append(task)
        return ret

    # ------------------------------------------------------------------ worker
    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    if self._closed:
                        self._running = False
                        self._cond.notify_all()
                        return
                    self._cond.wait(self.idle_timeout, what=f"{self.timeline_name} idle")
                    if not self._jobs and not self._closed:
                        self._running = False
                        self._cond.notify_all()
                        return
                job = self._jobs.popleft()
                self._busy = job
            ok = self._run(job)
            with self._lock:
                self._busy = None
                if ok:
                    self.completed += 1
                else:
                    self.failed += 1
                self._cond.notify_all()

    def _run(self, job: Job) -> bool:
        m = self.machine
        fence = job.fence
        err = 0
        for d in job.deps:
            d.wait(False)
            if d.error and not err and job.propagate_errors:
                err = d.error
            d.put()
        if job.duration > 0:
            m.sched.sleep(job.duration)
        cookie = dma_fence_begin_signalling(m)
        try:
            if err:
                fence.set_error(err)
            else:
                try:
                    job.result = job.fn()
                except DmaBufError as e:
                    err = -(e.errno or errno.EIO)
                    fence.set_error(err)
                except Exception as e:  # a bug in the body: report, keep the ring alive
                    err = -errno.EIO
                    fence.set_error(err)
                    self.exceptions.append(e)
                    m.warn("device_job", f"{self.timeline_name} job {job.name!r} raised "
                           f"{type(e).__name__}: {e}")
            fence.signal()
        finally:
            dma_fence_end_signalling(cookie, m)
        m.trace.emit("device_job_done", timeline=self.timeline_name, seqno=fence.seqno,
                     job=job.name, error=err)
        fence.put()
        return err == 0

    # ------------------------------------------------------------------ waiting / teardown
    @property
    def seqno(self) -> int:
        """Seqno of the last submitted job (0 before the first)."""
        return self._seqno

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return len(self._jobs) + (self._busy is not None)

    @property
    def last_fence(self) -> DmaFence | None:
        """Fence of the last submitted job (no reference taken), or None."""
        return self._last

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job finished — ``drm_sched_wait_idle`` style.

        Args: timeout: seconds, None for no limit.
        Context: may block; do not call from a job body.
        Returns: True when idle, False on timeout.

        Model-only: waits until the model's job queue drains (a drm_sched_wait_idle-style helper).
        """
        m = self.machine
        end = None if timeout is None else m.sched.now() + timeout
        with self._lock:
            while self._jobs or self._busy is not None:
                left = None if end is None else end - m.sched.now()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left, what=f"{self.timeline_name} wait_idle")
            return True

    def close(self, timeout: float | None = REMOVE_TIMEOUT) -> None:
        """Refuse new jobs, let the queued ones finish, and join the worker.

        Raises: DmaBufError(ETIMEDOUT): jobs still running after ``timeout`` seconds.

        Kernel: drivers/gpu/drm/scheduler/sched_main.c, drm_sched_fini() (after draining the queue).
        """
        with self._lock:
            self._closed = True
            self._cond.notify_all()
        if not self.wait_idle(timeout):
            raise DmaBufError(errno.ETIMEDOUT, f"{self.timeline_name}: {self.pending} job(s) "
                              f"still running after {timeout} s")
        with self._lock:
            tasks = list(self._tasks)
            self._tasks.clear()
        for t in tasks:
            if not t.join(timeout):
                raise DmaBufError(errno.ETIMEDOUT, f"{self.timeline_name}: worker did not exit")

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def describe(self) -> dict[str, Any]:
        """Snapshot: context, seqno, pending, completed, failed, bug count.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {"timeline": self.timeline_name, "context": self.context, "seqno": self._seqno,
                "pending": self.pending, "completed": self.completed, "failed": self.failed,
                "exceptions": len(self.exceptions)}


class Device:
    """A driver bound to one PCI endpoint of a platform (see the module docstring).

    Construct with :meth:`Platform.bind <dmabuf.devices.platform.Platform.bind>`, which checks
    the function and calls ``driver_cls(platform, pdev, **params)`` (the probe).

    Class attributes a driver may override:
        driver_name: ``dev_driver_string()``.
        dma_bits: width of the DMA mask the probe sets (``DMA_BIT_MASK(dma_bits)``).
        rings: names of the device's engine rings (one :class:`WorkQueue` each).
        class_codes: base-class codes (``class_code >> 16``) the driver matches; None: any.

    Args:
        platform: the platform.
        pdev: the PCI function.
        name: the device name (default: the topology name of the function, else its BDF).

    Attributes:
        platform, machine, pdev, bdf, name, dma (the :class:`DmaDevice`), engine (its
        :class:`DmaEngine`), phys (the platform's PhysMemory), queues (rings by name).

    Raises: DmaBufError(EIO): the DMA mask cannot be set (``dma_set_mask_and_coherent``).
    Kernel: include/linux/pci.h (struct pci_driver .probe/.remove, .id_table).
    """

    driver_name: ClassVar[str] = "pci-device"
    dma_bits: ClassVar[int] = 64
    rings: ClassVar[tuple[str, ...]] = ("dma",)
    class_codes: ClassVar[tuple[int, ...] | None] = None

    def __init__(self, platform: Platform, pdev: PciDev, *, name: str | None = None) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError("device name must be a non-empty str or None")
        self.platform = platform
        self.machine: Machine = platform.machine
        self.pdev = pdev
        self.bdf = pdev.bdf
        self.name = name or pdev.name or pdev.bdf
        self.phys = platform.phys
        self.dma: DmaDevice = platform.dma_device(pdev.bdf)
        dma_set_mask_and_coherent(self.dma, dma_bit_mask(self.dma_bits))
        self.engine = DmaEngine(self.dma, machine=self.machine)
        self.queues: dict[str, WorkQueue] = {r: WorkQueue(self, r) for r in self.rings}
        self._removed = False

    # ------------------------------------------------------------------ matching
    @classmethod
    def match(cls, pdev: PciDev) -> bool:
        """Whether this driver drives ``pdev`` — the ``pci_device_id`` table match.

        Kernel: drivers/pci/pci-driver.c, pci_match_device() against the driver's pci_device_id
        table.
        """
        if cls.class_codes is None:
            return True
        return (pdev.class_code >> 16) in cls.class_codes

    @classmethod
    def match_text(cls) -> str:
        """Human description of what :meth:`match` accepts (for error messages).

        Model-only: error-message text describing the driver's id table.
        """
        if cls.class_codes is None:
            return "it matches any function"
        return "it matches PCI base class " + ", ".join(f"{c:#04x}" for c in cls.class_codes)

    # ------------------------------------------------------------------ queues and fences
    def queue(self, ring: str | None = None) -> WorkQueue:
        """The :class:`WorkQueue` of ``ring`` (default: the first ring).

        Raises: DmaBufError(EINVAL): unknown ring.

        Model-only: ring lookup on the model's job queues (cf. a drm_gpu_scheduler per ring).
        """
        if ring is None:
            ring = self.rings[0]
        q = self.queues.get(ring)
        if q is None:
            raise DmaBufError(errno.EINVAL, f"{self.name} has no ring {ring!r}; rings: "
                              f"{', '.join(self.queues)}")
        return q

    def submit(self, fn: Callable[[], Any], *, ring: str | None = None,
               deps: Iterable[DmaFence] = (), name: str = "job", duration: float = 0.0,
               propagate_errors: bool = True) -> DmaFence:
        """Queue a job on ``ring``; see :meth:`WorkQueue.submit`.

        Raises: DmaBufError(ENODEV): the device was removed; DmaBufError(EINVAL): unknown ring.

        Kernel: drivers/gpu/drm/scheduler/sched_main.c, drm_sched_job_arm() +
        drm_sched_entity_push_job() (in spirit).
        """
        self._check_alive("submit")
        return self.queue(ring).submit(fn, deps=deps, name=name, duration=duration,
                                       propagate_errors=propagate_errors)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every ring is idle; False on timeout.

        Model-only: waits on every ring of the model's job queues (cf. drm_sched_wait_idle, not in
        mainline).
        """
        m = self.machine
        end = None if timeout is None else m.sched.now() + timeout
        for q in self.queues.values():
            left = None if end is None else max(0.0, end - m.sched.now())
            if not q.wait_idle(left):
                return False
        return True

    def _check_alive(self, what: str) -> None:
        if self._removed:
            raise DmaBufError(errno.ENODEV, f"{self.name}: {what} after the driver was removed")

    # ------------------------------------------------------------------ DMA (real bytes)
    def dma_read(self, mapping: Mapping, *, owner: Owner, offset: int = 0,
                 length: int | None = None) -> np.ndarray:
        """The device reads memory through DMA addresses (see :meth:`DmaEngine.read`).

        Raises: IommuFault: untranslated address or a page not owned by ``owner``.

        Model-only: the device's DMA traffic is hardware behaviour (see DmaEngine).
        """
        return self.engine.read(mapping, owner=owner, offset=offset, length=length)

    def dma_write(self, mapping: Mapping, data: Any, *, owner: Owner, offset: int = 0) -> None:
        """The device writes memory through DMA addresses (see :meth:`DmaEngine.write`).

        Model-only: the device's DMA traffic is hardware behaviour (see DmaEngine).
        """
        self.engine.write(mapping, data, owner=owner, offset=offset)

    def dma_fill(self, mapping: Mapping, byte: int, *, owner: Owner, offset: int = 0,
                 length: int | None = None) -> None:
        """Device memset through DMA addresses (see :meth:`DmaEngine.fill`).

        Model-only: the device's DMA traffic is hardware behaviour (see DmaEngine).
        """
        self.engine.fill(mapping, byte, owner=owner, offset=offset, length=length)

    def dma_checksum(self, mapping: Mapping, *, owner: Owner, offset: int = 0,
                     length: int | None = None) -> int:
        """CRC-32 of the bytes the device reads via DMA (see :meth:`DmaEngine.checksum`).

        Model-only: the device's DMA traffic is hardware behaviour (see DmaEngine).
        """
        return self.engine.checksum(mapping, owner=owner, offset=offset, length=length)

    def dma_copy(self, dst: Mapping, src: Mapping, *, dst_owner: Owner, src_owner: Owner,
                 length: int | None = None) -> None:
        """Device copy between two of its mappings (see :meth:`DmaEngine.copy`).

        Model-only: the device's DMA traffic is hardware behaviour (see DmaEngine).
        """
        self.engine.copy(dst, src, dst_owner=dst_owner, src_owner=src_owner, length=length)

    def record_fault(self, op: str, exc: IommuFault, owner: Owner = None) -> IommuFault:
        """Log a DMA fault the device's own engine logic detected (device-local memory paths).

        Appends to the engine's fault list and the machine's ``DmaFaultLog``, emits the
        ``dma_fault`` trace event, and returns ``exc`` for the caller to raise — the same
        bookkeeping :class:`DmaEngine` does for transfers through DMA addresses.

        Model-only: fault log of device-local paths, standing in for the device's error reporting.
        """
        rec = DmaFault(self.name, op, exc.dma_addr, exc.strerror or str(exc),
                       self.machine.sched.now(), owner)
        self.engine.faults.append(rec)
        self.machine.state(DmaFaultLog).append(rec)
        self.machine.trace.emit("dma_fault", device=self.name, op=op, dma_addr=exc.dma_addr,
                                message=rec.message)
        if not exc.device:
            exc.device = self.name
        return exc

    @property
    def faults(self) -> list[Any]:
        """DMA faults this device took: the engine's records (ownership, direction,
        translation), in order."""
        return list(self.engine.faults)

    # ------------------------------------------------------------------ teardown
    def remove(self) -> None:
        """Unbind: drain and stop every ring — ``pci_driver.remove``.

        Subclasses release their resources and then call ``super().remove()``. Idempotent.

        Context: may block (waits for queued jobs, at most ``REMOVE_TIMEOUT`` s per ring).
        Raises: DmaBufError(ETIMEDOUT): a ring did not drain.

        Kernel: include/linux/pci.h, struct pci_driver.remove.
        """
        if self._removed:
            return
        self._removed = True
        first: DmaBufError | None = None
        for q in self.queues.values():
            try:
                q.close()
            except DmaBufError as e:
                first = first or e
        if first is not None:
            raise first

    @property
    def removed(self) -> bool:
        """True after :meth:`remove`."""
        return self._removed

    def describe(self) -> dict[str, Any]:
        """Snapshot: identity, DMA view, queues, engine counters.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {"name": self.name, "bdf": self.bdf, "driver": self.driver_name,
                "dma": self.dma.describe(), "engine": self.engine.describe(),
                "queues": {n: q.describe() for n, q in self.queues.items()},
                "removed": self._removed}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ({self.bdf})>"


def fence_deps(fences: Sequence[DmaFence | None]) -> tuple[DmaFence, ...]:
    """The non-None fences of ``fences`` (helper for building dependency lists).

    Model-only: list helper for building a job's dependency fences.
    """
    return tuple(f for f in fences if f is not None)
