"""Low-level surgery: slice or scale one module's channels in place, knowing nothing of the graph.

Each function takes one module (a Conv2d, Linear or BatchNorm) and the channel indices to
keep, or one factor per channel; :mod:`pyro_dirichlet.surgery.channels` decides which modules
to cut with which indices.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "slice_conv2d_out",
    "slice_conv2d_in",
    "slice_linear_out",
    "slice_linear_in",
    "slice_batchnorm",
    "slice_response_norm",
    "slice_depthwise_conv2d",
    "slice_grouped_conv2d",
    "slice_parameter",
    "scale_output_channels",
    "scale_batchnorm",
    "add_to_bias",
]


def slice_conv2d_out(conv: nn.Conv2d, keep: Tensor) -> None:
    """Keep only output channels ``keep`` of ``conv`` (weight rows and bias), in place.

    Args:
        conv: a Conv2d with ``groups=1``.
        keep: 1-D ``int64`` tensor of output-channel indices.

    Example:
        >>> conv = nn.Conv2d(3, 8, 3)
        >>> slice_conv2d_out(conv, torch.tensor([0, 2]))
        >>> conv.weight.shape, conv.out_channels
        (torch.Size([2, 3, 3, 3]), 2)
    """
    _check_module(conv, nn.Conv2d, "conv")
    _check_ungrouped(conv)
    conv.weight = _sliced(conv.weight, 0, keep)
    if conv.bias is not None:
        conv.bias = _sliced(conv.bias, 0, keep)
    conv.out_channels = len(keep)


def slice_conv2d_in(conv: nn.Conv2d, keep: Tensor) -> None:
    """Keep only input channels ``keep`` of ``conv`` (weight columns), in place.

    Args:
        conv: a Conv2d with ``groups=1``.
        keep: 1-D ``int64`` tensor of input-channel indices.

    Example:
        >>> conv = nn.Conv2d(3, 8, 3)
        >>> slice_conv2d_in(conv, torch.tensor([1]))
        >>> conv.weight.shape, conv.in_channels
        (torch.Size([8, 1, 3, 3]), 1)
    """
    _check_module(conv, nn.Conv2d, "conv")
    _check_ungrouped(conv)
    conv.weight = _sliced(conv.weight, 1, keep)
    conv.in_channels = len(keep)


def slice_depthwise_conv2d(conv: nn.Conv2d, keep: Tensor) -> None:
    """Keep only channels ``keep`` of a depthwise ``conv`` (filter ``c`` reads channel ``c``), in place.

    Args:
        conv: a Conv2d with ``groups == in_channels == out_channels``.
        keep: 1-D ``int64`` tensor of channel indices.

    Example:
        >>> conv = nn.Conv2d(4, 4, 3, groups=4)
        >>> slice_depthwise_conv2d(conv, torch.tensor([0, 3]))
        >>> conv.weight.shape, conv.in_channels, conv.out_channels, conv.groups
        (torch.Size([2, 1, 3, 3]), 2, 2, 2)
    """
    _check_module(conv, nn.Conv2d, "conv")
    if not conv.groups == conv.in_channels == conv.out_channels:
        raise ValueError(
            f"conv is not depthwise: groups={conv.groups}, in_channels={conv.in_channels}, "
            f"out_channels={conv.out_channels}"
        )
    conv.weight = _sliced(conv.weight, 0, keep)
    if conv.bias is not None:
        conv.bias = _sliced(conv.bias, 0, keep)
    conv.in_channels = conv.out_channels = conv.groups = len(keep)


def slice_grouped_conv2d(conv: nn.Conv2d, keep: Tensor) -> None:
    """Keep only input channels ``keep`` of a grouped ``conv``, whole groups at a time, with
    the filters (output channels) and bias of the groups they belong to, in place.

    Args:
        conv: a Conv2d with ``groups > 1`` and as many output as input channels per group.
        keep: 1-D ``int64`` tensor of input-channel indices, a union of whole groups.

    Example:
        >>> conv = nn.Conv2d(6, 6, 3, groups=3)
        >>> slice_grouped_conv2d(conv, torch.tensor([0, 1, 4, 5]))
        >>> conv.weight.shape, conv.in_channels, conv.out_channels, conv.groups
        (torch.Size([4, 2, 3, 3]), 4, 4, 2)
    """
    _check_module(conv, nn.Conv2d, "conv")
    size = conv.in_channels // conv.groups
    if conv.groups == 1 or conv.out_channels // conv.groups != size:
        raise ValueError(
            f"conv must be grouped with as many outputs as inputs per group, got groups="
            f"{conv.groups}, in_channels={conv.in_channels}, out_channels={conv.out_channels}"
        )
    groups = torch.unique(keep // size)
    if len(keep) != len(groups) * size:
        raise ValueError(f"keep must hold whole groups of {size} input channels, got {keep.tolist()}")
    # With as many outputs as inputs per group, group k's filters are output channels
    # [k*size, (k+1)*size), which are the kept input indices themselves.
    rows = (groups.reshape(-1, 1) * size + torch.arange(size)).reshape(-1)
    conv.weight = _sliced(conv.weight, 0, rows)
    if conv.bias is not None:
        conv.bias = _sliced(conv.bias, 0, rows)
    conv.in_channels = conv.out_channels = len(rows)
    conv.groups = len(groups)


def slice_parameter(parameter: nn.Parameter, dim: int, keep: Tensor) -> nn.Parameter:
    """A new parameter holding only entries ``keep`` of ``parameter`` along ``dim`` (a
    per-channel factor such as a ConvNeXt layer scale); assign it where the old one was.

    Example:
        >>> gamma = nn.Parameter(torch.arange(4.0).reshape(4, 1, 1))
        >>> slice_parameter(gamma, 0, torch.tensor([1, 3])).flatten().tolist()
        [1.0, 3.0]
    """
    if not isinstance(parameter, Tensor):
        raise TypeError(f"parameter must be a Tensor, got {type(parameter).__name__}")
    return _sliced(parameter, dim, keep)


def slice_linear_out(linear: nn.Linear, keep: Tensor) -> None:
    """Keep only output features ``keep`` of ``linear`` (weight rows and bias), in place.

    Example:
        >>> linear = nn.Linear(4, 6)
        >>> slice_linear_out(linear, torch.tensor([0, 5]))
        >>> linear.weight.shape, linear.bias.shape, linear.out_features
        (torch.Size([2, 4]), torch.Size([2]), 2)
    """
    if is_transposed_linear(linear):
        linear.weight = _sliced(linear.weight, 1, keep)
        linear.bias = _sliced(linear.bias, 0, keep)
        linear.nf = len(keep)
        return
    _check_module(linear, nn.Linear, "linear")
    linear.weight = _sliced(linear.weight, 0, keep)
    if linear.bias is not None:
        linear.bias = _sliced(linear.bias, 0, keep)
    linear.out_features = len(keep)


def slice_linear_in(linear: nn.Linear, keep: Tensor) -> None:
    """Keep only input features ``keep`` of ``linear`` (weight columns), in place.

    Example:
        >>> linear = nn.Linear(4, 6)
        >>> slice_linear_in(linear, torch.tensor([0, 1, 3]))
        >>> linear.weight.shape, linear.in_features
        (torch.Size([6, 3]), 3)
    """
    if is_transposed_linear(linear):
        linear.weight = _sliced(linear.weight, 0, keep)
        linear.nx = len(keep)
        return
    _check_module(linear, nn.Linear, "linear")
    linear.weight = _sliced(linear.weight, 1, keep)
    linear.in_features = len(keep)


def slice_batchnorm(bn: nn.modules.batchnorm._BatchNorm, keep: Tensor) -> None:
    """Keep only features ``keep`` of a BatchNorm: affine weight/bias and running stats, in place.

    Example:
        >>> bn = nn.BatchNorm2d(4)
        >>> slice_batchnorm(bn, torch.tensor([1, 2]))
        >>> bn.num_features, bn.running_mean.shape
        (2, torch.Size([2]))
    """
    _check_module(bn, nn.modules.batchnorm._BatchNorm, "bn")
    # Newer torch allows an affine BatchNorm without bias, so each is checked on its own.
    if bn.weight is not None:
        bn.weight = _sliced(bn.weight, 0, keep)
    if bn.bias is not None:
        bn.bias = _sliced(bn.bias, 0, keep)
    if bn.running_mean is not None:
        # Assigning to a registered buffer's name replaces the buffer.
        bn.running_mean = bn.running_mean.index_select(0, keep.to(bn.running_mean.device))
        bn.running_var = bn.running_var.index_select(0, keep.to(bn.running_var.device))
    bn.num_features = len(keep)


def slice_response_norm(norm: nn.Module, keep: Tensor) -> None:
    """Keep only channels ``keep`` of timm's ``GlobalResponseNorm``, in place, computing what it did.

    It divides each channel's norm by the mean norm over all ``C`` channels; a removed channel
    (zero at the switch) added 0 to that mean's sum, so over the kept ``C'`` the mean is ``C/C'``
    times larger. Scaling ``weight`` and ``eps`` by ``C/C'`` gives every kept channel its output
    unchanged: ``w n / (S/C + eps) == (C/C') w n / (S/C' + (C/C') eps)``.

    Example:
        >>> from timm.layers import GlobalResponseNorm  # doctest: +SKIP
        >>> norm = GlobalResponseNorm(4)  # doctest: +SKIP
        >>> slice_response_norm(norm, torch.tensor([0, 1]))  # doctest: +SKIP
        >>> norm.weight.shape, norm.eps  # doctest: +SKIP
        (torch.Size([2]), 2e-06)
    """
    channels = norm.weight.numel()
    ratio = channels / len(keep)
    norm.weight = _sliced(norm.weight, 0, keep)
    norm.bias = _sliced(norm.bias, 0, keep)
    with torch.no_grad():
        norm.weight.mul_(ratio)
    norm.eps = norm.eps * ratio


def scale_output_channels(layer: nn.Conv2d | nn.Linear, scales: Tensor) -> None:
    """Multiply output channel ``c`` of a Conv2d or Linear by ``scales[c]``, in place.

    Scales the weight row and the bias of each channel, so the layer's output is scaled.

    Example:
        >>> linear = nn.Linear(2, 2)
        >>> before = linear.weight.detach().clone()
        >>> scale_output_channels(linear, torch.tensor([2.0, 1.0]))
        >>> torch.equal(linear.weight[0], 2 * before[0])
        True
    """
    transposed = is_transposed_linear(layer)
    if not transposed and not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"layer must be a Conv2d or Linear, got {type(layer).__name__}")
    _check_scales(scales, layer.weight.shape[1 if transposed else 0], "layer")
    with torch.no_grad():
        factors = scales.to(device=layer.weight.device, dtype=layer.weight.dtype)
        layer.weight.mul_(factors if transposed else factors.view(-1, *[1] * (layer.weight.dim() - 1)))
        if layer.bias is not None:
            layer.bias.mul_(factors)


def scale_batchnorm(bn: nn.modules.batchnorm._BatchNorm, scales: Tensor) -> None:
    """Multiply feature ``c`` of an affine BatchNorm's output by ``scales[c]``, in place.

    BatchNorm computes ``(x - mean) / std * weight + bias``: scaling weight and bias scales the
    output, in training and eval mode alike.

    Example:
        >>> bn = nn.BatchNorm1d(2)
        >>> scale_batchnorm(bn, torch.tensor([3.0, 1.0]))
        >>> bn.weight.tolist()
        [3.0, 1.0]
    """
    _check_module(bn, nn.modules.batchnorm._BatchNorm, "bn")
    if not bn.affine:
        raise ValueError("bn has no affine weight and bias (affine=False), so it cannot be scaled")
    _check_scales(scales, bn.num_features, "bn")
    with torch.no_grad():
        factors = scales.to(device=bn.weight.device, dtype=bn.weight.dtype)
        bn.weight.mul_(factors)
        if bn.bias is not None:
            bn.bias.mul_(factors)


def add_to_bias(layer: nn.Conv2d | nn.Linear, delta: Tensor) -> None:
    """Add ``delta`` (one value per output channel) to a layer's bias, creating it if absent.

    Example:
        >>> linear = nn.Linear(2, 3, bias=False)
        >>> add_to_bias(linear, torch.ones(3))
        >>> linear.bias.tolist()
        [1.0, 1.0, 1.0]
    """
    transposed = is_transposed_linear(layer)
    if not transposed and not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"layer must be a Conv2d or Linear, got {type(layer).__name__}")
    _check_scales(delta, layer.weight.shape[1 if transposed else 0], "layer")
    delta = delta.detach().to(device=layer.weight.device, dtype=layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(delta.clone(), requires_grad=layer.weight.requires_grad)
    else:
        with torch.no_grad():
            layer.bias.add_(delta)


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is Hugging Face's ``Conv1D`` (GPT-2): a Linear whose weight is stored
    as (in, out), with its widths in ``nx`` and ``nf``."""
    return type(module).__qualname__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def _sliced(parameter: nn.Parameter, dim: int, keep: Tensor) -> nn.Parameter:
    values = parameter.detach().index_select(dim, keep.to(parameter.device))
    return nn.Parameter(values, requires_grad=parameter.requires_grad)


def _check_module(module: nn.Module, expected: type, argument: str) -> None:
    if not isinstance(module, expected):
        raise TypeError(f"{argument} must be a {expected.__name__}, got {type(module).__name__}")


def _check_ungrouped(conv: nn.Conv2d) -> None:
    if conv.groups != 1:
        raise ValueError(
            f"conv has groups={conv.groups}; slicing a grouped convolution is not supported yet"
        )


def _check_scales(values: Tensor, length: int, argument: str) -> None:
    if not isinstance(values, Tensor) or values.shape != (length,):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"expected one value per output channel of {argument} ({length}), got {shape}")
