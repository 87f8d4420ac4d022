"""A fit's resumable state on disk: guide parameters, optimizer moments, random streams, progress.

:func:`pyro_dirichlet.infer.fit.fit` writes a :class:`FitCheckpoint` every few steps and at the
end of each epoch, and resumes from one when it finds a matching file. The file holds only
tensors and plain Python values (``torch.save``, read back with ``weights_only=True``), so
loading one never runs pickled code, and it is written atomically, so a killed process
leaves the previous checkpoint or the new one, never half a file.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.optim
import pyro.util
import torch

from pyro_dirichlet.io.atomic import atomic_write
from pyro_dirichlet.io.regular_files import check_regular

__all__ = ["CHECKPOINT_FORMAT", "CheckpointWriter", "FitCheckpoint"]

#: Version of the file layout; a file written with another layout is refused, not misread.
CHECKPOINT_FORMAT = 1


@dataclass
class FitCheckpoint:
    """Everything a fit needs to continue exactly where it stopped.

    Attributes:
        step: completed SVI steps.
        elbo: the ELBO of each completed step.
        seconds: fitting time spent so far, over every run that contributed.
        params: every *unconstrained* parameter of the fit's guide and prior (an autoguide's,
            a learnable prior's) by param-store name (for a
            concentration, its logarithm), so a resumed fit starts from the same bits.
        optimizer: ``PyroOptim.get_state()``: per parameter, the torch optimizer's state dict.
        rng: the global random streams Pyro draws from (torch, Python, NumPy and, on a GPU,
            CUDA), in the form :meth:`capture_rng` gives.
        generator: state of the minibatch-order generator at the start of the epoch that
            step ``step`` belongs to; replaying that epoch's permutation and skipping its
            first ``step % steps_per_epoch`` batches puts the data order where it was.
        layers: ``(name, channels)`` of every switched layer.
        config: the fit settings that must match for a resume (see :meth:`mismatches`).
        format: :data:`CHECKPOINT_FORMAT` of the writer.
        kept: the kept sets of the convergence monitor's last check
            (:class:`~pyro_dirichlet.infer.convergence.ConvergenceMonitor`), ``{}`` before the
            first; files written before it existed read as ``{}``.

    Example:
        >>> checkpoint = FitCheckpoint.load("fit.ckpt")  # doctest: +SKIP
        >>> checkpoint.step, checkpoint.elbo[-1]  # doctest: +SKIP
        (120, -4213.5)
    """

    step: int
    elbo: list[float]
    seconds: float
    params: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    generator: torch.Tensor
    layers: list[tuple[str, int]]
    config: dict[str, Any]
    format: int = CHECKPOINT_FORMAT
    kept: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def capture(
        cls,
        *,
        step: int,
        elbo: Iterable[float],
        seconds: float,
        param_names: Iterable[str],
        optim: pyro.optim.PyroOptim,
        generator: torch.Tensor,
        layers: Iterable[tuple[str, int]],
        config: Mapping[str, Any],
        kept: Mapping[str, list[int]] | None = None,
    ) -> FitCheckpoint:
        """Copy the live fit state (param store, optimizer, random streams) into a checkpoint.

        Every tensor is cloned to the CPU: the optimizer updates its moments in place, so a
        checkpoint kept in memory (for Ctrl-C) must not change with the next step.
        """
        store = dict(pyro.get_param_store().named_parameters())
        return cls(
            step=int(step),
            elbo=[float(value) for value in elbo],
            seconds=float(seconds),
            params={name: store[name].detach().cpu().clone() for name in param_names},
            optimizer=_cpu_copy(optim.get_state()),
            rng=cls.capture_rng(),
            generator=generator.clone(),
            layers=[(str(name), int(channels)) for name, channels in layers],
            config=dict(config),
            kept={str(layer): [int(i) for i in values] for layer, values in (kept or {}).items()},
        )

    @staticmethod
    def capture_rng() -> dict[str, Any]:
        """Pyro's global random streams in a form ``torch.load(weights_only=True)`` accepts.

        ``pyro.util.get_rng_state`` holds NumPy's state as an array inside a tuple, which the
        safe loader refuses; here it becomes a tensor plus plain numbers.
        """
        state = pyro.util.get_rng_state()
        name, keys, position, has_gauss, cached = state["numpy"]
        rng: dict[str, Any] = {
            "torch": state["torch"],
            "random": state["random"],
            "numpy": {
                "name": str(name),
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "position": int(position),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return rng

    def restore(self, optim: pyro.optim.PyroOptim, device: torch.device) -> None:
        """Put the checkpoint's parameters, optimizer state and random streams back.

        The parameters replace those in Pyro's param store, which must already hold every
        one of them (the fit creates them first), so each keeps the constraint its guide or
        prior declared; the optimizer state waits in ``optim`` until the first step meets
        each parameter (``PyroOptim.set_state``).

        Raises:
            ValueError: a checkpointed parameter the param store does not hold.
        """
        store = pyro.get_param_store()
        state = store.get_state()
        missing = sorted(set(self.params) - set(state["params"]))
        if missing:
            raise ValueError(f"the param store has no {missing}: create the fit's parameters before restoring a checkpoint.")
        # set_state takes unconstrained values as they are: no exp/log round trip to lose bits.
        state["params"].update({name: value.to(device).requires_grad_() for name, value in self.params.items()})
        store.set_state(state)
        optim.set_state(self.optimizer)
        numpy_state = self.rng["numpy"]
        pyro.util.set_rng_state(
            {
                "torch": self.rng["torch"],
                "random": _as_tuples(self.rng["random"]),
                "numpy": (
                    numpy_state["name"],
                    numpy_state["keys"].numpy().astype(np.uint32),
                    numpy_state["position"],
                    numpy_state["has_gauss"],
                    numpy_state["cached_gaussian"],
                ),
            }
        )
        if "cuda" in self.rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.rng["cuda"])

    def mismatches(self, layers: Iterable[tuple[str, int]], config: Mapping[str, Any]) -> list[str]:
        """Sentences naming every way this checkpoint differs from the fit about to run.

        Args:
            layers: ``(name, channels)`` of the fit's switched layers.
            config: the fit's settings that must match (those not about progress or length).
        """
        differences = []
        layers = [(str(name), int(channels)) for name, channels in layers]
        if layers != [tuple(layer) for layer in self.layers]:
            differences.append(f"layers (name, channels) {self.layers} in the checkpoint, {layers} now")
        for key in sorted(set(self.config) | set(config)):
            saved, now = self.config.get(key, "<absent>"), config.get(key, "<absent>")
            if saved != now:
                differences.append(f"{key} {saved!r} in the checkpoint, {now!r} now")
        return differences

    @classmethod
    def load_matching(
        cls, path: str | os.PathLike[str], *, layers: Iterable[tuple[str, int]], config: Mapping[str, Any]
    ) -> FitCheckpoint | None:
        """The checkpoint at ``path`` if the file exists, ``None`` if not.

        Raises:
            ValueError: the file belongs to another fit (different layers or settings); the
                message names the file and every difference.
        """
        if not os.path.lexists(path):
            return None
        checkpoint = cls.load(path)
        differences = checkpoint.mismatches(layers, config)
        if differences:
            raise ValueError(
                f"checkpoint {path} belongs to a different fit and cannot be resumed: "
                + "; ".join(differences)
                + ". Delete it or pass another checkpoint path."
            )
        return checkpoint

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the checkpoint to ``path`` atomically (its directory must exist)."""
        with atomic_write(path, "wb") as handle:
            torch.save(asdict(self), handle)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FitCheckpoint:
        """Read a checkpoint written by :meth:`save`; only tensors and plain values are unpickled.

        Raises:
            ValueError: the file is not a fit checkpoint of this format.
            SpecialFileError: it is a symbolic link, a FIFO, a device or anything but a regular
                file (refused unread: a checkpoint is a file the fit wrote itself).
        """
        path = Path(path)
        check_regular(path, what="checkpoint", follow_links=False)
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise ValueError(f"checkpoint {path} is not a readable fit checkpoint: {error}") from error
        expected = {item.name for item in fields(cls)}
        if isinstance(record, dict):
            record.setdefault("kept", {})  # written before the convergence monitor kept its sets
        if not isinstance(record, dict) or set(record) != expected:
            raise ValueError(f"checkpoint {path} is not a fit checkpoint (keys {sorted(record) if isinstance(record, dict) else type(record).__name__}).")
        if record["format"] != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {path} has format {record['format']!r}, this version reads format {CHECKPOINT_FORMAT}.")
        problem = _malformed(record)
        if problem:
            raise ValueError(f"checkpoint {path} is not a fit checkpoint: {problem}.")
        record["layers"] = [tuple(layer) for layer in record["layers"]]
        return cls(**record)


class CheckpointWriter:
    """When a fit writes its checkpoint: every ``every`` steps, at each epoch's end, and on Ctrl-C.

    After each completed step the fit calls :meth:`completed`, which keeps a snapshot of that
    step in memory (so Ctrl-C in the middle of the next step, with the guide half-updated,
    can still write a whole state) and writes it when it is due; :meth:`flush` writes the
    snapshot if the file is older.

    Args:
        path: the checkpoint file.
        every: steps between writes, or ``None`` for epoch ends only.
        steps_per_epoch: minibatches per epoch.
        param_names: the param-store names of every parameter of the fit's guide and prior.
        optim: the fit's optimizer.
        layers: ``(name, channels)`` of the switched layers.
        config: the settings a resume must match.
        saved_step: the step the file already holds (0 for a new fit).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        every: int | None,
        steps_per_epoch: int,
        param_names: Iterable[str],
        optim: pyro.optim.PyroOptim,
        layers: Iterable[tuple[str, int]],
        config: Mapping[str, Any],
        saved_step: int = 0,
    ) -> None:
        self.path = path
        self.every = every
        self.steps_per_epoch = steps_per_epoch
        self.param_names = list(param_names)
        self.optim = optim
        self.layers = list(layers)
        self.config = dict(config)
        self.saved_step = saved_step
        self.latest: FitCheckpoint | None = None

    def completed(
        self, *, elbo: list[float], seconds: float, generator: torch.Generator, epoch_start: torch.Tensor,
        kept: Mapping[str, list[int]] | None = None,
    ) -> None:
        """Record the step just completed (``len(elbo)``) and write it if due.

        Args:
            elbo: the ELBO history so far.
            seconds: fitting time so far.
            generator: the minibatch-order generator.
            epoch_start: the generator's state when this epoch's permutation was drawn.
        """
        step = len(elbo)
        epoch_done = step % self.steps_per_epoch == 0
        self.latest = FitCheckpoint.capture(
            step=step,
            elbo=elbo,
            seconds=seconds,
            param_names=self.param_names,
            optim=self.optim,
            # After an epoch's last batch the generator already stands at the next epoch's start.
            generator=generator.get_state() if epoch_done else epoch_start,
            layers=self.layers,
            config=self.config,
            kept=kept,
        )
        if epoch_done or (self.every is not None and step % self.every == 0):
            self.flush()

    def flush(self) -> None:
        """Write the latest completed step, unless the file already holds it."""
        if self.latest is not None and self.latest.step > self.saved_step:
            self.latest.save(self.path)
            self.saved_step = self.latest.step


def _malformed(record: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a loaded checkpoint record, or ``None``: each of the right type and consistent."""
    step, elbo, seconds = record["step"], record["elbo"], record["seconds"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"its step {step!r} is not a count of steps"
    if not isinstance(elbo, list) or len(elbo) != step or not all(isinstance(v, float) for v in elbo):
        return f"its ELBO history is not {step} numbers, one per step"
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        return f"its seconds {seconds!r} is not a duration"
    if not isinstance(record["params"], dict) or not all(
            isinstance(name, str) and isinstance(value, torch.Tensor) and value.layout == torch.strided
            and value.is_floating_point() and bool(torch.isfinite(value).all()) for name, value in record["params"].items()):
        return "its parameters are not finite dense tensors by name"
    generator = record["generator"]
    if not isinstance(generator, torch.Tensor) or generator.dtype != torch.uint8 or generator.dim() != 1:
        return "its generator state is not a byte tensor"
    rng = record["rng"]
    if not isinstance(rng, dict) or not {"torch", "random", "numpy"} <= set(rng) or not isinstance(rng["torch"], torch.Tensor) \
            or rng["torch"].dtype != torch.uint8 or not isinstance(rng["numpy"], dict):
        return "its random states are not those of torch, Python and NumPy"
    if not isinstance(record["layers"], list) or not all(
            isinstance(layer, (list, tuple)) and len(layer) == 2 and isinstance(layer[0], str) and isinstance(layer[1], int)
            for layer in record["layers"]):
        return "its layers are not (name, channels) pairs"
    if not isinstance(record["config"], dict) or not isinstance(record["optimizer"], dict):
        return "its config or optimizer state is not a mapping"
    return None


def _cpu_copy(tree: Any) -> Any:
    """Clone every tensor of a nested dict/list/tuple onto the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().clone()
    if isinstance(tree, Mapping):
        return {key: _cpu_copy(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu_copy(value) for value in tree)
    return tree


def _as_tuples(tree: Any) -> Any:
    """``random.setstate`` wants tuples all the way down; a save/load may hand back lists."""
    if isinstance(tree, (list, tuple)):
        return tuple(_as_tuples(value) for value in tree)
    return tree
