"""Multi-head attention whose heads keep fewer value channels than ``nn.MultiheadAttention`` allows.

``nn.MultiheadAttention`` ties every head's value width to ``embed_dim / num_heads``, so a
network whose attention lost value channels needs another module: :class:`PrunedMultiheadAttention`
computes what ``nn.MultiheadAttention`` computes (without masks), with each head keeping its own
number of value channels. The attention output ``out_proj(concat_h softmax(Q_h K_h^T / sqrt(d)) V_h)``
is linear in each value channel, so removing value channel ``j`` (its row of the packed
``in_proj_weight`` and ``in_proj_bias``) with ``out_proj``'s input column ``j`` computes exactly
what zeroing that channel computes.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_dirichlet.structure.attention import attention_problem

__all__ = [
    "AttentionValuesHook",
    "PrunedMultiheadAttention",
    "check_prunable_attention",
    "scale_attention_values",
    "slice_attention_values",
]


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention, as ``nn.MultiheadAttention``, with a value width of its own per head.

    The parameters have ``nn.MultiheadAttention``'s names (``in_proj_weight``, ``in_proj_bias``,
    ``out_proj.weight``, ``out_proj.bias``): the packed input projection holds the query rows,
    the key rows, then the value rows of every head in turn (``value_widths[h]`` rows for head
    ``h``). Queries and keys keep ``head_dim`` channels per head, and scores keep the scale
    ``1 / sqrt(head_dim)``. The values pass :attr:`values` (an ``nn.Identity``), where they are
    one ``(batch, tokens, channels)`` tensor, so a forward hook there sees (and may scale) each
    value channel, as it would a Linear's output.

    Args:
        embed_dim: width of the tokens read and written.
        num_heads: number of heads.
        value_widths: value channels of each head (``num_heads`` non-negative ints, not all 0).
        head_dim: query and key channels per head; ``embed_dim // num_heads`` by default.
        bias: whether the projections have biases.
        dropout: dropout on the attention weights in training mode.
        batch_first: inputs and outputs are ``(batch, tokens, embed_dim)``, else ``(tokens, batch, embed_dim)``.

    Example:
        >>> attention = PrunedMultiheadAttention(8, 2, value_widths=(3, 1), batch_first=True)
        >>> x = torch.randn(5, 7, 8)
        >>> attention(x, x, x, need_weights=False)[0].shape, attention.out_proj.in_features
        (torch.Size([5, 7, 8]), 4)
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        value_widths: Sequence[int],
        *,
        head_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        widths = tuple(int(width) for width in value_widths)
        if len(widths) != num_heads or min(widths) < 0 or sum(widths) == 0:
            raise ValueError(
                f"value_widths must hold one non-negative width per head ({num_heads}), not all "
                f"zero, got {value_widths!r}"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim if head_dim is not None else embed_dim // num_heads
        self.value_widths = widths
        self.dropout = dropout
        self.batch_first = batch_first
        rows = 2 * num_heads * self.head_dim + sum(widths)
        self.in_proj_weight = nn.Parameter(torch.empty(rows, embed_dim))
        self.register_parameter("in_proj_bias", nn.Parameter(torch.zeros(rows)) if bias else None)
        self.out_proj = nn.Linear(sum(widths), embed_dim, bias=bias)
        self.values = nn.Identity()
        nn.init.xavier_uniform_(self.in_proj_weight)

    @classmethod
    def sharing(cls, attention: nn.MultiheadAttention) -> "PrunedMultiheadAttention":
        """A full-width module holding ``attention``'s own parameters (not copies): the same
        function, with the values reachable at :attr:`values` (where the fit's switch scales them)."""
        check_prunable_attention(attention)
        heads = attention.num_heads
        shared = cls.__new__(cls)
        nn.Module.__init__(shared)
        shared.embed_dim, shared.num_heads, shared.head_dim = attention.embed_dim, heads, attention.head_dim
        shared.value_widths = (attention.head_dim,) * heads
        shared.dropout, shared.batch_first = attention.dropout, attention.batch_first
        shared.in_proj_weight = attention.in_proj_weight
        shared.register_parameter("in_proj_bias", attention.in_proj_bias)
        shared.out_proj = attention.out_proj
        shared.values = nn.Identity()
        shared.train(attention.training)
        return shared

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``nn.MultiheadAttention.forward`` without masks: ``(output, weights or None)``."""
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError(
                "PrunedMultiheadAttention does not take key_padding_mask, attn_mask or "
                "is_causal; only attention without masks is pruned"
            )
        unbatched = query.dim() == 2
        # Computed batch first: an unbatched input becomes a batch of one.
        transposed = not self.batch_first and not unbatched
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif transposed:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        qk = self.num_heads * self.head_dim
        weight, bias = self.in_proj_weight, self.in_proj_bias
        q_bias, k_bias, v_bias = (None, None, None) if bias is None else bias.split([qk, qk, bias.shape[0] - 2 * qk])
        q_weight, k_weight, v_weight = weight.split([qk, qk, weight.shape[0] - 2 * qk])
        q = F.linear(query, q_weight, q_bias)
        k = F.linear(key, k_weight, k_bias)
        v = self.values(F.linear(value, v_weight, v_bias))
        batch, tokens, sources = q.shape[0], q.shape[1], k.shape[1]
        q = q.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(batch, sources, self.num_heads, self.head_dim).transpose(1, 2)
        scale = 1.0 / math.sqrt(self.head_dim)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            # nn.MultiheadAttention computes the weights explicitly when it returns them.
            weights = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
            if dropout > 0:
                weights = F.dropout(weights, p=dropout)
            parts = v.split(self.value_widths, dim=-1)  # each head reads its own value channels
            output = torch.cat([weights[:, h] @ part for h, part in enumerate(parts)], dim=-1)
        else:
            # Without weights it calls scaled_dot_product_attention with heads as wide as the
            # queries, as here: the values are zero-padded to that width, and the padding
            # dropped after. So both run the same kernel, and count the same FLOPs.
            width = max(self.head_dim, *self.value_widths)
            slots = torch.cat(
                [h * width + torch.arange(w, device=v.device) for h, w in enumerate(self.value_widths)]
            )
            if len(slots) != self.num_heads * width:
                v = v.new_zeros(batch, sources, self.num_heads * width).index_copy(-1, slots, v)
            values = v.reshape(batch, sources, self.num_heads, width).transpose(1, 2)
            heads = F.scaled_dot_product_attention(q, k, values, dropout_p=dropout, scale=scale)
            output = heads.transpose(1, 2).reshape(batch, tokens, -1)
            if len(slots) != self.num_heads * width:
                output = output.index_select(-1, slots)
        output = self.out_proj(output)
        if transposed:
            output = output.transpose(0, 1)
        if unbatched:
            output = output.squeeze(0)
        if weights is None:
            return output, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return output, weights.squeeze(0) if unbatched else weights

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"value_widths={self.value_widths}, batch_first={self.batch_first}"
        )


class AttentionValuesHook:
    """A forward hook on an ``nn.MultiheadAttention``'s values, until :meth:`remove`.

    The values exist only inside ``nn.MultiheadAttention``'s forward, so while the hook is on,
    the module's ``forward`` is :meth:`PrunedMultiheadAttention.sharing`'s (the same function,
    the same parameters), whose values pass an ``nn.Identity`` that carries ``hook``: it sees
    the ``(batch, tokens, channels)`` values and may return them scaled, as a hook on a
    Linear's output would. Overriding the instance's ``forward`` keeps the module tree, its
    names and its own hooks as they are; the hook may scale each example of the batch by its
    own factors (a fit's particles), which scaling the weights could not.

    Args:
        attention: an ``nn.MultiheadAttention`` (see :func:`check_prunable_attention`).
        hook: ``hook(module, inputs, values) -> values or None``, as ``register_forward_hook`` takes.

    Example:
        >>> attention = nn.MultiheadAttention(4, 2, batch_first=True).eval()
        >>> x = torch.randn(1, 3, 4)
        >>> handle = AttentionValuesHook(attention, lambda module, inputs, values: values * 0)
        >>> bool(attention(x, x, x)[0].eq(attention.out_proj.bias).all())
        True
        >>> handle.remove()
    """

    def __init__(self, attention: nn.Module, hook) -> None:
        shared = PrunedMultiheadAttention.sharing(attention)
        shared.values.register_forward_hook(hook)

        def forward(*args, **kwargs):
            shared.train(attention.training)
            return shared(*args, **kwargs)

        attention.forward = forward
        self.attention = attention

    def remove(self) -> None:
        """Give the module its own forward back."""
        if "forward" in vars(self.attention):
            del self.attention.forward


def check_prunable_attention(attention: nn.Module) -> None:
    """Raise a ValueError naming what stops ``attention``'s value channels from being pruned
    (see :func:`pyro_dirichlet.structure.attention.attention_problem`)."""
    problem = attention_problem(attention)
    if problem is not None:
        raise ValueError(f"attention cannot be pruned: {problem}")


def slice_attention_values(attention: nn.MultiheadAttention, keep: Tensor) -> PrunedMultiheadAttention:
    """A :class:`PrunedMultiheadAttention` that keeps only value channels ``keep`` of ``attention``.

    Value channel ``j`` (``0 <= j < embed_dim``) belongs to head ``j // head_dim``; each head keeps
    the channels of ``keep`` in its range, however many that is (heads may end up with different
    widths, or none). The value rows of the input projection and ``out_proj``'s input columns
    are sliced; the rest is copied.

    Args:
        attention: see :func:`check_prunable_attention`; not modified.
        keep: 1-D ``int64`` tensor of sorted value-channel indices.

    Example:
        >>> attention = nn.MultiheadAttention(8, 2, batch_first=True)
        >>> slice_attention_values(attention, torch.tensor([0, 1, 5])).value_widths
        (2, 1)
    """
    check_prunable_attention(attention)
    embed, heads, head_dim = attention.embed_dim, attention.num_heads, attention.head_dim
    keep = keep.to(torch.long).cpu()
    widths = torch.bincount(keep // head_dim, minlength=heads).tolist()
    rows = torch.cat([torch.arange(2 * embed), 2 * embed + keep])
    pruned = PrunedMultiheadAttention(
        embed, heads, widths, head_dim=head_dim, bias=attention.in_proj_bias is not None,
        dropout=attention.dropout, batch_first=attention.batch_first,
    )
    weight = attention.in_proj_weight
    pruned.in_proj_weight = _copied(weight, 0, rows)
    if attention.in_proj_bias is not None:
        pruned.in_proj_bias = _copied(attention.in_proj_bias, 0, rows)
    pruned.out_proj.weight = _copied(attention.out_proj.weight, 1, keep)
    if attention.out_proj.bias is not None:
        pruned.out_proj.bias = nn.Parameter(
            attention.out_proj.bias.detach().clone(), requires_grad=attention.out_proj.bias.requires_grad
        )
    pruned.to(device=weight.device, dtype=weight.dtype)
    pruned.train(attention.training)
    return pruned


def scale_attention_values(attention: nn.MultiheadAttention, scales: Tensor) -> None:
    """Multiply value channel ``c`` of ``attention`` by ``scales[c]``, in place.

    Scales the value rows of the input projection (weight and bias): the values are a linear
    function of them, so this is scaling the values themselves.

    Example:
        >>> attention = nn.MultiheadAttention(4, 2)
        >>> scale_attention_values(attention, torch.zeros(4))
        >>> bool(attention.in_proj_weight[8:].eq(0).all())
        True
    """
    check_prunable_attention(attention)
    embed = attention.embed_dim
    if not isinstance(scales, Tensor) or scales.shape != (embed,):
        shape = tuple(scales.shape) if isinstance(scales, Tensor) else type(scales).__name__
        raise ValueError(f"expected one scale per value channel of attention ({embed}), got {shape}")
    with torch.no_grad():
        factors = scales.to(device=attention.in_proj_weight.device, dtype=attention.in_proj_weight.dtype)
        attention.in_proj_weight[2 * embed:].mul_(factors.view(-1, 1))
        if attention.in_proj_bias is not None:
            attention.in_proj_bias[2 * embed:].mul_(factors)


def _copied(parameter: Tensor, dim: int, index: Tensor) -> nn.Parameter:
    values = parameter.detach().index_select(dim, index.to(parameter.device)).clone()
    return nn.Parameter(values, requires_grad=parameter.requires_grad)
