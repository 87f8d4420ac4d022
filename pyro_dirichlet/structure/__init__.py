"""Which output channels of a network can be removed, and which other modules must shrink with them.

The model is traced with :func:`torch.fx.symbolic_trace` and run once on an example input to
record shapes; each Conv2d/Linear output is then followed through channel-wise operations to
the modules that read it. This is the dependency-graph part of pruning: it decides nothing
about *which* channels to drop (the policy) and slices nothing (that is
:mod:`pyro_dirichlet.surgery`).

Coupling. Channels that meet in a residual add (``a + b``, ``torch.add``, ``+=``) are the
same channels: the layers writing into one residual stream form a *coupling group*, which is
pruned as a whole or not at all. So are the two factors of a channel-wise product
(squeeze-and-excitation: ``x * sigmoid(fc2(...))``), whose gate layer loses the outputs of the
channels it gates; such gate groups are always returned (the policy below is about sums). A
concatenation along the channel dimension does not couple its inputs; it only shifts where
each input's channels sit in the consumer (``Consumer.offset``). A depthwise convolution
passes channels through (its filter ``c`` goes with channel ``c``); a grouped one with as many
outputs as inputs per group does too, a whole group at a time. A zero-padding of the channel
dimension (``F.pad``, option-A ResNet shortcuts) shifts channels; an add that mixes shifted
and unshifted channels ties them in a way a single switch cannot describe, so such channels
are never pruned.

Pinned channels. Some operations tie channels together for good: a LayerNorm over them
(removing a channel changes every other one's normalisation, so masking is not removing), a
concatenation along another dimension (a ViT class token), a channel shuffle (its order
depends on the width). The walk follows them and leaves such channels unpruned, like a
classifier's outputs; layers coupled to them are left unpruned whatever else they reach.

Unsupported structure. By default an operation the analysis cannot follow raises one
:class:`UnsupportedStructureError` listing every layer it stops;
``find_prunable_layers(..., on_unsupported="skip")`` prunes the others and lists the skipped
layers, with reasons, in the result's ``skipped``.

Policy, for automatic discovery (``find_prunable_layers(..., coupled=...)``):

* ``"group"`` (:data:`DEFAULT_COUPLING`): each coupling group is one :class:`PrunableLayer`
  named after its first member in forward order, whose switch multiplies the output of every
  member, so in a ResNet the stem, every conv writing into a residual stream and the
  shortcut convolutions are pruned together, stream by stream;
* ``"skip"``: layers whose channels are coupled through an add are left out, so in a ResNet
  only the inner convolutions of each block are found.

A name passed explicitly (``layers=[...]``, or a key of ``keep`` in
:func:`pyro_dirichlet.prune_channels`) that is a group's first member always means the group;
naming another member is an error that names the group.

The package, one idea a module: :mod:`.layers` (the data types), :mod:`.rules` (the op table:
what each operation does to channels), :mod:`.graph` (the walk and the coupling groups),
:mod:`.placement` (where a switch may multiply instead), :mod:`.attention` (an
``nn.MultiheadAttention``'s values and queries/keys as sites), :mod:`.find` (the public entry),
:mod:`._fx` (torch.fx plumbing they share; its :func:`recording_traces` and
``trace_listeners``, re-exported here, tell how often a network is traced).
"""

from pyro_dirichlet.structure._fx import recording_traces, trace_listeners
from pyro_dirichlet.structure.find import find_prunable_layers
from pyro_dirichlet.structure.layers import (
    COUPLING_POLICIES,
    DEFAULT_COUPLING,
    DEFAULT_ON_UNSUPPORTED,
    UNSUPPORTED_POLICIES,
    Consumer,
    CouplingPolicy,
    PrunableLayer,
    PrunableLayers,
    SkippedLayer,
    SwitchInput,
    UnsupportedPolicy,
    UnsupportedStructureError,
)

__all__ = [
    "COUPLING_POLICIES",
    "Consumer",
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
    "find_prunable_layers",
    "recording_traces",
    "trace_listeners",
]
