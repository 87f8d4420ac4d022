"""torch.fx plumbing shared by the structure modules: tracing with shapes, and reading nodes.

Package-internal: the names here carry no underscore so that :mod:`.graph`, :mod:`.rules` and
:mod:`.placement` can share them, but they are not part of the public API.
"""

from __future__ import annotations

import copy
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, fx, nn

from pyro_dirichlet.structure.layers import UnsupportedStructureError

__all__ = [
    "any_nonzero",
    "argument",
    "as_input_tuple",
    "describe",
    "is_first_argument",
    "is_shape_query",
    "quoted",
    "recording_traces",
    "shape_of",
    "trace",
    "trace_listeners",
    "uses",
]

#: Called with ``(model, inputs)`` each time :func:`trace` starts on a model: the public way
#: to see how often a pipeline traces a network (tracing is the expensive step a caller
#: holding ``PrunableLayer`` objects should not repeat). :func:`recording_traces` wraps it.
trace_listeners: list[Callable[[nn.Module, tuple[Tensor, ...]], None]] = []


@contextmanager
def recording_traces() -> Iterator[list[nn.Module]]:
    """A list that collects every model the structure analysis traces inside the ``with`` block.

    One entry per torch.fx trace: a model traced whole gives one, a model traced scope by
    scope (:mod:`pyro_dirichlet.structure.scopes`) one per scope.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> from pyro_dirichlet.structure import find_prunable_layers
        >>> with recording_traces() as traced:
        ...     _ = find_prunable_layers(net, torch.zeros(1, 4))
        >>> traced == [net]
        True
    """
    traced: list[nn.Module] = []

    def record(model: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        traced.append(model)

    trace_listeners.append(record)
    try:
        yield traced
    finally:
        trace_listeners.remove(record)

# Reading these from a tensor reads no values, so they neither consume nor pass channels.
_SHAPE_METHODS = {"size", "dim", "ndimension", "numel"}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda"}


def as_input_tuple(example_inputs: Any) -> tuple[Tensor, ...]:
    """``example_inputs`` as a tuple of positional tensors; a TypeError names anything else."""
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


def trace(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    keep_whole: Callable[[type], bool] = lambda cls: False,
    *,
    fallback: bool = False,
) -> fx.GraphModule:
    """Trace a copy of ``model`` and run it once on ``inputs``, recording every tensor's shape.

    ``keep_whole(cls)``: whether modules of class ``cls`` stay one node (the op table's
    library layers), besides torch's own and those timm declares untraceable. ``fallback``: a
    submodule whose forward torch.fx cannot trace (control flow on tensor values, Hugging
    Face's attention dispatch) stays one node instead of failing the trace; the qualified
    names of such modules, with why, are in ``gm.meta["kept_whole"]``.

    Each tensor-valued node gets ``node.meta["shape"]``. The caller's model is not touched.

    Raises:
        UnsupportedStructureError: ``torch.fx`` cannot trace the model's own forward.
        ValueError: the model does not run on ``inputs``.
    """
    for listener in list(trace_listeners):
        listener(model, inputs)
    # A copy in eval mode: shape propagation runs forward, which would update BatchNorm
    # running statistics and flip training flags on the caller's model.
    traced = copy.deepcopy(model).eval()
    tracer = _LeafTracer(keep_whole, fallback)
    try:
        gm = fx.GraphModule(traced, tracer.trace(traced), type(traced).__name__)
    except Exception as err:
        raise UnsupportedStructureError(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(err).__name__}: "
            f"{err}); channel coupling is found from the traced graph, so the model's "
            "forward must be traceable (no control flow that depends on tensor values)"
        ) from err
    gm.meta["kept_whole"] = tracer.kept_whole
    recorder = _ShapeRecorder(gm)
    try:
        with torch.no_grad():
            recorder.run(*inputs)
    except Exception as err:
        where = ""
        if recorder.current is not None:
            where = f" in {describe(recorder.current, dict(gm.named_modules()))}"
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        raise ValueError(
            f"example_inputs of shape {shapes} cannot run through "
            f"{type(model).__name__}: {type(err).__name__}{where}: {err}"
        ) from err
    return gm


class _LeafTracer(fx.Tracer):
    """``torch.fx``'s tracer, keeping whole the modules the op table knows by class name (timm's
    ``BatchNormAct2d``, a BatchNorm2d subclass whose forward calls ``F.batch_norm`` with its
    own buffers) and those timm itself declares untraceable (``register_notrace_module``:
    forwards with control flow on sizes), and leaving timm's untraceable functions
    (``register_notrace_function``: window partitions computing ints from sizes) as calls. A
    module or function kept whole that the table does not know is one precise refusal for the
    layers whose channels reach it, instead of a model that cannot be traced at all."""

    def __init__(self, keep_whole: Callable[[type], bool], fallback: bool = False) -> None:
        self.keep_whole = keep_whole
        self.fallback = fallback
        self.kept_whole: dict[str, str] = {}
        self._forced: nn.Module | None = None
        timm_fx = sys.modules.get("timm.layers._fx")  # only once the model's package loaded it
        functions = tuple(f for f in timm_fx.get_notrace_functions() if callable(f)) if timm_fx else ()
        super().__init__(autowrap_functions=functions)
        self.leaves = set(timm_fx.get_notrace_modules()) if timm_fx else set()

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        cls = type(module)
        if module is self._forced or cls in self.leaves or self.keep_whole(cls):
            return True
        return super().is_leaf_module(module, qualified_name)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        path = self.path_of_module(m)
        if not self.fallback or self.is_leaf_module(m, path):
            return super().call_module(m, forward, args, kwargs)
        # Enough state to undo a failed attempt: the nodes it added, fx's module stack.
        last, stack, calls = self.graph._root.prev, self.module_stack.copy(), self.num_calls.copy()
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as err:  # noqa: BLE001 - any failure keeps the module whole
            while self.graph._root.prev is not last:
                self.graph.erase_node(self.graph._root.prev)
            self.module_stack, self.num_calls = stack, calls
            self.kept_whole.setdefault(path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            self._forced = m
            try:
                return super().call_module(m, forward, args, kwargs)
            finally:
                self._forced = None


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


def shape_of(node: fx.Node) -> tuple[int, ...]:
    """The recorded output shape of ``node``; raises if it did not produce one tensor."""
    shape = node.meta.get("shape")
    if shape is None:
        raise UnsupportedStructureError(f"'{node.name}' does not produce a single tensor")
    return shape


def is_shape_query(node: fx.Node) -> bool:
    """Whether ``node`` reads only a tensor's metadata (``x.size(0)``, ``x.shape``, ``x.dtype``)."""
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    return (
        node.op == "call_function"
        and node.target is getattr
        and len(node.args) == 2
        and node.args[1] in _SHAPE_ATTRIBUTES
    )


def is_first_argument(user: fx.Node, node: fx.Node) -> bool:
    """Whether ``node`` is ``user``'s first argument and appears nowhere else in its call."""
    first = user.args[0] if user.args else user.kwargs.get("input")
    if first is not node:
        return False
    # The tensor may appear only once: f(x, x) would couple it with itself.
    return sum(1 for _ in uses(user.args, node)) + sum(1 for _ in uses(user.kwargs, node)) == 1


def uses(value: Any, node: fx.Node) -> Iterator[fx.Node]:
    """Every occurrence of ``node`` in a (nested) argument structure."""
    if value is node:
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from uses(item, node)
    elif isinstance(value, dict):
        for item in value.values():
            yield from uses(item, node)


def argument(node: fx.Node, position: int, keyword: str, default: Any) -> Any:
    """A call's argument, given positionally or by keyword."""
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(keyword, default)


def any_nonzero(padding: Any) -> bool:
    """Whether a padding (an int or a sequence of ints) pads anything."""
    if isinstance(padding, int):
        return padding != 0
    return any(p != 0 for p in padding)


def quoted(names: Any) -> str:
    return ", ".join(f"'{name}'" for name in names)


def describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """``node`` as a user reads it in an error: the module, function or method and where."""
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
