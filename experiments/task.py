"""The shape every task file fills in: its data, its model variants, their knobs and defaults."""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from optuna.distributions import BaseDistribution

Kind = Literal["binary", "multiclass", "regression"]
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1"), ("false", "no", "0")
TYPE_WORDS = {int: "an integer", float: "a number", str: "text", bool: "true or false"}
MAX_SHOWN = 80  # characters of a bad value echoed in an error line
MAX_INT = 2**63 - 1  # the largest integer NumPy and TensorFlow take
# Examples per batch where a model only predicts (validation, test, a task's extra metrics):
# no gradients to keep, so larger than any training batch, and still small in memory.
EVALUATION_BATCH_SIZE = 1024


class InputError(Exception):
    """Bad user input: a parameter value or a data file. The message names which (exit code 2).

    Its text is one line whatever it quotes: a path holding a newline is escaped.
    """

    def __str__(self):
        return shown(Exception.__str__(self), limit=None)


class RunFailed(Exception):
    """A run that failed for a reason other than its input: a diverged training, a failed step (exit code 1)."""

    __str__ = InputError.__str__


@dataclass(frozen=True)
class Param:
    """One parameter or command setting, declared once: type, default, valid values, one line of help.

    Bounds are inclusive (`ge`, `le`) or exclusive (`gt`, `lt`). `choices` lists the valid
    values; `pattern` is a regular expression that the whole text must match; `max_length`
    caps a text's length.
    """

    type: type
    default: object
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    pattern: str | None = None
    max_length: int | None = None  # of a text value

    @property
    def rule(self) -> str:
        """The valid values in words: 'an integer >= 1', 'a number in [0, 1)', 'one of adam, sgd'."""
        if self.choices:
            return f"one of {', '.join(map(str, self.choices))}"
        if self.pattern:
            return f"text matching {self.pattern}"
        if self.max_length is not None:
            return f"text of at most {self.max_length} characters"
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        high = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        words = TYPE_WORDS[self.type]
        if low and high:
            return f"{words} in {low[0]}{_bound(low[1])}, {_bound(high[1])}{high[0]}"
        if low:
            return f"{words} {'>=' if low[0] == '[' else '>'} {_bound(low[1])}"
        if high:
            return f"{words} {'<=' if high[0] == ']' else '<'} {_bound(high[1])}"
        return words

    def valid(self, value) -> bool:
        if self.choices and value not in self.choices:
            return False
        if self.pattern and not re.fullmatch(self.pattern, value):
            return False
        if self.max_length is not None and len(value) > self.max_length:
            return False
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def parse(self, name, raw):
        """`raw` (a value or its text) as this parameter's type, refused in one line that names `name`."""
        text = str(raw).strip(" \t\r\n")  # what float() would not take, such as control characters, stays
        try:
            value = _convert(self.type, raw, text)
        except ValueError:
            kind = "a finite number" if self.type is float else TYPE_WORDS[self.type]
            raise InputError(f"{name}: '{shown(raw)}' is not {kind}") from None
        except OverflowError:
            limit = "" if self.le is not None or self.lt is not None else " of at most 64 bits"
            raise InputError(f"{name}: {shown(text)} is out of range; it must be {self.rule}{limit}") from None
        if not self.valid(value):
            raise InputError(f"{name}: {shown(value)} is out of range; it must be {self.rule}")
        return value


def _bound(number):
    return str(number) if isinstance(number, int) else f"{number:g}"


def shown(value, limit=MAX_SHOWN):
    """`value` as a one-line message may echo it: control characters escaped, cut to `limit`
    characters (None: whole, as for a path), and a NumPy scalar as its plain number."""
    if isinstance(value, np.generic):
        value = value.item()
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(value))
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def _convert(kind, raw, text):
    if kind is bool:
        if isinstance(raw, bool) or text.lower() in TRUE_WORDS + FALSE_WORDS:
            return raw if isinstance(raw, bool) else text.lower() in TRUE_WORDS
        raise ValueError
    if kind is int:
        try:
            number = decimal.Decimal(text)  # exact: through float, 10**23 would read 99999999999999991611392
        except decimal.InvalidOperation:
            raise ValueError from None
        if not number.is_finite() or number != number.to_integral_value():
            raise ValueError
        if number.copy_abs() > MAX_INT:
            raise OverflowError  # before int(): 1e999999999 would take minutes to write out
        return int(number)
    if kind is float:
        number = float(text)
        if not math.isfinite(number):
            raise ValueError
        return number
    return text


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
    """One model of a task: its builder, its knobs, its defaults and optional data/metric hooks.

    `build(input_shape, num_outputs, **knobs, **fixed)` returns an uncompiled model; `knobs`
    declares each keyword a run may set, `fixed` gives the others. A builder declares no
    defaults of its own: each value is in one place, the variant's entry. `defaults`
    overrides the default of a training parameter or a knob for this variant.
    `search_space` maps parameter names to Optuna distributions: what a sweep tunes.
    `serve` wraps the trained model into the one evaluated and logged (test-time augmentation,
    say); it must use built-in layers only, so the logged model loads without our code.
    """

    build: Callable
    description: str
    knobs: dict[str, Param] = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)  # the builder's other arguments: this variant's, never tuned
    defaults: dict = field(default_factory=dict)
    search_space: dict[str, BaseDistribution] = field(default_factory=dict)
    reference: str = ""  # the tutorial result this variant reproduces
    prepare_train: Callable[[Splits], Splits] | None = None  # e.g. add augmented copies
    extra_metrics: Callable | None = None  # (model, splits) -> {name: value}
    serve: Callable | None = None  # (trained model) -> the model evaluated and logged


@dataclass(frozen=True)
class Task:
    """A dataset with its loader, its kind of problem and its model variants."""

    name: str
    kind: Kind
    load: Callable  # (data_path: Path | None, seed: int) -> Splits; None: the usual place; seed: `split_seed`
    variants: dict[str, Variant]
    default_variant: str
    defaults: dict = field(default_factory=dict)  # training defaults of every variant
    data_help: str = ""  # where the data comes from; a task that reads files says, and takes `data`
    short_entry_point: bool = False  # True: the default variant's entry point is the bare task name
    pixel_inputs: bool = False  # True: images of 0-255 pixels; a served model takes 0-1 too (`pipelines.pixel_input`)

    @property
    def primary_metric(self) -> str:
        return "test_mse" if self.kind == "regression" else "test_accuracy"

    def qualified_name(self, variant: str) -> str:
        """The entry point's name: `mnist_cnn_bn`, or `xor` for a short one."""
        if self.short_entry_point and variant == self.default_variant:
            return self.name
        return f"{self.name}_{variant}"
