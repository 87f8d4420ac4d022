"""The README's Python example runs as written (on a real MNIST subset, to stay fast), and so do the blocks of
docs/python-api.md that continue it; docs/method.md and docs/reliability.md state the real defaults."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PYTHON_API = ROOT / "docs" / "python-api.md"
METHOD = ROOT / "docs" / "method.md"
RELIABILITY = ROOT / "docs" / "reliability.md"


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## In Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_is_short_and_runs(small_mnist_everywhere, tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "conv1.switch[0]" in printed and "hdi95_lb" in printed
    assert (tmp_path / "lenet5-pruned.safetensors").exists() and (tmp_path / "lenet5-pruned.json").exists()
    from pyro_dirichlet import count_flops, load_pruned

    example = namespace["example"]
    # budget=0.5: at most half the FLOPs, every switched layer narrower than before
    flops = count_flops(namespace["small"], example), count_flops(namespace["net"], example)
    assert 0.4 * flops[1] < flops[0] <= 0.5 * flops[1]
    assert set(namespace["keep"]) == {"conv1", "conv2", "fc1"}
    namespace["small"].eval()
    assert torch.allclose(load_pruned(tmp_path / "lenet5-pruned")(example), namespace["small"](example))

    # docs/python-api.md's calibration section continues this example.
    (calibration_block,) = page_blocks(PYTHON_API, "## Calibration after pruning")
    exec(compile(calibration_block, str(PYTHON_API), "exec"), namespace)
    calibration = namespace["calibration"]
    assert calibration.loss_after < calibration.loss_before and calibration.scales_kept
    assert "training loss" in capsys.readouterr().out
    assert namespace["by_l1"] is calibration.network
    assert (namespace["by_l1"].conv1.out_channels, namespace["by_l1"].fc1.out_features) == (5, 40)


def page_blocks(page: Path, heading: str) -> list[str]:
    """Every ```python block of ``page``'s section that starts at ``heading`` (to the next ``## `` or the end)."""
    text = page.read_text()
    section = text[text.index(heading):]
    end = section.find("\n## ", 1)
    section = section if end == -1 else section[:end]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_extension_adds_a_criterion_with_one_class():
    from pyro_dirichlet.criteria import CRITERIA

    definition, usage = page_blocks(PYTHON_API, "## Extending: a new criterion")
    namespace: dict = {}
    try:
        exec(compile(definition, str(PYTHON_API), "exec"), namespace)
        assert "l2-norm" in CRITERIA
        exec(compile(usage, str(PYTHON_API), "exec"), namespace)
    finally:
        CRITERIA._entries.pop("l2-norm", None)
    net, small, scores = namespace["net"], namespace["small"], namespace["scores"]
    assert torch.allclose(scores["conv2"], net.conv2.weight.detach().flatten(1).norm(dim=1).double())
    assert (small.conv1.out_channels, small.conv2.out_channels, small.fc1.out_features) == (5, 12, 40)
    kept = scores["conv1"].topk(5).indices.sort().values
    assert torch.equal(small.conv1.weight, net.conv1.weight[kept])


NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "eight": 8}


@pytest.mark.converged_fit  # reads the library's real default fit length
def test_readme_example_comments_state_the_real_defaults():
    """`finetune(small, data)  # 8 epochs` and `fit(...)  # one epoch` must be what the functions do without arguments."""
    import inspect

    from pyro_dirichlet.infer.fit import FitConfig
    from pyro_dirichlet.repair.train import DEFAULT_EPOCHS, finetune

    code = readme_example()
    finetuned = re.search(r"^finetune\(small, data\)\s*# (\d+) epochs", code, re.M)
    assert finetuned is not None, "the example's finetune line lost its comment"
    assert int(finetuned.group(1)) == inspect.signature(finetune).parameters["epochs"].default == DEFAULT_EPOCHS
    fitted = re.search(r"^result = fit\(.*# SVI until converged", code, re.M)
    assert fitted is not None and FitConfig().epochs is None


@pytest.mark.converged_fit
def test_readme_prose_states_the_real_defaults():
    from pyro_dirichlet.app.steps import FIT_CHECKPOINT_EVERY
    from pyro_dirichlet.infer.fit import FitConfig
    from pyro_dirichlet.infer.guide import DEFAULT_INIT_CONCENTRATION
    from pyro_dirichlet.repair.train import DEFAULT_EPOCHS, DEFAULT_LR

    text = " ".join(METHOD.read_text().split())
    objective = re.search(r"Adam at lr ([\d.]+) falling tenfold per ([\d,]+) steps, batch (\d+), \*\*until converged\*\*", text)
    assert (float(objective.group(1)), int(objective.group(3)), None) == (FitConfig().lr, FitConfig().batch_size, FitConfig().epochs)
    assert FitConfig().lr_decay ** int(objective.group(2).replace(",", "")) == pytest.approx(0.1)
    tuning = re.search(r"Fine-tuning: (\d+) epochs of Adam at a peak learning rate of ([\de.-]+)", text)
    assert (int(tuning.group(1)), float(tuning.group(2))) == (DEFAULT_EPOCHS, DEFAULT_LR)
    assert float(re.search(r"initialised at ([\d.]+) per channel", text).group(1)) == DEFAULT_INIT_CONCENTRATION
    reliability = " ".join(RELIABILITY.read_text().split())
    assert int(re.search(r"atomically every (\d+) SVI steps", reliability).group(1)) == FIT_CHECKPOINT_EVERY
