"""XOR: the smallest problem a linear model cannot solve, and a 2-8-4-1 MLP that can."""

import lazy_loader as lazy
import numpy as np
from optuna.distributions import FloatDistribution, IntDistribution

from experiments.task import Param, Splits, Task, Variant

# Imported when a model is built: --help, --dry_run and a refused parameter need none of it.
keras = lazy.load("keras")

XOR_INPUTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype="float32")
XOR_TARGETS = np.array([0, 1, 1, 0], dtype="float32")


def load_xor(data_path, seed):
    # Four points: train and test are the same truth table.
    return Splits(XOR_INPUTS, XOR_TARGETS, XOR_INPUTS, XOR_TARGETS, class_names=("0", "1"))


def mlp(input_shape, num_outputs, units):
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(units // 2, activation="relu"),
            keras.layers.Dense(num_outputs, activation="sigmoid"),
        ],
        name="xor_mlp",
    )


TASK = Task(
    name="xor",
    kind="binary",
    load=load_xor,
    variants={
        "mlp": Variant(
            build=mlp,
            description="2-8-4-1 MLP (relu, relu, sigmoid)",
            knobs={"units": Param(int, 8, "units in the first hidden layer; the second has half as many", ge=2)},
            search_space={
                "learning_rate": FloatDistribution(1e-3, 1e-1, log=True),
                "units": IntDistribution(4, 32, log=True),
            },
            reference="100% accuracy",
        )
    },
    short_entry_point=True,
    default_variant="mlp",
    defaults={
        "epochs": 500,
        "batch_size": 1,
        "optimizer": "adam",
        "learning_rate": 0.01,
        "validation_fraction": 0.0,
    },
)
