"""The report's "What next" section: advice read off a finished run's own numbers, each with the option that acts on it.

Five kinds, each given only when the run shows it (the last always): accuracy the pruning
lost, an SVI fit too short to have settled, channels whose HDI straddles the keep threshold,
layers left whole that ``--coupled group`` would prune, and how to feed, load and export the
pruned network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Advice", "what_next", "LOST_ACCURACY", "MIN_SVI_STEPS", "STRADDLING_SHARE"]

#: Test accuracy below the baseline's by more than this is advice-worthy.
LOST_ACCURACY = 0.01
#: Fewer SVI steps than this rarely let the switch posterior settle.
MIN_SVI_STEPS = 200
#: A layer where more than this share of the channels straddle the keep threshold is ranked by noise.
STRADDLING_SHARE = 0.5


@dataclass(frozen=True)
class Advice:
    """One piece of advice: ``kind`` (``accuracy``, ``svi``, ``straddling``, ``coupled``, ``deployment``) and its text."""

    kind: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def what_next(report: Mapping[str, Any], run_path: str) -> list[Advice]:
    """The advice for ``report`` (the content of ``report.json``) of the run in ``run_path``."""
    advice = [*_accuracy(report), *_svi(report), *_straddling(report), *_coupled(report), _deployment(report, run_path)]
    return advice


def _accuracy(report: Mapping[str, Any]) -> list[Advice]:
    base, pruned = report["baseline"]["test_accuracy"], report["pruned"]["test_accuracy"]
    lost = base - pruned
    if lost <= LOST_ACCURACY:
        return []
    epochs = report["pruned"].get("finetune_epochs", 0)
    distilled = report["pruned"].get("finetune_distillation", 0) or 0
    longer = f"fine-tune longer (--finetune-epochs {max(2 * epochs, 4)}; it was {epochs})"
    teacher = "" if distilled > 0 else ", with the baseline as teacher (--finetune-distillation 0.5)"
    return [Advice("accuracy", f"Pruning lost {lost:.1%} of test accuracy ({base:.2%} -> {pruned:.2%}): {longer}{teacher}, "
                               f"or keep more of the network (a larger --budget than the "
                               f"{report['pruned']['flops_fraction']:.0%} of FLOPs kept now, or larger --keep counts).")]


def _svi(report: Mapping[str, Any]) -> list[Advice]:
    svi = report["svi"]
    elbo = np.asarray(svi.get("elbo", []), dtype=float)
    epochs = svi.get("epochs", 1)
    if svi["steps"] < MIN_SVI_STEPS:
        reason = f"the fit took only {svi['steps']} SVI steps ({epochs} epoch(s)), too few for the switches to settle"
    elif len(elbo) >= 40 and _still_rising(elbo):
        reason = f"the ELBO was still rising when the fit stopped after {svi['steps']} steps"
    else:
        return []
    more = max(2 * epochs, int(np.ceil(epochs * MIN_SVI_STEPS / max(1, svi["steps"]))))
    return [Advice("svi", f"{reason[0].upper()}{reason[1:]}: refit with more epochs (pyro-dirichlet fit --epochs {more}), "
                          "then prune, fine-tune and report again.")]


def _still_rising(elbo: np.ndarray) -> bool:
    """The last tenth's mean ELBO is above the tenth before by more than twice its noise."""
    tenth = len(elbo) // 10
    last, before = elbo[-tenth:], elbo[-2 * tenth:-tenth]
    noise = np.sqrt(last.var() / len(last) + before.var() / len(before))
    return bool(last.mean() - before.mean() > 2 * noise)


def _straddling(report: Mapping[str, Any]) -> list[Advice]:
    unsure = {layer: (len(row["straddling_channels"]), row["width"]) for layer, row in report["layers"].items()
              if row["width"] and len(row["straddling_channels"]) > STRADDLING_SHARE * row["width"]}
    if not unsure:
        return []
    percent = round(report["ci_prob"] * 100)
    every = [layer for layer, (count, width) in unsure.items() if count == width]
    named = "; ".join(f"{layer} {count} of {width}" for layer, (count, width) in unsure.items())
    lead = (f"Every channel of {', '.join(every)} straddles" if every else "Most channels straddle")
    return [Advice("straddling", f"{lead} the keep threshold ({named} channels have a {percent}% HDI containing it): "
                                 "the posterior cannot tell kept from dropped channels there, so the cut is close to "
                                 "arbitrary. Fit longer (--epochs), or give the data more weight against the prior "
                                 "(a larger --effective-data-size, or a smaller --prior), before trusting the ranking.")]


def _coupled(report: Mapping[str, Any]) -> list[Advice]:
    if report.get("coupled", "skip") != "skip":
        return []
    tied = [row["layer"] for row in report.get("skipped_layers", [])
            if not row["unsupported"] and "coupled" in row["reason"] and "--coupled group" in
            row["reason"].replace("coupled='group'", "--coupled group")]
    if not tied:
        return []
    return [Advice("coupled", f"{len(tied)} layer(s) stayed whole because residual adds tie their channels "
                              f"({', '.join(tied[:8])}{', ...' if len(tied) > 8 else ''}): refit with --coupled group to "
                              "prune each such group with one shared switch (pyro-dirichlet layers --model ... lists "
                              "the groups).")]


def _deployment(report: Mapping[str, Any], run_path: str) -> Advice:
    pre = report.get("preprocessing") or {}
    steps = []
    if pre.get("image_size"):
        steps.append(f"resized to {pre['image_size']} x {pre['image_size']}")
    if pre.get("channel_order"):
        steps.append(f"decoded as {pre['channel_order']}")
    if pre.get("normalize"):
        mean, std = (",".join(f"{v:.4g}" for v in pre["normalize"][key]) for key in ("mean", "std"))
        steps.append(f"scaled to [0, 1] and normalised per channel with mean {mean} and std {std}")
    feed = ("The pruned network expects images " + ", ".join(steps) + "; " if steps
            else f"The pruned network expects images prepared as {report['dataset']}'s are; ")
    model = report["model"]
    factory = f', factory="{model}"' if ":" in model else ""
    return Advice("deployment", f"{feed}load it with load_pruned(\"{run_path}/pruned\"{factory}) (model.deployment "
                                "holds the preprocessing and class names) and export it with "
                                "torch.onnx.export(model, (images,), \"pruned.onnx\") or torch.export.export(model, "
                                "(images,)).")
