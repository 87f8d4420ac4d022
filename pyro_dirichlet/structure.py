"""Which output channels of a network can be removed, and which other modules must shrink with them.

The model is traced with :func:`torch.fx.symbolic_trace` and run once on an example input to
record shapes; each Conv2d/Linear output is then followed
through channel-wise operations to the modules that read it. This is the dependency-graph part
of pruning: it decides nothing about *which* channels to drop (the policy) and slices nothing
(that is :mod:`pyro_dirichlet.surgery`).

Coupling. Channels that meet in a residual add (``a + b``, ``torch.add``, ``+=``) are the
same channels: the layers writing into one residual stream form a *coupling group*, which is
pruned as a whole or not at all. A concatenation along the channel dimension does not couple
its inputs; it only shifts where each input's channels sit in the consumer (``Consumer.offset``).
A depthwise convolution passes channels through (its filter ``c`` goes with channel ``c``). A
zero-padding of the channel dimension (``F.pad``, option-A ResNet shortcuts) shifts channels;
an add that mixes shifted and unshifted channels ties them in a way a single switch cannot
describe, so such channels are never pruned.

Policy, for automatic discovery (``find_prunable_layers(..., coupled=...)``):

* ``"skip"`` (default): layers whose channels are coupled through an add are left out, so in
  a ResNet only the inner convolutions of each block are found;
* ``"group"``: each coupling group is one :class:`PrunableLayer` named after its first member
  in forward order, whose switch multiplies the output of every member.

A name passed explicitly (``layers=[...]``, or a key of ``keep`` in
:func:`pyro_dirichlet.prune_channels`) that is a group's first member always means the group;
naming another member is an error that names the group.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

if TYPE_CHECKING:
    from pyro_dirichlet.switch_input import SwitchInput

__all__ = [
    "Consumer",
    "PrunableLayer",
    "UnsupportedStructureError",
    "find_prunable_layers",
    "CouplingPolicy",
]

CouplingPolicy = Literal["skip", "group"]


class UnsupportedStructureError(ValueError):
    """The model couples channels in a way this library cannot prune (yet).

    Raised for grouped (not depthwise) convolutions, shared modules, operations whose effect
    on channels is unknown, concatenations or adds along a non-channel dimension, and models
    that :mod:`torch.fx` cannot trace.
    """


@dataclass(frozen=True)
class Consumer:
    """A module that reads a prunable layer's output channels and must shrink with it.

    Args:
        name: qualified module name, as in ``model.named_modules()``.
        kind: ``"conv_in"`` (a Conv2d's input channels), ``"linear_in"`` (a Linear's input
            features), ``"batchnorm"`` (a BatchNorm's features, sliced like an output) or
            ``"depthwise"`` (a depthwise Conv2d: filter ``c`` reads and writes channel ``c``,
            so its input channels, filters and bias are all sliced).
        features_per_channel: how many of the consumer's input features one channel of the
            layer owns: 1 normally; ``H*W`` when a conv's ``C×H×W`` output is flattened into a
            Linear, so that channel ``c`` owns features ``[c*H*W, (c+1)*H*W)``.
        zero_preserved: whether a channel zeroed at the switch still reaches this consumer as
            zero. It is False when something between the switch and the consumer maps 0 to a
            non-zero value (a Sigmoid, a BatchNorm after the switch); surgery then folds the
            constant the dropped channel leaves behind into the consumer's bias.
        offset: index of the consumer input feature that the layer's channel 0 starts at: 0
            normally; after ``torch.cat([a, b], dim=1)``, ``b``'s channels start at
            ``a``'s width (times the features per channel once flattened); after a channel
            zero-padding, at the number of channels padded in front.

    Example:
        >>> Consumer("fc1", "linear_in", features_per_channel=16).feature_indices([0, 2]).tolist()[:3]
        [0, 1, 2]
        >>> Consumer("conv3", "conv_in", offset=8).feature_indices([0, 2]).tolist()
        [8, 10]
    """

    name: str
    kind: Literal["conv_in", "linear_in", "batchnorm", "depthwise"]
    features_per_channel: int = 1
    zero_preserved: bool = True
    offset: int = 0

    def feature_indices(self, channels: Sequence[int] | Tensor) -> Tensor:
        """The consumer's input-feature indices that belong to the given layer channels.

        Args:
            channels: channel indices of the producing layer.

        Returns:
            A 1-D ``int64`` tensor, channel by channel, each channel's features in order.
        """
        channels = torch.as_tensor(channels, dtype=torch.long).reshape(-1, 1)
        offsets = torch.arange(self.features_per_channel, dtype=torch.long, device=channels.device)
        return (channels * self.features_per_channel + offsets).reshape(-1) + self.offset


@dataclass(frozen=True)
class PrunableLayer:
    """One switch site: the output channels of a layer, or of a coupling group of layers.

    A coupling group is a set of Conv2d (or Linear) layers whose outputs are added together
    (the convolutions writing into one residual stream): channel ``c`` of every member is the
    same channel, so the group has one switch and is pruned as a whole. A single layer is the
    group of one member.

    Args:
        name: the site's name: the layer's qualified module name, or for a group the name of
            its first member in forward order.
        kind: ``"conv"`` or ``"linear"`` (all members are of this kind).
        channels: number of output channels (conv) or output features (linear).
        switch_at: ``switch_points[0]``.
        consumers: the modules whose inputs (or, for a BatchNorm or depthwise conv, features)
            shrink with the channels, in forward order. BatchNorms at switch points are
            listed too. The same module appears more than once when it reads the channels at
            several offsets.
        members: the qualified names of the layers whose output channels are removed, in
            forward order; ``(name,)`` for a single layer (the default).
        switch_points: for each member, the module whose output the switch multiplies: the
            member itself, or the BatchNorm that directly and solely follows it (the switch
            sits after the BatchNorm, before the non-linearity); ``(switch_at,)`` by default.
        coupled_through: for a group, descriptions of the operations that couple its members
            (e.g. ``"'add' (operator.add in module 'layer1.0')"``); empty for a single layer.
        switch_input: for a single layer, the later module whose input the switch may
            multiply instead of the ``switch_at`` output, because only operations that
            commute with a non-negative channel scale lie between (ReLU, pooling, flatten;
            see :mod:`pyro_dirichlet.switch_input`); ``None`` where none does.

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
    members: tuple[str, ...] = ()
    switch_points: tuple[str, ...] = ()
    coupled_through: tuple[str, ...] = ()
    switch_input: SwitchInput | None = None

    def __post_init__(self) -> None:
        if not self.members:
            object.__setattr__(self, "members", (self.name,))
        if not self.switch_points:
            object.__setattr__(self, "switch_points", (self.switch_at,))
        if len(self.members) != len(self.switch_points) or self.switch_points[0] != self.switch_at:
            raise ValueError(
                f"layer '{self.name}': members {self.members} and switch_points "
                f"{self.switch_points} must pair up, starting with switch_at '{self.switch_at}'"
            )

    @property
    def is_group(self) -> bool:
        """Whether the site couples several layers (a residual stream)."""
        return len(self.members) > 1

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
    *,
    coupled: CouplingPolicy = "skip",
) -> list[PrunableLayer]:
    """Find the layers whose output channels can be pruned, and what each one couples to.

    Automatic mode (``layers=None``) returns every Conv2d with ``groups=1`` and every Linear
    whose output does not reach the network's output (so never the classifier). Between a layer
    and its consumers only channel-wise operations may appear: element-wise activations
    (modules, ``F.*`` and ``torch.*`` functions, tensor methods, products with a number),
    Dropout, max/average/adaptive pooling, ``mean`` over spatial dimensions, BatchNorm (also
    sliced), Identity, depthwise convolutions (also sliced), spatial slicing
    (``x[:, :, ::2, ::2]``), padding (``F.pad``, also of the channel dimension),
    concatenation along the channel dimension, residual adds (which couple layers, see the
    module docstring) and flatten/view/reshape to ``(N, -1)``.

    The model is not modified: a copy is traced in eval mode, without gradients.

    Args:
        model: the network.
        example_inputs: an input batch (or a tuple of positional inputs) to run shape
            propagation with; its values do not matter, its shape does.
        layers: qualified names of the layers to analyse; None for all prunable layers. The
            first member of a coupling group names the whole group (whatever ``coupled``
            says); another member of a group is rejected with the group's name.
        coupled: what automatic mode does with layers coupled through a residual add:
            ``"skip"`` leaves them out, ``"group"`` returns each group as one site.

    Returns:
        The prunable layers (and groups), in forward order.

    Raises:
        ValueError: a name in ``layers`` is unknown or not prunable (or a non-first member of
            a group), no layer is prunable, ``coupled`` is unknown, or the model does not run
            on ``example_inputs``.
        UnsupportedStructureError: an operation on a layer's path couples channels in a way
            not supported (grouped conv, unknown operation...) or the model is untraceable.

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
    if coupled not in ("skip", "group"):
        raise ValueError(f"coupled must be 'skip' or 'group', got {coupled!r}")
    graph = _TracedModel.trace(model, _as_input_tuple(example_inputs))
    graph.coupled = coupled

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
        outcome = graph.analyse(name, named=True)
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
    # Where the layer's channel 0 sits along channel_dim (shifted by a concat or a channel pad).
    offset: int = 0


class _NotFoldable(UnsupportedStructureError):
    """A dropped channel's constant cannot be folded: only an error if the layer is pruned."""


@dataclass
class _Walk:
    """Everything one layer's output reaches, before coupling groups are formed."""

    name: str
    kind: Literal["conv", "linear"]
    channels: int
    switch_at: str
    consumers: list[Consumer]
    reaches_output: bool = False
    problem: UnsupportedStructureError | None = None


@dataclass(frozen=True)
class _Arrival:
    """A layer's channels reaching one tensor input of a residual add."""

    producer: str
    input_node: fx.Node
    offset: int
    width: int  # the producer's channels
    tensor_width: int  # the add's size along the channel dimension


class _Groups:
    """Union-find over layers, with one extra element for channels that cannot be pruned."""

    FIXED = ""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {self.FIXED: self.FIXED}
        self.why_fixed: dict[str, str] = {}

    def find(self, name: str) -> str:
        self.parent.setdefault(name, name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if rb == self.FIXED:
                ra, rb = rb, ra
            self.parent[rb] = ra

    def fix(self, name: str, why: str) -> None:
        self.why_fixed.setdefault(name, why)
        self.union(self.FIXED, name)

    def is_fixed(self, name: str) -> bool:
        return self.find(name) == self.find(self.FIXED)


class _TracedModel:
    """The fx graph of a model copy, with shapes, and the walk along each layer's output."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule) -> None:
        self.model = model
        self.gm = gm
        self.coupled: CouplingPolicy = "skip"
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
        self._walks: dict[str, _Walk | _NotPrunable | UnsupportedStructureError] = {}
        self._arrivals: dict[fx.Node, list[_Arrival]] = {}
        self._groups: _Groups | None = None
        self._walking: str | None = None

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

    def analyse(self, name: str, named: bool = False) -> PrunableLayer | _NotPrunable:
        """Layer ``name`` as a switch site, or why it is not one; raise if unsupported.

        ``named``: the caller asked for this layer by name, so the first member of a coupling
        group stands for the group whatever the policy.
        """
        walk = self._walk(name)
        if isinstance(walk, UnsupportedStructureError):
            raise walk
        if isinstance(walk, _NotPrunable):
            return walk
        groups = self._coupling()
        root = groups.find(name)
        members = sorted(
            (m for m in self._walks if m != _Groups.FIXED and groups.find(m) == root),
            key=lambda m: self.order[m],
        )
        merges = self._merges_of(members)
        if not merges:
            return self._single(walk)
        others = [m for m in members if m != name]
        with_others = f" with {_quoted(others)}" if others else ""
        through = f"through {'; '.join(merges)}"
        if groups.is_fixed(name):
            why = next(
                (groups.why_fixed[m] for m in [*members, _Groups.FIXED] if m in groups.why_fixed),
                "they meet channels that cannot be pruned",
            )
            return _NotPrunable(
                f"its output channels are coupled{with_others} {through}, and {why}; a "
                "residual stream like this is left unpruned"
            )
        if members[0] != name:
            return _NotPrunable(
                f"it is coupled{with_others} {through}; its channels are pruned "
                f"together as the group '{members[0]}' (named after its first layer): prune "
                f"the group '{members[0]}'"
            )
        if not named and self.coupled == "skip":
            return _NotPrunable(
                f"its output channels are coupled{with_others} {through}; coupled channels "
                f"are left unpruned by default: pass coupled='group' to prune them as the "
                f"group '{name}'"
            )
        try:
            return self._group(members, merges)
        except _NotFoldable as err:
            # Automatic discovery skips a group it could analyse but not prune exactly
            # (a pre-activation stream: BN(0) reaches a zero-padded conv); naming it raises.
            if named:
                raise
            return _NotPrunable(str(err))

    # --- one layer's walk ---------------------------------------------------------------------

    def _walk(self, name: str) -> _Walk | _NotPrunable | UnsupportedStructureError:
        if name not in self._walks:
            try:
                self._walks[name] = self._walk_uncached(name)
            except UnsupportedStructureError as err:
                # Arrivals recorded before the error stay: a group holding this layer then
                # reports the error instead of guessing.
                self._walks[name] = err
        return self._walks[name]

    def _walk_uncached(self, name: str) -> _Walk | _NotPrunable:
        """Follow layer ``name``'s output to its consumers; raise if the path is unsupported."""
        # The graph holds only the modules forward calls; an unused layer is in the model.
        module = self.modules.get(name)
        if module is None:
            module = self.model.get_submodule(name)
        nodes = self.calls.get(name, [])
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            return _NotPrunable(
                f"it is a grouped convolution (groups={module.groups}), whose output channels "
                "are tied to its input channels; its channels go with the layer that feeds it"
                if _is_depthwise(module) else
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

        walk = _Walk(name, kind, channels, name, [])
        bn = self._batchnorm_directly_after(node, len(shape))
        if bn is not None:
            walk.switch_at = bn.target
            walk.consumers.append(Consumer(bn.target, "batchnorm"))
            start = replace(start, node=bn)

        self._walking = name
        seen = set()
        stack = [start]
        while stack:
            flow = stack.pop()
            if flow in seen:
                continue
            seen.add(flow)
            for user in list(flow.node.users):
                try:
                    outcome = self._follow(name, flow, user)
                except _NotFoldable as err:
                    walk.problem = walk.problem or err
                    continue
                if outcome == "output":
                    walk.reaches_output = True
                    continue
                if isinstance(outcome, tuple):  # a depthwise conv: consumed and passed on
                    consumer, outcome = outcome
                    walk.consumers.append(consumer)
                if isinstance(outcome, Consumer):
                    walk.consumers.append(outcome)
                    if outcome.kind == "batchnorm":
                        # BatchNorm is sliced and passes channels on; past a BatchNorm that
                        # is not the switch, a dropped channel is BN(0), generally non-zero.
                        stack.append(replace(flow, node=user, may_be_nonzero=True))
                elif isinstance(outcome, _Flow):
                    stack.append(outcome)

        if walk.reaches_output:
            return walk
        if len(walk.consumers) == (1 if bn is not None else 0):
            return _NotPrunable("no layer reads its output")
        for consumer in walk.consumers:
            if len(self.calls[consumer.name]) > 1:
                raise UnsupportedStructureError(
                    f"layer '{name}': its consumer '{consumer.name}' is called "
                    f"{len(self.calls[consumer.name])} times in forward; a shared module "
                    "couples channels of several layers, which is not supported"
                )
        walk.consumers = _merged_consumers(walk.consumers)
        walk.consumers.sort(key=lambda consumer: (self.order[consumer.name], consumer.offset))
        return walk

    _REACHES_OUTPUT = (
        "its output channels reach the network's output (it is the classifier, or feeds "
        "the output through channel-wise operations), so removing them would change "
        "the output's shape"
    )

    def _single(self, walk: _Walk) -> PrunableLayer | _NotPrunable:
        if walk.reaches_output:
            return _NotPrunable(self._REACHES_OUTPUT)
        if walk.problem is not None:
            raise walk.problem
        # Imported here: switch_input walks this module's graphs with its helpers.
        from pyro_dirichlet.switch_input import find_switch_input

        (node,) = self.calls[walk.switch_at]
        channel_dim = 1 if walk.kind == "conv" else -1
        return PrunableLayer(
            walk.name, walk.kind, walk.channels, walk.switch_at, tuple(walk.consumers),
            switch_input=find_switch_input(node, channel_dim, self.modules, self.calls),
        )

    def _group(self, members: list[str], merges: list[str]) -> PrunableLayer:
        walks = []
        for member in members:
            walk = self._walk(member)
            if isinstance(walk, UnsupportedStructureError):
                raise walk
            assert isinstance(walk, _Walk)
            if walk.problem is not None:
                raise walk.problem
            walks.append(walk)
        kinds = {walk.kind for walk in walks}
        widths = {walk.channels for walk in walks}
        if len(kinds) > 1 or len(widths) > 1:
            raise UnsupportedStructureError(
                f"layers {_quoted(members)} are coupled through {'; '.join(merges)} but differ "
                f"in kind or width ({sorted(kinds)}, {sorted(widths)})"
            )
        consumers = _merged_consumers([c for walk in walks for c in walk.consumers])
        consumers.sort(key=lambda consumer: (self.order[consumer.name], consumer.offset))
        first = walks[0]
        return PrunableLayer(
            first.name,
            first.kind,
            first.channels,
            first.switch_at,
            tuple(consumers),
            members=tuple(members),
            switch_points=tuple(walk.switch_at for walk in walks),
            coupled_through=tuple(merges),
        )

    # --- coupling groups --------------------------------------------------------------------

    def _coupling(self) -> _Groups:
        """Union the layers whose channels meet in a residual add (walks every candidate)."""
        if self._groups is not None:
            return self._groups
        groups = _Groups()
        for name in self.candidates:
            walk = self._walk(name)
            groups.find(name)
            if isinstance(walk, _Walk) and walk.reaches_output:
                groups.fix(name, f"'{name}' reaches the network's output")
        for node, arrivals in self._arrivals.items():
            inputs = [n for n in node.all_input_nodes if "shape" in n.meta]
            covered = {arrival.input_node for arrival in arrivals}
            for arrival in arrivals[1:]:
                groups.union(arrivals[0].producer, arrival.producer)
            where = _describe(node, self.modules)
            if any(arrival.offset != 0 or arrival.width != arrival.tensor_width for arrival in arrivals):
                groups.fix(
                    arrivals[0].producer,
                    f"at {where} channels shifted by a channel padding or concatenation are "
                    "added to unshifted ones",
                )
            elif covered != set(inputs):
                groups.fix(
                    arrivals[0].producer,
                    f"at {where} they are added to a tensor that no prunable layer produces "
                    "(the network's input, a grouped convolution...)",
                )
        self._groups = groups
        return groups

    def _merges_of(self, members: list[str]) -> list[str]:
        names = set(members)
        return [
            _describe(node, self.modules)
            for node, arrivals in self._arrivals.items()
            if any(arrival.producer in names for arrival in arrivals)
        ]

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

    def _follow(self, layer: str, flow: _Flow, user: fx.Node) -> Any:
        """What ``user`` does with the channels of ``flow``: pass them on, consume them, ..."""
        if user.op == "output":
            return "output"
        if _is_shape_query(user):
            return None
        if _is_sum(user):
            return self._sum(layer, flow, user)
        if user.op == "call_function" and user.target in _CONCATENATING:
            return self._concat(layer, flow, user)
        others = [
            n for n in user.all_input_nodes if n is not flow.node and "shape" in n.meta
        ]
        if others:
            raise UnsupportedStructureError(
                f"cannot follow the output channels of layer '{layer}' through "
                f"{_describe(user, self.modules)}: it combines them with another tensor "
                f"({_combination_kind(user)}), which is not supported; pass layers=[...] without "
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

    def _sum(self, layer: str, flow: _Flow, user: fx.Node) -> _Flow:
        """A residual add (or subtraction): couples the channels of all its tensor inputs."""
        inputs = [n for n in user.all_input_nodes if "shape" in n.meta]
        if len(inputs) == 1:  # x + 1: an element-wise shift of every value
            if sum(1 for _ in _uses(user.args, flow.node)) + sum(1 for _ in _uses(user.kwargs, flow.node)) > 1:
                raise self._unknown(layer, user, "it combines the tensor with itself")
            return replace(flow, node=user, may_be_nonzero=True)
        shape = _shape(user)
        if any(_shape(n) != shape for n in inputs):
            raise self._unknown(
                layer, user,
                f"it adds tensors of shapes {[_shape(n) for n in inputs]}; only adds of equal "
                "shapes (residual connections) are supported",
            )
        if flow.features_per_channel != 1:
            raise self._unknown(layer, user, "it adds flattened channels")
        self._arrivals.setdefault(user, []).append(
            _Arrival(layer, flow.node, flow.offset, self._walk_width(layer), shape[flow.channel_dim])
        )
        return replace(flow, node=user)

    def _walk_width(self, layer: str) -> int:
        module = self.modules[layer]
        return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features

    def _concat(self, layer: str, flow: _Flow, user: fx.Node) -> _Flow:
        tensors = _argument(user, 0, "tensors", None)
        dim = _argument(user, 1, "dim", 0)
        if user.target not in (torch.cat, torch.concat) or not isinstance(tensors, (list, tuple)):
            raise self._unknown(layer, user, "only torch.cat along the channel dimension is supported")
        ndim = len(_shape(flow.node))
        if not isinstance(dim, int) or dim % ndim != flow.channel_dim:
            raise self._unknown(
                layer, user,
                f"it concatenates along dimension {dim}, not the channel dimension "
                f"{flow.channel_dim}, which ties channels of different tensors together",
            )
        positions = [i for i, t in enumerate(tensors) if t is flow.node]
        if len(positions) != 1:
            raise self._unknown(layer, user, "it concatenates the tensor with itself")
        before = sum(_shape(t)[flow.channel_dim] for t in tensors[: positions[0]])
        return replace(flow, node=user, offset=flow.offset + before)

    def _unknown(self, layer: str, user: fx.Node, why: str) -> UnsupportedStructureError:
        return UnsupportedStructureError(
            f"cannot follow the output channels of layer '{layer}' through "
            f"{_describe(user, self.modules)}: {why}. Supported between a layer and its "
            "consumers: element-wise activations, Dropout, pooling, BatchNorm, Identity, "
            "depthwise convolutions, residual adds, channel concatenation, padding, spatial "
            f"slicing and flatten/view to (N, -1); pass layers=[...] without '{layer}' to skip it"
        )


def _merged_consumers(consumers: list[Consumer]) -> list[Consumer]:
    """One entry per (module, offset); zero is preserved only if every path preserves it."""
    merged: dict[tuple, Consumer] = {}
    for consumer in consumers:
        key = (consumer.name, consumer.kind, consumer.features_per_channel, consumer.offset)
        if key in merged:
            preserved = merged[key].zero_preserved and consumer.zero_preserved
            merged[key] = replace(merged[key], zero_preserved=preserved)
        else:
            merged[key] = consumer
    return list(merged.values())


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


_SUMS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}


def _is_sum(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _SUMS
    return node.op == "call_method" and node.target in {"add", "add_", "sub", "sub_"}


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
            offset=flow.offset * math.prod(before[2:]),
        )
    raise graph._unknown(
        layer,
        user,
        f"it reshapes {tuple(before)} to {tuple(after)}; only flattening to (N, -1) keeps "
        "each channel's features together",
    )


def _getitem(graph, layer, flow, user, module):
    """``x[:, :, ::2, ::2]``: slicing other dimensions leaves every channel whole."""
    index = user.args[1]
    index = index if isinstance(index, tuple) else (index,)
    ndim = len(_shape(flow.node))
    if len(index) > ndim or not all(isinstance(i, slice) for i in index):
        raise graph._unknown(layer, user, f"it indexes with {index!r}; only slices are supported")
    if flow.channel_dim < len(index) and index[flow.channel_dim] != slice(None):
        raise graph._unknown(layer, user, "it slices the channel dimension")
    if flow.features_per_channel != 1:
        raise graph._unknown(layer, user, "it slices flattened channels")
    return replace(flow, node=user)


def _pad(graph, layer, flow, user, module):
    """``F.pad``: spatial padding keeps channels, padding the channel dimension shifts them."""
    pad = _argument(user, 1, "pad", None)
    mode = _argument(user, 2, "mode", "constant")
    value = _argument(user, 3, "value", None)
    ndim = len(_shape(flow.node))
    if not isinstance(pad, (tuple, list)) or not all(isinstance(p, int) for p in pad):
        raise graph._unknown(layer, user, f"its padding {pad!r} is not a sequence of ints")
    widths = [0] * (2 * ndim)
    for i, amount in enumerate(pad):  # pairs from the last dimension backwards
        widths[2 * (ndim - 1 - i // 2) + i % 2] = amount
    front, back = widths[2 * flow.channel_dim], widths[2 * flow.channel_dim + 1]
    if flow.features_per_channel != 1 and (front or back):
        raise graph._unknown(layer, user, "it pads flattened channels")
    if (front or back) and (mode != "constant" or front < 0):
        raise graph._unknown(layer, user, f"it pads the channel dimension in mode {mode!r}")
    if widths[0] or widths[1]:
        raise graph._unknown(layer, user, "it pads the batch dimension")
    spatial = any(w for d in range(ndim) if d not in (0, flow.channel_dim) for w in widths[2 * d: 2 * d + 2])
    fills_nonzero = mode == "constant" and value not in (None, 0, 0.0)
    uniform = flow.uniform and not (spatial and (flow.may_be_nonzero or fills_nonzero) and mode == "constant")
    return replace(flow, node=user, offset=flow.offset + front, uniform=uniform)


def _mean(graph, layer, flow, user, module):
    """``x.mean(dim=(2, 3))``: averaging other dimensions keeps channels (like pooling)."""
    ndim = len(_shape(flow.node))
    dims = _argument(user, 1, "dim", None)
    if dims is None or flow.features_per_channel != 1:
        raise graph._unknown(layer, user, "it averages over the channels")
    dims = {d % ndim for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
    if 0 in dims or flow.channel_dim in dims:
        raise graph._unknown(layer, user, "it averages over the batch or the channels")
    keepdim = bool(_argument(user, 2, "keepdim", False))
    channel_dim = flow.channel_dim - (0 if keepdim else sum(d < flow.channel_dim for d in dims))
    return replace(flow, node=user, channel_dim=channel_dim)


def _scalar_product(graph, layer, flow, user, module):
    """``x * 0.5``, ``x / 2``: a number scales every channel, keeping zeros zero."""
    if user.target in (operator.truediv, torch.div) and user.args[0] is not flow.node:
        raise graph._unknown(layer, user, "it divides by the tensor")
    return replace(flow, node=user)


def _batchnorm(graph, layer, flow, user, module):
    ndim = len(_shape(flow.node))
    allowed = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,)}[type(module)]
    if ndim not in allowed or flow.channel_dim != 1 or (ndim > 2 and flow.features_per_channel != 1):
        raise graph._unknown(layer, user, f"it normalises a {ndim}-D tensor over other features")
    return Consumer(
        user.target, "batchnorm", flow.features_per_channel, not flow.may_be_nonzero, flow.offset
    )


def _conv_consumer(graph, layer, flow, user, module):
    if _is_depthwise(module):
        return _depthwise(graph, layer, flow, user, module)
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
    return Consumer(user.target, "conv_in", 1, not flow.may_be_nonzero, flow.offset)


def _conv_zero_pads(module: nn.Conv2d) -> bool:
    return module.padding_mode == "zeros" and (
        module.padding == "same" and any(k > 1 for k in module.kernel_size)
        or module.padding != "same" and _any_nonzero(module.padding)
    )


def _depthwise(graph, layer, flow, user, module):
    """A depthwise conv: filter ``c`` goes with channel ``c``, which it passes on."""
    ndim = len(_shape(flow.node))
    if ndim != 4 or flow.channel_dim != 1 or flow.features_per_channel != 1:
        raise graph._unknown(layer, user, "its input channels are not the layer's channels")
    consumer = Consumer(user.target, "depthwise", 1, not flow.may_be_nonzero, flow.offset)
    # The dropped channel's filter is removed with it; what it leaves downstream is the
    # constant its bias (or a constant input) makes, non-uniform where zero padding meets a
    # non-zero input.
    uniform = flow.uniform and not (flow.may_be_nonzero and _conv_zero_pads(module))
    may_be_nonzero = flow.may_be_nonzero or module.bias is not None
    return consumer, replace(flow, node=user, may_be_nonzero=may_be_nonzero, uniform=uniform)


def _linear_consumer(graph, layer, flow, user, module):
    ndim = len(_shape(flow.node))
    if flow.channel_dim != ndim - 1:
        raise graph._unknown(
            layer, user, "a Linear reads the last dimension, which does not hold the channels"
        )
    if flow.may_be_nonzero and not flow.uniform:
        raise _constant_not_foldable(graph, layer, user, "reads average-pooled zero padding")
    return Consumer(
        user.target, "linear_in", flow.features_per_channel, not flow.may_be_nonzero, flow.offset
    )


def _constant_not_foldable(graph, layer, user, why) -> UnsupportedStructureError:
    return _NotFoldable(
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
    operator.getitem: _getitem,
    F.pad: _pad,
    torch.mean: _mean,
    **dict.fromkeys((operator.mul, torch.mul, operator.truediv, torch.div), _scalar_product),
}

_METHOD_RULES: dict[str, Rule] = {
    **dict.fromkeys(
        ("relu", "relu_", "tanh", "tanh_", "contiguous", "clone"), _elementwise(maps_zero_to_zero=True)
    ),
    **dict.fromkeys(("sigmoid", "sigmoid_"), _elementwise(maps_zero_to_zero=False)),
    **dict.fromkeys(("flatten", "view", "reshape", "squeeze"), _reshape),
    "mean": _mean,
    **dict.fromkeys(("mul", "div"), _scalar_product),
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
