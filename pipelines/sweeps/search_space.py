"""A sweep's search space: the variant's declared ranges, narrowed or overridden by the user.

Overrides come from a YAML or JSON file (or inline JSON) mapping parameter names to:

    learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}   # a range (int or float by parameter)
    filters: {low: 16, high: 64, step: 16}
    optimizer: [adam, nadam]                                # a choice
    batch_size: 256                                         # a fixed value, not tuned
    dropout: null                                           # not tuned: the variant's default

Names not mentioned keep the variant's declared range. Every bound and choice is checked
against the parameter's own valid range, so a sweep never samples a value a run would refuse.
"""

import json
from pathlib import Path

import yaml
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from experiments import InputError
from pipelines.params import declared_params

# They shape the data every trial of a study shares, so a study cannot vary them.
UNTUNABLE = ("data", "seed", "split_seed", "max_samples", "validation_fraction")
RANGE_KEYS = {"low", "high", "log", "step"}


def search_space(task, variant, params, overrides=None, fixed_by_user=()):
    """(space, params): the distributions to sample and the fixed parameters of every trial.

    `params` are the entry point's parsed parameters; `fixed_by_user` names those the user
    set explicitly, which are then fixed rather than tuned. `overrides` is (source, entries)
    from `read_overrides`.
    """
    declared = declared_params(task, variant)
    space = {name: dist for name, dist in task.variants[variant].search_space.items() if name not in fixed_by_user}
    params = dict(params)
    origin = "search_space"
    if overrides:
        source, entries = overrides
        origin = f"search_space: {source}"
        for name, entry in entries.items():
            where = f"search_space: {source}: {name}"
            if name not in params:
                raise InputError(f"{where}: not a parameter of this entry point (its parameters: {', '.join(params)})")
            if name in UNTUNABLE:
                raise InputError(f"{where}: cannot be tuned; it shapes the data every trial shares")
            space.pop(name, None)
            if isinstance(entry, (dict, list)):
                space[name] = _distribution(declared[name], entry, where)
            elif entry is not None:
                params[name] = _checked(declared[name], entry, where)
    if not space:
        raise InputError(f"{origin}: nothing left to tune; give at least one range or choice")
    return space, params


def read_overrides(value):
    """(source, {name: entry}) from a YAML/JSON file path or an inline JSON/YAML mapping."""
    text, source = value, "inline"
    path = Path(value).expanduser()
    if not value.lstrip().startswith("{"):
        try:
            if path.is_dir():
                raise InputError(f"search_space: {value} is a directory, not a YAML or JSON file")
            if not path.is_file():
                raise InputError(f"search_space: file not found: {value}")
            text, source = path.read_text(), str(path)
        except UnicodeDecodeError:
            raise InputError(f"search_space: {value} is not a YAML or JSON file (not text)") from None
        except (OSError, ValueError) as error:  # unreadable, or a name the file system refuses
            raise InputError(
                f"search_space: cannot read {value}: {getattr(error, 'strerror', None) or error}"
            ) from None
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"search_space: {source} is not valid YAML or JSON{line}") from None
    if not isinstance(entries, dict):
        raise InputError(f"search_space: {source} must map parameter names to ranges, choices or values")
    return source, entries


def _distribution(param, entry, where):
    if isinstance(entry, list):
        if not entry:
            raise InputError(f"{where}: an empty list of choices")
        return CategoricalDistribution([_checked(param, choice, where) for choice in entry])
    unknown = set(entry) - RANGE_KEYS
    if unknown or not {"low", "high"} <= set(entry):
        raise InputError(f"{where}: a range needs low and high, optionally log and step (got {', '.join(entry)})")
    if param.type not in (int, float):
        values = "text" if param.type is str else param.rule
        raise InputError(f"{where}: takes {values} values; give a list of choices instead of a range")
    low, high = _checked(param, entry["low"], where), _checked(param, entry["high"], where)
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise InputError(f"{where}: log must be true or false")
    step = entry.get("step")
    if step is not None:
        step = _checked_step(param.type, step, where)
    try:
        if param.type is int:
            return IntDistribution(low, high, log=log, step=step or 1)
        return FloatDistribution(low, high, log=log, step=step)
    except ValueError as error:  # Optuna's own check: low <= high, log needs low > 0, ...
        raise InputError(f"{where}: {error}") from None


def _checked(param, value, where):
    """`value` parsed and range-checked as `param`, refused in one line that names `where`."""
    try:
        return param.parse("value", value)
    except InputError as error:
        raise InputError(f"{where}: {str(error).removeprefix('value: ')}") from None


def _checked_step(kind, step, where):
    try:
        step = float(step)
    except (TypeError, ValueError):
        step = -1.0
    if step <= 0 or (kind is int and not step.is_integer()):
        raise InputError(f"{where}: step must be a positive {'integer' if kind is int else 'number'}")
    return kind(step)


def suggest(trial, space):
    """One trial's values, sampled through Optuna's public suggest API."""
    values = {}
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, IntDistribution):
            values[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return values


def as_file_entries(space):
    """The space in the search-space file's own format: a range or a list of choices per name."""
    entries = {}
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            entries[name] = list(dist.choices)
        else:
            entries[name] = {"low": dist.low, "high": dist.high, "log": dist.log}
            if dist.step not in (None, 1):
                entries[name]["step"] = dist.step
    return entries


def describe(space):
    """The space as JSON-ready data, for logging and for worker processes."""
    return {name: json.loads(distribution_to_json(dist)) for name, dist in space.items()}
