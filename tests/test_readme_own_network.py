"""docs/your-network.md's "Your own network and data": its commands run as written (on a 64-image subset of the CIFAR-10
JPEG copy unpacked into an ImageFolder), and its figures are those of the committed report.json."""

import json
import re
import shlex
import zipfile
from pathlib import Path

import pytest
import torch

from pyro_dirichlet.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "your-network.md"
RESULT = ROOT / "analysis" / "results" / "resnet18-cifar10-imagefolder" / "report.json"
HEADING = "## Your own network and data"


def section() -> str:
    text = PAGE.read_text()
    start = text.index(HEADING)
    return text[start:text.index("\n## ", start + 1)]


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", section(), re.S)


def commands(block: str) -> list[list[str]]:
    """Each command line of a bash block (continuation lines joined, comments dropped) as its words."""
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def data_root() -> Path | None:
    from conftest import mnist_root

    root = mnist_root()  # the shared data folder: MNIST and the CIFAR-10 JPEG copy sit side by side
    return root if root is not None and (root / "cifar10-jpeg" / "train.zip").exists() else None


def test_the_figures_are_those_of_the_committed_report():
    report = json.loads(RESULT.read_text())
    text = " ".join(section().split())
    baseline, pruned = report["baseline"], report["pruned"]
    assert report["model"] == "torchvision.models:resnet18" and report["data"]["image_size"] == 32
    assert report["data"]["train"] == 4000 and report["data"]["subset"] == 4000
    for figure in (f"{baseline['test_accuracy']:.1%}", f"{pruned['test_accuracy_before_finetune']:.1%}",
                   f"{pruned['test_accuracy']:.1%}", f"{baseline['params']:,}", f"{pruned['params']:,}",
                   f"{pruned['params_fraction']:.1%}", f"{pruned['flops_fraction']:.1%}",
                   f"{report['latency']['speedup']:.2f}x", f"{report['total_seconds'] / 60:.1f} minutes"):
        assert figure in text, figure
    default_lr = json.loads((RESULT.parent / "report-finetune-lr-0.01.json").read_text())
    same = ("test_accuracy", "validation_accuracy", "params")  # the same baseline; only the seconds differ
    assert default_lr["pruned"]["finetune_lr"] == 0.01
    assert {key: default_lr["baseline"][key] for key in same} == {key: baseline[key] for key in same}
    assert f"ends at {default_lr['pruned']['test_accuracy']:.1%}" in text
    measured = json.loads((RESULT.parent / "measurement.json").read_text())
    assert f"{measured['user_seconds']:.0f} s of CPU time" in text
    assert f"peak memory {measured['max_rss_kib'] / 2**20:.1f} GiB" in text
    (run,) = [words for words in commands(blocks("bash")[0]) if words[0].endswith("pyro-dirichlet")]
    assert report["pruned"]["finetune_epochs"] == int(run[run.index("--finetune-epochs") + 1])
    assert report["baseline"]["epochs"] == int(run[run.index("--train-epochs") + 1])


@pytest.mark.slow
def test_the_section_runs_as_written_on_a_small_subset(tmp_path, monkeypatch, capsys):
    root = data_root()
    if root is None:
        pytest.skip("the CIFAR-10 JPEG copy is not in the data folder ($PYRO_DIRICHLET_DATA)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYRO_DIRICHLET_CACHE", str(tmp_path / "cache"))
    unpack, report_block = blocks("bash")
    (python_block,) = blocks("python")
    steps = commands(unpack)
    for words in steps[:-1]:  # python -m zipfile -e ARCHIVE FOLDER, with the archive in this machine's data folder
        assert words[1:4] == ["-m", "zipfile", "-e"]
        archive = root / Path(words[4]).relative_to("../shared/data")
        with zipfile.ZipFile(archive) as opened:
            opened.extractall(words[5])
    run = steps[-1]
    assert run[0].endswith("pyro-dirichlet") and run[1] == "run"
    # Smaller than the page's run, so it stays a test: 64 training images, one epoch each.
    for flag, value in (("--subset", "64"), ("--train-epochs", "1"), ("--finetune-epochs", "1")):
        run[run.index(flag) + 1] = value
    assert main([*run[1:], "--quiet", "--latency-batch", "8"]) == 0

    out = Path(run[run.index("--out") + 1])
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["model"] == "torchvision.models:resnet18" and manifest["model_args"] == {"num_classes": 10}
    assert manifest["dataset"] == f"imagefolder:{tmp_path / 'cifar10-images'}"
    assert manifest["data"]["classes"][:2] == ["airplane", "automobile"] and manifest["data"]["train"] == 64
    report = json.loads((out / "report.json").read_text())
    assert report["pruned"]["params"] < report["baseline"]["params"]
    assert report["pruned"]["architecture"]["layer4.1.conv1"] == 256  # half of 512: the default for a factory

    (report_command,) = commands(report_block)
    assert main([*report_command[1:], "--quiet", "--latency-batch", "8"]) == 0
    namespace: dict = {}
    exec(compile(python_block, str(PAGE), "exec"), namespace)
    small = namespace["small"]
    assert small(torch.zeros(1, 3, 32, 32)).shape == (1, 10) and small.layer4[1].conv1.out_channels == 256
    capsys.readouterr()
