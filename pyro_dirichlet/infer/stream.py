"""SVI minibatches streamed from a ``DataLoader`` or any iterable of batches, never preloaded.

:func:`pyro_dirichlet.infer.fit.fit` reads a ``Split`` by slicing it on the device; any
other data comes through :class:`StreamedBatches`, which holds one batch at a time (plus
what the loader's workers prefetch). The loader draws its order from a random stream of
its own (:attr:`StreamedBatches.generator`, seeded by the fit), never from the one the SVI
draws its switches from: the switch draws do not depend on how the data is shuffled, and a
checkpoint that stores that stream replays an epoch's order exactly.

Under ``torchrun`` a ``DataLoader`` over a map-style data set is rebuilt around a seeded
``DistributedSampler`` (``set_epoch`` every epoch), so each rank reads only its shard of
each global minibatch; any other iterable is read whole by every rank, each keeping its
share of every batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler

from pyro_dirichlet.data import Batch, count_batches, iterate_batches
from pyro_dirichlet.infer.distributed import DataParallel

__all__ = ["Step", "StreamedBatches", "distributed_loader"]

T = TypeVar("T")


class Step(NamedTuple):
    """One SVI step's data on the fit device.

    Attributes:
        images: this process's inputs.
        labels: their targets.
        subsample: what ``pyro.plate(subsample=...)`` takes; only its length matters (the
            plate scales the likelihood by ``size / len(subsample)``).
        weight: this rank's share of the global minibatch under ``torchrun`` (see
            :meth:`DataParallel.shard`), ``None`` in a single process.
    """

    images: Tensor
    labels: Tensor
    subsample: Tensor
    weight: float | None


def distributed_loader(loader: DataLoader, parallel: DataParallel, *, seed: int) -> DataLoader | None:
    """``loader`` rebuilt to read this rank's shard: a ``DistributedSampler`` and ``batch_size / world_size``.

    The global minibatch keeps the loader's ``batch_size`` (as a ``Split`` fit shares its
    minibatches), so the fit takes as many steps as in one process and, with the same
    sampler order, the same steps. The sampler shuffles (seeded with ``seed``) when the
    loader did; like every ``DistributedSampler`` it repeats a few examples when the data
    size is not a multiple of the world size.

    Returns:
        the rebuilt loader; ``loader`` itself when its sampler already is a
        ``DistributedSampler``; ``None`` when a sampler cannot shard it (an iterable data
        set, or batches from a ``batch_sampler`` of the user's), so every rank reads it whole.

    Raises:
        ValueError: ``batch_size`` is not a multiple of the number of processes.
    """
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        return None
    if loader.batch_size % parallel.world_size:
        raise ValueError(
            f"the DataLoader's batch_size {loader.batch_size} must be a multiple of the {parallel.world_size} "
            "processes, which share each minibatch."
        )
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=parallel.world_size,
        rank=parallel.rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size // parallel.world_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        prefetch_factor=loader.prefetch_factor if loader.num_workers else None,
        persistent_workers=loader.persistent_workers,
    )


class StreamedBatches:
    """A fit's minibatches from a loader: one epoch at a time, on the fit device.

    Args:
        data: a ``DataLoader`` or any re-iterable of ``(inputs, targets)`` batches (a list,
            an object whose ``__iter__`` starts afresh); not a one-shot iterator.
        device: where the batches go.
        seed: seed of :attr:`generator`, the stream the loader shuffles from, and of the
            ``DistributedSampler`` under ``torchrun``.
        parallel: this process's place under ``torchrun``, or ``None``.
        name: what the caller calls ``data``, for messages.

    Attributes:
        generator: the loader's own random stream (a CPU ``torch.Generator`` whose state is
            swapped in around every read of the loader).
        steps_per_epoch: batches per epoch, or ``None`` when the loader has no ``len()``.

    Raises:
        TypeError: ``data`` is not a re-iterable of batches.
    """

    def __init__(self, data: Iterable, *, device: torch.device, seed: int, parallel: DataParallel | None, name: str = "train") -> None:
        if isinstance(data, (Tensor, str, bytes)) or not isinstance(data, Iterable):
            raise TypeError(f"{name} must be a Split or an iterable of (inputs, targets) batches such as a DataLoader, got {type(data).__name__}.")
        if isinstance(data, Iterator):
            raise TypeError(f"{name} is a one-shot iterator; pass something that can be read once per epoch, such as a DataLoader or a list of batches.")
        self.name = name
        self.device = device
        self.parallel = parallel
        self.generator = torch.Generator().manual_seed(seed)
        sharded = distributed_loader(data, parallel, seed=seed) if parallel is not None and isinstance(data, DataLoader) else None
        # Sharded by a sampler: each rank reads its own batches. Otherwise, under torchrun,
        # every rank reads every batch and keeps its share.
        self.sharded = sharded is not None
        self.loader = sharded if sharded is not None else data
        self.steps_per_epoch = count_batches(self.loader, 1)

    def _read(self, read: Callable[[], T]) -> T:
        """Run ``read`` with the global torch stream set to :attr:`generator`'s, and put both back."""
        saved = torch.get_rng_state()
        torch.set_rng_state(self.generator.get_state())
        try:
            return read()
        finally:
            self.generator.set_state(torch.get_rng_state())
            torch.set_rng_state(saved)

    def first(self) -> Batch:
        """The first batch, read without moving any random stream (for shapes and checks).

        Raises:
            ValueError: the data holds no batch.
        """
        state = self.generator.get_state()
        batches = iterate_batches(self.loader, 1, shuffle=False, name=self.name)
        try:
            batch = self._read(lambda: next(batches, None))
        finally:
            batches.close()
            self.generator.set_state(state)
        if batch is None:
            raise ValueError(f"{self.name} ({type(self.loader).__name__}) holds no batches: the switches need data to fit.")
        return batch

    def epoch(self, epoch: int, *, skip: int = 0) -> Iterator[Step]:
        """This process's steps of epoch ``epoch`` (0-based), after the first ``skip`` batches.

        The skipped batches are read (and dropped), so a resumed epoch draws its order and
        its loader's randomness exactly as the interrupted one did.

        Raises:
            ValueError: the epoch yielded no batches, or more than the loader's ``len()``.
        """
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        batches = iterate_batches(self.loader, 1, shuffle=False, name=self.name)
        position = 0
        try:
            while (batch := self._read(lambda: next(batches, None))) is not None:
                position += 1
                if self.steps_per_epoch is not None and position > self.steps_per_epoch:
                    # A loader whose len() undercounts would otherwise run an epoch (and the fit) forever.
                    raise ValueError(f"{self.name} ({type(self.loader).__name__}) yielded more batches in epoch "
                                     f"{epoch + 1} than its len() of {self.steps_per_epoch}: give a loader whose "
                                     "len() is its number of batches.")
                if position > skip:
                    yield self._step(batch)
        finally:
            batches.close()
        if position == 0:
            raise ValueError(f"{self.name} ({type(self.loader).__name__}) yielded no batches in epoch {epoch + 1}.")

    def _step(self, batch: Batch) -> Step:
        images, labels = batch.inputs.to(self.device), batch.targets.to(self.device)
        count = len(labels)
        if self.parallel is None:
            return Step(images, labels, torch.arange(count, device=self.device), None)
        if self.sharded:
            # Each rank holds its own part of the global minibatch; its share is its count over the total.
            total = self.parallel.all_reduce_sum(float(count), self.device)
            return Step(images, labels, torch.arange(count, device=self.device), count / total)
        part, weight = self.parallel.shard(torch.arange(count, device=self.device))
        return Step(images[part], labels[part], torch.arange(len(part), device=self.device), weight)
