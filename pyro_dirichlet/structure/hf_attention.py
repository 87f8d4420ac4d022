"""Attention blocks of library models (Hugging Face transformers) as switch sites: whole heads.

An attention block computes, head by head, ``softmax(Q_h K_h^T * scale) V_h`` from its
query, key and value projections, and mixes the heads back with an output projection. The
output is linear in each value channel, so the block's **value channels** are a switch site:
the switch multiplies the value projection's output, a masked value channel makes its
columns of the output projection read zeros, and removing it removes the value row and the
output column. Hugging Face's modules reshape the projections into heads of a fixed
``head_dim`` (``view(..., -1, head_dim)``): channels can only go as **whole heads**, so the
site's block is ``head_dim`` (:attr:`PrunableLayer.block`), and a head's query and key rows
go with its value rows (:class:`Consumer` kind ``"linear_out"``), as does its entry of a
per-head parameter (Swin's relative position bias, a ``"scale"`` consumer). Under grouped-query
attention one key/value head serves ``n`` query heads, so a block is a key/value *group*:
its key and value rows, and the ``n`` query heads' rows and output columns. A masked head's
value is zero, so its output is zero whatever its queries and keys: the masked network is
the pruned one, and a block's ``num_key_value_groups`` and ``head_dim`` stay what they were.

:data:`HEAD_LAYOUTS` names the projections of each attention class whose forward reshapes
with ``-1`` heads (so that it runs with fewer). GPT-2 makes queries, keys and values with one
``Conv1D`` (``c_attn``): its site is that projection's value third (:attr:`PrunableLayer.offset`),
the query and key thirds go with the heads, and :func:`resize_attention_blocks` sets the
``split_size`` its forward splits at after surgery and after a reload (and Whisper's
``num_heads``, which its cross-attention views keys and values with).

Other attention blocks (a class name ending in ``Attention`` with two or more projections as
children: T5's, whose position bias the first layer computes per head and every later layer
of the stack adds, so that heads would have to go together across layers) are still single
nodes of the graph; their heads are not pruned, and their projections are reported as such.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from torch import nn

from pyro_dirichlet.structure.foreign import layer_base, linear_features, qualified_class
from pyro_dirichlet.structure.layers import Consumer, PrunableLayer, UnsupportedStructureError

__all__ = ["HEAD_LAYOUTS", "HeadLayout", "head_site", "is_attention_block", "projections", "resize_attention_blocks"]


@dataclass(frozen=True)
class HeadLayout:
    """Where an attention class keeps its projections (paths relative to the block) and its head width."""

    query: str
    key: str
    value: str
    output: str
    head_dim: str
    #: parameters holding one entry per head, and the dimension that indexes the heads
    per_head: tuple[tuple[str, int], ...] = ()
    #: query, key and value are one projection (``query == key == value``), in that order
    fused: bool = False

    @property
    def paths(self) -> tuple[str, str, str, str]:
        return (self.query, self.key, self.value, self.output)


_PROJ = HeadLayout("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")
_BERT = HeadLayout("self.query", "self.key", "self.value", "output.dense", "self.attention_head_size")
_MODELS = "transformers.models"

#: Attention classes whose heads are pruned, by qualified class name.
HEAD_LAYOUTS: dict[str, HeadLayout] = {
    f"{_MODELS}.llama.modeling_llama.LlamaAttention": _PROJ,
    f"{_MODELS}.qwen2.modeling_qwen2.Qwen2Attention": _PROJ,
    f"{_MODELS}.mistral.modeling_mistral.MistralAttention": _PROJ,
    f"{_MODELS}.vit.modeling_vit.ViTAttention": _PROJ,
    f"{_MODELS}.swin.modeling_swin.SwinAttention": HeadLayout(
        "q_proj", "k_proj", "v_proj", "o_proj", "head_dim",
        per_head=(("relative_position_bias.relative_position_bias_table", 1),),
    ),
    f"{_MODELS}.whisper.modeling_whisper.WhisperAttention": HeadLayout("q_proj", "k_proj", "v_proj", "out_proj", "head_dim"),
    f"{_MODELS}.gpt2.modeling_gpt2.GPT2Attention": HeadLayout("c_attn", "c_attn", "c_attn", "c_proj", "head_dim", fused=True),
    f"{_MODELS}.bert.modeling_bert.BertAttention": _BERT,
    f"{_MODELS}.roberta.modeling_roberta.RobertaAttention": _BERT,
    f"{_MODELS}.distilbert.modeling_distilbert.DistilBertSelfAttention": HeadLayout(
        "q_lin", "k_lin", "v_lin", "out_lin", "attention_head_size"
    ),
}


def _layout(module: nn.Module) -> HeadLayout | None:
    return HEAD_LAYOUTS.get(qualified_class(type(module)).name)


def is_attention_block(module: nn.Module) -> bool:
    """Whether ``module`` is an attention block the graph keeps as one node."""
    if _layout(module) is not None:
        return True
    layers = sum(layer_base(child) is not None for child in module.children())
    return type(module).__name__.endswith("Attention") and layers >= 2


def projections(name: str, module: nn.Module) -> list[str]:
    """The qualified names of the Conv2d/Linear layers inside attention block ``name``."""
    return [f"{name}.{local}" for local, child in module.named_modules() if local and layer_base(child) is not None]


def head_site(name: str, module: nn.Module) -> PrunableLayer:
    """The value channels of attention block ``name``, pruned in whole heads (key/value groups).

    The site is named after the value projection (its only member and switch point); the
    query and key projections' rows and the output projection's columns are its consumers.

    Raises:
        UnsupportedStructureError: the block's class has no layout in :data:`HEAD_LAYOUTS`,
            or its projections are not plain Linear layers of consistent widths.
    """
    layout = _layout(module)
    if layout is None:
        raise UnsupportedStructureError(
            f"cannot prune the heads of attention '{name}': {type(module).__name__} is not among the "
            "attention classes whose heads are pruned (pyro_dirichlet.structure.hf_attention.HEAD_LAYOUTS)"
        )
    head_dim = functools.reduce(getattr, layout.head_dim.split("."), module)
    if layout.fused:
        return _fused_site(name, module, layout, head_dim)
    query, key, value, output = (module.get_submodule(path) for path in layout.paths)
    problem = None
    if not all(type(m) is nn.Linear for m in (query, key, value, output)):
        problem = "its projections are not all nn.Linear"
    elif not (key.out_features == value.out_features and query.out_features == output.in_features):
        problem = "its query/output and key/value widths do not match"
    elif value.out_features % head_dim or query.out_features % value.out_features:
        problem = f"its widths are not whole heads of {head_dim} channels in whole key/value groups"
    elif layout.per_head and query.out_features != value.out_features:
        problem = "it has per-head parameters and grouped keys and values"
    if problem is not None:
        raise UnsupportedStructureError(f"cannot prune the heads of attention '{name}': {problem}")
    queries_per_value = query.out_features // value.out_features  # query heads per key/value head
    query_name, key_name, value_name, output_name = (f"{name}.{path}" for path in layout.paths)
    return PrunableLayer(
        value_name,
        "linear",
        value.out_features,
        value_name,
        (
            Consumer(query_name, "linear_out", features_per_channel=queries_per_value),
            Consumer(key_name, "linear_out"),
            Consumer(output_name, "linear_in", features_per_channel=queries_per_value),
            *(Consumer(f"{name}.{path}", "scale", dim=dim, channels_per_feature=head_dim) for path, dim in layout.per_head),
        ),
        block=head_dim,
    )


def _fused_site(name: str, module: nn.Module, layout: HeadLayout, head_dim: int) -> PrunableLayer:
    """The value channels of a block whose one projection makes queries, keys and values (GPT-2's
    ``c_attn``): its last third, an ``offset`` site; the first two thirds go with the heads."""
    fused, output = module.get_submodule(layout.value), module.get_submodule(layout.output)
    problem = None
    if layer_base(fused) is not nn.Linear or layer_base(output) is not nn.Linear:
        problem = "its projections are not linear layers"
    elif getattr(module, "is_cross_attention", False):
        problem = "it is a cross-attention, whose queries come from a projection of their own"
    else:
        width = linear_features(fused)[1] // 3
        if linear_features(fused)[1] % 3 or width % head_dim or linear_features(output)[0] != width:
            problem = f"its widths are not three parts of whole heads of {head_dim} channels"
    if problem is not None:
        raise UnsupportedStructureError(f"cannot prune the heads of attention '{name}': {problem}")
    fused_name, output_name = f"{name}.{layout.value}", f"{name}.{layout.output}"
    return PrunableLayer(
        fused_name,
        "linear",
        width,
        fused_name,
        (
            Consumer(fused_name, "linear_out"),  # the queries
            Consumer(fused_name, "linear_out", offset=width),  # the keys
            Consumer(output_name, "linear_in"),
        ),
        block=head_dim,
        offset=2 * width,
    )


def _gpt2_resize(module: nn.Module) -> None:
    # forward splits c_attn's output at split_size: the width of each of its three parts
    module.split_size = linear_features(module.c_attn)[1] // 3
    module.num_heads = module.split_size // module.head_dim


def _heads_resize(module: nn.Module) -> None:
    # Whisper's cross-attention views its keys and values as num_heads heads
    module.num_heads = module.q_proj.out_features // module.head_dim


# Attributes of a block that must follow its projections' widths, by class: set after surgery
# and after a reload (pyro_dirichlet.io.pretrained).
_RESIZE = {
    f"{_MODELS}.gpt2.modeling_gpt2.GPT2Attention": _gpt2_resize,
    f"{_MODELS}.whisper.modeling_whisper.WhisperAttention": _heads_resize,
}


def resize_attention_blocks(model: nn.Module) -> None:
    """Set the attributes of ``model``'s attention blocks that follow their projections' widths."""
    for module in model.modules():
        resize = _RESIZE.get(qualified_class(type(module)).name)
        if resize is not None:
            resize(module)
