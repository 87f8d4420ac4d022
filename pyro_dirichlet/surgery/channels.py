"""Physically remove output channels from a network, and fold per-channel scales into its weights.

:func:`prune_channels` asks :mod:`pyro_dirichlet.structure` which modules each layer's channels
reach (or takes that answer, ``layers=``, so that a caller who has it traces once), and applies
the slicing functions of :mod:`pyro_dirichlet.surgery.slicing` to a copy of the model. Which
channels to keep is decided elsewhere (the policy); this module only cuts.
"""

from __future__ import annotations

import copy
import numbers
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from pyro_dirichlet.structure import Consumer, PrunableLayer, find_prunable_layers
from pyro_dirichlet.structure.attention import ATTENTION_PARTS
from pyro_dirichlet.structure.hf_attention import resize_attention_blocks
from pyro_dirichlet.structure.rules import OPS, fused_activation, linear_features
from pyro_dirichlet.surgery.attention import scale_attention_channels, slice_attention
from pyro_dirichlet.surgery.slicing import (
    add_to_bias,
    is_transposed_linear,
    scale_batchnorm,
    scale_output_channels,
    slice_batchnorm,
    slice_conv2d_in,
    slice_conv2d_out,
    slice_depthwise_conv2d,
    slice_grouped_conv2d,
    slice_linear_in,
    slice_linear_out,
    slice_parameter,
    slice_response_norm,
)

__all__ = ["prune_channels", "mask_channels", "fold_scales"]

Indices = Sequence[int] | Tensor


def prune_channels(
    model: nn.Module,
    keep: Mapping[str, Indices],
    example_inputs: Tensor | tuple[Tensor, ...],
    *,
    layers: Sequence[PrunableLayer] | None = None,
) -> nn.Module:
    """A physically smaller copy of ``model`` that keeps only the given output channels.

    Each named layer's weight and bias lose the dropped output channels; a BatchNorm it feeds
    loses the same features, and every consumer loses the matching input channels (or, after a
    flatten, the matching blocks of input features; after a concatenation, the channels at the
    layer's offset). A depthwise convolution reading the channels loses the matching filters.
    An attention site (an ``nn.MultiheadAttention``'s values, ``kind="attention"``, or its
    queries and keys, ``kind="query_key"``) keeps the given channels: the module is replaced by
    a :class:`~pyro_dirichlet.surgery.attention.PrunedMultiheadAttention` with the same
    parameter names, whose heads keep the channels of ``keep`` in their range (so heads may
    differ in width). Layers not in ``keep`` are untouched.

    Coupled layers are handled automatically: the name of a coupling group (its first member,
    see :mod:`pyro_dirichlet.structure`) prunes every member of the residual stream, their
    BatchNorms and every module that reads the stream, with the same indices.

    In eval mode the result computes what ``model`` computes when the dropped channels are
    zeroed at each layer's ``switch_at`` module (see :func:`mask_channels`). Where something
    between the switch and a consumer maps 0 to a non-zero constant (a Sigmoid, a BatchNorm
    after a ReLU), that constant's contribution is added to the consumer's bias so the
    equivalence still holds.

    Args:
        model: the network; it is not modified, even when an argument is rejected.
        keep: maps a prunable layer's (or coupling group's) qualified name to the
            output-channel indices to keep, as a sequence of ints or an integer tensor. Indices
            are kept in sorted order; a layer must keep at least one channel.
        example_inputs: an input batch (or tuple of inputs) to trace the model with, and to
            check the result on.
        layers: the model's prunable layers as :func:`~pyro_dirichlet.structure.find_prunable_layers`
            returned them (for this model, or a copy of it with the same module names and
            widths), so that the model is not traced again; None to trace it here.

    Returns:
        A new module of the same classes (but for pruned attention, above), with the same
        training mode as ``model``.

    Raises:
        ValueError: a layer is unknown or not prunable (or a member of a coupling group other
            than the one that names it), an index is out of range, duplicated or not an
            integer, a layer would keep no channel, or the model does not run on
            ``example_inputs``.
        TypeError: ``keep`` is not a mapping from names to index collections.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> small = prune_channels(net, {"0": [1, 5, 6]}, torch.zeros(1, 4))
        >>> small[0].out_features, small[2].in_features
        (3, 3)
    """
    selection = _resolve(model, keep, example_inputs, "keep", _kept_indices, layers)
    if not selection:
        return copy.deepcopy(model)
    inputs = _as_inputs(example_inputs)
    corrections = _bias_corrections(model, selection, inputs)

    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    # Bias corrections are computed against the unsliced weights, so they go first.
    for name, delta in corrections.items():
        add_to_bias(modules[name], delta)
    _slice_selection(modules, selection)
    resize_attention_blocks(pruned)

    try:
        _forward_in_eval_mode(pruned, inputs)
    except Exception as err:  # a bug here, not a user error: say which cut broke the model
        raise RuntimeError(
            f"the pruned model no longer runs ({type(err).__name__}: {err}); pruned layers: "
            f"{[layer.name for layer, _ in selection]}"
        ) from err
    return pruned


def mask_channels(
    model: nn.Module,
    keep: Mapping[str, Indices],
    example_inputs: Tensor | tuple[Tensor, ...],
    *,
    layers: Sequence[PrunableLayer] | None = None,
) -> nn.Module:
    """A copy of ``model`` whose dropped channels are multiplied by zero at the switch points.

    This is the reference :func:`prune_channels` is equivalent to: forward hooks on each
    layer's switch points (every member's, for a coupling group) zero the channels not in
    ``keep`` (an attention's dropped value or query channels, inside the module, are zeroed
    through their rows of the copy's input projection); no weight changes shape.

    Args:
        model: the network; it is not modified.
        keep: as in :func:`prune_channels`.
        example_inputs: an input batch (or tuple of inputs) to trace the model with.
        layers: the model's prunable layers as :func:`~pyro_dirichlet.structure.find_prunable_layers`
            returned them (for this model, or a copy of it with the same module names and
            widths), so that the model is not traced again; None to trace it here.

    Returns:
        A new module, with forward hooks, in the same training mode as ``model``.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> masked = mask_channels(net, {"0": [1, 5, 6]}, torch.zeros(1, 4))
        >>> int((masked[:2](torch.randn(3, 4))[:, 0] == 0).sum())
        3
    """
    return _masked_copy(model, _resolve(model, keep, example_inputs, "keep", _kept_indices, layers))


def fold_scales(
    model: nn.Module,
    scales: Mapping[str, Tensor | Sequence[float]],
    example_inputs: Tensor | tuple[Tensor, ...],
    *,
    layers: Sequence[PrunableLayer] | None = None,
) -> nn.Module:
    """A copy of ``model`` with channel ``c`` of each layer's output multiplied by a scale.

    The scale is folded into weights at each switch point (every member's, for a coupling
    group): the layer's weight rows and bias when the switch sits on the layer, the
    BatchNorm's affine weight and bias when it sits on a BatchNorm, an attention's value (or
    query) rows of its input projection for an attention site. The copy computes what
    ``model`` computes with forward hooks multiplying channel ``c`` at the switch points by
    ``scales[name][c]``. Used to fold the posterior-mean
    switch values (``s_c * C``) into the weights before pruning.

    Args:
        model: the network; it is not modified.
        scales: maps a prunable layer's name to one finite scale per output channel.
        example_inputs: an input batch (or tuple of inputs) to trace the model with.
        layers: the model's prunable layers as :func:`~pyro_dirichlet.structure.find_prunable_layers`
            returned them (for this model, or a copy of it with the same module names and
            widths), so that the model is not traced again; None to trace it here.

    Raises:
        ValueError: unknown or unprunable layer, wrong number of scales, non-finite scale, or
            a ``switch_at`` BatchNorm without affine parameters.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> folded = fold_scales(net, {"0": torch.tensor([1.0, 0.5, 2.0])}, torch.zeros(1, 2))
        >>> torch.equal(folded[0].weight[1], net[0].weight[1] * 0.5)
        True
    """
    selection = _resolve(model, scales, example_inputs, "scales", _checked_scales, layers)
    modules = dict(model.named_modules())
    for layer, _ in selection:
        for point in layer.multiply_points:
            at = modules[point]
            if isinstance(at, nn.modules.batchnorm._BatchNorm) and not at.affine:
                raise ValueError(
                    f"scales['{layer.name}']: its switch sits on BatchNorm '{point}', "
                    "which has no affine weight and bias to fold a scale into (affine=False)"
                )
            if not _scale_passes_activation(at):
                raise ValueError(
                    f"scales['{layer.name}']: its switch sits after the activation fused into "
                    f"'{point}' ({type(fused_activation(at)).__name__}), which a scale of the "
                    "BatchNorm's weight and bias does not pass through"
                )
    folded = copy.deepcopy(model)
    modules = dict(folded.named_modules())
    for layer, factors in selection:
        for point in layer.multiply_points:
            if layer.kind in ATTENTION_PARTS:
                scale_attention_channels(modules[point], factors, ATTENTION_PARTS[layer.kind])
            elif point in layer.members or isinstance(modules[point], nn.Conv2d):  # a reswitched depthwise conv
                module = modules[point]
                width = module.out_channels if isinstance(module, nn.Conv2d) else linear_features(module)[1]
                scale_output_channels(module, layer.widened(factors, width))
            else:  # the BatchNorm after a member, or a reswitched one
                scale_batchnorm(modules[point], factors)
    return folded


# --- validating what the caller asked for ------------------------------------------------------


def _resolve(
    model: nn.Module,
    selection: Any,
    example_inputs: Any,
    argument: str,
    check: Callable[[PrunableLayer, Any, str], Tensor],
    layers: Sequence[PrunableLayer] | None,
) -> list[tuple[PrunableLayer, Tensor]]:
    """Pair each named layer's structure with its checked per-channel value, in forward order."""
    if not isinstance(selection, Mapping):
        raise TypeError(
            f"{argument} must be a mapping from layer names to per-channel values, "
            f"got {type(selection).__name__}"
        )
    for name in selection:
        if not isinstance(name, str):
            raise TypeError(f"{argument} must be keyed by layer names (str), got key {name!r}")
    if layers is None:
        if not selection:
            return []
        found = find_prunable_layers(model, example_inputs, layers=list(selection))
    else:
        found = _given_layers(model, selection, layers, argument)
    return [(layer, check(layer, selection[layer.name], argument)) for layer in found]


def _given_layers(
    model: nn.Module, selection: Mapping[str, Any], layers: Any, argument: str
) -> list[PrunableLayer]:
    """The entries of ``layers`` that ``selection`` names, in their (forward) order."""
    if isinstance(layers, (str, PrunableLayer)) or not isinstance(layers, Sequence):
        raise TypeError(
            f"layers must be a sequence of PrunableLayer (find_prunable_layers' result), "
            f"got {type(layers).__name__}"
        )
    by_name = {}
    for layer in layers:
        if not isinstance(layer, PrunableLayer):
            raise TypeError(f"layers must hold PrunableLayer objects, got {type(layer).__name__}")
        by_name[layer.name] = layer
    unknown = [name for name in selection if name not in by_name]
    if unknown:
        raise ValueError(
            f"{argument} names {unknown}, which the given layers do not hold; they hold "
            f"{sorted(by_name)} (pass layers=None to trace the model and look them up)"
        )
    modules = dict(model.named_modules())
    chosen = [layer for layer in layers if layer.name in selection]
    for layer in chosen:
        # A cheap check that the layers describe this model, not another one.
        for member in layer.members:
            module = modules.get(member)
            width = getattr(module, "out_channels", getattr(module, "out_features", getattr(module, "nf", None)))
            if layer.kind in ATTENTION_PARTS:
                width = getattr(module, "embed_dim", None)
            if width != layer.channels and not (layer.offset and width is not None and width >= layer.offset + layer.channels):
                raise ValueError(
                    f"layers do not describe this model: layer '{layer.name}' has "
                    f"{layer.channels} channels in layers, but the model's '{member}' is "
                    f"{'missing' if module is None else f'{type(module).__name__} of width {width}'}"
                )
    return chosen


def _kept_indices(layer: PrunableLayer, indices: Any, argument: str) -> Tensor:
    where = f"{argument}['{layer.name}']"
    if isinstance(indices, Tensor):
        if indices.dtype == torch.bool:
            raise ValueError(
                f"{where} is a boolean tensor; pass channel indices, e.g. mask.nonzero().flatten()"
            )
        if indices.is_floating_point() or indices.is_complex():
            raise ValueError(f"{where} must hold integer channel indices, got dtype {indices.dtype}")
        if indices.dim() != 1:
            raise ValueError(f"{where} must be a 1-D tensor of indices, got shape {tuple(indices.shape)}")
        values = indices.detach().cpu().tolist()
    elif isinstance(indices, (str, bytes, Mapping)) or not hasattr(indices, "__iter__"):
        raise TypeError(f"{where} must be a sequence of channel indices, got {type(indices).__name__}")
    else:
        values = list(indices)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(
                    f"{where} must hold integer channel indices, got {value!r} "
                    f"({type(value).__name__})"
                )
        values = [int(value) for value in values]
    if not values:
        raise ValueError(
            f"{where} is empty: layer '{layer.name}' must keep at least one of its "
            f"{layer.channels} channels"
        )
    for value in values:
        if not 0 <= value < layer.channels:
            raise ValueError(
                f"{where} has index {value}, out of range for layer '{layer.name}' with "
                f"{layer.channels} output channels (0 to {layer.channels - 1})"
            )
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"{where} lists channels {repeated} of layer '{layer.name}' more than once")
    if layer.block > 1:
        _check_whole_blocks(layer, values, where)
    return torch.tensor(sorted(values), dtype=torch.long)


def _check_whole_blocks(layer: PrunableLayer, values: list[int], where: str) -> None:
    kept = set(values)
    for start in range(0, layer.channels, layer.block):
        block = set(range(start, start + layer.block))
        if kept & block and not block <= kept:
            grouped = [c.name for c in layer.consumers if c.kind == "grouped"]
            why = f"feeds the grouped convolution {grouped[0]!r}" if grouped else "holds the values of attention heads"
            raise ValueError(
                f"{where} keeps part of channels {start} to {start + layer.block - 1}: layer "
                f"'{layer.name}' {why}, so it keeps "
                f"whole blocks of {layer.block} channels (plan_keep(..., blocks=...) rounds "
                "to them)"
            )


def _checked_scales(layer: PrunableLayer, values: Any, argument: str) -> Tensor:
    where = f"{argument}['{layer.name}']"
    try:
        factors = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{where} must be a tensor or sequence of numbers: {err}") from err
    if not (factors.is_floating_point() or factors.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{where} must hold real numbers, got dtype {factors.dtype}")
    if factors.shape != (layer.channels,):
        raise ValueError(
            f"{where} must hold one scale per output channel of layer '{layer.name}', i.e. "
            f"shape ({layer.channels},), got {tuple(factors.shape)}"
        )
    if not torch.isfinite(factors).all():
        raise ValueError(f"{where} holds non-finite scales (inf or nan)")
    return factors.detach()


# --- the reference, and the constants dropped channels leave behind ---------------------------


def _scale_passes_activation(module: nn.Module) -> bool:
    """Whether scaling a fused norm-activation's BatchNorm scales its output alike (a ReLU's
    ``relu(a * x) = a * relu(x)`` for ``a >= 0``; not a SiLU's); True for any other module."""
    activation = fused_activation(module)
    if activation is None:
        return True
    op = OPS.get(type(activation))
    return op is not None and op.commutes_with_scale


def _masked_copy(model: nn.Module, selection: list[tuple[PrunableLayer, Tensor]]) -> nn.Module:
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    for layer, kept in selection:
        factors = torch.zeros(layer.channels)
        factors[kept] = 1.0
        for point in layer.multiply_points:
            if layer.kind in ATTENTION_PARTS:  # the channels are inside the module: zero their weights
                scale_attention_channels(modules[point], factors, ATTENTION_PARTS[layer.kind])
            else:
                modules[point].register_forward_hook(_multiply_channels_hook(layer, factors))
    return masked


def _multiply_channels_hook(layer: PrunableLayer, factors: Tensor) -> Callable:
    def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        return layer.scaled(output, factors.to(device=output.device, dtype=output.dtype))

    return hook


def _as_inputs(example_inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)


def _forward_in_eval_mode(model: nn.Module, inputs: tuple[Tensor, ...]) -> Any:
    modes = {module: module.training for module in model.modules()}
    try:
        with torch.no_grad():
            return model.eval()(*inputs)
    finally:
        for module, training in modes.items():
            module.training = training


def _bias_corrections(
    model: nn.Module,
    selection: list[tuple[PrunableLayer, Tensor]],
    inputs: tuple[Tensor, ...],
) -> dict[str, Tensor]:
    """Bias changes that make up for dropped channels that reach a consumer as constants.

    A channel zeroed at the switch reaches a consumer as the constant ``f(0)`` when a
    Sigmoid or a later BatchNorm lies in between; removing the channel removes that constant's
    contribution, which the consumer's bias then has to carry. The constant is read off a
    forward pass of the masked model, so it is exactly what the network computes.
    """
    wanted: dict[str, list[tuple[PrunableLayer, Tensor, Consumer]]] = {}
    for layer, kept in selection:
        for consumer in layer.consumers:
            if (
                not consumer.zero_preserved
                and consumer.kind in ("conv_in", "linear_in")
                and len(kept) < layer.channels
            ):
                wanted.setdefault(consumer.name, []).append((layer, kept, consumer))
    if not wanted:
        return {}
    masked = _masked_copy(model, selection)
    modules = dict(masked.named_modules())
    seen: dict[str, Tensor] = {}
    for name in wanted:
        modules[name].register_forward_pre_hook(
            lambda module, args, name=name: seen.__setitem__(name, args[0].detach())
        )
    _forward_in_eval_mode(masked, inputs)

    corrections = {}
    for name, entries in wanted.items():
        module = modules[name]
        total = None
        for layer, kept, consumer in entries:
            features = consumer.feature_indices(_complement(kept, layer.channels))
            if consumer.kind == "conv_in":
                values = seen[name][:, features]
                constant = values[:1, :, :1, :1]
                weight_sums = module.weight.detach()[:, features].sum(dim=(2, 3))
            else:
                values = seen[name][..., features].reshape(-1, len(features))
                constant = values[:1]
                weight_sums = module.weight.detach()[:, features]
                if is_transposed_linear(module):
                    weight_sums = module.weight.detach()[features].T
            if not torch.allclose(values, constant.expand_as(values), rtol=1e-5, atol=1e-6):
                raise RuntimeError(
                    f"layer '{layer.name}': the dropped channels do not reach '{name}' as "
                    "constants, so their contribution cannot be moved into its bias"
                )
            delta = weight_sums @ constant.reshape(-1).to(weight_sums.dtype)
            total = delta if total is None else total + delta
        if total is not None and bool(total.ne(0).any()):
            corrections[name] = total
    return corrections


def _complement(kept: Tensor, channels: int) -> Tensor:
    dropped = torch.ones(channels, dtype=torch.bool)
    dropped[kept] = False
    return dropped.nonzero().flatten()


def _slice_selection(
    modules: Mapping[str, nn.Module], selection: list[tuple[PrunableLayer, Tensor]]
) -> None:
    """Slice every member's outputs, then each consumer once, whatever reaches it.

    A consumer after a concatenation reads several layers at different offsets; its dropped
    inputs are collected first, so that slicing for one layer cannot shift the next one's.
    An attention is replaced in its parent by its pruned copy, built once for both its sites.
    """
    dropped: dict[str, tuple[str, list[Tensor]]] = {}
    dims: dict[str, int] = {}
    attentions: dict[str, dict[str, Tensor]] = {}
    for layer, kept in selection:
        if len(kept) == layer.channels:
            continue
        if layer.kind in ATTENTION_PARTS:
            attentions.setdefault(layer.switch_at, {})[ATTENTION_PARTS[layer.kind]] = kept
            continue
        removed = _complement(kept, layer.channels)
        for member in layer.members:
            if layer.offset:  # part of a fused projection: sliced once with its other parts
                dropped.setdefault(member, ("linear_out", []))[1].append(removed + layer.offset)
                continue
            (slice_conv2d_out if layer.kind == "conv" else slice_linear_out)(modules[member], kept)
        for consumer in layer.consumers:
            dims[consumer.name] = consumer.dim
            entry = dropped.setdefault(consumer.name, (consumer.kind, []))
            entry[1].append(consumer.feature_indices(removed))
    for name, kept_channels in attentions.items():
        parent, _, attribute = name.rpartition(".")
        setattr(modules[parent], attribute, slice_attention(modules[name], **kept_channels))
    for name, (kind, parts) in dropped.items():
        if kind == "scale":  # a parameter, not a module: its owner gets the sliced copy
            owner, _, attribute = name.rpartition(".")
            dim = dims[name]
            parameter = getattr(modules[owner], attribute)
            keep = _complement(torch.cat(parts), parameter.shape[dim])
            setattr(modules[owner], attribute, slice_parameter(parameter, dim, keep))
            continue
        module = modules[name]
        size = {
            "batchnorm": lambda m: m.num_features,
            "conv_in": lambda m: m.in_channels,
            "depthwise": lambda m: m.in_channels,
            "grouped": lambda m: m.in_channels,
            "linear_in": lambda m: linear_features(m)[0],
            "linear_out": lambda m: linear_features(m)[1],
            "response_norm": lambda m: m.weight.numel(),
        }[kind](module)
        keep = _complement(torch.cat(parts), size)
        {
            "batchnorm": slice_batchnorm,
            "conv_in": slice_conv2d_in,
            "depthwise": slice_depthwise_conv2d,
            "grouped": slice_grouped_conv2d,
            "linear_in": slice_linear_in,
            "linear_out": slice_linear_out,
            "response_norm": slice_response_norm,
        }[kind](module, keep)
