"""The shared bench of the method studies: baselines, fits, pruned networks and their scores.

Every study in ``analysis/`` (criteria, ablation, tempering, allocation, uncertainty,
interpretability, reproduction) measures through these few functions, so a number in one
table means the same thing as in another: the same seeded baseline, the same fit, the same
plan -> fold -> surgery, the same fine-tuning with selection on the validation split.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import xarray as xr
from torch import nn

from pyro_dirichlet.baselines import get_model_entry, load_or_train_baseline
from pyro_dirichlet.io.atomic import atomic_write_json, atomic_write_text
from pyro_dirichlet.repair.calibrate import CalibrationConfig, calibrate
from pyro_dirichlet.data import DataSplits, Split
from pyro_dirichlet.repair.train import finetune
from pyro_dirichlet.infer.fit import FitConfig, FitResult, fit
from pyro_dirichlet.criteria.posterior import posterior_mean
from pyro_dirichlet.measure import Stopwatch, accuracy, count_flops, count_parameters
from pyro_dirichlet.pruner import Pruner
from pyro_dirichlet.pruning import prune_to_keep, switch_scales
from pyro_dirichlet.infer.switches import DirichletSwitches

__all__ = ["Study", "Fitted", "baseline", "fit_switches", "pruned_network", "score_pruned", "mean_sd", "keep_sizes"]


@dataclass
class Fitted:
    """One SVI fit of one baseline's switches and what the studies read from it."""

    switches: DirichletSwitches
    result: FitResult
    posterior: xr.DataTree
    means: dict[str, torch.Tensor]


_BASELINES: dict[tuple, nn.Module] = {}


def baseline(model: str, data: DataSplits, seed: int, train_epochs: int | None = None, device: str = "cpu") -> nn.Module:
    """The seeded baseline of ``model`` (trained once with its registry recipe, then cached on disk and here).

    ``train_epochs`` shortens the recipe for CPU runs of big models (a separate cache entry).
    """
    key = (model, seed, len(data.train), train_epochs, device)
    if key not in _BASELINES:
        recipe = get_model_entry(model).train
        if train_epochs is not None:
            recipe = dataclasses.replace(recipe, epochs=train_epochs)
        _BASELINES[key] = load_or_train_baseline(
            model, data, seed=seed, progress=False, train_config=recipe, device=device
        ).model.eval()
    return _BASELINES[key]


def fit_switches(
    network: nn.Module,
    data: DataSplits,
    *,
    seed: int,
    prior=1.0,
    train: Split | None = None,
    device: str = "cpu",
    layer_gain: bool = False,
    **fit_options,
) -> Fitted:
    """Fit switches on a copy of ``network`` (never modified) with :class:`FitConfig` defaults overridden by ``fit_options``.

    ``train`` replaces the training split, e.g. by one class's examples; ``layer_gain`` is
    :class:`DirichletSwitches`' option of that name.
    """
    example = data.train.images[:2].to(device)
    switches = DirichletSwitches(copy.deepcopy(network), example, prior=prior, layer_gain=layer_gain)
    config = FitConfig(**{"seed": seed, "device": device, "progress": False, **fit_options})
    result = fit(switches, data.train if train is None else train, config)
    posterior = result.posterior(seed=seed)
    return Fitted(switches, result, posterior, posterior_mean(posterior))


def pruned_network(
    network: nn.Module, keep: Mapping[str, list[int]], example: torch.Tensor, fold_means: Mapping[str, torch.Tensor] | None = None
) -> nn.Module:
    """``network`` (not modified) with only ``keep``'s channels; ``fold_means`` folds ``E[s]*C`` in first.

    The library's own path (:func:`pyro_dirichlet.pruning.prune_to_keep`, which
    :func:`~pyro_dirichlet.pruning.prune_by_posterior_mean` ends in), so a study's Dirichlet
    row is the network a user gets.
    """
    scales = None if fold_means is None else switch_scales(dict(fold_means))
    return prune_to_keep(network, dict(keep), example, scales=scales)


def score_pruned(
    network: nn.Module,
    keep: Mapping[str, list[int]],
    data: DataSplits,
    *,
    seed: int,
    fold_means: Mapping[str, torch.Tensor] | None = None,
    finetune_epochs: Iterable[int] = (),
    finetune_lr: float = 1e-2,
    splits: Iterable[str] = ("test",),
    device: str = "cpu",
    calibration: CalibrationConfig | None = None,
) -> dict:
    """Size and accuracy of ``network`` pruned to ``keep``, right after pruning and after each fine-tune length.

    Each fine-tune length starts again from the freshly pruned network with its own cosine
    schedule and keeps its best epoch on the validation split. Accuracies are reported on
    each of ``splits`` as ``"<split>_pruned"`` and ``"<split>_finetune_<epochs>"``; anything
    used to choose a setting must read the ``validation`` ones. With ``calibration`` the
    pruned network is also calibrated on the training split (:func:`pyro_dirichlet.repair.calibrate.calibrate`,
    seeded by ``seed``) and scored as ``"<split>_calibrated"``; fine-tuning still starts
    from the uncalibrated network, so the other columns do not change.
    """
    example = data.train.images[:2].to(device)
    splits = tuple(splits)
    pruned = pruned_network(network, keep, example, fold_means)
    row = {"params": count_parameters(pruned), "flops": count_flops(pruned, example)}
    row.update({f"{split}_pruned": accuracy(pruned, getattr(data, split), device=device) for split in splits})
    if calibration is not None:
        with Stopwatch() as watch:
            calibrated = calibrate(pruned, data.train, example, dataclasses.replace(calibration, seed=seed))
        row.update({f"{split}_calibrated": accuracy(calibrated.network, getattr(data, split), device=device) for split in splits})
        row["calibration_seconds"] = watch.seconds
        row["calibration_kept"] = {"batchnorm": calibrated.batchnorm_recalibrated, "scales": calibrated.scales_kept}
    for epochs in finetune_epochs:
        tuned = pruned_network(network, keep, example, fold_means)
        with Stopwatch() as watch:
            finetune(tuned, data, epochs=epochs, lr=finetune_lr, seed=seed, device=device, progress=False)
        tuned.eval()
        row.update({f"{split}_finetune_{epochs}": accuracy(tuned, getattr(data, split), device=device) for split in splits})
        row[f"finetune_{epochs}_seconds"] = watch.seconds
    return row


def keep_sizes(keep: Mapping[str, list[int]]) -> str:
    """``"5-12-40"``: the kept widths in layer order, as the papers write architectures."""
    return "-".join(str(len(channels)) for channels in keep.values())


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def recipe_epoch_seconds(model: str, data: DataSplits, seed: int, device: str = "cpu") -> float:
    """Seconds of one baseline training epoch of ``model``'s recipe, measured now on a fresh network.

    The baseline itself may come from the cache, so the time budget of a study ("fit +
    fine-tune within 3 baseline epochs") is measured here, in the same process as the fit,
    by the same function the performance suite times training epochs with.
    """
    from benchmarks.epochs import train_epoch_seconds
    from benchmarks.workloads import Workload

    entry = get_model_entry(model)
    workload = Workload(name=model, data=data, batch_size=entry.train.batch_size, default_keep=entry.default_keep, seed=seed)
    return train_epoch_seconds(workload, device=device, seed=seed)


@dataclass
class Study:
    """What every part of a comparison shares: the model, its data, the seeds, and one default fit per seed.

    Attributes:
        model: a registry name (``pyro_dirichlet.baselines.MODELS``).
        data: the splits (possibly a seeded subset for a CPU run).
        seeds: one baseline network and one default fit per seed.
        budgets: named per-layer keep counts used by the criteria comparison.
        finetune_lr: peak Adam learning rate of every fine-tune.
        out: where each part writes ``<part>.json``, ``<part>.md`` and its figures.
        log: where progress lines go.
        device: where every baseline, fit and fine-tune runs (``"cpu"`` or ``"cuda"``).
        train_epochs: baseline epochs instead of the recipe's (CPU runs of big models).
        finetune_epochs: the fine-tune lengths the criteria and allocation parts report.
        criteria: names of the criteria to compare (``None``: all that apply).
        fit_options: :class:`FitConfig` overrides of the default fit (e.g. more epochs).
        calibration: calibrate every pruned network of the criteria comparison this way
            too (``None``: no calibration column).
    """

    model: str
    data: DataSplits
    seeds: tuple[int, ...]
    budgets: dict[str, dict[str, int]]
    finetune_lr: float
    out: Path
    log: Callable[[str], None] = print
    train_epochs: int | None = None
    device: str = "cpu"
    finetune_epochs: tuple[int, ...] = (1, 3)
    criteria: tuple[str, ...] | None = None
    fit_options: dict = field(default_factory=dict)
    calibration: CalibrationConfig | None = None
    _fits: dict[int, Fitted] = field(default_factory=dict, repr=False)

    @property
    def example(self) -> torch.Tensor:
        return self.data.train.images[:2].to(self.device)

    def network(self, seed: int) -> nn.Module:
        return baseline(self.model, self.data, seed, self.train_epochs, self.device)

    def pruner(self, network: nn.Module, fitted: Fitted) -> Pruner:
        """A :class:`~pyro_dirichlet.Pruner` of ``network`` over the layers ``fitted`` switched: no trace."""
        return Pruner(network, self.example, layers=fitted.switches.layers)

    def baseline_accuracy(self, seed: int) -> float:
        """Test accuracy of seed ``seed``'s unpruned baseline (reported next to the pruned ones)."""
        return accuracy(self.network(seed), self.data.test, device=self.device)

    def default_fit(self, seed: int) -> Fitted:
        """The library's default one-epoch fit of seed ``seed``'s baseline (memoised: several parts read it)."""
        if seed not in self._fits:
            self._fits[seed] = fit_switches(self.network(seed), self.data, seed=seed, **self.fit_kwargs)
        return self._fits[seed]

    def describe_data(self) -> str:
        """The data's source and split sizes, for table captions (subset runs say so)."""
        source = getattr(self.data, "source", None) or "?"
        sizes = f"{len(self.data.train):,} train / {len(self.data.validation):,} validation / {len(self.data.test):,} test"
        return f"{source}, {sizes}"

    @property
    def fit_kwargs(self) -> dict:
        """Keyword arguments of :func:`fit_switches` shared by every fit of this study."""
        return {"device": self.device, **self.fit_options}

    def score(self, network: nn.Module, keep, **options) -> dict:
        """:func:`score_pruned` with this study's data, fine-tune lr and device."""
        return score_pruned(network, keep, self.data, finetune_lr=self.finetune_lr, device=self.device, **options)

    def write(self, part: str, result: dict, markdown: str) -> None:
        """Write ``<out>/<part>.json`` and ``<out>/<part>.md`` (atomically: a table never describes half a run)."""
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / f"{part}.json", result)
        atomic_write_text(self.out / f"{part}.md", markdown)


def percent(mean_and_sd: tuple[float, float]) -> str:
    """``"98.76 ± 0.12"`` from a fraction's mean and sd."""
    return f"{100 * mean_and_sd[0]:.2f} ± {100 * mean_and_sd[1]:.2f}"


def stage_names(finetune_epochs: Iterable[int], *, calibrated: bool = False) -> list[str]:
    """The accuracy columns of a study: right after pruning, (after calibration,) then after each fine-tune length."""
    return ["pruned", *(["calibrated"] if calibrated else []), *(f"finetune_{n}" for n in finetune_epochs)]


def stage_headers(names: list[str]) -> list[str]:
    """Table headers for :func:`stage_names`' names."""
    fixed = {"pruned": "right after pruning", "calibrated": "after calibration"}
    return [fixed.get(name) or f"{name.split('_')[1]} fine-tune epoch(s)" for name in names]


def stage_summary(members: list[dict], names: list[str], split: str = "test") -> dict:
    """``{"<stage>_mean": ..., "<stage>_sd": ...}`` of a group of rows, for every stage."""
    summary = {}
    for name in names:
        summary[f"{name}_mean"], summary[f"{name}_sd"] = mean_sd(m[f"{split}_{name}"] for m in members)
    return summary
