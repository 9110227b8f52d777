"""How sure a test metric is, and whether one model really beats another on the same examples.

Pure functions on arrays, no MLflow, no TensorFlow:

- `wilson_interval`: a 95% interval for an accuracy (k right of n), Wilson's score interval.
- `bootstrap_interval`: a percentile bootstrap interval for the mean of per-example values
  (the squared errors of a regression: an interval for its MSE).
- `interval_of`: a model's headline-metric interval from its test predictions, by one of those two.
- `mcnemar`, `paired_classifiers`: McNemar's exact test on the examples two classifiers
  disagree on: of the examples exactly one of them gets right, is the split further from
  half-and-half than chance allows? (an exact two-sided binomial test, `scipy.stats.binomtest`).
- `paired_bootstrap`: the same question for a regression: the mean difference of two
  models' squared errors on the same examples, with its bootstrap interval and p-value.
"""

import statistics
from dataclasses import dataclass

import lazy_loader as lazy
import numpy as np

scipy = lazy.load("scipy")  # imported when a test runs

CONFIDENCE = 0.95
RESAMPLES = 2000  # bootstrap resamples: the interval's ends move by well under a tenth of its width
BOOTSTRAP_SEED = 0  # the same data always gives the same interval
CHUNK = 200  # resamples drawn at once: bounds memory on large test splits


def _z(confidence):
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)  # no SciPy import in every training


def wilson_interval(successes, n, confidence=CONFIDENCE):
    """(low, high): Wilson's score interval for the proportion `successes`/`n`."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    # Rounding can push an end a hair past the estimate at p = 0 or 1: clamp it.
    return float(max(0.0, min(centre - half, p))), float(min(1.0, max(centre + half, p)))


def _bootstrap_means(values, resamples, bootstrap_seed):
    values = np.asarray(values, dtype="float64").reshape(-1)
    if not len(values):
        raise ValueError("need one value at least")
    rng = np.random.default_rng(bootstrap_seed)
    means = []
    for start in range(0, resamples, CHUNK):
        indices = rng.integers(0, len(values), size=(min(CHUNK, resamples - start), len(values)))
        means.append(values[indices].mean(axis=1))
    return np.concatenate(means)


def bootstrap_interval(values, confidence=CONFIDENCE, resamples=RESAMPLES, bootstrap_seed=BOOTSTRAP_SEED):
    """(low, high): the percentile bootstrap interval of the mean of `values`."""
    means = _bootstrap_means(values, resamples, bootstrap_seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    mean = float(np.mean(values))
    return float(min(low, mean)), float(max(high, mean))  # a percentile end can miss a skewed mean


def interval_of(kind, truth, predicted, confidence=CONFIDENCE):
    """The interval of a model's headline test metric from its predictions: Wilson's for the
    accuracy of a classifier (`kind` binary or multiclass, `predicted` labels), a bootstrap
    for the MSE of a regression."""
    truth, predicted = np.reshape(truth, -1), np.reshape(predicted, -1)
    _same_length(truth, predicted)
    if kind == "regression":
        return bootstrap_interval((predicted.astype("float64") - truth) ** 2, confidence)
    return wilson_interval(int(np.sum(predicted == truth)), len(truth), confidence)


def metric_of(kind, truth, predicted):
    """The headline test metric from predictions: accuracy, or a regression's MSE."""
    truth, predicted = np.reshape(truth, -1), np.reshape(predicted, -1)
    if kind == "regression":
        return float(np.mean((predicted.astype("float64") - truth) ** 2))
    return float(np.mean(predicted == truth))


@dataclass(frozen=True)
class PairedTest:
    """Two models on the same test examples: is the challenger significantly better?

    `gain` is how much better the challenger is on the metric (accuracy points, or MSE
    lower by); `p_value` is two-sided. For classifiers `challenger_only` and `champion_only`
    count the examples only that model gets right; for regression they are None and
    `gain_interval` is the bootstrap interval of the gain.
    """

    test: str  # "mcnemar" or "paired_bootstrap"
    examples: int
    gain: float
    p_value: float
    challenger_only: int | None = None
    champion_only: int | None = None
    gain_interval: tuple[float, float] | None = None

    def significant(self, alpha):
        return self.gain > 0 and self.p_value < alpha

    def describe(self):
        """The test and its numbers in words, for a decision's reason."""
        if self.test == "mcnemar":
            return (
                f"McNemar's exact test on the {self.challenger_only + self.champion_only} of {self.examples} test "
                f"examples they disagree on ({self.challenger_only} only the challenger gets right, "
                f"{self.champion_only} only the champion): p = {self.p_value:.3g}"
            )
        low, high = self.gain_interval
        return (
            f"paired bootstrap of the squared errors on {self.examples} test examples: MSE lower by {self.gain:.4g} "
            f"(95% interval {low:.4g} to {high:.4g}), p = {self.p_value:.3g}"
        )


def mcnemar(challenger_only, champion_only):
    """Two-sided p-value of McNemar's exact test: of the disagreements, `challenger_only`
    went one way and `champion_only` the other; under no difference each way is a coin flip."""
    disagreements = challenger_only + champion_only
    if disagreements == 0:
        return 1.0
    return float(scipy.stats.binomtest(int(challenger_only), int(disagreements), 0.5).pvalue)


def paired_classifiers(truth, challenger, champion):
    """McNemar's test of two classifiers' predicted labels on the same test examples."""
    truth, challenger, champion = (np.asarray(a).reshape(-1) for a in (truth, challenger, champion))
    _same_length(truth, challenger, champion)
    right_challenger, right_champion = challenger == truth, champion == truth
    challenger_only = int(np.sum(right_challenger & ~right_champion))
    champion_only = int(np.sum(right_champion & ~right_challenger))
    return PairedTest(
        "mcnemar",
        len(truth),
        (challenger_only - champion_only) / len(truth),
        mcnemar(challenger_only, champion_only),
        challenger_only=challenger_only,
        champion_only=champion_only,
    )


def paired_bootstrap(
    truth, challenger, champion, resamples=RESAMPLES, bootstrap_seed=BOOTSTRAP_SEED, confidence=CONFIDENCE
):
    """A paired bootstrap of two regressions' squared errors on the same test examples:
    the gain is the champion's MSE minus the challenger's; the p-value, twice the share of
    resampled gains on the far side of zero (at least 1/(resamples + 1))."""
    truth, challenger, champion = (np.asarray(a, dtype="float64").reshape(-1) for a in (truth, challenger, champion))
    _same_length(truth, challenger, champion)
    differences = (champion - truth) ** 2 - (challenger - truth) ** 2
    gain = float(np.mean(differences))
    means = _bootstrap_means(differences, resamples, bootstrap_seed)
    tail = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(means, [tail, 1 - tail]))
    if not np.any(differences):
        p_value = 1.0
    else:
        beyond = min(np.sum(means <= 0), np.sum(means >= 0))
        p_value = float(min(1.0, 2 * (beyond + 1) / (resamples + 1)))
    return PairedTest("paired_bootstrap", len(truth), gain, p_value, gain_interval=(min(low, gain), max(high, gain)))


def _same_length(*arrays):
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"the predictions must be of the same, non-empty test examples (lengths {sorted(lengths)})")
