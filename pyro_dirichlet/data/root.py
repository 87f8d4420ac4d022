"""Where the data sets are read from: the ``--data-dir`` flag, then ``$PYRO_DIRICHLET_DATA``, then ``./data``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV_VAR", "resolve_data_root"]

DATA_ENV_VAR = "PYRO_DIRICHLET_DATA"
"""Environment variable naming the folder that holds the data sets (e.g. ``MNIST/raw``)."""

_DEFAULT_DATA_DIR = Path("data")


def resolve_data_root(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """Decide which folder to read data sets from.

    The order is: the ``--data-dir`` command-line flag (passed here as ``data_dir``), then
    the ``PYRO_DIRICHLET_DATA`` environment variable, then ``./data``. Only the ``./data``
    fallback may download: a folder the user named explicitly is never written to.

    Args:
        data_dir: folder given on the command line, or ``None``.

    Returns:
        ``(root, may_download)``.

    Example:
        >>> root, may_download = resolve_data_root("/srv/data")
        >>> str(root), may_download
        ('/srv/data', False)
    """
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir must be a path or None, got {type(data_dir).__name__}")
        return Path(data_dir).expanduser(), False
    from_env = os.environ.get(DATA_ENV_VAR)
    # An empty variable (``PYRO_DIRICHLET_DATA= cmd``) means "unset", not "the cwd".
    if from_env:
        return Path(from_env).expanduser(), False
    return _DEFAULT_DATA_DIR, True

