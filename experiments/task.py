"""The shape every task file fills in: its data, its model variants and their defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
from optuna.distributions import BaseDistribution

Kind = Literal["binary", "multiclass", "regression"]


class InputError(Exception):
    """Bad user input: a parameter value or a data file. The message names which."""


@dataclass(frozen=True)
class Splits:
    """One task's arrays as the model sees them, plus where they came from.

    `x_val` is None when the task validates on a split carved from `x_train`
    (the pipeline does that, driven by the `validation_fraction` parameter).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    source: str | None = None  # file or folder read; None for generated data
    class_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Variant:
    """One model of a task: its builder, its defaults and optional data/metric hooks.

    `build(input_shape, num_outputs, **model_params)` returns an uncompiled model.
    `defaults` holds the variant's training defaults and every model parameter the
    builder takes; a key that is not a training parameter is passed to `build`.
    `search_space` maps parameter names to Optuna distributions: what a sweep tunes.
    """

    build: Callable
    defaults: dict
    description: str
    search_space: dict[str, BaseDistribution] = field(default_factory=dict)
    reference: str = ""  # the tutorial result this variant reproduces
    prepare_train: Callable[[Splits], Splits] | None = None  # e.g. add augmented copies
    extra_metrics: Callable | None = None  # (model, splits) -> {name: value}


@dataclass(frozen=True)
class Task:
    """A dataset with its loader, its kind of problem and its model variants."""

    name: str
    kind: Kind
    load: Callable  # (data_path: Path | None, seed: int) -> Splits; None: the usual place
    variants: dict[str, Variant]
    default_variant: str
    defaults: dict = field(default_factory=dict)
    data_help: str = ""  # where the data comes from and how to point to it
    short_entry_point: bool = False  # True: the default variant's entry point is the bare task name

    @property
    def primary_metric(self) -> str:
        return "test_mse" if self.kind == "regression" else "test_accuracy"

    def qualified_name(self, variant: str) -> str:
        """The entry point's name: `mnist_cnn_bn`, or `xor` for a short one."""
        if self.short_entry_point and variant == self.default_variant:
            return self.name
        return f"{self.name}_{variant}"
