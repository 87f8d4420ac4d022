"""The switch model drawn by ``pyro.render_model`` for the report: every sample site, its distribution, the plates.

Drawing needs the ``graphviz`` Python package and Graphviz's ``dot`` program (Debian package
``graphviz``); where either is missing the report says so in one sentence instead of a picture.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import pyro
import torch

from pyro_dirichlet.infer.switches import DirichletSwitches

__all__ = ["ModelGraph", "render_switch_model"]


@dataclass(frozen=True)
class ModelGraph:
    """The drawn model, or why there is none.

    Attributes:
        png: the PNG image, or ``None``.
        source: the graph in Graphviz's DOT language (``None`` where the package is missing).
        missing: ``None`` when drawn, else a sentence saying what is not installed.
    """

    png: bytes | None
    source: str | None
    missing: str | None


def render_switch_model(switches: DirichletSwitches, images: torch.Tensor, labels: torch.Tensor) -> ModelGraph:
    """Draw ``switches.model`` on a batch: the prior's own sites feeding the switches, the switches feeding ``obs``.

    The model is traced once on copies of the random streams, in a scratch param store, so
    drawing it changes nothing a later fit or draw sees.

    Example:
        >>> graph = render_switch_model(switches, images[:2], labels[:2])  # doctest: +SKIP
        >>> graph.png[:4] if graph.missing is None else graph.missing  # doctest: +SKIP
        b'\\x89PNG'
    """
    try:
        import graphviz
    except ImportError:
        return ModelGraph(None, None, "The model is not drawn: the graphviz Python package is not installed (pip install graphviz).")
    devices = [images.device] if images.device.type == "cuda" else []
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=devices), torch.no_grad():
        graph = pyro.render_model(switches.model, model_args=(images, labels), render_distributions=True)
    if shutil.which("dot") is None:
        return ModelGraph(None, graph.source, "The model is not drawn: Graphviz's dot program is not installed "
                                              "(Debian: apt-get install graphviz).")
    try:
        png = graph.pipe(format="png")
    except (graphviz.ExecutableNotFound, subprocess.CalledProcessError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return ModelGraph(None, graph.source, f"The model is not drawn: Graphviz's dot failed ({reason}).")
    return ModelGraph(png, graph.source, None)
