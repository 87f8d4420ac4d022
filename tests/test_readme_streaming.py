"""The README's streaming-and-likelihoods example runs as written, on a planted regression (issue 12)."""

import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from test_likelihoods import SIGNAL, planted

README = Path(__file__).resolve().parents[1] / "README.md"


def streaming_example() -> str:
    text = README.read_text()
    section = text[text.index("### Streaming data and other likelihoods"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.usefixtures("one_thread")
def test_readme_streaming_example_finds_the_planted_units(capsys):
    network, inputs, clean = planted()
    targets = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    namespace = {"net": network, "dataset": TensorDataset(inputs, targets)}
    code = streaming_example()
    assert len(code.strip().splitlines()) <= 12
    exec(compile(code, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert set(map(int, re.findall(r"\d+", printed))) == SIGNAL
    assert namespace["result"].steps == 4  # the loss likelihood's one epoch of 512 examples in batches of 128
