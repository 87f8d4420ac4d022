"""The report step: report.json, a self-contained report.html and report.md with its PNGs."""

import base64
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from pyro_dirichlet.infer.priors import DEFAULT_CONCENTRATION
from pyro_dirichlet.posterior import plot_forest, sample_posterior

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The report's images: ELBO, mass curves, one forest plot per layer, accuracy across draws, and the
#: model drawn by Graphviz's dot where it is installed.
IMAGES = 2 + 3 + 1 + (shutil.which("dot") is not None)


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags(html: str):
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def test_report_json_has_layers_latency_prior_and_decisions(small_run):
    report = json.loads((small_run / "report.json").read_text())
    assert {"model", "dataset", "seed", "baseline", "svi", "pruned", "total_seconds", "layers", "latency"} <= set(report)
    assert report["prior_concentration"] == DEFAULT_CONCENTRATION
    assert report["on_unsupported"] == "raise"
    assert [(row["layer"], row["unsupported"]) for row in report["skipped_layers"]] == [("fc2", False)]
    assert report["pruned"]["architecture"] == {"conv1": 5, "conv2": 12, "fc1": 40}
    assert report["pruned"]["finetune_epochs"] == 1
    assert report["latency"]["batch"] == 32 and report["latency"]["pruned_seconds"] > 0
    for layer, row in report["layers"].items():
        assert row["kept"] == report["pruned"]["architecture"][layer] == len(row["kept_channels"])
        assert row["pruned_params"] < row["params"] and row["pruned_flops"] < row["flops"]
        assert set(row["straddling_channels"]) <= set(range(row["width"]))
        assert set(row["mass_curve"]) == {"0.5", "0.9", "0.99"}
    # The per-layer FLOPs are the whole network's, convolutions and linear layers being all it counts.
    assert sum(row["flops"] for row in report["layers"].values()) + 2 * 500 * 10 == report["baseline"]["flops"]


def test_report_html_is_self_contained(small_run):
    page = (small_run / "report.html").read_text()
    found = tags(page)
    images = [attrs for tag, attrs in found if tag == "img"]
    assert len(images) == IMAGES
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(attrs["src"].split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert not [tag for tag, _ in found if tag in ("script", "link", "iframe", "object", "embed")]
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", page)
    assert "Keep decisions" in page and "straddl" in page


def test_report_markdown_references_png_files_beside_it(small_run):
    text = (small_run / "report.md").read_text()
    names = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(names) == IMAGES
    for name in names:
        assert (small_run / name).read_bytes().startswith(PNG_SIGNATURE)
    assert "| conv1 | 20 | 5 |" in text
    # LeNet-5's classifier has no switch: the report says so, and why.
    assert "## Layers left unpruned" in text
    assert "| fc2 | its output channels reach the network's output" in text and text.rstrip().endswith("| by design |")


def test_forest_plot_of_one_layer(tmp_path):
    posterior = sample_posterior({"conv1": torch.ones(6), "fc1": torch.ones(4)}, num_samples=50)
    path = plot_forest(posterior, tmp_path / "conv1.png", layers=["conv1"])
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError, match="no switch"):
        plot_forest(posterior, tmp_path / "x.png", layers=["conv9"])


def test_the_posterior_predictive_section_compares_networks_on_validation_images(small_run, small_mnist_everywhere):
    from pyro_dirichlet.app.rundir import RunDirectory
    from pyro_dirichlet.app.steps import Runtime, load_baseline, load_run_data
    from pyro_dirichlet.infer.switches import DirichletSwitches
    from pyro_dirichlet.posterior import exact_means, load_posterior
    from pyro_dirichlet.posterior.calibration import expected_calibration_error, predictive_check
    from pyro_dirichlet.io.serialization import load_pruned

    report = json.loads((small_run / "report.json").read_text())
    check = report["posterior_predictive"]
    assert check["split"] == "validation" and set(check["networks"]) == {
        "draw_averaged", "posterior_mean", "pruned_before_finetune", "pruned"}
    tree = load_posterior(small_run / "posterior.nc")
    labels = tree["observed_data"]["obs"].values
    assert check["examples"] == len(labels) == 100 and check["draws"] == 50  # the whole validation cut of a 400-image run; 50 draws by default
    # recomputed here, on the run's validation images: the report's figures are those, never the test split's
    data = load_run_data(RunDirectory(small_run), Runtime())
    images = data.validation.images[: len(labels)]
    assert np.array_equal(data.validation.labels[: len(labels)].numpy(), labels)
    pruned = load_pruned(small_run / "pruned").eval()
    with torch.no_grad():
        probabilities = torch.softmax(pruned(images).double(), -1).numpy()
    assert check["networks"]["pruned"]["accuracy"] == pytest.approx((probabilities.argmax(1) == labels).mean())
    assert check["networks"]["pruned"]["calibration_error"] == pytest.approx(expected_calibration_error(probabilities, labels))
    switches = DirichletSwitches(load_baseline(RunDirectory(small_run)), images[:2])
    means = {layer: torch.as_tensor(mean, dtype=torch.float32) for layer, mean in exact_means(tree).items()}
    with torch.no_grad(), switches.switched(means) as network:
        at_mean = torch.softmax(network(images).double(), -1).numpy()
    assert check["networks"]["posterior_mean"]["accuracy"] == pytest.approx((at_mean.argmax(1) == labels).mean())
    averaged = predictive_check(tree)
    assert check["networks"]["draw_averaged"]["accuracy"] == averaged.accuracy
    spread = check["accuracy_per_draw"]
    assert spread["q2.5"] <= spread["median"] <= spread["q97.5"] and spread["sd"] > 0  # a distribution, not a point
    assert spread["median"] == pytest.approx(np.median(averaged.accuracy_per_draw))
    assert (small_run / report["figures"]["accuracy"]).read_bytes().startswith(PNG_SIGNATURE)
    text = (small_run / "report.md").read_text()
    assert "## Posterior predictive" in text and "| switched at the posterior mean |" in text


def test_the_report_draws_the_model_or_says_why_not(small_run):
    from pyro_dirichlet.app.report import render_html, render_markdown

    report = json.loads((small_run / "report.json").read_text())
    if shutil.which("dot") is None:
        assert report["model_graph"] == {"figure": None, "missing": report["model_graph"]["missing"]}
        assert "dot program is not installed" in report["model_graph"]["missing"]
    else:
        assert report["model_graph"] == {"figure": "report-model.png", "missing": None}
        assert (small_run / "report-model.png").read_bytes().startswith(PNG_SIGNATURE)
    # without a drawing, both pages say why in its place
    report["model_graph"] = {"figure": None, "missing": "The model is not drawn: Graphviz's dot program is not installed."}
    figures = {name: (small_run / name).read_bytes() for name in
               ["report-elbo.png", "report-mass.png", "report-accuracy.png", *report["figures"]["forest"].values()]}
    page = render_html(report, figures)
    assert "The model is not drawn: Graphviz&#x27;s dot program is not installed." in page
    assert "pyro.render_model" not in page
    assert "The model is not drawn" in render_markdown(report)
