"""The README's hierarchical-prior example runs as written (on a tiny network, to stay fast); the command-line prior
model of docs/priors-and-posteriors.md imports and its commands parse; docs/results.md's predictive-check table is the
committed measurement."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pyro_dirichlet.data import Split

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PRIORS = ROOT / "docs" / "priors-and-posteriors.md"
RESULTS = ROOT / "docs" / "results.md"


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


def test_readme_command_line_prior_model_imports_and_its_commands_parse(tmp_path, monkeypatch, tiny_cnn, tiny_images):
    import sys

    from pyro_dirichlet.app.cli import build_parser
    from pyro_dirichlet.app.prior_model import load_prior_model
    from pyro_dirichlet.infer.priors import resolve_prior
    from pyro_dirichlet.structure import find_prunable_layers

    text = PRIORS.read_text()
    section = text[text.index("**On the command line** a prior model"):]
    source = re.search(r"```python\n(# my_priors.py\n.*?)```", section, re.S).group(1)
    (tmp_path / "my_priors.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_prior_model adds the current directory
    monkeypatch.delitem(sys.modules, "my_priors", raising=False)
    prior = load_prior_model("my_priors:shared_concentration")
    sys.modules.pop("my_priors", None)
    priors = resolve_prior(prior, find_prunable_layers(tiny_cnn, tiny_images[:2]))
    assert [(site.name, site.distribution) for site in priors.latent_sites] == [("alpha", "Gamma")]
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines()
    assert len(commands) == 2
    for line in commands:
        argv = line.split("#")[0].split()
        assert argv[0] == "pyro-dirichlet"
        assert build_parser().parse_args(argv[1:]).prior_model == "my_priors:shared_concentration"


MEASURED = ROOT / "analysis" / "results" / "lenet5-mnist" / "prior_model_run.json"
ROWS = {
    "draw_averaged": "switched, averaged over 100 posterior draws",
    "posterior_mean": "switched at the exact posterior mean",
    "pruned_before_finetune": "pruned 5-12-40, before fine-tuning",
    "pruned": "pruned and fine-tuned (8 epochs)",
}


def predictive_table(measured: dict) -> str:
    """docs/results.md's table of the predictive check, written from analysis/prior_model_run.py's JSON."""
    runs = [measured["runs"]["dirichlet-1"], measured["runs"]["shared-alpha"]]
    lines = ["| accuracy / expected calibration error, 128 validation images | Dirichlet(1) | shared `alpha ~ Gamma(2, 2)` |",
             "|---|---|---|"]
    for key, label in ROWS.items():
        cells = [f"{run['posterior_predictive']['networks'][key]['accuracy']:.2%} / "
                 f"{run['posterior_predictive']['networks'][key]['calibration_error']:.3f}" for run in runs]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    spread = [run["posterior_predictive"]["accuracy_per_draw"] for run in runs]
    lines.append("| accuracy across the draws: median (95% interval) | "
                 + " | ".join(f"{s['median']:.2%} ({s['q2.5']:.2%}-{s['q97.5']:.2%})" for s in spread) + " |")
    alpha = runs[1]["alpha"]["posterior"]
    lines.append(f"| `alpha`, posterior mean (95% interval) | fixed at 1 | {alpha['mean']:.2f} ({alpha['q2.5']:.2f}-{alpha['q97.5']:.2f}) |")
    lines.append("| elpd_loo | " + " | ".join(f"{run['elpd_loo']:.1f}" for run in runs) + " |")
    lines.append("| pruned and fine-tuned, test accuracy (10,000 images) | "
                 + " | ".join(f"{run['pruned_test_accuracy']:.2%}" for run in runs) + " |")
    return "\n".join(lines)


def test_readme_predictive_check_table_is_the_committed_measurement():
    measured = json.loads(MEASURED.read_text())
    assert predictive_table(measured) in RESULTS.read_text()
    for run in measured["runs"].values():
        assert not run["baseline_trained_in_this_run"] and run["model_drawn"]
