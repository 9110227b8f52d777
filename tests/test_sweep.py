"""Optuna sweeps: search spaces, the study as a parent run, pruning, resume, workers and crashes."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import psutil
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from experiments import InputError, entry_points
from pipelines.cli import main
from pipelines.params import declared_params, parse_params
from pipelines.sweeps import search_space as spaces
from pipelines.sweeps.storage import open_storage, worker_id
from tests.helpers import no_traceback, options, runs, start

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LONG_TRIAL = {"epochs": 100, "batch_size": 1}  # xor's trials run long enough to be caught running
# ...and long enough (several seconds) to be checkpointed before they end (checkpoints.MIN_SECONDS_BETWEEN).
CHECKPOINTED_TRIAL = {"epochs": 120, "batch_size": 1}


# --- search spaces ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(entry_points()))
def test_every_entry_point_declares_a_valid_search_space(name):
    task, variant = entry_points()[name]
    space = task.variants[variant].search_space
    declared = declared_params(task, variant)
    assert isinstance(space["learning_rate"], FloatDistribution) and space["learning_rate"].log
    for tuned in ("dropout", "conv_dropout", "filters", "units", "l1", "l2"):
        if declared.get(tuned) and declared[tuned].default:  # the variant uses it: the sweep tunes it
            assert tuned in space, f"{name} does not tune {tuned}"
    for param, dist in space.items():
        assert param in declared and param not in spaces.UNTUNABLE
        values = dist.choices if isinstance(dist, CategoricalDistribution) else (dist.low, dist.high)
        for value in values:
            declared[param].parse(param, value)  # raises if a bound is outside the parameter's valid range


def test_a_search_space_file_narrows_fixes_and_drops(tmp_path):
    task, variant = entry_points()["mnist_cnn_l2"]
    path = tmp_path / "space.yaml"
    path.write_text(
        "learning_rate: {low: 1.0e-3, high: 5.0e-3, log: true}\n"
        "filters: [16, 32]\n"
        "units: {low: 32, high: 128, step: 32}\n"
        "batch_size: 256\n"
        "l2: null\n"
    )
    params = parse_params(task, variant, {})
    space, fixed = spaces.search_space(task, variant, params, spaces.read_overrides(str(path)))
    assert space["learning_rate"] == FloatDistribution(1e-3, 5e-3, log=True)
    assert space["filters"] == CategoricalDistribution([16, 32])
    assert space["units"] == IntDistribution(32, 128, step=32)
    assert space["dropout"] == task.variants[variant].search_space["dropout"]  # untouched: declared range
    assert "l2" not in space and fixed["l2"] == params["l2"]
    assert fixed["batch_size"] == 256


def test_parameters_the_user_sets_are_fixed_not_tuned():
    task, variant = entry_points()["mnist_cnn"]
    params = parse_params(task, variant, {"dropout": "0.3"})
    space, fixed = spaces.search_space(task, variant, params, fixed_by_user={"dropout"})
    assert "dropout" not in space and fixed["dropout"] == 0.3


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            '{"dropout": {"low": 0.2, "high": 1.5}}',
            "search_space: inline: dropout: 1.5 is out of range; it must be a number in [0, 1)",
        ),
        (
            '{"learning_rate": {"low": 0.1, "high": 0.01}}',
            "search_space: inline: learning_rate: `low <= high` must hold",
        ),
        (
            '{"learning_rate": {"low": 0, "high": 0.1, "log": true}}',
            "search_space: inline: learning_rate: 0.0 is out of range",
        ),
        (
            '{"filters": {"low": 8, "high": 64, "step": 2.5}}',
            "search_space: inline: filters: step must be a positive integer",
        ),
        ('{"filters": {"lo": 8, "high": 64}}', "search_space: inline: filters: a range needs low and high"),
        ('{"optimizer": {"low": 1, "high": 2}}', "search_space: inline: optimizer: takes text values"),
        ('{"optimizer": ["adam", "adagrad"]}', "search_space: inline: optimizer: adagrad is out of range"),
        ('{"momentum": [0.9]}', "search_space: inline: momentum: not a parameter of this entry point"),
        ('{"seed": [1, 2]}', "search_space: inline: seed: cannot be tuned"),
        ('{"units": []}', "search_space: inline: units: an empty list of choices"),
        ("{dropout: [0.1", "search_space: inline is not valid YAML or JSON"),
        ("missing.yaml", "search_space: file not found: missing.yaml"),
        (
            '{"learning_rate": 0.01, "filters": null, "units": null, "dropout": null}',
            "search_space: inline: nothing left to tune",
        ),
    ],
)
def test_a_bad_search_space_is_refused_with_the_field_named(entries, message):
    task, variant = entry_points()["mnist_cnn"]
    with pytest.raises(InputError) as error:
        spaces.search_space(task, variant, parse_params(task, variant, {}), spaces.read_overrides(entries))
    assert str(error.value).startswith(message), error.value


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "xor", "--n_trials", "0"], "error: n_trials: 0 is out of range; it must be an integer >= 1"),
        (["--task", "cifar"], "error: task: unknown task 'cifar'"),
        (["--task", "xor", "--storage", "mysql://root@127.0.0.1/test"], "error: storage: unsupported storage"),
        (["--task", "xor", "--storage", "sqlite:///x.db", "--workers", "2"], "error: storage: SQLite is not safe"),
        (
            ["--task", "xor", "--storage", "postgresql://postgres:pw@127.0.0.1:1/x"],
            "error: storage: cannot open postgresql://postgres:***@127.0.0.1:1/x",
        ),
        (["--task", "xor", "--pruner", "asha"], "error: pruner: asha is out of range"),
        (["--task", "xor", "--study_name", "a b"], "error: study_name: a b is out of range"),
        (["--task", "xor", "--search_space", "nope.yaml"], "error: search_space: file not found: nope.yaml"),
        (["--task", "xor", "--momentum", "0.9"], "error: momentum: not a parameter of xor"),
    ],
)
def test_bad_sweep_input_is_one_error_line_and_no_run(argv, message, store, tmp_path, capsys):
    storage = [] if "--storage" in argv else ["--storage", str(tmp_path / "optuna.journal")]
    assert main(["sweep", *argv, *storage]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert runs(store) == []


def test_dry_run_prints_what_the_sweep_would_tune_and_opens_nothing(store, tmp_path, capsys):
    journal = tmp_path / "optuna.journal"
    argv = ["sweep", "--task", "mnist_cnn", "--epochs", "5", "--storage", journal, "--dry_run", "true"]
    assert main([*argv, "--search_space", '{"optimizer": ["adam", "sgd"], "units": null}']) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["entry_point"] == "mnist_cnn" and plan["settings"]["storage"] == str(journal)
    assert plan["fixed"]["epochs"] == 5 and "learning_rate" not in plan["fixed"]  # fixed by you, tuned
    assert plan["search_space"]["optimizer"] == ["adam", "sgd"] and "units" not in plan["search_space"]
    assert plan["search_space"]["learning_rate"] == {"low": 3e-4, "high": 1e-2, "log": True}
    # The printed space is in the search-space file's format: fed back, each range reads the same.
    again = spaces.read_overrides(json.dumps(plan["search_space"]))
    task, variant = entry_points()["mnist_cnn"]
    space, _ = spaces.search_space(task, variant, parse_params(task, variant, {}), again)
    assert {name: spaces.as_file_entries(space)[name] for name in plan["search_space"]} == plan["search_space"]
    assert runs(store) == [] and not journal.exists()


# --- sweeps on tiny data --------------------------------------------------------------------


def sweep(*args):
    return main(["sweep", *map(str, args)])


def study_runs(client, kind):
    return [run for run in runs(client) if run.data.tags.get("sweep") == kind]


def trial_runs_by_number(client):
    by_number = {}
    for run in study_runs(client, "trial"):
        by_number.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    return by_number


@pytest.mark.slow
def test_sweep_nests_trials_under_the_study_run_records_pruning_and_resumes(store, tiny, tmp_path, capsys):
    journal = str(tmp_path / "optuna.journal")
    # Trial 0 learns, trial 1 cannot (a tiny learning rate): the median pruner must stop it.
    study = optuna.create_study(study_name="digits", storage=open_storage(journal, 10, None), direction="maximize")
    study.enqueue_trial({"learning_rate": 0.01})
    study.enqueue_trial({"learning_rate": 1e-6})
    space = '{"learning_rate": {"low": 1.0e-6, "high": 0.01, "log": true}, "dropout": null}'
    common = [
        *tiny.argv("mnist_cnn", epochs=4),
        *options(storage=journal, study_name="digits", pruner_startup_trials=1, pruner_warmup_epochs=0),
        *options(search_space=space),
    ]
    assert sweep(*common, "--n_trials", 3) == 0
    out = capsys.readouterr().out

    (parent,) = study_runs(store, "study")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "sweep-digits"
    assert parent.data.params["pruner"] == "median" and parent.data.params["sampler"] == "tpe"
    assert parent.data.params["storage"] == journal and parent.data.params["objective"] == "maximize val_accuracy"
    assert parent.data.metrics["trials_complete"] + parent.data.metrics["trials_pruned"] == 3
    artifacts = {a.path for a in store.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/optimization_history.png", "sweep/intermediate_values.png", "sweep/trials.csv"} <= artifacts

    trials = trial_runs_by_number(store)
    assert sorted(trials) == [0, 1, 2] and all(len(r) == 1 for r in trials.values())
    assert {run.data.tags["mlflow.parentRunId"] for (run,) in trials.values()} == {parent.info.run_id}
    (good,), (pruned,) = trials[0], trials[1]
    assert good.info.status == "FINISHED" and good.data.tags["optuna.trial_state"] == "COMPLETE"
    assert good.data.params["learning_rate"] == "0.01" and "test_accuracy" in good.data.metrics
    assert [m.step for m in store.get_metric_history(good.info.run_id, "val_accuracy")] == [0, 1, 2, 3]
    assert mlflow.search_logged_models(filter_string=f"source_run_id = '{good.info.run_id}'", output_format="list")
    assert pruned.info.status == "KILLED" and pruned.data.tags["optuna.trial_state"] == "PRUNED"
    pruned_at = int(pruned.data.tags["pruned_at_epoch"])
    assert 1 <= pruned_at < 4 and len(store.get_metric_history(pruned.info.run_id, "val_accuracy")) == pruned_at

    best = optuna.load_study(study_name="digits", storage=open_storage(journal, 10, None)).best_trial
    assert f"best trial {best.number}" in out and best.user_attrs["mlflow_run_id"] in out
    assert (
        f"mlflow run . -e promote --env-manager local -P task=mnist_cnn -P run_id={best.user_attrs['mlflow_run_id']}"
        in out
    )
    assert parent.data.tags["best.run_id"] == best.user_attrs["mlflow_run_id"]

    # The same command resumes the study: numbering goes on, finished trials are not redone.
    assert sweep(*common, "--n_trials", 4) == 0
    trials = trial_runs_by_number(store)
    assert sorted(trials) == [0, 1, 2, 3] and all(len(r) == 1 for r in trials.values())
    (resumed,) = study_runs(store, "study")
    assert resumed.info.run_id == parent.info.run_id and resumed.info.status == "FINISHED"
    assert trials[3][0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    # Asking again for the same number of trials has nothing left to do.
    assert sweep(*common, "--n_trials", 4) == 0
    assert sorted(trial_runs_by_number(store)) == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_diverging_trial_fails_alone_and_the_sweep_goes_on(store, tiny, tmp_path):
    journal = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="line", storage=open_storage(journal, 10, None), direction="minimize")
    for learning_rate in (1e6, 0.05, 0.02):  # SGD at 1e6 overflows to inf, then NaN
        study.enqueue_trial({"learning_rate": learning_rate})
    space = '{"learning_rate": {"low": 0.01, "high": 1.0e+6, "log": true}, "optimizer": "sgd"}'
    # Two trials fit in the sweep's own process; the retry of the failed one takes a fresh process.
    result = sweep(
        *tiny.argv("linear", epochs=3),
        *options(storage=journal, study_name="line", n_trials=2, pruner="none", search_space=space),
        *options(trials_per_process=2),
    )
    assert result == 0
    study = optuna.load_study(study_name="line", storage=open_storage(journal, 10, None))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    workers = [trial.user_attrs["worker"] for trial in study.trials]
    assert workers[0] == workers[1] == worker_id() != workers[2]
    trials = trial_runs_by_number(store)
    assert trials[0][0].info.status == "FAILED" and trials[0][0].data.tags["optuna.trial_state"] == "FAIL"
    (parent,) = study_runs(store, "study")
    assert parent.data.metrics["trials_failed"] == 1 and parent.info.status == "FINISHED"


# --- worker processes -----------------------------------------------------------------------


@pytest.fixture
def start_sweep():
    """Start `python -m pipelines sweep ...` in its own process group; kill what is left at the end."""
    started = []

    def start_one(*args):
        command = [sys.executable, "-m", "pipelines", "sweep", *map(str, args)]
        process = start(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(process)
        return process

    yield start_one
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the coordinator and its workers
        process.communicate()


def load_study_when_created(name, url, timeout=120):
    storage = open_storage(url, 1, None)  # one storage: each RDB storage holds its own connections
    deadline = time.time() + timeout
    while True:
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def check_exactly_n_trials(store, study, n_trials):
    """n finished trials, each with exactly one run under the study run, and no run left RUNNING."""
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == n_trials
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    trials = trial_runs_by_number(store)
    (parent,) = study_runs(store, "study")
    for trial in finished:
        (run,) = trials[trial.number]
        assert run.info.status in ("FINISHED", "KILLED")
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert not [run for run in runs(store) if run.info.status == "RUNNING"]
    return trials


def wait_for_running_trial(study, store, timeout=180, checkpointed=False):
    """A trial in progress on a worker, once its MLflow run exists (and, if `checkpointed`,
    holds a checkpoint): (trial, worker pid)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with_runs = {
            run.data.tags.get("optuna.trial_number")
            for run in runs(store)
            if not checkpointed or store.list_artifacts(run.info.run_id, "checkpoints")
        }
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            pid = trial.user_attrs.get("worker", "").rpartition(":")[2]
            if pid and str(trial.number) in with_runs:
                return trial, int(pid)
        time.sleep(0.2)
    raise AssertionError("no trial started")


@pytest.mark.slow
def test_a_sigkilled_coordinator_stops_its_workers_and_reap_fails_its_run(store, tiny, tmp_path, start_sweep, capsys):
    journal = str(tmp_path / "optuna.journal")
    settings = options(storage=journal, workers=2, n_trials=4, pruner="none", study_name="xor-orphans")
    coordinator = start_sweep(*tiny.argv("xor", **LONG_TRIAL), *settings)
    study = load_study_when_created("xor-orphans", journal)
    _, worker_pid = wait_for_running_trial(study, store)
    workers = psutil.Process(coordinator.pid).children(recursive=True)  # each ends its own trial's run
    assert worker_pid in {worker.pid for worker in workers}
    os.kill(coordinator.pid, signal.SIGKILL)  # its workers keep no one to report to
    coordinator.communicate()
    _, training_on = psutil.wait_procs(workers, timeout=30)
    assert not training_on  # no worker trains on, orphaned
    trials = [run for run in study_runs(store, "trial") if run.info.status != "FINISHED"]
    assert trials and {run.info.status for run in trials} == {"KILLED"}
    assert all("its sweep coordinator" in run.data.tags["stop.cause"] for run in trials)
    (parent,) = study_runs(store, "study")
    assert parent.info.status == "RUNNING"  # its process is gone: reap ends it
    assert main(["reap"]) == 0
    parent = store.get_run(parent.info.run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["reap.reason"] == f"its process {coordinator.pid} on {worker_id().split(':')[0]} is gone"


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_killed_worker_trial_is_failed_and_retried_and_the_study_completes(
    storage, store, tiny, tmp_path, request, start_sweep
):
    """Two workers, each handing over to a fresh process after every trial; one is SIGKILLed
    mid-trial. On PostgreSQL the URL carries a password (trust auth ignores it) that nothing logs."""
    url = logged_url = str(tmp_path / "optuna.journal")
    if storage == "postgres":
        server = request.getfixturevalue("postgres_url")
        url = server.replace("postgres@", "postgres:hunter2@")
        logged_url = server.replace("postgres@", "postgres:***@")
    settings = options(storage=url, workers=2, n_trials=3, trials_per_process=1, pruner="none", study_name="xor-kill")
    sweep_process = start_sweep(*tiny.argv("xor", **CHECKPOINTED_TRIAL), *settings, *options(heartbeat_interval=1))
    killed, pid = wait_for_running_trial(load_study_when_created("xor-kill", url), store, checkpointed=True)
    os.kill(pid, signal.SIGKILL)
    out, err = sweep_process.communicate(timeout=600)

    assert sweep_process.returncode == 0, err[-3000:]
    assert "was killed by SIGKILL" in err
    study = optuna.load_study(study_name="xor-kill", storage=open_storage(url, 1, None))
    assert study.trials[killed.number].state == TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retried and retried[0].state in FINISHED and retried[0].params == killed.params
    trials = check_exactly_n_trials(store, study, 3)
    # A process per trial, each sampling with its own seed (a retry repeats its trial's point).
    assert len({trial.user_attrs["worker"] for trial in study.trials}) == len(study.trials)
    sampled = [tuple(sorted(t.params.items())) for t in study.trials if t.number != retried[0].number]
    assert len(set(sampled)) == len(sampled)
    (killed_run,) = trials[killed.number]
    assert killed_run.info.status == "FAILED" and killed_run.data.tags["optuna.trial_state"] == "FAIL"
    # The retry went on from the killed trial's last checkpoint, in a run of its own that
    # holds every epoch once: those before the checkpoint as the killed trial logged them.
    (retry_run,) = trials[retried[0].number]
    assert retry_run.data.tags["resume.run_id"] == killed_run.info.run_id
    from_epoch = int(retry_run.data.tags["resume.from_epoch"])
    assert from_epoch >= 1
    epochs = CHECKPOINTED_TRIAL["epochs"]
    assert [m.step for m in store.get_metric_history(retry_run.info.run_id, "loss")] == list(range(epochs))
    assert sorted(retried[0].intermediate_values) == list(range(epochs))

    assert "hunter2" not in out + err
    for run in runs(store):
        assert "hunter2" not in json.dumps({**run.data.params, **run.data.tags})
    (parent,) = study_runs(store, "study")
    assert parent.data.params["storage"] == logged_url


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "to_group"), [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["Ctrl-C", "SIGTERM"]
)
def test_a_stop_ends_every_worker_and_the_same_command_resumes(signum, to_group, store, tiny, tmp_path, start_sweep):
    journal = str(tmp_path / "optuna.journal")
    args = [
        *tiny.argv("xor", **LONG_TRIAL),
        *options(storage=journal, workers=2, n_trials=3, pruner="none", study_name="xor-stop"),
    ]
    sweep_process = start_sweep(*args)
    study = load_study_when_created("xor-stop", journal)
    wait_for_running_trial(study, store)
    # Ctrl-C in a terminal signals the whole process group; SIGTERM (kill, a scheduler) the coordinator alone.
    (os.killpg if to_group else os.kill)(sweep_process.pid, signum)
    _, err = sweep_process.communicate(timeout=300)
    assert sweep_process.returncode == 130, err[-3000:]
    assert no_traceback(err) and err.strip().splitlines()[-1] == f"stopped ({signum.name}): the run ended KILLED"
    assert not [run for run in runs(store) if run.info.status == "RUNNING"]
    (parent,) = study_runs(store, "study")
    assert parent.info.status == "KILLED" and parent.data.tags["stop.cause"] == signum.name
    stopped = [run for run in study_runs(store, "trial") if run.info.status != "FINISHED"]
    assert stopped and {run.info.status for run in stopped} == {"KILLED"}  # the trials in progress
    stopped_trials = {int(run.data.tags["optuna.trial_number"]) for run in stopped}
    assert {study.trials[number].state for number in stopped_trials} == {TrialState.FAIL}
    if signum == signal.SIGTERM:
        return  # resuming after Ctrl-C shows it once

    resumed = start_sweep(*args)
    _out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="xor-stop", storage=open_storage(journal, 1, None))
    check_exactly_n_trials(store, study, 3)
    assert study.trials[0].number == 0 and len(study.trials) > 3  # numbering went on after the stop


def test_timeout_stops_starting_trials(store, tiny, tmp_path, capsys):
    started = time.time()
    # 50 trials would take fresh worker processes; trials_per_process=0 keeps them all in this one.
    # The timeout counts from the sweep's start, the worker's first import of Keras included.
    settings = options(storage=tmp_path / "optuna.journal", n_trials=50, timeout=10, trials_per_process=0)
    result = sweep(*tiny.argv("xor", epochs=2), *settings)
    assert result == 0 and time.time() - started < 60
    (parent,) = study_runs(store, "study")
    finished = parent.data.metrics["trials_complete"] + parent.data.metrics["trials_pruned"]
    assert 1 <= finished < 50 and parent.info.status == "FINISHED"
    assert f"{int(finished)} of 50 trials finished" in capsys.readouterr().out
