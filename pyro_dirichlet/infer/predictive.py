"""Draws from a fitted switch model for its posterior file: the prior, the prior's latent sites, predictions on held-out data.

Predictions come in two forms: :func:`predict` for the categorical likelihood (class
probabilities besides the sampled labels, draws run as batches of stacked copies) and
:func:`predict_targets` for any other likelihood (one draw at a time; no targets are drawn
from a likelihood that is only a factor, such as a tempered loss).

Every draw goes through ``pyro.infer.Predictive``, seeded on copies of the random streams
(drawing a posterior never shifts the user's), and comes back as NumPy arrays for
:func:`pyro_dirichlet.posterior.from_concentrations`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.util
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.infer.autoguide import AutoCallable, AutoGuideList

from pyro_dirichlet.infer.priors import DEFAULT_CONCENTRATION, resolve_prior
from pyro_dirichlet.infer.switches import DirichletSwitches, switch_site

__all__ = ["draw_latents", "draw_prior", "predict", "predict_targets"]

#: At most this many switched copies of the examples go through the network at once.
_MAX_BATCH = 4096
#: At most this many values in any one layer's output while a chunk of draws runs as one
#: batch (16 MB in float32). A vectorised chunk holds draws x examples copies of every
#: activation, so it is sized by the network's largest activation: without this bound a
#: 32-px ResNet's 50 x 128 copies took 2.8 GB in its first block alone. 64 MB made LeNet-5's
#: predictive 0.17 s shorter, but a user's run of a 32-px BN ResNet peaked at 1.60 GB
#: instead of 1.32-1.38 GB (benchmarks.run_cost; the bar is 1.5 GB).
_MAX_ACTIVATION = 1 << 22


def _largest_activation(network: torch.nn.Module, example: torch.Tensor) -> int:
    """Values in the largest output of any module of ``network`` for one example (a forward pass of it)."""
    sizes = [1]

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    handles = [module.register_forward_hook(record) for module in network.modules()]
    try:
        with torch.no_grad():
            network(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return max(sizes)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed every stream Pyro draws from, and put them all back afterwards."""
    state = pyro.util.get_rng_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        pyro.set_rng_seed(seed)
        try:
            yield
        finally:
            pyro.util.set_rng_state(state)


def _numpy(samples: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: value.detach().cpu().numpy() for name, value in samples.items()}


def draw_latents(
    switches: DirichletSwitches, guide: Callable, example: torch.Tensor, *, num_samples: int, seed: int
) -> dict[str, np.ndarray]:
    """``num_samples`` draws of the prior's latent sites from the fitted ``guide``, ``{site: (draws, ...)}``.

    Empty when the prior has no latent site. :func:`~pyro_dirichlet.infer.guide.make_guide`'s
    autoguide draws them in one batch; any other guide runs once per draw (with the prior
    model, which is rarely written to broadcast over a batch of its own latents).
    """
    names = [site.name for site in switches.priors.latent_sites]
    if not names:
        return {}
    with _seeded(seed, example.device), torch.no_grad():
        if isinstance(guide, AutoGuideList) and not isinstance(guide[-1], AutoCallable):
            # make_guide's autoguide over the latents (its last part) draws them all in one
            # batch: it broadcasts over a draws plate, whatever the prior model does.
            samples = Predictive(guide[-1], num_samples=num_samples, parallel=True, return_sites=names)(example)
        else:
            samples = Predictive(switches.switch_prior, guide=guide, num_samples=num_samples, return_sites=names)(example)
    return _numpy(samples)


def draw_prior(switches: DirichletSwitches, example: torch.Tensor, *, num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """``num_samples`` draws from the prior: every switch ``(draws, channels)`` and every latent site.

    Vectorised (one batched draw) where the prior has no latent site of its own.
    """
    parallel = not switches.priors.latent_sites
    with _seeded(seed, example.device), torch.no_grad():
        samples = Predictive(switches.switch_prior, num_samples=num_samples, parallel=parallel)(example)
    return _numpy(samples)


def predict(
    switches: DirichletSwitches,
    samples: Mapping[str, np.ndarray],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
) -> dict[str, np.ndarray]:
    """The switched network's predictions on ``images`` under each posterior draw in ``samples``.

    Args:
        switches: the switch model.
        samples: ``{site: (draws, ...)}`` for every switch (other sites are ignored), e.g.
            the first draws of the posterior.
        images: held-out inputs (on the model's device).
        labels: their labels.
        seed: seed of the sampled labels.

    Returns:
        ``{"log_likelihood": (draws, examples), "obs": (draws, examples) sampled labels,
        "probabilities": (draws, examples, classes)}``.

    ``Predictive(parallel=True)`` runs a chunk of draws as one batch of stacked copies (the
    model's particle path): each switch value goes in as ``(draws, 1, channels)``, the
    draws' dimension left of the data plate's, as the model's vectorised run expects.
    Given its switches, the network's prediction depends on nothing else the prior
    samples, so a prior with latent sites of its own (rarely written to broadcast over a
    batch of draws) is set aside for a fixed one and the draws stay vectorised; a
    likelihood that does not broadcast over draws runs them unbatched.
    """
    device = images.device
    switch_names = {switch_site(layer.name) for layer in switches.layers}
    if switches.priors.latent_sites:
        switches = copy.copy(switches)
        switches.priors = resolve_prior(DEFAULT_CONCENTRATION, switches.layers)
    samples = {name: value for name, value in samples.items() if name in switch_names}
    draws = len(next(iter(samples.values())))
    parallel = switches.vectorizable
    if parallel:
        per_copy = len(images) * _largest_activation(switches.network, images)
        chunk = max(1, min(_MAX_BATCH // len(images), _MAX_ACTIVATION // per_copy))
    else:
        chunk = draws
    outputs: dict[str, list[np.ndarray]] = {"log_likelihood": [], "obs": [], "probabilities": []}
    with _seeded(seed, device), torch.no_grad():
        for start in range(0, draws, chunk):
            part = {}
            for name, value in samples.items():
                value = torch.as_tensor(value[start : start + chunk], dtype=torch.float32, device=device)
                part[name] = value.unsqueeze(1) if parallel else value
            predictive = Predictive(switches.model, posterior_samples=part, parallel=parallel, return_sites=["obs", "_RETURN"])
            out = predictive(images, None)
            log_probabilities = torch.log_softmax(out["_RETURN"].double(), dim=-1).reshape(-1, len(images), out["_RETURN"].shape[-1])
            outputs["log_likelihood"].append(log_probabilities.gather(-1, labels.expand(len(log_probabilities), -1).unsqueeze(-1)).squeeze(-1).cpu().numpy())
            outputs["obs"].append(out["obs"].reshape(-1, len(images)).cpu().numpy())
            outputs["probabilities"].append(log_probabilities.exp().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def predict_targets(
    switches: DirichletSwitches,
    samples: Mapping[str, np.ndarray],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    seed: int,
) -> dict[str, np.ndarray]:
    """Per-example log-likelihood of ``targets``, and drawn targets, under each posterior draw, for any likelihood.

    Each draw conditions the model on its switch (and latent) values and traces it twice:
    with the targets observed, for ``log p(y_i | x_i, s)`` (the event dimensions summed),
    and without them, for a draw of the targets. A likelihood that is a factor
    (:class:`pyro.distributions.Unit`, e.g. :func:`~pyro_dirichlet.infer.likelihoods.loss_likelihood`)
    has no distribution of the targets, so nothing is drawn for it: its log-likelihood is
    the tempered negative loss.

    Args:
        switches: the switch model.
        samples: ``{site: (draws, ...)}`` for every switch and latent site.
        inputs: held-out inputs (on the model's device).
        targets: their targets.
        seed: seed of the drawn targets.

    Returns:
        ``{"log_likelihood": (draws, examples)}``, plus ``"obs": (draws, *targets.shape)``
        where targets can be drawn.
    """
    device = inputs.device
    draws = len(next(iter(samples.values())))
    log_likelihood, drawn = [], []
    with _seeded(seed, device), torch.no_grad():
        for draw in range(draws):
            values = {name: torch.as_tensor(value[draw], dtype=torch.float32, device=device) for name, value in samples.items()}
            model = poutine.condition(switches.model, data=values)
            observed = poutine.trace(model).get_trace(inputs, targets).nodes["obs"]
            log_likelihood.append(observed["fn"].log_prob(observed["value"]).double().cpu().numpy())
            if not isinstance(observed["fn"], dist.Unit):
                drawn.append(poutine.trace(model).get_trace(inputs, None).nodes["obs"]["value"].cpu().numpy())
    outputs = {"log_likelihood": np.stack(log_likelihood)}
    if drawn:
        outputs["obs"] = np.stack(drawn)
    return outputs
