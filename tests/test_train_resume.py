"""A training killed between epochs resumes from its per-epoch file and ends bit-identical."""

import pytest
import torch
from torch import nn

import pyro_dirichlet.repair.train as training
from pyro_dirichlet.data import DataSplits, Split
from pyro_dirichlet.repair.train import TrainConfig, train_classifier

RECIPE = TrainConfig(
    epochs=4, batch_size=32, lr=0.1, optimizer="sgd", nesterov=True, schedule="onecycle", label_smoothing=0.1
)


@pytest.fixture
def data() -> DataSplits:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 1, 4, 4, generator=g), torch.randint(0, 3, (300,), generator=g)
    return DataSplits(
        train=Split(x[:200], y[:200]), validation=Split(x[200:250], y[200:250]), test=Split(x[250:], y[250:]),
        name="synthetic", num_classes=3, input_shape=(1, 4, 4),
    )


def net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


class Killed(Exception):
    pass


def kill_after_validations(monkeypatch, count: int) -> None:
    # accuracy() runs once per epoch on the validation split: raising on a later call is a
    # kill between epochs, after the resume file of the earlier epochs was written.
    original, calls = training.accuracy, [0]

    def accuracy(*args, **kwargs):
        calls[0] += 1
        if calls[0] > count:
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "accuracy", accuracy)


def test_killed_training_resumes_bit_identical_and_removes_its_file(tmp_path, data, monkeypatch):
    reference = net()
    train_classifier(reference, data, RECIPE, progress=False)
    resume = tmp_path / "run.resume.pt"
    with monkeypatch.context() as patch:
        kill_after_validations(patch, 2)
        with pytest.raises(Killed):
            train_classifier(net(), data, RECIPE, progress=False, resume_from=resume)
    assert resume.is_file()
    assert torch.load(resume, weights_only=True)["result"]["epochs"] >= 1
    resumed = net()
    train_classifier(resumed, data, RECIPE, progress=False, resume_from=resume)
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert not resume.exists()


def test_a_resume_file_of_another_recipe_is_ignored_with_a_warning(tmp_path, data, monkeypatch):
    resume = tmp_path / "run.resume.pt"
    with monkeypatch.context() as patch:
        kill_after_validations(patch, 2)
        with pytest.raises(Killed):
            train_classifier(net(), data, RECIPE, progress=False, resume_from=resume)
    other = TrainConfig(epochs=4, batch_size=32, lr=0.05, optimizer="sgd", schedule="onecycle")
    reference = net()
    train_classifier(reference, data, other, progress=False)
    with pytest.warns(RuntimeWarning, match="written for another recipe; starting over"):
        started_over = net()
        train_classifier(started_over, data, other, progress=False, resume_from=resume)
    for (name, a), (_, b) in zip(reference.state_dict().items(), started_over.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_truncated_resume_file_is_ignored_with_a_warning(tmp_path, data):
    resume = tmp_path / "run.resume.pt"
    resume.write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(RuntimeWarning, match="could not be read"):
        train_classifier(net(), data, RECIPE, progress=False, resume_from=resume)
    assert not resume.exists()
