"""``--on-unsupported``: the CLI refuses a network whose channels it cannot follow (naming every
such layer, exit status 2) or, with ``skip``, prunes the rest and the report lists what it skipped."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_dirichlet.app.cli import main
from pyro_dirichlet.baselines import MODELS, ModelEntry
from pyro_dirichlet.io.serialization import register_architecture
from pyro_dirichlet.repair.train import TrainConfig


@register_architecture  # so that the pruned network saves and loads
class Cumulative(nn.Module):
    """An MNIST net with a cumulative sum over conv1's channels, which the analysis cannot follow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5)
        self.conv2 = nn.Conv2d(4, 8, 5)
        self.fc1 = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = torch.cumsum(F.relu(self.conv1(x)), dim=1)
        x = F.max_pool2d(F.relu(self.conv2(F.max_pool2d(x, 2))), 2)
        return self.fc1(torch.flatten(x, 1))


@pytest.fixture
def cumulative_model(monkeypatch):
    entry = ModelEntry(
        name="cumulative", build=Cumulative, dataset="mnist",
        train=TrainConfig(epochs=1, batch_size=128, lr=1e-3, optimizer="adam"), default_keep={"conv2": 4},
    )
    monkeypatch.setitem(MODELS, "cumulative", entry)


def test_fit_refuses_an_unsupported_layer_by_default_and_skips_it_when_told(
    tmp_path, small_mnist_everywhere, cumulative_model, capsys
):
    out = tmp_path / "run"
    common = ["--run", str(out), "--quiet"]
    assert main(["train", "--out", str(out), "--model", "cumulative", "--subset", "400", "--train-epochs", "1", "--quiet"]) == 0
    before = (out / "run.json").read_bytes()
    assert main(["fit", *common]) == 2
    error = capsys.readouterr().err
    assert "layer 'conv1'" in error and "(torch.cumsum in the top-level forward)" in error and "on_unsupported='skip'" in error
    assert not (out / "posterior.nc").exists() and (out / "run.json").read_bytes() == before

    assert main(["fit", *common, "--on-unsupported", "skip"]) == 0
    record = json.loads((out / "run.json").read_text())["steps"]["fit"]
    assert record["config"]["on_unsupported"] == "skip"
    skipped = {row["layer"]: row for row in record["result"]["skipped_layers"]}
    assert skipped["conv1"]["unsupported"] and "its effect on channels is not known" in skipped["conv1"]["reason"]
    assert not skipped["fc1"]["unsupported"]  # the classifier, by design
    for argv in (["prune", *common], ["finetune", *common, "--finetune-epochs", "1"], ["report", *common, "--latency-batch", "8"]):
        assert main(argv) == 0, argv
    report = json.loads((out / "report.json").read_text())
    assert report["on_unsupported"] == "skip" and list(report["pruned"]["architecture"]) == ["conv2"]
    markdown = (out / "report.md").read_text()
    assert "## Layers left unpruned" in markdown
    assert "| conv1 | cannot follow the output channels of layer 'conv1'" in markdown and "| not followed |" in markdown
    assert "Layers left unpruned" in (out / "report.html").read_text()


def test_a_bad_on_unsupported_value_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--run", str(tmp_path / "run"), "--on-unsupported", "ignore"])
    assert stopped.value.code == 2
    assert "--on-unsupported: invalid choice: 'ignore'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
