"""The speed benchmark suite of issue 5: what fitting switches costs next to training, how much of
an SVI step is Pyro, how long a posterior summary takes, and what pruning buys at inference.

Run it as one command; it prints a table and one JSON line::

    python -m benchmarks --repeats 3 --json benchmarks/results/suite.json
    python -m benchmarks --quick            # tiny synthetic sizes, seconds: a smoke run

Every number comes from :mod:`pyro_dirichlet.measure`; each module here measures one thing.
"""

from benchmarks.bars import BARS, CORE_BARS, SUITE_BARS, Bar, bar_lines, judge
from benchmarks.epochs import EpochTiming, measure_epochs
from benchmarks.inference import InferenceTiming, measure_inference
from benchmarks.overhead import StepOverhead, TorchSVI, measure_overhead
from benchmarks.posterior_time import PosteriorTiming, measure_posterior
from benchmarks.workloads import Workload, lenet5_workload, vgg16_workload

__all__ = [
    "BARS",
    "Bar",
    "CORE_BARS",
    "SUITE_BARS",
    "bar_lines",
    "EpochTiming",
    "InferenceTiming",
    "PosteriorTiming",
    "StepOverhead",
    "TorchSVI",
    "Workload",
    "judge",
    "lenet5_workload",
    "measure_epochs",
    "measure_inference",
    "measure_overhead",
    "measure_posterior",
    "vgg16_workload",
]
