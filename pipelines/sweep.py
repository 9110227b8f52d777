"""Optuna sweeps over the one training pipeline.

    python -m pipelines sweep --task mnist_cnn --n_trials 30 --workers 2

The study is an MLflow parent run. Every trial is a nested run trained by
`pipelines.train.train`, with optuna-integration's Keras pruning callback reporting the
validation metric after each epoch. Workers are processes sharing the study's storage
(see `pipelines.studies`). Re-running the same command resumes the study, which stops
at exactly n_trials finished (complete plus pruned) trials.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace

import keras
import matplotlib.pyplot as plt
import mlflow
import optuna
from optuna.distributions import json_to_distribution
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState
from optuna_integration import KerasPruningCallback

from experiments import InputError, resolve
from pipelines import search_space as spaces
from pipelines import studies, tracking
from pipelines.params import NAME_RULE, Param, is_name
from pipelines.train import TrainingDiverged, prepare_data, train

SAMPLERS = ("tpe", "random", "qmc")
PRUNERS = ("median", "hyperband", "none")
SWEEP_PARAMS = {
    "n_trials": Param(int, lambda v: v >= 1, "an integer >= 1", "finished (complete plus pruned) trials the study stops at"),
    "timeout": Param(float, lambda v: v >= 0, "a number of seconds >= 0", "start no trial after this many seconds; 0: no limit"),
    "study_name": Param(
        str, is_name, NAME_RULE, "the Optuna study; the same name resumes it (default: the entry point's name)"
    ),
    "storage": Param(str, lambda v: True, "a path or URL", "journal file path, sqlite:///file.db or postgresql://user@host/db"),
    "sampler": Param(str, lambda v: v in SAMPLERS, f"one of {', '.join(SAMPLERS)}", f"Optuna's sampler: {', '.join(SAMPLERS)}"),
    "pruner": Param(str, lambda v: v in PRUNERS, f"one of {', '.join(PRUNERS)}", f"Optuna's pruner: {', '.join(PRUNERS)}"),
    "workers": Param(int, lambda v: v >= 1, "an integer >= 1", "worker processes on this machine"),
    "search_space": Param(str, lambda v: True, "a path", "YAML/JSON file (or inline JSON) narrowing the task's space"),
    "pruner_startup_trials": Param(int, lambda v: v >= 0, "an integer >= 0", "trials run in full before median pruning starts"),
    "pruner_warmup_epochs": Param(int, lambda v: v >= 0, "an integer >= 0", "epochs a trial runs before median pruning may stop it"),
    "heartbeat_interval": Param(int, lambda v: v >= 1, "an integer >= 1", "seconds between heartbeats on RDB storages"),
}
SWEEP_DEFAULTS = {
    "n_trials": 20,
    "timeout": 0.0,
    "study_name": "",
    "storage": "",
    "sampler": "tpe",
    "pruner": "median",
    "workers": 1,
    "search_space": "",
    "pruner_startup_trials": 2,
    "pruner_warmup_epochs": 0,
    "heartbeat_interval": 10,
}
# In MLproject the sweep passes these training parameters too; 0 epochs means the variant's default.
SWEEP_TRAINING_DEFAULTS = {"epochs": 0, "seed": 42, "max_samples": 0}

WORKER_SPEC_ENV = "PIPELINES_SWEEP_WORKER"
POLL_SECONDS = 1.0
MAX_RETRIES = 2  # a trial whose worker died is run again at most this often
MAX_FAILURES_IN_A_ROW = 5  # a worker whose trials all fail has a problem to report, not trials to burn
PLOTS = {
    "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
    "param_importances": optuna.visualization.matplotlib.plot_param_importances,
    "parallel_coordinate": optuna.visualization.matplotlib.plot_parallel_coordinate,
    "intermediate_values": optuna.visualization.matplotlib.plot_intermediate_values,
    "timeline": optuna.visualization.matplotlib.plot_timeline,
}


@dataclass(frozen=True)
class SweepSpec:
    """What a worker needs to take trials of the study (passed to worker processes as JSON)."""

    entry_point: str
    params: dict  # every trial's fixed parameters
    space: dict  # name -> Optuna distribution, as JSON
    study_name: str
    storage: str
    n_trials: int
    deadline: float | None  # wall-clock time after which no trial starts
    sampler: str
    pruner: str
    pruner_startup_trials: int
    pruner_warmup_epochs: int
    heartbeat_interval: int
    experiment_id: str
    parent_run_id: str
    session: int = 0  # how many sweep commands opened the study before this one
    worker_index: int = 0


def objective_of(task, splits):
    """(metric, direction): the validation metric when the task validates, else the training one."""
    metric, direction = ("loss", "minimize") if task.kind == "regression" else ("accuracy", "maximize")
    return (f"val_{metric}" if splits.x_val is not None else metric), direction


# --- the coordinator: one per `sweep` command ---------------------------------------------


def run_sweep(task, variant, settings, params, fixed_by_user, experiment):
    """Run (or resume) a sweep to n_trials finished trials; return the process exit code."""
    entry_point = task.qualified_name(variant)
    overrides = spaces.read_overrides(settings["search_space"]) if settings["search_space"] else None
    space, params = spaces.search_space(task.variants[variant].search_space, params, overrides, fixed_by_user)
    studies.check(settings["storage"], settings["workers"])
    splits = prepare_data(task, variant, params)  # bad data fails here, before a study or run exists
    metric, direction = objective_of(task, splits)
    study_name = settings["study_name"] or entry_point

    if os.environ.get("MLFLOW_RUN_ID") and studies.has_password(settings["storage"]):
        print(
            "warning: mlflow run logged -P storage as given, password included; "
            "pass the password in PGPASSWORD (or ~/.pgpass) instead",
            file=sys.stderr,
        )
    experiment_id = tracking.use_experiment(experiment, task.name)
    client = mlflow.MlflowClient()
    on_stale = FailStaleTrial(experiment_id, study_name)
    # Workers started at once (compose --scale, a cluster job) would race to create the tables and the run.
    setup = studies.StudyLock(settings["storage"], "", "setup")
    try:
        with setup:
            storage = studies.open_storage(settings["storage"], settings["heartbeat_interval"], on_stale)
            study = _create_or_resume(storage, study_name, direction, entry_point)
            parent_run_id = _open_study_run(client, study, experiment_id, task, variant)
            session = study.user_attrs.get("sessions", 0)
            study.set_user_attr("sessions", session + 1)
    finally:
        setup.close()
    _log_settings(client, parent_run_id, settings, study_name, metric, direction, space, params)
    finished, _ = studies.trial_counts(study)
    print(
        f"sweep {study_name}: {finished} of {settings['n_trials']} trials finished so far; "
        f"storage {studies.describe(settings['storage'])}; MLflow run {parent_run_id}\n"
        f"watch it: mlflow ui, or optuna-dashboard {studies.describe(settings['storage'])}",
        flush=True,
    )
    spec = SweepSpec(
        entry_point=entry_point,
        params=params,
        space=spaces.describe(space),
        study_name=study_name,
        storage=settings["storage"],
        n_trials=settings["n_trials"],
        deadline=time.time() + settings["timeout"] if settings["timeout"] else None,
        sampler=settings["sampler"],
        pruner=settings["pruner"],
        pruner_startup_trials=settings["pruner_startup_trials"],
        pruner_warmup_epochs=settings["pruner_warmup_epochs"],
        heartbeat_interval=settings["heartbeat_interval"],
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        session=session,
    )
    status, problems = "FAILED", []
    try:
        if settings["workers"] == 1:
            run_worker(spec, splits)
        else:
            del splits  # each worker process loads its own
            problems = _run_worker_processes(spec, settings["workers"])
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _fail_stale_trials(study, spec.storage, on_stale)  # trials of workers that died
        finished, _ = studies.trial_counts(study)
        if status == "FINISHED" and problems and finished < spec.n_trials:
            status = "FAILED"
        _finish_study_run(client, parent_run_id, study, status)
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        _print_summary(study, spec, task, metric)
    return 0 if status == "FINISHED" else 1


def _fail_stale_trials(study, storage, on_stale):
    slots = studies.StudyLock(storage, study.study_name, "slots")
    try:
        with slots:
            studies.fail_stale_trials(study, storage, on_stale)
    finally:
        slots.close()


def _create_or_resume(storage, study_name, direction, entry_point):
    study = optuna.create_study(study_name=study_name, storage=storage, direction=direction, load_if_exists=True)
    owner = study.user_attrs.get("entry_point")
    if owner is None:
        study.set_user_attr("entry_point", entry_point)
    elif owner != entry_point:
        raise InputError(f"study_name: study '{study_name}' sweeps {owner}, not {entry_point}; choose another name")
    if study.direction.name.lower() != direction:
        raise InputError(f"study_name: study '{study_name}' was created to {study.direction.name.lower()}")
    return study


def _open_study_run(client, study, experiment_id, task, variant):
    """The study's MLflow run: the one `mlflow run` created, else the study's earlier run
    (resumed), else a new one. Trials of this session nest under it."""
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
    }
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=f"sweep-{study.study_name}", tags=tags).info.run_id
    else:
        for key, value in {**tags, "mlflow.runName": f"sweep-{study.study_name}"}.items():
            client.set_tag(run_id, key, value)
    if previous and previous != run_id:
        client.set_tag(run_id, "sweep.previous_run_id", previous)
    study.set_user_attr("mlflow_run_id", run_id)
    return run_id


def _resumable(client, run_id, experiment_id):
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active"


def _log_settings(client, run_id, settings, study_name, metric, direction, space, params):
    """Log the sweep's settings once (a resumed study keeps its first values); never a password."""
    values = {
        **{name: settings[name] for name in ("n_trials", "sampler", "pruner", "workers", "timeout")},
        "study_name": study_name,
        "storage": studies.describe(settings["storage"]),
        "objective": f"{direction} {metric}",
        **{f"fixed.{name}": value for name, value in params.items() if name not in space and name != "data"},
    }
    logged = client.get_run(run_id).data.params
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in values.items() if k not in logged])
    client.log_dict(run_id, spaces.describe(space), "sweep/search_space.json")


def _run_worker_processes(spec, count):
    """Start `count` worker processes and wait for them; return what went wrong, if anything."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        "MLFLOW_EXPERIMENT_ID": spec.experiment_id,
        # Share the cores instead of each worker using them all.
        "TF_NUM_INTRAOP_THREADS": str(max(1, (os.cpu_count() or 1) // count)),
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // count)),
    }
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    workers = []
    for index in range(count):
        env[WORKER_SPEC_ENV] = json.dumps(asdict(replace(spec, worker_index=index)))
        workers.append(subprocess.Popen([sys.executable, "-m", "pipelines", "sweep-worker"], env=env))
    try:
        while [worker.poll() for worker in workers].count(None):  # poll() each one: it reaps the dead
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait()
        raise
    problems = []
    for index, worker in enumerate(workers):
        if worker.returncode < 0:
            problems.append(f"worker {index} (pid {worker.pid}) was killed by {signal.Signals(-worker.returncode).name}")
        elif worker.returncode:
            problems.append(f"worker {index} (pid {worker.pid}) stopped with exit code {worker.returncode}")
    return problems


def _finish_study_run(client, run_id, study, status):
    _report_progress(client, run_id, study)
    try:
        client.log_text(run_id, study.trials_dataframe().to_csv(index=False), "sweep/trials.csv")
    except Exception:  # noqa: BLE001 - a study with no trials has no table
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's notes on small studies; a plot it cannot draw is skipped
        for name, plot in PLOTS.items():
            try:
                axes = plot(study)
            except Exception:  # noqa: BLE001 - e.g. importances need two complete trials
                continue
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            client.log_figure(run_id, figure, f"sweep/{name}.png")
            plt.close(figure)
    client.set_terminated(run_id, status)


def _print_summary(study, spec, task, metric):
    states = studies.state_counts(study)
    finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
    print(
        f"study {spec.study_name}: {finished} of {spec.n_trials} trials finished "
        f"({states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
        f"{states[TrialState.FAIL]} failed)"
    )
    best = _best_trial(study)
    if best is None:
        return
    values = ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}" for name, value in best.params.items())
    print(f"best trial {best.number}: {metric} {best.value:.4f} ({values})")
    run_id = best.user_attrs.get("mlflow_run_id")
    print(f"its MLflow run: {run_id}; {task.primary_metric} {best.user_attrs.get(task.primary_metric, float('nan')):.4f}")
    print(
        "promote it to the model registry (champion if it beats the current one):\n"
        f"  mlflow run . -e promote --env-manager local -P task={spec.entry_point} -P run_id={run_id}"
    )


def _best_trial(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def _report_progress(client, run_id, study):
    """Keep the study run's summary current: trial counts, best value and best params."""
    states = studies.state_counts(study)
    finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
    counts = {
        f"trials_{name}": states[state]
        for name, state in (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED), ("failed", TrialState.FAIL))
    }
    metrics = [mlflow.entities.Metric(name, value, int(time.time() * 1000), finished) for name, value in counts.items()]
    best = _best_trial(study)
    tags = []
    if best is not None:
        metrics.append(mlflow.entities.Metric("best_value", best.value, int(time.time() * 1000), finished))
        best_tags = {
            "best.trial_number": best.number,
            "best.run_id": best.user_attrs.get("mlflow_run_id", ""),
            "best.model_id": best.user_attrs.get("model_id", ""),
            "best.params": json.dumps(best.params),
        }
        tags = [mlflow.entities.RunTag(key, str(value)) for key, value in best_tags.items()]
    client.log_batch(run_id, metrics=metrics, tags=tags)


# --- a worker: takes trials until the study is done ----------------------------------------


class TrialPruning(KerasPruningCallback):
    """optuna-integration's callback: reports the metric after each epoch, and prunes.

    A non-finite loss is not reported, so the trial fails on TerminateOnNaN instead of
    being pruned for it (Optuna's median pruner prunes NaN values). After the last epoch
    there is nothing left to save: the trial completes instead of being pruned.
    """

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite((logs or {}).get("loss", math.nan)):
            return
        if epoch + 1 >= self.params["epochs"] and self._monitor in logs:
            self._trial.report(float(logs[self._monitor]), step=epoch)
            return
        try:
            super().on_epoch_end(epoch, logs)
        except optuna.TrialPruned:
            # Autolog's callback runs after this one: log the last epoch before stopping.
            mlflow.log_metrics(logs, step=epoch)
            raise


class FailStaleTrial:
    """A dead worker's trial: end its MLflow run FAILED, then queue the trial to run again."""

    def __init__(self, experiment_id, study_name):
        self.experiment_id = experiment_id
        self.study_name = study_name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)

    def __call__(self, study, trial):
        for run in _trial_runs(self.experiment_id, self.study_name, trial.number, status="RUNNING"):
            client = mlflow.MlflowClient()
            client.set_tag(run.info.run_id, "optuna.trial_state", TrialState.FAIL.name)
            client.set_terminated(run.info.run_id, "FAILED")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry(study, trial)


def _trial_runs(experiment_id, study_name, number, status=None):
    query = f"tags.`optuna.study_name` = '{study_name}' AND tags.`optuna.trial_number` = '{number}'"
    if status:
        query += f" AND attributes.status = '{status}'"
    return mlflow.MlflowClient().search_runs([experiment_id], filter_string=query)


def load_worker_spec():
    return SweepSpec(**json.loads(os.environ[WORKER_SPEC_ENV]))


def run_worker(spec, splits=None):
    """Take trials until the study holds spec.n_trials finished ones (or the deadline passes)."""
    task, variant = resolve(spec.entry_point)
    if splits is None:
        splits = prepare_data(task, variant, spec.params)
    metric, _ = objective_of(task, splits)
    if keras.backend.backend() == "tensorflow":  # every trial's new model "retraces": expected, not news
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
    space = {name: json_to_distribution(json.dumps(dist)) for name, dist in spec.space.items()}
    on_stale = FailStaleTrial(spec.experiment_id, spec.study_name)
    study = optuna.load_study(
        study_name=spec.study_name,
        storage=studies.open_storage(spec.storage, spec.heartbeat_interval, on_stale),
        sampler=_sampler(spec),
        pruner=_pruner(spec),
    )
    slots = studies.StudyLock(spec.storage, spec.study_name, "slots")
    client = mlflow.MlflowClient()
    failures = []

    def objective(trial):
        trial.set_user_attr("worker", studies.worker_id())
        slots.release()  # the trial exists: other workers may now count it
        params = {**spec.params, **spaces.suggest(trial, space)}
        result = train(
            task,
            variant,
            params,
            callbacks=[TrialPruning(trial, metric)],
            tags={"optuna.study_name": spec.study_name, "optuna.trial_number": str(trial.number), "sweep": "trial"},
            run_name=f"{spec.study_name}-trial-{trial.number}",
            parent_run_id=spec.parent_run_id,
            splits=splits,
        )
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("model_id", result.model_id)
        trial.set_user_attr(task.primary_metric, result.metrics[task.primary_metric])
        return result.history[metric][-1]

    def record(study, trial):
        """After each trial: its final state on its run, and the study run's summary."""
        for run in _trial_runs(spec.experiment_id, spec.study_name, trial.number):
            client.set_tag(run.info.run_id, "optuna.trial_state", trial.state.name)
            if trial.state == TrialState.PRUNED:
                client.set_tag(run.info.run_id, "pruned_at_epoch", max(trial.intermediate_values) + 1)
        _report_progress(client, spec.parent_run_id, study)
        if trial.state == TrialState.FAIL:
            failures.append(trial.number)
        else:
            failures.clear()

    try:
        while spec.deadline is None or time.time() < spec.deadline:
            with slots:
                studies.fail_stale_trials(study, spec.storage, on_stale)
                finished, running = studies.trial_counts(study)
                if finished >= spec.n_trials:
                    return
                if finished + running < spec.n_trials:
                    study.optimize(objective, n_trials=1, catch=(TrainingDiverged,), callbacks=[record])
                    if len(failures) >= MAX_FAILURES_IN_A_ROW:
                        raise InputError(
                            f"trials {', '.join(map(str, failures))} failed in a row; "
                            "their runs' logs say why (check the search space and learning rate)"
                        )
                    continue
            time.sleep(POLL_SECONDS)  # the last trials run on other workers; retry any whose worker dies
    finally:
        slots.close()


def _sampler(spec):
    # Workers, and sweep commands on other machines or resuming the study, must not sample the same points.
    seed = spec.params["seed"] + 1000 * spec.session + spec.worker_index
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(spec):
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.pruner_startup_trials, n_warmup_steps=spec.pruner_warmup_epochs
        )
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.NopPruner()
