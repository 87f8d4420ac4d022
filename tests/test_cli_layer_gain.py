"""`--gain` on the command line (and its older spelling `--layer-gain`): fitted, recorded, used again by the report."""

import json

import pytest

from pyro_dirichlet.app.cli import main
from pyro_dirichlet.posterior import load_posterior
from test_cli import manifest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_layer_gain_is_fitted_recorded_and_rebuilt_by_the_report(run_copy, small_mnist_everywhere, capsys):
    common = ["--run", str(run_copy), "--quiet"]
    assert main(["fit", *common, "--no-layer-gain"]) == 0  # the paper's model: no gain sites
    plain = load_posterior(run_copy / "posterior.nc")
    assert not any(name.endswith(".switch.gain") for name in plain["guide_parameters"].data_vars)
    assert manifest(run_copy)["steps"]["fit"]["config"]["gain"] == "none"
    assert main(["fit", *common, "--gain", "layer", "--optimizer", "adam"]) == 0  # the earlier default
    assert manifest(run_copy)["steps"]["fit"]["config"]["gain"] == "layer"
    assert manifest(run_copy)["steps"]["fit"]["config"]["fit"]["optimizer"] == "adam"
    layer_gains = load_posterior(run_copy / "posterior.nc")["guide_parameters"]
    assert all(layer_gains[f"{layer}.switch.gain"].shape == () for layer in ("conv1", "conv2", "fc1"))
    assert main(["fit", *common]) == 0  # one gain per channel, LayerAdam: the defaults
    assert manifest(run_copy)["steps"]["fit"]["config"]["gain"] == "channel"
    assert manifest(run_copy)["steps"]["fit"]["config"]["fit"]["optimizer"] == "layer-adam"
    stored = load_posterior(run_copy / "posterior.nc")["guide_parameters"]
    gains = [name for name in stored.data_vars if name.endswith(".switch.gain")]
    assert sorted(gains) == sorted(f"{layer}.switch.gain" for layer in ("conv1", "conv2", "fc1"))
    assert [stored[f"{layer}.switch.gain"].size for layer in ("conv1", "conv2", "fc1")] == [20, 50, 500]  # LeNet-5's widths
    assert main(["prune", *common]) == 0 and main(["finetune", *common, "--finetune-epochs", "0"]) == 0
    assert main(["report", *common]) == 0
    report = json.loads((run_copy / "report.json").read_text())
    assert report["gain"] == "channel" and "a learned gain per channel" in (run_copy / "report.md").read_text()
    capsys.readouterr()
    assert main(["fit", *common, "--gain", "channel", "--no-layer-gain"]) == 2  # two spellings that disagree
    assert "not both" in capsys.readouterr().err


def test_layer_gain_from_a_config_file_must_be_a_boolean(run_copy, small_mnist_everywhere, tmp_path, capsys):
    config = tmp_path / "fit.toml"
    config.write_text('layer_gain = "yes"\n')
    before = manifest(run_copy)
    assert main(["fit", "--run", str(run_copy), "--quiet", "--config", str(config)]) == 2
    assert "'layer_gain' must be true or false" in capsys.readouterr().err
    assert manifest(run_copy) == before  # nothing rewritten
