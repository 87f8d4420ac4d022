"""docs/python-api.md's streaming-and-likelihoods example runs as written, on a planted regression (issue 12), and
docs/results.md's memory figures are the committed benchmark's."""

import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from test_likelihoods import SIGNAL, planted

ROOT = Path(__file__).resolve().parents[1]
PYTHON_API = ROOT / "docs" / "python-api.md"
RESULTS = ROOT / "docs" / "results.md"


def streaming_example() -> str:
    text = PYTHON_API.read_text()
    section = text[text.index("## Streaming data and other likelihoods"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.converged_fit  # the example fits with the library's default length
def test_readme_streaming_example_finds_the_planted_units(capsys):
    network, inputs, clean = planted()
    targets = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    namespace = {"net": network, "dataset": TensorDataset(inputs, targets)}
    code = streaming_example()
    assert len(code.strip().splitlines()) <= 12
    exec(compile(code, str(PYTHON_API), "exec"), namespace)
    printed = capsys.readouterr().out
    assert set(map(int, re.findall(r"\d+", printed))) == SIGNAL
    # the loss likelihood's fit: until converged, at least the stopping rule's minimum
    assert namespace["result"].steps >= 600 and namespace["result"].convergence is not None


def test_readme_memory_figures_are_the_committed_benchmark():
    import json

    record = json.loads((ROOT / "benchmarks" / "results" / "streaming.json").read_text())
    figures = record["figures"]
    text = " ".join(RESULTS.read_text().split())
    stated = re.search(
        r"was ([\d,]+) MiB against ([\d,]+) MiB preloaded \(([\d.]+)x\), at ([\d.]+)x the step time \(([\d.]+) against ([\d.]+) s\)", text
    )
    assert stated is not None, "the memory sentence of docs/results.md changed its form"
    numbers = [float(value.replace(",", "")) for value in stated.groups()]
    assert numbers == [
        round(figures["loader_peak_rss_mib"]), round(figures["preloaded_peak_rss_mib"]), round(figures["rss_ratio"], 2),
        round(figures["step_time_ratio"], 2), round(figures["loader_seconds_per_step"], 2), round(figures["preloaded_seconds_per_step"], 2),
    ]
    assert f"{round(figures['rss_before_data_mib'])} MiB of either process" in text
    assert f"needs {figures['rss_above_start_ratio']:.2f}x" in text
    assert "2 alternating rounds of 50 SVI steps of 128 images" in text and record["runs"]["loader"][0]["steps"] == 50
    assert len(record["runs"]["loader"]) == 2 and record["runs"]["loader"][0]["batch_size"] == 128
    assert record["runs"]["loader"][0]["workers"] == 1
