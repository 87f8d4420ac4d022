"""Attention as switch sites: the value channels, and the query/key channels, of an ``nn.MultiheadAttention``.

An attention's output, ``out_proj(concat_h softmax(Q_h K_h^T / sqrt(d)) V_h)``, is linear in each
value channel, so value channel ``j`` can be scaled (by the switch), zeroed (masked) or removed
(its rows of the packed input projection, with ``out_proj``'s input column ``j``) exactly. A
score ``sum_j q_j k_j / sqrt(d)`` is linear in each query channel, so query channel ``j`` can be
scaled or zeroed, and removed with key channel ``j`` (keeping the scale of the unpruned width
``d``), exactly too. Both are sites of the module, with nothing outside it involved: their
consumers are inside it. The value site is named after the module (``kind="attention"``), the
query/key site after it with :data:`QUERY_KEY` appended (``kind="query_key"``).

The module is a leaf of the traced graph; what is checked is the module (one packed
projection, no extra key/value token) and each call (no masks), since the replacement surgery
builds (:class:`~pyro_dirichlet.surgery.attention.PrunedMultiheadAttention`) computes attention
without masks.
"""

from __future__ import annotations

from torch import fx, nn

from pyro_dirichlet.structure._fx import argument
from pyro_dirichlet.structure.layers import PrunableLayer, UnsupportedStructureError

__all__ = ["ATTENTION_PARTS", "QUERY_KEY", "attention_problem", "attention_site"]

#: The attention site kinds, and which channels of the module each one is.
ATTENTION_PARTS = {"attention": "values", "query_key": "query_key"}

#: Appended to an attention's module name to name its query/key site.
QUERY_KEY = ".query_key"

# Positions in nn.MultiheadAttention.forward(query, key, value, key_padding_mask, need_weights,
# attn_mask, average_attn_weights, is_causal).
_MASKS = ((3, "key_padding_mask"), (5, "attn_mask"), (7, "is_causal"))


def attention_problem(module: nn.Module) -> str | None:
    """Why ``module``'s value channels cannot be pruned, or ``None`` if they can.

    Supported: a plain ``nn.MultiheadAttention`` with one packed input projection (queries,
    keys and values of ``embed_dim`` channels), without ``add_bias_kv`` or ``add_zero_attn``.
    """
    if type(module) is not nn.MultiheadAttention:
        return f"it is a {type(module).__name__}, not an nn.MultiheadAttention"
    if not module._qkv_same_embed_dim:
        return "its keys or values have their own width (kdim, vdim), in separate projections, which are not pruned"
    if module.bias_k is not None or module.add_zero_attn:
        return "it adds a learned or zero key/value token (add_bias_kv, add_zero_attn), which is not pruned"
    return None


def attention_site(name: str, module: nn.MultiheadAttention, calls: list[fx.Node], part: str = "values") -> PrunableLayer:
    """A switch site of ``module``: its value channels (``kind="attention"``, named ``name``)
    or its query/key channels (``kind="query_key"``, named ``name + QUERY_KEY``).

    Args:
        name: the module's qualified name.
        module: an ``nn.MultiheadAttention``.
        calls: its ``call_module`` nodes in the traced graph.
        part: ``"values"`` or ``"query_key"``.

    Raises:
        UnsupportedStructureError: the module or one of its calls is not supported (masks).
    """
    problem = attention_problem(module)
    if problem is None and not calls:
        problem = "it is never called in the model's forward"
    for node in calls:
        for position, keyword in _MASKS:
            if problem is None and argument(node, position, keyword, None) not in (None, False):
                problem = f"it is called with {keyword}, and only attention without masks is pruned"
    what = "value" if part == "values" else "query/key"
    if problem is not None:
        raise UnsupportedStructureError(f"cannot prune the {what} channels of attention '{name}': {problem}")
    # The switch multiplies the values (queries) inside the module (see
    # DirichletSwitches.switched); only the module itself reads them.
    if part == "values":
        return PrunableLayer(name, "attention", module.embed_dim, name, ())
    return PrunableLayer(name + QUERY_KEY, "query_key", module.embed_dim, name, (), members=(name,))
