"""Run states that tell the truth: stop signals however a training was launched, heartbeats
and `reap` for runs whose process died, system metrics, and commands started together."""

import datetime
import os
import signal
import subprocess
import sys
import time

import mlflow
import psutil
import pytest

from pipelines import liveness, schema, stopping
from pipelines.cli import main
from tests.helpers import mlflow_run_command, no_traceback, runs, start

TRAIN_FOREVER = [sys.executable, "-m", "pipelines", "train", "--task", "xor", "--epochs", "100000"]
STOPPED_WITHIN_S = 10


def wait_until_training(store, timeout=120, experiment=None):
    """The run of a training started in another process (in `experiment`, else the test's), once
    its first epoch has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = store.get_experiment_by_name(experiment) if experiment else None
        started = store.search_runs([found.experiment_id]) if found else [] if experiment else runs(store)
        if started and store.get_metric_history(started[0].info.run_id, "epoch_time_s"):
            return store.get_run(started[0].info.run_id)
        time.sleep(0.5)
    raise AssertionError("training never started")


def status_within(store, run_id, status, timeout):
    """The run's status once it is `status`, or whatever it is when `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        current = store.get_run(run_id).info.status
        if current == status or time.monotonic() > deadline:
            return current
        time.sleep(0.2)


def training_process(run):
    return psutil.Process(int(run.data.tags[schema.PID_TAG]))


def stop_and_wait(process, signum, to_group, timeout=60):
    """Send `signum` to the process (or, as a terminal's Ctrl-C does, to its whole group); its stderr."""
    (os.killpg if to_group else os.kill)(process.pid, signum)
    try:
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return stderr


# --- stop signals --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "sigint", "to_group"),
    [
        (signal.SIGTERM, "default", False),
        (signal.SIGINT, "default", True),
        # A script's background job (`cmd &`, nohup, cron, make -j) starts with SIGINT ignored;
        # an explicit SIGINT still stops the training (README: "When a run is stopped").
        (signal.SIGINT, "ignored", True),
    ],
    ids=["SIGTERM", "Ctrl-C", "Ctrl-C-with-SIGINT-ignored-by-the-parent"],
)
def test_a_stopped_training_ends_its_run_killed(signum, sigint, to_group, store, tmp_path):
    with open(tmp_path / "stdout", "w") as stdout:  # a file: a pipe no one reads would fill and block the training
        process = start(TRAIN_FOREVER, sigint=sigint, stdout=stdout, stderr=subprocess.PIPE, text=True)
        run = wait_until_training(store)
        stderr = stop_and_wait(process, signum, to_group)
    assert process.returncode == 130
    # One line, with the command that resumes the run; nothing from TensorFlow.
    resume = f"resume it: python -m pipelines train --resume {run.info.run_id}"
    assert stderr.strip().splitlines() == [f"stopped ({signum.name}): the run ended KILLED; {resume}"]
    stopped = store.get_run(run.info.run_id)
    assert stopped.info.status == "KILLED" and stopped.data.tags["stop.cause"] == signum.name
    said = (tmp_path / "stdout").read_text().splitlines()
    assert said[0] == f"run {run.info.run_id} started: {run.info.run_name}, in experiment 'tests'"


STOP_INSIDE_A_QUERY = """
import os, signal, sqlite3, sys
import sqlalchemy
from sqlalchemy import orm
from pipelines import stopping

def stop_while_fetching(value):  # runs inside the DB-API's fetchall, as a converter
    os.kill(os.getpid(), signal.SIGTERM)
    return value

class Base(orm.DeclarativeBase):
    pass

class Row(Base):
    __tablename__ = "rows"
    id = sqlalchemy.Column(sqlalchemy.Integer, primary_key=True)
    value = sqlalchemy.Column(sqlalchemy.Integer)

engine = sqlalchemy.create_engine("sqlite:///" + sys.argv[1])
Base.metadata.create_all(engine)
with orm.Session(engine) as session:
    session.add_all([Row(value=1), Row(value=2)])
    session.commit()
sqlite3.register_converter("STOPPER", stop_while_fetching)
with engine.connect() as connection:  # a column type whose reading sends the stop
    connection.exec_driver_sql("ALTER TABLE rows ADD COLUMN stopper STOPPER DEFAULT 1")
    connection.commit()
engine = sqlalchemy.create_engine("sqlite:///" + sys.argv[1], connect_args={"detect_types": sqlite3.PARSE_DECLTYPES})
stopping.handle_stop_signals()
try:
    with orm.Session(engine) as session:
        session.query(Row).from_statement(sqlalchemy.text("SELECT * FROM rows")).all()
except stopping.Stopped as stop:
    print("stopped", stop)
"""


@pytest.mark.slow
def test_a_stop_inside_a_store_query_raises_stopped_without_a_traceback(tmp_path):
    # SQLAlchemy takes a stop inside a query for a lost connection, closes it, then logs its
    # failure to close the cursor with a traceback.
    done = subprocess.run(
        [sys.executable, "-c", STOP_INSIDE_A_QUERY, str(tmp_path / "store.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "stopped SIGTERM"
    assert no_traceback(done.stderr) and "Error closing cursor" not in done.stderr


STOP_AS_THE_RUN_IS_CREATED = """
import os, signal, sys, threading, time
import mlflow
from pipelines import stopping, tracking

def stop_once_the_run_exists(frame, event, arg):
    if event == "return" and frame.f_code is mlflow.tracking.fluent.start_run.__code__:
        sys.setprofile(None)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(20):  # the handler runs here, in the main thread, right after the run was created
            time.sleep(0.05)

# Another thread that lets the signal through, as a worker's launcher watch or TensorFlow's:
# the kernel hands it the signal while the main thread blocks it.
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
stopping.handle_stop_signals()
sys.setprofile(stop_once_the_run_exists)
try:
    with tracking.mlflow_run("stopped-as-it-starts", tags={}, system_metrics_interval=0):
        print("the run's body ran")
except stopping.Stopped as stop:
    print("stopped", stop)
"""


@pytest.mark.slow
def test_a_stop_as_the_run_is_created_ends_it_killed(store):
    # A stop just as MLflow has created the run (a sweep worker's trial, say) must not leave it RUNNING.
    done = subprocess.run(
        [sys.executable, "-c", STOP_AS_THE_RUN_IS_CREATED], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "stopped SIGTERM"
    (run,) = runs(store)
    assert run.info.status == "KILLED" and run.data.tags["stop.cause"] == "SIGTERM"


STUCK_IN_AN_EPOCH_START = """
import sys, threading
from pipelines import stopping, train
from pipelines.cli import main

class StuckAtTheSecondEpoch(train.CheckStop):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:  # as TensorFlow, starting an epoch's input pipeline, holds the main thread
            print("stuck", flush=True)
            threading.Event().wait()

train.CheckStop = StuckAtTheSecondEpoch
stopping.arm_watchdog()
sys.exit(main(sys.argv[1:] + ["--task", "xor", "--epochs", "3", "--system_metrics_interval", "0"]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("command", [["train"], ["sweep", "--n_trials", "1"]], ids=["train", "sweep"])
def test_a_training_stuck_outside_python_is_stopped_by_the_watchdog(store, tmp_path, command):
    """A sweep's one worker trains in the coordinator's process: the forced stop ends its study's run too."""
    if command[0] == "sweep":
        command += ["--storage", str(tmp_path / "optuna.journal")]
    process = start(
        [sys.executable, "-c", STUCK_IN_AN_EPOCH_START, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert "stuck" in iter(lambda: process.stdout.readline().decode().strip(), "")  # Keras' lines first
    sent = time.monotonic()
    stderr = stop_and_wait(process, signal.SIGTERM, to_group=False).decode()
    assert time.monotonic() - sent < stopping.STOP_GRACE_SECONDS + 5
    assert process.returncode == 130 and no_traceback(stderr)
    stopped = runs(store)
    assert len(stopped) == (2 if command[0] == "sweep" else 1)  # the training's run, and a sweep's study run
    # A training on its own says how to resume it; a sweep's trial is retried by running the sweep again.
    advice = (
        f"; resume it: python -m pipelines train --resume {stopped[0].info.run_id}" if command[0] == "train" else ""
    )
    assert stderr.strip().splitlines()[-1] == f"stopped (SIGTERM): the run ended KILLED{advice}"
    for run in stopped:
        assert run.info.status == "KILLED" and run.data.tags["stop.cause"] == "SIGTERM", run.data.tags


STOP_WHILE_KERAS_LOADS = """
import os, signal, sys
from pipelines.cli import main

def stop_as_keras_loads(frame, event, arg):
    code = frame.f_code
    if event == "call" and code.co_name == "<module>" and code.co_filename.endswith("keras/__init__.py"):
        sys.setprofile(None)
        os.kill(os.getpid(), signal.SIGTERM)

sys.setprofile(stop_as_keras_loads)
sys.exit(main(["train", "--task", "xor", "--epochs", "3", "--system_metrics_interval", "0"]))
"""


@pytest.mark.slow
def test_a_stop_while_keras_loads_ends_the_command_as_a_stop(store):
    # The import machinery swallows the stop and leaves `keras` half loaded: the next use of it
    # fails with an AttributeError, which is the stop's doing, not a bug to report with a traceback.
    done = subprocess.run([sys.executable, "-c", STOP_WHILE_KERAS_LOADS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and no_traceback(done.stderr)
    assert done.stderr.strip().splitlines()[-1] == "stopped (SIGTERM): before any run started"
    assert runs(store) == []


@pytest.mark.slow
def test_sigterm_to_mlflow_run_stops_its_training_and_the_run_ends_killed(store):
    """`kill <pid of mlflow run>`: MLflow's launcher dies at once, with no handler; its child notices."""
    launcher = start(mlflow_run_command("xor", epochs=100000), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = wait_until_training(store)
    training = training_process(run)
    stop_and_wait(launcher, signal.SIGTERM, to_group=False)
    assert launcher.returncode != 0
    training.wait(timeout=STOPPED_WITHIN_S)  # raises psutil.TimeoutExpired if it trains on
    stopped = store.get_run(run.info.run_id)
    assert stopped.info.status == "KILLED"
    assert stopped.data.tags["stop.cause"] == f"its launcher, mlflow run (pid {launcher.pid}), exited"


@pytest.mark.slow
@pytest.mark.parametrize("experiment_named", [True, False], ids=["experiment-named", "default-experiment"])
def test_ctrl_c_on_mlflow_run_ends_the_run_killed_though_mlflow_writes_failed(store, monkeypatch, experiment_named):
    """MLflow 3.17 sets FAILED after its child ended the run KILLED; the keeper puts KILLED back.
    With no experiment named, the training's run is in the task's experiment and `mlflow run`'s
    own, in Default, points to it: both end KILLED."""
    if not experiment_named:
        monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    launcher = start(mlflow_run_command("xor", epochs=100000), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = wait_until_training(store, experiment=None if experiment_named else "xor")
    training = training_process(run)
    stderr = stop_and_wait(launcher, signal.SIGINT, to_group=True).decode()
    assert launcher.returncode != 0 and "Traceback" not in stderr
    training.wait(timeout=STOPPED_WITHIN_S)
    assert status_within(store, run.info.run_id, "KILLED", timeout=30) == "KILLED"
    # The keeper ends once the status is back: no process of the run is left.
    keepers = [p for p in psutil.process_iter(["cmdline"]) if run.info.run_id in (p.info["cmdline"] or [])]
    psutil.wait_procs(keepers, timeout=STOPPED_WITHIN_S)
    assert not [p for p in keepers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert store.get_run(run.info.run_id).info.status == "KILLED"
    if not experiment_named:
        (launch,) = store.search_runs(["0"])
        assert launch.data.tags["launch.run_id"] == run.info.run_id
        assert status_within(store, launch.info.run_id, "KILLED", timeout=30) == "KILLED"


# --- heartbeats and reap -------------------------------------------------------------------


def test_the_heartbeat_tags_each_open_run_until_it_is_removed(store):
    run_id = store.create_run(os.environ["MLFLOW_EXPERIMENT_ID"]).info.run_id
    heartbeat = liveness.Heartbeat(seconds=0.1)
    heartbeat.add(run_id, mlflow.get_tracking_uri())
    assert schema.HEARTBEAT_TAG in _tags_within(store, run_id, 10)
    beat = datetime.datetime.fromisoformat(store.get_run(run_id).data.tags[schema.HEARTBEAT_TAG])
    assert abs((liveness.now() - beat).total_seconds()) < 5
    heartbeat.remove(run_id)
    time.sleep(0.3)  # a beat under way ends
    store.set_tag(run_id, schema.HEARTBEAT_TAG, "removed")
    time.sleep(0.5)
    assert store.get_run(run_id).data.tags[schema.HEARTBEAT_TAG] == "removed"


def _tags_within(store, run_id, timeout):
    deadline = time.monotonic() + timeout
    while schema.HEARTBEAT_TAG not in store.get_run(run_id).data.tags and time.monotonic() < deadline:
        time.sleep(0.05)
    return store.get_run(run_id).data.tags


def test_reap_ends_silent_runs_of_this_project_and_leaves_the_rest(store, capsys):
    experiment_id = os.environ["MLFLOW_EXPERIMENT_ID"]
    now = liveness.now()
    elsewhere = {schema.HOST_TAG: "another-host", schema.PID_TAG: "1", schema.STARTED_TAG: "0"}
    hour_ago = int((now - datetime.timedelta(hours=1)).timestamp() * 1000)

    def run(tags, start_time=None):
        return store.create_run(experiment_id, start_time=start_time, tags=tags).info.run_id

    silent = run({**elsewhere, schema.HEARTBEAT_TAG: liveness.timestamp(now - datetime.timedelta(minutes=61))})
    beating = run({**elsewhere, schema.HEARTBEAT_TAG: liveness.timestamp(now - datetime.timedelta(seconds=20))})
    here_and_alive = run(liveness.process_tags())  # this very process
    never_reported = run({"mlflow.project.entryPoint": "xor"}, start_time=hour_ago)  # `mlflow run` made it
    just_launched = run({"mlflow.project.entryPoint": "xor"})
    not_ours = run({}, start_time=hour_ago)  # no heartbeat: another tool's run, left alone

    assert main(["reap", "--dry_run", "true"]) == 0
    out = capsys.readouterr().out
    assert f"stale: run {silent} " in out and "no heartbeat for 61 min" in out
    assert f"stale: run {never_reported} " in out and "its command never reported" in out
    assert len(out.strip().splitlines()) == 2
    assert {r.info.status for r in runs(store)} == {"RUNNING"}  # a dry run changes nothing

    assert main(["reap"]) == 0
    status = {r.info.run_id: r.info.status for r in runs(store)}
    assert {run_id for run_id, value in status.items() if value == "FAILED"} == {silent, never_reported}
    assert {status[run_id] for run_id in (beating, here_and_alive, just_launched, not_ours)} == {"RUNNING"}
    assert store.get_run(silent).data.tags[schema.REAP_REASON_TAG].startswith("no heartbeat for 61 min")
    capsys.readouterr()
    assert main(["reap", "--stale_after", "3600"]) == 0
    assert capsys.readouterr().out.startswith("no stale runs")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stale_after", "30"], "error: stale_after: 30 is out of range; it must be an integer >= 60"),
        (["--experiment", "nowhere"], "error: experiment: no experiment named 'nowhere'"),
    ],
)
def test_bad_reap_input_is_one_error_line(argv, message, store, capsys):
    assert main(["reap", *argv]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]


@pytest.mark.slow
def test_a_sigkilled_training_stays_running_until_reap_fails_it(store, capsys):
    process = start(TRAIN_FOREVER, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = wait_until_training(store)
    os.killpg(process.pid, signal.SIGKILL)  # an OOM kill: nothing runs in the process after it
    process.wait()
    assert store.get_run(run.info.run_id).info.status == "RUNNING"  # what MLflow alone leaves, forever

    assert main(["reap", "--dry_run", "true"]) == 0
    assert f"stale: run {run.info.run_id} " in capsys.readouterr().out
    assert store.get_run(run.info.run_id).info.status == "RUNNING"
    assert main(["reap"]) == 0
    assert f"reaped, now FAILED: run {run.info.run_id} " in capsys.readouterr().out
    reaped = store.get_run(run.info.run_id)
    assert reaped.info.status == "FAILED"
    host = run.data.tags[schema.HOST_TAG]
    assert reaped.data.tags[schema.REAP_REASON_TAG] == f"its process {process.pid} on {host} is gone"
    assert store.get_metric_history(run.info.run_id, "loss")  # what it logged is kept


# --- system metrics ------------------------------------------------------------------------


def test_a_training_run_logs_system_metrics_every_interval_and_none_at_zero(store, tiny):
    # Long enough for a few samples at one a second.
    assert main(["train", *tiny.argv("xor", epochs=60), "--system_metrics_interval", "1"]) == 0
    assert main(["train", *tiny.argv("xor", epochs=1), "--system_metrics_interval", "0"]) == 0
    sampled, unsampled = sorted(runs(store), key=lambda run: int(run.data.params["epochs"]), reverse=True)
    expected = {"cpu_utilization_percentage", "system_memory_usage_megabytes", "disk_usage_percentage"}
    assert {f"system/{name}" for name in expected} <= set(sampled.data.metrics)
    assert "system/network_receive_megabytes" in sampled.data.metrics
    assert not [name for name in unsampled.data.metrics if name.startswith("system/")]


# --- starting together ---------------------------------------------------------------------


@pytest.mark.slow
def test_commands_started_at_once_on_a_new_store_all_succeed(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"  # no database yet: the first command creates it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    train = [sys.executable, "-m", "pipelines", "train", "--task", "xor", "--epochs", "2"]
    sweep = [sys.executable, "-m", "pipelines", "sweep", "--task", "xor", "--epochs", "2", "--n_trials", "1"]
    commands = [train, train, [*sweep, "--storage", str(tmp_path / "optuna.journal")]]
    # From the store's folder: a new store's experiments keep their artifacts in ./mlruns, not the checkout's.
    processes = [
        start(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for command in commands
    ]
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
    client = mlflow.MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "xor"]
    finished = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    assert len(finished) == 4  # two trainings, the sweep's run and its trial
