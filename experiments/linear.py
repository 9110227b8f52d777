"""Linear regression: one Dense(1) unit learns f(x) = 2x + 1 from 1000 points in [1, 2]."""

import lazy_loader as lazy
import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution

from experiments.task import Splits, Task, Variant

# Imported when a model is built: --help, --dry_run and a refused parameter need none of it.
keras = lazy.load("keras")

TRUE_WEIGHT = 2.0
TRUE_BIAS = 1.0
NUM_POINTS = 1000
TEST_FRACTION = 0.2


def load_line(data_path, seed):
    rng = np.random.default_rng(seed)  # the points and their test split: the same for every seed
    x = rng.uniform(1.0, 2.0, size=(NUM_POINTS, 1)).astype("float32")
    y = (TRUE_WEIGHT * x + TRUE_BIAS).astype("float32")
    num_test = int(NUM_POINTS * TEST_FRACTION)
    return Splits(x[num_test:], y[num_test:], x[:num_test], y[:num_test])


def linear_unit(input_shape, num_outputs):
    return keras.Sequential([keras.Input(shape=input_shape), keras.layers.Dense(num_outputs)], name="linear_unit")


def learned_line(model, splits):
    weight, bias = model.layers[-1].get_weights()
    return {"learned_weight": float(weight[0, 0]), "learned_bias": float(bias[0])}


TASK = Task(
    name="linear",
    kind="regression",
    load=load_line,
    variants={
        "unit": Variant(
            build=linear_unit,
            description="one Dense(1) linear unit fitted to 2x + 1",
            search_space={
                "learning_rate": FloatDistribution(1e-3, 1e-1, log=True),
                "optimizer": CategoricalDistribution(["sgd", "rmsprop", "adam"]),
            },
            reference="weight 2, bias 1 (within 0.01)",
            extra_metrics=learned_line,
        )
    },
    short_entry_point=True,
    default_variant="unit",
    defaults={
        "epochs": 100,
        "batch_size": 32,
        "optimizer": "rmsprop",
        "learning_rate": 0.01,
    },
)
