"""The README's hierarchical-prior example runs as written (on a tiny network, to stay fast)."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pyro_dirichlet.data import Split

README = Path(__file__).resolve().parents[1] / "README.md"


def prior_example() -> str:
    text = README.read_text()
    section = text[text.index("### Priors as Pyro models"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.usefixtures("one_thread")
def test_readme_hierarchical_prior_example_runs(tiny_cnn, capsys):
    images = torch.randn(320, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = tiny_cnn.eval()(images).argmax(1)
    data = SimpleNamespace(train=Split(images[:256], labels[:256]), validation=Split(images[256:], labels[256:]))
    namespace = {"net": tiny_cnn, "example": images[:2], "data": data}
    exec(compile(prior_example(), str(README), "exec"), namespace)
    prior_mean, posterior_mean = map(float, capsys.readouterr().out.split())
    assert prior_mean == pytest.approx(1.0, abs=0.15)  # Gamma(2, 2), 1,000 draws
    assert posterior_mean > 0 and posterior_mean != prior_mean
    tree = namespace["posterior"]
    assert {"log_likelihood", "posterior_predictive", "observed_data"} <= set(tree.children)
