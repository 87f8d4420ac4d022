"""The structure of a model that torch.fx cannot trace whole: traced scope by scope.

Library models (Hugging Face transformers above all) have control flow on tensor values in
places (attention dispatch, mask building in the top-level forward) that no symbolic trace
gets through. Such a model is still analysed exactly where it can be: the trace keeps a
submodule it cannot trace as one node (:func:`~pyro_dirichlet.structure._fx.trace` with
``fallback=True``), and a module whose own forward cannot be traced is replaced by its
children. Each module kept whole, and each child, is then traced on its own, with the inputs
one real forward pass gave it, as a *scope*: a BERT layer's MLP (``intermediate.dense`` ->
GELU -> ``output.dense``) is found inside the layer's scope even though the model around it
cannot be traced.

A layer whose channels leave its scope (reach the scope's output, or a module kept whole)
cannot be followed further: it is unsupported, a precise refusal that ``on_unsupported="skip"``
prunes around. Only the model's own output is a real output.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from pyro_dirichlet.structure._fx import trace
from pyro_dirichlet.structure.exported import export_graph
from pyro_dirichlet.structure.foreign import is_rms_norm
from pyro_dirichlet.structure.hf_attention import is_attention_block
from pyro_dirichlet.structure.graph import NotPrunable, TracedModel
from pyro_dirichlet.structure.layers import (
    Consumer,
    PrunableLayer,
    UnsupportedStructureError,
)
from pyro_dirichlet.structure.rules import OPS, layer_base, qualified_class

__all__ = ["ScopedModel", "trace_model"]

# The attribute a scope's wrapper holds the traced module under: local names start with it.
_SCOPE = "scope"


def trace_model(model: nn.Module, inputs: tuple[Tensor, ...]) -> TracedModel | ScopedModel:
    """The model's traced graph; scope by scope where torch.fx cannot trace it whole."""
    keep_whole = _keep_whole
    try:
        gm = trace(model, inputs, keep_whole, fallback=True)
    except UnsupportedStructureError as untraceable:
        root_error: UnsupportedStructureError | None = untraceable
        gm = None
        try:  # the whole model from torch.export, mapped back to modules; scope by scope if that fails too
            return TracedModel(model, export_graph(model, inputs, _exported_whole))
        except UnsupportedStructureError:
            pass
    else:
        root_error = None
        if not gm.meta["kept_whole"]:
            return TracedModel(model, gm)
    calls = _record_calls(model, inputs)
    scopes: list[tuple[str, TracedModel, str]] = []
    refused: dict[str, str] = {}
    if gm is None:
        _children(model, "", calls, scopes, refused, str(root_error).split("; channel coupling")[0])
    else:
        scopes.append(("", _restricted(TracedModel(model, gm), gm.meta["kept_whole"]), ""))
        for path, why in gm.meta["kept_whole"].items():
            _scope(model.get_submodule(path), path, calls, scopes, refused, _within(path, why))
    return ScopedModel(model, scopes, refused)


class ScopedModel:
    """Scopes' graphs behind :class:`TracedModel`'s interface (``candidates``, ``order``,
    ``coupled``, ``analyse``), with the model's own qualified names."""

    def __init__(
        self, model: nn.Module, scopes: list[tuple[str, TracedModel, str]], refused: dict[str, str]
    ) -> None:
        self.model = model
        self.scopes = scopes
        self.refused = refused
        self._owner: dict[str, tuple[str, TracedModel, str, str]] = {}
        self.order: dict[str, float] = {}
        module_order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        for prefix, graph, why in scopes:
            for local in graph.candidates:
                self._owner[_global(prefix, local)] = (prefix, graph, local, why)
            for local, position in graph.order.items():
                # forward order within a scope, scopes in the model's module order
                start = module_order.get(prefix, 0) if prefix else 0
                self.order.setdefault(_global(prefix, local), start + position / (len(graph.order) + 1))
        for name in refused:
            self.order.setdefault(name, module_order.get(name, math.inf))
        self.candidates = sorted([*self._owner, *refused], key=lambda name: self.order.get(name, math.inf))

    @property
    def coupled(self) -> str:
        return self.scopes[0][1].coupled if self.scopes else "group"

    @coupled.setter
    def coupled(self, policy: str) -> None:
        for _, graph, _ in self.scopes:
            graph.coupled = policy

    def analyse(self, name: str, named: bool = False) -> PrunableLayer | NotPrunable:
        """Layer ``name`` in its scope; a layer whose channels leave a scope is unsupported."""
        if name in self.refused:
            raise UnsupportedStructureError(f"layer '{name}': {self.refused[name]}")
        prefix, graph, local, why = self._owner[name]
        where = f" (analysed within module '{prefix}', whose surroundings torch.fx cannot trace)" if prefix else ""
        try:
            outcome = graph.analyse(local, named)
        except UnsupportedStructureError as err:
            raise UnsupportedStructureError(f"{_globalised_text(prefix, str(err))}{where}") from err
        if isinstance(outcome, NotPrunable):
            if prefix and graph.reaches_output(local):
                raise UnsupportedStructureError(
                    f"layer '{name}': its channels leave module '{prefix}', which is analysed on its "
                    f"own because {why}, so the layers that read them are unknown"
                )
            return NotPrunable(_globalised_text(prefix, outcome.reason), outcome.unsupported)
        return _globalised(prefix, outcome)


def _keep_whole(module_class: type) -> bool:
    return qualified_class(module_class) in OPS


def _exported_whole(module: nn.Module) -> bool:
    """The modules an exported graph keeps as nodes: those the op table has rows for, every
    Conv2d/Linear, embeddings and 1-D convolutions (no channels of theirs are followed, but
    surgery and reports name them), RMS norms and attention blocks."""
    cls = type(module)
    known = cls in OPS or qualified_class(cls) in OPS or layer_base(module) is not None
    return known or isinstance(module, (nn.Embedding, nn.Conv1d)) or is_rms_norm(cls) or is_attention_block(module)


def _restricted(graph: TracedModel, kept_whole: dict[str, str]) -> TracedModel:
    """``graph`` without the candidates inside modules kept whole: their own scopes have them."""
    graph.candidates = [
        name for name in graph.candidates
        if not any(name == path or name.startswith(path + ".") for path in kept_whole)
    ]
    return graph


def _scope(
    module: nn.Module,
    path: str,
    calls: dict[str, list[tuple[tuple, dict]]],
    scopes: list,
    refused: dict[str, str],
    why: str,
) -> None:
    """Trace ``module`` (at ``path``) on the inputs it was called with; its children where
    its own forward cannot be traced."""
    names = [name for name, m in module.named_modules() if layer_base(m) is not None]
    if not names:
        return
    recorded = calls.get(path, [])
    if not recorded:  # a container (ModuleList) whose parent calls its children directly
        _children(module, path, calls, scopes, refused, why)
        return
    if len(recorded) != 1:
        reason = (
            f"it lies in module '{path}', which forward calls {len(recorded)} times, so it cannot be "
            f"traced on its own, and {why}"
        )
        for name in names:
            refused[_global(path, name)] = reason
        return
    args, kwargs = recorded[0]
    wrapper, tensors = _wrapped(module, args, kwargs)
    try:
        gm = trace(wrapper, tensors, _keep_whole, fallback=True)
    except (UnsupportedStructureError, ValueError) as err:
        _children(module, path, calls, scopes, refused, f"module '{path}' cannot be traced by torch.fx ({err})")
        return
    kept_whole = gm.meta["kept_whole"]
    if _SCOPE in kept_whole:  # the module's own forward cannot be traced
        _children(module, path, calls, scopes, refused, f"module '{path}' cannot be traced by torch.fx ({kept_whole[_SCOPE]})")
        return
    scopes.append((path, _restricted(TracedModel(wrapper, gm), kept_whole), why))
    for local, reason in kept_whole.items():
        inner = local.removeprefix(_SCOPE + ".")
        _scope(module.get_submodule(inner), _global(path, inner), calls, scopes, refused, _within(_global(path, inner), reason))


def _within(path: str, why: str) -> str:
    return f"torch.fx cannot trace module '{path}' as part of its parent ({why})"


def _children(module: nn.Module, path: str, calls: dict, scopes: list, refused: dict, why: str) -> None:
    for name, child in module.named_children():
        _scope(child, f"{path}.{name}" if path else name, calls, scopes, refused, why)


def _record_calls(model: nn.Module, inputs: tuple[Tensor, ...]) -> dict[str, list[tuple[tuple, dict]]]:
    """The positional and keyword arguments of every call of every submodule in one forward
    pass of a copy of ``model`` in eval mode."""
    copied = copy.deepcopy(model).eval()
    calls: dict[str, list[tuple[tuple, dict]]] = {}
    handles = []
    for name, module in copied.named_modules():
        if name:
            def record(module, args, kwargs, name=name):
                calls.setdefault(name, []).append((args, dict(kwargs)))
            handles.append(module.register_forward_pre_hook(record, with_kwargs=True))
    try:
        with torch.no_grad():
            copied(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _wrapped(module: nn.Module, args: tuple, kwargs: dict) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """A module whose forward takes the tensors among ``args`` and ``kwargs`` (top level) as
    plain positional arguments and calls ``module`` with them and the other values as they
    were: fx cannot trace a forward with ``*args``/``**kwargs`` as the root."""
    slots: list[tuple[str | int, Tensor]] = [(i, a) for i, a in enumerate(args) if isinstance(a, Tensor)]
    slots += [(key, value) for key, value in kwargs.items() if isinstance(value, Tensor)]
    names = [f"input_{i}" for i in range(len(slots))]

    def rebuild(tensors: tuple) -> tuple[tuple, dict]:
        positional, keywords = list(args), dict(kwargs)
        for (slot, _), tensor in zip(slots, tensors):
            if isinstance(slot, int):
                positional[slot] = tensor
            else:
                keywords[slot] = tensor
        return tuple(positional), keywords

    namespace: dict[str, Any] = {}
    exec(  # noqa: S102 - a forward with exactly these parameters, for fx to trace
        f"def forward(self, {', '.join(names)}):\n"
        f"    args, kwargs = self.rebuild(({''.join(n + ', ' for n in names)}))\n"
        f"    return self.{_SCOPE}(*args, **kwargs)\n",
        namespace,
    )
    wrapper_class = type("Scope", (nn.Module,), {"forward": namespace["forward"]})
    wrapper = wrapper_class()
    setattr(wrapper, _SCOPE, module)
    wrapper.rebuild = rebuild
    return wrapper, tuple(tensor for _, tensor in slots)


def _global(prefix: str, local: str) -> str:
    """A scope-local module name (``scope.intermediate.dense`` in a wrapped scope) as the
    model's qualified name."""
    if not prefix:
        return local
    inner = local.removeprefix(_SCOPE).removeprefix(".")
    return f"{prefix}.{inner}" if inner else prefix


def _globalised_text(prefix: str, text: str) -> str:
    return text.replace(f"'{_SCOPE}.", f"'{prefix}.").replace(f"'{_SCOPE}'", f"'{prefix}'") if prefix else text


def _globalised(prefix: str, layer: PrunableLayer) -> PrunableLayer:
    if not prefix:
        return layer
    name: Callable[[str], str] = lambda local: _global(prefix, local)
    switch_input = layer.switch_input
    if switch_input is not None:
        switch_input = replace(switch_input, module=name(switch_input.module))
    return PrunableLayer(
        name(layer.name), layer.kind, layer.channels, name(layer.switch_at),
        tuple(Consumer(name(c.name), c.kind, c.features_per_channel, c.zero_preserved, c.offset, c.dim) for c in layer.consumers),
        tuple(name(m) for m in layer.members), tuple(name(m) for m in layer.switch_points),
        tuple(_globalised_text(prefix, text) for text in layer.coupled_through), switch_input, layer.block,
        tuple(name(m) for m in layer.reswitch_points),
    )

