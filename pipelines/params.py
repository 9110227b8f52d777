"""Every parameter a task can take: its type, its valid range, and each variant's defaults.

MLflow passes `-P` values to the entry point unchecked (it validates only `path` and
`uri`), so every value is parsed and range-checked here before any run work starts.
"""

import math
from dataclasses import dataclass
from typing import Callable

from experiments import InputError

OPTIMIZERS = ("adam", "adamw", "nadam", "rmsprop", "sgd")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Param:
    type: type
    valid: Callable[[object], bool]
    rule: str  # the valid range, in words
    help: str


def _at_least(low):
    return lambda value: value >= low


def _fraction(value):
    return 0 <= value < 1


def _half(value):
    return 0 <= value < 0.5


def is_name(value):
    """A study or model name: safe in file names and in MLflow search filters."""
    return len(value) <= 100 and all(c.isalnum() or c in "_.-" for c in value)


NAME_RULE = "letters, digits, '_', '.' and '-'"


TRAINING_PARAMS = {
    "epochs": Param(int, _at_least(1), "an integer >= 1", "passes over the training data"),
    "batch_size": Param(int, _at_least(1), "an integer >= 1", "examples per gradient step"),
    "learning_rate": Param(float, lambda value: value > 0, "a number > 0", "the optimizer's step size"),
    "optimizer": Param(str, lambda value: value in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}", "the optimizer"),
    "lr_schedule": Param(
        str,
        lambda value: value in LR_SCHEDULES,
        f"one of {', '.join(LR_SCHEDULES)}",
        "constant, or cosine decay from learning_rate to 0 over all epochs",
    ),
    "seed": Param(int, _at_least(0), "an integer >= 0", "seeds Python, NumPy, Keras and the data splits"),
    "max_samples": Param(int, _at_least(0), "an integer >= 0", "train on this many examples; 0 uses all"),
    "validation_fraction": Param(
        float, _fraction, "a number in [0, 1)", "share of the training data held out to validate"
    ),
    "data": Param(str, lambda value: True, "a path", "the data file or folder; empty for the usual place"),
}
MODEL_PARAMS = {
    "units": Param(int, _at_least(1), "an integer >= 1", "width of the dense layers"),
    "hidden_layers": Param(int, _at_least(1), "an integer >= 1", "number of hidden dense layers"),
    "filters": Param(int, _at_least(1), "an integer >= 1", "filters in the first convolution"),
    "dropout": Param(float, _fraction, "a number in [0, 1)", "dropout rate before the dense layers"),
    "conv_dropout": Param(float, _fraction, "a number in [0, 1)", "dropout rate after each pooling"),
    "l1": Param(float, _at_least(0), "a number >= 0", "L1 kernel regularization strength"),
    "l2": Param(float, _at_least(0), "a number >= 0", "L2 kernel regularization strength"),
    "shift": Param(
        float, _half, "a number in [0, 0.5)", "random shift of training images, as a fraction of their size"
    ),
}
PARAMS = {**TRAINING_PARAMS, **MODEL_PARAMS}

COMMON_DEFAULTS = {
    "optimizer": "adam",
    "learning_rate": 0.001,
    "lr_schedule": "constant",
    "seed": 42,
    "max_samples": 0,
    "validation_fraction": 0.1,
}


def defaults_for(task, variant):
    """The variant's full parameter set: common < task < variant defaults."""
    defaults = {**COMMON_DEFAULTS, **task.defaults, **task.variants[variant].defaults}
    if task.data_help:
        defaults["data"] = ""
    unknown = set(defaults) - set(PARAMS)
    assert not unknown, f"{task.name}/{variant} declares undeclared parameters {unknown}"
    return {name: defaults[name] for name in PARAMS if name in defaults}


def parse_params(task, variant, overrides):
    """The defaults with `overrides` ({name: value or its text}) parsed and checked."""
    params = defaults_for(task, variant)
    for name, raw in overrides.items():
        if name not in params:
            raise InputError(
                f"{name}: not a parameter of {task.qualified_name(variant)} "
                f"(its parameters: {', '.join(sorted(params))})"
            )
        params[name] = parse_value(name, raw)
    return params


def parse_value(name, raw, specs=PARAMS):
    spec = specs[name]
    text = str(raw).strip()
    try:
        if spec.type is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError
            value = int(number)
        elif spec.type is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
        else:
            value = text
    except ValueError:
        kind = "an integer" if spec.type is int else "a finite number"
        raise InputError(f"{name}: '{raw}' is not {kind}") from None
    if not spec.valid(value):
        raise InputError(f"{name}: {value} is out of range; it must be {spec.rule}")
    return value


def parse_settings(raw, defaults, specs):
    """A command's settings: `defaults` with `raw` ({name: text}) parsed and range-checked."""
    settings = dict(defaults)
    for name, value in raw.items():
        if name not in specs:
            raise InputError(f"{name}: not a setting of this command (its settings: {', '.join(specs)})")
        settings[name] = parse_value(name, value, specs)
    return settings


def model_params(params):
    """The parameters the model builder takes."""
    return {name: value for name, value in params.items() if name in MODEL_PARAMS}
