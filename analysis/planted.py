"""Planted-channel recovery: do the criteria find channels known to be useless?

A one-hidden-layer network is trained on real MNIST, then ``dead`` of its hidden units
are killed by zeroing their outgoing weights: they still fire, but nothing downstream
reads them, so removing them changes no output. Hidden units that never fire on the
training data are just as useless and count as dead too. Each criterion ranks the hidden units;
its *recall* is the fraction of dead units among its ``dead`` lowest-ranked ones (1.0:
all found; a random ranking averages ``dead / width``).

Killing units after training leaves the network off its optimum: some live units then
*hurt* (removing one lowers the training loss), and a ranking that puts those below the
dead ones is right, not wrong. So the study also measures every unit's removal cost (the
change of the training loss when its activation is zeroed) and reports the recall *below
the useful units*: the share of dead units among the lowest ``len(useless)``, where the
useless units are the dead ones and every live one whose removal raises the training loss
by less than :data:`NEGLIGIBLE_COST` (harmful or negligible). For the Dirichlet posterior we
also ask whether every dead unit's 95% credible interval lies below every useful unit's.

The posterior is fitted twice per seed: the library default and with
``DirichletSwitches(layer_gain=True)``, whose per-layer gain takes over the role the dead
units otherwise play (on the simplex the only way to turn a layer down is to move mass onto
channels nothing reads; see :class:`~pyro_dirichlet.infer.switches.DirichletSwitches`).

    python -m analysis.planted --seeds 0 1 2 --json analysis/results/planted/planted.json
    python -m analysis.planted --seeds 0 1 2 --fit-steps 40 --json analysis/results/planted/planted-40-steps.json
    python -m analysis.planted --seeds 0 1 2 3 4 --kill before --json analysis/results/planted/planted-kill-before.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pyro_dirichlet.io.atomic import atomic_write_json
from pyro_dirichlet.data import Split, load_dataset, minibatches
from pyro_dirichlet.criteria import get_criterion
from pyro_dirichlet.infer.fit import FitConfig
from pyro_dirichlet.structure import find_prunable_layers

__all__ = ["NEGLIGIBLE_COST", "PlantedCase", "dead_unit_case", "recall", "recall_below_useful", "intervals_separate", "recover", "main"]

#: The hidden layer's name in :func:`dead_unit_case`'s network.
LAYER = "1"

#: A live unit whose removal raises the mean training cross-entropy by less than this (in
#: nats) is as useless as a dead one: a thousandth of a nat is below the loss change one
#: more misclassified image in 5,000 makes.
NEGLIGIBLE_COST = 1e-3


@dataclass(frozen=True)
class PlantedCase:
    """A trained network with known dead channels in layer :data:`LAYER`.

    Attributes:
        network: the network after planting, in eval mode.
        planted: indices of the hidden units killed by planting, sorted.
        silent: indices of the other hidden units that never fire on ``train`` (ReLU output
            zero on every example): as useless as the planted ones, so they count as dead.
        train: the examples it was trained on (and that every criterion and fit sees).
        train_accuracy: its accuracy on ``train`` after planting.
        removal_cost: per hidden unit, the mean training cross-entropy with the unit's
            activation zeroed minus the intact network's (0 for a dead unit, negative for a
            unit that hurts).
    """

    network: nn.Module
    planted: tuple[int, ...]
    silent: tuple[int, ...]
    train: Split
    train_accuracy: float
    removal_cost: tuple[float, ...]

    @property
    def dead(self) -> tuple[int, ...]:
        """Every unit that provably changes no output: planted or silent."""
        return tuple(sorted(self.planted + self.silent))

    @property
    def useless(self) -> tuple[int, ...]:
        """The dead units and every live one whose removal costs less than :data:`NEGLIGIBLE_COST`."""
        return tuple(c for c, cost in enumerate(self.removal_cost) if c in self.dead or cost < NEGLIGIBLE_COST)

    @property
    def harmful(self) -> tuple[int, ...]:
        """The live units whose removal lowers the training loss."""
        return tuple(c for c, cost in enumerate(self.removal_cost) if c not in self.dead and cost < 0)


def dead_unit_case(
    train: Split, *, width: int = 32, dead: int = 8, seed: int = 0, epochs: int = 10, lr: float = 0.02, kill: str = "after"
) -> PlantedCase:
    """Train ``flatten -> Linear(width) -> ReLU -> Linear(classes)`` on ``train`` with ``dead`` hidden units killed.

    Killing zeroes the units' columns of the output layer's weight (their outgoing
    weights), chosen at random from ``seed``: ``kill="after"`` training (the trained
    network loses units it used, and is no longer at its optimum), or ``"before"`` (the
    columns are held at zero throughout training, so the network learns without them).
    """
    if kill not in ("before", "after"):
        raise ValueError(f"kill must be 'before' or 'after', got {kill!r}.")
    if not 0 < dead < width:
        raise ValueError(f"dead must be between 1 and width - 1 = {width - 1}, got {dead}.")
    torch.manual_seed(seed)
    inputs = train.images[0].numel()
    classes = int(train.labels.max()) + 1
    network = nn.Sequential(nn.Flatten(), nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, classes))
    killed = torch.randperm(width, generator=torch.Generator().manual_seed(seed + 1))[:dead].sort().values
    if kill == "before":
        with torch.no_grad():
            network[3].weight[:, killed] = 0.0
        # Zero gradient on the killed columns keeps them at zero under momentum SGD.
        mask = torch.ones_like(network[3].weight)
        mask[:, killed] = 0.0
        held = network[3].weight.register_hook(lambda grad: grad * mask)
    optimizer = torch.optim.SGD(network.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for _, images, labels in minibatches(train, 64, shuffle=True, generator=generator):
            optimizer.zero_grad()
            F.cross_entropy(network(images), labels).backward()
            optimizer.step()
    if kill == "before":
        held.remove()
    with torch.no_grad():
        network[3].weight[:, killed] = 0.0
    network.eval()
    with torch.no_grad():
        correct = (network(train.images).argmax(1) == train.labels).float().mean().item()
        hidden = network[:3](train.images)
        fires = (hidden > 0).any(0)
        intact = F.cross_entropy(network[3](hidden), train.labels)
        costs = []
        for unit in range(width):
            removed = hidden.clone()
            removed[:, unit] = 0.0
            costs.append(float(F.cross_entropy(network[3](removed), train.labels) - intact))
    silent = tuple(c for c in range(width) if not fires[c] and c not in set(killed.tolist()))
    return PlantedCase(network, tuple(killed.tolist()), silent, train, correct, tuple(costs))


def recall(scores: torch.Tensor, dead: Sequence[int]) -> float:
    """The fraction of ``dead`` among the ``len(dead)`` lowest ``scores`` (ties broken by index)."""
    lowest = torch.as_tensor(scores).argsort(stable=True)[: len(dead)]  # a float64 tensor from a criterion
    return len(set(lowest.tolist()) & set(dead)) / len(dead)


def recall_below_useful(scores: torch.Tensor, dead: Sequence[int], useless: Sequence[int]) -> float:
    """The fraction of ``dead`` among the ``len(useless)`` lowest ``scores``: 1.0 when every dead
    unit ranks below every useful one (``useless`` holds ``dead`` and the live units that do not matter)."""
    lowest = torch.as_tensor(scores).argsort(stable=True)[: len(useless)]
    return len(set(lowest.tolist()) & set(dead)) / len(dead)


def intervals_separate(
    lower: Sequence[float], upper: Sequence[float], dead: Sequence[int], others: Sequence[int] | None = None
) -> bool:
    """Whether every dead channel's interval lies wholly below every other channel's
    (``others``: the channels to compare with; ``None``: every channel not in ``dead``)."""
    others = [c for c in range(len(lower)) if c not in set(dead)] if others is None else others
    return bool(max(upper[c] for c in dead) < min(lower[c] for c in others))


#: Adam steps of the default one-epoch fit on full MNIST (55,000 images at batch 128).
MNIST_EPOCH_STEPS = math.ceil(55_000 / FitConfig.batch_size)


#: The two fits of every seed: ``{criterion name: DirichletSwitches layer_gain}``.
FITS = {"posterior-mean": False, "posterior-mean + gain": True}


def recover(case: PlantedCase, *, seed: int = 0, ci_prob: float = 0.95, fit_steps: int = MNIST_EPOCH_STEPS) -> dict:
    """Every criterion's recall of ``case``'s dead units, and the posterior's intervals.

    The posterior comes from the library's default fit (``FitConfig()`` defaults, seeded)
    on ``case.train``, run for as many epochs as it takes to reach ``fit_steps`` Adam steps:
    by default the steps one epoch over full MNIST takes. One epoch over a 5,000-image
    subset is only 40 steps, which leaves the fit mid-way (measured: dead units then rank
    *highest*; at 200 steps half are found, from about 400 all). It is fitted twice, without
    and with ``layer_gain`` (:data:`FITS`); the posterior-derived criteria (lower bound,
    top-k probability) read the default fit. Taylor sees one pass over ``case.train``.
    """
    from pyro_dirichlet.infer.fit import fit
    from pyro_dirichlet.infer.switches import DirichletSwitches
    from pyro_dirichlet.posterior import layer_summaries

    example = case.train.images[:2]
    layers = find_prunable_layers(case.network, example)
    epochs = math.ceil(fit_steps / math.ceil(len(case.train) / FitConfig.batch_size))
    # The paper's model and fit (Dirichlet(1), guide at 1, constant Adam rate), without and with
    # the layer gain: the study isolates the gain, as when it was written (planted.json).
    config = FitConfig(epochs=epochs, seed=seed, device="cpu", progress=False, init_concentration=1.0, lr_decay=1.0,
                       optimizer="adam")  # the optimiser of the time, too
    posteriors = {name: fit(DirichletSwitches(case.network, example, prior=1.0, layer_gain=gain), case.train, config).posterior(seed=seed)
                  for name, gain in FITS.items()}
    posterior = posteriors["posterior-mean"]
    live_count = layers[0].channels - len(case.dead)
    options = {
        **{name: {"posterior": fitted} for name, fitted in posteriors.items()},
        "posterior-lower-bound": {"posterior": posterior},
        "top-k-probability": {"posterior": posterior, "counts": {LAYER: live_count}},
        "taylor": {"batches": None, "seed": seed},
        "random": {"seed": seed},
        "l1-norm": {},
    }
    registered = {name: "posterior-mean" if name in FITS else name for name in options}
    scores = {name: get_criterion(registered[name], **kwargs)(case.network, layers, case.train)[LAYER] for name, kwargs in options.items()}
    useful = [c for c in range(layers[0].channels) if c not in case.useless]
    row = {
        "seed": seed,
        "fit_epochs": epochs,
        "fit_steps": epochs * math.ceil(len(case.train) / FitConfig.batch_size),
        "planted": list(case.planted),
        "silent": list(case.silent),
        "dead": list(case.dead),
        "harmful": list(case.harmful),
        "useless": list(case.useless),
        "removal_cost": list(case.removal_cost),
        "width": layers[0].channels,
        "train_accuracy": case.train_accuracy,
        "recall": {name: recall(score, case.dead) for name, score in scores.items()},
        "recall_below_useful": {name: recall_below_useful(score, case.dead, case.useless) for name, score in scores.items()},
        "chance_recall": len(case.dead) / layers[0].channels,
    }
    for name, fitted in posteriors.items():
        summary = layer_summaries(fitted, ci_prob=ci_prob)[LAYER]
        means = scores[name]  # the exact phi / sum(phi) the ranking uses
        order = means.argsort(stable=True).tolist()
        key = name.replace("posterior-mean", "posterior").replace(" + ", "_")
        row.update({
            f"{key}_ranks_of_dead": sorted(order.index(c) for c in case.dead),  # 0 = lowest mean
            f"{key}_intervals_separate": intervals_separate(summary.hdi_lower, summary.hdi_upper, case.dead),
            f"{key}_intervals_separate_from_useful": intervals_separate(summary.hdi_lower, summary.hdi_upper, case.dead, useful),
            f"{key}_mean_dead": [float(means[c]) for c in case.dead],
            f"{key}_mean_live": [float(means[c]) for c in range(layers[0].channels) if c not in case.dead],
        })
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=5000, help="MNIST training images (a seeded subset)")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--dead", type=int, default=8)
    parser.add_argument("--kill", choices=("after", "before"), default="after",
                        help="kill the units after training (default) or hold them dead throughout training")
    parser.add_argument("--fit-steps", type=int, default=MNIST_EPOCH_STEPS,
                        help=f"Adam steps of the fit (default {MNIST_EPOCH_STEPS}: one epoch of full MNIST)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    train = load_dataset("mnist", args.data_dir).train.subset(args.train, seed=0)
    rows = []
    for seed in args.seeds:
        row = recover(dead_unit_case(train, width=args.width, dead=args.dead, seed=seed, kill=args.kill), seed=seed, fit_steps=args.fit_steps)
        rows.append(row)
        print(f"seed {seed}: recall " + ", ".join(f"{name} {value:.2f}" for name, value in row["recall"].items())
              + "; below the useful units " + ", ".join(f"{name} {value:.2f}" for name, value in row["recall_below_useful"].items())
              + f"; {len(row['harmful'])} harmful live units; intervals separate from the useful units: "
              f"default {row['posterior_intervals_separate_from_useful']}, gain {row['posterior_gain_intervals_separate_from_useful']}")
    criteria = list(rows[0]["recall"])
    result = {
        "part": "planted",
        "setup": f"MNIST {args.train} train images, MLP 784-{args.width}-10 trained 10 epochs, {args.dead} hidden units "
                 f"killed {args.kill} training (outgoing weights zeroed); default fit and layer_gain fit for {args.fit_steps} Adam steps; "
                 f"useless units: dead or removal cost below {NEGLIGIBLE_COST} nats",
        "rows": rows,
        "mean_recall": {name: sum(r["recall"][name] for r in rows) / len(rows) for name in criteria},
        "mean_recall_below_useful": {name: sum(r["recall_below_useful"][name] for r in rows) / len(rows) for name in criteria},
        "intervals_separate_from_useful": {key: sum(r[f"{key}_intervals_separate_from_useful"] for r in rows)
                                           for key in ("posterior", "posterior_gain")},
    }
    print(json.dumps({key: result[key] for key in ("mean_recall", "mean_recall_below_useful", "intervals_separate_from_useful")}))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
