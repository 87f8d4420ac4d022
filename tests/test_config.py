"""The --config TOML file: keys as the command line spells them, values converted and checked like flags."""

from pathlib import Path

import pytest

from pyro_dirichlet.app.cli import _build
from pyro_dirichlet.app.config import ConfigError, config_values, read_config


@pytest.fixture(scope="module")
def actions():
    _, options = _build()
    return options, [action for table in options.values() for action in table.values()]


def values(actions, command, table):
    options, every = actions
    return config_values(table, every, set(options[command]))


def test_keys_are_option_names_with_dashes_or_underscores(actions):
    got = values(actions, "run", {"finetune-epochs": 2, "finetune_lr": 0.001, "data-dir": "/d", "quiet": True,
                                  "keep": {"conv1": 5, "fc1": 0.5}, "layers": ["conv1", "fc1"], "prior": 1})
    assert got == {"finetune_epochs": 2, "finetune_lr": 0.001, "data_dir": Path("/d"), "quiet": True,
                   "keep": {"conv1": 5, "fc1": 0.5}, "layers": ("conv1", "fc1"), "prior": 1.0}
    assert values(actions, "run", {"keep": "conv1=5", "layers": "conv1, fc1"}) == {"keep": {"conv1": 5}, "layers": ("conv1", "fc1")}


def test_run_is_the_out_of_later_steps_and_other_steps_keys_are_ignored(actions):
    assert values(actions, "fit", {"run": "runs/a", "finetune-epochs": 3, "prior": 0.5}) == {"out": Path("runs/a"), "prior": 0.5}


@pytest.mark.parametrize(("table", "message"), [
    ({"priorr": 0.5}, r"unknown key 'priorr'; valid keys: .*\bprior\b"),
    ({"config": "x.toml"}, "unknown key 'config'"),
    ({"epochs": 1.5}, "'epochs' must be an integer"),
    ({"quiet": "yes"}, "'quiet' must be true or false"),
    ({"model": "resnet9000"}, "valid choices: .*lenet5"),
    ({"keep": {"conv1": "five"}}, "must map layers to counts"),
    ({"keep": "conv1"}, "LAYER=COUNT"),
    ({"prior": [1, 2]}, "wrong type"),
])
def test_bad_keys_and_values_are_errors_naming_the_key(actions, table, message):
    with pytest.raises(ConfigError, match=message):
        values(actions, "run", table)


def test_read_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("prior = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_config(bad)


def test_the_cli_page_config_example_is_accepted_by_every_step(actions):
    import re
    import tomllib

    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    table = tomllib.loads(re.search(r"```toml\n(.*?)```", page, re.S).group(1))
    assert values(actions, "fit", table) == {"out": Path("runs/a"), "prior": 0.5, "quiet": True}
    assert values(actions, "prune", table)["keep"] == {"conv1": 5, "conv2": 12, "fc1": 40}
