"""A small seeded fit run as its own process, for the tests that kill a fit or launch several.

``python tests/fit_process.py OUT [--checkpoint FILE] ...`` fits the tiny CNN of
``conftest.py`` on inputs it labels itself and saves ``{"concentrations", "elbo"}`` to
``OUT/rank<r>.pt``. Under ``torchrun`` every rank joins the process group first and writes
its own file, so a test can check that the ranks agree. ``--loader`` streams the same data
from a shuffling ``DataLoader`` instead of the preloaded ``Split`` (under ``torchrun``,
``fit`` gives it a ``DistributedSampler``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The checkout's package, not whichever one the environment installed (another worktree's).
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from conftest import TinyCNN  # noqa: E402  (the tests' own tiny network)

from pyro_dirichlet.data import Split  # noqa: E402
from pyro_dirichlet.infer.distributed import init_from_environment  # noqa: E402
from pyro_dirichlet.infer.fit import FitConfig, fit  # noqa: E402
from pyro_dirichlet.infer.priors import PriorModel  # noqa: E402
from pyro_dirichlet.infer.switches import DirichletSwitches  # noqa: E402


@PriorModel
def shared_alpha(layers):
    """A hierarchical prior: one Gamma-distributed concentration for every layer."""
    alpha = pyro.sample("alpha", dist.Gamma(2.0, 2.0))
    return {layer.name: dist.Dirichlet(alpha.expand(layer.channels)) for layer in layers}


def problem(n: int, *, hierarchical: bool = False) -> tuple[DirichletSwitches, Split]:
    """The tiny CNN (seeded) with switches, and ``n`` random inputs labelled by the network itself."""
    torch.manual_seed(0)
    network = TinyCNN()
    images = torch.randn(n, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = network.eval()(images).argmax(1)
    prior = shared_alpha if hierarchical else 1.0
    return DirichletSwitches(network, images[:2], prior=prior, layer_gain=False), Split(images, labels)


def loader(data: Split, batch_size: int, *, single_process: bool = False) -> DataLoader:
    """The data as a shuffling DataLoader; ``single_process``: with the order a 2-rank fit's
    ``DistributedSampler`` (seed 0, ``set_epoch``) deals out, as one process reads it."""
    dataset = TensorDataset(data.images, data.labels)
    if single_process:
        return DataLoader(dataset, batch_size=batch_size, sampler=DistributedSampler(dataset, num_replicas=1, rank=0, seed=0))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True)


def config(epochs: int, batch_size: int, checkpoint_every: int | None = None) -> FitConfig:
    """The fit settings every process of a test shares."""
    return FitConfig(epochs=epochs, batch_size=batch_size, checkpoint_every=checkpoint_every, device="cpu", progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--hierarchical", action="store_true", help="a shared Gamma concentration as the prior (an autoguide fits it)")
    parser.add_argument("--loader", action="store_true", help="stream the data from a shuffling DataLoader")
    parser.add_argument("--threads", type=int, help="torch threads; default: conftest's choice, as in the test process")
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per step, so a test can catch the fit mid-way")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    joined = init_from_environment("gloo")
    rank = torch.distributed.get_rank() if joined else 0
    switches, data = problem(args.examples, hierarchical=args.hierarchical)
    if args.step_delay:
        model = switches.model

        def slow_model(*model_args, **kwargs):
            time.sleep(args.step_delay)
            return model(*model_args, **kwargs)

        switches.model = slow_model
    pyro.clear_param_store()
    if args.loader:
        data = loader(data, args.batch_size)
    result = fit(switches, data, config(args.epochs, args.batch_size, args.checkpoint_every), checkpoint=args.checkpoint)
    args.out.mkdir(parents=True, exist_ok=True)
    params = {name: value.detach().clone() for name, value in pyro.get_param_store().named_parameters()}
    torch.save(
        {"concentrations": result.concentrations, "elbo": torch.tensor(result.elbo, dtype=torch.float64), "params": params},
        args.out / f"rank{rank}.pt",
    )
    if joined:
        # Every rank done before any tears its gloo connections down: a rank that closed them
        # while its peer still used them once made the peer abort at exit (SIGABRT, "terminate
        # called without an active exception") in CI.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
