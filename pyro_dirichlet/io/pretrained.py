"""Save and reload a pruned Hugging Face model: its ``config.json`` with the pruned widths, and its weights.

Hugging Face rebuilds a model from its config, in which one ``intermediate_size`` serves every
block; a pruned model's blocks keep widths of their own, so ``transformers``' own
``from_pretrained`` stops at the first weight of another shape. :func:`save_pretrained`
writes the config (``config.save_pretrained``) with the widths of every Linear, GPT-2
``Conv1D``, Conv2d and BatchNorm that differs from what the config builds (and the shape of any
other parameter pruning sliced: a per-head position bias), and the weights
as ``pruned.safetensors`` under the model's own parameter names (Hugging Face's writer would
rename some to an older layout). :func:`from_pretrained` builds the model from the config,
narrows those layers, and loads the weights strictly: every tensor must find its place, of
its shape. Only a ``transformers`` class named by the config's ``architectures`` (or the
class the caller passes) is built: nothing is unpickled and no code from the directory runs.

Example:
    >>> save_pretrained(pruned, "llama-pruned")  # doctest: +SKIP
    >>> again = from_pretrained("llama-pruned")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Imports no Pyro: a saved model loads where only torch and transformers are installed.
from pyro_dirichlet.structure.hf_attention import resize_attention_blocks
from pyro_dirichlet.surgery.slicing import is_transposed_linear

__all__ = ["PRUNED_SHAPES", "PRUNED_WIDTHS", "from_pretrained", "save_pretrained"]

#: The config attribute holding ``{module name: {width attribute: value}}`` of the narrowed layers.
PRUNED_WIDTHS = "pyro_dirichlet_pruned_widths"
#: The config attribute holding ``{parameter name: shape}`` of the other parameters that pruning
#: sliced (one entry per head: Swin's relative position bias table).
PRUNED_SHAPES = "pyro_dirichlet_pruned_shapes"
#: The weights file, beside ``config.json``.
WEIGHTS = "pruned.safetensors"


def _width_attributes(module: nn.Module) -> dict[str, int] | None:
    """The attributes that set a prunable module's parameter shapes; ``None`` for other modules."""
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features}
    if is_transposed_linear(module):
        return {"nx": module.nx, "nf": module.nf}
    if isinstance(module, nn.Conv2d):
        return {"in_channels": module.in_channels, "out_channels": module.out_channels, "groups": module.groups}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"num_features": module.num_features}
    return None


def _widths(model: nn.Module) -> dict[str, dict[str, int]]:
    return {name: widths for name, module in model.named_modules() if (widths := _width_attributes(module)) is not None}


def _narrow(module: nn.Module, widths: dict[str, int]) -> None:
    """Set ``module``'s width attributes and give its tensors the shapes they imply (values come from the weights file)."""
    for key, value in widths.items():
        setattr(module, key, value)
    if isinstance(module, nn.Linear):
        shapes = {"weight": (module.out_features, module.in_features), "bias": (module.out_features,)}
    elif is_transposed_linear(module):
        shapes = {"weight": (module.nx, module.nf), "bias": (module.nf,)}
    elif isinstance(module, nn.Conv2d):
        shapes = {"weight": (module.out_channels, module.in_channels // module.groups, *module.kernel_size),
                  "bias": (module.out_channels,)}
    else:  # BatchNorm
        shapes = dict.fromkeys(("weight", "bias", "running_mean", "running_var"), (module.num_features,))
    for name, shape in shapes.items():
        tensor = getattr(module, name, None)
        if isinstance(tensor, nn.Parameter):
            setattr(module, name, nn.Parameter(tensor.new_empty(shape), requires_grad=tensor.requires_grad))
        elif isinstance(tensor, torch.Tensor):
            setattr(module, name, tensor.new_empty(shape))


def save_pretrained(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write pruned Hugging Face ``model`` to ``directory``: ``config.json`` with its narrowed widths, and ``pruned.safetensors``.

    The widths are those that differ from what ``type(model)(model.config)`` builds (found on
    the ``meta`` device, so nothing is allocated). The model's own config is left as it was.

    Raises:
        TypeError: ``model`` is not a Hugging Face ``PreTrainedModel``.
    """
    import safetensors.torch

    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise TypeError(f"model must be a Hugging Face PreTrainedModel, got a {type(model).__name__}.")
    with torch.device("meta"):
        built = type(model)(model.config)
    reference = _widths(built)
    narrowed = {name: widths for name, widths in _widths(model).items() if reference.get(name) != widths}
    shapes = {name: tuple(p.shape) for name, p in built.named_parameters()}
    reshaped = {
        name: list(p.shape) for name, p in model.named_parameters()
        if name.rpartition(".")[0] not in reference and shapes.get(name) != tuple(p.shape)
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    setattr(config, PRUNED_WIDTHS, narrowed)
    setattr(config, PRUNED_SHAPES, reshaped)
    config.architectures = [type(model).__name__]  # what transformers' own save_pretrained records
    config.save_pretrained(directory)
    # save_model writes a tensor shared by two names (tied embeddings) once.
    safetensors.torch.save_model(model, str(directory / WEIGHTS))
    return directory


def _model_class(config: Any, model_class: type | None) -> type:
    import transformers

    if model_class is not None:
        return model_class
    names = getattr(config, "architectures", None) or []
    found = getattr(transformers, names[0], None) if names else None
    if not (isinstance(found, type) and issubclass(found, transformers.PreTrainedModel)):
        # A value read from config.json, not an argument of the wrong type: ValueError, as for the other file checks.
        raise ValueError(f"the config names no transformers model class ({names!r}): pass model_class=.")  # noqa: TRY004
    return found


def from_pretrained(directory: str | os.PathLike[str], *, model_class: type | None = None) -> nn.Module:
    """Rebuild a model :func:`save_pretrained` wrote, in eval mode.

    Args:
        directory: the folder ``save_pretrained`` wrote (``config.json``, ``pruned.safetensors``).
        model_class: the ``transformers`` class to build; default: the config's ``architectures[0]``.

    Raises:
        ValueError: the config names no ``transformers`` class, a recorded layer is not one
            whose widths can change, or a weight is missing, unexpected or of another shape.
        FileNotFoundError: no ``config.json`` or no weights file.
    """
    import safetensors.torch
    import transformers

    directory = Path(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist: save the model with pyro_dirichlet's save_pretrained.")
    config = transformers.AutoConfig.from_pretrained(directory)
    model = _model_class(config, model_class)(config)
    modules = dict(model.named_modules())
    for name, widths in (getattr(config, PRUNED_WIDTHS, None) or {}).items():
        module = modules.get(name)
        expected = _width_attributes(module) if module is not None else None
        if expected is None or set(widths) != set(expected):
            raise ValueError(f"{directory}/config.json narrows '{name}', which the model has no such layer for.")
        _narrow(module, widths)
    for name, shape in (getattr(config, PRUNED_SHAPES, None) or {}).items():
        owner, _, attribute = name.rpartition(".")
        parameter = getattr(modules.get(owner), attribute, None)
        if not isinstance(parameter, nn.Parameter) or len(shape) != parameter.dim():
            raise ValueError(f"{directory}/config.json reshapes '{name}', which the model has no such parameter for.")
        setattr(modules[owner], attribute, nn.Parameter(parameter.new_empty(shape), requires_grad=parameter.requires_grad))
    resize_attention_blocks(model)
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(weights), strict=False)
    except RuntimeError as error:  # a tensor of another shape
        first = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error))
        raise ValueError(f"{weights} does not fit the model: {first}") from None
    if missing or unexpected:
        raise ValueError(f"{weights} does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}.")
    return model.eval()
