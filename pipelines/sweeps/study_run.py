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

from pipelines import liveness, tracking
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
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)  # workers and trials must not resume it
    previous = study.user_attrs.get("mlflow_run_id")
    if run_id is None and previous and _resumable(client, previous, experiment_id):
        client.update_run(previous, status="RUNNING")
        run_id = previous
    tags = {
        "task": task.name,
        "variant": variant,
        "entry_point": task.qualified_name(variant),
        "optuna.study_name": study.study_name,
        "sweep": "study",
        **liveness.process_tags(),
    }
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=f"sweep-{study.study_name}", tags=tags).info.run_id
    else:
        for key, value in {**tags, "mlflow.runName": f"sweep-{study.study_name}"}.items():
            client.set_tag(run_id, key, value)
    if previous and previous != run_id:
        client.set_tag(run_id, "sweep.previous_run_id", previous)
    study.set_user_attr("mlflow_run_id", run_id)
    liveness.HEARTBEAT.add(run_id, mlflow.get_tracking_uri())
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
        "objective": objective,
        **{f"fixed.{name}": value for name, value in params.items() if name not in space and name != "data"},
    }
    logged = client.get_run(run_id).data.params
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in values.items() if k not in logged])
    client.log_dict(run_id, search_space.describe(space), "sweep/search_space.json")


def best_trial(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def report_progress(client, run_id, study):
    """Keep the study run's summary current: trial counts, best value and best params."""
    states = storage.state_counts(study)
    finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
    now = int(time.time() * 1000)
    counts = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
    metrics = [mlflow.entities.Metric(f"trials_{name}", states[state], now, finished) for name, state in counts.items()]
    best = best_trial(study)
    tags = []
    if best is not None:
        metrics.append(mlflow.entities.Metric("best_value", best.value, now, finished))
        best_tags = {
            "best.trial_number": best.number,
            "best.run_id": best.user_attrs.get("mlflow_run_id", ""),
            "best.model_id": best.user_attrs.get("model_id", ""),
            "best.params": json.dumps(best.params),
        }
        tags = [mlflow.entities.RunTag(key, str(value)) for key, value in best_tags.items()]
    client.log_batch(run_id, metrics=metrics, tags=tags)


def record_trial(client, spec, study, trial):
    """After a trial: its final state on its run, and the study run's summary."""
    for run in trial_runs(spec.experiment_id, spec.study_name, trial.number):
        client.set_tag(run.info.run_id, "optuna.trial_state", trial.state.name)
        if trial.state == TrialState.PRUNED:
            client.set_tag(run.info.run_id, "pruned_at_epoch", max(trial.intermediate_values) + 1)
    report_progress(client, spec.parent_run_id, study)


def finish_study_run(client, run_id, study, status):
    """The final summary, the trials table and Optuna's plots; then end the run with `status`."""
    tracking.retrying(lambda: report_progress(client, run_id, study))
    try:
        client.log_text(run_id, study.trials_dataframe().to_csv(index=False), "sweep/trials.csv")
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
            client.log_figure(run_id, figure, f"sweep/{name}.png")
            plt.close(figure)
    liveness.HEARTBEAT.remove(run_id)
    tracking.retrying(lambda: client.set_terminated(run_id, status))


def describe_trial(trial, metric):
    """`<metric> <value> (name=value, ...)`: a trial's result and parameters in one line."""
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    result = f"{metric} {trial.value:.4f}" if trial.value is not None else "no value"
    return f"{result} ({values})"


def trial_runs(experiment_id, study_name, number, status=None):
    """The MLflow runs of one trial of the study (one, or none before it started)."""
    query = f"tags.`optuna.study_name` = '{study_name}' AND tags.`optuna.trial_number` = '{number}'"
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
            client.set_tag(run.info.run_id, "optuna.trial_state", TrialState.FAIL.name)
            client.set_terminated(run.info.run_id, "FAILED")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry(study, trial)
