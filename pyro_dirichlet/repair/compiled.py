"""A training forward compiled by :func:`torch.compile`, with the eager module as its fallback.

Under bf16 autocast a CPU training step of a small BN network spends about half its time in
element-wise kernels (BatchNorm, ReLU, residual adds and their backward), each reading and
writing the whole activation; Inductor fuses them. A ResNet-20 training epoch on this
project's CPU (AMX, one thread; ``benchmarks/results/precision.json``): bf16 70 s eager,
52 s compiled; fp32 130 s and 108 s (LeNet-5's and VGG-16's epochs are no shorter). The
compilation itself costs 17-22 s the first time a network is seen (under a second from
Inductor's disk cache in later processes), so it pays for itself only over a long run: :class:`~pyro_dirichlet.repair.train.TrainConfig`
leaves it off unless asked.

Only full batches take the compiled path. A smaller last batch runs eagerly instead of
making Dynamo compile the graph again for its shape; the parameters, BatchNorm statistics
and autograd graph are the same module's either way. Where compilation fails (no C++
compiler, an operation Dynamo cannot trace), one warning says so and the run goes on eagerly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["CompiledForward"]


class CompiledForward:
    """``module(images)``, through ``torch.compile(module)`` for batches of ``batch_size`` examples.

    Example:
        >>> forward = CompiledForward(nn.Linear(4, 2), batch_size=8)  # doctest: +SKIP
        >>> forward(torch.randn(8, 4)).shape  # compiled
        torch.Size([8, 2])
        >>> forward(torch.randn(3, 4)).shape  # eager: a smaller last batch
        torch.Size([3, 2])
    """

    def __init__(self, module: nn.Module, batch_size: int, backend: str | Callable = "inductor") -> None:
        self.module = module
        self.batch_size = batch_size
        # dynamic=False: one static graph for the full batch; other sizes run eagerly.
        self._compiled = torch.compile(module, dynamic=False, backend=backend)
        self.failed: str | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.failed is not None or len(images) != self.batch_size:
            return self.module(images)
        try:
            return self._compiled(images)
        except Exception as error:  # noqa: BLE001 - any compiler failure: the eager module still trains
            self.failed = _reason(error)
            warnings.warn(f"torch.compile failed, training eagerly instead ({self.failed})", RuntimeWarning, stacklevel=2)
            return self.module(images)


def _reason(error: BaseException) -> str:
    """The innermost cause of a compiler failure, in one line (Dynamo wraps the backend's own error)."""
    while (inner := getattr(error, "inner_exception", None) or error.__cause__) is not None:
        error = inner
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
