"""What each operation does to the channels of a tensor it reads: the one op table.

Every operation the dependency walk can follow has one row in :data:`OPS`, keyed by module
class, function, (a ``str``) tensor method name, or :class:`Qualified` name of another
package's function. A row says how a channel flow passes through or ends (:attr:`Op.follow`:
an activation passes the channels on, a BatchNorm is sliced and passes them on, a Conv2d's
input consumes them), what the op does when it reads several tensors (a residual sum or a
gating product couples them, a concatenation shifts them), and whether it commutes with a
non-negative per-channel scale, which is what lets :mod:`pyro_dirichlet.structure.placement`
move a switch past it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import fx, nn

from pyro_dirichlet.structure._fx import any_nonzero, argument, describe, shape_of
from pyro_dirichlet.structure.foreign import (
    LAYER_SUBCLASSES, RESPONSE_NORM, SAME_PADDING, Qualified, is_rms_norm, layer_base, linear_features, qualified_class,
)
from pyro_dirichlet.structure.hf_attention import is_attention_block
from pyro_dirichlet.structure.layers import Consumer, UnsupportedStructureError

__all__ = [
    "LAYER_SUBCLASSES", "OPS", "RESPONSE_NORM", "Flow", "NotFoldable", "Op", "Pinned", "Qualified", "Rule",
    "fused_activation", "is_depthwise", "layer_base", "linear_features", "op_of", "qualified_class",
]


@dataclass(frozen=True)
class Flow:
    """A tensor on a layer's path, and where that layer's channels sit in it."""

    node: fx.Node
    channel_dim: int  # non-negative index into the node's shape
    features_per_channel: int
    # A channel zeroed at the switch may carry a non-zero constant here (after a Sigmoid or a
    # BatchNorm that follows the switch) ...
    may_be_nonzero: bool = False
    # ... and that constant may differ between positions (average pooling over zero padding).
    uniform: bool = True
    # Where the layer's channel 0 sits along channel_dim (shifted by a concat or a channel pad).
    offset: int = 0
    # The module (a BatchNorm, a depthwise conv's bias) that turned the zero into the constant,
    # where multiplying its output by the switch again would restore the zero (see
    # PrunableLayer.reswitch_points); None otherwise.
    constant_from: str | None = None


class NotFoldable(UnsupportedStructureError):
    """A dropped channel's constant cannot be folded: only an error if the layer is pruned."""


class Pinned(UnsupportedStructureError):
    """The channels reach an operation that ties them together for good (a LayerNorm over
    them, a concatenation along another dimension): followed, understood, and not prunable
    exactly, like a classifier's outputs. Not an error: the layer is left unpruned.

    Attributes:
        where: the operation, as :func:`describe` names it.
        what: what it does to the channels, as a clause ("normalises over them, ...").
    """

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"it reaches {where}, which {what}; channels tied like this are left unpruned")
        self.where, self.what = where, what


class Walker(Protocol):
    """What a rule needs from the walk that calls it (see :mod:`.graph`)."""

    modules: dict[str, nn.Module]

    def unknown(self, layer: str, user: fx.Node, why: str) -> UnsupportedStructureError: ...

    def width(self, layer: str) -> int: ...


#: A rule takes (walk, layer name, incoming flow, user node, module or None) and returns the
#: outgoing :class:`Flow`, a :class:`Consumer`, a ``(Consumer, Flow)`` pair for a module that
#: consumes and passes channels on (a depthwise conv), or raises UnsupportedStructureError.
Rule = Callable[[Walker, str, Flow, fx.Node, "nn.Module | None"], Any]


@dataclass(frozen=True)
class Op:
    """One row of the op table: what an operation does to a layer's channels.

    Args:
        follow: the rule the walk applies when the op reads one tensor holding the channels;
            ``None`` for ops that always combine several tensors (sums, concatenations).
        combines: what the walk does when the op reads several tensors: ``"sum"`` for a
            residual add or subtraction (it couples its inputs' channels), ``"product"`` for
            a product (a squeeze-and-excitation gate: couples them too), ``"concat"`` for a
            concatenation (it shifts them); ``None`` when several tensors are not supported.
        commutes_with_scale: ``f(a * x) = a * f(x)`` channel by channel for every ``a >= 0``
            (ReLU, pooling, Dropout, flatten), so a switch may multiply after it instead.
        scalar_operand: the op multiplies or divides by its second argument, and commutes
            only when that argument is a number, not a tensor.
        parameters: the op may read the model's own tensors besides the channels (a
            functional LayerNorm's weight and bias); its rule decides what they mean.
    """

    follow: Rule | None
    combines: Literal["sum", "product", "concat"] | None = None
    commutes_with_scale: bool = False
    scalar_operand: bool = False
    parameters: bool = False

    def commutes(self, node: fx.Node) -> bool:
        """Whether this call of the op commutes with a non-negative per-channel scale."""
        if not self.commutes_with_scale:
            return False
        if self.scalar_operand:
            return len(node.args) == 2 and isinstance(node.args[1], (int, float))
        return True


def op_of(node: fx.Node, modules: dict[str, nn.Module]) -> Op | None:
    """The table row for ``node``'s operation, or ``None`` if its effect on channels is unknown."""
    if node.op == "call_module":
        module = modules[node.target]
        cls = type(module)
        found = OPS.get(cls) or OPS.get(qualified_class(cls))
        return found or (OPS[nn.RMSNorm] if is_rms_norm(cls) else _ATTENTION if is_attention_block(module) else None)
    if node.op == "call_method":
        return OPS.get(node.target)
    if node.op == "call_function":
        try:
            op = OPS.get(node.target)
        except TypeError:  # an unhashable target has no row
            return None
        if op is None:
            qualified = f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__qualname__', '')}"
            op = OPS.get(Qualified(qualified))
        return op
    return None


def fused_activation(module: nn.Module) -> nn.Module | None:
    """The activation a fused norm-activation layer (timm's ``BatchNormAct2d``) applies after
    normalising, or ``None`` for another module."""
    if OPS.get(qualified_class(type(module))) is _BATCHNORM_ACT:
        return module.act
    return None


def is_depthwise(module: nn.Module) -> bool:
    """A Conv2d whose filter ``c`` reads only channel ``c`` (``groups == in == out``)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


# --- the rules: what each operation does to a channel flow -------------------------------------

def _elementwise(maps_zero_to_zero: bool) -> Rule:
    def rule(graph, layer, flow, user, module):
        return replace(flow, node=user, may_be_nonzero=flow.may_be_nonzero or not maps_zero_to_zero)

    return rule


def _pool(spatial_dims: int, padding_of: Callable[[fx.Node, Any], tuple[bool, bool]]) -> Rule:
    """A pooling op: channels pass through unchanged if the input is ``(N, C, *spatial)``."""

    def rule(graph, layer, flow, user, module):
        ndim = len(shape_of(flow.node))
        if ndim != spatial_dims + 2 or flow.channel_dim != 1 or flow.features_per_channel != 1:
            raise graph.unknown(
                layer, user, f"it pools a {ndim}-D tensor whose channels are not dimension 1"
            )
        returns_indices, averages_padding = padding_of(user, module)
        if returns_indices:
            raise graph.unknown(layer, user, "it returns pooling indices")
        uniform = flow.uniform and not (averages_padding and flow.may_be_nonzero)
        return replace(flow, node=user, uniform=uniform)

    return rule


def _module_pool_padding(user: fx.Node, module: nn.Module) -> tuple[bool, bool]:
    returns_indices = bool(getattr(module, "return_indices", False))
    averages_padding = isinstance(module, (nn.AvgPool1d, nn.AvgPool2d)) and (
        any_nonzero(module.padding) and module.count_include_pad
    )
    return returns_indices, averages_padding


def _function_pool_padding(user: fx.Node, module: None) -> tuple[bool, bool]:
    # Positions follow the signatures of torch.nn.functional's pooling functions.
    if user.target in (F.max_pool1d, F.max_pool2d):
        return bool(argument(user, 6, "return_indices", False)), False
    if user.target in (F.adaptive_max_pool1d, F.adaptive_max_pool2d):
        return bool(argument(user, 2, "return_indices", False)), False
    if user.target in (F.avg_pool1d, F.avg_pool2d):
        padding = argument(user, 3, "padding", 0)
        count_include_pad = argument(user, 5, "count_include_pad", True)
        return False, any_nonzero(padding) and bool(count_include_pad)
    return False, False


def _resample(graph, layer, flow, user, module):
    """``F.interpolate``, ``nn.Upsample``: each output value is a fixed weighted sum of one
    channel's input values (weights summing to 1), so channels pass on whole, a zero channel
    stays zero, a constant one stays the same constant, and a channel scale commutes."""
    ndim = len(shape_of(flow.node))
    if ndim < 3 or flow.channel_dim != 1 or flow.features_per_channel != 1:
        raise graph.unknown(layer, user, f"it resamples a {ndim}-D tensor whose channels are not dimension 1")
    return replace(flow, node=user)


def _reshape(graph, layer, flow, user, module):
    """flatten/view/reshape/squeeze/unsqueeze: follows reshapes that keep each channel whole.

    Row-major order keeps channel ``c``'s values contiguous, so a reshape keeps the channels
    when the batch dimension and everything before the channel dimension stay as they were,
    and the channel dimension either survives with the same size and the same number of
    values after it (dropping or adding size-1 dimensions, merging spatial ones), or becomes
    the last dimension with all the values after it flattened in (``(N, C, H, W) -> (N, -1)``).
    """
    before, after = shape_of(flow.node), shape_of(user)
    if after == before:
        return replace(flow, node=user)
    d = flow.channel_dim
    lead, width, rest = math.prod(before[:d]), before[d], math.prod(before[d + 1:])
    if d > 0 and after and after[0] == before[0]:
        for e in range(1, len(after)):
            if math.prod(after[:e]) != lead:
                continue
            if after[e] == width and math.prod(after[e + 1:]) == rest:
                return replace(flow, node=user, channel_dim=e)
            if after[e] == width * rest and e == len(after) - 1:
                return replace(
                    flow,
                    node=user,
                    channel_dim=e,
                    features_per_channel=flow.features_per_channel * rest,
                    offset=flow.offset * rest,
                )
    if _is_channel_shuffle(flow, user):
        raise Pinned(
            describe(user, graph.modules),
            "starts a channel shuffle (a view to groups, a transpose, a view back), whose order "
            "depends on the tensor's width, so removing a channel would reorder the others",
        )
    raise graph.unknown(
        layer,
        user,
        f"it reshapes {tuple(before)} to {tuple(after)}, splitting or mixing the channel "
        "dimension; only reshapes that keep each channel's values together are followed "
        "(flatten to (N, -1), squeeze, unsqueeze)",
    )


def _is_channel_shuffle(flow: Flow, user: fx.Node) -> bool:
    """``x.view(N, g, C // g, H, W).transpose(1, 2).contiguous().view(N, C, H, W)`` (ShuffleNet):
    ``user`` splits the channels into groups, and its only reader chain swaps the two and
    merges them back to the shape before."""
    before, split = shape_of(flow.node), shape_of(user)
    if flow.channel_dim != 1 or flow.features_per_channel != 1 or len(split) != len(before) + 1:
        return False
    if split[0] != before[0] or split[1] * split[2] != before[1] or split[3:] != before[2:]:
        return False
    node, swapped = user, False
    while len(node.users) == 1:
        (node,) = node.users
        if node.target in (torch.transpose, "transpose") and not swapped:
            dims = {argument(node, 1, "dim0", None), argument(node, 2, "dim1", None)}
            if dims != {1, 2}:
                return False
            swapped = True
        elif node.target == "contiguous":
            continue
        elif swapped and node.target in ("view", "reshape", torch.reshape, torch.flatten, "flatten"):
            return "shape" in node.meta and tuple(shape_of(node)) == tuple(before)
        else:
            return False
    return False


def _permute(graph, layer, flow, user, module):
    """``x.permute(...)``, ``x.transpose(a, b)``: the channel dimension moves, whole."""
    ndim = len(shape_of(flow.node))
    if user.target in (torch.transpose, "transpose", torch.swapaxes, "swapaxes"):
        a, b = argument(user, 1, "dim0", None), argument(user, 2, "dim1", None)
        if not isinstance(a, int) or not isinstance(b, int):
            raise graph.unknown(layer, user, "its dimensions are not constants")
        dims = list(range(ndim))
        dims[a % ndim], dims[b % ndim] = dims[b % ndim], dims[a % ndim]
    else:
        dims = user.args[1:] if user.op == "call_method" else argument(user, 1, "dims", None)
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = dims[0]
        if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) for d in dims):
            raise graph.unknown(layer, user, "its dimensions are not constants")
        dims = [d % ndim for d in dims]
    if dims[0] != 0:
        raise graph.unknown(layer, user, "it moves the batch dimension")
    return replace(flow, node=user, channel_dim=dims.index(flow.channel_dim))


def _layernorm(graph, layer, flow, user, module):
    """LayerNorm (the module, or ``F.layer_norm``) over dimensions other than the channels
    keeps them apart; over the channels it ties them (every channel shifts the others' mean
    and variance), so masking one is not removing it: the channels are pinned."""
    ndim = len(shape_of(flow.node))
    # (a library's RMS norm over the last dimension may have no normalized_shape, only its weight)
    shape = (getattr(module, "normalized_shape", None) or tuple(module.weight.shape)) if module is not None \
        else argument(user, 1, "normalized_shape", None)
    shape = (shape,) if isinstance(shape, int) else shape
    if not isinstance(shape, (tuple, list)):
        raise graph.unknown(layer, user, "its normalised shape is not a constant")
    normalized = range(ndim - len(shape), ndim)
    if flow.channel_dim in normalized:
        raise Pinned(
            describe(user, graph.modules),
            "normalises over them, so removing one would change all the others",
        )
    # A dropped channel becomes the LayerNorm's bias, which varies along the normalised dims.
    return replace(flow, node=user, may_be_nonzero=True, uniform=False)


def _attention_input(graph, layer, flow, user, module):
    """A library attention block (:mod:`.hf_attention`) reading the channels: its projections' inputs stay."""
    raise Pinned(describe(user, graph.modules), "reads them in every head's projections, whose inputs are kept")


def _prelu(graph, layer, flow, user, module):
    """PReLU with one shared slope is element-wise; per-channel slopes would need slicing."""
    if module.num_parameters != 1:
        raise graph.unknown(
            layer, user, f"it has {module.num_parameters} per-channel slopes, which are not sliced"
        )
    return replace(flow, node=user)


def _clamp(graph, layer, flow, user, module):
    """``x.clamp(min, max)``: keeps 0 at 0 when the range holds 0, else maps it to a bound."""
    low, high = argument(user, 1, "min", None), argument(user, 2, "max", None)
    if not all(bound is None or isinstance(bound, (int, float)) for bound in (low, high)):
        raise graph.unknown(layer, user, "it clamps to tensor bounds")
    keeps_zero = (low is None or low <= 0) and (high is None or high >= 0)
    return replace(flow, node=user, may_be_nonzero=flow.may_be_nonzero or not keeps_zero)


def _getitem(graph, layer, flow, user, module):
    """``x[:, :, ::2, ::2]``: slicing other dimensions leaves every channel whole."""
    index = user.args[1]
    index = index if isinstance(index, tuple) else (index,)
    ndim = len(shape_of(flow.node))
    if len(index) > ndim or not all(isinstance(i, slice) for i in index):
        raise graph.unknown(layer, user, f"it indexes with {index!r}; only slices are supported")
    if flow.channel_dim < len(index) and index[flow.channel_dim] != slice(None):
        # The bounds are numbers in the model's code (GhostNet's out[:, :self.out_chs]):
        # removing a channel would shift which ones it keeps.
        raise Pinned(
            describe(user, graph.modules),
            "slices the channel dimension with fixed bounds, so removing a channel would "
            "shift which channels it keeps",
        )
    if flow.features_per_channel != 1:
        raise graph.unknown(layer, user, "it slices flattened channels")
    return replace(flow, node=user)


def _split(graph, layer, flow, user, module):
    """``x.split(sizes, dim)``, ``x.chunk(n, dim)`` along the channels: the pieces' sizes are
    fixed by the model's code (a CSP stage's halves), so removing a channel would move others
    from one piece to the next: the channels are pinned. Along another dimension the pieces
    are a tuple the walk does not follow."""
    dim = argument(user, 2, "dim", 0)  # torch.split(x, sizes, dim) and x.split(sizes, dim) alike
    ndim = len(shape_of(flow.node))
    if isinstance(dim, int) and dim % ndim == flow.channel_dim:
        raise Pinned(
            describe(user, graph.modules),
            "splits the channel dimension into pieces of fixed sizes, so removing a channel "
            "would move others from one piece to the next",
        )
    raise graph.unknown(layer, user, "it splits the tensor along another dimension into pieces it does not follow")


def _pad(graph, layer, flow, user, module):
    """``F.pad``: spatial padding keeps channels, padding the channel dimension shifts them."""
    pad = argument(user, 1, "pad", None)
    mode = argument(user, 2, "mode", "constant")
    value = argument(user, 3, "value", None)
    ndim = len(shape_of(flow.node))
    if not isinstance(pad, (tuple, list)) or not all(isinstance(p, int) for p in pad):
        raise graph.unknown(layer, user, f"its padding {pad!r} is not a sequence of ints")
    widths = [0] * (2 * ndim)
    for i, amount in enumerate(pad):  # pairs from the last dimension backwards
        widths[2 * (ndim - 1 - i // 2) + i % 2] = amount
    front, back = widths[2 * flow.channel_dim], widths[2 * flow.channel_dim + 1]
    if flow.features_per_channel != 1 and (front or back):
        raise graph.unknown(layer, user, "it pads flattened channels")
    if (front or back) and (mode != "constant" or front < 0):
        raise graph.unknown(layer, user, f"it pads the channel dimension in mode {mode!r}")
    if widths[0] or widths[1]:
        raise graph.unknown(layer, user, "it pads the batch dimension")
    spatial = any(w for d in range(ndim) if d not in (0, flow.channel_dim) for w in widths[2 * d: 2 * d + 2])
    fills_nonzero = mode == "constant" and value not in (None, 0, 0.0)
    uniform = flow.uniform and not (spatial and (flow.may_be_nonzero or fills_nonzero) and mode == "constant")
    return replace(flow, node=user, offset=flow.offset + front, uniform=uniform)


def _mean(graph, layer, flow, user, module):
    """``x.mean(dim=(2, 3))``: averaging other dimensions keeps channels (like pooling)."""
    ndim = len(shape_of(flow.node))
    dims = argument(user, 1, "dim", None)
    if dims is None or flow.features_per_channel != 1:
        raise graph.unknown(layer, user, "it averages over the channels")
    dims = {d % ndim for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
    if 0 in dims or flow.channel_dim in dims:
        raise graph.unknown(layer, user, "it averages over the batch or the channels")
    keepdim = bool(argument(user, 2, "keepdim", False))
    channel_dim = flow.channel_dim - (0 if keepdim else sum(d < flow.channel_dim for d in dims))
    return replace(flow, node=user, channel_dim=channel_dim)


def _scalar_product(graph, layer, flow, user, module):
    """``x * 0.5``, ``x / 2``: a number scales every channel, keeping zeros zero."""
    if user.target in (operator.truediv, torch.div) and user.args[0] is not flow.node:
        raise graph.unknown(layer, user, "it divides by the tensor")
    return replace(flow, node=user)


def _batchnorm(graph, layer, flow, user, module):
    ndim = len(shape_of(flow.node))
    allowed = (2, 3) if isinstance(module, nn.BatchNorm1d) else (4,)
    if ndim not in allowed or flow.channel_dim != 1 or (ndim > 2 and flow.features_per_channel != 1):
        raise graph.unknown(layer, user, f"it normalises a {ndim}-D tensor over other features")
    consumer = Consumer(
        user.target, "batchnorm", flow.features_per_channel, not flow.may_be_nonzero, flow.offset
    )
    # BatchNorm is sliced and passes channels on; past a BatchNorm that is not the switch, a
    # dropped channel is BN(0), generally non-zero.
    source = user.target if graph.zeros.can_reswitch(layer, flow, user, module) else flow.constant_from
    return consumer, replace(flow, node=user, may_be_nonzero=True, constant_from=source)


def _response_norm(graph, layer, flow, user, module):
    """timm's ``GlobalResponseNorm`` (ConvNeXt V2): ``x + bias + weight * x * n / (mean_c n + eps)``
    per channel, ``n`` a channel's L2 norm over the positions. A removed channel's norm is 0, so
    it adds nothing to the others' mean, only to its divisor; surgery scales ``weight`` and
    ``eps`` by ``C / C_kept`` (``slice_response_norm``), which leaves every kept channel as it
    was. What a removed channel leaves behind is its bias, a constant the next layer absorbs."""
    ndim = len(shape_of(flow.node))
    if ndim != 4 or flow.channel_dim != module.channel_dim % ndim or flow.features_per_channel != 1:
        raise graph.unknown(layer, user, "it normalises over a dimension that is not the layer's channels")
    if flow.may_be_nonzero:
        raise graph.unknown(layer, user, "a removed channel would reach it as a non-zero constant, which its norm counts")
    consumer = Consumer(user.target, "response_norm", 1, True, flow.offset)
    return consumer, replace(flow, node=user, may_be_nonzero=True)


def _batchnorm_act(graph, layer, flow, user, module):
    """timm's ``BatchNormAct2d``: a BatchNorm2d (sliced) followed by its ``drop`` (an identity
    in eval mode) and its ``act``, each an element-wise operation of the table."""
    for part in (module.drop, module.act):
        op = OPS.get(type(part))
        if op is None or op.follow not in (_ZERO_TO_ZERO, _ZERO_TO_CONSTANT):
            raise graph.unknown(
                layer, user, f"its fused {type(part).__name__} is not an element-wise operation it knows"
            )
    if type(module.drop) is not nn.Identity and not isinstance(module.drop, nn.Dropout):
        raise graph.unknown(layer, user, f"its fused {type(module.drop).__name__} is not a Dropout")
    return _batchnorm(graph, layer, flow, user, module)


def _conv_consumer(graph, layer, flow, user, module):
    if is_depthwise(module):
        return _depthwise(graph, layer, flow, user, module)
    if module.groups != 1:
        return _grouped(graph, layer, flow, user, module)
    ndim = len(shape_of(flow.node))
    if ndim != 4 or flow.channel_dim != 1 or flow.features_per_channel != 1:
        raise graph.unknown(layer, user, "its input channels are not the layer's channels")
    if flow.may_be_nonzero and (_conv_zero_pads(module) or not flow.uniform):
        raise _constant_not_foldable(graph, layer, user, "zero-pads its input")
    return Consumer(user.target, "conv_in", 1, not flow.may_be_nonzero, flow.offset)


def _conv_zero_pads(module: nn.Conv2d) -> bool:
    if qualified_class(type(module)) == SAME_PADDING:
        return any(k > 1 for k in module.kernel_size) or any(s > 1 for s in module.stride)
    return module.padding_mode == "zeros" and (
        module.padding == "same" and any(k > 1 for k in module.kernel_size)
        or module.padding != "same" and any_nonzero(module.padding)
    )


def _depthwise(graph, layer, flow, user, module):
    """A depthwise conv: filter ``c`` goes with channel ``c``, which it passes on."""
    ndim = len(shape_of(flow.node))
    if ndim != 4 or flow.channel_dim != 1 or flow.features_per_channel != 1:
        raise graph.unknown(layer, user, "its input channels are not the layer's channels")
    consumer = Consumer(user.target, "depthwise", 1, not flow.may_be_nonzero, flow.offset)
    # The dropped channel's filter is removed with it; what it leaves downstream is the
    # constant its bias (or a constant input) makes, non-uniform where zero padding meets a
    # non-zero input.
    uniform = flow.uniform and not (flow.may_be_nonzero and _conv_zero_pads(module))
    may_be_nonzero = flow.may_be_nonzero or module.bias is not None
    # A bias on a zero: the switch may multiply this conv's output again (StarNet's dwconv2).
    source = user.target if module.bias is not None and graph.zeros.can_reswitch(layer, flow, user, module) else flow.constant_from
    return consumer, replace(flow, node=user, may_be_nonzero=may_be_nonzero, uniform=uniform, constant_from=source)


def _grouped(graph, layer, flow, user, module):
    """A grouped conv: group ``k`` of its filters reads only input group ``k``, so the layer's
    channels go in whole groups, each taking the group's filters (and outputs) with it."""
    ndim = len(shape_of(flow.node))
    if ndim != 4 or flow.channel_dim != 1 or flow.features_per_channel != 1:
        raise graph.unknown(layer, user, "its input channels are not the layer's channels")
    group_in, group_out = module.in_channels // module.groups, module.out_channels // module.groups
    width = graph.width(layer)
    if group_in != group_out or flow.offset % group_in or width % group_in:
        raise UnsupportedStructureError(
            f"cannot follow the output channels of layer '{layer}' into "
            f"{describe(user, graph.modules)}: a grouped convolution (groups={module.groups}) "
            f"whose groups ({group_in} inputs, {group_out} outputs) do not line up with the "
            f"layer's {width} channels at offset {flow.offset}; not supported"
        )
    consumer = Consumer(user.target, "grouped", 1, not flow.may_be_nonzero, flow.offset)
    # A dropped group leaves downstream what its filters make of a constant input, like a
    # depthwise conv's dropped channel.
    uniform = flow.uniform and not (flow.may_be_nonzero and _conv_zero_pads(module))
    may_be_nonzero = flow.may_be_nonzero or module.bias is not None
    return consumer, replace(flow, node=user, may_be_nonzero=may_be_nonzero, uniform=uniform)


def _linear_consumer(graph, layer, flow, user, module):
    ndim = len(shape_of(flow.node))
    if flow.channel_dim != ndim - 1:
        raise graph.unknown(
            layer, user, "a Linear reads the last dimension, which does not hold the channels"
        )
    if flow.may_be_nonzero and not flow.uniform:
        raise _constant_not_foldable(graph, layer, user, "reads average-pooled zero padding")
    return Consumer(
        user.target, "linear_in", flow.features_per_channel, not flow.may_be_nonzero, flow.offset
    )


def _constant_not_foldable(graph, layer, user, why) -> UnsupportedStructureError:
    return NotFoldable(
        f"layer '{layer}': a channel zeroed at its switch reaches "
        f"{describe(user, graph.modules)} as a non-zero constant (it passes a Sigmoid or a "
        f"BatchNorm after the switch), and that consumer {why}, so the constant's effect "
        "differs near the borders and cannot be folded into a bias when the channel is "
        f"removed; pass layers=[...] without '{layer}' to skip it"
    )


# --- the table ---------------------------------------------------------------------------------


def _rows(keys: tuple, op: Op) -> dict[Any, Op]:
    return dict.fromkeys(keys, op)


_BATCHNORM_ACT = Op(_batchnorm_act)
_ATTENTION = Op(_attention_input)  # a library attention block (see hf_attention)
_ZERO_TO_ZERO = _elementwise(maps_zero_to_zero=True)
_ZERO_TO_CONSTANT = _elementwise(maps_zero_to_zero=False)
_POOL_1D_MODULE, _POOL_2D_MODULE = _pool(1, _module_pool_padding), _pool(2, _module_pool_padding)
_POOL_1D, _POOL_2D = _pool(1, _function_pool_padding), _pool(2, _function_pool_padding)

_HF_ACTIVATIONS = (
    "GELUActivation", "NewGELUActivation", "FastGELUActivation", "QuickGELUActivation", "GELUTanh",
    "PytorchGELUTanh", "SiLUActivation", "ClippedGELUActivation", "AccurateGELUActivation",
    "MishActivation", "LinearActivation", "ReLUSquaredActivation",
)
# ReLU6, Hardtanh, GELU, SiLU, sigmoid... clip or bend at a fixed value, so they do not commute
# with a scale; nor does BatchNorm (it shifts). AlphaDropout is affine in training mode.
OPS: dict[Any, Op] = {
    # element-wise, positively homogeneous: a switch may move past them. Dropout and stochastic
    # depth are identities in eval mode and multiply by a non-negative random scale in training.
    **_rows(
        (
            nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
            nn.Dropout3d,
            F.relu, torch.relu, F.relu_, torch.relu_, F.leaky_relu, F.leaky_relu_,
            F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
            torch.abs, operator.neg, torch.neg, operator.pos,
            Qualified("torchvision.ops.stochastic_depth.stochastic_depth"),
            "relu", "relu_", "contiguous", "clone", "abs", "neg",
        ),
        Op(_ZERO_TO_ZERO, commutes_with_scale=True),
    ),
    nn.PReLU: Op(_prelu, commutes_with_scale=True),
    # element-wise, 0 -> 0, but not homogeneous (they clip or bend at a fixed value)
    **_rows(
        (
            nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardtanh, nn.ELU, nn.Hardswish, nn.Mish,
            nn.SELU, nn.CELU, nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink,
            nn.RReLU, nn.AlphaDropout, nn.FeatureAlphaDropout,
            F.relu6, F.gelu, F.silu, F.tanh, torch.tanh, F.hardtanh, F.hardtanh_, F.elu,
            F.elu_, F.hardswish, F.mish, F.selu, torch.selu, F.celu, torch.celu, F.softsign,
            F.tanhshrink, F.softshrink, F.hardshrink, F.rrelu, torch.rrelu,
            F.alpha_dropout, F.feature_alpha_dropout,
            "tanh", "tanh_",
        ),
        Op(_ZERO_TO_ZERO),
    ),
    # element-wise, 0 -> a non-zero constant (folded into the consumer's bias when pruned)
    **_rows(
        (
            nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid,
            torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, F.logsigmoid,
            "sigmoid", "sigmoid_",
        ),
        Op(_ZERO_TO_CONSTANT),
    ),
    **_rows((torch.clamp, torch.clip, "clamp", "clip", "clamp_"), Op(_clamp)),
    # pooling keeps channels and commutes with a non-negative scale
    **_rows(
        (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d),
        Op(_POOL_1D_MODULE, commutes_with_scale=True),
    ),
    **_rows(
        (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d),
        Op(_POOL_2D_MODULE, commutes_with_scale=True),
    ),
    **_rows(
        (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d),
        Op(_POOL_1D, commutes_with_scale=True),
    ),
    **_rows(
        (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d),
        Op(_POOL_2D, commutes_with_scale=True),
    ),
    # reshapes that keep each channel's values together (see _reshape)
    **_rows(
        (nn.Flatten, torch.flatten, torch.reshape, "flatten", "view", "reshape"),
        Op(_reshape, commutes_with_scale=True),
    ),
    **_rows((torch.squeeze, torch.unsqueeze, "squeeze", "unsqueeze"), Op(_reshape)),
    **_rows(
        (torch.permute, "permute", torch.transpose, "transpose", torch.swapaxes, "swapaxes"),
        Op(_permute),
    ),
    **_rows((nn.LayerNorm, nn.RMSNorm), Op(_layernorm)),
    F.layer_norm: Op(_layernorm, parameters=True),
    operator.getitem: Op(_getitem),
    F.pad: Op(_pad),
    **_rows(
        (F.interpolate, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d),
        Op(_resample, commutes_with_scale=True),
    ),
    **_rows((torch.split, torch.chunk, torch.tensor_split, "split", "chunk", "tensor_split"), Op(_split)),
    **_rows((torch.mean, "mean"), Op(_mean)),
    # a product with a number scales; a product of two tensors with the same channels (a
    # squeeze-and-excitation gate) couples them like a sum
    **_rows(
        (operator.mul, torch.mul, "mul"),
        Op(_scalar_product, combines="product", commutes_with_scale=True, scalar_operand=True),
    ),
    **_rows(
        (operator.truediv, torch.div, "div"),
        Op(_scalar_product, commutes_with_scale=True, scalar_operand=True),
    ),
    # sliced modules: BatchNorm passes the channels on (its rule returns the consumer and the
    # flow), Conv2d and Linear consume them (a depthwise Conv2d also passes them on)
    **_rows((nn.BatchNorm1d, nn.BatchNorm2d), Op(_batchnorm)),
    nn.Conv2d: Op(_conv_consumer),
    nn.Linear: Op(_linear_consumer),
    # other packages' layers, by name (the table imports none of them): see LAYER_SUBCLASSES
    Qualified("timm.layers.linear.Linear"): Op(_linear_consumer),
    SAME_PADDING: Op(_conv_consumer),
    Qualified("timm.layers.norm_act.BatchNormAct2d"): _BATCHNORM_ACT,
    RESPONSE_NORM: Op(_response_norm),
    Qualified("transformers.pytorch_utils.Conv1D"): Op(_linear_consumer),  # HF's activations, 0 -> 0:
    **_rows(tuple(Qualified(f"transformers.activations.{name}") for name in _HF_ACTIVATIONS), Op(_ZERO_TO_ZERO)),
    # several tensors: the walk couples (sum) or shifts (concat) their channels
    **_rows(
        (
            operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub,
            "add", "add_", "sub", "sub_",
        ),
        Op(None, combines="sum"),
    ),
    **_rows(
        (torch.cat, torch.concat, torch.stack, torch.hstack, torch.vstack),
        Op(None, combines="concat"),
    ),
}
