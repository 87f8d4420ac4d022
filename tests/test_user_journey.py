"""Issue 32's bar, end to end: a user's own network from their training script to an ONNX file.

In a fresh folder holding only ``mynets.py`` and a generated ImageFolder, the user trains
with their own loop and CIFAR's per-channel normalisation, saves ``state_dict()``, runs
``pyro-dirichlet run --model mynets:factory`` without PYTHONPATH (and without the current
folder on ``sys.path``: ``python -P``), loads the pruned network with ``load_pruned`` and
exports it to ONNX, whose outputs must match to 1e-5.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyro_dirichlet
from pyro_dirichlet.factories import import_user_module
from pyro_dirichlet.serialization import load_pruned
from user_journey import CIFAR_MEAN, CIFAR_STD, CLASSES, MYNETS, read_images, train_own_loop, write_image_folder

#: Where the package is, as an installed one would be: never the user's folder.
PACKAGE_ROOT = Path(pyro_dirichlet.__file__).resolve().parent.parent


def pyro_dirichlet_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """``pyro-dirichlet ARGV`` run from ``cwd`` as a user runs it: the package importable, their folder not on the path."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-P", "-m", "pyro_dirichlet", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    """The user's folder after training their net, running the tool and loading the result."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "mynets.py").write_text(MYNETS)
    write_image_folder(folder / "images")
    write_image_folder(folder / "held-out", per_class=4, seed=1)
    previous = Path.cwd()
    os.chdir(folder)
    try:
        mynets = import_user_module("mynets")
        torch.manual_seed(0)
        network = mynets.factory(num_classes=5, width=8)
        images, labels = read_images(folder / "images")
        train_own_loop(network, images, labels)
        torch.save(network.state_dict(), folder / "w.pt")
        normalize = ",".join(map(str, CIFAR_MEAN)) + "/" + ",".join(map(str, CIFAR_STD))
        done = pyro_dirichlet_cli(
            "run", "--out", "run", "--model", "mynets:factory", "--model-arg", "width=8", "--weights", "w.pt",
            "--dataset", "imagefolder:images", "--validation-dir", "held-out", "--normalize", normalize,
            "--finetune-epochs", "1", "--latency-batch", "8", cwd=folder)
        assert done.returncode == 0, done.stderr[-3000:]
        pruned = load_pruned(folder / "run" / "pruned", factory=mynets.factory)
        yield folder, mynets, network, pruned, done
    finally:
        os.chdir(previous)
        sys.modules.pop("mynets", None)


def test_the_run_takes_the_users_weights_and_normalisation(journey):
    folder, _, network, _, done = journey
    manifest = json.loads((folder / "run" / "run.json").read_text())
    assert manifest["data"]["normalize"] == {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    assert manifest["data"]["validation_dir"] == str(folder / "held-out")
    assert manifest["data"]["validation"] == 4 * len(CLASSES)
    # Given the user's statistics, the tool says nothing about measuring its own.
    assert "own per-channel statistics" not in done.stdout


def test_pruned_json_records_what_a_deployment_needs(journey):
    folder, _, _, pruned, _ = journey
    deployment = pruned.deployment
    assert deployment.classes == CLASSES
    assert deployment.mean == CIFAR_MEAN and deployment.std == CIFAR_STD
    assert deployment.channel_order == "RGB" and deployment.input_shape == (3, 12, 12)
    import hashlib

    assert deployment.weights_sha256 == hashlib.sha256((folder / "w.pt").read_bytes()).hexdigest()
    assert deployment.source_sha256 == hashlib.sha256((folder / "run" / "baseline.safetensors").read_bytes()).hexdigest()
    # The pruned network preprocesses like the user's loader.
    images, labels = read_images(folder / "held-out")
    raw = images * torch.tensor(CIFAR_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(deployment.preprocess(raw), images, atol=1e-6)


def test_the_pruned_network_exports_to_onnx_and_matches_to_1e_5(journey, tmp_path):
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install -e '.[test]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[test]')")
    folder, _, network, pruned, _ = journey
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in network.parameters())
    images, _ = read_images(folder / "held-out")
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(pruned, (images[:2],), str(path), input_names=["images"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = pruned(images).numpy()
    assert exported.shape == (len(images), len(CLASSES))
    assert abs(exported - expected).max() < 1e-5


def test_the_pruned_network_exports_with_torch_export(journey):
    folder, _, _, pruned, _ = journey
    images, _ = read_images(folder / "held-out")
    program = torch.export.export(pruned, (images[:2],), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    with torch.no_grad():
        assert torch.allclose(program.module()(images), pruned(images), atol=1e-6)
