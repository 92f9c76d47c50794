"""One training run per workdir: `workdir/lock`, held by the running process.

The lock is an exclusive `flock` on the file, which the kernel drops when its process ends,
however it ends (SIGKILL included); the file names the holder's pid and host. A lock file
left by a process that is gone is stale: the next run takes it over, logging the old pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket

from absl import logging

LOCK_FILE = "lock"


class WorkdirBusy(RuntimeError):
    """Another process holds the workdir's lock."""


def _holder(fd: int) -> str:
    """The 'pid P on host H' recorded in an open lock file ('' when it records none)."""
    os.lseek(fd, 0, os.SEEK_SET)
    pid, _, host = os.read(fd, 256).decode(errors="replace").strip().partition(" ")
    return f"pid {pid} on host {host}" if pid else ""


def _acquire(path: str) -> int:
    """Opens and locks `path`; returns its fd, or raises WorkdirBusy naming the holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or "another process"
            os.close(fd)
            raise WorkdirBusy(f"{os.path.dirname(path)} is in use by {holder} (lock file "
                              f"{path}); wait for that run to end or pick another "
                              "--workdir") from None
        # The holder before us may have removed the file after we opened it: lock the file
        # that is there now.
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
        os.close(fd)


@contextlib.contextmanager
def workdir_lock(workdir: str, enabled: bool = True):
    """Holds `workdir/lock` for the duration of the block (a no-op when not `enabled`, e.g. on
    the processes of a multi-host run other than the first)."""
    if not enabled:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    fd = _acquire(path)
    stale = _holder(fd)
    if stale:
        logging.warning("%s: taking over the stale lock of %s (a run that ended without "
                        "releasing it)", path, stale)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    try:
        yield
    finally:
        os.unlink(path)
        os.close(fd)
