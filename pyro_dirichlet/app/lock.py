"""The run directory's lock: one command at a time changes a run directory, and a second one learns who holds it.

An exclusive ``fcntl.flock`` on the file :data:`LOCK` inside the directory, taken without
waiting. The holder writes its PID into the file (and empties it when done), so the refused
command can name it; the kernel releases the lock of a killed holder by itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from pyro_dirichlet.io.regular_files import open_regular

__all__ = ["LOCK", "RunDirectoryLockedError", "exclusive"]

#: The lock file; it holds the holder's PID, and is empty otherwise.
LOCK = ".lock"

# (directory, thread) -> how deep this thread holds its lock: a step called inside another
# step's lock (``pyro-dirichlet run``) does not lock itself out, while two threads do exclude
# each other (flock locks belong to open files, not processes).
_HELD: dict[tuple[str, int], int] = {}


class RunDirectoryLockedError(ValueError):
    """Another command holds the run directory's lock."""


@contextlib.contextmanager
def exclusive(directory: Path) -> Iterator[bool]:
    """Hold ``directory``'s lock for the block, creating the directory if needed.

    Yields ``True`` where this call took the lock, ``False`` where this thread already
    held it or where this is a ``torchrun`` rank other than 0 (rank 0 holds it for all:
    the other ranks write nothing). A directory this call created is removed again when the
    block fails and leaves nothing in it but the lock file.

    Raises:
        RunDirectoryLockedError: another process (or thread) holds the lock; the message names its PID.
        SpecialFileError: the lock file is a symbolic link, a FIFO or anything but a regular file.
    """
    key = (str(directory.resolve()), threading.get_ident())
    if key in _HELD or int(os.environ.get("RANK", "0") or 0) != 0:
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield False
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        return
    created = _first_missing(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        # O_NOFOLLOW and a regular file only: a .lock linked to a file elsewhere is never truncated or written.
        descriptor = open_regular(directory / LOCK, os.O_RDWR | os.O_CREAT, what="the run directory's lock file",
                                  follow_links=False)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(descriptor)
        raise RunDirectoryLockedError(
            f"run directory {str(directory)!r} is in use by process {holder} (another pyro-dirichlet command "
            "holds its lock): wait for it to finish or stop it, then run this command again.") from None
    with contextlib.suppress(OSError):  # a full disk may refuse even a PID; the lock holds without it
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = 1
    failed = True
    try:
        yield True
        failed = False
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.ftruncate(descriptor, 0)
        os.close(descriptor)
        if failed and created is not None and [p.name for p in directory.iterdir()] == [LOCK]:
            (directory / LOCK).unlink()
            shutil.rmtree(created, ignore_errors=True)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what ``mkdir(parents=True)`` would create)."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing = folder
    return missing
