"""Run directories that cannot be lost: an exclusive lock per directory, strict JSON lines, atomic writes.

- :class:`RunLock` takes an exclusive ``fcntl`` lock on ``DIR/.lock`` (the holder's pid written in it) for as long
  as a process writes to a run directory; a second process stops at once with :class:`RunLocked`, which names the
  holder. The kernel drops the lock when the holder dies, so a killed run never leaves a stale lock behind.
- :func:`json_line` writes one metrics record as strict JSON: non-finite numbers (a diverged loss) become
  ``null``, never the ``Infinity``/``NaN`` tokens that strict parsers reject.
- :func:`atomic_write` writes a file through a temporary file in the same directory, fsync and rename; on any
  failure (a full disk) the temporary file is removed and the previous file is left as it was.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["LOCK", "RunLock", "RunLocked", "json_safe", "json_line", "atomic_write", "WriteFailed"]

LOCK = ".lock"


class RunLocked(RuntimeError):
    """Another process holds the run directory's lock."""


class WriteFailed(RuntimeError):
    """A file could not be written (disk full, permissions); the previous version of the file is intact."""


class RunLock:
    """Exclusive, non-blocking lock on a directory for the life of a ``with`` block (or until :meth:`release`).

    ``what`` names what is locked in the error (default ``run directory 'DIR'``), ``holder`` the process that
    holds it, ``name`` the lock file in the directory.
    """

    def __init__(self, directory: str | Path, what: str | None = None, *, holder: str = "another neuromorph process",
                 name: str = LOCK):
        self.dir = Path(directory)
        self.what = what or f"run directory {str(self.dir)!r}"
        self.holder, self.name = holder, name
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        path = self.dir / self.name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"{self.what} is in use by {self.holder} pid {holder}; wait for it to finish or use "
                            "another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (recursively through dicts, lists, tuples)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_line(record: dict) -> str:
    """One strict JSON line (non-finite numbers as ``null``), newline-terminated."""
    return json.dumps(json_safe(record), allow_nan=False) + "\n"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` on a temporary file in the same directory, fsync, rename.

    On failure the temporary file is removed, ``path`` keeps its previous content and :class:`WriteFailed` names
    the file and the reason (one line, e.g. ``No space left on device``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError):
            kept = " (its previous version is kept)" if path.exists() else ""
            raise WriteFailed(f"cannot write {str(path)!r}: {e.strerror or e}{kept}") from None
        raise
