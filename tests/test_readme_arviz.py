"""README's ArviZ 1.x block runs as written on a run's posterior.nc."""

import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

README = Path(__file__).resolve().parent.parent / "README.md"


def arviz_block() -> str:
    text = README.read_text()
    start = text.index("(`tests/test_readme_arviz.py` runs them):")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_the_arviz_calls_work_on_a_runs_posterior(small_run):
    import matplotlib.pyplot as plt

    code = arviz_block().replace("runs/demo/posterior.nc", str(small_run / "posterior.nc"))
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # az.loo warns about its Pareto k values, as README says
        exec(compile(code, "README.md", "exec"), namespace)
    plt.close("all")
    assert namespace["table"].shape[0] == 20  # one row per conv1 channel
    assert namespace["unreliable"] >= 0 and hasattr(namespace["loo"], "elpd")
