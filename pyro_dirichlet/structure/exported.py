"""The graph of a model that torch.fx cannot trace, from ``torch.export``, mapped back to its modules.

``torch.fx``'s symbolic trace stops at control flow on tensor values, which library models
(Hugging Face transformers above all: attention dispatch, mask building, decorators on
``forward``) have everywhere. ``torch.export`` runs the forward with fake tensors instead and
records every ATen operation it dispatches: a finite set of core operations, each node
tagged with the stack of modules (``nn_module_stack``) that was running when it was recorded,
and the parameters identified by the graph signature. That is the graph the dependency walk
needs, once two things are undone:

1. **Modules come back as nodes.** Every call of a module the op table knows by class (Conv2d,
   Linear, BatchNorm, LayerNorm, Hugging Face's ``Conv1D`` and activations...), of an
   embedding, of an RMS norm, and of an attention block (:mod:`.hf_attention`) becomes one
   ``call_module`` node in place of the ATen operations recorded inside it: surgery slices
   modules, and the rules read them.
2. **ATen operations become the torch functions the op table has rows for** where their
   arguments line up (``aten.add.Tensor`` is ``torch.add``, ``aten.view`` is
   ``torch.reshape``), and slices become ``operator.getitem``. An operation with no such
   equivalent stays as recorded, so a walk that meets it names it in its refusal.

The graph is for analysis: each tensor node carries its recorded shape in
``node.meta["shape"]``, from export's fake tensors; it is not run. Every dimension is static
(the example inputs' shapes), as in the fx trace.
"""

from __future__ import annotations

import copy
import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from pyro_dirichlet.structure._fx import trace_listeners
from pyro_dirichlet.structure.layers import UnsupportedStructureError

__all__ = ["export_graph"]

_aten = torch.ops.aten

# ATen operations and the torch function computing the same from the same arguments (the
# op table's rows are keyed by the torch functions).
_SAME_ARGUMENTS: dict[Any, Callable] = {
    _aten.add.Tensor: torch.add, _aten.add_.Tensor: torch.add, _aten.sub.Tensor: torch.sub,
    _aten.sub_.Tensor: torch.sub, _aten.mul.Tensor: torch.mul, _aten.mul_.Tensor: torch.mul,
    _aten.div.Tensor: torch.div, _aten.neg.default: torch.neg, _aten.abs.default: torch.abs,
    _aten.relu.default: torch.relu, _aten.relu_.default: torch.relu, _aten.silu.default: F.silu,
    _aten.silu_.default: F.silu, _aten.gelu.default: F.gelu, _aten.tanh.default: torch.tanh,
    _aten.sigmoid.default: torch.sigmoid, _aten.hardtanh.default: F.hardtanh,
    _aten.hardtanh_.default: F.hardtanh, _aten.hardswish.default: F.hardswish,
    _aten.hardsigmoid.default: F.hardsigmoid, _aten.leaky_relu.default: F.leaky_relu,
    _aten.elu.default: F.elu, _aten.mish.default: F.mish,
    _aten.dropout.default: F.dropout,
    _aten.view.default: torch.reshape, _aten.reshape.default: torch.reshape,
    _aten._unsafe_view.default: torch.reshape, _aten.flatten.using_ints: torch.flatten,
    _aten.unsqueeze.default: torch.unsqueeze, _aten.squeeze.dim: torch.squeeze,
    _aten.squeeze.dims: torch.squeeze, _aten.transpose.int: torch.transpose,
    _aten.permute.default: torch.permute, _aten.mean.dim: torch.mean, _aten.cat.default: torch.cat,
    _aten.split.Tensor: torch.split, _aten.split_with_sizes.default: torch.split,
    _aten.chunk.default: torch.chunk, _aten.pad.default: F.pad,
    _aten.layer_norm.default: F.layer_norm,
    _aten.max_pool2d.default: F.max_pool2d, _aten.avg_pool2d.default: F.avg_pool2d,
    _aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    _aten.adaptive_avg_pool1d.default: F.adaptive_avg_pool1d,
    _aten.upsample_nearest2d.vec: F.interpolate,
}

# ATen operations that hand their input's values on channel by channel (aliases, copies, casts):
# recorded as the ``contiguous`` method, which the op table passes the channels through.
_SAME_VALUES = {
    _aten.alias.default, _aten.clone.default, _aten.contiguous.default, _aten.detach.default,
    _aten.to.dtype, _aten.to.dtype_layout, _aten.to.device, _aten._to_copy.default,
    _aten.type_as.default, _aten.lift_fresh_copy.default,
}

# Operations recorded for their side effect (shape assertions): they return nothing.
_CHECKS = {_aten._assert_tensor_metadata.default, _aten._assert_scalar.default}


def export_graph(
    model: nn.Module, inputs: tuple[Tensor, ...], whole: Callable[[nn.Module], bool]
) -> fx.GraphModule:
    """The analysis graph of a copy of ``model`` in eval mode, from ``torch.export``.

    Args:
        model: the network; not modified.
        inputs: positional example inputs (their shapes fix the graph's).
        whole: which modules become one ``call_module`` node (the outermost such module on a
            node's module stack wins).

    Returns:
        An ``fx.GraphModule`` over the copy, with ``meta["kept_whole"]`` empty (nothing is
        left untraced) and ``meta["exported"]`` True.

    Raises:
        UnsupportedStructureError: ``torch.export`` cannot export the model, or its graph cannot
            be mapped back to the model's modules (a module's operations interleaved with
            another's).
    """
    for listener in list(trace_listeners):
        listener(model, inputs)
    copied = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            program = torch.export.export(copied, inputs, strict=False)
    except Exception as err:  # noqa: BLE001 - any failure is the model's, reported as such
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UnsupportedStructureError(
            f"{type(model).__name__} can be traced neither by torch.fx nor by torch.export "
            f"({type(err).__name__}: {first})"
        ) from err
    try:
        graph = _Rebuilt(copied, program, whole).graph
    except Exception as err:  # noqa: BLE001 - a graph this mapping does not cover: the caller falls back
        raise UnsupportedStructureError(
            f"{type(model).__name__}'s exported graph cannot be mapped back to its modules ({type(err).__name__}: {err})"
        ) from err
    gm = fx.GraphModule(copied, graph, type(model).__name__)
    gm.meta["kept_whole"] = {}
    gm.meta["exported"] = True
    return gm


class _Rebuilt:
    """The exported graph rewritten at module level (see the module docstring)."""

    def __init__(self, root: nn.Module, program: Any, whole: Callable[[nn.Module], bool]) -> None:
        self.root = root
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        signature = program.graph_signature
        self.tensors = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
        self.constants = {
            name: program.constants[target]
            for name, target in signature.inputs_to_lifted_tensor_constants.items()
        }
        self.modules = dict(root.named_modules())
        # Which tensor each lifted input is: a tied weight is lifted under one of its names.
        self.tensor_ids = {name: id(root.get_parameter(target) if name in signature.inputs_to_parameters
                                    else root.get_buffer(target)) for name, target in self.tensors.items()}
        nodes = list(program.graph.nodes)
        owner = {node: self._owner(node, whole) for node in nodes}
        members: dict[str, list[fx.Node]] = {}
        for node in nodes:
            if owner[node] is not None:
                members.setdefault(owner[node][0], []).append(node)
        last = {group[-1]: key for key, group in members.items()}
        for node in nodes:
            if owner[node] is not None:
                if node in last:
                    self._call_module(owner[node][1], members[last[node]])
                continue
            self._copy(node)

    def _owner(self, node: fx.Node, whole: Callable[[nn.Module], bool]) -> tuple[str, str] | None:
        """(stack key, module path) of the outermost module kept whole that recorded ``node``."""
        if node.op != "call_function":
            return None
        for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
            module = self.modules.get(path)
            if module is not None and path and whole(module):
                return key, path
        return None

    def _value(self, arg: Any) -> Any:
        """``arg`` with the exported graph's nodes replaced by the rebuilt graph's."""
        return fx.node.map_arg(arg, self._node)

    def _node(self, node: fx.Node) -> fx.Node:
        if node not in self.env:  # a parameter, buffer or constant read outside every module kept whole
            self.env[node] = self._attribute(node)
        return self.env[node]

    def _attribute(self, node: fx.Node) -> fx.Node:
        if node.name in self.tensors:
            target = self.tensors[node.name]
        else:
            target = f"_exported_{node.name}"  # a constant the forward made, kept on the copy
            self.root.register_buffer(target, self.constants[node.name], persistent=False)
        attribute = self.graph.get_attr(target)
        attribute.meta["shape"] = tuple(node.meta["val"].shape)
        return attribute

    def _copy(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            if node.name in self.tensors or node.name in self.constants:
                return  # created where it is read (see _node)
            self.env[node] = self.graph.placeholder(node.name)
        elif node.op == "output":
            (outputs,) = node.args
            self.graph.output(tuple(self._value(list(outputs))))
            return
        elif node.target in _CHECKS:
            return
        elif node.target in _SAME_VALUES:
            self.env[node] = self.graph.call_method("contiguous", (self._value(node.args[0]),))
        elif node.target is operator.getitem:
            self.env[node] = self.graph.call_function(operator.getitem, self._value(node.args))
        elif node.target is _aten.slice.Tensor or node.target is _aten.select.int:
            self.env[node] = self.graph.call_function(operator.getitem, _index(node, self._value(node.args[0])))
        else:
            target = _SAME_ARGUMENTS.get(node.target, node.target)
            self.env[node] = self.graph.call_function(target, self._value(node.args), self._value(node.kwargs))
        _record_shape(node, self.env[node])

    def _call_module(self, path: str, group: list[fx.Node]) -> None:
        """One ``call_module`` node for a module's recorded operations ``group``: its arguments
        are the tensors the group reads from outside (the module's own parameters excluded),
        in the order first read; its results, the group's nodes read outside it, in order."""
        inside = set(group)
        module = self.modules[path]
        own = {id(tensor) for tensor in (*module.parameters(), *module.buffers())}
        reads: list[fx.Node] = []
        for node in group:
            for arg in node.all_input_nodes:
                if arg in inside or arg in reads or self.tensor_ids.get(arg.name) in own:
                    continue
                if arg.op == "placeholder" and arg.name in self.constants:
                    continue  # a constant the module made (an index table): part of the module
                reads.append(arg)
        results = []
        for node in group:
            if not any(user not in inside for user in node.users):
                continue
            source = _alias_source(node, inside)
            if source is not None:  # the module's input, cast to its own dtype (a no-op): still the input
                self.env[node] = self._node(source)
            else:
                results.append(node)
        call = self.graph.call_module(path, tuple(self._node(arg) for arg in reads))
        if len(results) == 1:
            self.env[results[0]] = call
            _record_shape(results[0], call)
            return
        for i, node in enumerate(results):
            self.env[node] = self.graph.call_function(operator.getitem, (call, i))
            _record_shape(node, self.env[node])


def _alias_source(node: fx.Node, inside: set[fx.Node]) -> fx.Node | None:
    """The node outside a module that ``node`` only aliases or casts, if it does."""
    while node.op == "call_function" and node.target in _SAME_VALUES:
        node = node.args[0]
        if node not in inside:
            return node
    return None


def _index(node: fx.Node, tensor: fx.Node) -> tuple[fx.Node, tuple]:
    """``aten.slice.Tensor(x, dim, start, end, step)`` or ``aten.select.int(x, dim, i)`` as
    ``operator.getitem``'s arguments."""
    ndim = node.args[0].meta["val"].dim()
    dim = node.args[1] % ndim if len(node.args) > 1 else 0
    if node.target is _aten.select.int:
        index: Any = node.args[2]
    else:
        start, end, step = (list(node.args[2:]) + [None, None, 1])[:3]
        index = slice(start, end, step if step != 1 else None)
    return (tensor, (slice(None),) * dim + (index,))


def _record_shape(exported: fx.Node, rebuilt: fx.Node) -> None:
    """The recorded shape, and the module stack keyed by path as torch.fx keys it (errors name the module)."""
    value = exported.meta.get("val")
    if isinstance(value, Tensor):
        rebuilt.meta["shape"] = tuple(int(size) for size in value.shape)
    stack = exported.meta.get("nn_module_stack") or {}
    if rebuilt.op != "call_module":
        rebuilt.meta["nn_module_stack"] = {path: (path, cls) for path, cls in stack.values() if path}
