"""The ``--config FILE`` of every ``pyro-dirichlet`` subcommand: a TOML file of option values.

Keys are the command's long options without the dashes (``prior = 0.5``,
``finetune-epochs = 3`` or ``finetune_epochs = 3``, ``run = "runs/demo"``); values are converted and checked as
the command line would convert them, and options given on the command line override the
file. One file may serve a whole run: a key of another subcommand's option is ignored by a
subcommand that does not have it, while a key that is no option at all is an error naming
it and the valid keys.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["COMMAND_LINE_ONLY", "TRUST_FLAG", "ConfigError", "MAX_CONFIG_BYTES", "read_config", "config_values"]

#: A config file holds a few option values; anything larger is refused before it is read.
MAX_CONFIG_BYTES = 1024 * 1024
#: Options whose value names Python code to import: a file's contents (a shared config, a
#: downloaded one) must never make the command run code, so a config file may set them only
#: when the command line says ``--trust-config``. ``model`` names code only as a factory path
#: (``MODULE:FACTORY``); a registered name such as ``lenet5`` is plain data.
COMMAND_LINE_ONLY = frozenset({"prior_model", "model"})
#: The flag that lets a config file name code; never itself read from a file.
TRUST_FLAG = "--trust-config"


class ConfigError(ValueError):
    """A config file is missing, not TOML, or names an unknown key or a value of the wrong type."""


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML table in ``path``.

    Raises:
        ConfigError: the file does not exist or is not valid TOML.
    """
    path = Path(path)
    try:
        # Checked before reading: /dev/zero or a FIFO would never end, a huge file would fill memory.
        if path.exists() and not path.is_dir() and not path.is_file():
            raise ConfigError(f"config file {str(path)!r} is not a regular file.")
        if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {str(path)!r} is larger than {MAX_CONFIG_BYTES // 1024} KiB; "
                              "a config file holds a few option values.")
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory, not a TOML file.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}.") from None
    except RecursionError:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: it is nested too deeply.") from None
    except PermissionError:
        raise ConfigError(f"config file {str(path)!r} cannot be read: permission denied.") from None


def config_values(
    table: Mapping[str, Any],
    actions: Iterable[argparse.Action],
    applicable: set[str],
    *,
    source: str = "the config file",
    trusted: bool = False,
) -> dict[str, Any]:
    """Convert a config table into option values: ``{dest: value}`` for the options in ``applicable``.

    Args:
        table: what :func:`read_config` read.
        actions: the argparse actions of every option of every subcommand (an action's
            ``type``, ``choices`` and whether it is a flag decide the conversion).
        applicable: the ``dest`` of each option of the subcommand being run.
        source: how error messages name the file.
        trusted: the command line said ``--trust-config``: the file may name code to import
            (a factory path as ``model``, a ``prior-model``); else such a key is refused.

    Raises:
        ConfigError: a key is no option of any subcommand (the message lists the valid
            keys), a value cannot be converted, or a key names code and ``trusted`` is false.
    """
    # Every spelling of an option names it: "finetune-epochs", "finetune_epochs", "run" for --run.
    names = {flag.lstrip("-").replace("-", "_"): action
             for action in actions for flag in action.option_strings if flag.startswith("--")}
    values = {}
    for key, value in table.items():
        if key.replace("-", "_") == TRUST_FLAG.lstrip("-").replace("-", "_"):
            raise ConfigError(f"{source}: key {key!r} is accepted on the command line only ({TRUST_FLAG}): "
                              "a file cannot vouch for itself.")
        action = names.get(key.replace("-", "_"))
        if action is None:
            valid = ", ".join(sorted(name.replace("_", "-") for name, known in names.items()
                                     if known.dest != "prior_model" or trusted))
            raise ConfigError(f"{source} has unknown key {key!r}; valid keys: {valid}.")
        if action.dest in COMMAND_LINE_ONLY and not trusted and _names_code(action.dest, value):
            raise ConfigError(f"{source}: key {key!r} names code to import, which is accepted on the command line "
                              f"only ({action.option_strings[0]}), or from a file you wrote with {TRUST_FLAG}: "
                              f"{value!r} was not imported.")
        if action.dest in applicable:
            values[action.dest] = _convert(key, value, action, source)
    return values


def _names_code(dest: str, value: Any) -> bool:
    """Whether a config value of a :data:`COMMAND_LINE_ONLY` option names code (anything but a registered model's name)."""
    if dest != "model":
        return True
    from pyro_dirichlet.io.factories import is_factory_path

    return is_factory_path(value)


def _model_args(value: Any, action: argparse.Action, where: str) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        bad = {k: v for k, v in value.items() if not k.isidentifier() or not isinstance(v, (bool, int, float, str))}
        if bad:
            raise ConfigError(f"{where} must map keyword argument names to numbers, booleans or strings, got {bad!r}.")
        return list(value.items())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        try:
            return [action.type(item) for item in value]
        except (argparse.ArgumentTypeError, ValueError) as error:
            raise ConfigError(f"{where}: {error}") from None
    raise ConfigError(f"{where} must be a table such as {{ num_classes = 10 }}, got {value!r}.")


def _convert(key: str, value: Any, action: argparse.Action, source: str) -> Any:
    where = f"{source}: key {key!r}"
    if action.nargs == 0:  # a flag such as --quiet
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}.")
        return value
    if action.dest == "model_args":  # a table {num_classes = 10} or a list of "key=value" strings
        return _model_args(value, action, where)
    if isinstance(value, bool):
        raise ConfigError(f"{where} must not be a boolean, got {value!r}.")
    if action.dest == "keep" and isinstance(value, Mapping):
        bad = {layer: count for layer, count in value.items() if isinstance(count, bool) or not isinstance(count, (int, float))}
        if bad:
            raise ConfigError(f"{where} must map layers to counts or fractions, got {bad!r}.")
        converted: Any = dict(value)
    elif action.dest == "keep" and isinstance(value, (int, float)):  # one fraction for every layer
        converted = action.type(str(value))
    elif action.dest == "layers" and isinstance(value, list):
        if not all(isinstance(name, str) and name for name in value):
            raise ConfigError(f"{where} must be a list of layer names, got {value!r}.")
        converted = tuple(value)
    elif action.type in (int, float) and isinstance(value, (int, float)):
        if action.type is int and not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}.")
        converted = action.type(value)
    elif isinstance(value, str):
        try:
            converted = action.type(value) if action.type is not None else value
        except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
            raise ConfigError(f"{where}: {error}") from None
    else:
        raise ConfigError(f"{where} has a value of the wrong type: {value!r}.")
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where} is {converted!r}; valid choices: {choices}.")
    return converted
