"""Opening files that may not be what their name says: a FIFO, a device, a socket or a symbolic link in place of a file.

A FIFO blocks a reader forever, ``/dev/zero`` never ends, and a symbolic link in a run
directory would make a step read, truncate or replace a file elsewhere. Every file this
package reads from a user or a run directory is checked here first: it must be a regular
file, and where the caller forbids links (the run directory's own files) not a link either.
Opening uses ``O_NONBLOCK`` so that even a file swapped for a FIFO after the check cannot block.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

__all__ = ["SpecialFileError", "check_regular", "open_regular", "read_regular", "sha256_of"]

_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
          stat.S_IFSOCK: "socket", stat.S_IFDIR: "directory", stat.S_IFLNK: "symbolic link"}


class SpecialFileError(ValueError):
    """A path that must name a regular file names a FIFO, a device, a socket, a directory or a forbidden symbolic link."""


def _refuse(path: str | os.PathLike[str], mode: int, what: str) -> SpecialFileError:
    kind = _KINDS.get(stat.S_IFMT(mode), "special file")
    if kind == "symbolic link":
        return SpecialFileError(f"{what} {str(path)!r} is a symbolic link: refusing to read, write or replace "
                                "anything through it (replace it with the file itself).")
    return SpecialFileError(f"{what} {str(path)!r} is a {kind}, not a regular file: refusing to read it.")


def check_regular(path: str | os.PathLike[str], *, what: str = "file", follow_links: bool = True) -> os.stat_result:
    """The ``stat`` of ``path`` once it is known to be a regular file (and, unless ``follow_links``, not a link).

    Raises:
        SpecialFileError: it is a FIFO, device, socket, directory, or a link where links are refused.
        FileNotFoundError: it does not exist.
    """
    status = os.stat(path) if follow_links else os.lstat(path)
    if not stat.S_ISREG(status.st_mode):
        raise _refuse(path, status.st_mode, what)
    return status


def open_regular(path: str | os.PathLike[str], flags: int = os.O_RDONLY, *, what: str = "file",
                 follow_links: bool = True, mode: int = 0o666) -> int:
    """A descriptor of ``path`` opened with ``flags``, refused (and closed) unless it is a regular file.

    With ``follow_links=False`` the open itself refuses a link (``O_NOFOLLOW``), so a link
    made between a check and the open is refused too; ``O_CREAT`` then creates a regular file.

    Raises:
        SpecialFileError: see :func:`check_regular`.
    """
    extra = os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow_links else os.O_NOFOLLOW)
    try:
        descriptor = os.open(path, flags | extra, mode)
    except OSError as error:
        if not follow_links and os.path.islink(path):  # ELOOP (or EMLINK on some systems)
            raise _refuse(path, stat.S_IFLNK, what) from None
        if error.errno == errno.EISDIR:
            raise _refuse(path, stat.S_IFDIR, what) from None
        raise
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode):
        os.close(descriptor)
        raise _refuse(path, status.st_mode, what)
    os.set_blocking(descriptor, True)
    return descriptor


def read_regular(path: str | os.PathLike[str], *, what: str = "file", follow_links: bool = True,
                 limit: int | None = None) -> bytes:
    """The bytes of a regular file, refusing special files (see :func:`open_regular`) and files over ``limit`` bytes.

    Raises:
        SpecialFileError: not a regular file, or larger than ``limit``.
    """
    descriptor = open_regular(path, what=what, follow_links=follow_links)
    with os.fdopen(descriptor, "rb") as handle:
        if limit is not None and os.fstat(handle.fileno()).st_size > limit:
            raise SpecialFileError(f"{what} {str(Path(path))!r} is larger than {limit} bytes: refusing to read it.")
        data = handle.read() if limit is None else handle.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise SpecialFileError(f"{what} {str(Path(path))!r} is larger than {limit} bytes: refusing to read it.")
    return data


def sha256_of(path: str | os.PathLike[str], *, what: str = "file", follow_links: bool = True,
              limit: int | None = None) -> str:
    """The SHA-256 of a regular file's content, read in 1 MiB blocks (see :func:`open_regular` for what is refused).

    With ``limit``, a file of more than ``limit`` bytes is refused, and never more than
    ``limit + 1`` bytes are read even from a file that grows while it is hashed.

    Raises:
        SpecialFileError: not a regular file (or a link, unless ``follow_links``), or larger than ``limit``.
    """
    digest = hashlib.sha256()
    with os.fdopen(open_regular(path, what=what, follow_links=follow_links), "rb") as handle:
        if limit is not None and os.fstat(handle.fileno()).st_size > limit:
            raise SpecialFileError(f"{what} {str(Path(path))!r} is larger than {limit} bytes: refusing to read it.")
        left = None if limit is None else limit + 1
        while left is None or left > 0:
            block = handle.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            digest.update(block)
            left = None if left is None else left - len(block)
        if left == 0:
            raise SpecialFileError(f"{what} {str(Path(path))!r} is larger than {limit} bytes: refusing to read it.")
    return digest.hexdigest()
