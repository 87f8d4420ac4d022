"""Write files all at once or not at all, so a crash never leaves a half-written file behind.

Data goes to a temporary file in the target's directory, is flushed to disk, and is then
renamed onto the target with :func:`os.replace`, which is atomic on POSIX and Windows.
Imports only the standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_write", "atomic_path", "atomic_write_text", "atomic_write_json"]

_WRITE_MODES = {"w", "wt", "wb", "w+", "w+b", "wb+", "w+t", "wt+"}


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the ``with`` block succeeds.

    On success the data is flushed and fsynced, then renamed onto ``path``; readers see the
    old file or the new one, never a mix. If the block raises, the temporary file is removed,
    ``path`` is left as it was, and the exception propagates.

    Args:
        path: the file to write. Its directory must exist.
        mode: ``"wb"`` (default) or a text mode such as ``"w"``; only writing modes.
        encoding: text encoding for text modes; defaults to UTF-8 rather than the locale's.

    Example:
        >>> with atomic_write(tmp / "weights.bin") as f:  # doctest: +SKIP
        ...     f.write(b"...")
    """
    if mode not in _WRITE_MODES:
        raise ValueError(f"mode must be a writing mode such as 'wb' or 'w', got {mode!r}")
    binary = "b" in mode
    if binary and encoding is not None:
        raise ValueError(f"encoding must be None for binary mode {mode!r}, got {encoding!r}")
    with atomic_path(path) as temporary:
        with open(temporary, mode, encoding=None if binary else (encoding or "utf-8")) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path, beside ``path`` and with its suffix, that replaces ``path`` on success.

    For writers that want a file name rather than a file object (NetCDF, matplotlib). If the
    block raises, the temporary file is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_path(tmp / "posterior.nc") as temporary:  # doctest: +SKIP
        ...     tree.to_netcdf(temporary)
    """
    target = Path(path)
    temporary, descriptor = _create_temporary(target, suffix=target.suffix)
    os.close(descriptor)
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        # BaseException too: a KeyboardInterrupt must not leave the temporary file behind.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`).

    Example:
        >>> atomic_write_text(tmp / "notes.txt", "hello\\n")  # doctest: +SKIP
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    with atomic_write(path, "w", encoding=encoding) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON (indent 2, keys in insertion order) to ``path`` atomically.

    The object is serialised before the file is opened, so an unserialisable object raises
    ``TypeError`` without touching the disk.

    Example:
        >>> atomic_write_json(tmp / "spec.json", {"format_version": 1})  # doctest: +SKIP
    """
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write_text(path, text)


def _create_temporary(target: Path, suffix: str) -> tuple[Path, int]:
    # Same directory as the target, or os.replace could cross file systems and stop being
    # atomic. os.open with mode 0o666 gives the file the permissions open() would (after the
    # umask), unlike tempfile.mkstemp's 0o600.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}{suffix}")
        try:
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened on Windows.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
