"""One `sweep` command: open the study and its MLflow run, run the workers, report the best trial."""

import functools
import itertools
import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
from optuna.trial import TrialState

from experiments import InputError
from pipelines import schema, stopping, tracking
from pipelines.data import monitored_metric, prepare_data
from pipelines.sweeps import search_space, storage, study_run
from pipelines.sweeps.settings import WORKER_SPEC_ENV, SweepSpec
from pipelines.sweeps.study_run import FailStaleTrial

POLL_SECONDS = 1.0


def run_sweep(task, variant, settings, space, params):
    """Run (or resume) a sweep of `space` (its fixed `params` beside it: `plan.checked_space`) to
    n_trials finished trials; return the process exit code."""
    entry_point = task.qualified_name(variant)
    splits = prepare_data(task, variant, params)  # bad data fails here, before a study or run exists
    metric, direction = monitored_metric(task, splits)
    study_name = settings["study_name"] or entry_point

    if os.environ.get("MLFLOW_RUN_ID") and storage.has_password(settings["storage"]):
        print(
            "warning: mlflow run logged -P storage as given, password included; "
            "pass the password in PGPASSWORD (or ~/.pgpass) instead",
            file=sys.stderr,
        )
    # Opening the storage may create Optuna's tables: under the lock that serializes it.
    with storage.study_lock(settings["storage"], "setup"):
        _check_existing_study(settings["storage"], study_name, direction, entry_point)
    experiment_id = tracking.use_experiment(settings["experiment"], task.name)
    client = mlflow.MlflowClient()
    on_stale = FailStaleTrial(experiment_id, study_name)
    parent_run_id, status, problems = None, "FAILED", []
    try:
        # Workers started at once (compose --scale, a cluster job) would race to create the tables and the run.
        with storage.study_lock(settings["storage"], "setup"):
            study_storage = storage.open_storage(settings["storage"], settings["heartbeat_interval"], on_stale)
            study = _create_or_resume(study_storage, study_name, direction, entry_point)
            with stopping.held():  # once the run exists, the `finally` below must know it to end it
                parent_run_id = study_run.open_study_run(client, study, experiment_id, task, variant)
            session = study.user_attrs.get(schema.STUDY_SESSIONS_ATTR, 0)
            study.set_user_attr(schema.STUDY_SESSIONS_ATTR, session + 1)
        stopping.raise_if_stopped()
        study_run.log_settings(client, parent_run_id, settings, study_name, f"{direction} {metric}", space, params)
        finished, _ = storage.trial_counts(study)
        where = storage.describe(settings["storage"])
        print(
            f"sweep {study_name}: {finished} of {settings['n_trials']} trials finished so far; "
            f"storage {where}; MLflow run {parent_run_id}\nwatch it: mlflow ui, or optuna-dashboard {where}",
            flush=True,
        )
        spec = SweepSpec(
            entry_point=entry_point,
            params=params,
            space=search_space.describe(space),
            study_name=study_name,
            storage=settings["storage"],
            n_trials=settings["n_trials"],
            deadline=time.time() + settings["timeout"] if settings["timeout"] else None,
            sampler=settings["sampler"],
            pruner=settings["pruner"],
            pruner_startup_trials=settings["pruner_startup_trials"],
            pruner_warmup_epochs=settings["pruner_warmup_epochs"],
            heartbeat_interval=settings["heartbeat_interval"],
            trials_per_process=settings["trials_per_process"],
            system_metrics_interval=settings["system_metrics_interval"],
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            session=session,
        )
        # One worker that needs no fresh process trains here: a short sweep doesn't pay for starting one.
        in_process = settings["workers"] == 1 and (
            not spec.trials_per_process or spec.n_trials - finished <= spec.trials_per_process
        )
        if in_process:  # TensorFlow only here: a coordinator of worker processes trains nothing itself
            from pipelines.sweeps.worker import run_worker

            # A stop stuck in a trial's training is forced from the watchdog's thread: this run ends too.
            with stopping.on_forced_stop(
                functools.partial(tracking.end_killed, parent_run_id, mlflow.get_tracking_uri())
            ):
                run_worker(spec, splits)
        del splits  # each worker process loads its own
        if not in_process or _wants_trials(study, spec):  # failed trials were retried past trials_per_process
            problems = _run_worker_processes(spec, settings["workers"], study, launched=int(in_process))
        status = "FINISHED"
    except KeyboardInterrupt as stop:
        status = "KILLED"
        if parent_run_id is not None:
            client.set_tag(parent_run_id, schema.STOP_CAUSE_TAG, str(stop) or "SIGINT")
        raise
    finally:
        if parent_run_id is not None:
            with stopping.held(), storage.study_lock(settings["storage"], "slots", study_name):
                storage.fail_stale_trials(study, settings["storage"], on_stale)  # trials of workers that died
            finished, _ = storage.trial_counts(study)
            if status == "FINISHED" and problems and finished < settings["n_trials"]:
                status = "FAILED"
            with stopping.held():
                study_run.finish_study_run(client, parent_run_id, study, status)
            for problem in problems:
                print(f"warning: {problem}", file=sys.stderr)
            _print_summary(study, study_name, settings["n_trials"], entry_point, task, metric)
            _print_links(client, experiment_id, parent_run_id, study, task)
    return 0 if status == "FINISHED" else 1


def _create_or_resume(study_storage, study_name, direction, entry_point):
    study = optuna.create_study(study_name=study_name, storage=study_storage, direction=direction, load_if_exists=True)
    if study.user_attrs.get(schema.STUDY_ENTRY_POINT_ATTR) is None:
        study.set_user_attr(schema.STUDY_ENTRY_POINT_ATTR, entry_point)
    _check_study(study, direction, entry_point)
    return study


def _check_existing_study(url, study_name, direction, entry_point):
    """Refuse a study of another entry point or direction before anything is created for the sweep."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage.open_storage(url, None, None))
    except KeyError:  # a new study
        return
    _check_study(study, direction, entry_point)


def _check_study(study, direction, entry_point):
    owner = study.user_attrs.get(schema.STUDY_ENTRY_POINT_ATTR)
    if owner not in (None, entry_point):
        raise InputError(
            f"study_name: study '{study.study_name}' sweeps {owner}, not {entry_point}; choose another name"
        )
    if study.direction.name.lower() != direction:
        raise InputError(f"study_name: study '{study.study_name}' was created to {study.direction.name.lower()}")


def _run_worker_processes(spec, count, study, launched):
    """Keep `count` worker processes running until the study is done; return what went wrong, if anything.

    A worker that ends well (exit code 0) while the study still wants trials has run its
    trials_per_process: a fresh process takes its place. One that fails is reported, not replaced.
    `launched` counts the workers that ran before (in this process), so that no two share a seed.
    """
    threads = str(max(1, (os.cpu_count() or 1) // count))  # share the cores instead of each worker using them all
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        "MLFLOW_EXPERIMENT_ID": spec.experiment_id,
        "TF_NUM_INTRAOP_THREADS": threads,
        "OMP_NUM_THREADS": threads,
    }
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    launches = itertools.count(launched)

    def launch():
        # Each process gets its own index, so that its sampler's seed differs from every other's.
        env[WORKER_SPEC_ENV] = SweepSpec(**{**vars(spec), "worker_index": next(launches)}).to_env()
        return subprocess.Popen([sys.executable, "-m", "pipelines", "sweep-worker"], env=env)

    running, problems = {slot: launch() for slot in range(count)}, []
    try:
        while running:
            time.sleep(POLL_SECONDS)
            stopping.raise_if_stopped()
            for slot, worker in list(running.items()):
                code = worker.poll()  # poll() each one: it reaps the dead
                if code is None:
                    continue
                del running[slot]
                if code < 0:
                    problems.append(f"worker {slot} (pid {worker.pid}) was killed by {signal.Signals(-code).name}")
                elif code:
                    problems.append(f"worker {slot} (pid {worker.pid}) stopped with exit code {code}")
                elif _wants_trials(study, spec):
                    running[slot] = launch()
    except KeyboardInterrupt:
        for worker in running.values():
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in running.values():
            worker.wait()
        raise
    return problems


def _wants_trials(study, spec):
    finished, _ = storage.trial_counts(study)
    return finished < spec.n_trials and (spec.deadline is None or time.time() < spec.deadline)


def _print_links(client, experiment_id, parent_run_id, study, task):
    """Where to look at what the sweep made: its study run, the best trial's run, the comparison view."""
    links = {"the sweep": tracking.run_url(experiment_id, parent_run_id)}
    best = study_run.best_trial(study)
    if best is not None and best.user_attrs.get(schema.TRIAL_RUN_ATTR):
        links["its best trial"] = tracking.run_url(experiment_id, best.user_attrs[schema.TRIAL_RUN_ATTR])
    view = tracking.share_comparison_view(experiment_id, task, client)  # a refusal is a warning, not an error
    links["compare the runs"] = tracking.experiment_url(experiment_id, view)
    tracking.print_links(links)


def _print_summary(study, study_name, n_trials, entry_point, task, metric):
    states = storage.state_counts(study)
    finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
    print(
        f"study {study_name}: {finished} of {n_trials} trials finished "
        f"({states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
        f"{states[TrialState.FAIL]} failed)"
    )
    best = study_run.best_trial(study)
    if best is None:
        return
    print(f"best trial {best.number}: {study_run.describe_trial(best, metric)}")
    run_id = best.user_attrs.get(schema.TRIAL_RUN_ATTR)
    print(
        f"its MLflow run: {run_id}; {task.primary_metric} {best.user_attrs.get(task.primary_metric, float('nan')):.4f}"
    )
    print(
        "promote it to the model registry (champion if it beats the current one):\n"
        f"  mlflow run . -e promote --env-manager local -P task={entry_point} -P run_id={run_id}"
    )
