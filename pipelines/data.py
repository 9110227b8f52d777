"""The data step of the pipeline: a task's splits, subsampled and with validation held out,
and the metric watched on them. No TensorFlow: a sweep's coordinator checks the data and
picks its objective without it."""

import functools
from dataclasses import replace
from pathlib import Path

import lazy_loader as lazy
import numpy as np

sklearn = lazy.load("sklearn")  # imported when a split is held out


def monitored_metric(task, splits):
    """(metric, direction): what sweeps optimize and early stopping watches after every
    epoch: the validation metric when the task validates, else the training one."""
    metric, direction = ("loss", "minimize") if task.kind == "regression" else ("accuracy", "maximize")
    return (f"val_{metric}" if splits.x_val is not None else metric), direction


def prepare_data(task, variant, params):
    """Load the task's splits, subsample for a quick look, hold out validation data."""
    data_path = Path(params["data"]) if params.get("data") else None
    splits = task.load(data_path, params["seed"])
    splits = subsample(splits, params["max_samples"], params["seed"])
    if splits.x_val is None and params["validation_fraction"] > 0:
        splits = hold_out_validation(splits, params["validation_fraction"], params["seed"], task.kind)
    prepare_train = task.variants[variant].prepare_train
    return prepare_train(splits) if prepare_train else splits


def subsample(splits, max_samples, seed):
    if not max_samples or max_samples >= len(splits.x_train):
        return splits
    keep = np.random.default_rng(seed).permutation(len(splits.x_train))[:max_samples]
    return replace(splits, x_train=splits.x_train[keep], y_train=splits.y_train[keep])


def hold_out_validation(splits, fraction, seed, kind):
    # Stratify classes when every class has enough examples; tiny subsets fall back to random.
    split = functools.partial(sklearn.model_selection.train_test_split, test_size=fraction, random_state=seed)
    try:
        parts = split(splits.x_train, splits.y_train, stratify=splits.y_train if kind != "regression" else None)
    except ValueError:
        parts = split(splits.x_train, splits.y_train)
    x_train, x_val, y_train, y_val = parts
    return replace(splits, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
