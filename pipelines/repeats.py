"""Seed repeats: one recipe trained with `repeats` seeds (`seed`, `seed`+1, ...) as nested
runs under one parent run, so that a result comes with its spread across reseeded trainings.

    python -m pipelines train --task mnist_cnn --repeats 3

Every child is a complete training run (nested under the parent) tested on the same test
split (`split_seed` stays put). The parent logs the mean, std, min and max of every test
metric over its children (`test_accuracy_mean`, `_std`, `_min`, `_max`), the learning
curves' mean with a band of one std, and which child is the median seed (`repeat.median_run_id`):
the run that `promote --run_id <parent>` registers, and whose version `compare` shows with
the group's mean +- std.
"""

import mlflow
import numpy as np

from experiments import InputError
from pipelines import schema, tracking
from pipelines.data import prepare_data
from pipelines.reporting import plt
from pipelines.train import train


def prepare_repeats(task, variant, params, repeats):
    """{seed: splits} of each repeat (the validation split follows the seed): bad data is
    refused here, before any experiment or run exists."""
    if repeats < 2:
        raise InputError(f"repeats: {repeats}: give 2 or more to train several seeds")
    seeds = [params["seed"] + offset for offset in range(repeats)]
    return {seed: prepare_data(task, variant, {**params, "seed": seed}) for seed in seeds}


def run_repeats(task, variant, params, prepared, system_metrics_interval):
    """Train each seed of `prepared` (`prepare_repeats`) under one parent run; return
    (parent run id, [TrainResult])."""
    name = task.qualified_name(variant)
    seeds, repeats = list(prepared), len(prepared)
    tags = {
        schema.TASK_TAG: task.name,
        schema.VARIANT_TAG: variant,
        schema.MODEL_TAG: name,
        schema.REPEAT_COUNT_TAG: str(repeats),
    }
    first, last = seeds[0], seeds[-1]
    # The parent only gathers: each child samples its own system metrics.
    with tracking.mlflow_run(f"{name}-seeds{first}-{last}", tags, system_metrics_interval=0) as parent:
        tracking.log_new_params({**params, "repeats": repeats})
        results = []
        for seed, splits in prepared.items():
            child = {**params, "seed": seed}
            seed_tag = {schema.REPEAT_SEED_TAG: str(seed)}
            result = train(
                task, variant, child, tags=seed_tag, splits=splits, system_metrics_interval=system_metrics_interval
            )
            results.append(result)
        summary = summarize([result.metrics for result in results])
        mlflow.log_metrics(summary)
        median = median_index([result.metrics for result in results], task)
        mlflow.set_tags(
            {
                schema.REPEAT_MEDIAN_RUN_TAG: results[median].run_id,
                schema.REPEAT_MEDIAN_SEED_TAG: str(seeds[median]),
                schema.DESCRIPTION_TAG: describe(name, task.primary_metric, summary, seeds, results, median),
            }
        )
        tracking.log_figure(mean_curves([result.history for result in results]), schema.LEARNING_CURVES_ARTIFACT)
    metric = task.primary_metric
    mean, std = (summary[schema.repeat_metric_name(metric, statistic)] for statistic in ("mean", "std"))
    print(
        f"repeats {parent.info.run_id} finished: {metric} {mean:.4g} ± {std:.2g} over seeds {first} to {last}; "
        f"median seed {seeds[median]}"
    )
    experiment_id = parent.info.experiment_id
    tracking.print_links(
        {
            "the repeats' run": tracking.run_url(experiment_id, parent.info.run_id),
            "compare it with the other runs": tracking.experiment_url(
                experiment_id, tracking.share_comparison_view(experiment_id, task)
            ),
        }
    )
    return parent.info.run_id, results


def summarize(children_metrics):
    """{metric_mean, _std, _min, _max} of every test metric all children logged (population std)."""
    names = set.intersection(*(set(metrics) for metrics in children_metrics))
    summary = {}
    for name in sorted(n for n in names if n.startswith(schema.TEST_METRIC_PREFIX)):
        values = np.array([metrics[name] for metrics in children_metrics], dtype="float64")
        statistics = (values.mean(), values.std(), values.min(), values.max())
        for statistic, value in zip(schema.REPEAT_STATISTICS, statistics, strict=True):
            summary[schema.repeat_metric_name(name, statistic)] = float(value)
    return summary


def median_index(children_metrics, task):
    """The child whose primary metric is the median (of an even count, the lower middle one of the worse half)."""
    metric = task.primary_metric
    order = sorted(range(len(children_metrics)), key=lambda index: children_metrics[index][metric])
    if task.kind != "regression":
        order.reverse()  # best first for every kind: index (n - 1) // 2 is the middle, or the worse of two
    return order[(len(order) - 1) // 2]


def mean_curves(histories):
    """Train and validation curves: the mean over seeds, with a band of one std."""
    metrics = [name for name in ("accuracy", "loss") if all(name in history for history in histories)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if not all(key in history for history in histories):
                continue
            epochs = min(len(history[key]) for history in histories)  # early stopping: the epochs all ran
            values = np.array([history[key][:epochs] for history in histories])
            mean, std = values.mean(axis=0), values.std(axis=0)
            steps = np.arange(1, epochs + 1)
            axis.plot(steps, mean, label=f"{label} (mean of {len(histories)} seeds)")
            axis.fill_between(steps, mean - std, mean + std, alpha=0.25)
        axis.set(title=metric, xlabel="epoch", ylabel=metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def describe(name, metric, summary, seeds, results, median):
    mean, std = (summary.get(schema.repeat_metric_name(metric, statistic)) for statistic in ("mean", "std"))
    headline = f"**{metric} {mean:.4f} ± {std:.4f}**" if mean is not None else "no test result"
    return (
        f"{name}: {headline} (mean ± std over seeds {seeds[0]} to {seeds[-1]}; min "
        f"{summary.get(f'{metric}_min', float('nan')):.4f}, max {summary.get(f'{metric}_max', float('nan')):.4f}). "
        f"The median seed is {seeds[median]}: run `{results[median].run_id}`, the one `promote` registers."
    )
