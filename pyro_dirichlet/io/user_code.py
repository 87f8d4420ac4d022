"""Code a user names on the command line (``--model MODULE:FACTORY``, ``--prior-model MODULE:FUNCTION``): imported and checked.

A module is looked for first as a file in the current directory (``MODULE.py``, or a
package folder ``MODULE/__init__.py``) and loaded from that file alone; otherwise it is
imported as usual. The current directory is never put on ``sys.path``, so a ``dask.py`` or
``cftime.py`` lying there cannot shadow an installed package that some library imports.
What the name points at must be a Python function (or a class, where the caller allows
it), checked before anything calls it. ``SystemExit`` raised by the user's code is a failure
like any other, not an exit of the command.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import stat
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["UserCodeError", "import_user_module", "resolve", "check_function", "describe_failure"]

# Modules this file loaded from the current directory: name -> the file, so a later call for
# the same name from another directory (a test's tmp folder) loads that file instead.
_LOADED: dict[str, str] = {}


class UserCodeError(ValueError):
    """A user's module does not import, lacks the named attribute, or names something that is not a function."""


def describe_failure(error: BaseException) -> str:
    """``"ZeroDivisionError (division by zero)"``: an exception in one line, for a one-sentence message."""
    if isinstance(error, SystemExit):
        return f"SystemExit (it called sys.exit({error.code!r}))"
    reason = " ".join(str(error).split()).rstrip(".")[:300] or type(error).__name__
    return f"{type(error).__name__} ({reason})"


def _local_file(module_name: str) -> tuple[Path, bool] | None:
    """``(file, is_package)`` of the top-level module ``module_name`` in the current directory, if there is one."""
    top = module_name.partition(".")[0]
    here = Path(os.getcwd())
    for candidate, package in ((here / top / "__init__.py", True), (here / f"{top}.py", False)):
        try:
            mode = candidate.stat().st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):  # a FIFO or a device would block the import forever
            raise UserCodeError(f"module {top!r}: {str(candidate)!r} is not a regular file.")
        return candidate, package
    return None


def import_user_module(module_name: str) -> ModuleType:
    """The module ``module_name``: its file in the current directory when there is one, else the installed one.

    Raises:
        UserCodeError: the module's code fails on import (``SystemExit`` included), or no module has that name.
    """
    try:
        local = _local_file(module_name)
        top = module_name.partition(".")[0]
        # A module already imported from elsewhere (torch, os) is never replaced; one this file loaded
        # is loaded again when the current directory now holds another file of that name.
        if local is not None and (top not in sys.modules or (top in _LOADED and _LOADED[top] != str(local[0]))):
            _load_from_file(top, *local)
        return importlib.import_module(module_name)
    except UserCodeError:
        raise
    except ModuleNotFoundError as error:
        raise UserCodeError(_not_found(module_name, error)) from None
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the user's module may fail any way it likes
        raise UserCodeError(f"module {module_name!r} fails with {describe_failure(error)}.") from None


def _not_found(module_name: str, error: ModuleNotFoundError) -> str:
    """Which module is missing, and where a user's own file would have been looked for."""
    top = module_name.partition(".")[0]
    if error.name not in (module_name, top):
        return f"module {module_name!r} imports {error.name!r}, which is not installed."
    if "." in module_name:
        return (f"module {module_name!r} is not installed (a file of yours in the current folder is found as "
                "MODULE:callable, for MODULE.py).")
    return (f"module {module_name!r} is not installed and there is no {module_name}.py in the current folder "
            f"{os.getcwd()!r}; run the command from the folder holding it, or install it.")


def _load_from_file(name: str, path: Path, package: bool) -> None:
    for loaded in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
        del sys.modules[loaded]
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(path.parent)] if package else None)
    if spec is None or spec.loader is None:
        raise UserCodeError(f"module {name!r}: {str(path)!r} cannot be loaded as Python.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: the module's own dataclasses and pickles look it up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        _LOADED.pop(name, None)
        raise
    _LOADED[name] = str(path)


def resolve(path: str) -> Any:
    """What ``"package.module:name.attribute"`` names, importing the module (see :func:`import_user_module`).

    Raises:
        UserCodeError: the module fails to import, or has no such attribute.
    """
    module_name, _, qualname = path.partition(":")
    found: Any = import_user_module(module_name)
    for part in qualname.split("."):
        if not hasattr(found, part):
            raise UserCodeError(f"module {module_name!r} has no attribute {qualname!r}.")
        found = getattr(found, part)
    return found


def check_function(found: Any, *, classes: type | None = None) -> str | None:
    """``None`` if ``found`` may be called as a user's function, else what it is instead (``"a builtin_function_or_method"``).

    Accepted: a function written in Python (a module-level ``def``, a ``staticmethod`` or a
    ``classmethod`` reached through its class) and, if ``classes`` is given, a subclass of it
    (``nn.Module``: calling the class builds the network). Refused: builtins such as
    ``os.system``, other classes (``dict``), instances and every other callable object, whose
    call could do anything before its result is checked.
    """
    if inspect.isfunction(found):
        return None
    if inspect.ismethod(found) and inspect.isfunction(found.__func__) and inspect.isclass(found.__self__):
        return None
    if classes is not None and inspect.isclass(found) and issubclass(found, classes):
        return None
    if inspect.isclass(found):
        return f"the class {found.__qualname__}"
    return f"a {type(found).__name__}"
