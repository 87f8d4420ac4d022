"""Values validated where they enter (issue 34): posterior and guide files, weights, labels, data sizes, --normalize,
checkpoints and torchvision label files. The command line answers with exit status 2, one sentence and an unchanged
run directory; the Python API with the documented exception.
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from test_bad_inputs import invoke, rewrite, snapshot


def one_sentence(error: str) -> str:
    lines = error.strip().splitlines()
    if lines and lines[0].startswith("usage:"):  # argparse: the usage (indented continuation lines), then the sentence
        lines = [line for line in lines[1:] if not line.startswith(" ")]
    assert len(lines) == 1 and lines[0].startswith("pyro-dirichlet"), error
    assert "Traceback" not in error
    return lines[0]


def variational(variable: str, change):
    """Rewrite posterior.nc with one variable of its ``variational`` group changed (the file's hash recomputed)."""
    def make(path: Path) -> None:
        from pyro_dirichlet.posterior import load_posterior, save_posterior

        tree = load_posterior(path)
        group = tree["variational"].to_dataset()
        group[variable] = group[variable].copy(data=change(group[variable].values.copy()))
        tree["variational"] = group
        save_posterior(tree, path)
    return rewrite("posterior.nc", make)


def negate(values):
    return -values


def zeros(values):
    return values * 0


def nan_first(values):
    values[0] = np.nan
    return values


def edit_manifest(change):
    def apply(run: Path, tmp: Path) -> None:
        manifest = json.loads((run / "run.json").read_text())
        change(manifest)
        (run / "run.json").write_text(json.dumps(manifest))
    return apply


def weights(change):
    """A LeNet-5 state dict, changed, saved with torch.save as tmp/w.pt for --weights."""
    def apply(run: Path, tmp: Path) -> None:
        from pyro_dirichlet.models import LeNet5Caffe

        state = LeNet5Caffe().state_dict()
        change(state)
        torch.save(state, tmp / "w.pt")
    return apply


WEIGHTS = ["train", "--out", "{tmp}/fresh", "--weights", "{tmp}/w.pt"]


def grow(name: str, *, forge_hash: bool = False):
    """Append to a run file; with ``forge_hash`` record its new SHA-256 (not its size) in run.json, as a forger would."""
    def apply(run: Path, tmp: Path) -> None:
        with open(run / name, "ab") as handle:
            handle.write(b"\0" * 4096)
        if forge_hash:
            import hashlib

            manifest = json.loads((run / "run.json").read_text())
            for record in manifest["steps"].values():
                if name in record["sha256"]:
                    record["sha256"][name] = hashlib.sha256((run / name).read_bytes()).hexdigest()
            (run / "run.json").write_text(json.dumps(manifest))
    return apply

CASES = [
    ("posterior-mean-negative-prune", ["prune"], variational("conv1.switch.mean", negate),
     "conv1.switch.mean is not a point of the simplex"),
    ("posterior-mean-zero-report", ["report"], variational("conv2.switch.mean", zeros),
     "conv2.switch.mean is not a point of the simplex"),
    ("posterior-mean-nan-report", ["report"], variational("fc1.switch.mean", nan_first), "fc1.switch.mean"),
    ("posterior-concentration-nan-prune", ["prune"], variational("conv1.switch.concentration", nan_first),
     "conv1.switch.concentration is not all finite and positive"),
    ("posterior-concentration-negative-report", ["report"], variational("conv1.switch.concentration", negate),
     "conv1.switch.concentration is not all finite and positive"),
    ("manifest-version-a-string", ["prune"], edit_manifest(lambda m: m.update(format_version="1")),
     "has format version '1', but this pyro-dirichlet reads version 1"),
    ("prune-record-without-architecture", ["finetune", "--finetune-epochs", "1"],
     edit_manifest(lambda m: m["steps"]["prune"]["result"].pop("architecture")),
     "prune step lacks its 'architecture' or test accuracy: redo it with `pyro-dirichlet prune"),
    ("manifest-dataset-edited", ["prune"], edit_manifest(lambda m: m.update(dataset="cifar10")),
     "records dataset 'cifar10', but model 'lenet5' is trained on 'mnist': the manifest was edited"),
    ("normalize-std-underflows", ["train", "--out", "{tmp}/fresh", "--model", "torchvision.models:resnet18",
                                  "--dataset", "imagefolder:{tmp}", "--normalize", "0.5,1e-50"], None, "between 1e-06 and 1e+06"),
    ("normalize-mean-overflows", ["train", "--out", "{tmp}/fresh", "--model", "torchvision.models:resnet18",
                                  "--dataset", "imagefolder:{tmp}", "--normalize", "1e39,1"], None, "within ±1e+06"),
    ("run-file-grew", ["prune"], grow("posterior.nc"),
     "posterior.nc has changed since the fit step wrote it (it holds"),
    ("run-file-grew-hash-forged", ["fit", "--epochs", "1"], grow("baseline.safetensors", forge_hash=True),
     "baseline.safetensors has changed since the train step wrote it (it holds"),
    ("spec-grew-hash-forged", ["report"], grow("pruned.json", forge_hash=True),
     "pruned.json has changed since the finetune step wrote it (it holds"),
    ("manifest-sizes-negative", ["prune"], edit_manifest(lambda m: m["steps"]["fit"]["sizes"].update({"posterior.nc": -1})),
     "step 'fit' has 'sizes' that are not an object of byte counts"),
    ("manifest-sizes-not-numbers", ["report"], edit_manifest(lambda m: m["steps"]["train"].update(sizes=["x"])),
     "step 'train' has 'sizes' that are not an object of byte counts"),
    ("weights-float64", WEIGHTS, weights(lambda s: s.update({k: v.double() for k, v in s.items()})),
     "holds conv1.weight as float64: floating weights must be float32, float16 or bfloat16"),
    ("weights-sparse", WEIGHTS, weights(lambda s: s.update({"fc2.weight": s["fc2.weight"].to_sparse()})),
     "holds fc2.weight as a sparse_coo tensor: weights must be dense"),
    ("weights-meta", WEIGHTS, weights(lambda s: s.update({"fc2.bias": torch.empty(10, device="meta")})),
     "holds fc2.bias on the meta device"),
    ("weights-complex", WEIGHTS, weights(lambda s: s.update({"fc2.bias": s["fc2.bias"].to(torch.complex64)})),
     "holds fc2.bias as complex64"),
]


@pytest.mark.parametrize(("argv", "setup", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_value_exits_2_with_one_sentence_and_changes_nothing(run_copy, tmp_path, small_mnist_everywhere, capsys,
                                                                   argv, setup, expected):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    if "--out" not in argv:
        argv = [argv[0], "--run", str(run_copy), *argv[1:]]
    if setup is not None:
        setup(run_copy, tmp_path)
    before = snapshot(run_copy)
    code, error = invoke([*argv, "--quiet"], capsys)
    assert code == 2, error
    assert expected in one_sentence(error), error
    assert snapshot(run_copy) == before and not (tmp_path / "fresh").exists()
    assert "NaN" not in (run_copy / "report.json").read_text()


# --- the Python API ------------------------------------------------------------------------------


def test_a_hash_bounded_by_a_size_reads_no_file_larger_than_that(tmp_path):
    from pyro_dirichlet.io.regular_files import SpecialFileError, sha256_of

    (tmp_path / "f").write_bytes(b"x" * 10)
    assert sha256_of(tmp_path / "f", limit=10) == sha256_of(tmp_path / "f")
    with pytest.raises(SpecialFileError, match="is larger than 9 bytes: refusing to read it"):
        sha256_of(tmp_path / "f", limit=9)


def test_the_manifest_records_each_files_size(small_run):
    manifest = json.loads((small_run / "run.json").read_text())
    for record in manifest["steps"].values():
        assert record["sizes"] == {name: (small_run / name).stat().st_size for name in record["files"]}


@pytest.fixture
def saved_switches(small_run):
    from pyro_dirichlet.app.rundir import RunDirectory
    from pyro_dirichlet.app.steps import load_baseline
    from pyro_dirichlet.infer.switches import DirichletSwitches
    from pyro_dirichlet.posterior import load_posterior

    network = load_baseline(RunDirectory(small_run))
    return load_posterior(small_run / "posterior.nc"), DirichletSwitches(network, torch.zeros(2, 1, 28, 28))


@pytest.mark.parametrize(("change", "message"), [
    (lambda values: values * np.nan, "guide parameter .*conv1.* is not all finite numbers"),
    (lambda values: np.concatenate([values, values[:15]]), r"has shape \(35,\), but this model's has \(20,\)"),
])
def test_load_guide_refuses_non_finite_or_misshapen_parameters(saved_switches, change, message):
    import xarray as xr

    from pyro_dirichlet.infer.guide import load_guide

    tree, switches = saved_switches
    group = tree["guide_parameters"].to_dataset()
    (name,) = [n for n in group.data_vars if "conv1" in str(n) and "concentration" in str(n)]
    values = change(group[name].values.copy())
    group = group.drop_vars(name).assign({name: xr.DataArray(values, dims=[f"{name}_dim"])})
    tree["guide_parameters"] = group
    with pytest.raises(ValueError, match=message):
        load_guide(tree, switches)


@pytest.mark.parametrize(("change", "message"), [
    (lambda state: state["fc2.bias"].fill_(float("nan")), "holds non-finite values"),
    (lambda state: state.update({"fc2.bias": state["fc2.bias"].double()}), "holds fc2.bias as float64, but the spec records float32"),
])
def test_load_pruned_refuses_non_finite_weights_or_another_dtype_than_recorded(tmp_path, change, message):
    import hashlib

    from safetensors.torch import load_file, save_file

    from pyro_dirichlet.models import LeNet5Caffe
    from pyro_dirichlet.io.serialization import ModelFileError, load_pruned, save_pruned

    weights, spec = save_pruned(LeNet5Caffe(), tmp_path / "net")
    state = load_file(str(weights))
    change(state)
    save_file(state, str(weights), metadata={"format": "pt"})
    record = json.loads(spec.read_text())
    record["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()  # as a forger would
    spec.write_text(json.dumps(record))
    with pytest.raises(ModelFileError, match=message):
        load_pruned(tmp_path / "net")


def switches_of(network):
    from pyro_dirichlet.infer.switches import DirichletSwitches

    return DirichletSwitches(network, torch.randn(2, 1, 14, 14))


def test_fit_refuses_float_labels_that_would_be_truncated(tiny_cnn):
    from pyro_dirichlet.infer.fit import FitConfig, fit

    batches = [(torch.randn(8, 1, 14, 14), torch.full((8,), 2.7))] * 2  # a Split refuses them itself
    with pytest.raises(ValueError, match="train labels must be integer class indices, got float32 values such as 2.7"):
        fit(switches_of(tiny_cnn), batches, FitConfig(epochs=1, progress=False, data_size=16))


@pytest.mark.parametrize(("labels", "message"), [
    (torch.tensor([0, 1, 2, 7, 0, 1, 2, 0]), r"train labels must lie in \[0, 2\] for this 3-class network, got \[0, 7\]"),
    (torch.tensor([0, 1, 2, -1, 0, 1, 2, 0]), r"got \[-1, 2\]"),
    (torch.full((8,), 1.5), "got float32 values such as 1.5"),
])
def test_streamed_labels_are_checked_batch_by_batch_not_only_the_first(tiny_cnn, labels, message):
    from pyro_dirichlet.infer.fit import FitConfig, fit

    good = (torch.randn(8, 1, 14, 14), torch.randint(0, 3, (8,)))
    batches = [good, (torch.randn(8, 1, 14, 14), labels)]
    with pytest.raises(ValueError, match=message):
        fit(switches_of(tiny_cnn), batches, FitConfig(epochs=1, progress=False, data_size=16))


def test_fit_refuses_a_data_size_other_than_the_loaders_data_set(tiny_cnn):
    from torch.utils.data import DataLoader, TensorDataset

    from pyro_dirichlet.infer.fit import FitConfig, fit

    loader = DataLoader(TensorDataset(torch.randn(16, 1, 14, 14), torch.randint(0, 3, (16,))), batch_size=8)
    with pytest.raises(ValueError, match="data_size is 160, but the loader's data set holds 16 examples"):
        fit(switches_of(tiny_cnn), loader, FitConfig(epochs=1, progress=False, data_size=160))


def test_a_checkpoint_of_another_prior_or_likelihood_is_not_resumed(tiny_cnn, tmp_path):
    from pyro_dirichlet.data import Split
    from pyro_dirichlet.infer.fit import FitConfig, fit
    from pyro_dirichlet.infer.switches import DirichletSwitches

    data = Split(torch.randn(16, 1, 14, 14), torch.randint(0, 3, (16,)))
    config = FitConfig(epochs=1, progress=False, batch_size=8)
    fit(switches_of(tiny_cnn), data, config, checkpoint=tmp_path / "c.pt")
    other_prior = DirichletSwitches(tiny_cnn, torch.randn(2, 1, 14, 14), prior=0.5)
    with pytest.raises(ValueError, match="belongs to a different fit.*prior 'Dirichlet concentrations sha256:"):
        fit(other_prior, data, FitConfig(epochs=2, progress=False, batch_size=8), checkpoint=tmp_path / "c.pt")


def test_a_checkpoint_of_other_data_or_another_guide_is_not_resumed(tiny_cnn, tmp_path):
    from pyro_dirichlet.data import Split
    from pyro_dirichlet.infer.fit import FitConfig, fit
    from pyro_dirichlet.infer.guide import make_guide

    data = Split(torch.randn(16, 1, 14, 14), torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(0)))
    config = FitConfig(epochs=1, progress=False, batch_size=8)
    fit(switches_of(tiny_cnn), data, config, checkpoint=tmp_path / "c.pt")
    saved = (tmp_path / "c.pt").read_bytes()
    relabelled = Split(data.images, (data.labels + 1) % 3)  # the same size, other labels
    with pytest.raises(ValueError, match="belongs to a different fit.*data 'split sha256:"):
        fit(switches_of(tiny_cnn), relabelled, FitConfig(epochs=2, progress=False, batch_size=8), checkpoint=tmp_path / "c.pt")

    def own_guide(*args, **kwargs):
        return make_guide(switches)(*args, **kwargs)

    switches = switches_of(tiny_cnn)
    with pytest.raises(ValueError, match="belongs to a different fit.*guide 'make_guide' in the checkpoint, "
                                         "'test_bad_values.*own_guide' now"):
        fit(switches, data, FitConfig(epochs=2, progress=False, batch_size=8), checkpoint=tmp_path / "c.pt",
            guide=own_guide)
    assert (tmp_path / "c.pt").read_bytes() == saved  # refused, never overwritten


@pytest.mark.parametrize(("field", "value", "message"), [
    ("step", -3, "its step -3 is not a count of steps"),
    ("step", 1.5, "its step 1.5 is not a count of steps"),
    ("step", 10**6, "its ELBO history is not 1000000 numbers"),
    ("generator", torch.zeros(3), "its generator state is not a byte tensor"),
    ("rng", {"torch": 5}, "its random states are not those of torch, Python and NumPy"),
    ("params", {"x": torch.full((3,), float("nan"))}, "its parameters are not finite dense tensors"),
])
def test_a_tampered_checkpoint_is_refused_on_loading(tiny_cnn, tmp_path, field, value, message):
    from pyro_dirichlet.data import Split
    from pyro_dirichlet.infer.checkpoint import FitCheckpoint
    from pyro_dirichlet.infer.fit import FitConfig, fit

    data = Split(torch.randn(16, 1, 14, 14), torch.randint(0, 3, (16,)))
    fit(switches_of(tiny_cnn), data, FitConfig(epochs=1, progress=False, batch_size=8), checkpoint=tmp_path / "c.pt")
    record = torch.load(tmp_path / "c.pt", weights_only=True)
    record[field] = value
    torch.save(record, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=message):
        FitCheckpoint.load(tmp_path / "c.pt")


MNIST_RAW = Path(os.environ.get("PYRO_DIRICHLET_DATA", "/nonexistent")) / "MNIST" / "raw"


@pytest.mark.skipif(not (MNIST_RAW / "train-images-idx3-ubyte").is_file(), reason="needs the raw MNIST files")
@pytest.mark.parametrize(("labels", "message"), [
    ("t10k-labels-idx1-ubyte", "has 60000 training images but 10000 labels"),
    ("label-200", r"has training labels in \[0, 200\], not the class indices \[0, 9\]"),
])
def test_torchvision_mnist_with_labels_that_do_not_belong_is_refused(tmp_path, labels, message):
    from pyro_dirichlet.data.torchvision_sets import TorchvisionDatasetError, load_torchvision_dataset

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).symlink_to(MNIST_RAW / name)
    if labels == "label-200":
        data = bytearray((MNIST_RAW / "train-labels-idx1-ubyte").read_bytes())
        data[8] = 200  # the first label
        (raw / "train-labels-idx1-ubyte").write_bytes(bytes(data))
    else:
        (raw / "train-labels-idx1-ubyte").symlink_to(MNIST_RAW / labels)
    with pytest.raises(TorchvisionDatasetError, match=message):
        load_torchvision_dataset("MNIST", tmp_path)


def test_normalize_bounds_keep_every_pixel_a_finite_float32():
    from pyro_dirichlet.data.normalization import MAX_MEAN, MAX_STD, MIN_STD, Normalization

    for mean, std in ((MAX_MEAN, MIN_STD), (-MAX_MEAN, MIN_STD), (0.0, MAX_STD)):
        pixels = Normalization((mean,), (std,)).apply(torch.tensor([0.0, 1.0]).view(1, 1, 1, 2))
        assert torch.isfinite(pixels).all() and pixels.unique().numel() == 2
    assert math.isinf(float(torch.tensor(1e39, dtype=torch.float32)))  # why the mean is bounded


# --- ImageFolders --------------------------------------------------------------------------------


def png(color, size=(8, 8), mode="RGB") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def folder_with(change):
    """tmp/images with classes cat and dog of 12 RGB PNGs each, then ``change(images)``."""
    def apply(run: Path, tmp: Path) -> None:
        for name in ("cat", "dog"):
            (tmp / "images" / name).mkdir(parents=True)
            for i in range(12):
                (tmp / "images" / name / f"{i}.png").write_bytes(png((i * 20, 0, 0)))
        change(tmp / "images")
    return apply


FOLDER = ["train", "--out", "{tmp}/fresh", "--model", "torchvision.models:resnet18", "--model-arg", "num_classes=2",
          "--dataset", "imagefolder:{tmp}/images"]

FOLDER_CASES = [
    ("imagefolder-symlink-loop", folder_with(lambda d: (d / "cat" / "loop").symlink_to(d / "cat")),
     "cat/loop is a link to a folder"),
    ("imagefolder-empty-class", folder_with(lambda d: (d / "bird").mkdir()), "images/bird holds no images"),
    ("imagefolder-fifo-image", folder_with(lambda d: os.mkfifo(d / "dog" / "x.png")), "x.png is not a regular file"),
    ("imagefolder-same-image-twice", folder_with(lambda d: (d / "dog" / "copy.png").symlink_to(d / "cat" / "3.png")),
     "is the same file as"),
]


@pytest.mark.parametrize(("setup", "expected"), [case[1:] for case in FOLDER_CASES], ids=[case[0] for case in FOLDER_CASES])
def test_a_bad_image_folder_exits_2_with_one_sentence(tmp_path, capsys, setup, expected):
    setup(None, tmp_path)
    code, error = invoke([*(arg.format(tmp=tmp_path) for arg in FOLDER), "--quiet"], capsys)
    assert code == 2, error
    assert expected in one_sentence(error), error
    assert not (tmp_path / "fresh").exists()


def test_sixteen_bit_and_grayscale_images_keep_their_values_and_colours(tmp_path):
    from PIL import Image

    from pyro_dirichlet.data.imagefolder import load_image_folder

    for name in ("dark", "light"):
        (tmp_path / name).mkdir()
    for i in range(10):
        value = 1000 * (i + 1)  # all above 255: clipping would make every one white
        Image.fromarray(np.full((8, 8), value, dtype=np.uint16)).save(tmp_path / "dark" / f"{i}.png")
        (tmp_path / "light" / f"{i}.png").write_bytes(png((0, 200, 0)))  # green: colour must survive
    data = load_image_folder(tmp_path, normalize=None)
    assert data.input_shape == (3, 8, 8)
    raw = {}
    for split in (data.train, data.validation, data.test):
        pixels = split.images * torch.tensor(data.normalization.std).view(1, -1, 1, 1) \
            + torch.tensor(data.normalization.mean).view(1, -1, 1, 1)
        for image, label in zip(pixels, split.labels):
            raw.setdefault(int(label), []).append(image)
    dark = sorted(round(float(image[0, 0, 0]) * 65535) for image in raw[data.classes.index("dark")])
    assert dark == [1000 * (i + 1) for i in range(10)]
    green = raw[data.classes.index("light")][0][:, 0, 0]
    assert torch.allclose(green, torch.tensor([0.0, 200 / 255, 0.0]), atol=1e-5)


@pytest.mark.parametrize("name", ["__class__", "training", "forward"])
def test_a_sequential_spec_with_a_child_named_like_an_attribute_is_refused(tmp_path, name):
    from torch import nn

    from pyro_dirichlet.io.serialization import ModelFileError, load_pruned, save_pruned

    _, spec = save_pruned(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), tmp_path / "net")
    record = json.loads(spec.read_text())
    record["architecture"]["modules"][0]["name"] = name
    spec.write_text(json.dumps(record))
    with pytest.raises(ModelFileError, match=f"module '{name}' has a name nn.Sequential cannot hold"):
        load_pruned(tmp_path / "net")


def test_a_spec_nested_too_deeply_is_refused(tmp_path):
    from torch import nn

    from pyro_dirichlet.io.serialization import ModelFileError, load_pruned, save_pruned

    _, spec = save_pruned(nn.Sequential(nn.Linear(3, 4)), tmp_path / "net")
    spec.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelFileError, match="nested too deeply"):
        load_pruned(tmp_path / "net")
