"""dmabuf.buf.file: llseek leaves f_pos to the file operation, fork, process exit, per-thread
``with process:``."""

from __future__ import annotations

import errno
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dmabuf_mocks import MiB, MockExporter, make_phys

from dmabuf.buf.file import (
    O_CLOEXEC,
    SEEK_CUR,
    SEEK_END,
    SEEK_SET,
    File,
    FileOperations,
    Process,
    ProcessTable,
    current_process,
    user_buffer,
)
from dmabuf.buf.udmabuf import memfd_create, memfd_of
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm.phys import PAGE_SIZE


class _Ops(FileOperations):
    name = "test"


# -- llseek ----------------------------------------------------------------------------------


def test_dma_buf_llseek_reports_the_size_and_keeps_f_pos(machine: Machine) -> None:
    b = MockExporter(make_phys(8 * MiB, 8 * MiB)).export()
    fd = b.fd(O_CLOEXEC)
    f = current_process().fds.lookup(fd)
    assert f.llseek(0, SEEK_END) == MiB
    assert f.f_pos == 0                                   # dma_buf_llseek() never stores it
    assert current_process().fds.fdinfo(fd).startswith("pos:\t0\n")
    assert f.llseek(0, SEEK_SET) == 0 and f.f_pos == 0
    current_process().fds.close(fd)


def test_memfd_llseek_moves_f_pos(machine: Machine) -> None:
    fd = memfd_create(make_phys(8 * MiB, 8 * MiB), "seek")
    memfd_of(fd).ftruncate(3 * PAGE_SIZE)
    fds = current_process().fds
    f = fds.lookup(fd)
    assert f.llseek(100, SEEK_SET) == 100 and f.f_pos == 100      # generic_file_llseek
    assert f.llseek(5, SEEK_CUR) == 105 and f.f_pos == 105
    assert fds.fdinfo(fd).startswith("pos:\t105\n")
    assert f.llseek(-1, SEEK_END) == 3 * PAGE_SIZE - 1
    with pytest.raises(DmaBufError) as ei:
        f.llseek(-1, SEEK_SET)
    assert ei.value.errno == errno.EINVAL
    assert f.f_pos == 3 * PAGE_SIZE - 1                   # a failed seek moves nothing
    fds.close(fd)


def test_llseek_is_the_operations_decision(machine: Machine) -> None:
    class Reporting(_Ops):
        def llseek(self, file: File, offset: int, whence: int) -> int:
            return 4242

    class Storing(_Ops):
        def llseek(self, file: File, offset: int, whence: int) -> int:
            file.f_pos = offset
            return offset

    r, s = File(Reporting(), None), File(Storing(), None)
    assert r.llseek(7, SEEK_SET) == 4242 and r.f_pos == 0
    assert s.llseek(7, SEEK_SET) == 7 and s.f_pos == 7
    plain = File(_Ops(), None)
    with pytest.raises(DmaBufError) as ei:
        plain.llseek(0, SEEK_SET)
    assert ei.value.errno == errno.ESPIPE
    for f in (r, s, plain):
        f.put()


# -- fork and exit ---------------------------------------------------------------------------


def test_fork_copies_the_table_with_shared_files(machine: Machine) -> None:
    table = machine.state(ProcessTable)
    parent = table.spawn("parent", max_fds=16)
    a, b, c = File(_Ops(), "a"), File(_Ops(), "b"), File(_Ops(), "c")
    fa = parent.fds.install(a)
    fb = parent.fds.install(b, O_CLOEXEC)
    fc = parent.fds.install(c)
    parent.fds.close(fb)                                  # a hole: numbers must be kept
    fb2 = parent.fds.install(File(_Ops(), "b2"), O_CLOEXEC)
    assert fb2 == fb
    b2 = parent.fds.lookup(fb2)
    child = table.fork(parent)
    assert child.pid not in (1, parent.pid) and child.name == "parent"
    assert child.fds.max_fds == 16
    assert child.fds.fds() == parent.fds.fds() == [fa, fb2, fc]
    assert [child.fds.is_cloexec(n) for n in (fa, fb2, fc)] == [False, True, False]
    assert child.fds.lookup(fa) is a and child.fds.lookup(fb2) is b2   # the same files
    assert (a.count, b2.count, c.count) == (2, 2, 2)
    assert table.find(child.pid) is child
    child.fds.close(fc)                                   # independent tables
    assert fc in parent.fds and c.count == 1
    child.exit()                                          # exit_files(): references dropped
    assert (a.count, b2.count) == (1, 1) and not a.released
    assert child.exited and table.find(child.pid) is None
    assert child not in list(table)
    child.exit()                                          # idempotent
    parent.exit()
    assert a.released and b2.released and c.released
    assert len(table) == 1 and table.find(1) is table.init


def test_fork_of_a_dma_buf_counts_in_fdinfo(machine: Machine) -> None:
    b = MockExporter(make_phys(8 * MiB, 8 * MiB)).export()
    table = machine.state(ProcessTable)
    parent = table.spawn("app")
    with parent:
        fd = b.fd(O_CLOEXEC)
        child = table.fork(current_process())
    assert "count:\t2\n" in parent.fds.fdinfo(fd)         # the child's copy is a reference
    with child:
        assert "count:\t2\n" in current_process().fds.fdinfo(fd)
    child.exit()
    assert "count:\t1\n" in parent.fds.fdinfo(fd)
    parent.exit()
    assert b.file.released


def test_exit_and_fork_misuse(machine: Machine) -> None:
    table = machine.state(ProcessTable)
    with pytest.raises(ContractViolation):
        table.init.exit()                                 # "Attempted to kill init!"
    p = table.spawn("gone")
    p.exit()
    with pytest.raises(ContractViolation):
        table.fork(p)
    with pytest.raises(ContractViolation):
        p.__enter__()
    other = Machine(name="other").state(ProcessTable)
    with pytest.raises(ContractViolation):
        table.fork(other.init)
    with pytest.raises(TypeError):
        table.fork("init")  # type: ignore[arg-type]
    q = table.spawn("q")
    with pytest.raises(ContractViolation):
        q.__exit__(None, None, None)                      # never entered on this thread
    q.exit()


# -- with process: per thread ----------------------------------------------------------------


def test_two_threads_in_one_process_leave_in_any_order(machine: Machine) -> None:
    """Thread A enters, thread B enters, A leaves first, then B: each resets its own token.

    (Plain threads: the machine is passed explicitly rather than entered in each thread.)
    """
    p = machine.state(ProcessTable).spawn("shared")
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, object] = {}
    errors: list[BaseException] = []

    def thread_a() -> None:
        try:
            with p:
                seen["a_inside"] = current_process(machine).pid
                a_in.set()
                assert b_in.wait(5.0)
            seen["a_after"] = current_process(machine).pid
        except BaseException as e:
            errors.append(e)
        finally:
            a_out.set()

    def thread_b() -> None:
        try:
            assert a_in.wait(5.0)
            with p:
                with p:                                   # nesting on one thread
                    seen["b_nested"] = current_process(machine).pid
                b_in.set()
                assert a_out.wait(5.0)
                seen["b_inside_after_a_left"] = current_process(machine).pid
            seen["b_after"] = current_process(machine).pid
        except BaseException as e:
            errors.append(e)
        finally:
            b_in.set()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10.0)
        assert not t.is_alive()
    assert errors == []
    assert seen == {"a_inside": p.pid, "b_nested": p.pid, "a_after": 1,
                    "b_inside_after_a_left": p.pid, "b_after": 1}
    assert current_process().pid == 1
    p.exit()


def test_process_is_current_only_on_its_machine(machine: Machine) -> None:
    p = machine.state(ProcessTable).spawn("x")
    other = Machine(name="other")
    with p:
        assert current_process() is p
        assert current_process(other) is other.state(ProcessTable).init
    assert current_process() is machine.state(ProcessTable).init
    assert isinstance(p, Process)
    p.exit()


def test_user_buffer_is_copy_from_user_access_ok() -> None:
    buf = bytearray(8)
    mv = user_buffer(buf, 8, "TEST_IOCTL")
    mv[0] = 7
    assert buf[0] == 7 and len(mv) == 8                     # a view, not a copy
    assert len(user_buffer(b"", 0, "TEST_IOCTL")) == 0
    for arg, n in ((None, 0), (object(), 0), (bytearray(4), 8)):
        with pytest.raises(DmaBufError) as e:
            user_buffer(arg, n, "TEST_IOCTL")
        assert e.value.errno == errno.EFAULT and str(e.value).find("TEST_IOCTL") >= 0
