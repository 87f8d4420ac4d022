"""Why a layer named in a keep set is not a switch site: the coupling group it belongs to.

A keep set (``--keep``, or ``prune_by_posterior_mean(..., keep)``) names the sites the fit
switched. A member of a coupling group other than its first is never a site (the group is,
named after its first member), and under ``coupled="skip"`` no group is. :func:`keep_name_error`
turns such a name into one sentence naming the group and, where the fit skipped the group,
the option that prunes it, spelled for the caller (Python keyword or CLI flag).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from pyro_dirichlet.structure.find import find_prunable_layers
from pyro_dirichlet.structure.layers import PrunableLayer

__all__ = ["keep_name_error", "PYTHON_SPELLING", "CLI_SPELLING"]

#: How an option is written for a Python caller: ``coupled='group'``.
PYTHON_SPELLING = "{name}={value!r}"
#: How an option is written on the command line: ``--coupled group``.
CLI_SPELLING = "--{flag} {value}"


def _spell(spelling: str, name: str, value: str) -> str:
    return spelling.format(name=name, flag=name.replace("_", "-"), value=value)


def keep_name_error(
    network: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    unknown: Iterable[str],
    sites: Sequence[str],
    *,
    spelling: str = PYTHON_SPELLING,
) -> str:
    """One sentence saying why each name in ``unknown`` is not among ``sites``.

    Args:
        network: the network the keep set is for.
        example_inputs: a batch to trace it with.
        unknown: names in the keep set that are not switch sites.
        sites: the names the fit switched (the keys a keep set may use).
        spelling: :data:`PYTHON_SPELLING` or :data:`CLI_SPELLING`, for the option's name.

    Returns:
        The message, ending with the sites a keep set may name.

    Example:
        >>> keep_name_error(resnet, x, ["layer1.0.conv2"], ["conv1", "layer1.0.conv1"])  # doctest: +SKIP
        "keep names layer 'layer1.0.conv2', coupled with ... and pruned as the group 'conv1' ..."
    """
    groups: list[PrunableLayer] = [
        layer for layer in find_prunable_layers(network, example_inputs, coupled="group", on_unsupported="skip")
        if layer.is_group
    ]
    group_option = _spell(spelling, "coupled", "group")
    skip_option = _spell(spelling, "coupled", "skip")
    reasons = []
    for name in unknown:
        group = next((g for g in groups if name in g.members), None)
        if group is None:
            reasons.append(f"'{name}' is not a switched layer")
            continue
        others = ", ".join(f"'{m}'" for m in group.members if m != name)
        if group.name in sites:
            reasons.append(
                f"'{name}' is coupled with {others} and pruned with them as the group '{group.name}' "
                f"(named after its first layer): name '{group.name}' instead"
            )
        else:
            reasons.append(
                f"'{name}' is in the coupling group '{group.name}' (with {others}), which the fit left "
                f"unpruned under {skip_option}: fit with {group_option} (the default) and name '{group.name}'"
            )
    listing = ", ".join(sorted(sites))
    return f"keep names layers that are not switch sites: {'; '.join(reasons)}. The switched layers are: {listing}."
