"""Where a layer's switch can multiply a later module's input instead of the layer's output.

A switch multiplies a layer's output channel ``c`` by ``s_c * C >= 0``. Operations that are
positively homogeneous channel by channel (``f(a * x) = a * f(x)`` for ``a >= 0``) commute
with that multiply: ReLU, LeakyReLU, max and average pooling (also adaptive), Dropout,
Identity, flattening to ``(N, -1)``. So the multiply may move past them to the input of the
first module that reads the result, giving the same logits, values and gradients (up to
rounding) for less work: the multiply touches the pooled tensor (a quarter of the elements
after a 2x2 pool), and the backward pass from the switch stops at that input instead of
running back through the ReLU and the pooling. On LeNet-5 this is most of what an SVI step
spends beyond the frozen network's own forward and input gradients.

Which operations commute is the ``commutes_with_scale`` column of the op table in
:mod:`pyro_dirichlet.structure.rules`. Only a chain of single-user nodes moves: if anything
else reads a tensor on the way (a second branch, a residual add, the network's output), the
switch stays at the layer's output.
"""

from __future__ import annotations

import math

from torch import fx, nn

from pyro_dirichlet.structure._fx import is_first_argument, is_shape_query
from pyro_dirichlet.structure.layers import SwitchInput
from pyro_dirichlet.structure.rules import op_of

__all__ = ["SwitchInput", "find_switch_input"]


def find_switch_input(
    node: fx.Node, channel_dim: int, modules: dict[str, nn.Module], calls: dict[str, list[fx.Node]]
) -> SwitchInput | None:
    """The module input a switch at ``node``'s output can move to, or ``None`` to stay.

    Args:
        node: the traced node whose output the switch multiplies (a conv or linear layer, or
            the BatchNorm right after it); nodes carry their output shape in
            ``node.meta["shape"]``.
        channel_dim: the dimension of ``node``'s output that indexes channels (1 or -1).
        modules: the traced module's ``named_modules()``.
        calls: each module's ``call_module`` nodes in the graph.

    Returns:
        ``None`` when no commuting operation follows ``node`` or the chain does not end at a
        module called once with the tensor as its only tensor argument.
    """
    shape = node.meta.get("shape")
    if shape is None or len(shape) < 2:
        return None
    channel_dim %= len(shape)
    features = 1
    passes: list[str] = []
    while True:
        user = _sole_reader(node)
        if user is None:
            return None
        if not _commutes(user, modules):
            # A pre-hook scales every call of a module: a shared one (an activation module
            # used by several layers) must not take the switch.
            if user.op != "call_module" or not passes or len(calls[user.target]) != 1:
                return None
            return SwitchInput(str(user.target), channel_dim, features, tuple(passes))
        # (find_prunable_layers has checked that pooling sees the channels in dimension 1.)
        before, after = node.meta.get("shape"), user.meta.get("shape")
        if before is None or after is None:
            return None
        if len(after) != len(before) or after[channel_dim] != before[channel_dim]:
            # Only flattening (N, C, *rest) -> (N, C * prod(rest)) keeps each channel whole.
            if not (channel_dim == 1 and len(after) == 2 and after[1] == math.prod(before[1:])):
                return None
            features *= math.prod(before[2:])
        passes.append(_name(user))
        node = user


def _sole_reader(node: fx.Node) -> fx.Node | None:
    """The one node reading ``node``'s values, taking it as its first and only tensor
    argument (``x.size(0)`` and other shape queries read no values)."""
    readers = [user for user in node.users if not is_shape_query(user)]
    if len(readers) != 1:
        return None
    (user,) = readers
    # A module's forward pre-hook sees positional arguments only, so the tensor must be one.
    if not user.args or not is_first_argument(user, node):
        return None
    if any(other is not node and "shape" in other.meta for other in user.all_input_nodes):
        return None
    return user


def _commutes(user: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``user`` is positively homogeneous channel by channel (see the module docstring)."""
    # (find_prunable_layers has rejected pooling that returns indices.)
    op = op_of(user, modules)
    return op is not None and op.commutes(user)


def _name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name
