"""The report step: report.json, a self-contained report.html and report.md with its PNGs."""

import base64
import json
import re
from html.parser import HTMLParser

import pytest
import torch

from pyro_dirichlet.posterior import plot_forest, sample_posterior

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    assert report["prior_concentration"] == 1.0
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
    assert len(images) == 2 + 3  # ELBO, mass curves, one forest plot per layer
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(attrs["src"].split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert not [tag for tag, _ in found if tag in ("script", "link", "iframe", "object", "embed")]
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", page)
    assert "Keep decisions" in page and "straddl" in page


def test_report_markdown_references_png_files_beside_it(small_run):
    text = (small_run / "report.md").read_text()
    names = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(names) == 5
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
