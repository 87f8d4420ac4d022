"""Validation of layer widths, shared by every architecture whose widths are constructor arguments."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_width", "block_widths"]


def check_width(name: str, width: object) -> None:
    """A width must be a positive int; the error names the argument."""
    if isinstance(width, bool) or not isinstance(width, int):
        raise TypeError(f"{name} must be an int, got {type(width).__name__}")
    if width < 1:
        raise ValueError(f"{name} must be at least 1, got {width}")


def block_widths(inner_widths: Sequence[int] | None, defaults: Sequence[int]) -> tuple[int, ...]:
    """One inner width per residual block: ``inner_widths`` checked against ``defaults``' length, or the defaults."""
    widths = tuple(defaults if inner_widths is None else inner_widths)
    if len(widths) != len(defaults):
        raise ValueError(f"inner_widths must give {len(defaults)} widths (one per block), got {len(widths)}")
    for index, width in enumerate(widths):
        check_width(f"inner_widths[{index}]", width)
    return widths
