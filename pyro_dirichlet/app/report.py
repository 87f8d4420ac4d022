"""The report step: what a finished run did, as ``report.json``, a self-contained ``report.html`` and ``report.md``.

The report compares the baseline with the pruned network layer by layer (widths,
parameters, FLOPs) and as a whole (accuracy, inference latency), shows the ELBO curve, each
layer's forest plot and the posterior mass curves, checks the switched network's predictions
on validation images (averaged over posterior draws, at the posterior mean, pruned, and
accuracy draw by draw), draws the switch model, and lists the keep decisions with the
channels whose credible interval straddles the keep threshold -- the decisions the posterior
is unsure of. Every number comes from :mod:`pyro_dirichlet.measure` (recorded by the steps
or measured here); the HTML embeds its images as base64 PNG data URIs and fetches nothing.
"""

from __future__ import annotations

import base64
import html
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pyro_dirichlet.io.atomic import atomic_write, atomic_write_json, atomic_write_text
from pyro_dirichlet.data import Split
from pyro_dirichlet.devices import resolve_device
from pyro_dirichlet.infer.switches import DirichletSwitches
from pyro_dirichlet.measure import Stopwatch, latency_seconds, layer_costs, peak_rss_bytes
from pyro_dirichlet.precision import resolve_precision
from pyro_dirichlet.app.model_graph import render_switch_model
from pyro_dirichlet.app.plots import accuracy_histogram_png, elbo_curve_png, mass_curves_png
from pyro_dirichlet.app.report_advice import what_next
from pyro_dirichlet.app.prior_model import check_prior_model_name, check_recorded, load_prior_model
from pyro_dirichlet.posterior import DEFAULT_CI_PROB, exact_means, layer_summaries, plot_forest
from pyro_dirichlet.posterior.calibration import check_predictions, predictive_check
from pyro_dirichlet.posterior.loo import loo_check
from pyro_dirichlet.app.rundir import RunDirectory, RunDirectoryError, writing
from pyro_dirichlet.app.steps import (
    POSTERIOR, PRUNED, PRUNED_BEFORE_FINETUNE, Runtime, load_baseline, load_run_data, load_run_posterior, load_run_pruned,
    locked_step,
)
from pyro_dirichlet.posterior.uncertainty import keep_threshold, mass_curve, straddling_channels

if TYPE_CHECKING:
    from pyro_dirichlet.infer.priors import PriorModel

__all__ = ["REPORT_FORMAT_VERSION", "ReportOptions", "recorded_switches", "report_step", "render_html", "render_markdown"]

#: Version of ``report.json``'s layout.
REPORT_FORMAT_VERSION = 1
MASS_LEVELS = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class ReportOptions:
    """What the report measures and shows.

    Attributes:
        ci_prob: probability mass of the HDIs (forest plots, straddling channels).
        latency_batch: images per forward pass when timing inference.
        latency_repeats: timed forward passes; the median is reported.
        prior_model: the prior model ``fit`` was given (``package.module:function``), named
            again: the report rebuilds the switch model to draw it, and never imports a
            name it reads from the run directory.
    """

    ci_prob: float = DEFAULT_CI_PROB
    latency_batch: int = 256
    latency_repeats: int = 5
    prior_model: str | None = None

    def __post_init__(self) -> None:
        if self.prior_model is not None:
            check_prior_model_name(self.prior_model)
        if not 0 < self.ci_prob < 1:
            raise ValueError(f"ci_prob must be strictly between 0 and 1, got {self.ci_prob}.")
        for name in ("latency_batch", "latency_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")


@locked_step
def report_step(run: RunDirectory, runtime: Runtime, options: ReportOptions = ReportOptions(), *,
                prior_model: PriorModel | None = None) -> dict[str, Any]:
    """Write ``report.json``, ``report.html``, ``report.md`` and the PNGs ``report.md`` shows into the run directory.

    Needs every earlier step. Returns the report (the content of ``report.json``). The switch
    model it draws is rebuilt from what ``fit`` recorded (:func:`recorded_switches`);
    ``prior_model`` is ``options.prior_model`` already imported (by ``run``), else this step imports it.
    """
    with Stopwatch() as watch:
        records = {step: run.record(step) for step in ("train", "fit", "prune", "finetune")}
        fit_config = records["fit"]["config"]
        check_recorded(options.prior_model, fit_config.get("prior_model"))
        manifest = run.manifest()
        device = resolve_device(runtime.device)
        data = load_run_data(run, runtime)
        baseline = load_baseline(run, runtime).to(device)
        pruned = load_run_pruned(run, PRUNED, runtime).to(device).eval()
        before_finetune = load_run_pruned(run, PRUNED_BEFORE_FINETUNE, runtime).to(device).eval()
        posterior = load_run_posterior(run, baseline, data.train.images[:2].to(device))
        prior_model = prior_model or (options.prior_model and load_prior_model(options.prior_model))
        switches = DirichletSwitches(baseline, data.train.images[:2].to(device), **recorded_switches(fit_config, prior_model))
        summaries = layer_summaries(posterior, ci_prob=options.ci_prob)
        keep = records["prune"]["result"]["kept_channels"]
        example = data.test.images[: options.latency_batch].to(device)

        layers = _layer_records(baseline, pruned, summaries, keep, example)
        latency = _latency_row(baseline, pruned, example, options, resolve_precision(runtime.precision, device), device)
        report = _assemble(manifest, records, layers, latency, options, device)
        predictive, accuracy_per_draw = _posterior_predictive(
            run, posterior, switches, {"pruned_before_finetune": before_finetune, "pruned": pruned}, data.validation, device)
        graph = render_switch_model(switches, data.validation.images[:2].to(device), data.validation.labels[:2].to(device))
        report["posterior_predictive"] = predictive
        report["preprocessing"] = pruned.deployment.metadata.get("preprocessing")
        report["what_next"] = [advice.to_dict() for advice in what_next(report, str(run.published or run.path))]
        report["model_graph"] = {"figure": None if graph.png is None else "report-model.png", "missing": graph.missing}

        figures = _figures(report, records, summaries, layers, predictive, accuracy_per_draw, graph)
        with writing(run.path), run.stage() as staging:
            for name, png in figures.items():
                with atomic_write(staging / name, "wb") as handle:
                    handle.write(png)
            forests = {}
            for layer in summaries:
                name = forests[layer] = f"report-forest-{_file_safe(layer)}.png"
                plot_forest(posterior, staging / name, ci_prob=options.ci_prob, layers=[layer])
                figures[name] = (staging / name).read_bytes()
            report["figures"] = {"elbo": "report-elbo.png", "mass": "report-mass.png", "forest": forests,
                                 "accuracy": "report-accuracy.png" if predictive is not None else None}
            report["total_seconds"] = sum(r["seconds"] for r in records.values()) + watch.elapsed
            # The process's peak resident memory: of every step under `pyro-dirichlet run`, of this command alone under `report`.
            report["environment"]["peak_rss_bytes"] = peak_rss_bytes()
            atomic_write_text(staging / "report.html", render_html(report, figures))
            atomic_write_text(staging / "report.md", render_markdown(report))
            atomic_write_json(staging / "report.json", report)
            config = {**_public(options), "data_dir": str(runtime.data_dir) if runtime.data_dir else None,
                      "device": runtime.device, "prior": fit_config.get("prior"), "prior_model": options.prior_model}
            run.commit("report", staging, config=config, result={"latency": latency}, seconds=watch.elapsed)
    return report


def _layer_records(
    baseline: nn.Module, pruned: nn.Module, summaries: dict, keep: dict[str, list[int]], example: torch.Tensor
) -> dict[str, dict[str, Any]]:
    """The report's row of each pruned layer: widths, costs before and after, posterior mass and threshold."""
    layers = {}
    baseline_costs = layer_costs(baseline, list(summaries), example)
    pruned_costs = layer_costs(pruned, list(summaries), example)
    for layer, summary in summaries.items():
        kept = keep.get(layer, [int(c) for c in summary.channels])
        layers[layer] = {
            "width": len(summary.channels),
            "kept": len(kept),
            "params": baseline_costs[layer]["params"],
            "pruned_params": pruned_costs[layer]["params"],
            "flops": baseline_costs[layer]["flops"],
            "pruned_flops": pruned_costs[layer]["flops"],
            "mass_curve": {str(level): count for level, count in mass_curve(summary, MASS_LEVELS).items()},
            "keep_threshold": keep_threshold(summary, kept),
            "kept_channels": kept,
            "straddling_channels": straddling_channels(summary, kept),
        }
    return layers


def _latency_row(
    baseline: nn.Module, pruned: nn.Module, example: torch.Tensor, options: ReportOptions, precision: str,
    device: torch.device,
) -> dict[str, Any]:
    """Median forward seconds of the baseline and the pruned network on ``example``, and the speed-up."""
    latency = {
        "batch": len(example),
        "device": str(device),
        "precision": precision,
        "threads": torch.get_num_threads(),  # the step's (pyro_dirichlet.cpu_threads)
        "baseline_seconds": _latency(baseline, example, options.latency_repeats, device, precision),
        "pruned_seconds": _latency(pruned, example, options.latency_repeats, device, precision),
    }
    latency["speedup"] = latency["baseline_seconds"] / latency["pruned_seconds"]
    return latency


def _figures(
    report: dict[str, Any], records: dict[str, dict], summaries: dict, layers: dict[str, dict[str, Any]],
    predictive: dict[str, Any] | None, accuracy_per_draw: Any, graph: Any,
) -> dict[str, bytes]:
    """The PNGs the report shows besides the forest plots, by file name."""
    steps_per_epoch = records["fit"]["result"]["steps"] // max(1, records["fit"]["result"]["epochs"])
    figures = {
        "report-elbo.png": elbo_curve_png(report["svi"]["elbo"], steps_per_epoch=steps_per_epoch),
        "report-mass.png": mass_curves_png(summaries, {layer: row["kept"] for layer, row in layers.items()}),
    }
    if predictive is not None:
        figures["report-accuracy.png"] = accuracy_histogram_png(
            accuracy_per_draw,
            {PREDICTIVE_LABELS[name]: row["accuracy"] for name, row in predictive["networks"].items()})
    if graph.png is not None:
        figures["report-model.png"] = graph.png
    return figures


#: The networks the posterior predictive check compares, as the report names them.
PREDICTIVE_LABELS = {
    "draw_averaged": "switched, averaged over posterior draws",
    "posterior_mean": "switched at the posterior mean",
    "pruned_before_finetune": "pruned, before fine-tuning",
    "pruned": "pruned and fine-tuned",
}


def _posterior_predictive(run: RunDirectory, posterior, switches: DirichletSwitches, networks: Mapping[str, nn.Module],
                          validation: Split, device: torch.device) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """Accuracy and calibration error on the validation images ``posterior.nc`` predicted, for every network of
    :data:`PREDICTIVE_LABELS`, and the accuracy across posterior draws (summarised, and each draw's for the
    histogram); ``(None, None)`` for a posterior without predictions.

    The draw-averaged figures come from the posterior's ``posterior_predictive`` group (the fit's draws); the
    others run the networks on the same images, the first of the validation split (never the test split).
    """
    if not {"posterior_predictive", "observed_data"} <= set(posterior.children):
        return None, None
    check = predictive_check(posterior)
    labels = np.asarray(posterior["observed_data"]["obs"].values)
    if len(labels) > len(validation) or not np.array_equal(validation.labels[: len(labels)].numpy(), labels):
        raise RunDirectoryError(f"{run.path / POSTERIOR}: its observed data are not this run's first {len(labels)} validation "
                                "labels: refit with `pyro-dirichlet fit`.")
    images = validation.images[: len(labels)].to(device)
    means = {layer: torch.as_tensor(mean, dtype=torch.float32, device=device) for layer, mean in exact_means(posterior).items()}
    with torch.no_grad():
        with switches.switched(means) as network:
            probabilities = {"posterior_mean": torch.softmax(network(images).double(), -1)}
        probabilities.update({name: torch.softmax(network(images).double(), -1) for name, network in networks.items()})
    rows = {"draw_averaged": {"accuracy": check.accuracy, "calibration_error": check.calibration_error}}
    rows.update({name: check_predictions(value.cpu().numpy(), labels) for name, value in probabilities.items()})
    section = {
        "split": "validation",
        "examples": len(labels),
        "draws": len(check.accuracy_per_draw),
        "networks": rows,
        "accuracy_per_draw": check.to_dict()["accuracy_per_draw"],
    }
    loo = loo_check(posterior)
    section["loo"] = None if loo is None else loo.to_dict()
    return section, check.accuracy_per_draw


def _assemble(manifest, records, layers, latency, options, device) -> dict[str, Any]:
    """``report.json``: the fields ``pyro-dirichlet run`` always wrote, plus per-layer rows and latency."""
    train, fitted, prune, tune = (records[s]["result"] for s in ("train", "fit", "prune", "finetune"))
    pruned = {**prune, **tune}
    pruned["params_fraction"] = pruned["params"] / train["params"]
    pruned["flops_fraction"] = pruned["flops"] / train["flops"]
    fit_config = records["fit"]["config"]
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "model": manifest["model"],
        "dataset": manifest["dataset"],
        "device": str(device),
        "seed": records["train"]["config"].get("seed"),
        "data": manifest["data"],
        "prior_concentration": fit_config["prior"],
        "prior_model": fit_config.get("prior_model"),
        "hyper_guide": fit_config.get("fit", {}).get("hyper_guide"),
        "coupled": fit_config["coupled"],
        "on_unsupported": recorded_switches(fit_config)["on_unsupported"],
        "gain": recorded_gain(fit_config),
        # Runs fitted before the list was recorded have none.
        "skipped_layers": fitted.get("skipped_layers", []),
        "target": prune["target"],
        "ci_prob": options.ci_prob,
        "baseline": train,
        "svi": fitted,
        "pruned": pruned,
        "layers": layers,
        "latency": latency,
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()},
    }


def _latency(model: nn.Module, batch: torch.Tensor, repeats: int, device: torch.device, precision: str) -> float:
    return latency_seconds(model, batch, repeats=repeats, warmup=1, device=device, precision=precision)


def _file_safe(layer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", layer)


def _public(options: ReportOptions) -> dict[str, Any]:
    return {"ci_prob": options.ci_prob, "latency_batch": options.latency_batch, "latency_repeats": options.latency_repeats}


# --- rendering -------------------------------------------------------------------------------


def _summary_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(quantity, baseline, pruned) rows of the whole-network comparison."""
    base, pruned, latency = report["baseline"], report["pruned"], report["latency"]
    return [
        ("parameters", f"{base['params']:,}", f"{pruned['params']:,} ({pruned['params_fraction']:.2%})"),
        ("FLOPs per image", f"{base['flops']:,}", f"{pruned['flops']:,} ({pruned['flops_fraction']:.2%})"),
        ("test accuracy", f"{base['test_accuracy']:.2%}",
         f"{pruned['test_accuracy']:.2%} ({pruned['test_accuracy_before_finetune']:.2%} before fine-tuning)"),
        ("validation accuracy", f"{base['validation_accuracy']:.2%}", f"{pruned['validation_accuracy']:.2%}"),
        (f"latency, batch of {latency['batch']} on {latency['device']}"
         + (f" ({latency['threads']} threads)" if latency.get("threads") and latency["device"] == "cpu" else ""), f"{latency['baseline_seconds'] * 1e3:.2f} ms",
         f"{latency['pruned_seconds'] * 1e3:.2f} ms ({latency['speedup']:.2f}x faster)"),
    ]


_LAYER_HEADER = ("layer", "channels", "kept", "params", "pruned params", "FLOPs", "pruned FLOPs",
                 "channels holding 50 / 90 / 99% of the mass", "keep threshold", "straddling channels")


def _layer_rows(report: Mapping[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for layer, row in report["layers"].items():
        mass = " / ".join(str(row["mass_curve"][str(level)]) for level in MASS_LEVELS)
        straddling = row["straddling_channels"]
        rows.append((layer, str(row["width"]), str(row["kept"]), f"{row['params']:,}", f"{row['pruned_params']:,}",
                     f"{row['flops']:,}", f"{row['pruned_flops']:,}", mass, f"{row['keep_threshold']:.4g}",
                     f"{len(straddling)}: {_channel_list(straddling)}" if straddling else "none"))
    return rows


_PREDICTIVE_HEADER = ("network", "accuracy", "expected calibration error")


def _predictive_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(network, accuracy, ECE) rows of the posterior predictive check."""
    return [(PREDICTIVE_LABELS[name], f"{row['accuracy']:.2%}", f"{row['calibration_error']:.4f}")
            for name, row in report["posterior_predictive"]["networks"].items()]


#: What the posterior predictive table says, for a reader who is not a Bayesian.
PREDICTIVE_EXPLAINED = (
    "How to read this table: each row is one network scored on the same validation images, by its accuracy and by "
    "how far its confidence is from its accuracy (expected calibration error, 0 is perfect); the first two rows are "
    "the unpruned network with its channels weighted by the fitted switches, the last two are what you deploy, so "
    "a large gap between them is what pruning cost before and after fine-tuning.")


def _loo_note(report: Mapping[str, Any]) -> str | None:
    """elpd_loo with its Pareto-k diagnostics and whether to trust it; ``None`` for a posterior without log-likelihoods."""
    from pyro_dirichlet.posterior.loo import LooCheck

    loo = report["posterior_predictive"].get("loo")
    if not loo:
        return None
    check = LooCheck(**{key: value for key, value in loo.items() if key != "reliable"})
    return f"PSIS-LOO on these images: {check.headline()}. {check.verdict()}"


def _predictive_note(report: Mapping[str, Any]) -> str:
    check = report["posterior_predictive"]
    spread = check["accuracy_per_draw"]
    return (f"On the first {check['examples']} images of the validation split. Averaged over posterior draws: the class "
            f"probabilities of {check['draws']} switch draws from the posterior, averaged. Across those draws the accuracy "
            f"has median {spread['median']:.2%}, 95% interval {spread['q2.5']:.2%} to {spread['q97.5']:.2%} "
            f"(mean {spread['mean']:.2%}, sd {spread['sd']:.2%}). Expected calibration error: the example-weighted "
            "gap between confidence and accuracy over 15 confidence bins.")


_NO_PREDICTIVE = "posterior.nc holds no predictions on validation images (fitted without a validation split)."


def _skipped_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(layer, why, kind) for every Conv2d/Linear the fit left unswitched."""
    return [
        # The analysis speaks to Python callers; a report reader runs the command line.
        (row["layer"], row["reason"].replace("coupled='group'", "--coupled group"),
         "not followed" if row["unsupported"] else "by design")
        for row in report.get("skipped_layers", [])
    ]


_SKIPPED_NOTE = (
    "Conv2d and Linear layers without a switch, left as they are. 'by design': the classifier, "
    "channels coupled through residual adds or tied by a LayerNorm over them; 'not followed': an "
    "operation the structure analysis does not know, skipped under --on-unsupported skip."
)


def _channel_list(channels: list[int], limit: int = 30) -> str:
    shown = ", ".join(str(c) for c in channels[:limit])
    return shown + (f", ... ({len(channels) - limit} more)" if len(channels) > limit else "")


def _intro(report: Mapping[str, Any]) -> str:
    data = report["data"]
    subset = f", smoke subset of {data['train']:,} training images" if data.get("subset") else ""
    tempered = report["svi"].get("config", {}).get("effective_data_size")
    tempering = f", likelihood tempered to {tempered:,} examples" if tempered else ""
    if report.get("prior_model"):
        prior = f"prior model {report['prior_model']} (its own latent sites under the {report['hyper_guide']} guide)"
    else:
        prior = f"symmetric Dirichlet prior with concentration {report['prior_concentration']:g} on every switch"
    # A report.json written before `gain` existed says `layer_gain`: recorded_gain reads either.
    gain = {"channel": ", a learned gain per channel", "layer": ", a learned gain per layer"}.get(recorded_gain(report), "")
    return (f"{report['model']} on {report['dataset']}{subset}; {prior}{gain}{tempering}; {report['svi']['epochs']} SVI epoch(s), "
            f"{report['svi']['steps']} steps; {report['pruned']['finetune_epochs']} fine-tune epoch(s); seed "
            f"{report['seed']}; intervals are {round(report['ci_prob'] * 100)}% HDIs (highest density intervals).")


_STYLE = """
body { font-family: sans-serif; max-width: 70em; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0 1em; }
.note { color: #555; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.row figure { flex: 1 1 30em; max-width: 36em; margin: 0; }
.row figure img { width: 100%; }
figcaption { font-weight: bold; }
.next li { margin-bottom: 0.4em; }
"""


def render_html(report: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """A self-contained HTML page: inline CSS, every image a base64 PNG data URI, no scripts."""

    def image(name: str, alt: str) -> str:
        data = base64.b64encode(figures[name]).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'

    def table(header, rows) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    esc = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>pyro-dirichlet report: {esc(report['model'])} on {esc(report['dataset'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Dirichlet pruning of {esc(report['model'])} on {esc(report['dataset'])}</h1>",
        f"<p>{esc(_intro(report))}</p>",
        "<h2>Baseline and pruned network</h2>",
        table(("", "baseline", "pruned"), _summary_rows(report)),
        "<h2>Per layer</h2>",
        table(_LAYER_HEADER, _layer_rows(report)),
        f'<p class="note">A straddling channel is one whose {round(report["ci_prob"] * 100)}% HDI contains the keep '
        "threshold (the midpoint between the lowest kept and highest dropped posterior mean): the posterior cannot "
        "tell whether it belongs above or below the cut.</p>",
        "<h2>What next</h2>", '<ul class="next">',
        *(f"<li>{esc(advice['text'])}</li>" for advice in report.get("what_next", [])), "</ul>",
        "<h2>The fit</h2>", '<div class="row">',
        f"<figure>{image(report['figures']['elbo'], 'ELBO per SVI step')}</figure>",
        f"<figure>{image(report['figures']['mass'], 'posterior mass curves')}</figure>", "</div>",
        "<h2>Switch posteriors</h2>",
        '<p class="note">Each switch as s<sub>c</sub>&nbsp;&times;&nbsp;C (1 = the prior mean); 50% and '
        f"{round(report['ci_prob'] * 100)}% HDIs (highest density intervals); at most 40 channels of highest mean per "
        "layer.</p>", '<div class="row">',
    ]
    for layer, name in report["figures"]["forest"].items():
        parts.append(f"<figure><figcaption>{esc(layer)}</figcaption>{image(name, f'forest plot of {layer}')}</figure>")
    parts.append("</div>")
    parts.append("<h2>Posterior predictive</h2>")
    if report["posterior_predictive"] is None:
        parts.append(f'<p class="note">{esc(_NO_PREDICTIVE)}</p>')
    else:
        loo = _loo_note(report)
        parts += [f"<p>{esc(PREDICTIVE_EXPLAINED)}</p>", table(_PREDICTIVE_HEADER, _predictive_rows(report)),
                  f'<p class="note">{esc(_predictive_note(report))}</p>',
                  *([f'<p class="note">{esc(loo)}</p>'] if loo else []),
                  image(report["figures"]["accuracy"], "accuracy across posterior draws")]
    parts.append("<h2>The switch model</h2>")
    graph = report["model_graph"]
    parts.append(image(graph["figure"], "the switch model drawn by pyro.render_model") if graph["figure"]
                 else f'<p class="note">{esc(graph["missing"])}</p>')
    parts += ["<h2>Keep decisions</h2>", "<ul>"]
    for layer, row in report["layers"].items():
        flagged = row["straddling_channels"]
        parts.append(f"<li><b>{esc(layer)}</b>: keeps {row['kept']} of {row['width']}: "
                     f"{esc(_channel_list(row['kept_channels'], 60))}"
                     + (f"; <b>unsure</b>: {esc(_channel_list(flagged, 60))}" if flagged else "") + "</li>")
    parts += ["</ul>"]
    if report.get("skipped_layers"):
        parts += ["<h2>Layers left unpruned</h2>", f'<p class="note">{esc(_SKIPPED_NOTE)}</p>',
                  table(("layer", "why", "kind"), _skipped_rows(report))]
    parts += ["</body></html>", ""]
    return "\n".join(parts)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The same report in Markdown; its images are the PNG files written next to it."""

    def table(header, rows) -> list[str]:
        cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731 - a pipe would end the cell
        return (["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
                + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])

    lines = [f"# Dirichlet pruning of {report['model']} on {report['dataset']}", "", _intro(report), "",
             "## Baseline and pruned network", "", *table(("", "baseline", "pruned"), _summary_rows(report)), "",
             "## Per layer", "", *table(_LAYER_HEADER, _layer_rows(report)), "",
             f"Straddling channels: the {round(report['ci_prob'] * 100)}% HDI contains the keep threshold.", "",
             "## What next", "", *(f"- {advice['text']}" for advice in report.get("what_next", [])), "",
             "## ELBO", "", f"![ELBO per SVI step]({report['figures']['elbo']})", "",
             "## Posterior mass curves", "", f"![posterior mass curves]({report['figures']['mass']})", "",
             "## Switch posteriors", ""]
    for layer, name in report["figures"]["forest"].items():
        lines += [f"### {layer}", "", f"![forest plot of {layer}]({name})", ""]
    lines += ["## Posterior predictive", ""]
    if report["posterior_predictive"] is None:
        lines += [_NO_PREDICTIVE, ""]
    else:
        loo = _loo_note(report)
        lines += [PREDICTIVE_EXPLAINED, "", *table(_PREDICTIVE_HEADER, _predictive_rows(report)), "",
                  _predictive_note(report), "", *([loo, ""] if loo else []),
                  f"![accuracy across posterior draws]({report['figures']['accuracy']})", ""]
    graph = report["model_graph"]
    lines += ["## The switch model", "", f"![the switch model drawn by pyro.render_model]({graph['figure']})"
              if graph["figure"] else graph["missing"], ""]
    lines += ["## Keep decisions", ""]
    for layer, row in report["layers"].items():
        flagged = row["straddling_channels"]
        lines.append(f"- **{layer}**: keeps {row['kept']} of {row['width']}: {_channel_list(row['kept_channels'], 60)}"
                     + (f"; unsure: {_channel_list(flagged, 60)}" if flagged else ""))
    if report.get("skipped_layers"):
        lines += ["", "## Layers left unpruned", "", _SKIPPED_NOTE, "",
                  *table(("layer", "why", "kind"), _skipped_rows(report))]
    return "\n".join(lines) + "\n"


#: What runs fitted before a switch setting was recorded were fitted with: every layer, and
#: ``on_unsupported="raise"``, the only policy before the option existed.
_BEFORE_RECORDED = {"layers": None, "on_unsupported": "raise"}


def recorded_switches(fit_config: Mapping[str, Any], prior_model: PriorModel | None = None) -> dict[str, Any]:
    """The keyword arguments of :class:`~pyro_dirichlet.DirichletSwitches` that ``fit`` recorded in ``run.json``.

    The report rebuilds the fitted switch model from these rather than from defaults of its own.
    ``prior_model`` (imported from the name the fit recorded) replaces the recorded concentration.
    """
    switches = {name: fit_config.get(name, before) for name, before in _BEFORE_RECORDED.items()}
    prior = fit_config["prior"] if prior_model is None else prior_model
    return {**switches, "prior": prior, "coupled": fit_config["coupled"], "gain": recorded_gain(fit_config)}


def recorded_gain(record: Mapping[str, Any]) -> str:
    """The gain mode a fit's config (or a report) recorded: ``gain``, or for ones recorded before
    it existed their ``layer_gain`` (True: ``"layer"``; absent or False: ``"none"``, as they were fitted)."""
    if record.get("gain"):
        return record["gain"]
    return "layer" if record.get("layer_gain") else "none"
