"""Shared fixtures: tiny networks built in the test, and real MNIST where the data is present."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyro
import pytest
import torch
from torch import nn
import torch.nn.functional as F

torch.set_num_threads(min(2, torch.get_num_threads()))

# A relative data folder (PYRO_DIRICHLET_DATA=../shared/data) means the folder as seen from
# where pytest started; the README and docs tests that run commands in a temporary folder would
# otherwise look for it there.
if os.environ.get("PYRO_DIRICHLET_DATA"):
    os.environ["PYRO_DIRICHLET_DATA"] = str(Path(os.environ["PYRO_DIRICHLET_DATA"]).resolve())


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    # The param store is global: every test starts without another test's switches.
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def one_thread():
    """One torch thread: two OpenMP threads on a busy two-core machine run tiny convolutions ~30x slower,
    and one thread everywhere (subprocesses too) keeps every run's arithmetic alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyCNN(nn.Module):
    """conv(1->6) -> relu -> pool -> conv(6->8) -> relu -> pool -> flatten -> fc(32->12) -> relu -> fc(12->3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1 = nn.Linear(8 * 2 * 2, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture
def tiny_images() -> torch.Tensor:
    return torch.randn(16, 1, 14, 14, generator=torch.Generator().manual_seed(1))


def mnist_root() -> Path | None:
    root = os.environ.get("PYRO_DIRICHLET_DATA")
    candidates = [Path(root)] if root else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    for candidate in candidates:
        if (candidate / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
            return candidate
    return None


@pytest.fixture(scope="session")
def mnist():
    """Real MNIST (55k/5k/10k); the tests that need it fail loudly in CI if it is missing."""
    root = mnist_root()
    if root is None:
        if os.environ.get("CI"):
            pytest.fail("MNIST not found: CI must set PYRO_DIRICHLET_DATA to ../shared/data")
        pytest.skip("MNIST not found: set PYRO_DIRICHLET_DATA to a folder holding MNIST/raw")
    from pyro_dirichlet.data import load_mnist

    return load_mnist(root)


def shrink(data, train: int, validation: int, test: int):
    """Seeded subsets of every split of ``data`` (real MNIST, cut down so tests stay fast)."""
    return data.subset(train=train, validation=validation, test=test, seed=0)


@pytest.fixture(scope="session")
def mnist_small(mnist):
    """Real MNIST cut to 4k train, 1k validation, 2k test, for end-to-end tests."""
    return shrink(mnist, 4000, 1000, 2000)


@pytest.fixture
def small_mnist_everywhere(monkeypatch, mnist_small, tmp_path):
    """Make load_dataset("mnist") return the small subsets and cache baselines under tmp_path."""
    from pyro_dirichlet import data

    monkeypatch.setitem(data._LOADERS, "mnist", lambda data_dir=None, **kwargs: mnist_small)
    monkeypatch.setenv("PYRO_DIRICHLET_CACHE", str(tmp_path / "cache"))
    return mnist_small


@pytest.fixture(autouse=True)
def one_epoch_fits(request, monkeypatch):
    """The suite's fits run one epoch unless a test is marked ``converged_fit``.

    The library's default fit runs until its stopping rule holds (hundreds of steps at
    least); the tests that exercise the run directory, the CLI's options and the bad inputs
    need a posterior, not a converged one, so they take the paper's one epoch, as
    ``--epochs 1`` would. Tests of the default itself are marked and see the real default.
    """
    if request.node.get_closest_marker("converged_fit"):
        return
    import inspect

    from pyro_dirichlet.app import cli
    from pyro_dirichlet.infer.fit import FitConfig

    names = list(inspect.signature(FitConfig.__init__).parameters)[1:]
    defaults = list(FitConfig.__init__.__defaults__)
    defaults[names.index("epochs") - (len(names) - len(defaults))] = 1
    monkeypatch.setattr(FitConfig.__init__, "__defaults__", tuple(defaults))
    monkeypatch.setitem(cli.DEFAULTS, "epochs", 1)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, mnist_small):
    """A run directory built step by step with the CLI on 400 MNIST images (1 training epoch, 1 fine-tune epoch).

    Tests that change a run directory work on ``run_copy``.
    """
    from pyro_dirichlet import data
    from pyro_dirichlet.app.cli import main

    root = tmp_path_factory.mktemp("small-run")
    out = root / "run"
    common = ["--run", str(out), "--quiet"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(data._LOADERS, "mnist", lambda data_dir=None, **kwargs: mnist_small)
        steps = [
            ["train", "--out", str(out), "--subset", "400", "--train-epochs", "1", "--cache-dir", str(root / "cache"), "--quiet"],
            ["fit", *common, "--epochs", "1"],
            ["prune", *common],
            ["finetune", *common, "--finetune-epochs", "1"],
            ["report", *common, "--latency-batch", "32"],
        ]
        for argv in steps:
            assert main(argv) == 0, argv
    return out


@pytest.fixture
def run_copy(small_run, tmp_path):
    """A private copy of the session's small run directory, to change."""
    return shutil.copytree(small_run, tmp_path / "run")


def cifar_shaped(train: int = 32, validation: int = 16, test: int = 16, size: int = 8):
    """Random CIFAR-10-like splits; 8x8 images (ResNet-20 pools globally) keep a CPU test to seconds."""
    from pyro_dirichlet.data import DataSplits, Split

    generator = torch.Generator().manual_seed(0)

    def split(n):
        return Split(torch.randn(n, 3, size, size, generator=generator), torch.randint(0, 10, (n,), generator=generator))

    return DataSplits(split(train), split(validation), split(test), "cifar10", 10, (3, size, size))


def random_resnet20() -> nn.Module:
    """The registry's ResNet-20 at a fixed random initialisation, in eval mode."""
    from pyro_dirichlet.baselines import get_model_entry

    torch.manual_seed(0)
    net = get_model_entry("resnet20").build().eval()
    with torch.no_grad():  # distinct BatchNorm scales, so BN-gamma is not a tie everywhere
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.2, 1.5)
    return net


@pytest.fixture
def count_traces():
    """How many times any model has been traced (by the structure analysis, through fx) since the fixture was made."""
    from pyro_dirichlet.structure import recording_traces

    with recording_traces() as traced:
        yield lambda: len(traced)
