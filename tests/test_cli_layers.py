"""``pyro-dirichlet layers``: the layer names --layers and --keep take, learned before any fit (issue 32)."""

import sys

import pytest
import torch

from pyro_dirichlet.app.cli import main
from pyro_dirichlet.io.factories import import_factory
from pyro_dirichlet.measure import count_flops, layer_costs
from user_journey import MYNETS


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(MYNETS)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("mynets", None)


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows_of(out: str) -> dict[str, list[str]]:
    """The table's rows by layer name, split on runs of spaces."""
    lines = out.split("\n\n")[1].splitlines()[1:]
    return {line.split()[0]: line.split(None, 4) for line in lines}


def test_layers_lists_groups_and_single_layers_with_widths_and_flops_shares(user_folder, capsys):
    torch.manual_seed(0)
    network = import_factory("mynets:factory")(width=8)
    torch.save(network.state_dict(), user_folder / "w.pt")
    code, out, err = run_cli(["layers", "--model", "mynets:factory", "--model-arg", "width=8", "--weights", "w.pt",
                              "--input-shape", "3,16,16"], capsys)
    assert code == 0, err
    rows = rows_of(out)
    assert set(rows) == {"stem", "layer1.conv1", "head"}
    example = torch.zeros(1, 3, 16, 16)
    total = count_flops(network, example)
    costs = layer_costs(network, ["stem", "layer1.conv1", "layer1.conv2", "head"], example)
    # The residual group: stem and layer1.conv2 write into one stream, pruned together only with --coupled group.
    assert rows["stem"][1] == "8" and rows["stem"][3:] == ["--coupled", "group   stem, layer1.conv2"]
    assert rows["stem"][2] == f"{(costs['stem']['flops'] + costs['layer1.conv2']['flops']) / total:.1%}"
    assert rows["layer1.conv1"][2] == f"{costs['layer1.conv1']['flops'] / total:.1%}"
    assert rows["head"][1] == "16" and rows["head"][3].startswith("the")
    assert f"{total:,} FLOPs per image" in out
    assert "fc: its output channels reach the network's output" in out
    assert "coupled='group'" not in out


def test_layers_names_the_missing_input_shape_and_weights_that_do_not_fit(user_folder, capsys):
    code, _, err = run_cli(["layers", "--model", "mynets:factory"], capsys)
    assert code == 2 and "needs --input-shape C,H,W" in err
    torch.save(import_factory("mynets:factory")(width=4).state_dict(), user_folder / "w.pt")
    code, _, err = run_cli(["layers", "--model", "mynets:factory", "--weights", "w.pt", "--input-shape", "3,8,8"], capsys)
    assert code == 2 and "does not fit the model" in err and err.count("\n") == 1


def test_layers_of_a_registered_model_uses_its_data_sets_shape(capsys):
    code, out, err = run_cli(["layers", "--model", "lenet5"], capsys)
    assert code == 0, err
    assert out.startswith("lenet5 on 1x28x28 inputs:")
    assert set(rows_of(out)) == {"conv1", "conv2", "fc1"}
