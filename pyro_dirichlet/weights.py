"""A user's trained weights: a safetensors file or a PyTorch state dict, checked key by key against a network.

A state dict is read with ``torch.load(weights_only=True)``, which unpickles tensors and
plain containers only, never arbitrary objects; a safetensors file involves no pickle at all.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from pyro_dirichlet.regular_files import SpecialFileError, open_regular

__all__ = ["WEIGHT_DTYPES", "WeightsError", "check_weight_tensors", "read_state_dict", "load_weights"]

#: The floating dtypes a network's weights may be stored in.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: How many mismatching keys a message names before it says "and N more".
_NAMED = 3


class WeightsError(ValueError):
    """A weights file cannot be read as a state dict, or does not fit the network it is meant for."""


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors in ``path``, a safetensors file or a file written by ``torch.save(model.state_dict(), path)``.

    Raises:
        WeightsError: the file is missing, is neither format, or holds something other than
            a mapping of names to tensors; one sentence naming the file.

    Example:
        >>> state = read_state_dict("resnet18-cifar.pt")  # doctest: +SKIP
    """
    path = Path(path)
    try:  # a FIFO, or a link to /dev/zero, would block or never end: refused before any read
        handle = os.fdopen(open_regular(path, what="weights file"), "rb")
    except (SpecialFileError, OSError):
        raise WeightsError(f"weights file {str(path)!r} does not exist or is not a regular file.") from None
    with handle:
        head = handle.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header's "{".
    if len(head) == 9 and head[8:9] == b"{":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # noqa: BLE001 - the Rust parser's errors are of its own types
            raise WeightsError(f"weights file {str(path)!r} is not a readable safetensors file ({_reason(error)}).") from None
    try:
        with warnings.catch_warnings():  # a sparse tensor is refused below, in one sentence
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load fails with whatever its unpickler or zip reader raises
        raise WeightsError(f"weights file {str(path)!r} is neither a safetensors file nor a PyTorch state dict "
                           f"readable with torch.load(weights_only=True) ({_reason(error)}).") from None
    if not isinstance(state, Mapping):
        raise WeightsError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict: "
                           "save model.state_dict().")
    odd = [key for key, value in state.items() if not isinstance(key, str) or not isinstance(value, Tensor)]
    if odd:
        raise WeightsError(f"weights file {str(path)!r} is not a state dict: entry {odd[0]!r} is not a named tensor "
                           "(a checkpoint wrapping one? save model.state_dict() itself).")
    check_weight_tensors(state, f"weights file {str(path)!r}")
    return dict(state)


def check_weight_tensors(state: Mapping[str, Tensor], where: str, *,
                         dtypes: tuple[torch.dtype, ...] | Mapping[str, str] = WEIGHT_DTYPES) -> None:
    """Every tensor dense, holding data on the CPU, finite, and of an allowed dtype.

    ``dtypes``: the floating dtypes allowed, or by tensor name the dtype a saved spec
    recorded (``"float64"``), which that tensor must have.

    Raises:
        WeightsError: one sentence naming ``where`` and the first tensor at fault.
    """
    for key, value in state.items():
        if value.layout != torch.strided:
            raise WeightsError(f"{where} holds {key} as a {str(value.layout).removeprefix('torch.')} tensor: "
                               "weights must be dense tensors.")
        if value.device.type != "cpu":
            raise WeightsError(f"{where} holds {key} on the {value.device.type} device, which holds no data on the CPU.")
        dtype = str(value.dtype).removeprefix("torch.")
        if isinstance(dtypes, Mapping):
            if dtypes.get(key, dtype) != dtype:
                raise WeightsError(f"{where} holds {key} as {dtype}, but the spec records {dtypes[key]}.")
        elif value.is_complex() or (value.is_floating_point() and value.dtype not in dtypes):
            raise WeightsError(f"{where} holds {key} as {dtype}: floating weights must be float32, float16 or bfloat16.")
    broken = [key for key, value in state.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if broken:
        raise WeightsError(f"{where} holds non-finite values (NaN or infinity) in {_first(broken)}.")


def load_weights(network: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load the weights in ``path`` into ``network`` (in place) after checking every key and shape.

    Raises:
        WeightsError: keys missing from the file, keys the network does not have, shapes
            that differ, or non-finite values; one sentence naming the first few of each.

    Example:
        >>> load_weights(torchvision.models.resnet18(num_classes=10), "resnet18-cifar.pt")  # doctest: +SKIP
    """
    state = read_state_dict(path)
    expected = network.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [f"{key} {tuple(state[key].shape)} where the model has {tuple(value.shape)}"
                for key, value in expected.items() if key in state and state[key].shape != value.shape]
    problems = [f"{label} {_first(items)}" for label, items in (
        ("missing", missing), ("unknown to the model", unexpected), ("of another shape", reshaped)) if items]
    if problems:
        raise WeightsError(f"weights file {str(path)!r} does not fit the model: keys {'; '.join(problems)}.")
    network.load_state_dict(state, strict=True)
    return network


def _first(items: list[str]) -> str:
    named = ", ".join(items[:_NAMED])
    return named if len(items) <= _NAMED else f"{named} and {len(items) - _NAMED} more"


def _reason(error: Exception) -> str:
    return (" ".join(str(error).split()).rstrip(".")[:200] or type(error).__name__).replace("\n", " ")
