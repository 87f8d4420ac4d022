"""The arithmetic precision of every compute step: ``auto``, ``fp32`` or ``bf16`` autocast.

``bf16`` runs a network's matrix products and convolutions in bfloat16 under
:func:`torch.autocast` while parameters, optimiser state, BatchNorm's running statistics,
losses and the ELBO stay float32 (callers cast a network's output with ``.float()`` before
a loss). ``auto`` picks ``bf16`` where the device has native bfloat16 matrix units -- CUDA
compute capability 8.0 or above (A100, H100), CPUs with AMX or AVX-512 BF16 (Sapphire
Rapids and later, Zen 4) -- and ``fp32`` elsewhere, where emulated bfloat16 would be slower.
``fp32`` leaves the computation exactly as it is without this module.

Example:
    >>> with autocast("fp32", "cpu"):  # no autocast at all
    ...     pass
    >>> resolve_precision("bf16", "cpu")
    'bf16'
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["PRECISIONS", "DEFAULT_PRECISION", "LIBRARY_PRECISION", "check_precision", "native_bf16", "resolve_precision", "autocast"]

#: The names ``--precision`` and the ``precision`` fields take.
PRECISIONS = ("auto", "fp32", "bf16")
#: What the command line uses unless told otherwise.
DEFAULT_PRECISION = "auto"
#: What the library's configs and measurements use unless told otherwise: the computation exactly
#: as written, so calling a function never changes its numbers with the machine it runs on.
LIBRARY_PRECISION = "fp32"
# /proc/cpuinfo flags of native bfloat16 matrix arithmetic.
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def check_precision(precision: object, name: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` naming ``name``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    return precision  # type: ignore[return-value]


@functools.cache
def _cpu_has_native_bf16() -> bool:
    try:
        flags = {flag for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                 for flag in line.partition(":")[2].split()}
        return any(flag in flags for flag in _CPU_BF16_FLAGS)
    except OSError:  # not Linux: ask torch (private helpers, present since torch 2.2)
        probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        return any(probe() for probe in probes if probe is not None)


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (and so faster than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return _cpu_has_native_bf16()
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"fp32"`` or ``"bf16"``: what ``precision`` means on ``device`` (``"auto"`` asks :func:`native_bf16`)."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[str]:
    """Run the block in ``precision`` on ``device``; yields the resolved precision (``"fp32"`` or ``"bf16"``).

    ``fp32`` enters no autocast (the block runs exactly as without it); ``bf16`` enters
    ``torch.autocast(device.type, dtype=torch.bfloat16)``.
    """
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        yield resolved
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        yield resolved
