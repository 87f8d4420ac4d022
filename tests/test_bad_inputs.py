"""Bad inputs against the command line (issue 13): each ends with exit status 2, one sentence on stderr naming the
offending option or file, and a run directory whose every file (hidden ones too) has the same SHA-256 as before.

The cases are parametrised by what they break: option values, config files, the manifest, the files the steps
wrote. docs/reliability.md's "Errors" section quotes how many there are (``test_the_readme_counts_these_cases``).
"""

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from pyro_dirichlet.app.cli import main

RELIABILITY = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def default_fit_checkpoint(run: Path) -> Path:
    """Where `fit --run RUN` with every option at its default keeps its checkpoint."""
    from pyro_dirichlet.app.cli import _build, _settings, options_from
    from pyro_dirichlet.app.rundir import RunDirectory
    from pyro_dirichlet.app.steps import fit_checkpoint_path

    parser, options = _build()
    args = parser.parse_args(["fit", "--run", str(run)])
    del args.command
    config = options_from(_settings("fit", args, options))
    return fit_checkpoint_path(RunDirectory(run), config.fit, config.runtime)


def invoke(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors: usage line, then one error sentence
        code = exit.code
    return code, capsys.readouterr().err


# --- how to break a run directory ----------------------------------------------------------------


def edit_manifest(change):
    def apply(run: Path, tmp: Path) -> None:
        manifest = json.loads((run / "run.json").read_text())
        change(manifest, tmp)
        (run / "run.json").write_text(json.dumps(manifest))
    return apply


def rewrite(name: str, make):
    """Replace a run file and record its new SHA-256 in run.json, as a forger would, so the content itself is tested."""
    def apply(run: Path, tmp: Path) -> None:
        make(run / name)
        manifest = json.loads((run / "run.json").read_text())
        for record in manifest["steps"].values():
            if name in record.get("sha256", {}):
                record["sha256"][name] = hashlib.sha256((run / name).read_bytes()).hexdigest()
            if name in record.get("sizes", {}):
                record["sizes"][name] = (run / name).stat().st_size
        (run / "run.json").write_text(json.dumps(manifest))
    return apply


def raw(name: str, data: bytes):
    def apply(run: Path, tmp: Path) -> None:
        (run / name).write_bytes(data)
    return apply


def poison_baseline(path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    tensors["conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(tensors, str(path), metadata=metadata)


def change_posterior(change):
    def make(path: Path) -> None:
        from pyro_dirichlet.posterior import load_posterior, save_posterior

        tree = load_posterior(path)
        save_posterior(change(tree), path)
    return make


def nan_draws(tree):
    tree["posterior"]["conv1.switch"][0, 0, 0] = float("nan")
    return tree


def wider_layer(tree):
    import xarray as xr

    posterior = tree["posterior"].to_dataset()
    wide = xr.concat([posterior["conv2.switch"], posterior["conv2.switch"].isel(conv2_channel=[0])], dim="conv2_channel")
    posterior = posterior.drop_vars("conv2.switch").drop_dims("conv2_channel").assign({"conv2.switch": wide / 2})
    tree["posterior"] = xr.DataTree(posterior)
    return tree


def renamed_layer(tree):
    import xarray as xr

    posterior = tree["posterior"].to_dataset().rename({"fc1.switch": "fc9.switch"})
    tree["posterior"] = xr.DataTree(posterior)
    return tree


def nested_spec(path: Path) -> None:
    path.write_text("[" * 200_000 + "]" * 200_000)


def class_child_spec(path: Path) -> None:
    spec = json.loads(path.read_text())
    text = json.dumps(spec).replace('"conv1"', '"__class__"', 1)
    path.write_text(text)


def symlink_out(name: str):
    def apply(run: Path, tmp: Path) -> None:
        (tmp / "secret").write_text("secret")
        (run / name).unlink()
        (run / name).symlink_to(tmp / "secret")
    return apply


def victim_file(name_of):
    def change(manifest, tmp: Path) -> None:
        (tmp / "victim").write_text("keep me")
        manifest["steps"]["prune"]["files"].append(name_of(tmp))
    return change


def weights_file(name: str, make):
    """Write a weights file the user passes with --weights."""
    def apply(run: Path, tmp: Path) -> None:
        make(tmp / name)
    return apply


def lenet5_state(change=None):
    def make(path: Path) -> None:
        from pyro_dirichlet.models import LeNet5Caffe

        state = LeNet5Caffe().state_dict()
        if change is not None:
            change(state)
        torch.save(state, path)
    return make


def image_folder(classes: dict[str, list[bytes | None]]):
    """An ImageFolder under tmp/images: per class folder, files of the given bytes (None: a real 8x8 PNG)."""
    def apply(run: Path, tmp: Path) -> None:
        import io

        from PIL import Image

        (tmp / "images").mkdir()
        for name, files in classes.items():
            folder = tmp / "images" / name
            folder.mkdir(parents=True)
            for i, content in enumerate(files):
                if content is None:
                    buffer = io.BytesIO()
                    Image.new("RGB", (8, 8), (i * 40 % 256, 0, 0)).save(buffer, format="PNG")
                    content = buffer.getvalue()
                (folder / f"{i}.png").write_bytes(content)
    return apply


FACTORY = ["train", "--out", "{run}", "--model", "torchvision.models:resnet18"]
IMAGES = ["--dataset", "imagefolder:{tmp}/images"]
GOOD = [None] * 12

CASES = [
    # your own model and data (issue 12): refused before anything is written
    ("factory-module-missing", ["train", "--out", "{run}", "--model", "no_such_package.nets:net", "--dataset", "mnist"], None,
     "model factory 'no_such_package.nets:net' does not import: module 'no_such_package.nets' is not installed"),
    ("factory-module-not-in-folder", ["train", "--out", "{run}", "--model", "no_such_nets:net", "--dataset", "mnist"], None,
     "module 'no_such_nets' is not installed and there is no no_such_nets.py in the current folder"),
    ("factory-name-missing", ["train", "--out", "{run}", "--model", "torchvision.models:no_such_net", "--dataset", "mnist"],
     None, "'torchvision.models' has no 'no_such_net'"),
    ("factory-not-callable", ["train", "--out", "{run}", "--model", "math:pi", "--dataset", "mnist"], None,
     "model factory 'math:pi' is a float, not a callable returning an nn.Module"),
    ("factory-a-class-not-a-module", ["train", "--out", "{run}", "--model", "builtins:dict", "--dataset", "mnist"], None,
     "model factory 'builtins:dict' is the class dict, not a Python function returning an nn.Module"),
    ("factory-rejects-its-arguments", [*FACTORY, "--model-arg", "depth=7", "--dataset", "mnist"], None,
     "failed when called with (depth=7): TypeError"),
    ("factory-malformed", ["train", "--out", "{run}", "--model", "torchvision.models:", "--dataset", "mnist"], None,
     "unknown model 'torchvision.models:'"),
    ("factory-without-dataset", FACTORY, None, "needs --dataset"),
    ("factory-wrong-class-count", [*FACTORY, *IMAGES], image_folder({"cat": GOOD, "dog": GOOD}),
     "returns (2, 1000) for 2 images, but imagefolder:"),
    ("factory-run-fails-before-work", ["run", "--out", "{run}", "--model", "no_such_package.nets:net", "--dataset", "mnist"],
     None, "does not import"),
    ("model-arg-without-equals", [*FACTORY, "--model-arg", "num_classes"], None, "--model-arg expects KEY=VALUE, got 'num_classes'"),
    ("model-arg-bad-key", [*FACTORY, "--model-arg", "num classes=3"], None, "is not a keyword argument name"),
    ("model-arg-for-registered-model", ["train", "--out", "{run}", "--model-arg", "width=3"], None,
     "--model-arg is for a model factory"),
    ("model-arg-on-a-registered-run", ["fit", "--model-arg", "width=3"], None, "--model-arg is for a model factory"),
    ("config-model-arg-not-a-table", ["train", "--out", "{run}", "--config", "{tmp}/c.toml"], "model-arg = 5\n",
     "must be a table such as"),
    ("weights-missing", ["train", "--out", "{run}", "--weights", "{tmp}/none.pt"], None, "none.pt' does not exist"),
    ("weights-keys-missing", ["train", "--out", "{run}", "--weights", "{tmp}/w.pt"],
     weights_file("w.pt", lenet5_state(lambda state: state.pop("fc2.bias"))), "does not fit the model: keys missing fc2.bias"),
    ("weights-keys-unknown", ["train", "--out", "{run}", "--weights", "{tmp}/w.pt"],
     weights_file("w.pt", lenet5_state(lambda state: state.update(extra=torch.zeros(1)))), "keys unknown to the model extra"),
    ("weights-shape", ["train", "--out", "{run}", "--weights", "{tmp}/w.pt"],
     weights_file("w.pt", lenet5_state(lambda state: state.update({"fc1.bias": torch.zeros(7)}))),
     "keys of another shape fc1.bias (7,) where the model has (500,)"),
    ("weights-nan", ["train", "--out", "{run}", "--weights", "{tmp}/w.pt"],
     weights_file("w.pt", lenet5_state(lambda state: state["conv2.weight"].fill_(float("nan")))),
     "holds non-finite values (NaN or infinity) in conv2.weight"),
    ("weights-not-a-state-dict", ["train", "--out", "{run}", "--weights", "{tmp}/w.pt"],
     weights_file("w.pt", lambda path: torch.save([1, 2, 3], path)), "holds a list, not a state dict"),
    ("weights-wrapped-checkpoint", ["train", "--out", "{run}", "--weights", "{tmp}/w.pt"],
     weights_file("w.pt", lambda path: torch.save({"epoch": 3, "state_dict": {}}, path)), "entry 'epoch' is not a named tensor"),
    ("weights-garbage", ["train", "--out", "{run}", "--weights", "{tmp}/w.bin"],
     weights_file("w.bin", lambda path: path.write_bytes(b"not a model at all")), "neither a safetensors file nor a PyTorch state dict"),
    ("weights-pickled-object", ["train", "--out", "{run}", "--weights", "{tmp}/w.pt"],
     weights_file("w.pt", lambda path: torch.save({"conv1.weight": Path("/")}, path)),
     "holds a pickled Python object (pathlib.PosixPath; a whole model saved with torch.save(model, path)?), which is "
     "never unpickled"),
    ("weights-safetensors-truncated", ["train", "--out", "{run}", "--weights", "{tmp}/w.safetensors"],
     weights_file("w.safetensors", lambda path: path.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": ")),
     "not a readable safetensors file"),
    ("imagefolder-missing", [*FACTORY, "--dataset", "imagefolder:{tmp}/nowhere"], None, "nowhere does not exist or is not a folder"),
    ("imagefolder-one-class", [*FACTORY, *IMAGES], image_folder({"cat": GOOD}),
     "has 1 class folder (only 'cat'); an ImageFolder needs at least 2 classes"),
    ("imagefolder-no-class", [*FACTORY, *IMAGES], image_folder({}), "has 0 class folders (none)"),
    ("imagefolder-corrupt-image", [*FACTORY, *IMAGES], image_folder({"cat": GOOD, "dog": [*GOOD, b"\x89PNG broken"]}),
     "cannot be decoded as an image"),
    ("imagefolder-not-images", [*FACTORY, *IMAGES], image_folder({"cat": GOOD, "dog": [b"GIF89a" + b"\x00" * 30]}),
     "cannot be decoded as an image"),
    ("imagefolder-empty-path", [*FACTORY, "--dataset", "imagefolder:"], None, "unknown data set name 'imagefolder:'"),
    ("dataset-unknown", [*FACTORY, "--dataset", "imagenet"], None, "unknown data set name 'imagenet'"),
    ("torchvision-unknown", [*FACTORY, "--dataset", "torchvision:NoSuchSet", "--data-dir", "{tmp}"], None,
     "torchvision:NoSuchSet is not a data set of torchvision.datasets"),
    ("torchvision-files-missing", [*FACTORY, "--dataset", "torchvision:KMNIST", "--data-dir", "{tmp}"], None,
     "torchvision:KMNIST cannot be read under"),
    ("image-size-0", [*FACTORY, *IMAGES, "--image-size", "0"], None, "--image-size must be an integer between 1 and 4096"),
    ("image-size-for-mnist", ["train", "--out", "{run}", "--image-size", "32"], None, "--image-size and --normalize are for"),
    ("normalize-one-number", [*FACTORY, *IMAGES, "--normalize", "0.5"], None, "--normalize expects MEAN,STD"),
    ("normalize-std-0", [*FACTORY, *IMAGES, "--normalize", "0.5,0"], None, "positive, finite stds"),
    # option values: refused before any work
    ("fit-ci-prob-above-1", ["fit", "--ci-prob", "1.5"], None, "--ci-prob must be strictly between 0 and 1"),
    ("fit-ci-prob-0", ["fit", "--ci-prob", "0"], None, "--ci-prob"),
    ("fit-prior-0", ["fit", "--prior", "0"], None, "--prior must be a positive, finite number"),
    ("fit-prior-negative", ["fit", "--prior", "-1"], None, "--prior"),
    ("fit-prior-inf", ["fit", "--prior", "inf"], None, "--prior"),
    ("fit-prior-nan", ["fit", "--prior", "nan"], None, "--prior"),
    ("fit-epochs-0", ["fit", "--epochs", "0"], None, "--epochs must be a positive integer"),
    ("fit-lr-0", ["fit", "--lr", "0"], None, "--lr must be a positive number"),
    ("fit-lr-negative", ["fit", "--lr", "-1"], None, "--lr"),
    ("fit-effective-data-size-0", ["fit", "--effective-data-size", "0"], None, "--effective-data-size"),
    ("fit-seed-negative", ["fit", "--seed", "-1"], None, "--seed must be an integer between 0 and"),
    ("fit-seed-too-large", ["fit", "--seed", str(2**64)], None, "--seed"),
    ("fit-layers-unknown", ["fit", "--layers", "conv9"], None, "conv9"),
    ("fit-device-unknown", ["fit", "--device", "tpu"], None, "tpu"),
    ("fit-lr-1000-diverges", ["fit", "--lr", "1000"], None, "lower --lr (it is 1000"),
    ("fit-prior-1e38-diverges", ["fit", "--prior", "1e38"], None, "--prior"),
    ("prune-budget-0", ["prune", "--budget", "0"], None, "--budget must be a number in (0, 1]"),
    ("prune-budget-above-1", ["prune", "--budget", "1.5"], None, "--budget"),
    ("prune-budget-nan", ["prune", "--budget", "nan"], None, "--budget"),
    ("prune-budget-impossible", ["prune", "--budget", "0.0001"], None, "smallest achievable"),
    ("prune-keep-0", ["prune", "--keep", "conv1=0"], None, "--keep for layer 'conv1'"),
    ("prune-keep-fraction-above-1", ["prune", "--keep", "conv1=1.5"], None, "--keep for layer 'conv1'"),
    ("prune-keep-unknown-layer", ["prune", "--keep", "conv9=3"], None, "conv9"),
    ("prune-keep-more-than-width", ["prune", "--keep", "conv1=21"], None, "conv1"),
    ("prune-keep-and-budget", ["prune", "--keep", "conv1=3", "--budget", "0.1"], None, "not both"),
    ("prune-keep-not-a-number", ["prune", "--keep", "conv1=many"], None, "--keep"),
    ("finetune-epochs-negative", ["finetune", "--finetune-epochs", "-1"], None, "--finetune-epochs must be"),
    ("finetune-lr-0", ["finetune", "--finetune-lr", "0"], None, "--finetune-lr must be"),
    ("report-latency-batch-0", ["report", "--latency-batch", "0"], None, "--latency-batch must be"),
    ("report-ci-prob-1", ["report", "--ci-prob", "1"], None, "--ci-prob"),
    ("run-empty", ["fit", "--run", ""], None, "--run must name a path"),
    ("fit-model-mismatch", ["fit", "--model", "lenet300"], None, "holds model 'lenet5'"),
    ("train-epochs-0", ["train", "--out", "{run}", "--train-epochs", "0"], None, "--train-epochs must be an integer at least 1"),
    ("train-subset-3", ["train", "--out", "{run}", "--subset", "3"], None, "--subset must be an integer at least 8"),
    ("train-model-on-wrong-data", ["train", "--out", "{run}", "--model", "vgg16", "--dataset", "mnist"], None,
     "trained on 'cifar10', not dataset 'mnist'"),
    ("train-out-inside-a-file", ["train", "--out", "{run}/run.json/x"], None, "run.json' is a file"),
    ("run-budget-0", ["run", "--out", "{run}", "--budget", "0"], None, "--budget must be"),
    ("run-keep-unknown-layer", ["run", "--out", "{run}", "--keep", "conv9=3"], None, "'conv9', which lenet5 does not have"),
    ("run-seed-overflow", ["run", "--out", "{run}", "--seed", str(2**63)], None, "--seed must be"),
    # config files
    ("config-missing", ["fit", "--config", "{tmp}/none.toml"], None, "none.toml"),
    ("config-dev-zero", ["fit", "--config", "/dev/zero"], None, "'/dev/zero' is not a regular file"),
    ("config-directory", ["fit", "--config", "{tmp}"], None, "is a directory"),
    ("config-not-toml", ["fit", "--config", "{tmp}/c.toml"], "prior = = 1\n", "not valid TOML"),
    ("config-unknown-key", ["fit", "--config", "{tmp}/c.toml"], "priorr = 0.5\n", "'priorr'"),
    ("config-empty-keep", ["prune", "--config", "{tmp}/c.toml"], "keep = {}\n", "--keep must name at least one layer"),
    ("config-empty-out", ["prune", "--config", "{tmp}/c.toml", "--run", None], 'run = ""\n', None),
    ("config-huge", ["fit", "--config", "{tmp}/c.toml"], "# " + "x" * 2_000_000 + "\n", "larger than"),
    ("config-not-utf8", ["fit", "--config", "{tmp}/c.toml"], b"prior = \xff\xfe\n", "not valid TOML"),
    ("config-nested", ["fit", "--config", "{tmp}/c.toml"], "x = " + "[" * 100_000 + "]" * 100_000 + "\n", "c.toml"),
    ("config-wrong-type", ["fit", "--config", "{tmp}/c.toml"], 'prior = "abc"\n', "'prior'"),
    ("config-seed-too-large", ["fit", "--config", "{tmp}/c.toml"], f"seed = {2**40}\n", "--seed"),
    ("config-quiet-not-bool", ["fit", "--config", "{tmp}/c.toml"], 'quiet = "yes"\n', "'quiet'"),
    # the manifest
    ("manifest-parent-path", ["prune"], edit_manifest(victim_file(lambda tmp: "../victim")), "run.json lists the file '../victim'"),
    ("manifest-absolute-path", ["fit"], edit_manifest(victim_file(lambda tmp: str(tmp / "victim"))), "run.json lists the file"),
    ("manifest-subfolder", ["finetune"], edit_manifest(victim_file(lambda tmp: "sub/victim")), "run.json lists the file 'sub/victim'"),
    ("manifest-lock-file", ["report"], edit_manifest(victim_file(lambda tmp: ".lock")), "run.json lists the file '.lock'"),
    ("manifest-not-json", ["prune"], raw("run.json", b"{"), "run.json cannot be read as a run manifest"),
    ("manifest-nested", ["prune"], raw("run.json", b"[" * 200_000 + b"]" * 200_000), "nested too deeply"),
    ("manifest-not-utf8", ["prune"], raw("run.json", b"\xff\xfe{}"), "run.json cannot be read"),
    ("manifest-a-list", ["prune"], raw("run.json", b"[]"), "run.json is not a pyro-dirichlet run manifest"),
    ("manifest-other-version", ["prune"], edit_manifest(lambda m, t: m.update(format_version=99)), "format version 99"),
    ("manifest-steps-a-list", ["prune"], edit_manifest(lambda m, t: m.update(steps=[])), "'steps' is not an object"),
    ("manifest-step-without-files", ["prune"], edit_manifest(lambda m, t: m["steps"]["fit"].pop("files")), "'files'"),
    ("manifest-unknown-step", ["prune"], edit_manifest(lambda m, t: m["steps"].update(deploy={})), "'deploy' is no step"),
    ("manifest-model-not-text", ["prune"], edit_manifest(lambda m, t: m.update(model=5)), "'model' is not a string"),
    ("manifest-unknown-model", ["prune"], edit_manifest(lambda m, t: m.update(model="resnet9000")), "resnet9000"),
    ("manifest-steps-out-of-order", ["report"], edit_manifest(lambda m, t: m["steps"].pop("fit")), "not a prefix"),
    ("manifest-bad-digest", ["prune"], edit_manifest(lambda m, t: m["steps"]["train"]["sha256"].update(
        {"baseline.safetensors": "xyz"})), "SHA-256 digests"),
    ("manifest-bad-subset", ["prune"], edit_manifest(lambda m, t: m["data"].update(subset="all")), "subset"),
    ("manifest-bad-normalize", ["prune"], edit_manifest(lambda m, t: (m.update(dataset=f"imagefolder:{t}"),
                                                                       m["data"].update(normalize={"mean": [0.5]}))),
     "records dataset 'imagefolder:"),  # a registered model's run: the edited dataset is refused first
    ("manifest-files-a-string", ["prune"], edit_manifest(lambda m, t: m["steps"]["train"].update(files="baseline")), "'files'"),
    # the files the steps wrote
    ("baseline-truncated", ["prune"], raw("baseline.safetensors", b"\x00" * 10), "baseline.safetensors has changed since the train step"),
    ("baseline-garbage", ["fit"], rewrite("baseline.safetensors", lambda p: p.write_bytes(b"\x10" * 64)), "baseline.safetensors cannot be loaded"),
    ("baseline-nan-weights", ["fit"], rewrite("baseline.safetensors", poison_baseline), "non-finite values in 'conv1.weight'"),
    ("baseline-nan-weights-prune", ["prune"], rewrite("baseline.safetensors", poison_baseline), "non-finite"),
    ("baseline-missing", ["fit"], lambda run, tmp: (run / "baseline.safetensors").unlink(), "baseline.safetensors missing"),
    ("baseline-symlink-out", ["fit"], symlink_out("baseline.safetensors"), "symbolic link out of the run directory"),
    ("posterior-garbage", ["prune"], rewrite("posterior.nc", lambda p: p.write_bytes(b"CDF\x01" + b"\x00" * 100)), "posterior.nc cannot be loaded"),
    ("posterior-changed", ["report"], raw("posterior.nc", b"\x89HDF"), "posterior.nc has changed since the fit step"),
    ("posterior-nan-draws-prune", ["prune"], rewrite("posterior.nc", change_posterior(nan_draws)), "points of the simplex"),
    ("posterior-nan-draws-report", ["report"], rewrite("posterior.nc", change_posterior(nan_draws)), "points of the simplex"),
    ("posterior-too-many-channels", ["report"], rewrite("posterior.nc", change_posterior(wider_layer)), "layer 'conv2' has 50 channels"),
    ("posterior-unknown-layer", ["prune"], rewrite("posterior.nc", change_posterior(renamed_layer)), "'fc9.switch'"),
    ("posterior-missing", ["prune"], lambda run, tmp: (run / "posterior.nc").unlink(), "no fit step (posterior.nc missing)"),
    ("pruned-spec-nested", ["report"], rewrite("pruned.json", nested_spec), "pruned.json"),
    ("pruned-spec-class-child", ["report"], rewrite("pruned.json", class_child_spec), "pruned"),
    ("pruned-weights-changed", ["report"], raw("pruned.safetensors", b"\x00" * 8), "pruned.safetensors has changed since the finetune step"),
    ("pruned-before-finetune-garbage", ["finetune"], rewrite("pruned-before-finetune.safetensors",
                                                             lambda p: p.write_bytes(b"\x08" + b"\x00" * 20)), "pruned-before-finetune"),
    ("run-json-a-folder", ["prune"], lambda run, tmp: ((run / "run.json").unlink(), (run / "run.json").mkdir()), "run.json"),
]


@pytest.mark.parametrize(("argv", "setup", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_exits_2_with_one_sentence_and_changes_nothing(run_copy, tmp_path, small_mnist_everywhere, capsys,
                                                                 argv, setup, expected):
    argv = [arg.format(tmp=tmp_path, run=run_copy) if isinstance(arg, str) else arg for arg in argv]
    if isinstance(setup, (str, bytes)):
        config = tmp_path / "c.toml"
        config.write_bytes(setup.encode() if isinstance(setup, str) else setup)
    elif setup is not None:
        setup(run_copy, tmp_path)
    if None in argv:  # the config file alone names the run directory
        argv = argv[:argv.index(None) - 1]
        expected = "must name a path"
    elif "--run" not in argv and "--out" not in argv:
        argv = [argv[0], "--run", str(run_copy), *argv[1:]]
    before = snapshot(run_copy)
    victim = tmp_path / "victim"
    code, error = invoke([*argv, "--quiet"], capsys)
    assert code == 2, error
    lines = error.strip().splitlines()
    if lines[0].startswith("usage:"):  # argparse: the usage (indented continuation lines), then the sentence
        lines = [line for line in lines[1:] if not line.startswith(" ")]
    assert len(lines) == 1 and lines[0].startswith("pyro-dirichlet"), error
    assert expected in lines[0], lines[0]
    assert "Traceback" not in error
    assert snapshot(run_copy) == before
    if victim.exists():
        assert victim.read_text() == "keep me"


def test_the_reliability_page_counts_these_cases():
    text = " ".join(RELIABILITY.read_text().split())
    counted = re.search(r"(\d+) bad inputs \(`tests/test_bad_inputs.py`\)", text)
    assert counted is not None and int(counted.group(1)) == len(CASES) >= 60


def test_a_fresh_out_that_fails_is_not_created(tmp_path, small_mnist_everywhere, capsys):
    out = tmp_path / "new" / "run"
    code, error = invoke(["train", "--out", str(out), "--subset", "3", "--quiet"], capsys)
    assert code == 2 and "subset" in error and not (tmp_path / "new").exists()
    code, error = invoke(["run", "--out", str(out), "--keep", "conv9=3", "--quiet"], capsys)
    assert code == 2 and "'conv9', which lenet5 does not have" in error and not (tmp_path / "new").exists()
    code, error = invoke(["run", "--out", str(out), "--layers", "fc1", "--keep", "conv1=3", "--quiet"], capsys)
    assert code == 2 and "--layers does not switch" in error and not (tmp_path / "new").exists()


def test_a_diverging_fit_gives_advice_that_fits_the_cause(run_copy, small_mnist_everywhere, capsys):
    before = snapshot(run_copy)
    code, error = invoke(["fit", "--run", str(run_copy), "--lr", "1e30", "--quiet"], capsys)
    assert code == 2 and "the fit diverged at SVI step" in error and "lower --lr (it is 1e+30" in error, error
    assert error.count("\n") == 1
    assert snapshot(run_copy) == before


def test_a_diverged_fit_leaves_no_checkpoint_to_resume_into_the_same_divergence(run_copy, small_mnist_everywhere,
                                                                                 monkeypatch, capsys):
    import torch

    from pyro_dirichlet.app import steps
    from pyro_dirichlet.infer.fit import FitDivergedError

    def diverging(switches, data, config, *, checkpoint):
        checkpoint.write_bytes(b"a checkpoint of the steps before the divergence")
        raise FitDivergedError(60, float("nan"), [-1.0] * 60, {"conv1": torch.ones(20)})

    monkeypatch.setattr(steps, "fit", diverging)
    before = snapshot(run_copy)
    code, error = invoke(["fit", "--run", str(run_copy), "--quiet"], capsys)
    assert code == 2 and "the fit diverged at SVI step 60" in error and "check the baseline and the data" in error
    assert snapshot(run_copy) == before


def test_a_truncated_fit_checkpoint_is_removed_and_the_fit_starts_over(run_copy, small_mnist_everywhere, capsys):
    checkpoint = default_fit_checkpoint(run_copy)
    checkpoint.write_bytes(b"PK\x03\x04 truncated")
    code, error = invoke(["fit", "--run", str(run_copy), "--quiet"], capsys)
    assert code == 0, error
    assert "warning:" in error and checkpoint.name in error and "starts over" in error
    assert not checkpoint.exists()


def test_a_cached_baseline_with_nan_weights_is_retrained_not_reused(tmp_path, small_mnist_everywhere, capsys):
    from safetensors.torch import load_file

    cache = tmp_path / "cache"
    argv = ["train", "--subset", "400", "--train-epochs", "1", "--cache-dir", str(cache), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    (cached,) = cache.glob("*.safetensors")
    poison_baseline(cached)
    with pytest.warns(RuntimeWarning, match=r"non-finite values in 'conv1.weight'\); retraining it"):
        assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    recorded = json.loads((tmp_path / "b" / "run.json").read_text())["steps"]["train"]["result"]
    assert recorded["trained_in_this_run"] is True
    assert all(torch.isfinite(tensor).all() for tensor in load_file(str(tmp_path / "b" / "baseline.safetensors")).values())
