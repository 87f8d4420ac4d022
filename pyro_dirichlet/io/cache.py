"""Where the project caches what it computes once: decoded data sets, trained baselines.

One rule for every kind of cached file, so ``--cache-dir`` and ``PYRO_DIRICHLET_CACHE``
mean the same thing to the data loaders and to the baseline cache.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV_VAR", "DEFAULT_CACHE_ROOT", "resolve_cache_dir"]

CACHE_ENV_VAR = "PYRO_DIRICHLET_CACHE"
"""Environment variable naming the cache folder."""

DEFAULT_CACHE_ROOT = Path("~/.cache/pyro-dirichlet")


def resolve_cache_dir(kind: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds cached files of ``kind``.

    The order is: ``cache_dir`` (the ``--cache-dir`` flag), then ``$PYRO_DIRICHLET_CACHE``,
    both used as they are, then ``~/.cache/pyro-dirichlet/<kind>``. A folder the user names
    is used as is because that is what ``--cache-dir`` has always meant for baselines; files
    of different kinds have distinct names (``lenet5-mnist-<key>.safetensors``,
    ``cifar10-jpeg-<key>.safetensors``), so they can share it. The folder is not created.

    Args:
        kind: what is cached, e.g. ``"baselines"`` or ``"datasets"``; names the subfolder of
            the default location.
        cache_dir: folder given on the command line, or ``None``.

    Example:
        >>> resolve_cache_dir("datasets", "/tmp/cache")
        PosixPath('/tmp/cache')
        >>> resolve_cache_dir("datasets").parts[-2:]  # doctest: +SKIP
        ('pyro-dirichlet', 'datasets')
    """
    if not isinstance(kind, str) or not kind or "/" in kind or kind in (".", ".."):
        raise ValueError(f"kind must be a plain folder name such as 'datasets', got {kind!r}")
    if cache_dir is not None:
        if not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(f"cache_dir must be a path or None, got {type(cache_dir).__name__}")
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_ENV_VAR)
    # An empty variable means "unset", not "the current directory".
    if from_env:
        return Path(from_env).expanduser()
    return (DEFAULT_CACHE_ROOT / kind).expanduser()
