"""Checks on the real datasets in ../shared/data. On demand: `python -m pytest -m real_data`."""

import numpy as np
import pytest

from experiments.churn import load_churn
from experiments.emotion import load_fer2013
from experiments.mnist import load_mnist
from tests.helpers import SHARED_DATA

pytestmark = pytest.mark.real_data


def shared(name):
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not here")
    return path


def test_real_mnist():
    splits = load_mnist(shared("mnist.npz"), seed=0)
    assert splits.x_train.shape == (60_000, 28, 28, 1) and splits.x_test.shape == (10_000, 28, 28, 1)
    assert (splits.y_train == 1).sum() == 6742
    assert splits.x_train.mean() / 255 == pytest.approx(0.1307, abs=1e-4)


def test_real_churn_matches_the_shipped_copy():
    shipped = load_churn(None, seed=0)
    real = load_churn(shared("Churn_Modelling.csv"), seed=0)
    np.testing.assert_array_equal(shipped.x_train, real.x_train)
    assert real.x_train.shape == (8000, 11) and real.x_test.shape == (2000, 11)
    labels = np.concatenate([real.y_train, real.y_test])
    assert labels.mean() == pytest.approx(0.2037)


def test_real_fer2013_archive():
    splits = load_fer2013(shared("fer2013.tar.gz"), seed=0)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (28_709, 3_589, 3_589)
    assert splits.x_train.shape[1:] == (48, 48, 1) and set(splits.y_train) == set(range(7))
