"""One-argument budgets: ``--keep 0.5`` (one fraction of every switched layer) and the keep-set
error for a layer of a coupling group, spelled for the CLI and for Python."""

import json

import pytest
import torch

from pyro_dirichlet.app.cli import build_parser, main, parse_target
from pyro_dirichlet.app.steps import PruneOptions
from pyro_dirichlet.planning.plan import keep_counts, per_layer
from pyro_dirichlet.structure.naming import CLI_SPELLING, PYTHON_SPELLING, keep_name_error
from coupled_networks import Residual


def test_a_bare_fraction_is_one_target_for_every_layer():
    assert parse_target("0.5") == 0.5 and parse_target("conv1=5,fc1=0.5") == {"conv1": 5, "fc1": 0.5}
    for bad in ("0", "1.5", "half"):
        with pytest.raises(Exception, match="--keep"):
            parse_target(bad)
    assert per_layer(0.25, ["a", "b"]) == {"a": 0.25, "b": 0.25}
    assert keep_counts({"a": 8, "b": 20}, 0.25) == {"a": 2, "b": 5}
    assert PruneOptions(keep=0.5).keep == 0.5
    with pytest.raises(ValueError, match="keep must be a number in \\(0, 1\\]"):
        PruneOptions(keep=1.5)
    assert build_parser().parse_args(["prune", "--run", "r", "--keep", "0.5"]).keep == 0.5


def test_cli_keep_half_of_every_layer(run_copy):
    assert main(["prune", "--run", str(run_copy), "--keep", "0.5", "--quiet"]) == 0
    result = json.loads((run_copy / "run.json").read_text())["steps"]["prune"]["result"]
    assert result["architecture"] == {"conv1": 10, "conv2": 25, "fc1": 250}


def test_a_group_member_in_a_keep_set_names_the_group_and_the_option():
    net, x = Residual().eval(), torch.zeros(2, 3, 8, 8)
    # Under the default coupling the group is a site named after its first member.
    message = keep_name_error(net, x, ["block.0"], ["stem", "inner"])
    assert "'block.0' is coupled with 'stem'" in message and "group 'stem'" in message and "name 'stem' instead" in message
    # A fit under coupled='skip' switched no group: the message says how to prune it, spelled for the caller.
    cli = keep_name_error(net, x, ["block.0"], ["inner"], spelling=CLI_SPELLING)
    assert "unpruned under --coupled skip: fit with --coupled group" in cli and "name 'stem'" in cli
    python = keep_name_error(net, x, ["stem"], ["inner"], spelling=PYTHON_SPELLING)
    assert "coupled='skip': fit with coupled='group'" in python
    assert "'nothing' is not a switched layer" in keep_name_error(net, x, ["nothing"], ["inner"])
