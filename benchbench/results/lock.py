"""One writer per run directory: an advisory ``flock`` on ``RUN_DIR/.lock``, held while rows are written.

Hand-written on ``fcntl`` rather than the ``filelock`` package: checking whether a run is in use must not
create anything (a refused command leaves the directory as it was), and filelock creates its file on every
attempt. The kernel drops the lock when the process dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from benchbench.errors import RunConflict

LOCK = ".lock"


def _busy(run_dir: Path) -> RunConflict:
    return RunConflict(f"{run_dir} is in use by another bench process (it holds {run_dir / LOCK}); wait for it "
                       "or choose another --out")


def check_unlocked(run_dir: Path) -> None:
    """Raise RunConflict when another process holds the run's lock. Creates nothing."""
    path = Path(run_dir) / LOCK
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(run_dir) from None
    finally:
        os.close(fd)


class RunLock:
    """``with RunLock(run_dir):`` holds the run's lock (exclusive, not waiting) or raises RunConflict."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(self.path.parent) from None
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
