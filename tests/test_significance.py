"""Confidence intervals and paired tests (pipelines/significance.py): properties with Hypothesis, known cases."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines import significance

counts = st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


@given(counts)
def test_the_wilson_interval_holds_the_accuracy_inside_the_unit_interval(count):
    successes, n = count
    low, high = significance.wilson_interval(successes, n)
    assert 0 <= low <= successes / n <= high <= 1
    assert high - low > 0  # never a point: n is finite


@given(st.integers(1, 400), st.floats(0.05, 0.95), st.integers(2, 20))
def test_the_wilson_interval_narrows_with_more_test_examples(n, accuracy, factor):
    successes = round(accuracy * n)
    low, high = significance.wilson_interval(successes, n)
    more_low, more_high = significance.wilson_interval(successes * factor, n * factor)
    assert more_high - more_low < high - low


def test_the_wilson_interval_matches_a_known_case():
    # 9942 of 10,000 right (99.42%): the interval is about +-0.15 points, not +-0.
    low, high = significance.wilson_interval(9942, 10_000)
    assert low == pytest.approx(0.99250, abs=5e-5) and high == pytest.approx(0.99552, abs=5e-5)


@pytest.mark.parametrize(("successes", "n"), [(-1, 10), (11, 10), (0, 0)])
def test_the_wilson_interval_refuses_impossible_counts(successes, n):
    with pytest.raises(ValueError):
        significance.wilson_interval(successes, n)


@given(st.lists(st.floats(0, 100), min_size=1, max_size=60), st.integers(0, 3))
def test_the_bootstrap_interval_holds_the_mean(values, seed):
    low, high = significance.bootstrap_interval(values, resamples=200, bootstrap_seed=seed)
    assert low <= np.mean(values) + 1e-9 and np.mean(values) - 1e-9 <= high


def test_the_bootstrap_interval_narrows_with_more_test_examples():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 500, 5000):
        values = rng.exponential(size=n)
        low, high = significance.bootstrap_interval(values)
        widths.append(high - low)
        assert high - low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(n), rel=0.25)  # as 1/sqrt(n)
    assert widths[0] > widths[1] > widths[2]


def test_the_bootstrap_interval_is_repeatable():
    values = np.random.default_rng(2).normal(size=300)
    assert significance.bootstrap_interval(values) == significance.bootstrap_interval(values)


def binomial_two_sided(k, n):
    """The exact McNemar p-value from its definition, for symmetric p = 1/2."""
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(
    ("challenger_only", "champion_only", "expected"),
    [
        (0, 0, 1.0),  # no disagreement: no evidence
        (1, 0, 1.0),
        (5, 5, 1.0),
        (10, 0, 2 / 2**10),
        (6, 0, 2 / 2**6),  # 0.03125: significant at 0.05
        (5, 0, 2 / 2**5),  # 0.0625: not
        (30, 10, binomial_two_sided(10, 40)),
        (10, 30, binomial_two_sided(10, 40)),  # two-sided: symmetric
    ],
)
def test_mcnemar_matches_known_counts(challenger_only, champion_only, expected):
    assert significance.mcnemar(challenger_only, champion_only) == pytest.approx(expected, rel=1e-9)


def predictions_with(challenger_only, champion_only, both_right, both_wrong):
    """Labels 0/1 and two models' predictions with exactly these counts of agreement."""
    blocks = [(challenger_only, 1, 0), (champion_only, 0, 1), (both_right, 1, 1), (both_wrong, 0, 0)]
    truth = np.ones(sum(count for count, _, _ in blocks), "int64")
    challenger = np.concatenate([np.full(count, a) for count, a, _ in blocks])
    champion = np.concatenate([np.full(count, b) for count, _, b in blocks])
    return truth, challenger, champion


@given(st.integers(0, 60), st.integers(0, 60), st.integers(0, 100), st.integers(0, 20))
def test_paired_classifiers_count_the_disagreements(challenger_only, champion_only, both_right, both_wrong):
    truth, challenger, champion = predictions_with(challenger_only, champion_only, both_right, both_wrong)
    if not len(truth):
        return
    test = significance.paired_classifiers(truth, challenger, champion)
    assert (test.challenger_only, test.champion_only, test.examples) == (challenger_only, champion_only, len(truth))
    assert test.gain == pytest.approx(np.mean(challenger == truth) - np.mean(champion == truth))
    assert test.p_value == pytest.approx(significance.mcnemar(challenger_only, champion_only))
    assert test.significant(0.05) == (challenger_only > champion_only and test.p_value < 0.05)
    assert f"{challenger_only} only the challenger gets right" in test.describe()


def test_a_loss_is_never_significant_however_small_its_p_value():
    test = significance.paired_classifiers(*predictions_with(0, 20, 80, 0))
    assert test.p_value < 1e-5 and test.gain < 0 and not test.significant(0.05)


def test_the_paired_bootstrap_finds_a_real_gain_and_not_a_reshuffle():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=400)
    champion = truth + rng.normal(scale=1.0, size=400)
    better = truth + rng.normal(scale=0.5, size=400)
    win = significance.paired_bootstrap(truth, better, champion)
    assert win.gain > 0 and win.p_value < 0.01 and win.significant(0.05)
    assert win.gain_interval[0] <= win.gain <= win.gain_interval[1] and win.gain_interval[0] > 0
    assert "MSE lower by" in win.describe()
    same = significance.paired_bootstrap(truth, champion, champion)
    assert same.gain == 0 and same.p_value == 1 and not same.significant(0.05)
    noise = significance.paired_bootstrap(truth, champion + rng.normal(scale=0.01, size=400), champion)
    assert noise.p_value > 0.05 and not noise.significant(0.05)


def test_paired_tests_refuse_predictions_of_other_examples():
    with pytest.raises(ValueError, match="same"):
        significance.paired_classifiers([1, 0], [1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="same"):
        significance.paired_bootstrap([], [], [])
