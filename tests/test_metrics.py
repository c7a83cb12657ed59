"""probe.records.metrics against hand-computed values on small fixtures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.records.metrics import (
    METRIC_KEYS,
    correct_by_group,
    group_sizes,
    metrics_from_counts,
    split_metrics,
    worst_group_accuracy,
)
from probe.records.summary import SplitSeeds, Stat, mean_metrics, per_group_stats, seed_stats

WB_GROUPS = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
WB_TRAIN = [3498, 184, 56, 1057]

# The CUDA cases are always listed (`pytest -m cuda` selects them) and skipped without CUDA.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
def test_correct_by_group_counts_per_head(device: str) -> None:
    y = torch.tensor([0, 1, 1, 0, 1, 0], device=device)
    group = torch.tensor([0, 0, 1, 1, 2, 2], device=device)
    pred = torch.tensor([[0, 1, 0, 0, 1, 1],    # head 0: group0 2/2, group1 1/2, group2 1/2
                         [1, 0, 1, 1, 0, 0]],   # head 1: group0 0/2, group1 1/2, group2 1/2
                        device=device)
    got = correct_by_group(pred, y, group, num_groups=4)
    assert got.device.type == device
    assert got.dtype == torch.float64
    assert got.cpu().tolist() == [[2, 1, 1, 0], [0, 1, 1, 0]]
    single = correct_by_group(pred[0], y, group, num_groups=4)
    assert single.cpu().tolist() == [2, 1, 1, 0]


def test_group_sizes_counts_empty_groups_and_rejects_out_of_range() -> None:
    assert group_sizes(np.array([2, 0, 2, 2]), 4).tolist() == [1, 0, 3, 0]
    assert group_sizes(torch.tensor([1, 1]), 3).tolist() == [0, 2, 0]
    assert group_sizes(np.array([], dtype=np.int64), 2).tolist() == [0, 0]
    with pytest.raises(ValueError, match="out of range"):
        group_sizes(np.array([0, 4]), 4)
    with pytest.raises(ValueError, match="out of range"):
        group_sizes(np.array([-2, 0]), 4)
    # -1 is a group hidden from the fit (an information regime): it counts for no group
    assert group_sizes(np.array([-1, 0, -1]), 2).tolist() == [1, 0]


def test_hidden_groups_count_for_accuracy_and_classes_but_no_group() -> None:
    pred = torch.tensor([[0, 1, 1, 0]])
    y, group = torch.tensor([0, 1, 0, 0]), torch.tensor([-1, -1, 1, 0])
    assert correct_by_group(pred, y, group, 2).tolist() == [[1.0, 0.0]]
    m = split_metrics(pred[0], y, group, ["g0", "g1"], np.array([1, 1]), class_names=["c0", "c1"])
    assert m["acc"] == 0.75 and m["wga"] == 0.0 and m["per_group"]["g0"] == {"acc": 1.0, "n": 1}
    assert m["worst_class"] == pytest.approx(2 / 3) and m["per_class"]["c1"] == {"acc": 1.0, "n": 1}
    hidden = split_metrics(pred[0], y, torch.full((4,), -1), ["g0", "g1"], np.array([1, 1]), class_names=["c0", "c1"])
    assert hidden["wga"] is None and hidden["acc"] == 0.75


@pytest.mark.parametrize("device", DEVICES)
def test_worst_group_accuracy_skips_empty_groups(device: str) -> None:
    correct = torch.tensor([[3.0, 0.0, 1.0], [4.0, 0.0, 2.0]], dtype=torch.float64, device=device)
    total = torch.tensor([4, 0, 2])  # group 1 has no rows: its 0/0 must not count as 0
    got = worst_group_accuracy(correct, total)
    assert got.cpu().tolist() == [0.5, 1.0]
    empty = worst_group_accuracy(correct, torch.tensor([0, 0, 0]))
    assert empty.shape == (2,) and bool(torch.isnan(empty).all())


def test_metrics_with_an_empty_group_in_the_split() -> None:
    # Group C has train rows but none in this split.
    m = metrics_from_counts([3, 1, 0], [4, 2, 0], [10, 5, 5], ["A", "B", "C"])
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["wga"] == pytest.approx(0.5)
    assert m["acc_group_mean"] == pytest.approx((0.75 + 0.5) / 2)
    # C cannot be scored: A and B weighted by their train sizes, renormalised over 15 rows.
    assert m["acc_train_weighted"] == pytest.approx((0.75 * 10 + 0.5 * 5) / 15)
    assert m["per_group"] == {"A": {"acc": 0.75, "n": 4}, "B": {"acc": 0.5, "n": 2},
                              "C": {"acc": None, "n": 0}}


def test_metrics_with_a_group_that_has_no_train_rows() -> None:
    # Group C appears in this split only: it counts for WGA and the group mean,
    # and has weight 0 in the train-weighted average.
    m = metrics_from_counts([3, 1, 1], [4, 2, 4], [10, 5, 0], ["A", "B", "C"])
    assert m["acc"] == pytest.approx(5 / 10)
    assert m["wga"] == pytest.approx(0.25)
    assert m["acc_group_mean"] == pytest.approx((0.75 + 0.5 + 0.25) / 3)
    assert m["acc_train_weighted"] == pytest.approx((0.75 * 10 + 0.5 * 5) / 15)


def test_waterbirds_train_weighted_average() -> None:
    # Made-up test counts giving group accuracies 0.99, 0.80, 0.75, 0.95.
    m = metrics_from_counts([1980, 1600, 450, 570], [2000, 2000, 600, 600], WB_TRAIN, WB_GROUPS)
    # By hand: 0.99*3498 + 0.80*184 + 0.75*56 + 0.95*1057
    #        = 3463.02 + 147.2 + 42.0 + 1004.15 = 4656.37, over 4795 train rows.
    assert m["acc_train_weighted"] == pytest.approx(4656.37 / 4795)
    assert m["acc_train_weighted"] == pytest.approx(0.971089, abs=1e-6)
    assert m["acc"] == pytest.approx(4600 / 5200)  # plain accuracy: a different number
    assert m["acc_group_mean"] == pytest.approx((0.99 + 0.80 + 0.75 + 0.95) / 4)
    assert m["wga"] == pytest.approx(0.75)
    assert [m["per_group"][g]["acc"] for g in WB_GROUPS] == pytest.approx([0.99, 0.80, 0.75, 0.95])


def test_ties_for_the_worst_group() -> None:
    m = metrics_from_counts([1, 2, 4], [2, 4, 4], [1, 1, 1], ["A", "B", "C"])
    assert m["wga"] == pytest.approx(0.5)
    assert m["acc_group_mean"] == pytest.approx(2 / 3)


def test_split_with_no_rows_gives_none_everywhere() -> None:
    m = metrics_from_counts([0, 0], [0, 0], [5, 5], ["A", "B"])
    assert all(m[k] is None for k in METRIC_KEYS)
    assert m["per_group"] == {"A": {"acc": None, "n": 0}, "B": {"acc": None, "n": 0}}
    s = split_metrics(np.array([], dtype=np.int64), np.array([], dtype=np.int64),
                      np.array([], dtype=np.int64), ["A", "B"], [5, 5])
    assert s == m


def test_mismatched_lengths_are_a_bug_not_a_silent_result() -> None:
    with pytest.raises(ValueError, match="disagree"):
        metrics_from_counts([1, 2], [2, 2], [3, 3, 3], ["A", "B"])


def test_split_metrics_from_predictions() -> None:
    y = np.array([0, 0, 1, 1, 1, 0, 1])
    group = np.array([0, 0, 1, 1, 1, 2, 3])
    pred = np.array([0, 1, 1, 1, 0, 0, 0])
    m = split_metrics(pred, y, group, ["a", "b", "c", "d"], train_total=[4, 3, 2, 1])
    # group accs: a 1/2, b 2/3, c 1/1, d 0/1
    assert m["acc"] == pytest.approx(4 / 7)
    assert m["wga"] == 0.0
    assert m["acc_group_mean"] == pytest.approx((0.5 + 2 / 3 + 1 + 0) / 4)
    assert m["acc_train_weighted"] == pytest.approx((0.5 * 4 + 2 / 3 * 3 + 1 * 2 + 0 * 1) / 10)
    assert m["per_group"]["b"] == {"acc": pytest.approx(2 / 3), "n": 3}
    # Tensors give the same answer as arrays.
    mt = split_metrics(torch.tensor(pred), torch.tensor(y), torch.tensor(group),
                       ["a", "b", "c", "d"], train_total=np.array([4, 3, 2, 1]))
    assert mt == m


def test_seed_stats_use_sample_std_and_skip_missing() -> None:
    runs = [{"acc": 0.8, "acc_train_weighted": 0.9, "acc_group_mean": 0.7, "wga": 0.6},
            {"acc": 0.9, "acc_train_weighted": 0.9, "acc_group_mean": 0.7, "wga": None},
            {"acc": 0.7, "acc_train_weighted": 0.9, "acc_group_mean": 0.7, "wga": 0.4}]
    seeds = SplitSeeds.of(runs)
    assert seeds.n_seeds == 3
    assert seeds.get("acc").mean == pytest.approx(0.8)
    assert seeds.get("acc").std == pytest.approx(0.1)  # sqrt(((0)^2 + 0.1^2 + 0.1^2) / 2)
    assert seeds.get("acc").sem == pytest.approx(0.1 / math.sqrt(3))
    assert seeds.to_json()["acc_train_weighted"] == {"mean": pytest.approx(0.9), "std": pytest.approx(0.0)}
    assert seeds.get("wga").mean == pytest.approx(0.5) and seeds.get("wga").n == 2  # the None seed is left out
    assert seeds.get("wga").std == pytest.approx(math.sqrt(0.02))
    # the one rule for a single seed: no spread, so std and SEM are None (null), not 0
    one = seed_stats(runs[:1])
    assert one["acc"] == Stat(0.8, None, 1) and one["acc"].sem is None
    assert SplitSeeds.of(runs[:1]).to_json()["acc"] == {"mean": 0.8, "std": None}
    none = SplitSeeds.of([None, None])  # a split with no rows in every seed
    assert none.to_json()["acc"] == {"mean": None, "std": None} and none.n_seeds == 2
    assert SplitSeeds.from_json(seeds.to_json()).get("wga").std == pytest.approx(math.sqrt(0.02))


def test_per_group_stats_and_mean_metrics() -> None:
    a = metrics_from_counts([3, 1], [4, 2], [10, 5], ["A", "B"])  # 0.75, 0.5
    b = metrics_from_counts([4, 2], [4, 2], [10, 5], ["A", "B"])  # 1.0, 1.0
    pg = per_group_stats([a, b])
    assert pg["A"]["stat"].mean == pytest.approx(0.875)
    assert pg["A"]["stat"].std == pytest.approx(math.sqrt(2 * 0.125**2))
    assert pg["B"]["n"] == 2
    mm = mean_metrics([a, None, b])
    assert mm is not None
    assert mm["wga"] == pytest.approx((0.5 + 1.0) / 2)
    assert mm["acc"] == pytest.approx((4 / 6 + 1.0) / 2)
    assert mm["per_group"]["B"] == {"acc": pytest.approx(0.75), "n": 2}
    assert mean_metrics([None]) is None


counts = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(counts)
def test_metric_invariants(pairs: list[tuple[int, int]]) -> None:
    total = [n for n, _ in pairs]
    correct = [min(c, n) for n, c in pairs]
    names = [f"g{i}" for i in range(len(pairs))]
    # this split *is* the train split; one class per group here, so classes are the groups
    m = metrics_from_counts(correct, total, total, names, (correct, total, names))
    if sum(total) == 0:
        assert all(m[k] is None for k in METRIC_KEYS)
        return
    for k in METRIC_KEYS:
        assert m[k] is None if k == "ce" else 0.0 <= m[k] <= 1.0
    assert m["worst_class"] == m["wga"]
    # Weighting by the split's own sizes gives back plain accuracy.
    assert m["acc_train_weighted"] == pytest.approx(m["acc"])
    assert m["wga"] <= m["acc_group_mean"] + 1e-12
    assert m["wga"] <= m["acc"] + 1e-12
