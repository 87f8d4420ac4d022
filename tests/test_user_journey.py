"""Issue 32's bar, end to end: docs/your-network.md's "From your training script to deployment", run as written.

In a fresh folder holding only the page's ``mynets.py`` and generated ImageFolders, the user
trains with their own loop and CIFAR's per-channel normalisation, saves ``state_dict()``,
runs the page's ``pyro-dirichlet layers`` and ``run`` commands without PYTHONPATH (and without
the current folder on ``sys.path``: ``python -P``), then the page's Python: ``load_pruned``,
``torch.export`` and ONNX export, whose outputs must match the pruned model's to 1e-5.
"""

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyro_dirichlet
from pyro_dirichlet.io.factories import import_user_module
from user_journey import (
    CIFAR_MEAN, CIFAR_STD, CLASSES, MYNETS, PAGE, read_images, readme_blocks, train_own_loop, write_image_folder,
)

#: Where the package is, as an installed one would be: never the user's folder.
PACKAGE_ROOT = Path(pyro_dirichlet.__file__).resolve().parent.parent


def commands(block: str) -> list[list[str]]:
    """Each command line of a bash block (continuation lines joined, comments dropped) as its words."""
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def pyro_dirichlet_cli(words: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``pyro-dirichlet ...`` run from ``cwd`` as a user runs it: the package importable, their folder not on the path."""
    assert words[0] == "pyro-dirichlet"
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-P", "-m", "pyro_dirichlet", *words[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    """The user's folder after training their net, the page's commands and its Python."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "mynets.py").write_text(MYNETS)
    write_image_folder(folder / "images", size=32)
    write_image_folder(folder / "held-out", per_class=4, size=32, seed=1)
    previous = Path.cwd()
    os.chdir(folder)
    try:
        mynets = import_user_module("mynets")
        torch.manual_seed(0)
        network = mynets.factory()
        images, labels = read_images(folder / "images")
        train_own_loop(network, images, labels)
        torch.save(network.state_dict(), folder / "w.pt")
        (bash,) = readme_blocks("bash")
        outputs = []
        for words in commands(bash):
            done = pyro_dirichlet_cli(words, folder)
            assert done.returncode == 0, done.stderr[-3000:]
            outputs.append(done.stdout)
        _, deploy, save = readme_blocks("python")
        namespace: dict = {}
        exec(compile(deploy, str(PAGE), "exec"), namespace)
        exec(compile(save, str(PAGE), "exec"), namespace)
        yield folder, network, namespace, outputs
    finally:
        os.chdir(previous)
        sys.modules.pop("mynets", None)


def test_layers_lists_the_networks_switch_sites_before_the_run(journey):
    _, _, _, (listing, _) = journey
    rows = {line.split()[0]: line for line in listing.split("\n\n")[1].splitlines()[1:]}
    assert set(rows) == {"stem", "layer1.conv1", "head"}
    assert "--coupled group" in rows["stem"] and "stem, layer1.conv2" in rows["stem"]


def test_the_run_takes_the_users_weights_normalisation_and_validation_folder(journey):
    folder, _, _, (_, run) = journey
    manifest = json.loads((folder / "runs" / "mine" / "run.json").read_text())
    assert manifest["data"]["normalize"] == {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    assert manifest["data"]["validation_dir"] == str(folder / "held-out")
    assert manifest["data"]["validation"] == 4 * len(CLASSES)
    # Given the user's statistics and a validation folder, the tool has nothing to warn about.
    assert "own per-channel statistics" not in run and "carved from the training images" not in run


def test_pruned_json_records_what_a_deployment_needs(journey):
    folder, _, namespace, _ = journey
    deployment = namespace["deployment"]
    assert deployment.classes == CLASSES
    assert deployment.mean == CIFAR_MEAN and deployment.std == CIFAR_STD
    assert deployment.channel_order == "RGB" and deployment.input_shape == (3, 32, 32)
    assert deployment.weights_sha256 == hashlib.sha256((folder / "w.pt").read_bytes()).hexdigest()
    run = folder / "runs" / "mine"
    assert deployment.source_sha256 == hashlib.sha256((run / "baseline.safetensors").read_bytes()).hexdigest()
    # Preprocessing as the page shows it is the user's own loader's.
    images, _ = read_images(folder / "held-out")
    raw = images * torch.tensor(CIFAR_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(deployment.preprocess(raw), images, atol=1e-5)


def test_the_onnx_file_matches_the_pruned_network_to_1e_5(journey):
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install -e '.[test]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[test]')")
    folder, network, namespace, _ = journey
    model = namespace["model"]
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in network.parameters())
    images, _ = read_images(folder / "held-out")  # another batch size than the export's
    session = ort.InferenceSession(str(folder / "pruned.onnx"), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images).numpy()
    assert exported.shape == (len(images), len(CLASSES))
    assert abs(exported - expected).max() < 1e-5


def test_torch_export_and_save_pruned_with_the_callable_give_the_same_network(journey):
    folder, _, namespace, _ = journey
    images, _ = read_images(folder / "held-out")
    model, program, copy = namespace["model"], namespace["program"], namespace["copy"]
    with torch.no_grad():
        assert torch.allclose(program.module()(images), model(images), atol=1e-5)
        assert torch.equal(copy(images), model(images))
    spec = json.loads((folder / "runs" / "mine" / "pruned-copy.json").read_text())
    assert spec["architecture"]["factory"] == {"path": "mynets:factory", "args": {"num_classes": 5, "width": 32}}
