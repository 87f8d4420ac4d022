"""Multi-head attention whose heads keep fewer channels than ``nn.MultiheadAttention`` allows.

``nn.MultiheadAttention`` ties every head's width to ``embed_dim / num_heads``, so a network
whose attention lost channels needs another module: :class:`PrunedMultiheadAttention` computes
what ``nn.MultiheadAttention`` computes (without masks), with each head keeping its own number
of value channels and of query/key channels. The attention output
``out_proj(concat_h softmax(Q_h K_h^T / sqrt(d)) V_h)`` is linear in each value channel, so
removing value channel ``j`` (its row of the packed ``in_proj_weight`` and ``in_proj_bias``) with
``out_proj``'s input column ``j`` computes exactly what zeroing that channel computes. A score is
a sum over query/key channels, ``sum_j q_j k_j``, so removing query row ``j`` with key row ``j``
(keeping the scale ``1 / sqrt(d)`` of the original width ``d``) computes exactly what zeroing
query channel ``j`` computes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_dirichlet.structure.attention import attention_problem

__all__ = [
    "AttentionPart",
    "AttentionTapHook",
    "PrunedMultiheadAttention",
    "check_prunable_attention",
    "scale_attention_channels",
    "slice_attention",
]

#: Which channels of an attention: its values, or its queries and keys together.
AttentionPart = Literal["values", "query_key"]


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention, as ``nn.MultiheadAttention``, with widths of its own per head.

    The parameters have ``nn.MultiheadAttention``'s names (``in_proj_weight``, ``in_proj_bias``,
    ``out_proj.weight``, ``out_proj.bias``): the packed input projection holds the query rows of
    every head in turn (``query_widths[h]`` rows for head ``h``), the key rows (as many), then
    the value rows (``value_widths[h]``). Scores keep the scale ``1 / sqrt(head_dim)`` of the
    unpruned width. The queries pass :attr:`queries` and the values :attr:`values` (each an
    ``nn.Identity``), where they are one ``(batch, tokens, channels)`` tensor, so a forward hook
    there sees (and may scale) each channel, as it would a Linear's output.

    Args:
        embed_dim: width of the tokens read and written.
        num_heads: number of heads.
        value_widths: value channels of each head (``num_heads`` non-negative ints, not all 0).
        query_widths: query (and key) channels of each head; ``head_dim`` each by default.
        head_dim: the unpruned query/key width per head, which sets the scores' scale;
            ``embed_dim // num_heads`` by default.
        bias: whether the projections have biases.
        dropout: dropout on the attention weights in training mode.
        batch_first: inputs and outputs are ``(batch, tokens, embed_dim)``, else ``(tokens, batch, embed_dim)``.

    Example:
        >>> attention = PrunedMultiheadAttention(8, 2, value_widths=(3, 1), query_widths=(2, 0), batch_first=True)
        >>> x = torch.randn(5, 7, 8)
        >>> attention(x, x, x, need_weights=False)[0].shape, attention.in_proj_weight.shape
        (torch.Size([5, 7, 8]), torch.Size([8, 8]))
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        value_widths: Sequence[int],
        query_widths: Sequence[int] | None = None,
        *,
        head_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim if head_dim is not None else embed_dim // num_heads
        if query_widths is None:
            query_widths = (self.head_dim,) * num_heads
        values, queries = _widths(value_widths, num_heads, "value_widths"), _widths(query_widths, num_heads, "query_widths")
        if sum(values) == 0:
            raise ValueError(f"value_widths must keep at least one value channel, got {value_widths!r}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.value_widths, self.query_widths = values, queries
        self.dropout = dropout
        self.batch_first = batch_first
        rows = 2 * sum(queries) + sum(values)
        self.in_proj_weight = nn.Parameter(torch.empty(rows, embed_dim))
        self.register_parameter("in_proj_bias", nn.Parameter(torch.zeros(rows)) if bias else None)
        self.out_proj = nn.Linear(sum(values), embed_dim, bias=bias)
        self.queries = nn.Identity()
        self.values = nn.Identity()
        nn.init.xavier_uniform_(self.in_proj_weight)

    @classmethod
    def sharing(cls, attention: nn.MultiheadAttention) -> "PrunedMultiheadAttention":
        """A full-width module holding ``attention``'s own parameters (not copies): the same
        function, with the queries and values reachable at :attr:`queries` and :attr:`values`
        (where the fit's switches scale them)."""
        check_prunable_attention(attention)
        heads, width = attention.num_heads, attention.head_dim
        shared = cls.__new__(cls)
        nn.Module.__init__(shared)
        shared.embed_dim, shared.num_heads, shared.head_dim = attention.embed_dim, heads, width
        shared.value_widths = shared.query_widths = (width,) * heads
        shared.dropout, shared.batch_first = attention.dropout, attention.batch_first
        shared.in_proj_weight = attention.in_proj_weight
        shared.register_parameter("in_proj_bias", attention.in_proj_bias)
        shared.out_proj = attention.out_proj
        shared.queries, shared.values = nn.Identity(), nn.Identity()
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
        qk, vs = sum(self.query_widths), sum(self.value_widths)
        q_weight, k_weight, v_weight = self.in_proj_weight.split([qk, qk, vs])
        q_bias = k_bias = v_bias = None
        if self.in_proj_bias is not None:
            q_bias, k_bias, v_bias = self.in_proj_bias.split([qk, qk, vs])
        q = self.queries(F.linear(query, q_weight, q_bias))
        k = F.linear(key, k_weight, k_bias)
        v = self.values(F.linear(value, v_weight, v_bias))
        # Every head is computed as wide as the unpruned one: pruned channels are zero-padded
        # back (a zero query/key channel adds nothing to a score, a zero value channel gives a
        # zero output that is dropped after). So this runs the kernel nn.MultiheadAttention
        # runs, scaled_dot_product_attention, and FLOP counts agree with it.
        width = max(self.head_dim, *self.query_widths, *self.value_widths)
        q, k = _to_heads(q, self.query_widths, width), _to_heads(k, self.query_widths, width)
        values = _to_heads(v, self.value_widths, width)
        scale = 1.0 / math.sqrt(self.head_dim)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            # nn.MultiheadAttention computes the weights explicitly when it returns them.
            weights = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
            if dropout > 0:
                weights = F.dropout(weights, p=dropout)
            heads = weights @ values
        else:
            heads = F.scaled_dot_product_attention(q, k, values, dropout_p=dropout, scale=scale)
        output = self.out_proj(_from_heads(heads, self.value_widths))
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
            f"query_widths={self.query_widths}, value_widths={self.value_widths}, "
            f"batch_first={self.batch_first}"
        )


def _widths(widths: Sequence[int], heads: int, argument: str) -> tuple[int, ...]:
    values = tuple(int(width) for width in widths)
    if len(values) != heads or min(values) < 0:
        raise ValueError(f"{argument} must hold one non-negative width per head ({heads}), got {widths!r}")
    return values


def _slots(widths: tuple[int, ...], width: int, device: torch.device) -> Tensor:
    """Where each head's channels sit when every head is ``width`` wide."""
    return torch.cat([h * width + torch.arange(w, device=device) for h, w in enumerate(widths)])


def _to_heads(x: Tensor, widths: tuple[int, ...], width: int) -> Tensor:
    """``(batch, tokens, sum(widths))`` -> ``(batch, heads, tokens, width)``, zero-padded."""
    batch, tokens, heads = x.shape[0], x.shape[1], len(widths)
    if any(w != width for w in widths):
        slots = _slots(widths, width, x.device)
        x = x.new_zeros(batch, tokens, heads * width).index_copy(-1, slots, x)
    return x.reshape(batch, tokens, heads, width).transpose(1, 2)


def _from_heads(x: Tensor, widths: tuple[int, ...]) -> Tensor:
    """``(batch, heads, tokens, width)`` -> ``(batch, tokens, sum(widths))``, padding dropped."""
    batch, heads, tokens, width = x.shape
    x = x.transpose(1, 2).reshape(batch, tokens, heads * width)
    if any(w != width for w in widths):
        x = x.index_select(-1, _slots(widths, width, x.device))
    return x


class AttentionTapHook:
    """A forward hook on an ``nn.MultiheadAttention``'s queries or values, until :meth:`remove`.

    Queries and values exist only inside ``nn.MultiheadAttention``'s forward, so while a hook is
    on, the module's ``forward`` is :meth:`PrunedMultiheadAttention.sharing`'s (the same
    function, the same parameters), whose queries and values pass an ``nn.Identity`` each that
    carries the hooks: ``hook`` sees the ``(batch, tokens, channels)`` tensor and may return it
    scaled, as a hook on a Linear's output would. Overriding the instance's ``forward`` keeps
    the module tree, its names and its own hooks as they are; a hook may scale each example of
    the batch by its own factors (a fit's particles), which scaling the weights could not.
    Several hooks on one module share one override, removed with the last of them.

    Args:
        attention: an ``nn.MultiheadAttention`` (see :func:`check_prunable_attention`).
        hook: ``hook(module, inputs, tensor) -> tensor or None``, as ``register_forward_hook`` takes.
        part: ``"values"``, or ``"query_key"`` for the queries.

    Example:
        >>> attention = nn.MultiheadAttention(4, 2, batch_first=True).eval()
        >>> x = torch.randn(1, 3, 4)
        >>> handle = AttentionTapHook(attention, lambda module, inputs, values: values * 0)
        >>> bool(attention(x, x, x)[0].eq(attention.out_proj.bias).all())
        True
        >>> handle.remove()
    """

    def __init__(self, attention: nn.Module, hook: Callable[..., Any], part: AttentionPart = "values") -> None:
        forward = vars(attention).get("forward")
        if getattr(forward, "shared", None) is None:
            shared = PrunedMultiheadAttention.sharing(attention)

            def forward(*args, **kwargs):
                shared.train(attention.training)
                return shared(*args, **kwargs)

            forward.shared, forward.hooks = shared, 0
            attention.forward = forward
        forward.hooks += 1
        tap = forward.shared.values if part == "values" else forward.shared.queries
        self._handle = tap.register_forward_hook(hook)
        self._attention, self._forward = attention, forward

    def remove(self) -> None:
        """Remove the hook; the last one gives the module its own forward back."""
        if self._handle is None:
            return
        self._handle.remove()
        self._handle = None
        self._forward.hooks -= 1
        if self._forward.hooks == 0 and vars(self._attention).get("forward") is self._forward:
            del self._attention.forward


def check_prunable_attention(attention: nn.Module) -> None:
    """Raise a ValueError naming what stops ``attention``'s channels from being pruned
    (see :func:`pyro_dirichlet.structure.attention.attention_problem`)."""
    problem = attention_problem(attention)
    if problem is not None:
        raise ValueError(f"attention cannot be pruned: {problem}")


def slice_attention(
    attention: nn.MultiheadAttention, *, values: Tensor | None = None, query_key: Tensor | None = None
) -> PrunedMultiheadAttention:
    """A :class:`PrunedMultiheadAttention` keeping only the given channels of ``attention``.

    Channel ``j`` (``0 <= j < embed_dim``) belongs to head ``j // head_dim``; each head keeps
    the channels in its range, however many that is (heads may end up with different widths,
    or none). Value channels take their rows of the input projection and ``out_proj``'s input
    columns with them; query/key channel ``j`` is query row ``j`` and key row ``j``.

    Args:
        attention: see :func:`check_prunable_attention`; not modified.
        values: 1-D ``int64`` tensor of sorted value-channel indices to keep; None keeps all.
        query_key: the same for the query/key channels.

    Example:
        >>> attention = nn.MultiheadAttention(8, 2, batch_first=True)
        >>> pruned = slice_attention(attention, values=torch.tensor([0, 1, 5]), query_key=torch.tensor([7]))
        >>> pruned.value_widths, pruned.query_widths
        ((2, 1), (0, 1))
    """
    check_prunable_attention(attention)
    embed, heads, head_dim = attention.embed_dim, attention.num_heads, attention.head_dim
    values = torch.arange(embed) if values is None else values.to(torch.long).cpu()
    query_key = torch.arange(embed) if query_key is None else query_key.to(torch.long).cpu()
    rows = torch.cat([query_key, embed + query_key, 2 * embed + values])
    pruned = PrunedMultiheadAttention(
        embed, heads,
        torch.bincount(values // head_dim, minlength=heads).tolist(),
        torch.bincount(query_key // head_dim, minlength=heads).tolist(),
        head_dim=head_dim, bias=attention.in_proj_bias is not None,
        dropout=attention.dropout, batch_first=attention.batch_first,
    )
    pruned.in_proj_weight = _copied(attention.in_proj_weight, 0, rows)
    if attention.in_proj_bias is not None:
        pruned.in_proj_bias = _copied(attention.in_proj_bias, 0, rows)
    pruned.out_proj.weight = _copied(attention.out_proj.weight, 1, values)
    if attention.out_proj.bias is not None:
        pruned.out_proj.bias = _copied(attention.out_proj.bias, 0, torch.arange(embed))
    weight = attention.in_proj_weight
    pruned.to(device=weight.device, dtype=weight.dtype)
    pruned.train(attention.training)
    return pruned


def scale_attention_channels(attention: nn.MultiheadAttention, scales: Tensor, part: AttentionPart = "values") -> None:
    """Multiply channel ``c`` of ``attention``'s values (or queries) by ``scales[c]``, in place.

    Scales the value (or query) rows of the input projection, weight and bias: the values
    (queries) are a linear function of them, so this is scaling them. Scaling query ``c`` by
    ``a`` scales the ``q_c k_c`` term of every score by ``a``, as a query/key switch does.

    Example:
        >>> attention = nn.MultiheadAttention(4, 2)
        >>> scale_attention_channels(attention, torch.zeros(4))
        >>> bool(attention.in_proj_weight[8:].eq(0).all())
        True
    """
    check_prunable_attention(attention)
    embed = attention.embed_dim
    if not isinstance(scales, Tensor) or scales.shape != (embed,):
        shape = tuple(scales.shape) if isinstance(scales, Tensor) else type(scales).__name__
        raise ValueError(f"expected one scale per channel of attention ({embed}), got {shape}")
    rows = slice(2 * embed, 3 * embed) if part == "values" else slice(0, embed)
    with torch.no_grad():
        factors = scales.to(device=attention.in_proj_weight.device, dtype=attention.in_proj_weight.dtype)
        attention.in_proj_weight[rows].mul_(factors.view(-1, 1))
        if attention.in_proj_bias is not None:
            attention.in_proj_bias[rows].mul_(factors)


def _copied(parameter: Tensor, dim: int, index: Tensor) -> nn.Parameter:
    values = parameter.detach().index_select(dim, index.to(parameter.device)).clone()
    return nn.Parameter(values, requires_grad=parameter.requires_grad)
