"""The study's MLflow parent run (opened or resumed, kept current after every trial, finished with plots)
and the runs of its trials, those of dead workers included."""

import json
import os
import time
import warnings

import matplotlib.pyplot as plt
import mlflow
import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from experiments import resolve
from pipelines import liveness, schema, stopping, tracking
from pipelines.sweeps import search_space, storage

MAX_RETRIES = 2  # a trial whose worker died is run again at most this often
PLOTS = {
    "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
    "param_importances": optuna.visualization.matplotlib.plot_param_importances,
    "parallel_coordinate": optuna.visualization.matplotlib.plot_parallel_coordinate,
    "intermediate_values": optuna.visualization.matplotlib.plot_intermediate_values,
    "timeline": optuna.visualization.matplotlib.plot_timeline,
}


def open_study_run(client, study, experiment_id, task, variant):
    """The study's run: the one `mlflow run` created, else the study's earlier run (resumed),
    else a new one. Trials of this session nest under it; this process beats its heartbeat."""
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)  # `mlflow run`'s, in the study's experiment; no trial resumes it
    previous = study.user_attrs.get(schema.STUDY_RUN_ATTR)
    if run_id is None and previous and _resumable(client, previous, experiment_id):
        client.update_run(previous, status="RUNNING")
        run_id = previous
    tags = {
        schema.TASK_TAG: task.name,
        schema.VARIANT_TAG: variant,
        schema.ENTRY_POINT_TAG: task.qualified_name(variant),
        schema.STUDY_TAG: study.study_name,
        schema.SWEEP_ROLE_TAG: schema.STUDY_ROLE,
        **liveness.process_tags(),
    }
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=f"sweep-{study.study_name}", tags=tags).info.run_id
    else:
        for key, value in {**tags, schema.RUN_NAME_TAG: f"sweep-{study.study_name}"}.items():
            client.set_tag(run_id, key, value)
    if previous and previous != run_id:
        client.set_tag(run_id, schema.PREVIOUS_STUDY_RUN_TAG, previous)
    study.set_user_attr(schema.STUDY_RUN_ATTR, run_id)
    liveness.HEARTBEAT.add(run_id, mlflow.get_tracking_uri())
    stopping.run_started()
    tracking.point_launch_to(run_id, experiment_id)
    return run_id


def _resumable(client, run_id, experiment_id):
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active"


def log_settings(client, run_id, settings, study_name, objective, space, params):
    """Log the sweep's settings once (a resumed study keeps its first values); never a password."""
    values = {
        **{name: settings[name] for name in ("n_trials", "sampler", "pruner", "workers", "timeout")},
        "study_name": study_name,
        "storage": storage.describe(settings["storage"]),
        schema.OBJECTIVE_PARAM: objective,
        **{
            schema.FIXED_PARAM_PREFIX + name: value
            for name, value in params.items()
            if name not in space and name != "data"
        },
    }
    logged = client.get_run(run_id).data.params
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in values.items() if k not in logged])
    client.log_dict(run_id, search_space.describe(space), schema.SEARCH_SPACE_ARTIFACT)


def best_trial(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def report_progress(client, run_id, study):
    """Keep the study run's summary current: trial counts, the best trial's objective and test
    metric under their own names (`best_trial_val_accuracy`, `best_trial_test_accuracy`; `best_value`
    too), its params, and the run's description, which links the best trial's run."""
    states = storage.state_counts(study)
    finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
    now = int(time.time() * 1000)
    counts = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
    metrics = [
        mlflow.entities.Metric(schema.TRIAL_COUNT_METRIC_PREFIX + name, states[state], now, finished)
        for name, state in counts.items()
    ]
    parent = client.get_run(run_id)
    objective = objective_of(parent)
    entry_point = study.user_attrs.get(schema.STUDY_ENTRY_POINT_ATTR)
    test_metric = resolve(entry_point)[0].primary_metric if entry_point else ""
    best = best_trial(study)
    tags = []
    if best is not None:
        metrics.append(mlflow.entities.Metric(schema.BEST_VALUE_METRIC, best.value, now, finished))
        metrics.append(mlflow.entities.Metric(schema.BEST_TRIAL_METRIC_PREFIX + objective, best.value, now, finished))
        if test_metric in best.user_attrs:
            value = best.user_attrs[test_metric]
            metrics.append(mlflow.entities.Metric(schema.BEST_TRIAL_METRIC_PREFIX + test_metric, value, now, finished))
        best_tags = {
            schema.BEST_TRIAL_TAGS["trial_number"]: best.number,
            schema.BEST_TRIAL_TAGS["run_id"]: best.user_attrs.get(schema.TRIAL_RUN_ATTR, ""),
            schema.BEST_TRIAL_TAGS["model_id"]: best.user_attrs.get(schema.TRIAL_MODEL_ATTR, ""),
            schema.BEST_TRIAL_TAGS["params"]: json.dumps(best.params),
        }
        tags = [mlflow.entities.RunTag(key, str(value)) for key, value in best_tags.items()]
    description = describe_study(study, states, parent, objective, test_metric, best)
    tags.append(mlflow.entities.RunTag(schema.DESCRIPTION_TAG, description))
    client.log_batch(run_id, metrics=metrics, tags=tags)


def describe_study(study, states, parent, objective, test_metric, best):
    """The study run's description (Markdown): the best trial, linked, and the trial counts."""
    finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
    planned = parent.data.params.get("n_trials", "?")
    counts = (
        f"{finished} of {planned} trials finished ({states[TrialState.COMPLETE]} complete, "
        f"{states[TrialState.PRUNED]} pruned, {states[TrialState.FAIL]} failed)"
    )
    text = (
        f"Optuna study **{study.study_name}** of {study.user_attrs.get(schema.STUDY_ENTRY_POINT_ATTR, '?')}: {counts}."
    )
    if best is None:
        return text + " No trial has completed yet."
    run_id = best.user_attrs.get(schema.TRIAL_RUN_ATTR, "")
    trial = f"trial {best.number}"
    if run_id:
        trial = tracking.run_link(parent.info.experiment_id, run_id, f"trial {best.number} ({run_id})")
    result = f"{objective} {best.value:.4f}"
    if test_metric in best.user_attrs:
        result += f", {test_metric} {best.user_attrs[test_metric]:.4f}"
    return (
        f"{text} Best: **{trial}**, {result}, with {param_values(best.params)}. Optuna's plots and "
        f"`{schema.TRIALS_TABLE_ARTIFACT.rpartition('/')[2]}` (every trial with its run id) are under "
        f"`{schema.SWEEP_FOLDER}/` in the artifacts."
    )


def record_trial(client, spec, study, trial):
    """After a trial: its final state on its run, a name that says what it tried, and the study
    run's summary. A pruned trial's run says when it was pruned: `pruned_at_epoch` counts epochs
    from 1, as `best_epoch` does; Optuna's steps (and its own messages) count them from 0."""
    for run in trial_runs(spec.experiment_id, spec.study_name, trial.number):
        name = tracking.run_name("", trial.params, {}, prefix=f"{spec.study_name}-trial-{trial.number}")
        tags = {schema.TRIAL_STATE_TAG: trial.state.name, schema.RUN_NAME_TAG: name}
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            step = max(trial.intermediate_values)
            tags[schema.PRUNED_AT_EPOCH_TAG] = step + 1
            metric, epochs = objective_of(client.get_run(spec.parent_run_id)), run.data.params.get("epochs", "?")
            tags[schema.DESCRIPTION_TAG] = (
                f"Trial {trial.number} of study {spec.study_name}, pruned after epoch {step + 1} of {epochs} "
                f"(Optuna's step {step}): its {metric} {trial.intermediate_values[step]:.4f} trailed the other "
                f"trials'. With {param_values(trial.params)}."
            )
        client.log_batch(run.info.run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()])
    report_progress(client, spec.parent_run_id, study)


def objective_of(study_run):
    """The metric the study optimizes (and its pruner watches), as its run's objective param
    ("maximize val_accuracy") names it."""
    return (study_run.data.params.get(schema.OBJECTIVE_PARAM, "").split()[-1:] or ["value"])[0]


def finish_study_run(client, run_id, study, status):
    """The final summary, the trials table and Optuna's plots; then end the run with `status`."""
    tracking.retrying(lambda: report_progress(client, run_id, study))
    try:
        client.log_text(run_id, trials_table(client, run_id, study).to_csv(index=False), schema.TRIALS_TABLE_ARTIFACT)
    except Exception:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's notes on small studies; a plot it cannot draw is skipped
        for name, plot in PLOTS.items():
            try:
                axes = plot(study)
            except Exception:
                continue
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            # Saved to the bounds of what is drawn: the default frame cuts long parameter names
            # ("rning_rate") and the parallel coordinates' axis labels.
            path = f"{schema.SWEEP_FOLDER}/{name}.png"
            client.log_figure(run_id, figure, path, save_kwargs={"bbox_inches": "tight", "dpi": 120})
            plt.close(figure)
    liveness.HEARTBEAT.remove(run_id)
    tracking.retrying(lambda: client.set_terminated(run_id, status))


def trials_table(client, run_id, study):
    """Optuna's table of the trials with each one's MLflow run id (`user_attrs_<TRIAL_RUN_ATTR>`),
    pruned and failed trials included: those never return to record it."""
    table = study.trials_dataframe()
    experiment_id = client.get_run(run_id).info.experiment_id
    query = schema.trials_filter(study.study_name)
    found = {}
    for run in client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time ASC"]):
        found[schema.trial_number(run.data.tags)] = run.info.run_id  # the latest run of each trial
    column = f"user_attrs_{schema.TRIAL_RUN_ATTR}"
    recorded = table[column] if column in table else None
    table[column] = table["number"].map(found)
    if recorded is not None:
        table[column] = recorded.where(recorded.notna(), table[column])
    return table


def param_values(params):
    """`name=value, ...`, floats to 4 significant digits."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def describe_trial(trial, metric):
    """`<metric> <value> (name=value, ...)`: a trial's result and parameters in one line."""
    result = f"{metric} {trial.value:.4f}" if trial.value is not None else "no value"
    return f"{result} ({param_values(trial.params)})"


def trial_runs(experiment_id, study_name, number, status=None):
    """The MLflow runs of one trial of the study (one, or none before it started)."""
    query = schema.trials_filter(study_name, number)
    if status:
        query += f" AND attributes.status = '{status}'"
    return mlflow.MlflowClient().search_runs([experiment_id], filter_string=query)


class FailStaleTrial:
    """A dead worker's trial: end its MLflow run FAILED, then queue the trial to run again."""

    def __init__(self, experiment_id, study_name):
        self.experiment_id = experiment_id
        self.study_name = study_name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)

    def __call__(self, study, trial):
        client = mlflow.MlflowClient()
        for run in trial_runs(self.experiment_id, self.study_name, trial.number, status="RUNNING"):
            client.set_tag(run.info.run_id, schema.TRIAL_STATE_TAG, TrialState.FAIL.name)
            client.set_terminated(run.info.run_id, "FAILED")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry(study, trial)
