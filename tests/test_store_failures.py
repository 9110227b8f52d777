"""The store at its edges: a new store that a stop cut short, a store gone away, a full disk,
a study database that drops its connections. Each ends in a store that works, or in one
`error:` line and exit code 1 with the run's state true."""

import contextlib
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import mlflow
import optuna
import pytest
import sqlalchemy
from alembic.script import ScriptDirectory
from mlflow.store import db_migrations

from pipelines import tracking
from pipelines.cli import main
from pipelines.sweeps import storage
from pipelines.sweeps.storage import open_storage
from tests.conftest import POSTGRES_SERVER
from tests.helpers import PROJECT, free_port, no_traceback

# --- a store a stop left half-created ---------------------------------------------------------------


def half_created(folder, migrated_store, shape, with_a_run=False):
    """A copy of the migrated store as a stop among MLflow's migrations leaves it, last changed
    a while ago: a table Alembic was copying, or a schema ahead of its recorded version."""
    database, work = folder / "mlflow.db", folder / "work.db"
    shutil.copy(migrated_store, work)
    if with_a_run:  # under another name: this process keeps its store open, checked, for that name
        client = mlflow.MlflowClient(f"sqlite:///{work}")
        client.create_run(client.create_experiment("work"))
    shutil.copy(work, database)
    scripts = ScriptDirectory(os.path.dirname(db_migrations.__file__))
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        if shape == "copying a table":
            connection.execute("CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER)")
        else:  # the last migration's tables made, its version not recorded
            before = scripts.get_revision(scripts.get_current_head()).down_revision
            connection.execute("UPDATE alembic_version SET version_num = ?", (before,))
    long_ago = time.time() - 2 * tracking.CREATION_QUIET_SECONDS
    os.utime(database, (long_ago, long_ago))
    return database


@pytest.mark.parametrize("shape", ["copying a table", "behind its version"])
def test_a_half_created_store_that_holds_nothing_is_created_anew(shape, tmp_path, migrated_store, monkeypatch, capsys):
    database = half_created(tmp_path, migrated_store, shape)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    monkeypatch.chdir(tmp_path)

    assert main(["reap"]) == 0
    assert "was left half-created by a stopped command: created anew" in capsys.readouterr().err
    with contextlib.closing(sqlite3.connect(database)) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "_alembic_tmp_experiments" not in tables and {"runs", "experiments", "alembic_version"} <= tables
    assert [e.name for e in mlflow.MlflowClient(f"sqlite:///{database}").search_experiments()] == ["Default"]


def test_a_half_migrated_store_that_holds_runs_is_named_in_one_line_and_left_alone(
    tmp_path, migrated_store, monkeypatch, capsys
):
    database = half_created(tmp_path, migrated_store, "behind its version", with_a_run=True)
    before = database.read_bytes()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    monkeypatch.chdir(tmp_path)

    assert main(["reap"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: tracking store sqlite:///{database}: Detected out-of-date database schema")
    assert "mlflow db upgrade" in line
    assert database.read_bytes() == before  # the user's runs are untouched


def test_a_new_store_is_created_whole_under_another_name(tmp_path, monkeypatch):
    database = tmp_path / "new" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{database}")
    try:
        tracking.open_store()
    finally:
        mlflow.set_tracking_uri(None)
    assert database.exists() and not list(database.parent.glob(f"*{tracking.CREATING_SUFFIX}*"))
    with contextlib.closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        (location,) = connection.execute("SELECT artifact_location FROM experiments").fetchone()
    assert location == str(tmp_path / "mlruns" / "0")  # where MLflow itself puts the Default experiment's


# --- a store gone away, a full disk ----------------------------------------------------------------


def test_a_tracking_server_that_does_not_answer_is_one_error_line(store, tiny, monkeypatch, capsys):
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(address)

    assert main(["train", *tiny.argv("churn")]) == 1
    err = capsys.readouterr().err
    assert no_traceback(err)
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: tracking store {address}: ") and "Connection refused" in line


@pytest.mark.slow
def test_a_full_disk_under_the_store_is_one_error_line_and_the_run_ends_failed(store, tiny, tmp_path):
    """A real write failure: the files the command may grow are capped (RLIMIT_FSIZE), so the
    store's write-ahead log fills up mid-run, as on a full disk."""
    limit = 120 * 1024

    def capped():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer: a write fails instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    completed = subprocess.run(
        [sys.executable, "-m", "pipelines", "train", *tiny.argv("churn", epochs=3)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=capped,
    )
    assert completed.returncode == 1 and no_traceback(completed.stderr)
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: tracking store {store.tracking_uri}: "), last
    assert main(["reap"]) == 0  # a run the full store could not end is reaped
    assert [run.info.status for run in store.search_runs([os.environ["MLFLOW_EXPERIMENT_ID"]])] == ["FAILED"]


# --- a study database that drops its connections -----------------------------------------------------


@contextlib.contextmanager
def database_away(url, seconds):
    """Drop every connection to the database of `url` and refuse new ones for `seconds`, as a
    restart of its server does, without touching the server's other databases."""
    name = url.rpartition("/")[2]
    admin = sqlalchemy.create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        connection.execute(
            sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
            {"name": name},
        )

    def come_back():
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))

    timer = threading.Timer(seconds, come_back)
    timer.start()
    try:
        yield
    finally:
        timer.join()
        admin.dispose()


@pytest.mark.postgres
def test_a_study_outlasts_its_database_dropping_every_connection_for_seconds(postgres_url, monkeypatch, capsys):
    monkeypatch.setattr(storage, "_RECONNECTING", [])
    study = optuna.create_study(study_name="restarted", storage=open_storage(postgres_url, None, None))
    study.tell(study.ask(), 1.0)  # the pool holds live connections now

    with database_away(postgres_url, seconds=2):
        study.tell(study.ask(), 2.0)
    with database_away(postgres_url, seconds=2), storage.study_lock(postgres_url, "slots", "restarted"):
        study.tell(study.ask(), 3.0)  # the workers' lock waited it out too

    assert [t.value for t in study.get_trials()] == [1.0, 2.0, 3.0]
    (warning,) = capsys.readouterr().err.strip().splitlines()  # once, however many calls waited
    assert warning.startswith("warning: the study's database dropped the connection (")
