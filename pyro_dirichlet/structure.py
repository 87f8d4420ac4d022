"""Which output channels of a network can be removed, and which other modules must shrink with them.

The model is traced with :func:`torch.fx.symbolic_trace` and run once on an example input to
record shapes; each Conv2d/Linear output is then followed
through channel-wise operations to the modules that read it. This is the dependency-graph part
of pruning: it decides nothing about *which* channels to drop (the policy) and slices nothing
(that is :mod:`pyro_dirichlet.surgery`).
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

__all__ = [
    "Consumer",
    "PrunableLayer",
    "UnsupportedStructureError",
    "find_prunable_layers",
]


class UnsupportedStructureError(ValueError):
    """The model couples channels in a way this library cannot prune (yet).

    Raised for residual adds, concatenations, grouped convolutions, shared modules, operations
    whose effect on channels is unknown, and models that :mod:`torch.fx` cannot trace.
    """


@dataclass(frozen=True)
class Consumer:
    """A module that reads a prunable layer's output channels and must shrink with it.

    Args:
        name: qualified module name, as in ``model.named_modules()``.
        kind: ``"conv_in"`` (a Conv2d's input channels), ``"linear_in"`` (a Linear's input
            features) or ``"batchnorm"`` (a BatchNorm's features, sliced like an output).
        features_per_channel: how many of the consumer's input features one channel of the
            layer owns: 1 normally; ``H*W`` when a conv's ``C×H×W`` output is flattened into a
            Linear, so that channel ``c`` owns features ``[c*H*W, (c+1)*H*W)``.
        zero_preserved: whether a channel zeroed at the switch still reaches this consumer as
            zero. It is False when something between the switch and the consumer maps 0 to a
            non-zero value (a Sigmoid, a BatchNorm after the switch); surgery then folds the
            constant the dropped channel leaves behind into the consumer's bias.

    Example:
        >>> Consumer("fc1", "linear_in", features_per_channel=16).feature_indices([0, 2]).tolist()[:3]
        [0, 1, 2]
    """

    name: str
    kind: Literal["conv_in", "linear_in", "batchnorm"]
    features_per_channel: int = 1
    zero_preserved: bool = True

    def feature_indices(self, channels: Sequence[int] | Tensor) -> Tensor:
        """The consumer's input-feature indices that belong to the given layer channels.

        Args:
            channels: channel indices of the producing layer.

        Returns:
            A 1-D ``int64`` tensor, channel by channel, each channel's features in order.
        """
        channels = torch.as_tensor(channels, dtype=torch.long).reshape(-1, 1)
        offsets = torch.arange(self.features_per_channel, dtype=torch.long, device=channels.device)
        return (channels * self.features_per_channel + offsets).reshape(-1)


@dataclass(frozen=True)
class PrunableLayer:
    """A Conv2d or Linear whose output channels can be removed, with everything coupled to them.

    Args:
        name: qualified module name of the layer.
        kind: ``"conv"`` or ``"linear"``.
        channels: number of output channels (conv) or output features (linear).
        switch_at: name of the module whose output the Dirichlet switch multiplies: the layer
            itself, or the BatchNorm that directly and solely follows it (the switch sits after
            the BatchNorm, before the non-linearity).
        consumers: the modules whose inputs (or, for a BatchNorm, features) shrink with the
            layer, in forward order. A BatchNorm at ``switch_at`` is listed here too.

    A later version will group several producers whose channels are coupled (residual adds,
    concatenations); one ``PrunableLayer`` is the single-producer case of such a group.

    Example:
        >>> layers = find_prunable_layers(model, torch.zeros(1, 1, 28, 28))  # doctest: +SKIP
        >>> [(layer.name, layer.switch_at) for layer in layers]  # doctest: +SKIP
        [('conv1', 'conv1'), ('conv2', 'conv2'), ('fc1', 'fc1')]
    """

    name: str
    kind: Literal["conv", "linear"]
    channels: int
    switch_at: str
    consumers: tuple[Consumer, ...]

    @property
    def channel_dim(self) -> int:
        """The dimension of the ``switch_at`` output that indexes channels (1 or -1)."""
        # Linear acts on the last dimension; a BatchNorm1d switch only follows a 2-D Linear
        # output, where the last dimension is also dimension 1.
        return 1 if self.kind == "conv" else -1

    def broadcast_shape(self, ndim: int) -> tuple[int, ...]:
        """Shape to which a per-channel vector is reshaped to multiply an ``ndim``-D output.

        Args:
            ndim: number of dimensions of the ``switch_at`` module's output.

        Example:
            >>> PrunableLayer("c", "conv", 20, "c", ()).broadcast_shape(4)
            (1, 20, 1, 1)
        """
        if ndim < 2:
            raise ValueError(
                f"ndim must be at least 2 (a batch and a channel dimension), got {ndim} "
                f"for layer '{self.name}'"
            )
        shape = [1] * ndim
        shape[self.channel_dim] = self.channels
        return tuple(shape)


def find_prunable_layers(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    layers: Sequence[str] | None = None,
) -> list[PrunableLayer]:
    """Find the layers whose output channels can be pruned, and what each one couples to.

    Automatic mode (``layers=None``) returns every Conv2d with ``groups=1`` and every Linear
    whose output does not reach the network's output (so never the classifier). Between a layer
    and its consumers only channel-wise operations may appear: element-wise activations
    (modules, ``F.*`` and ``torch.*`` functions, tensor methods), Dropout, max/average/adaptive
    pooling, BatchNorm (also sliced), Identity, and flatten/view/reshape to ``(N, -1)``.

    The model is not modified: a copy is traced in eval mode, without gradients.

    Args:
        model: the network.
        example_inputs: an input batch (or a tuple of positional inputs) to run shape
            propagation with; its values do not matter, its shape does.
        layers: qualified names of the layers to analyse; None for all prunable layers.

    Returns:
        The prunable layers, in forward order.

    Raises:
        ValueError: a name in ``layers`` is unknown or not prunable, no layer is prunable, or
            the model does not run on ``example_inputs``.
        UnsupportedStructureError: an operation on a layer's path couples channels in a way
            not supported (residual add, concat, grouped conv...) or the model is untraceable.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
        >>> [layer] = find_prunable_layers(net, torch.zeros(1, 1, 28, 28))
        >>> layer.name, layer.switch_at, [c.name for c in layer.consumers]
        ('0', '1', ['1', '4'])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(layers, str):
        raise TypeError(
            f"layers must be a sequence of layer names, got the string {layers!r}; "
            f"write layers=[{layers!r}]"
        )
    graph = _TracedModel.trace(model, _as_input_tuple(example_inputs))

    if layers is None:
        found = []
        for name in graph.candidates:
            outcome = graph.analyse(name)
            if isinstance(outcome, PrunableLayer):
                found.append(outcome)
        if not found:
            raise ValueError(_no_prunable_layer_message(model, graph))
        return found

    names = list(layers)
    if not names:
        raise ValueError("layers is empty: name at least one layer, or pass None for all")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"layers must contain module names (str), got {name!r}")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"layers lists {duplicated} more than once")

    found = []
    for name in names:
        if name not in graph.candidates:
            raise ValueError(_not_a_candidate_message(model, graph, name))
        outcome = graph.analyse(name)
        if not isinstance(outcome, PrunableLayer):
            raise ValueError(f"layer '{name}' cannot be pruned: {outcome.reason}")
        found.append(outcome)
    return sorted(found, key=lambda layer: graph.order[layer.name])


def _as_input_tuple(example_inputs: Any) -> tuple[Tensor, ...]:
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(
        isinstance(x, Tensor) for x in example_inputs
    ):
        return tuple(example_inputs)
    raise TypeError(
        "example_inputs must be a Tensor or a tuple of Tensors, "
        f"got {type(example_inputs).__name__}"
    )


def _shapes(inputs: tuple[Tensor, ...]) -> str:
    return ", ".join(str(tuple(x.shape)) for x in inputs)


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and stores each tensor node's shape in ``node.meta["shape"]``.

    Like :class:`torch.fx.passes.shape_prop.ShapeProp`, which prints a traceback to stderr
    and rewraps the error when the input does not fit; here the error stays the model's own.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False
        self.current: fx.Node | None = None

    def run_node(self, node: fx.Node) -> Any:
        self.current = node
        result = super().run_node(node)
        if isinstance(result, Tensor):
            node.meta["shape"] = tuple(result.shape)
        self.current = None
        return result


@dataclass(frozen=True)
class _NotPrunable:
    """Why a Conv2d/Linear is not a prunable layer (without anything being wrong)."""

    reason: str


@dataclass(frozen=True)
class _Flow:
    """A tensor on a layer's path, and where that layer's channels sit in it."""

    node: fx.Node
    channel_dim: int  # non-negative index into the node's shape
    features_per_channel: int
    # A channel zeroed at the switch may carry a non-zero constant here (after a Sigmoid or a
    # BatchNorm that follows the switch) ...
    may_be_nonzero: bool = False
    # ... and that constant may differ between positions (average pooling over zero padding).
    uniform: bool = True


class _TracedModel:
    """The fx graph of a model copy, with shapes, and the walk along each layer's output."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule) -> None:
        self.model = model
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.calls: dict[str, list[fx.Node]] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                self.calls.setdefault(node.target, []).append(node)
        self.order = {
            node.target: i for i, node in enumerate(gm.graph.nodes) if node.op == "call_module"
        }
        # Candidates come from the model, not the graph, so that an unused layer can be
        # reported as unused rather than as unknown.
        candidates = [
            name
            for name, module in model.named_modules()
            if name and type(module) in (nn.Conv2d, nn.Linear)
        ]
        self.candidates = sorted(candidates, key=lambda name: self.order.get(name, math.inf))

    @classmethod
    def trace(cls, model: nn.Module, inputs: tuple[Tensor, ...]) -> _TracedModel:
        # A copy in eval mode: shape propagation runs forward, which would update BatchNorm
        # running statistics and flip training flags on the caller's model.
        traced = copy.deepcopy(model).eval()
        try:
            gm = fx.symbolic_trace(traced)
        except Exception as err:
            raise UnsupportedStructureError(
                f"{type(model).__name__} cannot be traced by torch.fx ({type(err).__name__}: "
                f"{err}); channel coupling is found from the traced graph, so the model's "
                "forward must be traceable (no control flow that depends on tensor values)"
            ) from err
        recorder = _ShapeRecorder(gm)
        try:
            with torch.no_grad():
                recorder.run(*inputs)
        except Exception as err:
            where = ""
            if recorder.current is not None:
                where = f" in {_describe(recorder.current, dict(gm.named_modules()))}"
            raise ValueError(
                f"example_inputs of shape {_shapes(inputs)} cannot run through "
                f"{type(model).__name__}: {type(err).__name__}{where}: {err}"
            ) from err
        return cls(model, gm)

    def analyse(self, name: str) -> PrunableLayer | _NotPrunable:
        """Follow layer ``name``'s output to its consumers; raise if the path is unsupported."""
        # The graph holds only the modules forward calls; an unused layer is in the model.
        module = self.modules.get(name)
        if module is None:
            module = self.model.get_submodule(name)
        nodes = self.calls.get(name, [])
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            return _NotPrunable(
                f"it is a grouped convolution (groups={module.groups}), whose output channels "
                "are tied to its input channels; not supported yet"
            )
        if not nodes:
            return _NotPrunable("it is never called in the model's forward")
        if len(nodes) > 1:
            raise UnsupportedStructureError(
                f"layer '{name}' is called {len(nodes)} times in forward; a shared layer "
                "couples the channels of every place it is used, which is not supported"
            )
        node = nodes[0]
        shape = _shape(node)
        if isinstance(module, nn.Conv2d):
            kind, channels, start = "conv", module.out_channels, _Flow(node, 1, 1)
        else:
            kind, channels, start = "linear", module.out_features, _Flow(node, len(shape) - 1, 1)

        switch_at, consumers = name, []
        bn = self._batchnorm_directly_after(node, len(shape))
        if bn is not None:
            switch_at = bn.target
            consumers.append(Consumer(bn.target, "batchnorm"))
            start = replace(start, node=bn)

        reaches_output = False
        stack = [start]
        while stack:
            flow = stack.pop()
            for user in list(flow.node.users):
                outcome = self._follow(name, flow, user)
                if outcome == "output":
                    reaches_output = True
                elif isinstance(outcome, Consumer):
                    consumers.append(outcome)
                    if outcome.kind == "batchnorm":
                        # BatchNorm is sliced and passes channels on; past a BatchNorm that
                        # is not the switch, a dropped channel is BN(0), generally non-zero.
                        stack.append(replace(flow, node=user, may_be_nonzero=True))
                elif isinstance(outcome, _Flow):
                    stack.append(outcome)

        if reaches_output:
            return _NotPrunable(
                "its output channels reach the network's output (it is the classifier, or feeds "
                "the output through channel-wise operations), so removing them would change "
                "the output's shape"
            )
        if len(consumers) == (1 if bn is not None else 0):
            return _NotPrunable("no layer reads its output")
        for consumer in consumers:
            if len(self.calls[consumer.name]) > 1:
                raise UnsupportedStructureError(
                    f"layer '{name}': its consumer '{consumer.name}' is called "
                    f"{len(self.calls[consumer.name])} times in forward; a shared module "
                    "couples channels of several layers, which is not supported"
                )
        consumers.sort(key=lambda consumer: self.order[consumer.name])
        return PrunableLayer(name, kind, channels, switch_at, tuple(consumers))

    def _batchnorm_directly_after(self, node: fx.Node, ndim: int) -> fx.Node | None:
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or users[0].args != (node,):
            return None
        expected = {4: nn.BatchNorm2d, 2: nn.BatchNorm1d}.get(ndim)
        bn = users[0]
        if expected is None or type(self.modules[bn.target]) is not expected:
            return None
        if len(self.calls[bn.target]) != 1:
            return None
        return bn

    def _follow(self, layer: str, flow: _Flow, user: fx.Node) -> _Flow | Consumer | str | None:
        """What ``user`` does with the channels of ``flow``: pass them on, consume them, ..."""
        if user.op == "output":
            return "output"
        if _is_shape_query(user):
            return None
        others = [
            n for n in user.all_input_nodes if n is not flow.node and "shape" in n.meta
        ]
        if others:
            raise UnsupportedStructureError(
                f"cannot follow the output channels of layer '{layer}' through "
                f"{_describe(user, self.modules)}: it combines them with another tensor "
                f"({_combination_kind(user)}). Channel coupling through residual adds and "
                "concatenations is not supported yet; pass layers=[...] without "
                f"'{layer}' to prune the other layers"
            )
        if not _is_first_argument(user, flow.node):
            raise self._unknown(layer, user, "the tensor is not its first argument")

        if user.op == "call_module":
            module = self.modules[user.target]
            if parametrize.is_parametrized(module):
                raise self._unknown(layer, user, _PARAMETRIZED)
            rule = _MODULE_RULES.get(type(module))
            if rule is None:
                raise self._unknown(layer, user, "its effect on channels is not known")
            return rule(self, layer, flow, user, module)
        if user.op == "call_function":
            rule = _FUNCTION_RULES.get(user.target)
        elif user.op == "call_method":
            rule = _METHOD_RULES.get(user.target)
        else:
            rule = None
        if rule is None:
            raise self._unknown(layer, user, "its effect on channels is not known")
        return rule(self, layer, flow, user, None)

    def _unknown(self, layer: str, user: fx.Node, why: str) -> UnsupportedStructureError:
        return UnsupportedStructureError(
            f"cannot follow the output channels of layer '{layer}' through "
            f"{_describe(user, self.modules)}: {why}. Supported between a layer and its "
            "consumers: element-wise activations, Dropout, pooling, BatchNorm, Identity and "
            f"flatten/view to (N, -1); pass layers=[...] without '{layer}' to skip it"
        )


# --- what each operation does to a channel flow -------------------------------------------
# A rule takes (graph, layer name, incoming flow, user node, module or None) and returns the
# outgoing flow, a Consumer, or raises UnsupportedStructureError.

Rule = Callable[[_TracedModel, str, _Flow, fx.Node, "nn.Module | None"], "_Flow | Consumer"]


def _elementwise(maps_zero_to_zero: bool) -> Rule:
    def rule(graph, layer, flow, user, module):
        return replace(flow, node=user, may_be_nonzero=flow.may_be_nonzero or not maps_zero_to_zero)

    return rule


def _pool(spatial_dims: int, padding_of: Callable[[fx.Node, Any], tuple[bool, bool]]) -> Rule:
    """A pooling op: channels pass through unchanged if the input is ``(N, C, *spatial)``."""

    def rule(graph, layer, flow, user, module):
        ndim = len(_shape(flow.node))
        if ndim != spatial_dims + 2 or flow.channel_dim != 1 or flow.features_per_channel != 1:
            raise graph._unknown(
                layer, user, f"it pools a {ndim}-D tensor whose channels are not dimension 1"
            )
        returns_indices, averages_padding = padding_of(user, module)
        if returns_indices:
            raise graph._unknown(layer, user, "it returns pooling indices")
        uniform = flow.uniform and not (averages_padding and flow.may_be_nonzero)
        return replace(flow, node=user, uniform=uniform)

    return rule


def _module_pool_padding(user: fx.Node, module: nn.Module) -> tuple[bool, bool]:
    returns_indices = bool(getattr(module, "return_indices", False))
    averages_padding = isinstance(module, (nn.AvgPool1d, nn.AvgPool2d)) and (
        _any_nonzero(module.padding) and module.count_include_pad
    )
    return returns_indices, averages_padding


def _function_pool_padding(user: fx.Node, module: None) -> tuple[bool, bool]:
    # Positions follow the signatures of torch.nn.functional's pooling functions.
    if user.target in (F.max_pool1d, F.max_pool2d):
        return bool(_argument(user, 6, "return_indices", False)), False
    if user.target in (F.adaptive_max_pool1d, F.adaptive_max_pool2d):
        return bool(_argument(user, 2, "return_indices", False)), False
    if user.target in (F.avg_pool1d, F.avg_pool2d):
        padding = _argument(user, 3, "padding", 0)
        count_include_pad = _argument(user, 5, "count_include_pad", True)
        return False, _any_nonzero(padding) and bool(count_include_pad)
    return False, False


def _reshape(graph, layer, flow, user, module):
    """flatten/view/reshape: only ``(N, C, *rest) -> (N, C*prod(rest))`` keeps channels whole."""
    before, after = _shape(flow.node), _shape(user)
    if after == before:
        return replace(flow, node=user)
    if (
        flow.channel_dim == 1
        and len(after) == 2
        and after[0] == before[0]
        and after[1] == math.prod(before[1:])
    ):
        # Row-major flattening keeps each channel's H*W values contiguous.
        return replace(
            flow,
            node=user,
            features_per_channel=flow.features_per_channel * math.prod(before[2:]),
        )
    raise graph._unknown(
        layer,
        user,
        f"it reshapes {tuple(before)} to {tuple(after)}; only flattening to (N, -1) keeps "
        "each channel's features together",
    )


def _batchnorm(graph, layer, flow, user, module):
    ndim = len(_shape(flow.node))
    allowed = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,)}[type(module)]
    if ndim not in allowed or flow.channel_dim != 1 or (ndim > 2 and flow.features_per_channel != 1):
        raise graph._unknown(layer, user, f"it normalises a {ndim}-D tensor over other features")
    return Consumer(user.target, "batchnorm", flow.features_per_channel, not flow.may_be_nonzero)


def _conv_consumer(graph, layer, flow, user, module):
    if module.groups != 1:
        raise UnsupportedStructureError(
            f"cannot follow the output channels of layer '{layer}' into "
            f"{_describe(user, graph.modules)}: a grouped convolution (groups={module.groups}) "
            "ties input channels to output channels; not supported yet"
        )
    ndim = len(_shape(flow.node))
    if ndim != 4 or flow.channel_dim != 1 or flow.features_per_channel != 1:
        raise graph._unknown(layer, user, "its input channels are not the layer's channels")
    zero_padded = module.padding_mode == "zeros" and (
        module.padding == "same" and any(k > 1 for k in module.kernel_size)
        or module.padding != "same" and _any_nonzero(module.padding)
    )
    if flow.may_be_nonzero and (zero_padded or not flow.uniform):
        raise _constant_not_foldable(graph, layer, user, "zero-pads its input")
    return Consumer(user.target, "conv_in", 1, not flow.may_be_nonzero)


def _linear_consumer(graph, layer, flow, user, module):
    ndim = len(_shape(flow.node))
    if flow.channel_dim != ndim - 1:
        raise graph._unknown(
            layer, user, "a Linear reads the last dimension, which does not hold the channels"
        )
    if flow.may_be_nonzero and not flow.uniform:
        raise _constant_not_foldable(graph, layer, user, "reads average-pooled zero padding")
    return Consumer(user.target, "linear_in", flow.features_per_channel, not flow.may_be_nonzero)


def _constant_not_foldable(graph, layer, user, why) -> UnsupportedStructureError:
    return UnsupportedStructureError(
        f"layer '{layer}': a channel zeroed at its switch reaches "
        f"{_describe(user, graph.modules)} as a non-zero constant (it passes a Sigmoid or a "
        f"BatchNorm after the switch), and that consumer {why}, so the constant's effect "
        "differs near the borders and cannot be folded into a bias when the channel is "
        f"removed; pass layers=[...] without '{layer}' to skip it"
    )


_MODULE_RULES: dict[type[nn.Module], Rule] = {
    **dict.fromkeys(
        (
            nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardtanh, nn.ELU,
            nn.Hardswish, nn.Mish, nn.Identity,
            nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
        ),
        _elementwise(maps_zero_to_zero=True),
    ),
    **dict.fromkeys((nn.Sigmoid, nn.Hardsigmoid, nn.Softplus), _elementwise(maps_zero_to_zero=False)),
    **dict.fromkeys(
        (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d),
        _pool(1, _module_pool_padding),
    ),
    **dict.fromkeys(
        (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d),
        _pool(2, _module_pool_padding),
    ),
    nn.Flatten: _reshape,
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.Conv2d: _conv_consumer,
    nn.Linear: _linear_consumer,
}

_FUNCTION_RULES: dict[Any, Rule] = {
    **dict.fromkeys(
        (
            F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.leaky_relu, F.gelu, F.silu,
            F.tanh, torch.tanh, F.hardtanh, F.elu, F.hardswish, F.mish,
            F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout,
        ),
        _elementwise(maps_zero_to_zero=True),
    ),
    **dict.fromkeys(
        (torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus), _elementwise(maps_zero_to_zero=False)
    ),
    **dict.fromkeys(
        (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d),
        _pool(1, _function_pool_padding),
    ),
    **dict.fromkeys(
        (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d),
        _pool(2, _function_pool_padding),
    ),
    **dict.fromkeys((torch.flatten, torch.reshape, torch.squeeze), _reshape),
}

_METHOD_RULES: dict[str, Rule] = {
    **dict.fromkeys(
        ("relu", "relu_", "tanh", "tanh_", "contiguous", "clone"), _elementwise(maps_zero_to_zero=True)
    ),
    **dict.fromkeys(("sigmoid", "sigmoid_"), _elementwise(maps_zero_to_zero=False)),
    **dict.fromkeys(("flatten", "view", "reshape", "squeeze"), _reshape),
}

# Parametrized weights (weight norm, spectral norm...) are computed from other tensors, which
# slicing `weight` would leave behind.
_PARAMETRIZED = (
    "its weights are parametrized (e.g. weight norm); call "
    "torch.nn.utils.parametrize.remove_parametrizations before pruning"
)

_SHAPE_METHODS = {"size", "dim", "ndimension", "numel"}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda"}


# --- small graph helpers ---------------------------------------------------------------------


def _shape(node: fx.Node) -> tuple[int, ...]:
    shape = node.meta.get("shape")
    if shape is None:
        raise UnsupportedStructureError(f"'{node.name}' does not produce a single tensor")
    return shape


def _is_shape_query(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    return (
        node.op == "call_function"
        and node.target is getattr
        and len(node.args) == 2
        and node.args[1] in _SHAPE_ATTRIBUTES
    )


def _is_first_argument(user: fx.Node, node: fx.Node) -> bool:
    first = user.args[0] if user.args else user.kwargs.get("input")
    if first is not node:
        return False
    # The tensor may appear only once: f(x, x) would couple it with itself.
    return sum(1 for _ in _uses(user.args, node)) + sum(1 for _ in _uses(user.kwargs, node)) == 1


def _uses(value: Any, node: fx.Node):
    if value is node:
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _uses(item, node)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _uses(item, node)


def _argument(node: fx.Node, position: int, keyword: str, default: Any) -> Any:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(keyword, default)


def _any_nonzero(padding: Any) -> bool:
    if isinstance(padding, int):
        return padding != 0
    return any(p != 0 for p in padding)


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module '{node.target}' ({type(modules[node.target]).__name__})"
    stack = node.meta.get("nn_module_stack") or {}
    where = f" in module '{next(reversed(stack))}'" if stack else " in the top-level forward"
    if node.op == "call_method":
        return f"method '.{node.target}()' (node '{node.name}'{where})"
    target = node.target
    module = getattr(target, "__module__", None) or ""
    module = {"_operator": "operator", "torch._C._nn": "torch.nn.functional"}.get(module, module)
    name = getattr(target, "__name__", None)
    if not name or name == "fn":  # torch's boolean_dispatch wrappers are all called 'fn'
        module, name = "torch.nn.functional", node.name
    qualified = f"{module}.{name}" if module else name
    return f"'{node.name}' ({qualified}{where})"


_ADDITIVE = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
_CONCATENATING = {torch.cat, torch.concat, torch.stack, torch.hstack, torch.vstack}


def _combination_kind(node: fx.Node) -> str:
    if node.op == "call_function" and node.target in _ADDITIVE:
        return "a residual add or other sum of tensors"
    if node.op == "call_function" and node.target in _CONCATENATING:
        return "a concatenation"
    if node.op == "call_method" and node.target in {"add", "add_", "sub", "sub_"}:
        return "a residual add or other sum of tensors"
    return "an operation on several tensors"


def _not_a_candidate_message(model: nn.Module, graph: _TracedModel, name: str) -> str:
    prunable = _prunable_names(graph)
    listing = f"prunable layers are: {', '.join(prunable)}" if prunable else "no layer is prunable"
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return f"layer '{name}' is not a module of {type(model).__name__}; {listing}"
    if parametrize.is_parametrized(module):
        return f"layer '{name}' cannot be pruned: {_PARAMETRIZED}"
    return (
        f"layer '{name}' is a {type(module).__name__}, not a Conv2d or Linear, so it has no "
        f"output channels to prune; {listing}"
    )


def _prunable_names(graph: _TracedModel) -> list[str]:
    names = []
    for name in graph.candidates:
        try:
            if isinstance(graph.analyse(name), PrunableLayer):
                names.append(name)
        except UnsupportedStructureError:
            pass
    return names


def _no_prunable_layer_message(model: nn.Module, graph: _TracedModel) -> str:
    if not graph.candidates:
        return f"{type(model).__name__} has no prunable layer: it has no Conv2d or Linear"
    reasons = "; ".join(f"'{name}': {graph.analyse(name).reason}" for name in graph.candidates)
    return f"{type(model).__name__} has no prunable layer ({reasons})"
