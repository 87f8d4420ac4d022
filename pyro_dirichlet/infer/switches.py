"""The Pyro model: a frozen network whose prunable layers are scaled by Dirichlet switch sample sites."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import pyro
from pyro import poutine
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from pyro_dirichlet.infer.likelihoods import (
    CategoricalLikelihood,
    LikelihoodSpec,
    check_batch_shape,
    is_learnable,
    resolve_likelihood,
)
from pyro_dirichlet.infer.priors import DEFAULT_CONCENTRATION, PriorSpec, resolve_prior
from pyro_dirichlet.structure import DEFAULT_COUPLING, DEFAULT_ON_UNSUPPORTED, PrunableLayer, find_prunable_layers
from pyro_dirichlet.structure.placement import SwitchInput
from pyro_dirichlet.structure.attention import ATTENTION_PARTS
from pyro_dirichlet.surgery.attention import AttentionTapHook

__all__ = ["DirichletSwitches", "switch_site", "gain_param", "freeze", "GAINS", "DEFAULT_GAIN", "resolve_gain"]

#: The learned gains beside each layer's switch: one positive scale per channel, one per
#: layer, or none (the paper's model).
GAINS = ("channel", "layer", "none")
#: Chosen by ``analysis/ranking_quality.py``, for a reason a quadratic model of the loss
#: makes plain (docs/method.md): with one gain per layer, the loss asks every channel for
#: the same concentration whatever its importance, so the posterior mean ranks by noise and
#: by the KL's faint pull; with one gain per channel the gain carries the channel's scale and
#: the simplex is left to split precision, so the posterior mean grows as the square root of
#: the loss's curvature in that channel. With LayerAdam (``DEFAULT_OPTIMIZER``) a channel the
#: likelihood cannot see also stays where it started while the useful ones gain mass, so
#: never-firing units rank last.
DEFAULT_GAIN = "channel"


def resolve_gain(gain: str | None, layer_gain: bool | None = None) -> str:
    """The gain mode from ``gain`` or its older boolean spelling ``layer_gain`` (True:
    ``"layer"``, False: ``"none"``); :data:`DEFAULT_GAIN` when neither is given."""
    if layer_gain is not None:
        if not isinstance(layer_gain, bool):
            raise TypeError(f"layer_gain must be True or False, got {layer_gain!r}.")
        if gain is not None and gain != ("layer" if layer_gain else "none"):
            raise ValueError(f"give gain or its older spelling layer_gain, not both (gain={gain!r}, layer_gain={layer_gain!r}).")
        return "layer" if layer_gain else "none"
    if gain is None:
        return DEFAULT_GAIN
    if gain not in GAINS:
        raise ValueError(f"gain must be one of {', '.join(GAINS)}, got {gain!r}.")
    return gain


def switch_site(layer_name: str) -> str:
    """The sample-site name of a layer's switch, e.g. ``"conv1"`` -> ``"conv1.switch"``.

    The same name is used in Pyro traces, the param store (``conv1.switch.concentration``)
    and the ArviZ posterior, so a user follows one name through the whole workflow.
    """
    return f"{layer_name}.switch"


def gain_param(layer_name: str) -> str:
    """The param-store name of a layer's learned gains (``gain="channel"`` or ``"layer"``), e.g. ``"conv1.switch.gain"``."""
    return f"{switch_site(layer_name)}.gain"


def freeze(network: nn.Module) -> nn.Module:
    """Freeze ``network`` in place: eval mode and ``requires_grad=False`` on every parameter.

    Eval mode matters as much as the gradients: in train mode BatchNorm would update its
    running statistics and Dropout would add noise the switches would learn to absorb.
    Returns the same module.
    """
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


class DirichletSwitches:
    """A frozen network with one Dirichlet "importance switch" per prunable layer.

    For each prunable layer ``l`` with ``C`` output channels (conv) or features (linear), the
    model draws ``s_l ~ prior_l``, a point on the ``C``-simplex, at the site
    ``"<layer>.switch"``, and multiplies the layer's output channel-wise by ``s_l * C``.
    Because the symmetric prior mean is ``1/C`` per channel, **the network is unchanged at
    the prior mean**: ``s_l * C`` is then all ones. Where a convolution is followed directly
    by BatchNorm, the switch multiplies the BatchNorm's output (before the non-linearity), so
    it scales exactly what the next layer sees. (By default the multiply itself runs where it
    is cheapest with the same result; see ``placement``.)

    The network's own weights are frozen (see :func:`freeze`): only the switch posteriors
    are learned. The observations are the targets under ``likelihood`` -- by default class
    labels, ``Categorical(logits=network(x))`` -- in a ``pyro.plate("data", size,
    subsample=indices)`` so a minibatch's log-likelihood is scaled to ``size`` examples.

    Args:
        network: a trained classifier; frozen in place.
        example_inputs: a batch of inputs used to trace the network's structure.
        layers: names of the layers to switch; ``None`` finds every conv and every hidden
            linear layer automatically (never the classifier output).
        prior: see :func:`pyro_dirichlet.infer.priors.resolve_prior`: a concentration, a mapping of
            per-layer concentrations, a callable returning a layer's distribution on the
            simplex, or a :class:`~pyro_dirichlet.infer.priors.PriorModel` returning every
            layer's (with sample sites of its own: hyper-priors shared across layers).
        coupled: ``"group"`` (default) gives each coupling group (channels coupled through
            residual adds, concatenations, depthwise convolutions) one shared switch site, named
            after its first member; ``"skip"`` leaves channels coupled through residual adds
            unswitched (see :func:`pyro_dirichlet.structure.find_prunable_layers`).
        placement: ``"input"`` (default) applies a switch to the input of the module that
            reads the layer's channels where only ReLU, pooling, dropout or flattening lie
            between (``PrunableLayer.switch_input``): these commute with a non-negative
            channel scale, so the logits are the same, and the multiply touches fewer
            elements and the backward pass stops earlier. ``"output"`` always multiplies
            the ``switch_at`` output, as described above.
        on_unsupported: ``"raise"`` (default) or ``"skip"``: switch every layer the structure
            analysis can follow and leave the others out; ``layers.skipped`` then lists them
            with reasons (see :func:`pyro_dirichlet.structure.find_prunable_layers`).
        likelihood: the distribution of the targets given the network's outputs (see
            :mod:`pyro_dirichlet.infer.likelihoods`): ``"categorical"`` (default),
            ``"normal"`` (regression, scale 1; ``NormalLikelihood(scale=None)`` learns it),
            ``"bernoulli"`` (multi-label), :func:`~pyro_dirichlet.infer.likelihoods.loss_likelihood`
            (a tempered loss), or any callable ``likelihood(outputs, targets) ->
            distribution`` whose batch shape is the batch.
        gain: the learned positive scales (``pyro.param`` point estimates, :func:`gain_param`,
            initialised at 1) that multiply the layer's ``s_l * C``: ``"channel"`` (the
            default, :data:`DEFAULT_GAIN`) one per channel, ``"layer"`` one per layer, ``"none"``
            the paper's model.
            Why a gain at all: on the simplex the channel scales always sum to ``C``, so a
            network that would do better with a layer turned down can only do so by moving
            mass onto channels nothing reads, and those dead channels then rank *high*; the
            layer gain takes over that role. Why one per channel, the default: with one gain per
            layer a quadratic loss asks every channel for the same concentration whatever its
            importance, so the mean ranks by noise; with a free scale per channel the mean is
            left to say how much precision the channel needs (at the optimum, proportional to
            the square root of the loss's curvature in the channel's scale; docs/method.md)
            and ranks by removal cost; under LayerAdam (the default optimiser) never-firing
            units still rank last. The ranking does not read the
            gains; the fold does, so the pruned network is the switched one at the posterior
            mean. Measured in ``analysis/ranking_quality.py``.
        layer_gain: the older spelling: True is ``gain="layer"``, False ``gain="none"``.

    Example:
        >>> switches = DirichletSwitches(net, images[:2], prior=0.5)  # doctest: +SKIP
        >>> trace = pyro.poutine.trace(switches.model).get_trace(images, labels)  # doctest: +SKIP
        >>> trace.nodes["conv1.switch"]["value"].shape  # doctest: +SKIP
        torch.Size([20])
    """

    def __init__(
        self,
        network: nn.Module,
        example_inputs: torch.Tensor,
        *,
        layers: Sequence[str] | None = None,
        prior: PriorSpec = DEFAULT_CONCENTRATION,
        coupled: str = DEFAULT_COUPLING,
        placement: Literal["input", "output"] = "input",
        on_unsupported: Literal["raise", "skip"] = DEFAULT_ON_UNSUPPORTED,
        likelihood: LikelihoodSpec = "categorical",
        gain: Literal["channel", "layer", "none"] | None = None,
        layer_gain: bool | None = None,
    ) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        if placement not in ("input", "output"):
            raise ValueError(f"placement must be 'input' or 'output', got {placement!r}.")
        self.placement = placement
        self.network = freeze(network)
        self.layers: list[PrunableLayer] = find_prunable_layers(
            network, example_inputs, layers, coupled=coupled, on_unsupported=on_unsupported
        )
        self.priors = resolve_prior(prior, self.layers)
        self.likelihood = resolve_likelihood(likelihood)
        self.gain = resolve_gain(gain, layer_gain)
        # One example kept, so a learnable likelihood's parameters can be created without data (load_guide).
        self.example = example_inputs[:1].detach().clone()
        self._modules = dict(network.named_modules())

    @property
    def vectorizable(self) -> bool:
        """Whether particles and predictive draws may run as one batch of stacked copies.

        Only for a prior without latent sites of its own (rarely written to broadcast over a
        particle dimension) and the categorical likelihood (a user's likelihood need not
        broadcast over one either; the built-in regression ones declare every output
        dimension an event dimension).
        """
        return not self.priors.latent_sites and isinstance(self.likelihood, CategoricalLikelihood)

    def to(self, device: torch.device | str) -> "DirichletSwitches":
        """Move the frozen network to ``device``; the priors are built on the data's device at every run."""
        self.network.to(device)
        return self

    @contextlib.contextmanager
    def switched(self, values: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
        """Run the network with layer outputs multiplied by ``values[layer] * channels``.

        A coupling group's switch multiplies the output of every switch point of the group
        (each member's, so the residual stream they write is scaled channel by channel).
        Hooks are attached only for the duration of the block, so the network itself stays
        a plain module (and a deep copy of it never inherits a switch). With
        ``placement="input"`` a single layer's multiply runs at ``layer.switch_input``'s input
        where there is one: the network's output is the same, its intermediate tensors
        between the layer and that module are not scaled. An attention site's switch scales
        the attention's value (or query) channels, inside the module (see
        :class:`~pyro_dirichlet.surgery.attention.AttentionTapHook`).

        A value may also be a ``(particles, channels)`` matrix, one switch vector per
        particle; the network's input batch must then be ``particles`` copies of the
        examples, one after another (``(particles * batch, ...)``), and copy ``p`` is scaled
        by row ``p``. :meth:`model` uses this for Pyro's ``vectorize_particles``.
        """
        handles = []
        try:
            for layer in self.layers:
                if layer.name not in values:
                    continue
                scale = values[layer.name] * layer.channels
                if layer.kind in ATTENTION_PARTS:
                    part = ATTENTION_PARTS[layer.kind]
                    handles.append(AttentionTapHook(self._modules[layer.switch_at], _scale_output(scale, layer), part))
                    continue
                if self.placement == "input" and layer.switch_input is not None:
                    # First among the pre-hooks, so any other hook sees what the module reads.
                    module = self._modules[layer.switch_input.module]
                    hook = _scale_input(scale, layer.switch_input)
                    handles.append(module.register_forward_pre_hook(hook, prepend=True))
                    continue
                hook = _scale_output(scale, layer)
                for point in layer.multiply_points:
                    handles.append(self._modules[point].register_forward_hook(hook))
            yield self.network
        finally:
            for handle in handles:
                handle.remove()

    def check_likelihood(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        """Run the network and the likelihood once on a few examples and refuse a wrong likelihood now.

        :meth:`model` checks the same at every run, but inside a Pyro trace, which appends its
        table of shapes to the message; a fit calls this first, so a mistake reads as one
        sentence. Nothing is recorded and no parameter is left in the param store.

        Raises:
            ValueError: the likelihood's batch shape is not the batch (see
                :func:`~pyro_dirichlet.infer.likelihoods.check_batch_shape`).
            TypeError: it returned something other than a distribution.
        """
        with torch.no_grad(), pyro.get_param_store().scope(), poutine.block():
            outputs = network_output(self.network(images))
            distribution = self.likelihood(outputs.float(), targets)
        check_batch_shape(self.likelihood, distribution, outputs, torch.Size([len(images)]))

    def create_model_params(self, inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> None:
        """Create the model's own ``pyro.param`` sites in the param store: the layer gains
        (``layer_gain=True``), and whatever the likelihood declares (a learned noise scale),
        by running it once, blocked.

        Nothing happens without gains and for a likelihood without parameters (see
        :func:`~pyro_dirichlet.infer.likelihoods.is_learnable`).

        Args:
            inputs: examples on the network's device; ``None``: the example kept from construction.
            targets: their targets, ``None`` where the likelihood does not need them.
        """
        if self.gain != "none":
            device = next(iter(self.network.parameters()), self.example).device
            with torch.no_grad(), poutine.block():
                self.gains(device)
        if not is_learnable(self.likelihood):
            return
        if inputs is None:
            inputs = self.example.to(next(iter(self.network.parameters()), self.example).device)
        with torch.no_grad(), poutine.block():
            self.likelihood(network_output(self.network(inputs)).float(), targets)

    @property
    def has_params(self) -> bool:
        """Whether the model itself declares ``pyro.param`` sites (layer gains, a learned likelihood scale)."""
        return self.gain != "none" or is_learnable(self.likelihood)

    @property
    def layer_gain(self) -> bool:
        """Whether the switches have learned gains (the older name; see :attr:`gain`)."""
        return self.gain != "none"

    def gains(self, device: torch.device) -> dict[str, torch.Tensor]:
        """``{layer name: learned gains}`` (``pyro.param`` sites created at 1: shape ``(C,)`` for
        ``gain="channel"``, ``()`` for ``"layer"``); empty for ``gain="none"``."""
        if self.gain == "none":
            return {}
        return {
            layer.name: pyro.param(gain_param(layer.name),
                                   lambda layer=layer: torch.ones((layer.channels,) if self.gain == "channel" else (), device=device),
                                   constraint=constraints.positive)
            for layer in self.layers
        }

    def switch_prior(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        subsample: torch.Tensor | None = None,
        size: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """The model's prior part: the prior's own sites, then every switch site; no network.

        Same signature as :meth:`model` (only ``images.device`` is read), so it serves as
        the model of guides and predictive draws that concern the switches alone, e.g.
        ``Predictive(switches.switch_prior, num_samples=1000)(images)`` draws from the prior.

        Returns:
            ``{layer name: switch value}``.
        """
        priors = self.priors(images.device)
        return {layer.name: pyro.sample(switch_site(layer.name), priors[layer.name]) for layer in self.layers}

    def model(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        subsample: torch.Tensor | None = None,
        size: int | None = None,
    ) -> torch.Tensor:
        """The Pyro model: switch sites, then the targets given the switched network.

        Args:
            images: a minibatch of inputs.
            labels: its targets, e.g. class labels (``None`` to sample them).
            subsample: the minibatch's indices into the training set.
            size: the number of examples the likelihood is scaled to (the data-set size, or
                a smaller effective data size to temper the likelihood).

        Returns:
            the switched network's outputs (logits for the categorical likelihood).

        Raises:
            ValueError: the likelihood's distribution does not have the batch as its batch shape.
        """
        # The prior network is frozen, but a user's .train() call must not reach BatchNorm.
        if self.network.training:
            self.network.eval()
        values = self.switch_prior(images)
        gains = self.gains(images.device)
        values = {name: value * gains[name] if gains else value for name, value in values.items()}
        # Predictive(parallel=True) hands given draws over as (draws, channels): it counts the
        # channel dimension as a batch one and leaves out the data plate's. One row per draw all
        # the same, so they get the data plate's size-1 dimension back.
        values = {name: value.unsqueeze(-2) if value.dim() == 2 else value for name, value in values.items()}
        batch = images.shape[0]
        with pyro.plate("data", size=size or batch, subsample=subsample, device=images.device):
            particles = _particle_shape(values)
            if particles:
                # Vectorised ELBO particles: run every particle's switched network in one
                # batch of stacked copies, then give the logits the particle dimensions back.
                count = particles.numel()
                stacked = images.expand(count, *images.shape).flatten(0, 1)
                rows = {name: value.reshape(count, -1) for name, value in values.items()}
                with self.switched(rows) as network:
                    logits = network_output(network(stacked))
                logits = logits.reshape(*particles[:-1], batch, logits.shape[-1])
            else:
                with self.switched(values) as network:
                    logits = network_output(network(images))
            # float() undoes a lower-precision autocast, so the likelihood sums in float32.
            distribution = self.likelihood(logits.float(), labels)
            check_batch_shape(self.likelihood, distribution, logits, torch.Size([*particles[:-1], batch]))
            # A factor (a loss likelihood) observes no value: its log-density is all there is.
            observed = distribution.sample() if isinstance(distribution, dist.Unit) else labels
            pyro.sample("obs", distribution, obs=observed)
        return logits


def _particle_shape(values: Mapping[str, torch.Tensor]) -> torch.Size:
    """The switch values' dimensions left of the channel: empty for one draw, ``(P, 1)`` under
    a vectorised particle plate (``P`` particles, then the size-1 dimension of the data plate)."""
    shapes = {value.shape[:-1] for value in values.values()}
    if len(shapes) > 1:
        raise ValueError(f"every switch must have the same particle dimensions, got {sorted(map(tuple, shapes))}.")
    shape = next(iter(shapes), torch.Size())
    if shape and shape[-1] != 1:
        raise ValueError(
            "switch values with particle dimensions must end in the data plate's size-1 "
            f"dimension (as Pyro's vectorize_particles gives, e.g. (particles, 1, channels)), got {tuple(shape)}."
        )
    return shape


def network_output(output: Any) -> torch.Tensor:
    """The tensor the likelihood reads from a network's output: the output itself, or the
    ``logits`` of a Hugging Face ``ModelOutput`` (what ``LlamaForCausalLM`` and the other
    task heads return), so a library model needs no wrapper to be fitted."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"the network returned a {type(output).__name__}, neither a tensor nor an output with .logits")


def _scale_output(scale: torch.Tensor, layer: PrunableLayer):
    """A forward hook multiplying the module's output channel-wise by ``scale``."""

    def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        # conv channels are dim 1, linear features the last dim (also for 3-D inputs).
        width = output.shape[layer.channel_dim]
        shape = layer.broadcast_shape(output.dim(), width)
        return _multiply(output, layer.widened(scale, width).reshape(*scale.shape[:-1], *shape))

    return hook


def _scale_input(scale: torch.Tensor, point: SwitchInput):
    """A forward pre-hook multiplying the module's input channel-wise by ``scale``."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        first, *rest = args
        return (_multiply(first, point.scale(scale, first.dim())), *rest)

    return hook


def _multiply(tensor: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``tensor * scale``, where a ``scale`` with a leading particle dimension multiplies each
    particle's copy of the examples (the batch holds the copies one after another).

    Under bf16 autocast the layer's output is bfloat16 and the switch float32, so the product
    is float32, and so is the switch's gradient (the sum over the batch of gradient times
    activation). Casting the scale down instead kept the activation bf16 (a ResNet-20 bf16 SVI
    epoch 0.85x as long) but rounded that gradient to bfloat16's 8 bits, and the head ResNet's
    never-firing units no longer all ranked below the useful ones (dead-unit recall 1.0, 0.92
    and 0.85 over three seeds against 1.0 in each;
    ``analysis/results/ranking-quality-bf16-switch/``): the ranking is worth the time.
    """
    if scale.dim() == tensor.dim():
        return tensor * scale
    return (tensor.unflatten(0, (scale.shape[0], -1)) * scale).flatten(0, 1)
