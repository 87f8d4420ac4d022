"""The trained baselines committed under analysis/baselines/ (issue 15 item 4): each file is the one its
recipe JSON names (SHA-256), loads into its registered architecture without pickle, and classifies real
held-out images as well as the recipe says."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from pyro_dirichlet.data.cifar10 import _normalise_cifar, read_image_zip
from pyro_dirichlet.baselines.trained import load_checkpoint
from pyro_dirichlet.baselines.registry import get_model_entry

BASELINES = Path(__file__).resolve().parents[1] / "analysis" / "baselines"
SHARED = Path(os.environ.get("PYRO_DIRICHLET_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
RECIPES = sorted(BASELINES.glob("*.json"))


def test_every_committed_baseline_has_a_recipe():
    weights = sorted(BASELINES.glob("*.safetensors"))
    assert weights, "no trained baseline committed"
    assert [path.stem for path in weights] == [path.stem for path in RECIPES]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_the_weights_are_the_recipes_and_load_into_the_architecture(recipe):
    record = json.loads(recipe.read_text())
    weights = recipe.with_suffix(".safetensors")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == record["sha256"]
    state, metadata = load_checkpoint(weights)
    assert metadata["model"] == record["model"]
    network = get_model_entry(record["model"]).build()
    network.load_state_dict(state)  # strict: every key and shape
    assert all(torch.isfinite(tensor).all() for tensor in state.values() if tensor.is_floating_point())


CIFAR_RECIPES = [path for path in RECIPES if path.stem.endswith("-cifar10")]


@pytest.mark.skipif(not (SHARED / "cifar10-jpeg" / "test.zip").is_file(), reason="CIFAR-10 JPEG copy not present")
@pytest.mark.parametrize("recipe", CIFAR_RECIPES, ids=lambda path: path.stem)
def test_a_cifar10_baseline_classifies_held_out_images_as_recorded(recipe):
    record = json.loads(recipe.read_text())
    state, _ = load_checkpoint(recipe.with_suffix(".safetensors"))
    network = get_model_entry(record["model"]).build()
    network.load_state_dict(state)
    network.eval()
    # 50 test images of each class (500): the whole test split is scored in the recipe.
    images, labels = read_image_zip(SHARED / "cifar10-jpeg" / "test.zip", max_per_class=50)
    with torch.no_grad():
        accuracy = (network(_normalise_cifar(images)).argmax(1) == labels).double().mean().item()
    # 500 images: a standard error of about 1.4 points around the recorded test accuracy.
    assert accuracy > record["test_accuracy"] - 0.06, (accuracy, record["test_accuracy"])
