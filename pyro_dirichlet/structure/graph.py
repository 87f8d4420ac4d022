"""The walk along each layer's output, and the coupling groups it finds (union-find).

:class:`TracedModel` holds a traced copy of the model with shapes; :meth:`TracedModel.analyse`
follows one Conv2d/Linear's output channels through the op table (:mod:`.rules`) to the
modules that read them, and unions layers whose channels meet in a residual add into one
coupling group. See :mod:`pyro_dirichlet.structure` for the policy this serves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from pyro_dirichlet.structure._fx import (
    argument,
    describe,
    is_first_argument,
    is_shape_query,
    quoted,
    shape_of,
    uses,
)
from pyro_dirichlet.structure.attention import QUERY_KEY, attention_site
from pyro_dirichlet.structure.coupling_groups import CouplingGroups
from pyro_dirichlet.structure.hf_attention import head_site, is_attention_block, projections
from pyro_dirichlet.structure.layers import (
    DEFAULT_COUPLING,
    Consumer,
    CouplingPolicy,
    PrunableLayer,
    UnsupportedStructureError,
)
from pyro_dirichlet.structure.placement import find_switch_input
from pyro_dirichlet.structure.zeros import MaskedZeros
from pyro_dirichlet.structure.rules import (
    Flow,
    NotFoldable,
    Pinned,
    fused_activation,
    is_depthwise,
    layer_base,
    linear_features,
    op_of,
)

__all__ = ["PARAMETRIZED", "NotPrunable", "TracedModel", "brief"]

# Parametrized weights (weight norm, spectral norm...) are computed from other tensors, which
# slicing `weight` would leave behind.
PARAMETRIZED = (
    "its weights are parametrized (e.g. weight norm); call "
    "torch.nn.utils.parametrize.remove_parametrizations before pruning"
)


@dataclass(frozen=True)
class NotPrunable:
    """Why a Conv2d/Linear is not a prunable layer (without anything being wrong)."""

    reason: str
    # A structure the library may support one day (a grouped convolution), as opposed to a
    # layer not prunable by design (the classifier); reported, never raised.
    unsupported: bool = False


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
    # The channels reach an operation that ties them (a LayerNorm over them): not prunable.
    pinned: Pinned | None = None
    # Modules on the way that the switch multiplies again (PrunableLayer.reswitch_points).
    reswitched: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Arrival:
    """A layer's channels reaching one tensor input of a residual add or a gating product."""

    producer: str
    input_node: fx.Node
    offset: int
    width: int  # the producer's channels
    tensor_width: int  # the add's size along the channel dimension
    kind: Literal["sum", "product"] = "sum"


class TracedModel:
    """The fx graph of a model copy, with shapes, and the walk along each layer's output."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule) -> None:
        self.model = model
        self.gm = gm
        self.coupled: CouplingPolicy = DEFAULT_COUPLING
        self.modules = dict(gm.named_modules())
        self.calls: dict[str, list[fx.Node]] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                self.calls.setdefault(node.target, []).append(node)
        # Consumers are modules or, for a per-channel scale, a parameter (a get_attr node).
        self.order = {
            node.target: i
            for i, node in enumerate(gm.graph.nodes)
            if node.op in ("call_module", "get_attr")
        }
        # Candidates come from the model, not the graph, so that an unused layer can be
        # reported as unused rather than as unknown.
        candidates = [
            name
            for name, module in model.named_modules()
            if name and (layer_base(module) is not None or type(module) is nn.MultiheadAttention)
        ]
        # An attention's channels never leave it: its two sites (values, queries/keys) need
        # no walk. The query/key site is named after the module, suffixed.
        self.attentions: dict[str, tuple[str, str]] = {}
        for name in candidates:
            if type(model.get_submodule(name)) is nn.MultiheadAttention:
                self.attentions[name] = (name, "values")
                self.attentions[name + QUERY_KEY] = (name, "query_key")
                self.order[name + QUERY_KEY] = self.order.get(name, math.inf) + 0.5
        candidates += [name for name, (_, part) in self.attentions.items() if part == "query_key"]
        # A library attention block is one node; its projections are one site, whole heads.
        for owner in [name for name in self.calls if is_attention_block(self.modules[name])]:
            for name in projections(owner, self.modules[owner]):
                self.attentions[name] = (owner, "heads")
                self.order[name] = self.order[owner] + 0.5
        self.candidates = sorted(candidates, key=lambda name: self.order.get(name, math.inf))
        self._walks: dict[str, _Walk | NotPrunable | UnsupportedStructureError] = {}
        self._arrivals: dict[fx.Node, list[_Arrival]] = {}
        self._groups: CouplingGroups | None = None
        self._walking: str | None = None
        self.zeros = MaskedZeros(self)
        # Modules the switches multiply again, and those a walk asked for (see _coupling).
        self.reswitched: set[str] = set()
        self._reswitch_requests: set[str] = set()

    def analyse(self, name: str, named: bool = False) -> PrunableLayer | NotPrunable:
        """Layer ``name`` as a switch site, or why it is not one; raise if unsupported.

        ``named``: the caller asked for this layer by name, so the first member of a coupling
        group stands for the group whatever the policy.
        """
        if name in self.attentions:
            return self._attention(name, named)
        groups = self._coupling()  # first: it may walk every layer again (reswitch points)
        walk = self._walk(name)
        if isinstance(walk, NotPrunable):
            return walk
        # Channels coupled to fixed ones are never pruned, so what stops their walk further
        # on (a Swin stage's last block reaching the patch merging) does not matter.
        if isinstance(walk, UnsupportedStructureError) and not groups.is_fixed(name):
            raise walk
        root = groups.find(name)
        members = sorted(
            (m for m in self._walks if m != CouplingGroups.FIXED and groups.find(m) == root),
            key=lambda m: self.order[m],
        )
        merges = self._merges_of(members)
        if not merges:
            return self._single(walk)
        others = [m for m in members if m != name]
        with_others = f" with {quoted(others)}" if others else ""
        through = f"through {'; '.join(merges)}"
        if groups.is_fixed(name):
            why = next(
                (groups.why_fixed[m] for m in [*members, CouplingGroups.FIXED] if m in groups.why_fixed),
                "they meet channels that cannot be pruned",
            )
            return NotPrunable(
                f"its output channels are coupled{with_others} {through}, and {why}; "
                "channels coupled like this are left unpruned"
            )
        if members[0] != name:
            return NotPrunable(
                f"it is coupled{with_others} {through}; its channels are pruned "
                f"together as the group '{members[0]}' (named after its first layer): prune "
                f"the group '{members[0]}'"
            )
        # A gate (squeeze-and-excitation) belongs to the channels it gates: only residual
        # sums are what the "skip" policy leaves out.
        if not named and self.coupled == "skip" and self._has_sum(members):
            return NotPrunable(
                f"its output channels are coupled{with_others} {through}; coupled channels "
                f"are left unpruned under coupled='skip': pass coupled='group' to prune them as the "
                f"group '{name}'"
            )
        try:
            return self._group(members, merges)
        except NotFoldable as err:
            # Automatic discovery skips a group it could analyse but not prune exactly
            # (a pre-activation stream: BN(0) reaches a zero-padded conv); naming it raises.
            if named:
                raise
            return NotPrunable(str(err))

    def reaches_output(self, name: str) -> bool:
        """Whether layer ``name``'s channels, or those of a layer coupled to it, reach the output."""
        groups = self._coupling()
        if not isinstance(self._walks.get(name), _Walk):
            return False
        root = groups.find(name)
        return any(
            isinstance(walk, _Walk) and walk.reaches_output and groups.find(member) == root
            for member, walk in self._walks.items()
        )

    def _attention(self, name: str, named: bool) -> PrunableLayer | NotPrunable:
        """A site of an attention (its values, or queries/keys); an unsupported one is
        reported, not raised, in automatic mode (attention was never pruned before it could be)."""
        owner, part = self.attentions[name]
        module = self.modules[owner] if owner in self.modules else self.model.get_submodule(owner)
        if parametrize.is_parametrized(module):
            return NotPrunable(PARAMETRIZED)
        try:
            if part == "heads":
                site = head_site(owner, module)
                return site if site.name == name else NotPrunable(
                    f"it is a projection of attention '{owner}', pruned in whole heads as the site '{site.name}'")
            return attention_site(owner, module, self.calls.get(owner, []), part)
        except UnsupportedStructureError as err:
            if named:
                raise
            return NotPrunable(str(err), unsupported=True)

    # --- one layer's walk ---------------------------------------------------------------------

    def _walk(self, name: str) -> _Walk | NotPrunable | UnsupportedStructureError:
        if name not in self._walks:
            try:
                self._walks[name] = self._walk_uncached(name)
            except UnsupportedStructureError as err:
                # Arrivals recorded before the error stay: a group holding this layer then
                # reports the error instead of guessing.
                self._walks[name] = err
        return self._walks[name]

    def _walk_uncached(self, name: str) -> _Walk | NotPrunable:
        """Follow layer ``name``'s output to its consumers; raise if the path is unsupported."""
        begun = self._walk_start(name)
        if isinstance(begun, NotPrunable):
            return begun
        walk, start, has_batchnorm = begun
        self._walking = name
        unsupported = self._follow_flows(name, walk, start)
        if walk.pinned is not None or walk.reaches_output:
            return walk
        if unsupported is not None:
            raise unsupported
        if len(walk.consumers) == (1 if has_batchnorm else 0) and walk.problem is None:
            # (A consumer that cannot absorb a dropped constant is not listed: the problem says so.)
            return NotPrunable("no layer reads its output")
        for consumer in walk.consumers:
            if consumer.kind != "scale" and len(self.calls[consumer.name]) > 1:
                raise UnsupportedStructureError(
                    f"layer '{name}': its consumer '{consumer.name}' is called "
                    f"{len(self.calls[consumer.name])} times in forward; a shared module "
                    "couples channels of several layers, which is not supported"
                )
        walk.consumers = _merged_consumers(walk.consumers)
        walk.consumers.sort(key=lambda consumer: (self.order[consumer.name], consumer.offset))
        return walk

    def _walk_start(self, name: str) -> tuple[_Walk, Flow, bool] | NotPrunable:
        """Layer ``name``'s walk before it is followed, the flow it starts from (after a
        BatchNorm directly behind the layer, already its first consumer), and whether there is one."""
        # The graph holds only the modules forward calls; an unused layer is in the model.
        module = self.modules.get(name)
        if module is None:
            module = self.model.get_submodule(name)
        nodes = self.calls.get(name, [])
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            kind = "depthwise" if is_depthwise(module) else "grouped"
            return NotPrunable(
                f"it is a {kind} convolution (groups={module.groups}), whose output "
                "channels are tied to its input channels; its channels go with the layer "
                "that feeds it"
            )
        if not nodes:
            return NotPrunable("it is never called in the model's forward")
        if len(nodes) > 1:
            raise UnsupportedStructureError(
                f"layer '{name}' is called {len(nodes)} times in forward; a shared layer "
                "couples the channels of every place it is used, which is not supported"
            )
        node = nodes[0]
        shape = shape_of(node)
        if isinstance(module, nn.Conv2d):
            kind, channels, start = "conv", module.out_channels, Flow(node, 1, 1)
        else:
            kind, channels, start = "linear", linear_features(module)[1], Flow(node, len(shape) - 1, 1)

        walk = _Walk(name, kind, channels, name, [])
        bn = self.batchnorm_directly_after(node, len(shape))
        if bn is not None:
            walk.switch_at = bn.target
            walk.consumers.append(Consumer(bn.target, "batchnorm"))
            start = replace(start, node=bn)
        return walk, start, bn is not None

    def _follow_flows(self, name: str, walk: _Walk, start: Flow) -> UnsupportedStructureError | None:
        """Follow every flow of layer ``name``'s channels from ``start``, recording in ``walk``
        what consumes, pins or reaches the output; the first unsupported operation met, if any."""
        seen = set()
        stack = [start]
        unsupported = None
        while stack:
            flow = stack.pop()
            if flow in seen:
                continue
            seen.add(flow)
            for user in list(flow.node.users):
                try:
                    outcome = self._follow(name, flow, user)
                except NotFoldable as err:
                    walk.problem = walk.problem or err
                    if flow.constant_from is not None:
                        self._reswitch_requests.add(flow.constant_from)
                    continue
                except Pinned as err:
                    walk.pinned = walk.pinned or err
                    continue
                except UnsupportedStructureError as err:
                    # Kept going: if the channels are pinned elsewhere, the layer is not
                    # prunable anyway and what stopped this path does not matter.
                    unsupported = unsupported or err
                    continue
                if outcome == "output":
                    walk.reaches_output = True
                    continue
                if isinstance(outcome, tuple):  # BatchNorm, depthwise conv: consumed, passed on
                    consumer, outcome = outcome
                    walk.consumers.append(consumer)
                    if consumer.name in self.reswitched and outcome.constant_from == consumer.name:
                        # The switch multiplies this BatchNorm's output too: zero again.
                        walk.reswitched.append(consumer.name)
                        outcome = replace(outcome, may_be_nonzero=False, uniform=True, constant_from=None)
                if isinstance(outcome, Consumer):
                    walk.consumers.append(outcome)
                elif isinstance(outcome, Flow):
                    stack.append(outcome)
        return unsupported

    _REACHES_OUTPUT = (
        "its output channels reach the network's output (it is the classifier, or feeds "
        "the output through channel-wise operations), so removing them would change "
        "the output's shape"
    )

    def _single(self, walk: _Walk) -> PrunableLayer | NotPrunable:
        if walk.reaches_output:
            return NotPrunable(self._REACHES_OUTPUT)
        if walk.pinned is not None:
            return NotPrunable(str(walk.pinned))
        if walk.problem is not None:
            raise walk.problem
        (node,) = self.calls[walk.switch_at]
        channel_dim = 1 if walk.kind == "conv" else -1
        return PrunableLayer(
            walk.name, walk.kind, walk.channels, walk.switch_at, tuple(walk.consumers),
            switch_input=None if walk.reswitched else find_switch_input(node, channel_dim, self.modules, self.calls),
            block=self._block(walk.consumers),
            reswitch_points=tuple(dict.fromkeys(walk.reswitched)),
        )

    def _block(self, consumers: list[Consumer]) -> int:
        """The channel block every grouped convolution among ``consumers`` prunes in."""
        block = 1
        for consumer in consumers:
            if consumer.kind == "grouped":
                module = self.modules[consumer.name]
                block = math.lcm(block, module.in_channels // module.groups)
        return block

    def _group(self, members: list[str], merges: list[str]) -> PrunableLayer | NotPrunable:
        walks = []
        for member in members:
            walk = self._walk(member)
            if isinstance(walk, UnsupportedStructureError):
                raise walk
            if isinstance(walk, NotPrunable):
                # One member's channels cannot go (SE-DarkNet: the squeeze-excite fc2 coupled with
                # the block's conv1 through the gate's product), so none of the group's can.
                return NotPrunable(
                    f"its output channels are coupled with '{member}' through {'; '.join(merges)}, "
                    f"whose channels cannot be pruned ({walk.reason}); channels coupled like this are left unpruned"
                )
            if walk.problem is not None:
                raise walk.problem
            walks.append(walk)
        kinds = {walk.kind for walk in walks}
        widths = {walk.channels for walk in walks}
        if len(kinds) > 1 or len(widths) > 1:
            raise UnsupportedStructureError(
                f"layers {quoted(members)} are coupled through {'; '.join(merges)} but differ "
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
            block=self._block(consumers),
            reswitch_points=tuple(dict.fromkeys(name for walk in walks for name in walk.reswitched)),
        )

    # --- coupling groups --------------------------------------------------------------------

    def _coupling(self) -> CouplingGroups:
        """Union the layers whose channels meet in a residual add (walks every candidate)."""
        if self._groups is not None:
            return self._groups
        while True:
            for name in self.candidates:
                if name not in self.attentions:
                    self._walk(name)
            # A constant (BN(0), a depthwise bias) that stopped a walk at a zero-padded conv: the switch multiplies
            # that module too, and every walk is taken again, until no walk asks for more.
            new = self._reswitch_requests - self.reswitched
            if not new:
                break
            self.reswitched |= new
            self._walks.clear()
            self._arrivals.clear()
            self.zeros.clear()
        groups = CouplingGroups()
        for name in self.candidates:
            if name in self.attentions:
                continue
            walk = self._walk(name)
            groups.find(name)
            if isinstance(walk, _Walk) and walk.reaches_output:
                groups.fix(name, f"'{name}' reaches the network's output")
            elif isinstance(walk, _Walk) and walk.pinned is not None:
                groups.fix(name, f"'{name}' reaches {walk.pinned.where}, which {walk.pinned.what}")
        for node, arrivals in self._arrivals.items():
            inputs = [n for n in node.all_input_nodes if "shape" in n.meta]
            covered = {arrival.input_node for arrival in arrivals}
            for arrival in arrivals[1:]:
                groups.union(arrivals[0].producer, arrival.producer)
            where = describe(node, self.modules)
            verb = "multiplied by" if arrivals[0].kind == "product" else "added to"
            if any(arrival.offset != 0 or arrival.width != arrival.tensor_width for arrival in arrivals):
                groups.fix(
                    arrivals[0].producer,
                    f"at {where} channels shifted by a channel padding or concatenation are "
                    f"{verb} unshifted ones",
                )
            elif covered != set(inputs):
                groups.fix(
                    arrivals[0].producer,
                    f"at {where} they are {verb} a tensor that no prunable layer produces "
                    "(the network's input, a grouped convolution...)",
                )
        self._groups = groups
        return groups

    def _has_sum(self, members: list[str]) -> bool:
        names = set(members)
        return any(
            arrival.kind == "sum" and arrival.producer in names
            for arrivals in self._arrivals.values()
            for arrival in arrivals
        )

    def _merges_of(self, members: list[str]) -> list[str]:
        names = set(members)
        return [
            describe(node, self.modules)
            for node, arrivals in self._arrivals.items()
            if any(arrival.producer in names for arrival in arrivals)
        ]

    def batchnorm_directly_after(self, node: fx.Node, ndim: int) -> fx.Node | None:
        """The BatchNorm (or timm's fused BatchNormAct2d) that alone reads ``node``, where the switch then sits."""
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or users[0].args != (node,):
            return None
        expected = {4: nn.BatchNorm2d, 2: nn.BatchNorm1d}.get(ndim)
        bn = users[0]
        module = self.modules[bn.target]
        # A fused BatchNorm + activation (timm's BatchNormAct2d) takes the switch after its
        # activation: a zeroed channel leaves it as zero, as a removed one would.
        fused = fused_activation(module) is not None and op_of(bn, self.modules).follow is not None
        if expected is None or (type(module) is not expected and not (fused and ndim == 4)):
            return None
        if fused:
            try:
                op_of(bn, self.modules).follow(self, "", Flow(node, 1, 1), bn, module)
            except UnsupportedStructureError:
                return None
        if len(self.calls[bn.target]) != 1:
            return None
        return bn

    def _follow(self, layer: str, flow: Flow, user: fx.Node) -> Any:
        """What ``user`` does with the channels of ``flow``: pass them on, consume them, ..."""
        if user.op == "output":
            return "output"
        if is_shape_query(user):
            return None
        if user.op == "call_module" and parametrize.is_parametrized(self.modules[user.target]):
            raise self.unknown(layer, user, PARAMETRIZED)
        op = op_of(user, self.modules)
        if op is not None and op.combines == "sum":
            return self._sum(layer, flow, user)
        if op is not None and op.combines == "concat":
            return self._concat(layer, flow, user)
        others = [
            n for n in user.all_input_nodes if n is not flow.node and "shape" in n.meta
        ]
        if others and op is not None and op.combines == "product":
            return self._product(layer, flow, user, others)
        if others and op is not None and op.parameters and all(n.op == "get_attr" for n in others):
            others = []  # the op's rule reads its own weights (F.layer_norm)
        if others:
            raise UnsupportedStructureError(
                f"cannot follow the output channels of layer '{layer}' through "
                f"{describe(user, self.modules)}: it combines them with another tensor "
                "(an operation on several tensors), which is not supported; pass "
                f"layers=[...] without '{layer}' to prune the other layers"
            )
        if not is_first_argument(user, flow.node):
            raise self.unknown(layer, user, "the tensor is not its first argument")
        if op is None:
            raise self.unknown(layer, user, "its effect on channels is not known")
        module = self.modules[user.target] if user.op == "call_module" else None
        return op.follow(self, layer, flow, user, module)

    def _sum(self, layer: str, flow: Flow, user: fx.Node) -> Flow:
        """A residual add (or subtraction): couples the channels of all its tensor inputs."""
        # A parameter holding one value (timm's learnable affine bias, of shape (1,)) is a number.
        inputs = [
            n for n in user.all_input_nodes
            if "shape" in n.meta and not (n.op == "get_attr" and math.prod(n.meta["shape"]) == 1)
        ]
        if len(inputs) == 1:  # x + 1: an element-wise shift of every value
            if sum(1 for _ in uses(user.args, flow.node)) + sum(1 for _ in uses(user.kwargs, flow.node)) > 1:
                raise self.unknown(layer, user, "it combines the tensor with itself")
            # x + 0 (MobileOne's "identity_out = 0" when a block has no identity branch) is x.
            if all(isinstance(a, (int, float)) and a == 0 for a in (*user.args, *user.kwargs.values()) if a is not flow.node):
                return replace(flow, node=user)
            return replace(flow, node=user, may_be_nonzero=True)
        shape = shape_of(user)
        if any(shape_of(n) != shape for n in inputs):
            raise self.unknown(
                layer, user,
                f"it adds tensors of shapes {[shape_of(n) for n in inputs]}; only adds of equal "
                "shapes (residual connections) are supported",
            )
        if flow.features_per_channel != 1:
            raise self.unknown(layer, user, "it adds flattened channels")
        self._arrivals.setdefault(user, []).append(
            _Arrival(layer, flow.node, flow.offset, self.width(layer), shape[flow.channel_dim])
        )
        return replace(flow, node=user)

    def _product(self, layer: str, flow: Flow, user: fx.Node, others: list[fx.Node]) -> Flow:
        """``x * gate``: a gate with one value per channel (squeeze-and-excitation) couples
        the channels of both factors; a gate shared by all channels passes them through."""
        if len(others) != 1 or sum(1 for _ in uses(user.args, flow.node)) + sum(
            1 for _ in uses(user.kwargs, flow.node)
        ) != 1:
            raise self.unknown(layer, user, "it multiplies more than two tensors, or the tensor by itself")
        shape, mine, theirs = shape_of(user), shape_of(flow.node), shape_of(others[0])
        d = flow.channel_dim
        if others[0].op == "get_attr":
            return self._parameter_scale(layer, flow, user, others[0])
        if flow.features_per_channel != 1 or not len(mine) == len(theirs) == len(shape):
            raise self.unknown(layer, user, "it multiplies flattened channels or tensors of different ranks")
        if mine[d] != shape[d] or theirs[d] not in (1, shape[d]):
            raise self.unknown(
                layer, user, f"it multiplies tensors of shapes {mine} and {theirs} across channels"
            )
        if theirs[d] == 1:
            # One map for every channel (spatial attention): a dropped channel stays zero, but
            # a constant it carries becomes a varying one.
            return replace(flow, node=user, uniform=flow.uniform and not flow.may_be_nonzero)
        # Coupled, the two factors' channel c is pruned (and masked) together: the product
        # of the dropped channel is zero, or the product of the two constants the masked
        # factors carry; each factor's own walk checks where its constant goes.
        self._arrivals.setdefault(user, []).append(
            _Arrival(layer, flow.node, flow.offset, self.width(layer), shape[d], "product")
        )
        if flow.may_be_nonzero and self.zeros.holds(layer, others[0], d):
            # A squeeze-excite gate's constant (sigmoid(0) = 0.5) times the masked block
            # output, exactly zero: nothing is left for a zero-padding consumer to see.
            return replace(flow, node=user, may_be_nonzero=False, uniform=True, constant_from=None)
        return replace(flow, node=user)

    def _parameter_scale(self, layer: str, flow: Flow, user: fx.Node, parameter: fx.Node) -> Any:
        """``gamma * x`` with a parameter of the model holding one factor per channel (a
        ConvNeXt layer scale of shape ``(C, 1, 1)``): the factor goes with its channel, sliced
        like a BatchNorm; a single factor scales every channel alike."""
        shape, theirs = shape_of(user), shape_of(parameter)
        if math.prod(theirs) == 1:
            return replace(flow, node=user)
        # Broadcasting aligns the parameter's dimensions with the output's from the right.
        dim = flow.channel_dim - (len(shape) - len(theirs))
        if (
            flow.features_per_channel != 1
            or dim < 0
            or theirs[dim] != shape[flow.channel_dim]
            or math.prod(theirs) != theirs[dim]
        ):
            raise self.unknown(
                layer, user,
                f"it multiplies by the parameter '{parameter.target}' of shape {theirs}, which "
                "is not one factor per channel",
            )
        consumer = Consumer(
            parameter.target, "scale", 1, not flow.may_be_nonzero, flow.offset, dim=dim
        )
        return consumer, replace(flow, node=user)

    def width(self, layer: str) -> int:
        """Layer ``layer``'s output channels."""
        module = self.modules[layer]
        return module.out_channels if isinstance(module, nn.Conv2d) else linear_features(module)[1]

    def _concat(self, layer: str, flow: Flow, user: fx.Node) -> Flow:
        tensors = argument(user, 0, "tensors", None)
        dim = argument(user, 1, "dim", 0)
        if user.target not in (torch.cat, torch.concat) or not isinstance(tensors, (list, tuple)):
            raise self.unknown(layer, user, "only torch.cat along the channel dimension is supported")
        ndim = len(shape_of(flow.node))
        if isinstance(dim, int) and dim % ndim != flow.channel_dim:
            # Each channel of every input goes on in the same channel of the result (a class
            # token joining the patch tokens): removing it means cutting all of them.
            raise Pinned(
                describe(user, self.modules),
                f"concatenates them with other tensors along dimension {dim}, tying "
                "their channels together",
            )
        if not isinstance(dim, int):
            raise self.unknown(
                layer, user,
                f"its dimension {dim!r} is not a constant",
            )
        positions = [i for i, t in enumerate(tensors) if t is flow.node]
        if len(positions) != 1:
            raise self.unknown(layer, user, "it concatenates the tensor with itself")
        before = sum(shape_of(t)[flow.channel_dim] for t in tensors[: positions[0]])
        return replace(flow, node=user, offset=flow.offset + before)

    def unknown(self, layer: str, user: fx.Node, why: str) -> UnsupportedStructureError:
        return UnsupportedStructureError(
            f"cannot follow the output channels of layer '{layer}' through "
            f"{describe(user, self.modules)}: {why}{_SUPPORTED}; pass layers=[...] without "
            f"'{layer}' (or on_unsupported='skip') to skip it"
        )


_SUPPORTED = (
    ". Supported between a layer and its consumers: element-wise activations, Dropout, "
    "stochastic depth, pooling, BatchNorm, Identity, depthwise convolutions, residual adds, "
    "channel concatenation, padding, spatial slicing, squeezes and flatten/view to (N, -1)"
)


def brief(reason: str) -> str:
    """An unsupported-structure message without the list of what is supported (for lists)."""
    return reason.split(_SUPPORTED)[0]


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
