"""Prior models named on the command line: ``--prior-model package.module:function`` imported as a :class:`PriorModel`.

Naming a prior model runs the named module's code, so the name is taken only from what a
user types (``--prior-model``), never from a file's contents: a config file may not set it,
and a run directory only records it. ``fit`` writes the name into ``run.json``; a later step
that needs the prior again (``report`` draws the model) must be given the same name again,
and :func:`check_recorded` compares the two. A command imports the module once, where it first
needs the prior (``fit``, ``report``; ``run`` before training, then hands the model to both).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyro_dirichlet.infer.priors import PriorModel

__all__ = ["check_prior_model_name", "check_recorded", "load_prior_model"]

# A dotted module path, a colon, a dotted attribute path: nothing a shell or a path could smuggle in.
_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def check_prior_model_name(name: object) -> str:
    """``name`` if it reads ``package.module:function``, else a ValueError naming ``prior_model``."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ValueError(f"prior_model must be written package.module:function (e.g. my_priors:shared_alpha), got {name!r}.")
    return name


def load_prior_model(name: str) -> PriorModel:
    """Import the prior model ``package.module:function``.

    A ``my_priors.py`` in the current directory is loaded from that file (it is never put on
    ``sys.path``, so no other file there shadows an installed package), else the module is
    imported as usual; the function is checked to be a Python function before it is called. A function is wrapped in
    :class:`~pyro_dirichlet.infer.priors.PriorModel` (``fn(layers) -> {layer name:
    distribution}``); a ``PriorModel`` is taken as it is.

    Raises:
        ValueError: the name is malformed, the module cannot be imported or exits (its own
            error is quoted), it has no such attribute, or the attribute is not a function; each
            message names the option, ``--prior-model`` (only the command line names one), and quotes the name.

    Example:
        >>> load_prior_model("my_priors:shared_alpha")  # doctest: +SKIP
        PriorModel(fn=<function shared_alpha at ...>)
    """
    # Imported here: checking a name (the parser, the options) needs neither torch nor the user's code.
    from pyro_dirichlet.infer.priors import PriorModel
    from pyro_dirichlet.io.user_code import UserCodeError, check_function, import_user_module

    module_name, _, attribute = check_prior_model_name(name).partition(":")
    try:
        target = import_user_module(module_name)
    except UserCodeError as error:  # the user's module: any failure of its import is bad input
        raise ValueError(f"--prior-model {name!r}: {str(error).rstrip('.')}.") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"--prior-model {name!r}: module {module_name!r} has no attribute {attribute!r}.")
        target = getattr(target, part)
    if isinstance(target, PriorModel):
        return target
    refused = None if callable(target) else f"a {type(target).__name__}"
    refused = refused or check_function(target)
    if refused is not None:
        raise ValueError(f"--prior-model {name!r} is {refused}, not a function prior_model(layers) -> {{layer: distribution}}.")
    return PriorModel(target)


def check_recorded(given: str | None, recorded: str | None) -> None:
    """A later step's ``--prior-model`` must name the prior model ``fit`` recorded (or none if it recorded none).

    Raises:
        ValueError: the run was fitted with a prior model that is not named again, or
            another (or none) was named.
    """
    if given == recorded:
        return
    if given is None:
        raise ValueError(
            f"prior_model: the run was fitted with --prior-model {recorded}; name it again (--prior-model {recorded}): "
            "a prior model is imported only when named on the command line, never from the run directory."
        )
    fitted = f"--prior-model {recorded}" if recorded else "no prior model (a symmetric Dirichlet --prior)"
    raise ValueError(f"prior_model {given!r} is not the prior the run was fitted with: {fitted}.")
