import pytest
import torch
from hypothesis import given, settings, strategies as st

from pyro_dirichlet.planning.plan import keep_counts, plan_keep


def test_keeps_highest_scores_sorted_with_ties_to_lower_index():
    scores = {"conv1": torch.tensor([0.2, 0.9, 0.2, 0.5]), "fc1": torch.tensor([1.0, 2.0, 3.0])}
    assert plan_keep(scores, {"conv1": 2, "fc1": 1}) == {"conv1": [1, 3], "fc1": [2]}
    assert plan_keep(scores, {"conv1": 3}) == {"conv1": [0, 1, 3]}


def test_fractions_round_and_never_empty_a_layer():
    assert keep_counts({"a": 20, "b": 500, "c": 3}, {"a": 0.25, "b": 0.08, "c": 0.01}) == {"a": 5, "b": 40, "c": 1}


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 64), fraction=st.floats(1e-6, 1.0), seed=st.integers(0, 1000))
def test_plans_never_empty_a_layer_and_keep_valid_unique_indices(width, fraction, seed):
    scores = {"layer": torch.rand(width, generator=torch.Generator().manual_seed(seed))}
    keep = plan_keep(scores, {"layer": fraction})["layer"]
    assert 1 <= len(keep) <= width
    assert keep == sorted(set(keep)) and all(0 <= i < width for i in keep)
    dropped = set(range(width)) - set(keep)
    if dropped:
        assert min(scores["layer"][keep]) >= max(scores["layer"][list(dropped)])


@pytest.mark.parametrize(
    "target, error, message",
    [
        ({"conv1": 0}, ValueError, "between 1 and its width 4"),
        ({"conv1": 5}, ValueError, "between 1 and its width 4"),
        ({"conv1": 0.0}, ValueError, r"\(0, 1\]"),
        ({"conv1": 1.5}, ValueError, r"\(0, 1\]"),
        ({"conv9": 1}, ValueError, "unknown layer"),
        ({"conv1": True}, TypeError, "conv1"),
        ({"conv1": "2"}, TypeError, "conv1"),
    ],
)
def test_bad_targets_raise_naming_the_layer(target, error, message):
    with pytest.raises(error, match=message):
        plan_keep({"conv1": torch.ones(4)}, target)


def test_non_finite_scores_raise():
    with pytest.raises(ValueError, match="conv1"):
        plan_keep({"conv1": torch.tensor([1.0, float("nan")])}, {"conv1": 1})


def test_blocks_keep_the_best_whole_groups_and_round_counts_to_them():
    scores = {"conv1": torch.tensor([0.1, 0.9, 0.3, 0.3, 0.5, 0.4]), "fc1": torch.tensor([1.0, 2.0, 3.0])}
    # blocks [0, 1] (1.0), [2, 3] (0.6), [4, 5] (0.9): 3 channels round to 4, the two best blocks
    assert plan_keep(scores, {"conv1": 3, "fc1": 2}, blocks={"conv1": 2}) == {"conv1": [0, 1, 4, 5], "fc1": [1, 2]}
    assert plan_keep(scores, {"conv1": 0.1}, blocks={"conv1": 2}) == {"conv1": [0, 1]}
    assert keep_counts({"a": 64}, {"a": 0.5}, blocks={"a": 8}) == {"a": 32}
    assert keep_counts({"a": 64}, {"a": 0.3}, blocks={"a": 8}) == {"a": 16}


def test_a_width_that_is_not_whole_blocks_is_rejected():
    with pytest.raises(ValueError, match=r"layer 'a' has width 6, not a multiple of its block 4"):
        keep_counts({"a": 6}, {"a": 2}, blocks={"a": 4})
