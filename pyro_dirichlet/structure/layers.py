"""The data types of the dependency graph: prunable layers, their consumers, and the error.

A :class:`PrunableLayer` is one switch site (a layer's output channels, or a coupling group's);
its :class:`Consumer` entries say which later modules shrink with it, and its
:class:`SwitchInput` where the switch may multiply instead (see
:mod:`pyro_dirichlet.structure.placement`). Finding them is :mod:`pyro_dirichlet.structure.find`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

__all__ = [
    "Consumer",
    "COUPLING_POLICIES",
    "CouplingPolicy",
    "DEFAULT_COUPLING",
    "DEFAULT_ON_UNSUPPORTED",
    "PrunableLayer",
    "PrunableLayers",
    "SkippedLayer",
    "SwitchInput",
    "UNSUPPORTED_POLICIES",
    "UnsupportedPolicy",
    "UnsupportedStructureError",
]

CouplingPolicy = Literal["skip", "group"]

#: What automatic discovery does with channels coupled through residual adds, concatenations
#: and depthwise/grouped convolutions, unless told otherwise: ``"group"`` prunes each coupled
#: set as one site with one switch (as Torch-Pruning does); ``"skip"`` leaves it whole.
DEFAULT_COUPLING: CouplingPolicy = "group"

#: The coupling policies, in the order the CLI lists them.
COUPLING_POLICIES: tuple[str, ...] = ("group", "skip")

UnsupportedPolicy = Literal["raise", "skip"]

#: What automatic discovery does with layers whose channels the structure analysis cannot
#: follow, unless told otherwise: ``"raise"`` refuses the network, listing them all (a silent
#: skip would prune less than the user asked for); ``"skip"`` prunes the others.
DEFAULT_ON_UNSUPPORTED: UnsupportedPolicy = "raise"

#: The unsupported-layer policies, in the order the CLI lists them.
UNSUPPORTED_POLICIES: tuple[str, ...] = ("raise", "skip")


class UnsupportedStructureError(ValueError):
    """The model couples channels in a way this library cannot prune (yet).

    Raised for grouped (not depthwise) convolutions, shared modules, operations whose effect
    on channels is unknown, concatenations or adds along a non-channel dimension, and models
    that :mod:`torch.fx` cannot trace.

    Attributes:
        problems: when :func:`~pyro_dirichlet.structure.find_prunable_layers` found several
            layers it cannot follow, each one with its reason (as :class:`SkippedLayer`);
            empty for an error about one layer or about the whole model.
    """

    def __init__(self, message: str, problems: Sequence[SkippedLayer] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


@dataclass(frozen=True)
class SkippedLayer:
    """A Conv2d or Linear that :func:`~pyro_dirichlet.structure.find_prunable_layers` left out.

    Args:
        name: the layer's qualified module name.
        reason: why, as one sentence.
        unsupported: True when the analysis cannot follow the layer's channels (an operation
            it does not know, a grouped convolution...): the layer might be prunable once the
            library supports that structure. False when the layer is not prunable by design
            (the classifier, channels coupled through a residual add under ``coupled="skip"``,
            a layer nothing reads).
    """

    name: str
    reason: str
    unsupported: bool


class PrunableLayers(list):
    """What :func:`~pyro_dirichlet.structure.find_prunable_layers` returns: a list of
    :class:`PrunableLayer` in forward order, with the layers it left out in :attr:`skipped`.

    Example:
        >>> found = PrunableLayers([], skipped=[SkippedLayer("fc", "it is the classifier", False)])
        >>> found, [layer.name for layer in found.skipped]
        ([], ['fc'])
    """

    def __init__(self, layers: Sequence[PrunableLayer] = (), skipped: Sequence[SkippedLayer] = ()) -> None:
        super().__init__(layers)
        self.skipped: tuple[SkippedLayer, ...] = tuple(skipped)

    @property
    def unsupported(self) -> tuple[SkippedLayer, ...]:
        """The skipped layers the analysis could not follow (see :attr:`SkippedLayer.unsupported`)."""
        return tuple(layer for layer in self.skipped if layer.unsupported)


@dataclass(frozen=True)
class Consumer:
    """A module that reads a prunable layer's output channels and must shrink with it.

    Args:
        name: qualified module name, as in ``model.named_modules()``.
        kind: ``"conv_in"`` (a Conv2d's input channels), ``"linear_in"`` (a Linear's input
            features), ``"batchnorm"`` (a BatchNorm's features, sliced like an output) or
            ``"depthwise"`` (a depthwise Conv2d: filter ``c`` reads and writes channel ``c``,
            so its input channels, filters and bias are all sliced) or ``"grouped"`` (a
            grouped Conv2d with as many outputs as inputs per group: whole groups of input
            channels, with their filters and bias, are sliced; see ``PrunableLayer.block``)
            or ``"response_norm"`` (timm's GlobalResponseNorm: its per-channel weight and bias
            are sliced, and its weight and ``eps`` scaled by the share of channels removed, so
            the mean over the channels it divides by stays what it was)
            or ``"linear_out"`` (a Linear's output features, rows of its weight and bias,
            that go with the channels: an attention head's query and key rows go with its
            value rows; see :mod:`pyro_dirichlet.structure.hf_attention`)
            or ``"scale"`` (a parameter multiplying the channels one factor each, such as a
            ConvNeXt layer scale: ``name`` is the parameter's qualified name and ``dim`` its
            dimension holding the factors).
        features_per_channel: how many of the consumer's input features one channel of the
            layer owns: 1 normally; ``H*W`` when a conv's ``C×H×W`` output is flattened into a
            Linear, so that channel ``c`` owns features ``[c*H*W, (c+1)*H*W)``.
        zero_preserved: whether a channel zeroed at the switch still reaches this consumer as
            zero. It is False when something between the switch and the consumer maps 0 to a
            non-zero value (a Sigmoid, a BatchNorm after the switch); surgery then folds the
            constant the dropped channel leaves behind into the consumer's bias.
        offset: index of the consumer input feature that the layer's channel 0 starts at: 0
            normally; after ``torch.cat([a, b], dim=1)``, ``b``'s channels start at
            ``a``'s width (times the features per channel once flattened); after a channel
            zero-padding, at the number of channels padded in front.
        dim: for a ``"scale"`` consumer, the parameter's dimension that indexes channels.
        channels_per_feature: how many consecutive channels share one feature: 1 normally;
            an attention head's ``head_dim`` for a parameter with one entry per head (Swin's
            relative position bias), which goes when the head's channels go (whole heads).

    Example:
        >>> Consumer("fc1", "linear_in", features_per_channel=16).feature_indices([0, 2]).tolist()[:3]
        [0, 1, 2]
        >>> Consumer("conv3", "conv_in", offset=8).feature_indices([0, 2]).tolist()
        [8, 10]
    """

    name: str
    kind: Literal["conv_in", "linear_in", "linear_out", "batchnorm", "depthwise", "grouped", "response_norm", "scale"]
    features_per_channel: int = 1
    zero_preserved: bool = True
    offset: int = 0
    dim: int = 0
    channels_per_feature: int = 1

    def feature_indices(self, channels: Sequence[int] | Tensor) -> Tensor:
        """The consumer's input-feature indices that belong to the given layer channels.

        Args:
            channels: channel indices of the producing layer.

        Returns:
            A 1-D ``int64`` tensor, channel by channel, each channel's features in order.
        """
        channels = torch.as_tensor(channels, dtype=torch.long).reshape(-1, 1)
        if self.channels_per_feature > 1:  # whole blocks of channels share each feature
            return torch.unique(channels // self.channels_per_feature) + self.offset
        offsets = torch.arange(self.features_per_channel, dtype=torch.long, device=channels.device)
        return (channels * self.features_per_channel + offsets).reshape(-1) + self.offset


@dataclass(frozen=True)
class PrunableLayer:
    """One switch site: the output channels of a layer, or of a coupling group of layers.

    A coupling group is a set of Conv2d (or Linear) layers whose outputs are added together
    (the convolutions writing into one residual stream): channel ``c`` of every member is the
    same channel, so the group has one switch and is pruned as a whole. A single layer is the
    group of one member.

    Args:
        name: the site's name: the layer's qualified module name, or for a group the name of
            its first member in forward order.
        kind: ``"conv"`` or ``"linear"`` (all members are of this kind), or ``"attention"``:
            the value channels of an ``nn.MultiheadAttention`` named ``name`` (its
            ``embed_dim`` of them; see :mod:`pyro_dirichlet.structure.attention`), scaled,
            masked and removed inside the module, so with no consumers outside it; or
            ``"query_key"``: its query channels and the key channels paired with them, a site
            named ``<module>.query_key`` whose member and switch point are the module.
        channels: number of output channels (conv), output features (linear), value
            channels (attention) or query/key pairs (query_key).
        switch_at: ``switch_points[0]``.
        consumers: the modules whose inputs (or, for a BatchNorm or depthwise conv, features)
            shrink with the channels, in forward order. BatchNorms at switch points are
            listed too. The same module appears more than once when it reads the channels at
            several offsets.
        members: the qualified names of the layers whose output channels are removed, in
            forward order; ``(name,)`` for a single layer (the default).
        switch_points: for each member, the module whose output the switch multiplies: the
            member itself, or the BatchNorm that directly and solely follows it (the switch
            sits after the BatchNorm, before the non-linearity); ``(switch_at,)`` by default.
        coupled_through: for a group, descriptions of the operations that couple its members
            (e.g. ``"'add' (operator.add in module 'layer1.0')"``); empty for a single layer.
        switch_input: for a single layer, the later module whose input the switch may
            multiply instead of the ``switch_at`` output, because only operations that
            commute with a non-negative channel scale lie between (ReLU, pooling, flatten;
            see :mod:`pyro_dirichlet.structure.placement`); ``None`` where none does, and
            where the layer has reswitch points (the switch must multiply at them too).
        block: channels are kept and dropped in aligned blocks of this many (``[0, block)``,
            ``[block, 2 * block)``...): the group size of a grouped convolution that reads
            them, since a group can only go whole; 1 (any channel on its own) by default.
        reswitch_points: modules further on whose output the same switch multiplies again,
            because a dropped channel would leave them as a constant that a zero-padded
            convolution cannot absorb: a BatchNorm's ``BN(0)`` (a pre-activation block,
            RepVGG's identity branch), a depthwise conv's bias (StarNet); multiplying there
            makes the masked network the pruned one.
        offset: the members' channels are their output features ``[offset, offset + channels)``:
            0 normally; the value part of a fused query/key/value projection (GPT-2's
            ``c_attn``), whose other features are left alone by the switch and go with the
            heads as ``"linear_out"`` consumers of the same module.

    Example:
        >>> layers = find_prunable_layers(model, torch.zeros(1, 1, 28, 28))  # doctest: +SKIP
        >>> [(layer.name, layer.switch_at) for layer in layers]  # doctest: +SKIP
        [('conv1', 'conv1'), ('conv2', 'conv2'), ('fc1', 'fc1')]
    """

    name: str
    kind: Literal["conv", "linear", "attention", "query_key"]
    channels: int
    switch_at: str
    consumers: tuple[Consumer, ...]
    members: tuple[str, ...] = ()
    switch_points: tuple[str, ...] = ()
    coupled_through: tuple[str, ...] = ()
    switch_input: SwitchInput | None = None
    block: int = 1
    reswitch_points: tuple[str, ...] = ()
    offset: int = 0

    def __post_init__(self) -> None:
        if not self.members:
            object.__setattr__(self, "members", (self.name,))
        if not self.switch_points:
            object.__setattr__(self, "switch_points", (self.switch_at,))
        if len(self.members) != len(self.switch_points) or self.switch_points[0] != self.switch_at:
            raise ValueError(
                f"layer '{self.name}': members {self.members} and switch_points "
                f"{self.switch_points} must pair up, starting with switch_at '{self.switch_at}'"
            )

    @property
    def multiply_points(self) -> tuple[str, ...]:
        """Every module whose output the switch multiplies: the switch points, then the reswitch points."""
        return self.switch_points + self.reswitch_points

    @property
    def is_group(self) -> bool:
        """Whether the site couples several layers (a residual stream)."""
        return len(self.members) > 1

    @property
    def channel_dim(self) -> int:
        """The dimension of the ``switch_at`` output that indexes channels (1 or -1)."""
        # Linear acts on the last dimension; a BatchNorm1d switch only follows a 2-D Linear
        # output, where the last dimension is also dimension 1.
        return 1 if self.kind == "conv" else -1

    def broadcast_shape(self, ndim: int, width: int | None = None) -> tuple[int, ...]:
        """Shape to which a per-channel vector is reshaped to multiply an ``ndim``-D output.

        Args:
            ndim: number of dimensions of the ``switch_at`` module's output.
            width: the output's size along the channel dimension (:meth:`widened`'s); the
                channel count by default.

        Example:
            >>> PrunableLayer("c", "conv", 20, "c", ()).broadcast_shape(4)
            (1, 20, 1, 1)
        """
        if ndim < 2:
            raise ValueError(
                f"ndim must be at least 2 (a batch and a channel dimension), got {ndim} "
                f"for layer '{self.name}'"
            )
        shape = [1] * ndim
        shape[self.channel_dim] = self.channels if width is None else width
        return tuple(shape)

    def widened(self, factors: Tensor, width: int) -> Tensor:
        """Per-channel ``factors`` (``(..., channels)``) for all ``width`` output features of a
        member: ones outside ``[offset, offset + channels)``; ``factors`` itself when the
        channels are the whole output.

        Example:
            >>> PrunableLayer("qkv", "linear", 2, "qkv", (), offset=4).widened(torch.zeros(2), 6).tolist()
            [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
        """
        if self.offset == 0 and width == self.channels:
            return factors
        ones = factors.new_ones(*factors.shape[:-1], width)
        return torch.cat([ones[..., : self.offset], factors, ones[..., self.offset + self.channels:]], dim=-1)

    def scaled(self, output: Tensor, factors: Tensor) -> Tensor:
        """A member's (or BatchNorm's) ``output`` with channel ``c`` multiplied by ``factors[c]``."""
        width = output.shape[self.channel_dim]
        return output * self.widened(factors, width).view(self.broadcast_shape(output.dim(), width))



@dataclass(frozen=True)
class SwitchInput:
    """A module whose input a switch multiplies, in place of the switched layer's output.

    Attributes:
        module: qualified name of the module that reads the channels.
        channel_dim: the dimension of that module's input indexing the layer's channels
            (1 for an ``(N, C, H, W)`` input or a flattened ``(N, features)`` one; the last
            for a linear layer's ``(N, T, features)`` output).
        features_per_channel: consecutive features each channel became by flattening
            (``H * W`` after flattening a conv output; 1 otherwise): the switch value of
            channel ``c`` multiplies features ``c * k`` to ``(c + 1) * k - 1``.
        passes: the operations the multiply moved past, in forward order (for reports).
    """

    module: str
    channel_dim: int
    features_per_channel: int
    passes: tuple[str, ...]

    def scale(self, values: torch.Tensor, ndim: int) -> torch.Tensor:
        """``values`` (``(channels,)``, or ``(particles, channels)``) shaped to multiply an
        ``ndim``-D input of :attr:`module`, after the particle dimension if any."""
        if self.features_per_channel > 1:
            values = values.repeat_interleave(self.features_per_channel, dim=-1)
        shape = [1] * ndim
        shape[self.channel_dim] = values.shape[-1]
        return values.reshape(*values.shape[:-1], *shape)
