"""Faster CPU max-pooling for the frozen layers that need no gradient during a fit.

PyTorch's CPU ``max_pool2d`` on a channels-first tensor computes an argmax index for every
output, with or without autograd, in a kernel that is about 10x slower here than an
element-wise maximum over the window's ``k * k`` strided slices (LeNet-5's first pooling,
``(128, 20, 24, 24)``: 7.9 ms against 0.8 ms on one thread). In a fit, the layers in front of
the first switch depend on the images only, so nothing there needs a gradient or an index:
:class:`NoGradMaxPool` gives their non-overlapping max-pooling that maximum instead. The
values are the same, bit for bit (a maximum is exact); any pooling that needs a gradient,
overlaps, pads, dilates, rounds up, returns indices, or runs on another device or layout
is left to PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["NoGradMaxPool", "max_of_slices"]

# torch.nn.functional.max_pool2d's parameters after the input, in order, with defaults.
_PARAMETERS = (("kernel_size", None), ("stride", None), ("padding", 0), ("dilation", 1),
               ("ceil_mode", False), ("return_indices", False))


class NoGradMaxPool(TorchFunctionMode):
    """While active, ``F.max_pool2d`` (also through ``nn.MaxPool2d``) of a CPU tensor that
    needs no gradient, in a non-overlapping window without padding, runs as
    :func:`max_of_slices`; every other call goes to PyTorch unchanged.

    Example:
        >>> with NoGradMaxPool():  # doctest: +SKIP
        ...     logits = network(images)
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.max_pool2d:
            window = _plain_window(args, kwargs)
            if window is not None:
                return max_of_slices(args[0], window)
        return func(*args, **kwargs)


def max_of_slices(images: torch.Tensor, window: int) -> torch.Tensor:
    """``F.max_pool2d(images, window)`` as a maximum over the window's strided slices.

    Args:
        images: an ``(N, C, H, W)`` tensor.
        window: the square window, which is also the stride; rows and columns past the last
            whole window are dropped, as ``max_pool2d`` does.
    """
    height = images.shape[-2] // window * window
    width = images.shape[-1] // window * window
    pooled = images[..., 0:height:window, 0:width:window]
    for row in range(window):
        for column in range(window):
            if row or column:
                pooled = torch.maximum(pooled, images[..., row:height:window, column:width:window])
    return pooled


def _plain_window(args: tuple, kwargs: dict) -> int | None:
    """The window of a pooling call :func:`max_of_slices` reproduces exactly, else ``None``."""
    images, *rest = args
    options = dict(_PARAMETERS)
    options.update(zip((name for name, _ in _PARAMETERS), rest))
    options.update(kwargs)
    if not (
        isinstance(images, torch.Tensor)
        and images.device.type == "cpu"
        and images.dim() == 4
        and images.is_contiguous()
        and not (images.requires_grad and torch.is_grad_enabled())
        and images.dtype.is_floating_point
    ):
        return None
    window = _square(options["kernel_size"])
    stride = window if options["stride"] is None else _square(options["stride"])
    plain = (
        window is not None
        and stride == window
        and _square(options["padding"]) == 0
        and _square(options["dilation"]) == 1
        and not options["ceil_mode"]
        and not options["return_indices"]
        and images.shape[-2] >= window
        and images.shape[-1] >= window
    )
    return window if plain else None


def _square(value) -> int | None:
    """``2`` or ``(2, 2)`` -> 2; anything else (uneven pairs, tensors, an empty stride) -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1] and isinstance(value[0], int):
        return value[0]
    return None
