"""Every quality bar the project measures itself against, and how a result is judged against them.

One system for every harness: the speed suite (``python -m benchmarks``, issue 5), the
end-to-end workflow (``python -m analysis.benchmark_core``, issue 2), the VGG-16 speed
study and the LeNet-5 reproduction table each name their :class:`Bar` s here, judge their
figures with :func:`judge` and print them with :func:`bar_lines`, so a bar reads and is
decided the same way wherever it appears.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["BARS", "CORE_BARS", "REPRODUCTION_BARS", "STREAMING_BARS", "SUITE_BARS", "VGG_SPEED_BAR", "Bar", "bar_lines", "judge"]

_OPS = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Bar:
    """A bound on one figure of a benchmark's JSON.

    Attributes:
        figure: the key in the benchmark's ``figures`` mapping.
        op: ``"<="`` or ``">="``.
        bound: the limit.
        meaning: one line for the table.
    """

    figure: str
    op: str
    bound: float
    meaning: str

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"bar {self.figure!r}: op must be one of {sorted(_OPS)}, got {self.op!r}.")

    def met(self, value: float) -> bool:
        return _OPS[self.op](value, self.bound)


#: The speed suite's bars (issue 5).
SUITE_BARS = (
    Bar("lenet5_svi_over_train", "<=", 0.7, "LeNet-5: SVI epoch / training epoch"),
    Bar("vgg16_svi_over_train", "<=", 0.7, "VGG-16: SVI epoch / training epoch"),
    Bar("vgg16_pyro_overhead", "<=", 0.10, "VGG-16: Pyro's share of an SVI step"),
    Bar("vgg16_posterior_seconds", "<=", 5.0, "VGG-16: 1,000 draws + HDI summary (s)"),
)
#: The speed suite's bars under their historical name.
BARS = SUITE_BARS

#: The LeNet-5 / MNIST main job's bars (issue 2), judged on medians over runs.
CORE_BARS = (
    Bar("total_seconds", "<=", 300.0, "LeNet-5 main job, end to end (s)"),
    Bar("baseline_test_accuracy", ">=", 0.990, "baseline test accuracy"),
    Bar("params_fraction", "<=", 0.025, "pruned parameters / baseline"),
    Bar("flops_fraction", "<=", 0.10, "pruned FLOPs / baseline"),
    Bar("pruned_test_accuracy", ">=", 0.988, "pruned test accuracy after fine-tuning"),
    Bar("svi_over_train_epoch", "<=", 1.0, "SVI epoch / training epoch"),
)

#: Pruned VGG-16's CPU speedup against its FLOP reduction (``analysis/benchmark_vgg_speed.py``).
VGG_SPEED_BAR = Bar("speedup_over_flop_reduction", ">=", 0.6, "VGG-16 deployed: speedup / FLOP reduction")

#: The LeNet-5 reproduction table's bars (``analysis/reproduction.py``), judged on medians over seeds.
REPRODUCTION_BARS = (
    Bar("error", "<=", 0.010, "LeNet-5 pruned: test error"),
    Bar("flops_reduction", ">=", 10.0, "LeNet-5 pruned: FLOPs reduction (x)"),
    Bar("params_reduction", ">=", 40.0, "LeNet-5 pruned: parameter reduction (x)"),
    Bar("fit_and_finetune_in_baseline_epochs", "<=", 3.0, "LeNet-5: fit + fine-tune in baseline epochs"),
)

#: Streamed against preloaded SVI over a 50,000-image ImageFolder (``python -m benchmarks.streaming``, issue 12).
STREAMING_BARS = (
    Bar("rss_ratio", "<=", 0.25, "peak RSS: DataLoader fit / preloaded fit"),
    Bar("step_time_ratio", "<=", 1.3, "SVI step time: DataLoader / preloaded"),
)


def judge(figures: Mapping[str, float], bars: Iterable[Bar] = SUITE_BARS) -> dict[str, bool]:
    """``{figure: met}`` for every one of ``bars`` whose figure was measured."""
    return {bar.figure: bar.met(figures[bar.figure]) for bar in bars if bar.figure in figures}


def bar_lines(figures: Mapping[str, float], bars: Iterable[Bar], per_run: Sequence[Mapping[str, float]] = ()) -> list[str]:
    """One table line per measured bar: meaning, value, bound, verdict (and each run's value, if given)."""
    lines = []
    for bar in bars:
        if bar.figure not in figures:
            continue
        runs = f"  runs {', '.join(f'{run[bar.figure]:.4g}' for run in per_run)}" if per_run else ""
        verdict = "ok" if bar.met(figures[bar.figure]) else "NOT MET"
        lines.append(f"  bar {bar.meaning:42s} {figures[bar.figure]:10.4g} {bar.op} {bar.bound:<7g} {verdict}{runs}")
    return lines
