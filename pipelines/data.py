"""The data step of the pipeline: a task's splits, subsampled and with validation held out,
and the metric watched on them. No TensorFlow: a sweep's coordinator checks the data and
picks its objective without it."""

import functools
import math
from dataclasses import replace
from pathlib import Path

import lazy_loader as lazy
import numpy as np

from experiments import InputError

sklearn = lazy.load("sklearn")  # imported when a split is held out


def monitored_metric(task, splits):
    """(metric, direction): what sweeps optimize and early stopping watches after every
    epoch: the validation metric when the task validates, else the training one."""
    metric, direction = ("loss", "minimize") if task.kind == "regression" else ("accuracy", "maximize")
    return (f"val_{metric}" if splits.x_val is not None else metric), direction


def prepare_data(task, variant, params):
    """Load the task's splits, subsample for a quick look, hold out validation data;
    refuse splits that cannot train or test a model."""
    data_path = Path(params["data"]) if params.get("data") else None
    splits = task.load(data_path, params["split_seed"])  # the test split: fixed across seeds
    check_loaded(splits)
    splits = subsample(splits, params["max_samples"], params["seed"])
    if splits.x_val is None and params["validation_fraction"] > 0:
        splits = hold_out_validation(splits, params["validation_fraction"], params["seed"], task.kind)
    check_training_split(splits, task.kind, params)
    prepare_train = task.variants[variant].prepare_train
    return prepare_train(splits) if prepare_train else splits


def check_loaded(splits):
    """Refuse empty splits and non-finite features, naming the data they came from."""
    source = f"{splits.source}: " if splits.source else "data: "
    for part, features in (("training", splits.x_train), ("test", splits.x_test), ("validation", splits.x_val)):
        if features is None:
            continue
        if not len(features):
            raise InputError(f"{source}the {part} split is empty")
        if np.issubdtype(features.dtype, np.floating) and not np.isfinite(features).all():
            raise InputError(f"{source}the {part} split holds NaN or infinite values")


def check_training_split(splits, kind, params):
    """A classifier's training examples, once `max_samples` and `validation_fraction` took
    their share, must hold two classes at least."""
    if kind == "regression" or len(np.unique(splits.y_train)) >= 2:
        return
    source = splits.source or "the data"
    cut = "max_samples, validation_fraction: " if params["max_samples"] else ""
    raise InputError(f"{cut}the training examples of {source} hold a single class; a classifier needs two at least")


def subsample(splits, max_samples, seed):
    if not max_samples or max_samples >= len(splits.x_train):
        return splits
    keep = np.random.default_rng(seed).permutation(len(splits.x_train))[:max_samples]
    return replace(splits, x_train=splits.x_train[keep], y_train=splits.y_train[keep])


def hold_out_validation(splits, fraction, seed, kind):
    count = len(splits.x_train)
    held_out = math.ceil(fraction * count)  # as scikit-learn rounds a fraction
    if held_out >= count:
        raise InputError(
            f"max_samples, validation_fraction: holding out {fraction:g} of {count} training example(s) "
            "leaves none to train on; keep more, or hold out less"
        )
    # Stratify classes when every class has enough examples; tiny subsets fall back to random.
    split = functools.partial(sklearn.model_selection.train_test_split, test_size=fraction, random_state=seed)
    try:
        parts = split(splits.x_train, splits.y_train, stratify=splits.y_train if kind != "regression" else None)
    except ValueError:
        parts = split(splits.x_train, splits.y_train)
    x_train, x_val, y_train, y_val = parts
    return replace(splits, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
