"""Every default has one home (issue 30): an option's default value is written as a literal in one place.

The rest of the package names the constant (``DEFAULT_COUPLING``, ``DEFAULT_CI_PROB``, ...),
so changing a default is one edit and no two modules can disagree about it. The scan reads
the source with :mod:`ast`: keyword defaults of functions, field defaults of classes
(dataclasses), and the fallbacks of ``record.get("name", literal)``.
"""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_dirichlet"

#: Options whose default was once written in several places.
GUARDED = (
    "budget_cost", "bins", "ci_prob", "cost", "coupled", "distillation", "hyper_guide", "init_concentration",
    "lr_decay", "num_samples", "on_unsupported", "precision", "predictive_draws", "predictive_images",
    "prior", "temperature", "validation_size",
)


def _literal(node: ast.expr | None) -> bool:
    """A literal other than ``None`` (which means "not given", not a default value)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and node.value is not None


def _field_default(value: ast.expr) -> ast.expr | None:
    if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
        return next((keyword.value for keyword in value.keywords if keyword.arg == "default"), None)
    return value


def literal_defaults(source: str, where: str) -> list[tuple[str, str]]:
    """``(option name, "file:line")`` for each literal default in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            positional = node.args.posonlyargs + node.args.args
            pairs = [*zip(positional[len(positional) - len(node.args.defaults):], node.args.defaults),
                     *zip(node.args.kwonlyargs, node.args.kw_defaults)]
            found += [(arg.arg, f"{where}:{default.lineno}") for arg, default in pairs if _literal(default)]
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
                    default = _field_default(item.value)
                    if _literal(default):
                        found.append((item.target.id, f"{where}:{default.lineno}"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and _literal(node.args[1])):
            found.append((node.args[0].value, f"{where}:{node.lineno}"))
    return found


def package_defaults() -> dict[str, list[str]]:
    places = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, where in literal_defaults(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent))):
            places[name].append(where)
    return places


@pytest.mark.parametrize("name", GUARDED)
def test_a_default_is_written_once(name):
    places = package_defaults().get(name, [])
    assert len(places) <= 1, (f"the default of {name!r} is written as a literal in {len(places)} places "
                              f"({', '.join(places)}): give it one named constant in the module that owns it")


def test_the_scan_finds_each_kind_of_default():
    source = '''
from dataclasses import dataclass, field

def f(x, coupled="group", *, ci_prob=0.95, prior=None): ...

@dataclass
class Options:
    hyper_guide: str = "normal"
    bins: int = field(default=15)
    layers: tuple = None

fallback = record.get("on_unsupported", "raise")
'''
    assert sorted(name for name, _ in literal_defaults(source, "x.py")) == [
        "bins", "ci_prob", "coupled", "hyper_guide", "on_unsupported"]


def test_the_named_defaults_keep_their_values():
    """Moving a default into a constant changed no value (the command line's, the library's)."""
    from pyro_dirichlet.app.options import FitOptions, MIN_SUBSET
    from pyro_dirichlet.criteria.posterior import LOWER_BOUND_CI_PROB
    from pyro_dirichlet.infer.fit_config import CLI_PREDICTIVE_DRAWS, DEFAULT_NUM_SAMPLES, PREDICTIVE_DRAWS, PREDICTIVE_IMAGES
    from pyro_dirichlet.infer.guide import DEFAULT_HYPER_GUIDE
    from pyro_dirichlet.planning.allocation import DEFAULT_COST
    from pyro_dirichlet.posterior import DEFAULT_CI_PROB
    from pyro_dirichlet.posterior.calibration import CALIBRATION_BINS
    from pyro_dirichlet.precision import LIBRARY_PRECISION
    from pyro_dirichlet.repair.distillation import DEFAULT_TEMPERATURE
    from pyro_dirichlet.structure import DEFAULT_COUPLING, DEFAULT_ON_UNSUPPORTED

    assert (DEFAULT_COUPLING, DEFAULT_ON_UNSUPPORTED, DEFAULT_HYPER_GUIDE, DEFAULT_COST) == ("group", "raise", "normal", "flops")
    assert (DEFAULT_NUM_SAMPLES, PREDICTIVE_DRAWS, PREDICTIVE_IMAGES, CLI_PREDICTIVE_DRAWS) == (1000, 100, 128, 50)
    assert (DEFAULT_CI_PROB, LOWER_BOUND_CI_PROB, CALIBRATION_BINS) == (0.95, 0.9, 15)
    assert (DEFAULT_TEMPERATURE, LIBRARY_PRECISION, MIN_SUBSET) == (4.0, "fp32", 8)
    options = FitOptions()
    assert (options.coupled, options.on_unsupported, options.fit.hyper_guide, options.predictive_draws) == (
        "group", "raise", "normal", 50)
