"""Users' own networks and data through the command line (issue 12): a factory named on the command line (never
imported from a file), trained weights as the baseline, ImageFolder and torchvision data sets."""

import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from pyro_dirichlet.app.cli import main
from pyro_dirichlet.io.factories import parse_model_arg
from pyro_dirichlet.io.serialization import ModelFileError, load_pruned

USERNETS = '''
from torch import nn


def tiny(num_classes=10, width=8, channels=1):
    """A LeNet-like net for 28x28 images."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 16, 32), nn.ReLU(), nn.Linear(32, num_classes))


def other(num_classes=10, width=8, channels=1):
    return tiny(num_classes, width, channels)
'''

# Importing this module leaves a mark: proof that a path read from a file was imported.
EVIL = '''
from pathlib import Path
Path(__file__).with_name("imported.txt").write_text("imported")


def net(**kwargs):
    raise AssertionError("never called")
'''


@pytest.fixture(scope="module")
def user_modules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user-modules")
    (folder / "usernets.py").write_text(USERNETS)
    (folder / "evil_factory.py").write_text(EVIL)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    for name in ("usernets", "evil_factory"):
        sys.modules.pop(name, None)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): sha256(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def invoke(argv, capsys) -> tuple[int, str]:
    try:
        code = main([*argv, "--quiet"])
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def factory_run(user_modules, tmp_path_factory, mnist_small):
    """A whole run of usernets:tiny (width 6) from a weights file, step by step on 400 MNIST images."""
    from safetensors.torch import save_file

    from pyro_dirichlet import data
    import usernets

    root = tmp_path_factory.mktemp("factory-run")
    torch.manual_seed(0)
    network = usernets.tiny(width=6)
    weights = root / "tiny.safetensors"
    save_file(network.state_dict(), str(weights))
    out = root / "run"
    named = ["--run", str(out), "--model", "usernets:tiny", "--quiet"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(data._LOADERS, "mnist", lambda data_dir=None, **kwargs: mnist_small)
        assert main(["train", "--out", str(out), "--model", "usernets:tiny", "--model-arg", "width=6", "--dataset", "mnist",
                     "--weights", str(weights), "--subset", "400", "--quiet"]) == 0
        for argv in (["fit", *named], ["prune", *named], ["finetune", *named, "--finetune-epochs", "1"],
                     ["report", *named, "--latency-batch", "16"]):
            assert main(argv) == 0, argv
    return out, network, weights


def test_the_weights_are_the_baseline_and_the_manifest_records_factory_args_and_sha256(factory_run):
    from safetensors.torch import load_file

    out, network, weights = factory_run
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["model"] == "usernets:tiny" and manifest["model_args"] == {"width": 6}
    assert manifest["weights"] == {"file": str(weights), "sha256": sha256(weights)}
    result = manifest["steps"]["train"]["result"]
    assert result["baseline_source"] == "weights" and result["trained_in_this_run"] is False
    baseline = load_file(str(out / "baseline.safetensors"))
    assert baseline.keys() == network.state_dict().keys()
    assert all(torch.equal(baseline[key], value) for key, value in network.state_dict().items())
    assert manifest["steps"]["fit"]["config"]["factory"] == "usernets:tiny"


def test_later_steps_need_the_factory_named_again(factory_run, small_mnist_everywhere, tmp_path, capsys):
    run = Path(shutil.copytree(factory_run[0], tmp_path / "run"))
    before = snapshot(run)
    for argv, expected in [
        (["fit", "--run", str(run)], "records the model factory 'usernets:tiny', which is never imported because a file "
                                     "names it: name it again (--model usernets:tiny"),
        (["report", "--run", str(run)], "name it again"),
        (["fit", "--run", str(run), "--model", "usernets:other"], "holds model 'usernets:tiny', not 'usernets:other'"),
        (["prune", "--run", str(run), "--model", "usernets:tiny", "--model-arg", "width=7"],
         "built with arguments {'width': 6}, not {'width': 7}: leave out --model-arg"),
    ]:
        code, error = invoke(argv, capsys)
        assert code == 2 and expected in error and error.count("\n") == 1, error
    assert snapshot(run) == before
    code, error = invoke(["prune", "--run", str(run), "--model", "usernets:tiny", "--model-arg", "width=6"], capsys)
    assert code == 0, error


def test_the_pruned_model_loads_only_from_the_factory_named_again(factory_run, user_modules):
    import usernets

    out, _, _ = factory_run
    report = json.loads((out / "report.json").read_text())
    with pytest.raises(ModelFileError, match=r"never imported because a file names it: name it again"):
        load_pruned(out / "pruned")
    with pytest.raises(ModelFileError, match=r"records the model factory 'usernets:tiny', not 'usernets:other'"):
        load_pruned(out / "pruned", factory=usernets.other)
    by_path = load_pruned(out / "pruned", factory="usernets:tiny")
    by_callable = load_pruned(out / "pruned", factory=usernets.tiny)
    widths = {"0": by_path[0].out_channels, "3": by_path[3].out_channels, "7": by_path[7].out_features}
    assert widths == report["pruned"]["architecture"]  # half of 6, 12 and 32 channels: the default for a factory
    assert widths == {"0": 3, "3": 6, "7": 16}
    images = torch.randn(4, 1, 28, 28)
    assert torch.equal(by_path(images), by_callable(images))


def test_a_factory_path_read_from_a_file_is_never_imported(factory_run, user_modules, small_mnist_everywhere, tmp_path,
                                                             capsys):
    run = Path(shutil.copytree(factory_run[0], tmp_path / "run"))
    manifest = json.loads((run / "run.json").read_text())
    manifest["model"] = "evil_factory:net"
    (run / "run.json").write_text(json.dumps(manifest))
    spec = json.loads((run / "pruned.json").read_text())
    spec["architecture"]["factory"]["path"] = "evil_factory:net"
    (run / "pruned.json").write_text(json.dumps(spec))

    code, error = invoke(["fit", "--run", str(run)], capsys)
    assert code == 2 and "records the model factory 'evil_factory:net'" in error
    with pytest.raises(ModelFileError, match="records the model factory 'evil_factory:net'"):
        load_pruned(run / "pruned")
    with pytest.raises(ModelFileError, match="records the model factory 'evil_factory:net', not 'usernets:tiny'"):
        load_pruned(run / "pruned", factory="usernets:tiny")
    assert not (user_modules / "imported.txt").exists()
    assert "evil_factory" not in sys.modules


def test_a_torch_state_dict_and_a_config_file_give_the_same_baseline(user_modules, small_mnist_everywhere, tmp_path):
    import usernets

    torch.manual_seed(1)
    network = usernets.tiny(num_classes=10, width=4)
    torch.save(network.state_dict(), tmp_path / "tiny.pt")
    config = tmp_path / "c.toml"
    config.write_text(f'model = "usernets:tiny"\nmodel-arg = {{ width = 4 }}\ndataset = "mnist"\n'
                      f'weights = "{tmp_path / "tiny.pt"}"\nsubset = 200\nquiet = true\n')
    # a factory path in a config file is imported only behind --trust-config (a file you wrote)
    assert main(["train", "--out", str(tmp_path / "run"), "--config", str(config), "--trust-config"]) == 0
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["model_args"] == {"width": 4} and manifest["weights"]["sha256"] == sha256(tmp_path / "tiny.pt")
    from safetensors.torch import load_file

    baseline = load_file(str(tmp_path / "run" / "baseline.safetensors"))
    assert all(torch.equal(baseline[key], value) for key, value in network.state_dict().items())


def test_a_factory_without_weights_is_trained(user_modules, small_mnist_everywhere, tmp_path):
    assert main(["train", "--out", str(tmp_path / "run"), "--model", "usernets:tiny", "--model-arg", "width=4",
                 "--dataset", "mnist", "--subset", "200", "--train-epochs", "1", "--quiet"]) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())["steps"]["train"]
    assert record["result"]["baseline_source"] == "trained" and record["result"]["epochs"] == 1
    assert record["config"]["train"]["epochs"] == 1


@pytest.mark.parametrize(("text", "expected"), [
    ("num_classes=10", ("num_classes", 10)),
    ("width = 0.5", ("width", 0.5)),
    ("pretrained=False", ("pretrained", False)),
    ("pretrained=true", ("pretrained", True)),
    ("norm=batch", ("norm", "batch")),
    ("name='10'", ("name", "10")),
    ("scale=inf", ("scale", "inf")),
    ("path=a=b", ("path", "a=b")),
])
def test_model_args_are_read_as_int_float_bool_or_text(text, expected):
    assert parse_model_arg(text) == expected


# --- ImageFolder ----------------------------------------------------------------------------------


def write_images(folder: Path, per_class: dict[str, int], *, size=(10, 12), mode="RGB", seed=0) -> None:
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    for name, count in per_class.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            channels = 3 if mode == "RGB" else 1
            pixels = torch.randint(0, 256, (size[1], size[0], channels), generator=generator, dtype=torch.uint8)
            image = Image.fromarray(pixels.squeeze(-1).numpy() if channels == 1 else pixels.numpy(), mode)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            (folder / name / f"{i:03d}.png").write_bytes(buffer.getvalue())


def test_a_flat_image_folder_is_split_by_a_seed_and_normalised_on_its_training_images(tmp_path):
    from pyro_dirichlet.data import load_dataset

    write_images(tmp_path / "flat", {"a": 20, "b": 20, "c": 20})
    data = load_dataset(f"imagefolder:{tmp_path / 'flat'}", image_size=8)
    assert (len(data.train), len(data.validation), len(data.test)) == (49, 5, 6)  # a tenth each carved off
    assert data.input_shape == (3, 8, 8) and data.num_classes == 3 and data.classes == ("a", "b", "c")
    labels = torch.cat([data.train.labels, data.validation.labels, data.test.labels])
    assert torch.bincount(labels).tolist() == [20, 20, 20]
    channels = data.train.images.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(channels.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(channels.std(1, unbiased=False), torch.ones(3), atol=1e-4)
    again = load_dataset(f"imagefolder:{tmp_path / 'flat'}", image_size=8)
    assert torch.equal(again.test.images, data.test.images)
    reseeded = load_dataset(f"imagefolder:{tmp_path / 'flat'}", image_size=8, split_seed=1)
    assert not torch.equal(reseeded.test.labels, data.test.labels) or not torch.equal(reseeded.test.images, data.test.images)


def test_train_val_test_folders_are_used_as_they_are_with_the_training_class_indices(tmp_path):
    from pyro_dirichlet.data import load_dataset
    from pyro_dirichlet.data.normalization import Normalization

    write_images(tmp_path / "tree" / "train", {"a": 6, "b": 6, "c": 6}, mode="L", size=(8, 8))
    write_images(tmp_path / "tree" / "val", {"a": 2, "b": 2, "c": 2}, mode="L", size=(8, 8), seed=1)
    write_images(tmp_path / "tree" / "test", {"a": 3, "c": 3}, mode="L", size=(8, 8), seed=2)
    raw = load_dataset(f"imagefolder:{tmp_path / 'tree'}", normalize=Normalization((0.0,), (1.0,)))
    assert (len(raw.train), len(raw.validation), len(raw.test)) == (18, 6, 6) and raw.input_shape == (1, 8, 8)
    assert raw.test.labels.tolist() == [0, 0, 0, 2, 2, 2]  # 'c' keeps index 2 though the test split has no 'b'
    assert 0 <= raw.train.images.min() and raw.train.images.max() <= 1
    given = load_dataset(f"imagefolder:{tmp_path / 'tree'}", normalize=Normalization((0.5,), (0.25,)))
    assert torch.allclose(given.train.images, (raw.train.images - 0.5) / 0.25)


def test_images_of_several_sizes_need_an_image_size(tmp_path):
    from pyro_dirichlet.data import DatasetError, load_dataset

    write_images(tmp_path / "mixed", {"a": 3, "b": 3})
    write_images(tmp_path / "other", {"b": 1}, size=(16, 16))
    shutil.move(tmp_path / "other" / "b" / "000.png", tmp_path / "mixed" / "b" / "999.png")
    with pytest.raises(DatasetError, match=r"999.png is 16x16 pixels, but .* is 10x12: pass --image-size N"):
        load_dataset(f"imagefolder:{tmp_path / 'mixed'}", split_seed=0, sizes=(100, 100, 100))
    assert load_dataset(f"imagefolder:{tmp_path / 'mixed'}", image_size=6).input_shape == (3, 6, 6)


def test_a_torchvision_data_set_is_read_under_the_data_root(tmp_path, user_modules, monkeypatch):
    from conftest import mnist_root

    from pyro_dirichlet.data import load_dataset

    root = mnist_root()
    if root is None:
        pytest.skip("MNIST not found: set PYRO_DIRICHLET_DATA to a folder holding MNIST/raw")
    # FashionMNIST's files have MNIST's format: MNIST's own stand in for them, with no download.
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).symlink_to(root / "MNIST" / "raw" / name)
    data = load_dataset("torchvision:FashionMNIST", tmp_path)
    assert (len(data.train), len(data.validation), len(data.test)) == (55000, 5000, 10000)
    assert data.input_shape == (1, 28, 28) and data.classes[0] == "T-shirt/top" and data.num_classes == 10
    monkeypatch.setenv("PYRO_DIRICHLET_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--model", "usernets:tiny", "--dataset", "torchvision:FashionMNIST",
                 "--data-dir", str(tmp_path), "--subset", "100", "--train-epochs", "1", "--quiet"]) == 0
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["dataset"] == "torchvision:FashionMNIST" and manifest["data"]["source"] == "torchvision:FashionMNIST"
    assert manifest["data"]["train"] == 100 and len(manifest["data"]["normalize"]["mean"]) == 1
