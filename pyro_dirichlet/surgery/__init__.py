"""Surgery: a physically smaller copy of a network, and the per-module slicing it is made of.

:mod:`.channels` cuts whole layers with everything their channels reach
(:func:`prune_channels`, :func:`mask_channels`, :func:`fold_scales`); :mod:`.slicing` cuts
one module at a time; :mod:`.attention` is the attention module that pruning leaves behind.
"""

from __future__ import annotations

from pyro_dirichlet.surgery.channels import fold_scales, mask_channels, prune_channels
from pyro_dirichlet.surgery import slicing
from pyro_dirichlet.surgery.attention import (
    PrunedMultiheadAttention,
    scale_attention_channels,
    slice_attention,
)
from pyro_dirichlet.surgery.slicing import (
    add_to_bias,
    scale_batchnorm,
    scale_output_channels,
    slice_batchnorm,
    slice_conv2d_in,
    slice_conv2d_out,
    slice_depthwise_conv2d,
    slice_grouped_conv2d,
    slice_linear_in,
    slice_linear_out,
    slice_parameter,
)

__all__ = [
    "prune_channels",
    "mask_channels",
    "fold_scales",
    "PrunedMultiheadAttention",
    "scale_attention_channels",
    "slice_attention",
    *slicing.__all__,
]
