"""The README's Python example runs as written (on a real MNIST subset, to stay fast)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


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
    assert {k: len(v) for k, v in namespace["keep"].items()} == {"conv1": 5, "conv2": 12, "fc1": 40}
    from pyro_dirichlet import load_pruned

    example = namespace["example"]
    namespace["small"].eval()
    assert torch.allclose(load_pruned(tmp_path / "lenet5-pruned")(example), namespace["small"](example))
