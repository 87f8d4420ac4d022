"""Which tensors of a traced model are exactly zero for a masked channel, and where a switch
may multiply again to make one so.

A squeeze-excite product ``x * gate`` passes the gate's constant for a dropped channel
(``sigmoid(0) = 0.5``) unless ``x`` is zero there; :class:`MaskedZeros` answers that for the
walk in :mod:`pyro_dirichlet.structure.graph`: ``x`` is zero when it is where a switch
multiplies (a layer's output, the BatchNorm directly after it, a reswitch point), seen
through operations that map zero to zero and leave the channels where they are, sums of
such tensors (RepVGG-style branches added together) and products with one such factor (an
earlier block's gate). Where a dropped channel turns into a constant that no bias can
absorb, :meth:`MaskedZeros.can_reswitch` says whether the switch may multiply the module that
made it (``PrunableLayer.reswitch_points``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import fx, nn

from pyro_dirichlet.structure._fx import is_first_argument, shape_of
from pyro_dirichlet.structure.layers import UnsupportedStructureError
from pyro_dirichlet.structure.rules import OPS, Flow, fused_activation, is_depthwise, op_of

__all__ = ["MaskedZeros"]

#: A longer way back than this (in nodes) is no proof; RepViT's 13-block stage is about 80.
MAX_DEPTH = 400


class MaskedZeros:
    """Answers :meth:`holds` for one traced model, remembering each node's answer (the graph
    is acyclic); :meth:`clear` forgets them when the model's reswitch points change."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph  # the TracedModel whose walk asks (not imported: it imports this module)
        self._memo: dict[tuple[fx.Node, int], bool] = {}
        self._switch_at: set[str] | None = None

    def clear(self) -> None:
        self._memo.clear()

    def holds(self, layer: str, node: fx.Node, channel_dim: int, depth: int = 0) -> bool:
        """Whether a masked channel of ``node`` is exactly zero.

        Only asked of the other factor of a coupled product, whose producers are then in the
        same group as ``layer`` (``TracedModel._coupling`` fixes a product with an input no
        layer produces), so they are masked and pruned with the channel that reaches it.
        """
        key = (node, channel_dim)
        if key not in self._memo:
            self._memo[key] = depth < MAX_DEPTH and self._holds(layer, node, channel_dim, depth)
        return self._memo[key]

    def _holds(self, layer: str, node: fx.Node, channel_dim: int, depth: int) -> bool:
        graph = self.graph
        if node.op == "call_module" and (node.target in self._switch_nodes() or node.target in graph.reswitched):
            return True
        op = op_of(node, graph.modules)
        inputs = [n for n in node.all_input_nodes if "shape" in n.meta]
        if op is not None and op.combines == "sum" and len(inputs) > 1:
            shape = shape_of(node)
            return all(shape_of(n) == shape and self.holds(layer, n, channel_dim, depth + 1) for n in inputs)
        if op is not None and op.combines == "product" and len(inputs) > 1:
            # Zero times anything (a squeeze-excite gate) is zero.
            width = shape_of(node)[channel_dim]
            return any(
                len(shape_of(n)) == len(shape_of(node)) and shape_of(n)[channel_dim] == width
                and self.holds(layer, n, channel_dim, depth + 1) for n in inputs
            )
        if op is None or op.follow is None or op.combines is not None or len(inputs) != 1:
            return False
        if not is_first_argument(node, inputs[0]):
            return False
        module = graph.modules[node.target] if node.op == "call_module" else None
        zero = Flow(inputs[0], channel_dim, 1)
        try:
            outcome = op.follow(graph, layer, zero, node, module)
        except UnsupportedStructureError:
            return False
        if not isinstance(outcome, Flow) or outcome != replace(zero, node=node):
            return False  # a consumer (a BatchNorm that is not a switch), or channels moved
        return self.holds(layer, inputs[0], channel_dim, depth + 1)

    def can_reswitch(self, layer: str, flow: Flow, user: fx.Node, module: nn.Module) -> bool:
        """Whether the switch of ``layer`` could multiply ``module``'s output again: the zero
        reaches it intact, the module (a BatchNorm, or a depthwise conv whose bias makes the
        constant) holds exactly the layer's channels and is called once, and a scale folds
        into it (affine, any fused activation commuting with a positive scale)."""
        graph = self.graph
        if flow.may_be_nonzero or flow.offset != 0 or flow.features_per_channel != 1 or flow.channel_dim != 1:
            return False
        if not layer or layer not in graph.modules or len(graph.calls.get(user.target, [])) != 1:
            return False
        if isinstance(module, nn.Conv2d):
            return graph.width(layer) == module.out_channels and is_depthwise(module)
        if graph.width(layer) != getattr(module, "num_features", None) or not getattr(module, "affine", False):
            return False
        activation = fused_activation(module)
        op = OPS.get(type(activation)) if activation is not None else None
        return activation is None or (op is not None and op.commutes_with_scale)

    def _switch_nodes(self) -> set[str]:
        """The modules at whose output a prunable candidate's switch multiplies."""
        if self._switch_at is None:
            graph = self.graph
            self._switch_at = set()
            for name in graph.candidates:
                nodes = graph.calls.get(name, [])
                module = graph.modules.get(name)
                if len(nodes) != 1 or not isinstance(module, (nn.Conv2d, nn.Linear)):
                    continue
                if isinstance(module, nn.Conv2d) and module.groups != 1:
                    continue  # its channels are its input's, not switched here
                bn = graph.batchnorm_directly_after(nodes[0], len(shape_of(nodes[0])))
                self._switch_at.add(bn.target if bn is not None else name)
        return self._switch_at
