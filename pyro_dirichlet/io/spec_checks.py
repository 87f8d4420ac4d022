"""What a pruned model's spec may say about its modules: the unpruned architecture's modules, only narrower.

Pruning changes widths (channels, features, a grouped convolution's number of groups) and
nothing else: a spec whose convolution has another stride, dilation, padding mode or bias
flag than the architecture builds describes another function, even with every tensor shape
right. :func:`check_narrowed` compares each module of a registered class's or a factory's
spec (as built from the spec, so defaults count) with the module the class builds there (a
bias may appear where pruning folded removed channels' constant outputs into the next layer); :func:`check_channel_chain` checks that the
modules of an ``nn.Sequential`` spec (which has no class to compare with) pass their
channels on consistently. Each refusal is one :class:`~pyro_dirichlet.io.spec_file.ModelFileError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pyro_dirichlet.io.spec_file import ModelFileError

__all__ = ["WIDTHS", "check_channel_chain", "check_narrowed", "check_widths"]

#: Constructor arguments that pruning narrows; every other argument stays what the architecture builds.
WIDTHS = frozenset({"in_channels", "out_channels", "in_features", "out_features", "num_features"})
# Modules an nn.Sequential's channels pass through unchanged (activations, pooling, dropout).
_KEEPS_CHANNELS = frozenset({
    "ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "ELU", "Hardtanh", "Hardswish", "Hardsigmoid", "Mish", "Softplus",
    "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "Dropout", "Dropout1d",
    "Dropout2d", "AlphaDropout", "Identity", "Sequential",
})


def check_widths(entry: dict[str, Any]) -> None:
    """The entry's widths are positive whole numbers (checked before the module is built: a zero-width layer is none)."""
    for key in sorted(WIDTHS & set(entry["args"])):
        value = entry["args"][key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelFileError(f"module '{entry['name']}' ({entry['type']}) has {key} {value!r} in the spec, "
                                 "not a positive whole number")


def check_narrowed(modules: Iterable[tuple[str, str, dict[str, Any]]],
                   built: Callable[[str], tuple[str, dict[str, Any]]], description: str) -> None:
    """Each module of the spec is the one the architecture builds there (same type and arguments), only narrower.

    Args:
        modules: ``(name, type name, constructor arguments as JSON)`` of each module the spec describes.
        built: ``name -> (type name, constructor arguments as JSON)`` of the unpruned architecture's module there.
        description: the architecture, for the sentence (``"LeNet5Caffe()"``).

    Raises:
        ModelFileError: another type, an argument other than a width changed, a width larger
            than built or not a positive integer, or a grouped convolution's group size changed.
    """
    for name, kind, args in modules:
        built_kind, built_args = built(name)
        where = f"module '{name}'"
        if kind != built_kind:
            raise ModelFileError(f"{where} is a {kind} in the spec, but {description} builds a {built_kind} there")
        for key in sorted(set(args) | set(built_args)):
            value, expected = args.get(key), built_args.get(key)
            if key in WIDTHS:
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= expected:
                    raise ModelFileError(f"{where} ({kind}) has {key} {value!r} in the spec, but {description} "
                                         f"builds it with {expected} and pruning only narrows it (1 to {expected})")
            elif key == "groups" and expected != 1:
                _check_groups(where, args, built_args)
            elif key == "bias" and kind in ("Conv2d", "Linear") and value is True and expected is False:
                continue  # a pruned channel's constant output is folded into the next layer's bias, made for it
            elif value != expected:
                raise ModelFileError(f"{where} ({kind}) has {key} {value!r} in the spec, but {description} builds "
                                     f"it with {expected!r}: pruning changes widths only")


def _check_groups(where: str, args: dict[str, Any], built: dict[str, Any]) -> None:
    """A grouped convolution loses whole groups: as many channels per group as built, fewer groups."""
    groups = args.get("groups")
    per_in, per_out = built["in_channels"] // built["groups"], built["out_channels"] // built["groups"]
    if (isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= built["groups"]
            or args.get("in_channels") != groups * per_in or args.get("out_channels") != groups * per_out):
        raise ModelFileError(f"{where} (Conv2d) has groups {groups!r} with in_channels {args.get('in_channels')!r} "
                             f"and out_channels {args.get('out_channels')!r} in the spec, but pruning keeps whole "
                             f"groups of {per_in} input and {per_out} output channels")


def check_channel_chain(modules: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
    """An ``nn.Sequential`` spec's modules, in the order the rebuilt network runs them, take the channels the one
    before gives.

    A Conv2d's ``in_channels`` and a BatchNorm's ``num_features`` equal the channels before
    them; a Linear after a Linear takes its ``out_features``. After a Flatten the features are
    not known without the input's size, so the next Linear is not compared.

    Args:
        modules: ``(name, type name, constructor arguments)`` of every module, in running order.

    Raises:
        ModelFileError: naming the module and the two counts.
    """
    channels, source = None, ""
    for name, kind, args in modules:
        key = {"Conv2d": "in_channels", "Linear": "in_features", "BatchNorm1d": "num_features",
               "BatchNorm2d": "num_features"}.get(kind)
        if key is not None and channels is not None and args.get(key) != channels:
            raise ModelFileError(f"module '{name}' ({kind}) has {key} {args.get(key)!r} in the spec, but '{source}' "
                                 f"before it gives {channels} channels")
        if kind == "Conv2d":
            channels, source = args.get("out_channels"), name
        elif kind == "Linear":
            channels, source = args.get("out_features"), name
        elif kind not in _KEEPS_CHANNELS and not kind.startswith("BatchNorm"):
            channels = None  # Flatten, or anything whose output width the spec does not say
