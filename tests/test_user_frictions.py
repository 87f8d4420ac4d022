"""The frictions a new user met with their own network (issue 32), each reproduced as the user met it.

A ``mynets.py`` in the working folder (never on ``sys.path``), ``save_pruned`` with a path
or a callable factory, weights saved the ways users save them (a whole model, DataParallel,
a training checkpoint), per-channel normalisation, a validation folder of their own.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pyro_dirichlet.app.cli import main
from pyro_dirichlet.data.normalization import Normalization, parse_normalize
from pyro_dirichlet.io.factories import FactoryError, import_factory
from pyro_dirichlet.io.serialization import load_pruned, save_pruned
from pyro_dirichlet.surgery import prune_channels
from user_journey import CIFAR_MEAN, CIFAR_STD, MYNETS, write_image_folder


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """The user's working folder holding mynets.py and images/, as the current directory."""
    (tmp_path / "mynets.py").write_text(MYNETS)
    write_image_folder(tmp_path / "images", per_class=8, size=8)
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    yield tmp_path
    sys.modules.pop("mynets", None)
    assert sys.path == path_before  # the folder was never put on the path


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- 1. --model mynets:factory from the folder holding mynets.py ---------------------------------


def test_a_factory_module_in_the_working_folder_is_found_by_its_path(user_folder):
    factory = import_factory("mynets:factory")
    assert type(factory(width=4)).__name__ == "SmallResNet"
    assert str(user_folder) not in sys.path and "" not in sys.path[1:]
    assert Path(sys.modules["mynets"].__file__) == user_folder / "mynets.py"


def test_a_file_in_the_working_folder_never_shadows_an_installed_module(user_folder):
    # colorsys is in the standard library: a colorsys.py beside the run is not what gets imported.
    (user_folder / "colorsys.py").write_text("def factory():\n    raise AssertionError('the local file ran')\n")
    with pytest.raises(FactoryError, match="has no 'factory'"):
        import_factory("colorsys:factory")


def test_a_missing_factory_module_names_the_working_folder(user_folder):
    with pytest.raises(FactoryError) as error:
        import_factory("not_my_nets:factory")
    message = str(error.value)
    assert f"there is no not_my_nets.py in the current folder {str(user_folder)!r}" in message
    assert message.count(".") >= 1 and message.endswith(".") and "\n" not in message


# --- 2. save_pruned with a factory path or callable ----------------------------------------------


@pytest.mark.parametrize("given", ["path", "callable"])
def test_save_pruned_takes_a_factory_path_or_the_callable(user_folder, given):
    network = import_factory("mynets:factory")(num_classes=5, width=8).eval()
    mynets = sys.modules["mynets"]
    example = torch.randn(2, 3, 8, 8)
    pruned = prune_channels(network, {"head": [0, 2, 5]}, example).eval()
    factory = "mynets:factory" if given == "path" else mynets.factory
    save_pruned(pruned, user_folder / "small", factory=factory, factory_args={"num_classes": 5, "width": 8})
    spec = json.loads((user_folder / "small.json").read_text())
    assert spec["architecture"]["factory"] == {"path": "mynets:factory", "args": {"num_classes": 5, "width": 8}}
    for named in ("mynets:factory", mynets.factory):
        loaded = load_pruned(user_folder / "small", factory=named)
        assert torch.allclose(loaded(example), pruned(example), atol=1e-6)


def test_load_pruned_hands_back_the_recorded_deployment_without_touching_the_networks_own(user_folder):
    from pyro_dirichlet.io.deployment import read_deployment

    network = import_factory("mynets:factory")(width=4).eval()
    metadata = {"classes": ["a", "b"], "source": {"baseline_sha256": "ab" * 32, "weights_sha256": None},
                "preprocessing": {"input_shape": [3, 8, 8], "channel_order": "RGB", "image_size": 8,
                                  "normalize": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}}}
    save_pruned(network, user_folder / "net", factory="mynets:factory", factory_args={"width": 4}, metadata=metadata)
    loaded = load_pruned(user_folder / "net", factory="mynets:factory")
    assert loaded.deployment == read_deployment(user_folder / "net")
    assert loaded.deployment.classes == ("a", "b") and loaded.deployment.image_size == 8
    assert loaded.deployment.mean == (0.5, 0.4, 0.3) and loaded.deployment.source_sha256 == "ab" * 32
    # A network whose class has an attribute of that name keeps it.
    mynets = sys.modules["mynets"]
    mynets.SmallResNet.deployment = "the user's own"
    try:
        assert load_pruned(user_folder / "net", factory="mynets:factory").deployment == "the user's own"
    finally:
        del mynets.SmallResNet.deployment


def test_save_pruned_refuses_a_lambda_in_one_sentence(user_folder):
    network = import_factory("mynets:factory")(width=4)
    with pytest.raises(TypeError, match="has no module:name path to record: pass a function or class defined at"):
        save_pruned(network, user_folder / "small", factory=lambda: network)


# --- 3. per-channel --normalize, and a line when the tool measures its own ------------------------


def test_normalize_takes_one_mean_and_std_per_channel_or_one_for_all():
    assert parse_normalize("0.4914,0.4822,0.4465/0.247,0.2435,0.2616") == Normalization(CIFAR_MEAN[:2] + (0.4465,),
                                                                                     (0.247, 0.2435, 0.2616))
    assert parse_normalize("0.5,0.25") == Normalization((0.5,), (0.25,))
    for bad in ("0.1,0.2/0.3", "0.5", "0.1,0.2,0.3/0.3,0,0.1", "a/b"):
        with pytest.raises(ValueError, match="--normalize expects"):
            parse_normalize(bad)


def save_weights(path: Path, wrap=None, **saved) -> nn.Module:
    torch.manual_seed(0)
    network = import_factory("mynets:factory")(width=4)
    torch.save(wrap(network) if wrap else network.state_dict(), path)
    return network


TRAIN = ["train", "--model", "mynets:factory", "--model-arg", "width=4", "--dataset", "imagefolder:images"]


def test_the_tool_says_when_it_measures_its_own_normalisation(user_folder, capsys):
    save_weights(user_folder / "w.pt")
    code, out, err = run_cli([*TRAIN, "--out", "run", "--weights", "w.pt"], capsys)
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if "own per-channel statistics" in line]
    measured = json.loads((user_folder / "run" / "run.json").read_text())["data"]["normalize"]
    assert ",".join(f"{v:.4f}" for v in measured["mean"]) in line
    assert "--normalize MEAN_R,MEAN_G,MEAN_B/STD_R,STD_G,STD_B" in line
    code, out, err = run_cli([*TRAIN, "--out", "run2", "--weights", "w.pt", "--normalize", "0.5,0.4,0.3/0.2,0.2,0.2"],
                             capsys)
    assert code == 0, err
    assert "own per-channel statistics" not in out
    data = json.loads((user_folder / "run2" / "run.json").read_text())["data"]
    assert data["normalize"] == {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}


# --- 4. --weights as users save them --------------------------------------------------------------


def test_a_pickled_whole_model_gets_one_clean_sentence_advising_state_dict(user_folder, capsys):
    save_weights(user_folder / "whole.pt", wrap=lambda network: network)
    code, _, err = run_cli([*TRAIN, "--out", "run", "--weights", "whole.pt"], capsys)
    assert code == 2
    message = err.strip()
    assert "\x1b" not in message and "\n" not in message
    assert message.endswith("torch.save(model.state_dict(), path) and pass that file.")
    assert not (user_folder / "run").exists()


def test_dataparallel_prefixes_are_stripped_with_a_note(user_folder, capsys):
    network = save_weights(user_folder / "dp.pt", wrap=lambda network: nn.DataParallel(network).state_dict())
    code, out, err = run_cli([*TRAIN, "--out", "run", "--weights", "dp.pt"], capsys)
    assert code == 0, err
    assert "stripped the 'module.' prefix" in out
    from pyro_dirichlet.baselines.trained import load_checkpoint

    state, _ = load_checkpoint(user_folder / "run" / "baseline.safetensors")
    assert all(torch.equal(state[key], value) for key, value in network.state_dict().items())


def test_a_checkpoint_dict_names_its_keys_and_the_flag_and_weights_key_reads_it(user_folder, capsys):
    network = save_weights(user_folder / "ckpt.pt", wrap=lambda network: {
        "epoch": 7, "model_state_dict": network.state_dict(), "optimizer_state_dict": {"state": {}, "param_groups": []}})
    code, _, err = run_cli([*TRAIN, "--out", "run", "--weights", "ckpt.pt"], capsys)
    assert code == 2
    assert "is a checkpoint dict with keys 'epoch', 'model_state_dict', 'optimizer_state_dict'" in err
    assert "pass --weights-key model_state_dict" in err
    code, _, err = run_cli([*TRAIN, "--out", "run", "--weights", "ckpt.pt", "--weights-key", "model_state"], capsys)
    assert code == 2 and "give one of them to --weights-key" in err
    code, _, err = run_cli([*TRAIN, "--out", "run", "--weights", "ckpt.pt", "--weights-key", "model_state_dict"], capsys)
    assert code == 0, err
    manifest = json.loads((user_folder / "run" / "run.json").read_text())
    assert manifest["weights"]["sha256"] == hashlib.sha256((user_folder / "ckpt.pt").read_bytes()).hexdigest()
    assert network.state_dict().keys()


def test_weights_key_without_weights_is_refused(user_folder, capsys):
    code, _, err = run_cli([*TRAIN, "--out", "run", "--weights-key", "model_state_dict"], capsys)
    assert code == 2 and "--weights-key names the entry of a --weights checkpoint dict" in err


# --- 5. the validation split ----------------------------------------------------------------------


def test_a_validation_folder_is_used_and_a_carved_one_is_said(user_folder, capsys):
    save_weights(user_folder / "w.pt")
    code, out, err = run_cli([*TRAIN, "--out", "run", "--weights", "w.pt"], capsys)
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if "carved from the training images" in line]
    assert "--validation-dir DIR" in line
    write_image_folder(user_folder / "held-out", per_class=3, size=8, seed=5)
    code, out, err = run_cli([*TRAIN, "--out", "run2", "--weights", "w.pt", "--validation-dir", "held-out"], capsys)
    assert code == 0, err
    assert "carved from the training images" not in out
    data = json.loads((user_folder / "run2" / "run.json").read_text())["data"]
    assert data["validation"] == 15 and data["validation_dir"] == str(user_folder / "held-out")
    code, _, err = run_cli([*TRAIN, "--out", "run3", "--weights", "w.pt", "--validation-dir", "nowhere"], capsys)
    assert code == 2 and "given as the validation folder does not exist" in err
