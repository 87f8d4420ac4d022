"""Data-parallel SVI over ``torch.distributed``: each process fits on its shard of every minibatch.

Launched by ``torchrun`` (gloo on CPU, NCCL on GPU), every rank draws the same minibatch
order and the same switch samples (same seed), computes the ELBO on its own slice of each
global minibatch, and the guide's gradients are summed across ranks with weights that make
the update equal the single-process update over the whole minibatch
(:class:`AllReduceGradients`, the optimiser ``pyro.infer.SVI`` is given). Every rank then
takes the same optimizer step, so the fitted guide is the same everywhere.

Example (``fit_switches.py`` calls :func:`init_from_environment`, then ``fit``)::

    torchrun --standalone --nproc_per_node 2 fit_switches.py
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import torch
import torch.distributed as dist
from pyro.optim import PyroOptim

from pyro_dirichlet.infer.optim import OptimWrapper

__all__ = ["AllReduceGradients", "DataParallel", "init_from_environment"]


def init_from_environment(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` describes in the environment, if there is one.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; ``None`` picks NCCL when CUDA is available and
            gloo otherwise.

    Returns:
        whether this process is now part of a process group (``False`` when not launched by
        ``torchrun``, i.e. ``WORLD_SIZE`` is unset).
    """
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if "WORLD_SIZE" not in os.environ:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return True


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel fit.

    Attributes:
        rank: this process's index, ``0 <= rank < world_size``; rank 0 is the main process
            (it shows progress and writes checkpoints).
        world_size: number of processes sharing each minibatch.

    Example:
        >>> DataParallel(rank=1, world_size=2).shard(torch.arange(5))
        (tensor([3, 4]), 0.4)
    """

    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if not (isinstance(self.world_size, int) and self.world_size >= 1):
            raise ValueError(f"world_size must be a positive integer, got {self.world_size!r}.")
        if not (isinstance(self.rank, int) and 0 <= self.rank < self.world_size):
            raise ValueError(f"rank must lie in [0, {self.world_size - 1}], got {self.rank!r}.")

    @classmethod
    def current(cls) -> DataParallel | None:
        """The running process group's place, or ``None`` outside one (or in a group of one)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size())

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """A CUDA device without an index becomes this process's own GPU (``LOCAL_RANK``).

        Raises:
            ValueError: the group runs NCCL, which reduces only GPU tensors, and ``device`` is not a GPU.
        """
        if device.type != "cuda" and dist.is_initialized() and dist.get_backend() == "nccl":
            raise ValueError(f"FitConfig.device is {str(device)!r}, but the process group uses NCCL, which needs CUDA; use gloo for a CPU fit.")
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank % torch.cuda.device_count())))
        return device

    def shard(self, indices: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's contiguous part of a global minibatch, and its share of the batch.

        The share is the weight of this rank's ELBO in the global one: a shard of ``b`` out of
        ``B`` examples computes a likelihood scaled by ``size / b`` (the data plate) and the
        whole KL, so ``b / B`` times it, summed over ranks, is the global ELBO -- likelihood
        scaled by ``size / B``, KL counted once -- even when the last batch divides unevenly.
        A rank left without examples (a last batch smaller than the world) still runs one
        example with weight 0, so every rank draws the same random numbers and joins every
        collective.
        """
        part = torch.tensor_split(indices, self.world_size)[self.rank]
        if len(part) == 0:
            return indices[:1], 0.0
        return part, len(part) / len(indices)

    def all_reduce_gradients(self, params: Sequence[torch.Tensor], weight: float) -> None:
        """Replace each parameter's ``.grad`` by the sum over ranks of ``weight`` times it.

        One collective for all gradients: they travel in one float64 buffer (the sum is
        then no less exact than one process's float32 gradient).

        Args:
            params: the parameters whose ``.grad`` to reduce, in the same order on every rank.
            weight: this rank's share of the global minibatch (see :meth:`shard`).
        """
        grads = [param.grad if param.grad is not None else torch.zeros_like(param) for param in params]
        if not grads:
            return
        buffer = torch.cat([grad.reshape(-1).to(torch.float64) for grad in grads])
        buffer.mul_(weight)
        dist.all_reduce(buffer)
        offset = 0
        for param, grad in zip(params, grads):
            size = grad.numel()
            param.grad = buffer[offset : offset + size].view_as(grad).to(grad.dtype)
            offset += size

    def all_reduce_loss(self, loss: float, weight: float, device: torch.device) -> float:
        """The global loss: the sum over ranks of ``weight`` times each rank's ``loss``.

        Args:
            loss: this rank's loss.
            weight: this rank's share of the global minibatch.
            device: where the collective's tensor lives (a CUDA device under NCCL).
        """
        buffer = torch.tensor([loss], dtype=torch.float64, device=device).mul_(weight)
        dist.all_reduce(buffer)
        return float(buffer[0])

    def all_reduce_sum(self, value: float, device: torch.device) -> float:
        """The sum over ranks of ``value`` (e.g. each rank's batch size, for its share of a streamed minibatch)."""
        buffer = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(buffer)
        return float(buffer[0])

    def barrier(self) -> None:
        """Wait for every rank (e.g. until all have read a checkpoint rank 0 may overwrite)."""
        dist.barrier()


class AllReduceGradients(OptimWrapper):
    """A :class:`~pyro.optim.PyroOptim` that all-reduces the gradients before ``optim`` steps.

    Given to ``pyro.infer.SVI`` in place of ``optim``: ``SVI.step`` computes this rank's loss
    and gradients, this wrapper replaces every gradient by the sum over ranks of
    :attr:`weight` times it, and ``optim`` then takes the same step on every rank.

    Args:
        optim: the optimiser that takes the steps.
        parallel: this process's place in the group.

    Attributes:
        weight: this rank's share of the current global minibatch (:meth:`DataParallel.shard`);
            set it before each step.

    Example:
        >>> indices, reduce.weight = parallel.shard(indices)  # doctest: +SKIP
        >>> SVI(model, guide, reduce, TraceMeanField_ELBO()).step(images[indices], labels[indices])  # doctest: +SKIP
    """

    def __init__(self, optim: PyroOptim, parallel: DataParallel) -> None:
        super().__init__(optim)
        self.parallel = parallel
        self.weight = 1.0 / parallel.world_size

    def __call__(self, params, *args, **kwargs) -> None:
        # SVI passes a set, ordered by memory address; the collective needs one order on every rank.
        store = pyro.get_param_store()
        ordered = sorted(params, key=store.param_name)
        self.parallel.all_reduce_gradients(ordered, self.weight)
        self.optim(ordered, *args, **kwargs)
