"""Networks a user names by their factory: a ``"package.module:callable"`` path and plain keyword arguments.

A factory path is imported only when a person names it (a command-line ``--model`` or a
``factory=`` argument), never because a file says so: a run directory or a saved spec
records the path and the arguments, and a later reader asks the user to name the factory
again and checks that it is the recorded one. This module imports only torch and the
standard library, so :mod:`pyro_dirichlet.io.serialization` can use it without Pyro.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from torch import nn

from pyro_dirichlet.io.user_code import UserCodeError, check_function, describe_failure, import_user_module

# import_user_module is re-exported: a user's module is found one way everywhere (pyro_dirichlet.io.user_code).
__all__ = ["FACTORY_PATH", "FactoryError", "ModelFactory", "factory_path_of", "import_factory", "import_user_module",
           "is_factory_path", "parse_model_arg"]

#: ``package.module:name`` or ``package.module:Class.method``: dotted identifiers on both sides of one colon.
FACTORY_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

#: What a factory's keyword argument may be: what ``--model-arg key=value`` and JSON can both say.
ArgValue = Union[bool, int, float, str]


class FactoryError(ValueError):
    """A factory path does not import, is not callable, or builds something other than an ``nn.Module``."""


def is_factory_path(text: Any) -> bool:
    """Whether ``text`` is spelt like a factory path (``"torchvision.models:resnet18"``), not a registered model name.

    Example:
        >>> is_factory_path("torchvision.models:resnet18"), is_factory_path("lenet5")
        (True, False)
    """
    return isinstance(text, str) and FACTORY_PATH.fullmatch(text) is not None


def parse_model_arg(text: str) -> tuple[str, ArgValue]:
    """``"num_classes=10"`` -> ``("num_classes", 10)``: the value as an int, a float, a bool, else the string.

    ``true``/``false`` (any case) are booleans; quotes keep a number a string (``name="10"``).

    Raises:
        ValueError: no ``=``, or the key is not a Python identifier.

    Example:
        >>> parse_model_arg("num_classes=10"), parse_model_arg("pretrained=false"), parse_model_arg("width=0.5")
        (('num_classes', 10), ('pretrained', False), ('width', 0.5))
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise ValueError(f"--model-arg expects KEY=VALUE, got {text!r}.")
    if not key.isidentifier():
        raise ValueError(f"--model-arg key {key!r} is not a keyword argument name (in {text!r}).")
    return key, _parse_value(value.strip())


def _parse_value(text: str) -> ArgValue:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            break  # "nan", "inf" stay strings: no network width is infinite
        return value
    return text


def import_factory(path: str) -> Callable[..., Any]:
    """The callable a factory path names, imported now.

    The module is found as :func:`pyro_dirichlet.io.user_code.import_user_module` finds it (a
    file in the current directory first, never by putting that directory on ``sys.path``),
    and what the path names must be a Python function or an ``nn.Module`` class: a builtin
    such as ``os:system`` or another class is refused before anything calls it.

    Raises:
        FactoryError: the path is malformed, its module does not import (or exits), it names
            nothing there, or what it names is not a function; one sentence naming the path.

    Example:
        >>> import_factory("torchvision.models:resnet18").__name__
        'resnet18'
    """
    if not is_factory_path(path):
        raise FactoryError(f"model factory {path!r} is not of the form package.module:callable.")
    module_name, _, qualname = path.partition(":")
    try:
        found: Any = import_user_module(module_name)
    except UserCodeError as error:
        raise FactoryError(f"model factory {path!r} does not import: {str(error).rstrip('.')}.") from None
    for part in qualname.split("."):
        if not hasattr(found, part):
            raise FactoryError(f"model factory {path!r} does not import: {module_name!r} has no {qualname!r}.")
        found = getattr(found, part)
    if not callable(found):
        raise FactoryError(f"model factory {path!r} is a {type(found).__name__}, not a callable returning an nn.Module.")
    refused = check_function(found, classes=nn.Module)
    if refused is not None:
        raise FactoryError(f"model factory {path!r} is {refused}, not a Python function returning an nn.Module: "
                           "it is not called.")
    return found


def factory_path_of(factory: Callable[..., Any]) -> str:
    """The ``module:qualname`` path of a callable, e.g. ``"torchvision.models.resnet:resnet18"``."""
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', type(factory).__qualname__)}"


@dataclass(frozen=True)
class ModelFactory:
    """A network as its factory path and keyword arguments; :meth:`build` imports and calls it.

    Attributes:
        path: ``"package.module:callable"``.
        args: keyword arguments, plain values only (they are recorded as JSON).

    Example:
        >>> ModelFactory("torchvision.models:resnet18", {"num_classes": 10}).build().fc.out_features
        10
    """

    path: str
    args: Mapping[str, ArgValue] = field(default_factory=dict)
    #: The callable itself once a caller has named it (:meth:`named_again`); else :meth:`build` imports :attr:`path`.
    function: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not is_factory_path(self.path):
            raise FactoryError(f"model factory {self.path!r} is not of the form package.module:callable.")
        if not isinstance(self.args, Mapping):
            raise TypeError(f"args must be a mapping of keyword arguments, got {type(self.args).__name__}.")
        for key, value in self.args.items():
            if not isinstance(key, str) or not key.isidentifier() or not isinstance(value, (bool, int, float, str)):
                raise FactoryError(f"model factory {self.path!r}: argument {key!r}={value!r} is not a keyword "
                                   "argument with a plain value (int, float, bool or string).")
        object.__setattr__(self, "args", dict(self.args))

    @classmethod
    def named(cls, factory: ModelFactory | str | Callable[..., Any], args: Mapping[str, ArgValue] | None = None
              ) -> ModelFactory:
        """A factory as a caller names it: a ``ModelFactory``, a ``"module:callable"`` path, or a module-level callable.

        Raises:
            TypeError: ``factory`` is none of these, or a callable without an importable
                ``module:name`` (a lambda, a function defined inside another).

        Example:
            >>> ModelFactory.named("torchvision.models:resnet18", {"num_classes": 10}).path
            'torchvision.models:resnet18'
        """
        if isinstance(factory, ModelFactory):
            return factory if args is None else cls(factory.path, args, function=factory.function)
        if isinstance(factory, str):
            return cls(factory, args or {}, function=import_factory(factory))
        if callable(factory):
            path = factory_path_of(factory)
            if not is_factory_path(path):
                raise TypeError(f"factory {path!r} has no module:name path to record: pass a function or class "
                                "defined at the top level of a module (or its 'module:name' path).")
            return cls(path, args or {}, function=factory)
        raise TypeError(f"factory must be a 'module:callable' path, a callable or a ModelFactory, got "
                        f"{type(factory).__name__}.")

    def build(self) -> nn.Module:
        """Call the factory (:attr:`function`, else the one :attr:`path` names, imported now) with :attr:`args`.

        Raises:
            FactoryError: the call fails, or returns something other than an ``nn.Module``.
        """
        factory = import_factory(self.path) if self.function is None else self.function
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.args.items())
        try:
            built = factory(**self.args)
        except (Exception, SystemExit) as error:  # noqa: BLE001 - the user's code may raise anything, or exit
            raise FactoryError(f"model factory {self.path!r} failed when called with ({arguments}): "
                               f"{describe_failure(error)}.") from None
        if not isinstance(built, nn.Module):
            raise FactoryError(f"model factory {self.path!r} returned a {type(built).__name__}, not an nn.Module.")
        return built

    def named_again(self, named: str | Callable[..., Any] | None, *, where: str) -> ModelFactory:
        """This recorded factory bound to the factory a caller names again (its path or the callable).

        ``where`` (the file that recorded :attr:`path`) is named in the errors. The named
        factory must be the recorded one: the same ``module:name``, or a callable of that
        name defined in a submodule of the recorded module (``torchvision.models.resnet``
        for ``torchvision.models:resnet18``). :attr:`path` itself is never imported.

        Raises:
            FactoryError: nothing named, a path that does not import, or another factory.
        """
        if named is None:
            raise FactoryError(f"{where} records the model factory {self.path!r}, which is never imported because a "
                               f"file names it: name it again (--model {self.path}, or load_pruned(path, "
                               f"factory={self.path!r})).")
        found = import_factory(named) if isinstance(named, str) else named
        module, qualname = getattr(found, "__module__", None) or "", getattr(found, "__qualname__", None) or ""
        recorded_module, _, recorded_name = self.path.partition(":")
        if not callable(found) or qualname != recorded_name or not (
                module == recorded_module or module.startswith(recorded_module + ".")):
            given = named if isinstance(named, str) else f"{module}:{qualname}"
            raise FactoryError(f"{where} records the model factory {self.path!r}, not {given!r}.")
        return ModelFactory(self.path, self.args, function=found)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "args": dict(self.args)}
