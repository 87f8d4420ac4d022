"""pyro.render_model of the switch model for the report: drawn where Graphviz is installed, one sentence where it is not."""

import shutil

import pyro
import pytest
import torch

from pyro_dirichlet.app import model_graph
from pyro_dirichlet.app.model_graph import render_switch_model
from pyro_dirichlet.infer.switches import DirichletSwitches
from test_hierarchical import planted, shared_alpha


@pytest.fixture
def switches():
    network, data = planted(8)
    return DirichletSwitches(network, data.images[:2], prior=shared_alpha), data


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot program (Debian package graphviz; .ci/run installs it)")
def test_the_model_is_drawn_with_the_hyper_prior_feeding_the_switch(switches):
    pytest.importorskip("graphviz", reason="needs the graphviz Python package (a dependency in pyproject.toml)")
    switches, data = switches
    state = torch.get_rng_state()
    graph = render_switch_model(switches, data.images[:2], data.labels[:2])
    assert graph.missing is None and graph.png.startswith(b"\x89PNG\r\n\x1a\n") and len(graph.png) > 1000
    assert '"1.switch"' in graph.source and 'alpha -> "1.switch"' in graph.source and '"1.switch" -> obs' in graph.source
    # drawing draws from no stream a fit uses and leaves no parameter behind
    assert torch.equal(torch.get_rng_state(), state) and len(pyro.get_param_store()) == 0


def test_without_dot_the_report_gets_a_sentence_instead(switches, monkeypatch):
    pytest.importorskip("graphviz", reason="needs the graphviz Python package (a dependency in pyproject.toml)")
    switches, data = switches
    monkeypatch.setattr(model_graph.shutil, "which", lambda name: None)
    graph = render_switch_model(switches, data.images[:2], data.labels[:2])
    assert graph.png is None and graph.missing == (
        "The model is not drawn: Graphviz's dot program is not installed (Debian: apt-get install graphviz).")
    assert "alpha" in graph.source  # the graph itself was still built


def test_without_the_graphviz_package_the_sentence_says_so(switches, monkeypatch):
    import sys

    switches, data = switches
    monkeypatch.setitem(sys.modules, "graphviz", None)  # import graphviz now raises ImportError
    graph = render_switch_model(switches, data.images[:2], data.labels[:2])
    assert graph.png is None and graph.source is None and "graphviz Python package is not installed" in graph.missing
