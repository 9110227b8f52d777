"""A sweep worker: takes trials of the study, one at a time, until it holds n_trials finished ones."""

import json
import time
import warnings

import keras
import mlflow
import optuna
from optuna.distributions import json_to_distribution
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from experiments import RunFailed, resolve
from pipelines import checkpoints, schema, stopping, tracking
from pipelines.data import monitored_metric, prepare_data
from pipelines.sweeps import search_space, storage, study_run
from pipelines.sweeps.callbacks import TrialPruning
from pipelines.sweeps.samplers import pruner_for, sampler_for
from pipelines.sweeps.study_run import FailStaleTrial
from pipelines.train import TrainingDiverged, train

POLL_SECONDS = 1.0
MAX_FAILURES_IN_A_ROW = 5  # a worker whose trials all fail has a problem to report, not trials to burn
STUDY_DONE = object()  # next_trial's answer once n_trials trials have finished


def run_worker(spec, splits=None):
    """Take trials until the study holds spec.n_trials finished ones, the deadline passes, or
    this process has run spec.trials_per_process trials (then the coordinator starts a fresh one).

    `splits` are the prepared data when the coordinator runs this worker in its own process.
    """
    task, variant = resolve(spec.entry_point)
    if splits is None:
        splits = prepare_data(task, variant, spec.params)
    metric, _ = monitored_metric(task, splits)
    if keras.backend.backend() == "tensorflow":  # every trial's new model "retraces": expected, not news
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
    space = {name: json_to_distribution(json.dumps(dist)) for name, dist in spec.space.items()}
    on_stale = FailStaleTrial(spec.experiment_id, spec.study_name)
    study_storage = storage.open_storage(spec.storage, spec.heartbeat_interval, on_stale)
    study = optuna.load_study(
        study_name=spec.study_name, storage=study_storage, sampler=sampler_for(spec), pruner=pruner_for(spec)
    )
    client = mlflow.MlflowClient()

    def retried_trial_checkpoint(trial):
        """A retry of a trial whose worker died goes on from that trial's last checkpoint, if any."""
        trials = study.get_trials(deepcopy=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # stable since Optuna 2.8
            failed = RetryFailedTrialCallback.retried_trial_number(trials[trial.number])
        earlier_runs = study_run.trial_runs(spec.experiment_id, spec.study_name, failed) if failed is not None else []
        return checkpoints.latest(earlier_runs[0].info.run_id) if earlier_runs else None

    def objective(trial):
        suggested = search_space.suggest(trial, space)
        params = {**spec.params, **suggested}
        checkpoint = retried_trial_checkpoint(trial)
        # The values the dead trial reported, as its checkpoint holds them: it may have
        # died after writing the checkpoint and before reporting the epoch.
        earlier_values = dict(enumerate(checkpoint.state["history"].get(metric, []))) if checkpoint else {}
        result = train(
            task,
            variant,
            params,
            callbacks=[TrialPruning(trial, metric, earlier_values)],
            tags=schema.trial_tags(spec.study_name, trial.number),
            run_name=tracking.run_name("", suggested, {}, prefix=f"{spec.study_name}-trial-{trial.number}"),
            parent_run_id=spec.parent_run_id,
            splits=splits,
            system_metrics_interval=spec.system_metrics_interval,
            start_from=checkpoint,
        )
        trial.set_user_attr(schema.TRIAL_RUN_ATTR, result.run_id)
        trial.set_user_attr(schema.TRIAL_MODEL_ATTR, result.model_id)
        trial.set_user_attr(task.primary_metric, result.metrics[task.primary_metric])
        return result.history[metric][-1]

    failures, trials_run = [], 0
    while spec.deadline is None or time.time() < spec.deadline:
        stopping.raise_if_stopped()
        if spec.trials_per_process and trials_run >= spec.trials_per_process:
            return  # TensorFlow keeps memory for every traced model: a fresh process starts anew
        trial = next_trial(study, spec, on_stale)
        if trial is STUDY_DONE:
            return
        if trial is None:  # the last trials run on other workers; retry any whose worker dies
            time.sleep(POLL_SECONDS)
            stopping.raise_if_stopped()
            continue
        keras.backend.clear_session()  # each trial's model starts from a clean graph, as optuna-examples do
        finished = run_trial(study, trial, objective, study_storage)
        trials_run += 1
        study_run.record_trial(client, spec, study, finished)
        print(
            f"trial {finished.number} {finished.state.name.lower()}: {study_run.describe_trial(finished, metric)}",
            flush=True,
        )
        failures = [*failures, finished.number] if finished.state == TrialState.FAIL else []
        if len(failures) >= MAX_FAILURES_IN_A_ROW:
            raise RunFailed(
                f"trials {', '.join(map(str, failures))} failed in a row; "
                "their runs' logs say why (check the search space and learning rate)"
            )


def next_trial(study, spec, on_stale):
    """A new trial of the study if it has a free slot, None if not, STUDY_DONE once it is finished.

    Failing dead workers' trials, counting, and creating the trial happen under one lock,
    so that all workers together start exactly spec.n_trials trials.
    """
    with storage.study_lock(spec.storage, "slots", spec.study_name):
        storage.fail_stale_trials(study, spec.storage, on_stale)
        finished, running = storage.trial_counts(study)
        if finished >= spec.n_trials:
            return STUDY_DONE
        if finished + running >= spec.n_trials:
            return None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")  # storage.heartbeat covers it
            trial = study.ask()  # a queued retry first, else a new trial
        trial.set_user_attr(schema.TRIAL_WORKER_ATTR, storage.worker_id())  # how a dead worker's trial is found
    return trial


def run_trial(study, trial, objective, study_storage):
    """Run the objective on `trial` and tell the study how it ended; return the finished trial.

    A pruned trial ends PRUNED and a diverged one FAIL, and the worker goes on; anything
    else (Ctrl-C included) fails the trial and stops the worker.
    """
    state, value = TrialState.COMPLETE, None

    def fail(cause):  # a stop forced by the watchdog fails the trial, as a stop raised here does
        study.tell(trial, state=TrialState.FAIL)

    with storage.heartbeat(trial, study_storage), stopping.on_forced_stop(fail):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except TrainingDiverged:
            state = TrialState.FAIL
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
    return study.tell(trial, value, state=state)
