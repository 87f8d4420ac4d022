import dataclasses
import hashlib
import json

import pytest
from conftest import shrink
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import pyro_dirichlet.baselines.trained as baseline
from pyro_dirichlet.models import LeNet5Caffe
from pyro_dirichlet.baselines import CACHE_ENV_VAR, load_checkpoint, load_or_train_baseline, resolve_cache_dir, save_checkpoint
from pyro_dirichlet.data import DataSplits
from pyro_dirichlet.repair.train import TrainConfig

TINY = TrainConfig(epochs=1, batch_size=64)


@pytest.fixture(scope="module")
def tiny_mnist(mnist) -> DataSplits:
    return shrink(mnist, 1000, 500, 500)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def files_in(folder) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# --- checkpoints ---------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    model = LeNet5Caffe(conv1=5, conv2=12, fc1=40)
    metadata = {"model": "lenet5", "test_accuracy": 0.9912, "train": {"epochs": 4}, "seed": 0}
    path = tmp_path / "nested" / "lenet5.safetensors"
    save_checkpoint(path, model, metadata)

    state, loaded = load_checkpoint(path)
    assert loaded == metadata
    restored = LeNet5Caffe(conv1=5, conv2=12, fc1=40)
    restored.load_state_dict(state)
    assert same_weights(model, restored)
    assert files_in(path.parent) == ["lenet5.safetensors"]  # no temporary file left behind
    with safe_open(str(path), framework="pt") as checkpoint:
        assert json.loads(checkpoint.metadata()["pyro_dirichlet"]) == metadata


def test_save_checkpoint_rejects_unserialisable_metadata_and_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="metadata"):
        save_checkpoint(tmp_path / "x.safetensors", LeNet5Caffe(), {"when": object()})
    assert files_in(tmp_path) == []


def _serialize_crashes(*args, **kwargs):
    raise OSError("disk full")


def _serialize_returns_unwritable(*args, **kwargs):
    return "not bytes"  # the binary write inside the atomic block fails with TypeError


@pytest.mark.parametrize(
    "broken_serialize, error",
    [(_serialize_crashes, OSError), (_serialize_returns_unwritable, TypeError)],
)
def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, broken_serialize, error):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, LeNet5Caffe(), {"version": "old"})
    monkeypatch.setattr(baseline, "serialize", broken_serialize)
    with pytest.raises(error):
        save_checkpoint(path, LeNet5Caffe(), {"version": "new"})
    assert load_checkpoint(path)[1] == {"version": "old"}
    assert files_in(tmp_path) == ["model.safetensors"]


def test_load_checkpoint_rejects_foreign_safetensors(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="pyro_dirichlet"):
        load_checkpoint(path)


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "env"))
    assert resolve_cache_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_cache_dir() == tmp_path / "env"
    monkeypatch.delenv(CACHE_ENV_VAR)
    assert resolve_cache_dir().parts[-3:] == (".cache", "pyro-dirichlet", "baselines")


# --- load_or_train_baseline ----------------------------------------------------------


def test_second_call_loads_from_cache_without_training(tiny_mnist, tmp_path, monkeypatch):
    first = load_or_train_baseline(
        "lenet5", tiny_mnist, cache_dir=tmp_path, train_config=TINY, progress=False
    )
    assert first.trained_now and first.train_result is not None
    assert first.model.training is False
    (cached,) = tmp_path.iterdir()
    assert cached.name.startswith("lenet5-mnist-") and cached.suffix == ".safetensors"
    metadata = first.metadata
    for field in ["model", "dataset", "train", "seed", "split_seed", "validation_accuracy",
                  "test_accuracy", "params", "torch_version", "created_at"]:
        assert field in metadata
    assert metadata["params"] == 431080
    assert metadata["train"]["epochs"] == 1
    assert metadata["validation_accuracy"] == first.train_result.best_validation_accuracy
    assert 0.5 < metadata["test_accuracy"] <= 1.0

    def no_training(*args, **kwargs):
        raise AssertionError("a cached baseline must not be trained again")

    monkeypatch.setattr(baseline, "train_classifier", no_training)
    second = load_or_train_baseline(
        "lenet5", tiny_mnist, cache_dir=tmp_path, train_config=TINY, progress=False
    )
    assert not second.trained_now and second.train_result is None
    assert second.metadata == first.metadata
    assert second.model.training is False
    assert same_weights(first.model, second.model)


def test_changing_config_or_seed_retrains(tiny_mnist, tmp_path):
    load_or_train_baseline("lenet300", tiny_mnist, cache_dir=tmp_path, train_config=TINY, progress=False)
    other_config = load_or_train_baseline(
        "lenet300", tiny_mnist, cache_dir=tmp_path,
        train_config=dataclasses.replace(TINY, batch_size=100), progress=False,
    )
    other_seed = load_or_train_baseline(
        "lenet300", tiny_mnist, cache_dir=tmp_path, train_config=TINY, seed=1, progress=False
    )
    assert other_config.trained_now and other_seed.trained_now
    assert other_seed.metadata["seed"] == 1 and other_seed.metadata["train"]["seed"] == 1
    assert len(files_in(tmp_path)) == 3


def test_a_warm_restart_starts_from_the_given_weights_and_is_its_own_cache_entry(tiny_mnist, tmp_path):
    first = load_or_train_baseline("lenet300", tiny_mnist, cache_dir=tmp_path, train_config=TINY, progress=False)
    (start,) = (tmp_path / name for name in files_in(tmp_path))
    zero = dataclasses.replace(TINY, epochs=0)  # no training: the result is the starting point itself
    restarted = load_or_train_baseline(
        "lenet300", tiny_mnist, cache_dir=tmp_path / "warm", train_config=zero, progress=False, init_from=start
    )
    assert same_weights(first.model, restarted.model)
    assert restarted.metadata["init_from_sha256"] == hashlib.sha256(start.read_bytes()).hexdigest()
    cold = load_or_train_baseline("lenet300", tiny_mnist, cache_dir=tmp_path / "cold", train_config=zero, progress=False)
    assert cold.metadata["cache_key"] != restarted.metadata["cache_key"] and cold.metadata["init_from_sha256"] is None
    assert not same_weights(first.model, cold.model)
    with pytest.raises(FileNotFoundError, match="init_from"):
        load_or_train_baseline("lenet300", tiny_mnist, cache_dir=tmp_path, train_config=TINY, init_from=tmp_path / "none")
    with pytest.raises(ValueError, match="init_from: .* does not hold this model's weights"):
        load_or_train_baseline("lenet5", tiny_mnist, cache_dir=tmp_path, train_config=TINY, init_from=start)


def test_corrupt_cache_file_is_retrained_with_warning(tiny_mnist, tmp_path):
    first = load_or_train_baseline(
        "lenet300", tiny_mnist, cache_dir=tmp_path, train_config=TINY, progress=False
    )
    (cached,) = tmp_path.iterdir()
    cached.write_bytes(b"\x00garbage, not a safetensors file")

    with pytest.warns(RuntimeWarning, match="retraining"):
        again = load_or_train_baseline(
            "lenet300", tiny_mnist, cache_dir=tmp_path, train_config=TINY, progress=False
        )
    assert again.trained_now
    assert same_weights(first.model, again.model)  # same seed, same recipe, same weights
    state, metadata = load_checkpoint(cached)  # the bad file was replaced by a good one
    assert metadata["cache_key"] == again.metadata["cache_key"]


def test_unknown_model_and_wrong_dataset(tiny_mnist, tmp_path):
    with pytest.raises(ValueError, match="lenet5"):
        load_or_train_baseline("resnet", tiny_mnist, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="mnist"):
        load_or_train_baseline("lenet5", dataclasses.replace(tiny_mnist, name="cifar10"), cache_dir=tmp_path)
