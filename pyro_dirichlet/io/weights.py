"""A user's trained weights: a safetensors file or a PyTorch state dict, checked key by key against a network.

A state dict is read with ``torch.load(weights_only=True)``, which unpickles tensors and
plain containers only, never arbitrary objects; a safetensors file involves no pickle at all.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pyro_dirichlet.io.regular_files import SpecialFileError, open_regular

__all__ = ["WEIGHT_DTYPES", "WeightsError", "check_weight_tensors", "read_state_dict", "load_weights"]

#: The floating dtypes a network's weights may be stored in.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: How many mismatching keys a message names before it says "and N more".
_NAMED = 3


class WeightsError(ValueError):
    """A weights file cannot be read as a state dict, or does not fit the network it is meant for."""


def read_state_dict(path: str | os.PathLike[str], *, key: str | None = None,
                    notes: list[str] | None = None) -> dict[str, Tensor]:
    """The tensors in ``path``, a safetensors file or a file written by ``torch.save(model.state_dict(), path)``.

    Args:
        path: the weights file.
        key: the entry of a checkpoint dict that holds the state dict, e.g.
            ``"model_state_dict"`` for ``torch.save({"epoch": ..., "model_state_dict": ...})``.
        notes: where to append a sentence for each change made to the keys (the ``module.``
            prefix ``nn.DataParallel`` and DDP add is stripped).

    Raises:
        WeightsError: the file is missing, is neither format, holds a pickled object (a
            whole model), a checkpoint dict without ``key``, or something other than a mapping
            of names to tensors; one sentence naming the file and the fix.

    Example:
        >>> state = read_state_dict("resnet18-cifar.pt")  # doctest: +SKIP
    """
    path = Path(path)
    state = _state_dict_in(_read_weights_file(path), path, key)
    state = dict(state)
    prefix = "module."
    if state and all(name.startswith(prefix) for name in state):
        state = {name[len(prefix):]: value for name, value in state.items()}
        if notes is not None:
            notes.append(f"weights file {str(path)!r}: stripped the 'module.' prefix that nn.DataParallel or "
                         "DistributedDataParallel adds from every key.")
    check_weight_tensors(state, f"weights file {str(path)!r}")
    return state


def _read_weights_file(path: Path) -> Any:
    """What ``path`` holds, read as a safetensors file (by its header) or with ``torch.load(weights_only=True)``."""
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
            state: Any = load_file(str(path), device="cpu")
        except Exception as error:  # noqa: BLE001 - the Rust parser's errors are of its own types
            raise WeightsError(f"weights file {str(path)!r} is not a readable safetensors file ({_reason(error)}).") from None
    else:
        try:
            with warnings.catch_warnings():  # a sparse tensor is refused below, in one sentence
                warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            text = str(error)
            found = re.search(r"GLOBAL (\S+) was not an allowed global", text)
            if found is None:
                # torch's page of advice about unpickling; its own diagnosis sits after "WeightsUnpickler error:".
                inner = text.partition("WeightsUnpickler error:")[2].partition("Check the documentation")[0] or text
                raise WeightsError(f"weights file {str(path)!r} is neither a safetensors file nor a PyTorch state dict "
                                   f"readable with torch.load(weights_only=True) ({_reason(Exception(inner))}).") from None
            # torch's own text (ANSI escapes, a page of options) advises unpickling it: the fix is the state dict.
            raise WeightsError(f"weights file {str(path)!r} holds a pickled Python object ({found.group(1)}; a whole "
                               "model saved with torch.save(model, path)?), which is never unpickled here: save its "
                               "weights with torch.save(model.state_dict(), path) and pass that file.") from None
        except Exception as error:  # noqa: BLE001 - torch.load fails with whatever its zip reader raises
            raise WeightsError(f"weights file {str(path)!r} is neither a safetensors file nor a PyTorch state dict "
                               f"readable with torch.load(weights_only=True) ({_reason(error)}).") from None
    return state


def _state_dict_in(state: Any, path: Path, key: str | None) -> Mapping[str, Tensor]:
    """The mapping of names to tensors in what ``path`` held (the entry ``key`` of a checkpoint dict)."""
    if not isinstance(state, Mapping):
        raise WeightsError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict: "
                           "save model.state_dict().")
    if key is not None:
        if key not in state or not isinstance(state[key], Mapping):
            entries = [name for name, value in state.items() if isinstance(value, Mapping)]
            raise WeightsError(f"weights file {str(path)!r} has no state dict under key {key!r}: its entries holding "
                               f"a dict are {_first([repr(name) for name in entries]) or 'none'}: give one of them to --weights-key.")
        state = state[key]
    odd = [name for name, value in state.items() if not isinstance(name, str) or not isinstance(value, Tensor)]
    if odd:
        inner = [repr(name) for name, value in state.items() if isinstance(value, Mapping)
                 and value and all(isinstance(v, Tensor) for v in value.values())]
        if inner:
            raise WeightsError(f"weights file {str(path)!r} is a checkpoint dict with keys {_first([repr(n) for n in state])}, "
                               f"not a state dict: pass --weights-key {inner[0].strip(chr(39))} (key= in Python) to read "
                               "the state dict inside it, or save model.state_dict() itself.")
        raise WeightsError(f"weights file {str(path)!r} is not a state dict: entry {odd[0]!r} is not a named tensor "
                           "(a checkpoint wrapping one? save model.state_dict() itself).")
    return state


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


def load_weights(network: nn.Module, path: str | os.PathLike[str], *, key: str | None = None,
                 notes: list[str] | None = None) -> nn.Module:
    """Load the weights in ``path`` into ``network`` (in place) after checking every key and shape.

    ``key`` and ``notes`` are :func:`read_state_dict`'s.

    Raises:
        WeightsError: keys missing from the file, keys the network does not have, shapes
            that differ, or non-finite values; one sentence naming the first few of each.

    Example:
        >>> load_weights(torchvision.models.resnet18(num_classes=10), "resnet18-cifar.pt")  # doctest: +SKIP
    """
    state = read_state_dict(path, key=key, notes=notes)
    expected = network.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    reshaped = [f"{name} {tuple(state[name].shape)} where the model has {tuple(value.shape)}"
                for name, value in expected.items() if name in state and state[name].shape != value.shape]
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
    """The error's first sentence without terminal escapes, cut at a word (never mid-word) past 200 characters."""
    text = " ".join(_ANSI.sub("", str(error)).split()).rstrip(".") or type(error).__name__
    if len(text) > 200:
        text = text[:200].rsplit(" ", 1)[0] + " ..."
    return text


#: Terminal colour and bold codes (torch's messages carry ``\x1b[1m``).
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
