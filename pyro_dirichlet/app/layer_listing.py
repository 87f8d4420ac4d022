"""``pyro-dirichlet layers``: a network's prunable layers and coupling groups, with widths and FLOPs shares, before any fit.

The names it prints are those ``--layers`` and ``--keep`` take. Each row says whether the
default ``--coupled skip`` prunes the layer or only ``--coupled group`` does (channels tied
by a residual add), and which Conv2d/Linear layers stay whole and why. The analysis is
:func:`pyro_dirichlet.structure.find_prunable_layers`; the FLOPs are
:func:`pyro_dirichlet.measure.layer_costs`'.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI builds this subcommand's parser for --help without importing torch
    import torch
    from torch import nn

__all__ = ["LayerRow", "add_layers_command", "list_layers", "format_layers", "layers_command"]

#: Input shape of one image of each built-in data set, for a registered model.
_DATASET_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@dataclass(frozen=True)
class LayerRow:
    """One switch site of :func:`list_layers`.

    Attributes:
        name: the name ``--layers`` and ``--keep`` take (a group's first member).
        channels: its output channels (or features).
        members: the layers pruned with it (a coupling group has several).
        flops_share: the share of the network's FLOPs per image spent in its members.
        needs: ``None`` when the default ``--coupled skip`` prunes it, ``"--coupled group"`` otherwise.
    """

    name: str
    channels: int
    members: tuple[str, ...]
    flops_share: float
    needs: str | None


def list_layers(network: nn.Module, example: torch.Tensor) -> tuple[list[LayerRow], list[tuple[str, str]], int]:
    """The switch sites of ``network`` (coupling groups included), the layers left whole with why, and its FLOPs per image.

    Example:
        >>> rows, whole, flops = list_layers(torchvision.models.resnet18(), torch.zeros(1, 3, 32, 32))  # doctest: +SKIP
    """
    from pyro_dirichlet.measure import count_flops, layer_costs
    from pyro_dirichlet.structure import find_prunable_layers

    example = example[:1]
    network = network.eval()
    grouped = find_prunable_layers(network, example, coupled="group", on_unsupported="skip")
    by_default = {layer.name for layer in find_prunable_layers(network, example, coupled="skip", on_unsupported="skip")}
    members = [name for site in grouped for name in (site.members or (site.name,)) if site.kind in ("conv", "linear")]
    costs = layer_costs(network, members, example)
    total = max(1, count_flops(network, example))
    rows = []
    for site in grouped:
        names = site.members or (site.name,)
        flops = sum(costs[name]["flops"] for name in names if name in costs)
        rows.append(LayerRow(site.name, site.channels, tuple(names), flops / total,
                             None if site.name in by_default else "--coupled group"))
    # Reasons speak of the Python argument; a command-line user types the flag.
    in_groups = {name for row in rows for name in row.members}
    whole = [(skipped.name, skipped.reason.replace("coupled='group'", "--coupled group"))
             for skipped in grouped.skipped if skipped.name not in in_groups]
    return rows, whole, total


def format_layers(rows: list[LayerRow], whole: list[tuple[str, str]], flops: int, *, title: str) -> str:
    """The listing as text: one line per switch site, then the layers left whole."""
    width = max([len("layer"), *(len(row.name) for row in rows)])
    lines = [f"{title}: {flops:,} FLOPs per image", "",
             f"{'layer':<{width}}  {'channels':>8}  {'FLOPs':>6}  {'pruned with':<16}  members"]
    for row in rows:
        together = ", ".join(row.members) if len(row.members) > 1 else "-"
        lines.append(f"{row.name:<{width}}  {row.channels:>8}  {row.flops_share:>6.1%}  "
                     f"{row.needs or 'the default':<16}  {together}")
    if whole:
        lines += ["", "left whole:"] + [f"  {', '.join(names)}: {reason}" for reason, names in _by_reason(whole).items()]
    grouped = [row.name for row in rows if row.needs]
    if grouped:
        lines += ["", f"{len(grouped)} coupling group(s) ({', '.join(grouped)}) are pruned only with --coupled group; "
                      "--layers and --keep take the names above."]
    return "\n".join(lines)


def _by_reason(whole: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Layers grouped by why they stay whole; a coupling's long list of partners gives way to its conclusion."""
    grouped: dict[str, list[str]] = {}
    for name, reason in whole:
        if "coupled" in reason and "; " in reason:
            reason = "coupled through residual adds; " + reason.rsplit("; ", 1)[-1]
        grouped.setdefault(reason, []).append(name)
    return grouped


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"--input-shape expects C,H,W (three positive integers), got {text!r}.")
    return shape


_input_shape.__name__ = "C,H,W"


def add_layers_command(commands: Any, model_type: Any, model_arg_type: Any, path_type: Any) -> argparse.ArgumentParser:
    """Add ``layers`` to the ``pyro-dirichlet`` subcommands (the types are the CLI's own for ``--model`` and paths)."""
    parser = commands.add_parser(
        "layers", help="list a network's prunable layers and coupling groups (no run directory)",
        description="List the layers --layers and --keep can name, each coupling group with its members, their "
                    "widths and shares of the FLOPs, whether the default --coupled skip prunes them, and the "
                    "layers left whole with the reason. Reads no data and writes nothing.")
    parser.add_argument("--model", type=model_type, required=True, metavar="NAME|MODULE:FACTORY",
                        help="a registered model or your own factory as module:callable (MODULE.py in the current "
                             "folder is found)")
    parser.add_argument("--model-arg", dest="model_args", type=model_arg_type, action="append", metavar="KEY=VALUE",
                        help="keyword argument of the --model factory, repeatable")
    parser.add_argument("--weights", type=path_type("--weights"), metavar="FILE",
                        help="trained weights, checked against the network (the listing does not depend on them)")
    parser.add_argument("--weights-key", metavar="KEY", help="the entry of a --weights checkpoint dict holding the state dict")
    parser.add_argument("--input-shape", type=_input_shape, metavar="C,H,W",
                        help="one input image's shape, e.g. 3,32,32 (default: a registered model's data set's; "
                             "required for your own factory)")
    return parser


def layers_command(args: argparse.Namespace) -> str:
    """Build the network ``args`` name, load its weights if given, and return the listing.

    Raises:
        ValueError: a factory without ``--input-shape``, a factory or weights that fail;
            one sentence each (the CLI prints it and exits with status 2).
    """
    import torch

    from pyro_dirichlet.io.factories import ModelFactory, is_factory_path
    from pyro_dirichlet.baselines import get_model_entry
    from pyro_dirichlet.io.weights import load_weights

    model_args = dict(getattr(args, "model_args", None) or ())
    shape = getattr(args, "input_shape", None)
    if is_factory_path(args.model):
        if shape is None:
            raise ValueError(f"--model {args.model} needs --input-shape C,H,W (e.g. 3,32,32): the FLOPs depend on the "
                             "image size.")
        network = ModelFactory(args.model, model_args).build()
    else:
        if model_args:
            raise ValueError(f"--model-arg is for a model factory (--model package.module:callable), not the "
                             f"registered model {args.model!r}.")
        entry = get_model_entry(args.model)
        network, shape = entry.build(), shape or _DATASET_SHAPES[entry.dataset]
    if getattr(args, "weights", None) is not None:
        load_weights(network, args.weights, key=getattr(args, "weights_key", None))
    elif getattr(args, "weights_key", None) is not None:
        raise ValueError("--weights-key names the entry of a --weights checkpoint dict: give --weights FILE too.")
    try:
        rows, whole, flops = list_layers(network, torch.zeros(1, *shape))
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:200]
        raise ValueError(f"model {args.model} cannot run on inputs of shape {shape}: {reason}; check --input-shape.") from None
    return format_layers(rows, whole, flops, title=f"{args.model} on {'x'.join(map(str, shape))} inputs")
