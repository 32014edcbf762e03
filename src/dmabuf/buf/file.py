"""Files and file descriptors — fs/file_table.c, fs/file.c, fs/proc/fd.c (the slice dma-buf needs).

A dma-buf *is* a file: ``dma_buf_export()`` creates an anonymous pseudo-fs ``struct file`` whose
reference count is the buffer's reference count, ``dma_buf_fd()`` installs it in the calling
process's fd table, ``dma_buf_get(fd)`` is ``fget()``, ``dma_buf_put()`` is ``fput()``, and the
buffer dies when the last reference goes. Sync files (``EXPORT_SYNC_FILE``) are files too. This
module models exactly that much of the VFS:

* :class:`File` — ``struct file``: a reference count (``f_count``), ``f_flags``, ``f_mode``,
  ``f_pos``, the operations table (:class:`FileOperations`, ``struct file_operations``), the
  private data and the inode number. The final :meth:`File.put` runs ``f_op->release`` and then
  the dentry's ``d_release`` (:meth:`FileOperations.dentry_release`) — for a dma-buf that is
  ``dma_buf_file_release()`` (off the global list) followed by ``dma_buf_release()`` (the
  exporter's ``release``), **exactly once**. A put from a fence callback (the poll callback's
  ``fput``) is *deferred* to a worker, as the kernel's ``delayed_fput`` work does for puts from
  atomic context; :func:`flush_delayed_fput` waits for those workers.
* :class:`FdTable` — a process's descriptor table (``struct files_struct``): ``install`` is
  ``get_unused_fd_flags()`` + ``fd_install()`` (it *consumes* the caller's reference, lowest free
  number first, ``-EMFILE`` when full), ``fget`` takes a reference (``-EBADF`` for a closed or
  never-opened number), ``close`` drops the table's reference, ``fdinfo`` renders
  ``/proc/<pid>/fdinfo/<fd>``.
* :class:`Process` — a pid, a name and an fd table. The machine has an ``init`` process (pid 1);
  more are made with :meth:`ProcessTable.spawn` (empty table) or :meth:`ProcessTable.fork` (a
  copy of the parent's table: ``dup_fd``, every file one more reference); :meth:`Process.exit`
  closes every descriptor and removes the process from the table. ``with process:`` makes one
  current for the calling thread (:func:`current_process`), the way a syscall runs in the
  caller's context; several threads may be inside the same process at once.

Deliberate differences from the kernel: descriptor numbers start at 3 (0-2 are taken by the
stdio a real process has); there is no ``struct path``/dentry cache, ``mnt_id`` is a constant per
pseudo file system; ``fput`` outside atomic context releases synchronously (the kernel defers to
``task_work`` until the return to user space, which is observably the same for a syscall).

Locking: a file's reference count is protected by a small internal lock held only for the count
update (the kernel uses an atomic ``file_ref_t``); fd tables have their own internal lock, held
only inside one call (``files->file_lock``). No lock is held while ``release`` runs.

Kernel: include/linux/fs.h (struct file, struct file_operations, OPEN_FMODE, FMODE_*),
fs/file_table.c (alloc_file_pseudo, fput, __fput, delayed_fput), fs/file.c (get_unused_fd_flags,
fd_install, fget, close_fd), fs/proc/fd.c (seq_show), include/uapi/asm-generic/fcntl.h (O_*),
include/uapi/linux/eventpoll.h (EPOLL*).
"""

from __future__ import annotations

import contextvars
import errno
import threading
from collections.abc import Iterator
from typing import Any

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.sched import Task

__all__ = [
    "DEFAULT_POLLMASK",
    "EPOLLERR",
    "EPOLLIN",
    "EPOLLOUT",
    "EPOLLRDNORM",
    "EPOLLWRNORM",
    "FMODE_LSEEK",
    "FMODE_OPENED",
    "FMODE_READ",
    "FMODE_WRITE",
    "O_ACCMODE",
    "O_CLOEXEC",
    "O_NONBLOCK",
    "O_RDONLY",
    "O_RDWR",
    "O_WRONLY",
    "SEEK_CUR",
    "SEEK_END",
    "SEEK_SET",
    "FdTable",
    "File",
    "FileOperations",
    "Process",
    "ProcessTable",
    "current_process",
    "flush_delayed_fput",
    "user_buffer",
]

# include/uapi/asm-generic/fcntl.h (x86-64 values)
O_ACCMODE = 0o3
O_RDONLY = 0o0
O_WRONLY = 0o1
O_RDWR = 0o2
O_NONBLOCK = 0o4000
O_CLOEXEC = 0o2000000

# include/linux/fs.h
FMODE_READ = 0x1
FMODE_WRITE = 0x2
FMODE_LSEEK = 0x4
FMODE_OPENED = 0x80000

# include/uapi/linux/fs.h
SEEK_SET = 0
SEEK_CUR = 1
SEEK_END = 2

# include/uapi/linux/eventpoll.h
EPOLLIN = 0x001
EPOLLOUT = 0x004
EPOLLERR = 0x008
EPOLLRDNORM = 0x040
EPOLLWRNORM = 0x100
#: What poll() reports for a file without a ``poll`` operation (include/linux/poll.h).
DEFAULT_POLLMASK = EPOLLIN | EPOLLOUT | EPOLLRDNORM | EPOLLWRNORM

#: First descriptor number handed out (0, 1 and 2 are a real process's stdio).
FIRST_FD = 3
#: Default ``RLIMIT_NOFILE`` soft limit of the model's processes.
DEFAULT_MAX_FDS = 1024


def user_buffer(arg: Any, n: int, what: str) -> memoryview:
    """An ioctl's user buffer as a byte view — the ``access_ok`` part of ``copy_from_user``.

    The model's "user pointer" is any bytes-like object (a ``bytearray`` when the ioctl writes
    back).

    Args:
        arg: the ioctl argument.
        n: bytes the command copies in or out (``_IOC_SIZE``); 0 checks only the pointer.
        what: the ioctl, for messages.
    Context: pure.
    Returns: ``memoryview(arg).cast("B")`` (at least ``n`` bytes; not copied).
    Raises: DmaBufError(EFAULT): ``arg`` is None (a NULL pointer), not bytes-like, or shorter
        than ``n`` bytes.
    Kernel: include/linux/uaccess.h, copy_from_user() / copy_to_user() (-EFAULT).
    """
    if arg is None:
        raise DmaBufError(errno.EFAULT, f"{what}: NULL argument pointer")
    try:
        mv = memoryview(arg).cast("B")
    except TypeError:
        raise DmaBufError(errno.EFAULT, f"{what}: the argument must be a bytes-like user buffer "
                          "(a bytearray)") from None
    if len(mv) < n:
        raise DmaBufError(errno.EFAULT, f"{what}: user buffer of {len(mv)} bytes, {n} needed")
    return mv


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


class FileOperations:
    """``struct file_operations``: what a file type does on each system call.

    Subclass and override what the file type supports; the defaults are the kernel's behaviour
    for a missing operation. Every method receives the :class:`File` first.

    * ``release(file)`` — last reference dropped (``f_op->release``); unlocked, may block.
    * ``dentry_release(file)`` — after ``release``: the dentry's ``d_release`` (for a dma-buf the
      actual destruction, ``dma_buf_release()``).
    * ``llseek(file, offset, whence)`` — missing: ``-ESPIPE`` (``no_llseek``).
    * ``mmap(file, vma)`` — missing: ``-ENODEV``.
    * ``poll(file, events)`` — missing: :data:`DEFAULT_POLLMASK`.
    * ``ioctl(file, cmd, arg)`` — missing: ``-ENOTTY``.
    * ``show_fdinfo(file)`` — extra lines of ``/proc/<pid>/fdinfo/<fd>``; missing: none.

    Kernel: include/linux/fs.h, struct file_operations; fs/read_write.c, no_llseek;
    fs/ioctl.c (-ENOTTY); include/linux/poll.h, DEFAULT_POLLMASK.
    """

    #: Name of the file type, used in messages (``"dmabuf"``, ``"sync_file"``).
    name = "anon_inode"
    #: ``mnt_id`` shown by fdinfo for files of this type (one pseudo mount per type).
    mnt_id = 15

    def release(self, file: File) -> None:
        """Last reference gone — ``f_op->release``. Default: nothing.

        Kernel: include/linux/fs.h, struct file_operations.release.
        """

    def dentry_release(self, file: File) -> None:
        """After ``release``: ``dentry_operations.d_release``. Default: nothing.

        Kernel: include/linux/dcache.h, struct dentry_operations.d_release.
        """

    def llseek(self, file: File, offset: int, whence: int) -> int:
        """``f_op->llseek``; the default is ``no_llseek``: ``-ESPIPE``.

        Raises: DmaBufError(ESPIPE) in the default implementation (no_llseek).
        Kernel: include/linux/fs.h, struct file_operations.llseek.
        """
        raise DmaBufError(errno.ESPIPE, f"{self.name} files are not seekable")

    def mmap(self, file: File, vma: Any) -> Any:
        """``f_op->mmap``; default ``-ENODEV`` (no mmap operation).

        Raises: DmaBufError(ENODEV) in the default implementation.
        Kernel: include/linux/fs.h, struct file_operations.mmap.
        """
        raise DmaBufError(errno.ENODEV, f"{self.name} files cannot be mmap()ed")

    def poll(self, file: File, events: int) -> int:
        """``f_op->poll``; default :data:`DEFAULT_POLLMASK` (always ready).

        Kernel: include/linux/fs.h, struct file_operations.poll.
        """
        return DEFAULT_POLLMASK

    def ioctl(self, file: File, cmd: int, arg: Any) -> Any:
        """``f_op->unlocked_ioctl``; default ``-ENOTTY``.

        Raises: DmaBufError(ENOTTY) in the default implementation.
        Kernel: include/linux/fs.h, struct file_operations.unlocked_ioctl.
        """
        raise DmaBufError(errno.ENOTTY, f"ioctl {cmd:#x} is not supported by {self.name} files")

    def show_fdinfo(self, file: File) -> str:
        """``f_op->show_fdinfo``: extra fdinfo lines; default none.

        Kernel: include/linux/fs.h, struct file_operations.show_fdinfo.
        """
        return ""

    @property
    def has_llseek(self) -> bool:
        """Whether the type overrides ``llseek`` (then the file gets ``FMODE_LSEEK``)."""
        return type(self).llseek is not FileOperations.llseek


class File:
    """``struct file``: a reference-counted open file with an operations table.

    Created with one reference, held by the creator (``alloc_file_pseudo``). ``get``/``put``
    are ``get_file``/``fput``; the last ``put`` runs ``fops.release`` then
    ``fops.dentry_release``, once.

    Args:
        fops: the :class:`FileOperations` of the file type.
        private_data: what ``file->private_data`` points to (the dma-buf, the sync file).
        flags: ``f_flags`` (``O_*``); ``f_mode`` is derived from the access mode.
        ino: inode number shown by fdinfo/bufinfo.
        size: ``i_size`` of the inode.
        machine: the machine (for deferred puts and WARNs); default the current one.

    Attributes:
        f_flags, f_mode, f_pos, ino, size, fops, private_data: as in the kernel.

    Kernel: include/linux/fs.h (struct file), fs/file_table.c (alloc_file_pseudo, fput).
    """

    def __init__(self, fops: FileOperations, private_data: Any, *, flags: int = O_RDWR,
                 ino: int = 0, size: int = 0, machine: Machine | None = None) -> None:
        if not isinstance(fops, FileOperations):
            raise TypeError(f"fops must be a FileOperations, not {type(fops).__name__}")
        flags = _check_int(flags, "flags")
        self.machine = machine if machine is not None else current_machine()
        self.fops = fops
        self.private_data = private_data
        self.f_flags = flags
        mode = ((flags + 1) & O_ACCMODE) | FMODE_OPENED   # OPEN_FMODE(flags) | FMODE_OPENED
        if fops.has_llseek:
            mode |= FMODE_LSEEK
        self.f_mode = mode
        self.f_pos = 0
        self.ino = ino
        self.size = size
        self._count = 1
        self._lock = threading.Lock()
        self._released = False

    def __repr__(self) -> str:
        return f"<File {self.fops.name} ino={self.ino} count={self._count}>"

    @property
    def count(self) -> int:
        """``file_count(file)``: the current number of references."""
        return self._count

    @property
    def released(self) -> bool:
        """True once the last reference was dropped and ``release`` ran."""
        return self._released

    def get(self) -> File:
        """Take a reference — ``get_file()``.

        Context: any; never blocks.
        Returns: ``self``.
        Raises: ContractViolation("get_file"): the file is already dead (count 0): a reference
            must be held to take another one (use :meth:`try_get` when iterating lists).
        Kernel: include/linux/fs.h, get_file().
        """
        with self._lock:
            if self._count <= 0:
                raise ContractViolation("get_file", f"get_file() on a released {self.fops.name} "
                                        "file (use after free)")
            self._count += 1
        return self

    def try_get(self) -> bool:
        """Take a reference unless the file is already dying — ``file_ref_get()``.

        Context: any; never blocks.
        Returns: True with a new reference; False when the count had reached 0.
        Kernel: include/linux/file_ref.h, file_ref_get().
        """
        with self._lock:
            if self._count <= 0:
                return False
            self._count += 1
            return True

    def put(self, *, deferred: bool = False) -> None:
        """Drop a reference — ``fput()``; the last one releases the file.

        Args:
            deferred: the caller is in atomic context (a fence callback): the release runs
                later on a worker, like the kernel's ``delayed_fput`` work. Wait for it with
                :func:`flush_delayed_fput`.
        Context: may block (``release`` may) unless ``deferred``.
        Raises: ContractViolation("fput"): more puts than references.
        Kernel: fs/file_table.c, fput(), __fput(), delayed_fput().
        """
        with self._lock:
            if self._count <= 0:
                raise ContractViolation("fput", f"fput() on a released {self.fops.name} file "
                                        "(reference imbalance: one put too many)")
            self._count -= 1
            last = self._count == 0
        if not last:
            return
        if deferred:
            self.machine.state(DelayedFput).schedule(self)
        else:
            self._final()

    def _final(self) -> None:
        # __fput(): f_op->release, then dput() -> d_release. Exactly once (count hit 0 once).
        self._released = True
        self.machine.trace.emit("fput_release", file=self.fops.name, ino=self.ino)
        try:
            self.fops.release(self)
        finally:
            self.fops.dentry_release(self)

    # syscalls on the file -----------------------------------------------------------------
    def _check_open(self, what: str) -> None:
        if self._count <= 0:
            raise ContractViolation(what, f"{what} on a released {self.fops.name} file")

    def llseek(self, offset: int, whence: int) -> int:
        """``lseek(2)`` on this file — ``vfs_llseek()``: what the file's ``llseek`` returns.

        The file operation decides whether the position moves, as in the kernel: a
        ``generic_file_llseek``-style operation stores ``f_pos`` itself (``vfs_setpos``), while
        ``dma_buf_llseek()`` only *returns* the size and never stores it (fdinfo ``pos`` stays
        0). This method never touches :attr:`f_pos`.

        Args:
            offset, whence: as lseek(2) (``SEEK_SET``/``SEEK_CUR``/``SEEK_END``…).
        Context: whatever the operation needs; the model's never block.
        Returns: the operation's result (the new or reported position).
        Raises: DmaBufError(ESPIPE): no ``llseek`` operation; the operation's errno;
            ContractViolation("llseek"): the file is released; TypeError: non-int arguments.
        Kernel: fs/read_write.c, vfs_llseek(), ksys_lseek().
        """
        self._check_open("llseek")
        pos: int = self.fops.llseek(self, _check_int(offset, "offset"),
                                    _check_int(whence, "whence"))
        return pos

    def mmap(self, vma: Any) -> Any:
        """``mmap(2)`` on this file — ``call_mmap()``.

        Kernel: include/linux/fs.h, call_mmap().
        """
        self._check_open("mmap")
        return self.fops.mmap(self, vma)

    def poll(self, events: int) -> int:
        """``poll(2)`` on this file (one ``vfs_poll()``): the ready events among ``events``.

        Kernel: include/linux/poll.h, vfs_poll().
        """
        self._check_open("poll")
        return self.fops.poll(self, _check_int(events, "events"))

    def ioctl(self, cmd: int, arg: Any = None) -> Any:
        """``ioctl(2)`` on this file — ``vfs_ioctl()``.

        Kernel: fs/ioctl.c, vfs_ioctl().
        """
        self._check_open("ioctl")
        return self.fops.ioctl(self, _check_int(cmd, "cmd"), arg)


class DelayedFput:
    """Per-machine ``delayed_fput`` work: final puts from atomic context run on a worker.

    Kernel: fs/file_table.c, delayed_fput(), flush_delayed_fput().
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._lock = threading.Lock()
        self._tasks: list[Task] = []

    def schedule(self, file: File) -> None:
        """Queue ``file``'s release on a worker thread of the machine's scheduler.

        Kernel: fs/file_table.c, fput() -> schedule_delayed_work(&delayed_fput_work).
        """
        task = self.machine.sched.spawn(file._final, name=f"delayed_fput({file.fops.name})")
        with self._lock:
            self._tasks.append(task)

    def flush(self, timeout: float | None = 10.0) -> None:
        """Wait until every queued release has run — ``flush_delayed_fput()``.

        Raises: TimeoutError when a release does not finish within ``timeout`` seconds;
            re-raises the first exception a release raised.

        Kernel: fs/file_table.c, flush_delayed_fput().
        """
        while True:
            with self._lock:
                tasks, self._tasks = self._tasks, []
            if not tasks:
                return
            for t in tasks:
                if not t.join(timeout):
                    raise TimeoutError(f"delayed fput {t.name} did not finish in {timeout} s")
                t.result()


def flush_delayed_fput(machine: Machine | None = None) -> None:
    """Wait for releases deferred from atomic context — ``flush_delayed_fput()``.

    Args:
        machine: default the current machine.
    Context: blocks until the workers finished.
    Raises: TimeoutError, or the exception a deferred release raised.
    Kernel: fs/file_table.c, flush_delayed_fput().
    """
    (machine or current_machine()).state(DelayedFput).flush()


class FdTable:
    """A process's file descriptor table — ``struct files_struct``.

    Args:
        machine: the machine.
        max_fds: ``RLIMIT_NOFILE``: installing beyond it fails with ``-EMFILE``.

    Kernel: fs/file.c (alloc_fd, fd_install, fget, close_fd), include/linux/fdtable.h.
    """

    def __init__(self, machine: Machine, *, max_fds: int = DEFAULT_MAX_FDS) -> None:
        self.machine = machine
        self.max_fds = _check_int(max_fds, "max_fds")
        self._files: dict[int, File] = {}
        self._cloexec: set[int] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<FdTable {sorted(self._files)}>"

    def __contains__(self, fd: object) -> bool:
        return fd in self._files

    def __len__(self) -> int:
        return len(self._files)

    def fds(self) -> list[int]:
        """The open descriptor numbers, ascending.

        Model-only: lists the open descriptors, like ls /proc/self/fd.
        """
        with self._lock:
            return sorted(self._files)

    def install(self, file: File, flags: int = 0) -> int:
        """Install ``file`` at the lowest free fd — ``get_unused_fd_flags()`` + ``fd_install()``.

        The caller's reference to ``file`` is *consumed* by the table (as ``dma_buf_fd()``
        does); on failure the caller still owns it.

        Args:
            file: an open :class:`File`.
            flags: ``O_CLOEXEC`` or 0 (other bits are ignored, as ``get_unused_fd_flags`` does).
        Context: never blocks.
        Returns: the new descriptor number.
        Raises:
            DmaBufError(EMFILE): the table is full (``RLIMIT_NOFILE``).
            ContractViolation("fd_install"): ``file`` is already released.
        Kernel: fs/file.c, get_unused_fd_flags(), fd_install().
        """
        if not isinstance(file, File):
            raise TypeError(f"install() needs a File, not {type(file).__name__}")
        flags = _check_int(flags, "flags")
        if file.count <= 0:
            raise ContractViolation("fd_install", "installing a released file")
        with self._lock:
            fd = FIRST_FD
            while fd in self._files:
                fd += 1
            if fd >= self.max_fds:
                raise DmaBufError(errno.EMFILE, f"too many open files ({self.max_fds} allowed): "
                                  "close descriptors you no longer need")
            self._files[fd] = file
            if flags & O_CLOEXEC:
                self._cloexec.add(fd)
        return fd

    def lookup(self, fd: int) -> File:
        """The file behind ``fd`` *without* taking a reference (the caller must not keep it).

        Raises: DmaBufError(EBADF) when ``fd`` is not open.
        Kernel: fs/file.c, files_lookup_fd_raw() (no reference taken).
        """
        fd = _check_int(fd, "fd")
        with self._lock:
            f = self._files.get(fd)
        if f is None:
            raise DmaBufError(errno.EBADF, f"fd {fd} is not open in this process")
        return f

    def fget(self, fd: int) -> File:
        """Take a reference to the file behind ``fd`` — ``fget()``.

        Context: never blocks.
        Returns: the :class:`File` (+1 reference; drop it with ``File.put``).
        Raises: DmaBufError(EBADF): ``fd`` is not open.
        Kernel: fs/file.c, fget().
        """
        fd = _check_int(fd, "fd")
        with self._lock:
            f = self._files.get(fd)
            if f is None:
                raise DmaBufError(errno.EBADF, f"fd {fd} is not open in this process")
            f.get()
        return f

    def close(self, fd: int) -> None:
        """Close ``fd`` — ``close(2)`` / ``close_fd()``: remove it and drop the table's reference.

        Context: may block (the last reference runs the file's release).
        Raises: DmaBufError(EBADF): ``fd`` is not open.
        Kernel: fs/file.c, close_fd(); fs/open.c, filp_close().
        """
        fd = _check_int(fd, "fd")
        with self._lock:
            f = self._files.pop(fd, None)
            self._cloexec.discard(fd)
        if f is None:
            raise DmaBufError(errno.EBADF, f"close({fd}): fd is not open in this process")
        f.put()

    def dup(self, fd: int, flags: int = 0) -> int:
        """Duplicate ``fd`` — ``dup(2)`` (``F_DUPFD_CLOEXEC`` with ``flags=O_CLOEXEC``).

        Raises: DmaBufError(EBADF / EMFILE).

        Kernel: fs/file.c, ksys_dup() / f_dupfd().
        """
        f = self.fget(fd)
        try:
            return self.install(f, flags)
        except BaseException:
            f.put()
            raise

    def is_cloexec(self, fd: int) -> bool:
        """Whether ``fd`` has close-on-exec set (``FD_CLOEXEC``).

        Kernel: fs/file.c, close_on_exec().
        """
        self.lookup(fd)
        return fd in self._cloexec

    def fdinfo(self, fd: int) -> str:
        """The text of ``/proc/<pid>/fdinfo/<fd>`` — ``seq_show()``.

        Prints ``pos``, ``flags`` (octal, with ``O_CLOEXEC`` when close-on-exec is set),
        ``mnt_id`` and ``ino``, then the file type's ``show_fdinfo`` lines. procfs holds a
        temporary reference while printing (so a dma-buf's ``count:`` line, which subtracts
        it, shows the count before the read).

        Raises: DmaBufError(EBADF).
        Kernel: fs/proc/fd.c, seq_show().
        """
        f = self.fget(fd)
        try:
            flags = f.f_flags | (O_CLOEXEC if fd in self._cloexec else 0)
            head = (f"pos:\t{f.f_pos}\nflags:\t0{flags:o}\nmnt_id:\t{f.fops.mnt_id}\n"
                    f"ino:\t{f.ino}\n")
            return head + f.fops.show_fdinfo(f)
        finally:
            f.put()

    def copy(self) -> FdTable:
        """A copy of this table for a forked child — ``dup_fd()``.

        Same descriptor numbers, same close-on-exec flags, same ``max_fds``; the child's table
        references the *same* :class:`File` objects, each with one more reference (so a
        dma-buf's fdinfo ``count`` grows by one per copied descriptor).

        Context: holds this table's lock while copying (``files->file_lock``); never blocks.
        Returns: the new table.
        Kernel: kernel/fork.c, copy_files(); fs/file.c, dup_fd().
        """
        new = FdTable(self.machine, max_fds=self.max_fds)
        with self._lock:
            for f in self._files.values():
                f.get()          # the table holds a reference: the file is alive
            new._files = dict(self._files)
            new._cloexec = set(self._cloexec)
        return new

    def close_all(self) -> None:
        """Close every descriptor (process exit — ``exit_files()``).

        Kernel: kernel/exit.c, exit_files().
        """
        with self._lock:
            files = [self._files[k] for k in sorted(self._files)]
            self._files.clear()
            self._cloexec.clear()
        for f in files:
            f.put()


_current_process: contextvars.ContextVar[Process | None] = contextvars.ContextVar(
    "dmabuf_current_process", default=None)


class Process:
    """A user process of the model: a pid, a name and an fd table.

    ``with process:`` makes it the current process of the calling thread (system calls of the
    model act on the current process's fd table). Any number of threads may be inside the same
    process at once, each with its own nesting (the context-variable tokens are kept per
    thread). :meth:`exit` closes every descriptor and removes the process from the machine's
    :class:`ProcessTable`.

    Attributes:
        pid, name, fds: the process id, its name (``comm``) and its :class:`FdTable`.
        exited: True once :meth:`exit` ran.

    Kernel: include/linux/sched.h (struct task_struct: pid, comm, files).
    """

    def __init__(self, machine: Machine, pid: int, name: str, *,
                 max_fds: int = DEFAULT_MAX_FDS) -> None:
        self.machine = machine
        self.pid = pid
        self.name = name
        self.fds = FdTable(machine, max_fds=max_fds)
        self.exited = False
        self._exit_lock = threading.Lock()
        self._local = threading.local()      # .tokens: this thread's ``with`` nesting

    def __repr__(self) -> str:
        return f"<Process {self.pid} {self.name} fds={self.fds.fds()}>"

    def __enter__(self) -> Process:
        """Make this the calling thread's current process (nestable, per thread).

        Raises: ContractViolation("current_process"): the process has exited.
        """
        if self.exited:
            raise ContractViolation("current_process", f"entering process {self.pid} "
                                    f"({self.name}) after it exited")
        tokens: list[contextvars.Token[Process | None]] | None = getattr(
            self._local, "tokens", None)
        if tokens is None:
            tokens = self._local.tokens = []
        tokens.append(_current_process.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        tokens: list[contextvars.Token[Process | None]] | None = getattr(
            self._local, "tokens", None)
        if not tokens:
            raise ContractViolation("current_process", f"leaving process {self.pid} on a "
                                    "thread that did not enter it")
        _current_process.reset(tokens.pop())

    def exit(self) -> None:
        """Process exit — ``do_exit()``: close every descriptor, leave the process table.

        Closing the descriptors is ``exit_files()`` (each file loses the table's reference;
        the last one releases it); then the process is reaped (``release_task()``):
        :meth:`ProcessTable.find` no longer finds it. Idempotent.

        Context: may block (a file's release may).
        Raises: ContractViolation("do_exit"): the ``init`` process (pid 1) cannot exit (the
            kernel panics: "Attempted to kill init!").
        Kernel: kernel/exit.c, do_exit(), exit_files(), release_task().
        """
        table = self.machine.state(ProcessTable)
        if self is table.init:
            raise ContractViolation("do_exit", "the init process (pid 1) cannot exit")
        with self._exit_lock:
            if self.exited:
                return
            self.exited = True
        try:
            self.fds.close_all()
        finally:
            table._remove(self)


class ProcessTable:
    """The machine's processes (``machine.state(ProcessTable)``): ``init`` is pid 1.

    :meth:`spawn` makes a process with an empty fd table, :meth:`fork` one with a copy of its
    parent's; :meth:`Process.exit` removes a process; :meth:`find` looks one up by pid.

    Locking: one internal lock, held only for the table's dictionary and pid counter.

    Kernel: kernel/pid.c (alloc_pid, find_task_by_vpid), kernel/fork.c (copy_process).
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._lock = threading.Lock()
        self._next_pid = 2
        self.init = Process(machine, 1, "init")
        self._procs: dict[int, Process] = {1: self.init}

    def _alloc_pid(self) -> int:
        with self._lock:
            pid = self._next_pid
            self._next_pid += 1
            return pid

    def _add(self, p: Process) -> Process:
        with self._lock:
            self._procs[p.pid] = p
        return p

    def _remove(self, p: Process) -> None:
        with self._lock:
            if self._procs.get(p.pid) is p:
                del self._procs[p.pid]

    def spawn(self, name: str, *, max_fds: int = DEFAULT_MAX_FDS) -> Process:
        """Create a new process with an empty fd table.

        Args:
            name: the process name.
            max_fds: its ``RLIMIT_NOFILE``.
        Returns: the new :class:`Process` (a fresh pid).

        Model-only: creates a simulated process; the kernel's is fork()/clone().
        """
        return self._add(Process(self.machine, self._alloc_pid(), name, max_fds=max_fds))

    def fork(self, parent: Process, name: str | None = None) -> Process:
        """``fork()``: a new process whose fd table is a copy of ``parent``'s.

        The child's table has the same numbers and close-on-exec flags and references the same
        files, each with one more reference (:meth:`FdTable.copy`). Mappings are not part of
        the model's processes.

        Args:
            parent: the forking process (of this machine).
            name: the child's name (default: the parent's, as ``comm`` is inherited).
        Context: holds the parent's fd-table lock while copying; never blocks.
        Returns: the child :class:`Process`.
        Raises: ContractViolation("fork"): ``parent`` has exited or belongs to another machine.
        Kernel: kernel/fork.c, copy_process(), copy_files() → dup_fd().
        """
        if not isinstance(parent, Process):
            raise TypeError(f"fork() needs a Process, not {type(parent).__name__}")
        if parent.machine is not self.machine:
            raise ContractViolation("fork", f"process {parent.pid} belongs to another machine")
        if parent.exited:
            raise ContractViolation("fork", f"process {parent.pid} ({parent.name}) has exited")
        child = Process(self.machine, self._alloc_pid(), name if name is not None
                        else parent.name, max_fds=parent.fds.max_fds)
        child.fds = parent.fds.copy()
        return self._add(child)

    def find(self, pid: int) -> Process | None:
        """The live process with ``pid`` — ``find_task_by_vpid()``; None if there is none.

        Kernel: kernel/pid.c, find_task_by_vpid().
        """
        with self._lock:
            return self._procs.get(pid)

    def __iter__(self) -> Iterator[Process]:
        with self._lock:
            return iter(list(self._procs.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._procs)


def current_process(machine: Machine | None = None) -> Process:
    """The process system calls act on: the innermost ``with process:`` of this thread if it
    belongs to ``machine``, else the machine's ``init`` process.

    Args:
        machine: default the current machine.

    Model-only: the model's stand-in for ``current`` (include/asm-generic/current.h), chosen per
    thread.
    """
    m = machine if machine is not None else current_machine()
    p = _current_process.get()
    if p is not None and p.machine is m:
        return p
    return m.state(ProcessTable).init
