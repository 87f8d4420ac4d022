"""Finding the prunable layers of a model: the public entry to the dependency graph.

:func:`find_prunable_layers` traces the model once (:mod:`.graph`) and returns each layer or
coupling group that can be pruned as a :class:`~pyro_dirichlet.structure.layers.PrunableLayer`.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn
from torch.nn.utils import parametrize

from pyro_dirichlet.structure._fx import as_input_tuple
from pyro_dirichlet.structure.graph import PARAMETRIZED, TracedModel, brief
from pyro_dirichlet.structure.layers import (
    COUPLING_POLICIES,
    DEFAULT_COUPLING,
    DEFAULT_ON_UNSUPPORTED,
    CouplingPolicy,
    PrunableLayer,
    PrunableLayers,
    SkippedLayer,
    UnsupportedPolicy,
    UnsupportedStructureError,
)
from pyro_dirichlet.structure.scopes import ScopedModel, trace_model

__all__ = ["find_prunable_layers"]


def find_prunable_layers(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    layers: Sequence[str] | None = None,
    *,
    coupled: CouplingPolicy = DEFAULT_COUPLING,
    on_unsupported: UnsupportedPolicy = DEFAULT_ON_UNSUPPORTED,
) -> PrunableLayers:
    """Find the layers whose output channels can be pruned, and what each one couples to.

    Automatic mode (``layers=None``) returns every Conv2d with ``groups=1`` and every Linear
    whose output does not reach the network's output (so never the classifier), and two sites of
    every ``nn.MultiheadAttention`` called without masks: its value channels (``kind="attention"``,
    named after the module) and its query/key channels (``kind="query_key"``, named
    ``<module>.query_key``); see :mod:`pyro_dirichlet.structure.attention`. An attention it
    cannot prune is listed in ``skipped`` as unsupported, never raised; likewise the heads of a
    library's attention block (Hugging Face's, :mod:`pyro_dirichlet.structure.hf_attention`),
    a site named after its value projection and pruned in whole heads. A model torch.fx cannot
    trace is read from the graph ``torch.export`` records
    (:mod:`pyro_dirichlet.structure.exported`). Between a layer
    and its consumers only operations in the op table (:mod:`pyro_dirichlet.structure.rules`)
    may appear: element-wise activations (modules, ``F.*`` and ``torch.*`` functions, tensor
    methods, products with a number), Dropout and stochastic depth (identities in eval mode),
    max/average/adaptive pooling, ``mean`` over other dimensions, BatchNorm (also sliced),
    Identity, depthwise and grouped convolutions (also sliced; a grouped one makes the layer
    prune in whole groups, ``PrunableLayer.block``), spatial slicing (``x[:, :, ::2, ::2]``),
    padding (``F.pad``, also of the channel dimension), concatenation along the channel
    dimension, residual adds and squeeze-and-excitation products (which couple layers, see the
    module docstring), per-channel parameter scales (a ConvNeXt layer scale, also sliced),
    permutes that move the channel dimension, and reshapes that keep each channel's values
    together (flatten to ``(N, -1)``, squeeze, unsqueeze). A LayerNorm over the channels, a
    concatenation along another dimension and a channel shuffle are followed too, but pin the
    channels: such a layer (and any layer coupled to it) is skipped by design, not unsupported.

    The model is not modified: a copy is traced in eval mode, without gradients.

    Args:
        model: the network.
        example_inputs: an input batch (or a tuple of positional inputs) to run shape
            propagation with; its values do not matter, its shape does.
        layers: qualified names of the layers to analyse; None for all prunable layers. The
            first member of a coupling group names the whole group (whatever ``coupled``
            says); another member of a group is rejected with the group's name.
        coupled: what automatic mode does with layers coupled through a residual add:
            ``"group"`` (the default, :data:`DEFAULT_COUPLING`) returns each group as one
            site, ``"skip"`` leaves them out.
        on_unsupported: what to do with layers whose channels the analysis cannot follow
            (an operation it does not know, a grouped convolution...): ``"raise"`` (the
            default) raises one error listing every such layer and the node that stops it;
            ``"skip"`` leaves them out and returns every other prunable layer (partial
            pruning), listing the skipped ones with their reasons in ``.skipped``.

    Returns:
        The prunable layers (and groups), in forward order, as a list whose ``skipped``
        attribute holds every Conv2d/Linear left out, with the reason (see
        :class:`~pyro_dirichlet.structure.layers.PrunableLayers`). With ``layers=[...]``,
        ``skipped`` holds only named layers skipped under ``on_unsupported="skip"``.

    Raises:
        ValueError: a name in ``layers`` is unknown or not prunable (or a non-first member of
            a group), no layer is prunable, ``coupled`` or ``on_unsupported`` is unknown, or
            the model does not run on ``example_inputs``.
        UnsupportedStructureError: under ``on_unsupported="raise"``, an operation on a
            layer's path couples channels in a way not supported (its ``problems`` list
            every such layer when there are several); in any mode, the model is untraceable.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
        >>> [layer] = find_prunable_layers(net, torch.zeros(1, 1, 28, 28))
        >>> layer.name, layer.switch_at, [c.name for c in layer.consumers]
        ('0', '1', ['1', '4'])
    """
    _check_arguments(model, layers, coupled, on_unsupported)
    graph = trace_model(model, as_input_tuple(example_inputs))
    graph.coupled = coupled
    if layers is None:
        return _find_all(model, graph, on_unsupported)
    return _find_named(model, graph, layers, on_unsupported)


def _check_arguments(model: nn.Module, layers: object, coupled: object, on_unsupported: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(layers, str):
        raise TypeError(
            f"layers must be a sequence of layer names, got the string {layers!r}; "
            f"write layers=[{layers!r}]"
        )
    if coupled not in COUPLING_POLICIES:
        raise ValueError(f"coupled must be 'group' or 'skip', got {coupled!r}")
    if on_unsupported not in ("raise", "skip"):
        raise ValueError(f"on_unsupported must be 'raise' or 'skip', got {on_unsupported!r}")


def _find_all(model: nn.Module, graph: TracedModel | ScopedModel, on_unsupported: UnsupportedPolicy) -> PrunableLayers:
    """Automatic mode: every candidate layer the analysis can prune, and the others with their reasons."""
    found, skipped, problems = [], [], []
    for name in graph.candidates:
        try:
            outcome = graph.analyse(name)
        except UnsupportedStructureError as err:
            problems.append(SkippedLayer(name, str(err), unsupported=True))
            skipped.append(problems[-1])
            continue
        if isinstance(outcome, PrunableLayer):
            found.append(outcome)
        else:
            skipped.append(SkippedLayer(name, outcome.reason, outcome.unsupported))
    # A grouped convolution's own output is skipped (reported as unsupported) without
    # raising: it stops no other layer's analysis.
    _raise_if_unsupported(model, problems, on_unsupported)
    if not found:
        raise ValueError(_no_prunable_layer_message(model, graph, skipped))
    return PrunableLayers(found, skipped)


def _find_named(
    model: nn.Module, graph: TracedModel | ScopedModel, layers: Sequence[str], on_unsupported: UnsupportedPolicy
) -> PrunableLayers:
    """The named layers, in forward order; a name that is not prunable is an error."""
    names = list(layers)
    if not names:
        raise ValueError("layers is empty: name at least one layer, or pass None for all")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"layers must contain module names (str), got {name!r}")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"layers lists {duplicated} more than once")

    found, skipped = [], []
    for name in names:
        if name not in graph.candidates:
            raise ValueError(_not_a_candidate_message(model, graph, name))
        try:
            outcome = graph.analyse(name, named=True)
        except UnsupportedStructureError as err:
            skipped.append(SkippedLayer(name, str(err), unsupported=True))
            continue
        if not isinstance(outcome, PrunableLayer):
            raise ValueError(f"layer '{name}' cannot be pruned: {outcome.reason}")
        found.append(outcome)
    _raise_if_unsupported(model, skipped, on_unsupported)
    if not found:
        raise ValueError(
            "none of the named layers can be pruned: "
            + "; ".join(f"'{layer.name}': {brief(layer.reason)}" for layer in skipped)
        )
    return PrunableLayers(sorted(found, key=lambda layer: graph.order[layer.name]), skipped)


def _raise_if_unsupported(
    model: nn.Module, problems: list[SkippedLayer], on_unsupported: UnsupportedPolicy
) -> None:
    """Raise one error naming every layer whose walk failed, unless skipping them."""
    if on_unsupported == "skip" or not problems:
        return
    if len(problems) == 1:
        raise UnsupportedStructureError(problems[0].reason, problems)
    listing = "\n".join(f"- {brief(layer.reason)}" for layer in problems)
    raise UnsupportedStructureError(
        f"{type(model).__name__}: the channels of {len(problems)} layers cannot be followed; "
        "pass on_unsupported='skip' to prune every other layer, or layers=[...] without "
        f"them:\n{listing}",
        problems,
    )


def _not_a_candidate_message(model: nn.Module, graph: TracedModel | ScopedModel, name: str) -> str:
    prunable = _prunable_names(graph)
    listing = f"prunable layers are: {', '.join(prunable)}" if prunable else "no layer is prunable"
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return f"layer '{name}' is not a module of {type(model).__name__}; {listing}"
    if parametrize.is_parametrized(module):
        return f"layer '{name}' cannot be pruned: {PARAMETRIZED}"
    return (
        f"layer '{name}' is a {type(module).__name__}, not a Conv2d, Linear or "
        f"MultiheadAttention, so it has no channels to prune; {listing}"
    )


def _prunable_names(graph: TracedModel) -> list[str]:
    names = []
    for name in graph.candidates:
        try:
            if isinstance(graph.analyse(name), PrunableLayer):
                names.append(name)
        except UnsupportedStructureError:
            pass
    return names


def _no_prunable_layer_message(model: nn.Module, graph: TracedModel | ScopedModel, skipped: list[SkippedLayer]) -> str:
    if not graph.candidates:
        return f"{type(model).__name__} has no prunable layer: it has no Conv2d or Linear"
    reasons = "; ".join(f"'{layer.name}': {brief(layer.reason)}" for layer in skipped)
    return f"{type(model).__name__} has no prunable layer ({reasons})"
