"""The equal-budget ResNet-20 comparison, end to end on random weights and random CIFAR-shaped data."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import cifar_shaped, random_resnet20

from analysis.resnet20_cifar10 import GAIN_METHOD, METHOD, Protocol, budget_counts_by_name, load_weights, main, markdown, run
from pyro_dirichlet.baselines import get_model_entry
from pyro_dirichlet.baselines.trained import save_checkpoint


@pytest.fixture(scope="module")
def network():
    return random_resnet20()


CRITERIA = (METHOD, GAIN_METHOD, "l1-norm", "batchnorm |gamma|", "random")


@pytest.fixture(scope="module")
def recorded(network):
    """The comparison's result and every partial result it reported on the way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Small enough for CI: two seeds (a standard error), one budget of each kind, five rows.
    protocol = Protocol(seeds=(0, 1), flop_budgets=(0.5,), keep_ratios=(0.25,), criteria=CRITERIA,
                        finetune_epochs=1, finetune_only=("50% FLOPs", 2))
    partials: list[dict] = []
    yield run(network, cifar_shaped(), protocol, log=lambda line: None, partial=partials.append), partials
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def result(recorded):
    return recorded[0]


@pytest.mark.slow  # the shared fixture
def test_partial_results_come_after_each_seed_and_each_finetune(recorded, network):
    result, partials = recorded
    assert result["complete"] and not any(p["complete"] for p in partials)
    # Two seeds, then four fine-tuned rows per seed, seed 0's first.
    assert len(partials) == 2 + 2 * 4
    assert {r["seed"] for r in partials[0]["rows"]} == {0} and len(partials[1]["rows"]) == len(result["rows"])
    assert not any("test_finetuned" in r for r in partials[1]["rows"])
    assert [sum("test_finetuned" in r for r in p["rows"]) for p in partials[2:]] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(r["seed"] == 0 for r in partials[5]["rows"] if "test_finetuned" in r)
    assert result["device"] == "cpu"
    assert next(network.parameters()).device.type == "cpu"  # the caller's network stays where it was


@pytest.mark.slow  # the shared fixture: two SVI fits, 16 calibrations, two fine-tunes (~15 s of CPU)
def test_every_criterion_is_scored_at_every_budget_with_equal_counts(result):
    budgets = result["budgets"]
    assert list(budgets) == ["50% FLOPs", "keep 0.25"]
    assert len(result["rows"]) == 2 * len(budgets) * len(CRITERIA)
    full = result["baseline"]["flops"]
    for budget in budgets:
        rows = [r for r in result["rows"] if r["budget"] == budget]
        assert len({r["flops"] for r in rows}) == 1 and len({r["params"] for r in rows}) == 1  # same counts everywhere
        assert all(0 <= r[f"test_{stage}"] <= 1 for r in rows for stage in ("pruned", "calibrated"))
    assert next(r for r in result["rows"] if r["budget"] == "50% FLOPs")["flops"] <= 0.5 * full
    assert budgets["keep 0.25"]["layer3.0.conv1"] == 16 and budgets["keep 0.25"]["layer1.0.conv1"] == 4


def test_flop_budgets_are_the_largest_uniform_ratio_that_fits(network, one_thread):
    from pyro_dirichlet.planning.allocation import pruned_cost
    from pyro_dirichlet.measure import count_flops
    from pyro_dirichlet.structure import find_prunable_layers

    example = torch.zeros(2, 3, 8, 8)
    widths = {layer.name: layer.channels for layer in find_prunable_layers(network, example)}
    budgets = budget_counts_by_name(network, widths, example, Protocol())
    assert list(budgets) == ["50% FLOPs", "30% FLOPs", "keep 0.5", "keep 0.25"]
    full = count_flops(network, example[:1])
    for name, share in (("50% FLOPs", 0.5), ("30% FLOPs", 0.3)):
        assert pruned_cost(network, budgets[name], example, "flops") <= share * full
        wider = {layer: min(widths[layer], count + 1) for layer, count in budgets[name].items()}
        assert pruned_cost(network, wider, example, "flops") > share * full  # one more channel each would not fit
    assert budgets["keep 0.5"] == {name: width // 2 for name, width in widths.items()}


@pytest.mark.slow  # the shared fixture: two SVI fits, 16 calibrations, two fine-tunes (~15 s of CPU)
def test_the_method_and_the_best_others_on_validation_are_finetuned(result):
    tuned = {(r["budget"], r["criterion"]) for r in result["rows"] if "test_finetuned" in r}
    assert len(tuned) == 4 and {budget for budget, _ in tuned} == {"50% FLOPs"}
    assert sorted(map(tuple, result["finetuned"])) == sorted(tuned)
    means = {}
    for row in result["rows"]:
        if row["budget"] == "50% FLOPs" and row["criterion"] not in (METHOD, GAIN_METHOD):
            means.setdefault(row["criterion"], []).append(row["validation_calibrated"])
    ranked = sorted(means, key=lambda name: -sum(means[name]))
    assert {name for _, name in tuned} == {METHOD, GAIN_METHOD, *ranked[:2]}


@pytest.mark.slow  # the shared fixture: two SVI fits, 16 calibrations, two fine-tunes (~15 s of CPU)
def test_paired_differences_are_method_minus_other_per_seed(result):
    by = {(r["seed"], r["budget"], r["criterion"]): r for r in result["rows"]}
    entry = next(p for p in result["paired"] if p["budget"] == "keep 0.25" and p["method"] == METHOD
                 and p["versus"] == "l1-norm" and p["stage"] == "pruned")
    expected = [by[(s, "keep 0.25", METHOD)]["test_pruned"] - by[(s, "keep 0.25", "l1-norm")]["test_pruned"] for s in (0, 1)]
    assert entry["per_seed"] == pytest.approx(expected)
    assert entry["se"] == pytest.approx(entry["sd"] / 2 ** 0.5)
    assert not any(p["stage"] == "finetuned" and p["budget"] != "50% FLOPs" for p in result["paired"])
    assert {p["versus"] for p in result["paired"]} == set(CRITERIA) - {METHOD, GAIN_METHOD}
    assert {p["method"] for p in result["paired"]} == {METHOD, GAIN_METHOD}
    assert {p["versus"] for p in result["paired"] if p["stage"] == "finetuned" and p["method"] == METHOD} == (
        {name for _, name in tuned(result)} - {METHOD, GAIN_METHOD})
    gain = next(p for p in result["paired"] if p["method"] == GAIN_METHOD and p["budget"] == "keep 0.25"
                and p["versus"] == "random" and p["stage"] == "calibrated")
    assert gain["per_seed"] == pytest.approx([by[(s, "keep 0.25", GAIN_METHOD)]["test_calibrated"]
                                              - by[(s, "keep 0.25", "random")]["test_calibrated"] for s in (0, 1)])
    table = markdown(result)
    assert "| keep 0.25 | random |" in table and "| keep 0.25 | batchnorm \\|gamma\\| |" in table


def tuned(result):
    return {(r["budget"], r["criterion"]) for r in result["rows"] if "test_finetuned" in r}


def test_one_seed_decides_nothing(result):
    from analysis.resnet20_cifar10 import paired_differences

    one = paired_differences([r for r in result["rows"] if r["seed"] == 0])
    assert one and all(p["se"] is None and not p["ahead"] and not p["behind"] for p in one)


def test_weights_round_trip_and_bad_files_name_themselves(network, tmp_path):
    path = tmp_path / "resnet20.safetensors"
    save_checkpoint(path, network, {"model": "resnet20"})
    loaded, metadata = load_weights(path)
    assert metadata["model"] == "resnet20"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), network.state_dict().values()))
    other = tmp_path / "lenet.safetensors"
    save_checkpoint(other, get_model_entry("lenet5").build(), {"model": "lenet5"})
    with pytest.raises(ValueError, match="lenet.safetensors holds a 'lenet5' checkpoint"):
        load_weights(other)


def test_cli_refuses_a_missing_weights_file_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--weights", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "--weights" in capsys.readouterr().err and not (tmp_path / "out").exists()
    wrong = tmp_path / "lenet.safetensors"
    save_checkpoint(wrong, get_model_entry("lenet5").build(), {"model": "lenet5"})
    assert main(["--weights", str(wrong), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_unknown_finetune_budget_and_a_missing_cuda(network, tmp_path, capsys):
    weights = tmp_path / "resnet20.safetensors"
    save_checkpoint(weights, network, {"model": "resnet20"})
    out = tmp_path / "out"
    for bad in ("40% FLOPs:2", "50% FLOPs", "50% FLOPs:two"):
        with pytest.raises(SystemExit) as exit_:
            main(["--weights", str(weights), "--out", str(out), "--finetune-only", bad])
        assert exit_.value.code == 2
        assert "finetune" in capsys.readouterr().err
    for flag, bad in (("--flop-budgets", "0.5,1.5"), ("--keep-ratios", "half"), ("--criterion", "l2-norm"), ("--seed", "-1"),
                      ("--finetune-lr", "0"), ("--finetune-lr", "nan"), ("--finetune-batch-size", "0"),
                      ("--finetune-distillation", "1.5"), ("--finetune-distillation", "nan"),
                      ("--finetune-label-smoothing", "1"), ("--finetune-label-smoothing", "-0.1")):
        with pytest.raises(SystemExit) as exit_:
            main(["--weights", str(weights), "--out", str(out), flag, bad])
        assert exit_.value.code == 2 and flag in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # a count of seeds or the seeds themselves, not both
        main(["--weights", str(weights), "--out", str(out), "--seeds", "2", "--seed", "1"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exit_:
            main(["--weights", str(weights), "--out", str(out), "--device", "cuda"])
        assert exit_.value.code == 2 and "no CUDA device" in capsys.readouterr().err
    assert not out.exists()


def test_the_protocol_refuses_unknown_rows():
    with pytest.raises(ValueError, match="not rows of the comparison"):
        Protocol(criteria=(METHOD, "l2-norm"))
    assert Protocol(criteria=(GAIN_METHOD, "l1-norm")).criteria == (GAIN_METHOD, "l1-norm")  # one Dirichlet row is enough
    with pytest.raises(ValueError, match="not one of"):
        Protocol(finetune_only=("keep 0.3", 1))
    assert Protocol().budget_names == ("50% FLOPs", "30% FLOPs", "keep 0.5", "keep 0.25")


@pytest.mark.slow  # the shared fixture
def test_readme_tables_quote_the_summary_and_bold_only_verdicts(result):
    from analysis.resnet20_cifar10 import readme_tables

    tables = readme_tables(result)
    first = next(e for e in result["summary"] if e["budget"] == "keep 0.25" and e["criterion"] == "l1-norm")
    assert f"| keep 0.25 | l1-norm | {100 * first['pruned_mean']:.1f} | {100 * first['calibrated_mean']:.1f} | - |" in tables
    for p in result["paired"]:
        if p["versus"] == "l1-norm" and p["stage"] == "pruned":
            cell = f"{100 * p['mean']:+.1f} ± {100 * p['se']:.1f}"
            assert (f"**{cell}**" in tables) == (p["ahead"] or p["behind"]), p
    assert f"{GAIN_METHOD} − random" in tables and "batchnorm" not in tables.split("| budget | difference |")[1]


def test_a_comparison_of_the_gain_row_alone_fits_only_with_a_gain(network, one_thread, monkeypatch):
    import analysis.resnet20_cifar10 as comparison

    gains = []
    real = comparison.fit_switches
    monkeypatch.setattr(comparison, "fit_switches", lambda *args, **kwargs: gains.append(kwargs["layer_gain"]) or real(*args, **kwargs))
    protocol = Protocol(seeds=(0,), flop_budgets=(), keep_ratios=(0.5,), criteria=(GAIN_METHOD, "l1-norm"), finetune_epochs=0)
    result = run(network, cifar_shaped(), protocol, log=lambda line: None)
    assert gains == [True]  # no default fit: no row reads it
    assert [(r["criterion"], r["fit_seconds"] is not None) for r in result["rows"]] == [(GAIN_METHOD, True), ("l1-norm", False)]
    assert {p["method"] for p in result["paired"]} == {GAIN_METHOD} and result["finetuned"] == []


def test_cli_finetune_only_all_clears_the_reduced_protocols_choice(network, tmp_path, monkeypatch):
    import analysis.resnet20_cifar10 as comparison

    weights = tmp_path / "resnet20.safetensors"
    save_checkpoint(weights, network, {"model": "resnet20"})
    seen = []

    class Stop(Exception):
        pass

    def cut(data, protocol):
        seen.append(protocol)
        raise Stop

    monkeypatch.setattr(comparison, "load_dataset", lambda *args, **kwargs: None)
    monkeypatch.setattr(comparison, "cut", cut)
    for flags in (["--reduced", "--finetune-only", "all"], ["--reduced"], ["--finetune-only", "keep 0.5:1"]):
        with pytest.raises(Stop):
            main(["--weights", str(weights), "--out", str(tmp_path / "out"), *flags])
    assert [p.finetune_only for p in seen] == [None, ("50% FLOPs", 2), ("keep 0.5", 1)]


def test_a_comparison_without_a_dirichlet_row_fits_nothing_and_pairs_nothing(network, one_thread, monkeypatch, tmp_path):
    import analysis.resnet20_cifar10 as comparison

    monkeypatch.setattr(comparison, "fit_switches", lambda *args, **kwargs: pytest.fail("no row reads a fit"))
    weights = tmp_path / "resnet20.safetensors"
    save_checkpoint(weights, network, {"model": "resnet20"})
    monkeypatch.setattr(comparison, "load_dataset", lambda *args, **kwargs: cifar_shaped())
    out = tmp_path / "out"
    # How far the best cheap criterion recovers, with an explicit seed and fine-tune recipe.
    assert main(["--weights", str(weights), "--out", str(out), "--criterion", "l1-norm", "--seed", "2", "--flop-budgets", "0.5",
                 "--keep-ratios", "", "--finetune-only", "all", "--finetune-epochs", "1", "--finetune-lr", "0.05",
                 "--finetune-batch-size", "8"]) == 0
    result = json.loads((out / "comparison.json").read_text())
    assert [(r["seed"], r["budget"], r["criterion"]) for r in result["rows"]] == [(2, "50% FLOPs", "l1-norm")]
    assert "test_finetuned" in result["rows"][0] and result["paired"] == []
    assert (result["protocol"]["finetune_lr"], result["protocol"]["finetune_batch_size"]) == (0.05, 8)
    # At its default the distillation share is left out of the protocol, as runs made before it have it.
    assert "finetune_distillation" not in result["protocol"] and "finetune_label_smoothing" not in result["protocol"]


def finetune_calls(monkeypatch) -> list[tuple]:
    """Record ``(TrainConfig, teacher)`` of every fine-tune the comparison runs, which still runs."""
    import analysis.resnet20_cifar10 as comparison

    calls = []
    real = comparison.train_classifier

    def spy(model, data, config, **kwargs):
        calls.append((config, kwargs["teacher"]))
        return real(model, data, config, **kwargs)

    monkeypatch.setattr(comparison, "train_classifier", spy)
    return calls


def test_a_distilled_finetune_learns_from_the_unpruned_network_which_stays_as_it_was(network, one_thread, monkeypatch):
    calls = finetune_calls(monkeypatch)
    before = {name: value.clone() for name, value in network.state_dict().items()}
    protocol = Protocol(seeds=(0,), flop_budgets=(0.5,), keep_ratios=(), criteria=("l1-norm",), finetune_epochs=1,
                        finetune_batch_size=8, finetune_distillation=0.5)
    result = run(network, cifar_shaped(), protocol, log=lambda line: None)
    (config, teacher), = calls
    assert config.distillation == 0.5 and result["protocol"]["finetune_distillation"] == 0.5
    # The teacher is the unpruned network (every channel), scoring as the caller's does.
    assert sum(p.numel() for p in teacher.parameters()) == sum(p.numel() for p in network.parameters())
    assert result["rows"][0]["params"] < sum(p.numel() for p in network.parameters())
    images = cifar_shaped().test.images
    with torch.no_grad():
        assert torch.equal(teacher.eval()(images), network(images))
    assert all(torch.equal(before[name], value) for name, value in network.state_dict().items())
    assert "test_finetuned" in result["rows"][0]


def test_the_finetune_label_smoothing_reaches_the_training_loop_and_the_protocol(network, one_thread, monkeypatch):
    calls = finetune_calls(monkeypatch)
    protocol = Protocol(seeds=(0,), flop_budgets=(0.5,), keep_ratios=(), criteria=("l1-norm",), finetune_epochs=1,
                        finetune_batch_size=8, finetune_label_smoothing=0.1)
    result = run(network, cifar_shaped(), protocol, log=lambda line: None)
    assert [(config.label_smoothing, teacher) for config, teacher in calls] == [(0.1, None)]  # smoothing the labels needs no teacher
    assert result["protocol"]["finetune_label_smoothing"] == 0.1 and "finetune_distillation" not in result["protocol"]
    assert "test_finetuned" in result["rows"][0]
