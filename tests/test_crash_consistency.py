"""Crash consistency: a short training stopped or failed at each call it makes to the tracking
store and the artifact store, one call per case, then reaped and resumed, must end as README
promises: the run FINISHED, each epoch's metrics logged once, one logged model, only the
latest checkpoint left (and the best one, with early stopping), and the test metrics of the
training that was never stopped (op determinism is on).

The faults (`tests/faults.py`): SIGKILL before the call, SIGTERM before it, or the call failing
once as a full disk or a store gone away. Each case runs in a child forked from one process
that imported TensorFlow once. A sample of the calls runs in the suite; every call, on
SQLite and through a real `mlflow server`, with and without early stopping, runs with
`-m crash` (its figures: benchmarks/crash_consistency.md).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid

import mlflow
import pytest

from pipelines import checkpoints, schema
from tests.faults import FAULTS
from tests.helpers import PROJECT, free_port, options, wait_until_serving

# Dropout draws from a random generator whose state a checkpoint must carry for an exact resume.
CRASH_RECIPE = {"epochs": 3, "batch_size": 16, "units": 6, "dropout": 0.2, "system_metrics_interval": 0}
# Early stopping that never stops 6 epochs but keeps the best one, epoch 4 on the tiny churn data.
VARIANTS = {"plain": CRASH_RECIPE, "early_stopping": {**CRASH_RECIPE, "epochs": 6, "patience": 10}}
PER_EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", schema.EPOCH_TIME_METRIC)
TEST_METRICS = ("test_loss", "test_accuracy", "test_roc_auc")
SHARDS = 4  # the full sweep's cases of one store, variant and fault, in this many tests for xdist
OUTCOMES = PROJECT / "benchmarks" / "out" / "crash_consistency"


# --- the machinery: a fork server, the stores ----------------------------------------------------


class Zygote:
    """`python -m tests.faults --serve`: runs each case in a fresh child of one warm process."""

    def __init__(self):
        environment = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults", "--serve"],
            cwd=PROJECT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=environment,
        )
        assert "ready" in json.loads(self.process.stdout.readline())

    def run(self, case):
        self.process.stdin.write(json.dumps(case) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def zygote():
    started = Zygote()
    yield started
    started.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, migrated_store):
    """A real `mlflow server`, artifacts proxied, shared by the module's cases (each in its own experiment)."""
    folder = tmp_path_factory.mktemp("crash-server")
    shutil.copy(migrated_store, folder / "server.db")
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)),
            *("--backend-store-uri", f"sqlite:///{folder}/server.db"),
            *("--artifacts-destination", str(folder / "artifacts"), "--workers", "1"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/health", process, timeout=90)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


class Case:
    """One case's store: a fresh copy of a migrated SQLite store (`store` is its path), an
    experiment of its own on a server (`store` is the server's URL), or a SQLite store its first
    command creates (`store` is None)."""

    def __init__(self, name, folder, store):
        self.name, self.folder = name, folder
        folder.mkdir(parents=True)
        self.uri, self.experiment = f"sqlite:///{folder}/mlflow.db", "churn"
        if isinstance(store, str):
            self.uri, self.experiment = store, f"{name}-{uuid.uuid4().hex[:8]}"
        elif store is not None:
            shutil.copy(store, folder / "mlflow.db")
        self.calls = 0

    @property
    def client(self):
        return mlflow.MlflowClient(self.uri)  # made when needed: a client creates a SQLite store it opens

    def command(self, zygote, argv, fault=None, at=0, store_creation=False):
        """Run `python -m pipelines <argv>` in a child of the zygote: (exit code, output, record)."""
        self.calls += 1
        output, record = self.folder / f"output-{self.calls}.txt", self.folder / f"record-{self.calls}.json"
        env = {"MLFLOW_TRACKING_URI": self.uri, "_MLFLOW_SERVER_ARTIFACT_ROOT": str(self.folder / "mlruns")}
        case = {"argv": argv, "fault": fault, "at": at, "record": str(record), "output": str(output)}
        result = zygote.run({**case, "env": env, "cwd": str(self.folder), "store_creation": store_creation})
        seen = json.loads(record.read_text()) if record.exists() else {}
        return result["returncode"], output.read_text(), seen

    def runs(self):
        experiment = self.client.get_experiment_by_name(self.experiment)
        return self.client.search_runs([experiment.experiment_id]) if experiment else []


def training(data, variant):
    return ["train", "--task", "churn", "--data", str(data), *options(**VARIANTS[variant])]


def with_experiment(argv, case):
    return [*argv, "--experiment", case.experiment] if case.experiment != "churn" else argv


# --- the invariants --------------------------------------------------------------------------------


def outcome_problems(fault, code, output):
    """What is wrong with how the stopped or failed command ended."""
    problems = []
    if "Traceback" in output:
        problems.append("a traceback: " + output[output.index("Traceback") :][:600])
    last = output.strip().splitlines()[-1] if output.strip() else ""
    if fault == "kill" and code != -signal.SIGKILL:
        problems.append(f"exit {code} after SIGKILL")
    if fault == "term" and not (code == 0 or (code == 130 and last.startswith("stopped (SIGTERM): "))):
        problems.append(f"exit {code} after SIGTERM, last line {last!r}")
    if fault == "error" and not (code == 0 or (code == 1 and last.startswith("error: "))):
        problems.append(f"exit {code} after a failed call, last line {last!r}")
    return problems


def state_problems(fault, code, case):
    """What is untrue in the state the fault left the run in, before anything repairs it: a
    stopped run KILLED, a failed one FAILED (or RUNNING where the store refused its end, for
    `reap`), a killed one RUNNING (or ended, if the kill came after its end), a run that
    finished FINISHED."""
    states = [run.info.status for run in case.runs()]
    allowed = {
        ("kill", -signal.SIGKILL): {"RUNNING", "FINISHED"},
        ("term", 130): {"KILLED"},
        ("error", 1): {"FAILED", "RUNNING"},
    }.get((fault, code), {"FINISHED"})
    return [f"the run was left {state} after exit {code}" for state in states if state not in allowed]


def recover(zygote, case, argv):
    """After the fault: reap, then resume the run (or train again if none had started).
    Returns (the run, problems)."""
    problems = []
    if any(run.info.status == "RUNNING" for run in case.runs()):  # a SIGKILL's
        code, output, _ = case.command(zygote, ["reap", "--experiment", case.experiment])
        if code != 0:
            problems.append(f"reap exited {code}: {output[-600:]}")
    found = case.runs()
    if len(found) > 1:
        problems.append(f"{len(found)} runs")
    if not found:
        code, output, _ = case.command(zygote, with_experiment(argv, case))
        if code != 0:
            problems.append(f"training again exited {code}: {output[-600:]}")
    elif found[0].info.status != "FINISHED":
        code, output, _ = case.command(zygote, [*argv, "--resume", found[0].info.run_id])
        if code != 0:
            problems.append(f"resume of a {found[0].info.status} run exited {code}: {output[-800:]}")
    found = case.runs()
    return (found[0] if found else None), problems


def invariant_problems(case, run, reference, variant):
    """What the finished run breaks of README's promises, against the uninterrupted `reference`."""
    if run is None:
        return ["no run"]
    problems = []
    client, run_id, epochs = case.client, run.info.run_id, VARIANTS[variant]["epochs"]
    if run.info.status != "FINISHED":
        problems.append(f"status {run.info.status}")
    for metric in PER_EPOCH_METRICS:
        logged = sorted(m.step for m in client.get_metric_history(run_id, metric))
        if logged != list(range(epochs)):
            problems.append(f"{metric} steps {logged}")
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    if [model.status.name for model in models] != ["READY"]:
        problems.append(f"logged models {[model.status.name for model in models]}")
    folders = [item.path for item in client.list_artifacts(run_id, schema.CHECKPOINTS_FOLDER)]
    expected = [checkpoints.folder(epochs)]
    if variant == "early_stopping":
        expected.insert(0, checkpoints.folder(int(reference.data.metrics["best_epoch"])))
    if sorted(folders, key=checkpoints.epoch_of) != expected:
        problems.append(f"checkpoints {folders}")
    for metric in TEST_METRICS:
        if run.data.metrics.get(metric) != reference.data.metrics[metric]:
            problems.append(f"{metric} {run.data.metrics.get(metric)} != {reference.data.metrics[metric]}")
    return problems


def reference_run(zygote, tmp_path, store, data, variant):
    """The uninterrupted training, with the calls it makes: (run, [call labels])."""
    case = Case("reference", tmp_path / "reference", store)
    code, output, seen = case.command(zygote, with_experiment(training(data, variant), case))
    assert code == 0, output[-3000:]
    (run,) = case.runs()
    if variant == "early_stopping":  # else the case would not keep two checkpoints
        assert run.data.metrics["best_epoch"] < VARIANTS[variant]["epochs"]
    return run, seen["calls"]


def check_cases(zygote, tmp_path, store, data, variant, reference, points):
    """Run each (fault, call number) of `points`; return ({case: problems} of those that broke
    something, every case's outcome)."""
    argv, broken, outcomes = training(data, variant), {}, []
    for fault, at in points:
        name = f"{fault}-{at}"
        case = Case(name, tmp_path / name, store)
        code, output, seen = case.command(zygote, with_experiment(argv, case), fault, at)
        problems = outcome_problems(fault, code, output) + state_problems(fault, code, case)
        run, more = recover(zygote, case, argv)
        problems += more + invariant_problems(case, run, reference, variant)
        outcomes.append({"fault": fault, "at": at, "call": seen.get("label"), "exit": code, "problems": problems})
        if problems:
            broken[f"{name} ({seen.get('label')})"] = problems
    return broken, outcomes


def points_where(calls, fault, *fragments):
    """(fault, n) for the first call whose label holds each fragment in turn."""
    return [(fault, next(n for n, label in enumerate(calls, 1) if fragment in label)) for fragment in fragments]


# --- the sample in the suite -------------------------------------------------------------------


@pytest.mark.slow
def test_stops_and_failures_at_a_sample_of_calls_end_in_a_finished_run(zygote, tmp_path, migrated_store, tiny):
    """The calls where a fault hurts most: between a checkpoint's files, after the
    model is logged and before it is finalized, before a checkpoint's deletion; SIGTERM while a
    checkpoint is written; a full disk at a checkpoint's state file."""
    data = tiny.data_files["churn"]
    reference, calls = reference_run(zygote, tmp_path, migrated_store, data, "plain")
    points = [
        *points_where(calls, "kill", "epoch-0002/training_metadata.json", "finalize_logged_model", "delete_artifacts"),
        *points_where(calls, "term", "epoch-0002/latest.weights.h5"),
        *points_where(calls, "error", "epoch-0002/state.json"),
    ]
    broken, _ = check_cases(zygote, tmp_path, migrated_store, data, "plain", reference, points)
    assert not broken, json.dumps(broken, indent=1)


@pytest.mark.slow
def test_a_kill_through_a_tracking_server_with_early_stopping_resumes_to_the_same_run(
    zygote, server, tmp_path, migrated_store, tiny
):
    data = tiny.data_files["churn"]
    reference, calls = reference_run(zygote, tmp_path, server, data, "early_stopping")
    points = points_where(calls, "kill", "epoch-0005/training_metadata.json")
    broken, _ = check_cases(zygote, tmp_path, server, data, "early_stopping", reference, points)
    assert not broken, json.dumps(broken, indent=1)


@pytest.mark.slow
def test_a_stop_while_the_first_command_creates_the_store_leaves_a_store_that_works(zygote, tmp_path, tiny):
    """SIGKILL or SIGTERM among the SQL statements that create a new SQLite store, or at its
    renaming into place; then the next command works. The quick start's case, Ctrl-C while its
    training creates the store, is the SIGTERM one: the same training then succeeds."""
    counted = Case("count", tmp_path / "count", None)  # no store yet: `reap` creates it, and trains nothing
    code, output, seen = counted.command(zygote, ["reap"], store_creation=True)
    assert code == 0, output[-3000:]
    statements = len(seen["calls"])
    assert seen["calls"][-1] == "rename into place" and statements > 100
    # SIGTERM while Alembic copies a table: SQLAlchemy reports such a stop as a failure of its own.
    copying = next(n for n, label in enumerate(seen["calls"], 1) if label.startswith("sql: INSERT INTO _alembic_tmp"))
    training_argv = training(tiny.data_files["churn"], "plain")
    cases = [("kill", 1, ["reap"]), ("kill", statements // 2, ["reap"]), ("kill", statements, ["reap"])]
    for fault, at, argv in [*cases, ("term", copying, training_argv)]:
        case = Case(f"{fault}-{at}", tmp_path / f"{fault}-{at}", None)
        code, output, _ = case.command(zygote, argv, fault, at, store_creation=True)
        assert code in (-signal.SIGKILL, 130) and "Traceback" not in output, output[-3000:]
        if fault == "term":  # no run existed: none is said to have ended
            assert output.strip().splitlines()[-1] == "stopped (SIGTERM): before any run started"
        assert not (case.folder / "mlflow.db").exists()  # nothing half-made where the store belongs
        code, output, _ = case.command(zygote, argv)
        assert code == 0, output[-3000:]
        if argv is training_argv:
            assert [run.info.status for run in case.runs()] == ["FINISHED"]
        else:
            assert [experiment.name for experiment in case.client.search_experiments()] == ["Default"]


# --- every call, on demand -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.crash
@pytest.mark.parametrize("shard", range(SHARDS))
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("store_kind", ["sqlite", "server"])
def test_every_call_of_a_training_survives_each_fault(
    store_kind, variant, fault, shard, zygote, tmp_path, migrated_store, tiny, request
):
    store = request.getfixturevalue("server") if store_kind == "server" else migrated_store
    data = tiny.data_files["churn"]
    reference, calls = reference_run(zygote, tmp_path, store, data, variant)
    points = [(fault, at) for at in range(1, len(calls) + 1) if at % SHARDS == shard]
    broken, outcomes = check_cases(zygote, tmp_path, store, data, variant, reference, points)
    OUTCOMES.mkdir(parents=True, exist_ok=True)
    report = {"store": store_kind, "variant": variant, "fault": fault, "calls": len(calls), "cases": outcomes}
    (OUTCOMES / f"{store_kind}-{variant}-{fault}-{shard}.json").write_text(json.dumps(report, indent=1))
    assert not broken, json.dumps(broken, indent=1)


@pytest.mark.slow
@pytest.mark.crash
@pytest.mark.parametrize("shard", range(SHARDS))
@pytest.mark.parametrize("fault", ["kill", "term"])
def test_every_step_of_a_new_store_creation_survives_a_stop(fault, shard, zygote, tmp_path):
    argv = ["reap"]  # opens the store, creating it, and trains nothing
    counted = Case("count", tmp_path / "count", None)
    _, _, seen = counted.command(zygote, argv, store_creation=True)
    broken = {}
    for at in [at for at in range(1, len(seen["calls"]) + 1) if at % SHARDS == shard]:
        case = Case(f"{fault}-{at}", tmp_path / f"{fault}-{at}", None)
        stopped, output, _ = case.command(zygote, argv, fault, at, store_creation=True)
        code, again, _ = case.command(zygote, argv)
        problems = [f"exit {stopped}"] if stopped not in (-signal.SIGKILL, 130) or "Traceback" in output else []
        if code != 0 or [e.name for e in case.client.search_experiments()] != ["Default"]:
            problems.append(f"the next command exited {code}: {again[-600:]}")
        if problems:
            broken[f"{fault}-{at} ({seen['calls'][at - 1]})"] = problems
    OUTCOMES.mkdir(parents=True, exist_ok=True)
    report = {"fault": fault, "statements": len(seen["calls"]), "broken": broken}
    (OUTCOMES / f"store-creation-{fault}-{shard}.json").write_text(json.dumps(report, indent=1))
    assert not broken, json.dumps(broken, indent=1)
