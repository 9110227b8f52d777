"""Where a study lives and how workers share it: storages, dead workers' trials, and the study lock.

- The default is a journal file under mlruns/, which Optuna supports for several
  processes on one machine (a single SQLite file is not safe for parallel writers).
- `postgresql://...` shares a study across machines; a heartbeat marks the trials of
  dead workers failed so that they can be retried.
- `study_lock` lets all workers together start exactly n_trials trials, and lets
  workers started at once open one study without racing to create it.
"""

import contextlib
import hashlib
import os
import socket
import warnings
from collections import Counter
from pathlib import Path

import optuna
import sqlalchemy
from filelock import FileLock
from optuna.exceptions import ExperimentalWarning
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from experiments import InputError

DEFAULT_JOURNAL = Path("mlruns") / "optuna.journal"
RDB_SCHEMES = ("sqlite", "postgresql")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def is_rdb(url):
    return url.split("+")[0].split(":")[0] in RDB_SCHEMES and "://" in url


def describe(url):
    """The storage as it may be printed and logged: the journal's path, or the URL without its password."""
    if not url:
        return str(DEFAULT_JOURNAL.resolve())
    if "://" not in url:
        return str(Path(url).expanduser().resolve())
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url.split("://")[0] + "://..."


def has_password(url):
    try:
        return "://" in url and bool(sqlalchemy.engine.make_url(url).password)
    except sqlalchemy.exc.ArgumentError:
        return False


def check(url, workers):
    """Refuse a storage the sweep cannot use, before anything is created."""
    if "://" in url and not is_rdb(url):
        raise InputError(
            f"storage: unsupported storage {describe(url)}; use a journal file path (the default), "
            "sqlite:///file.db or postgresql://user@host/db"
        )
    if url.startswith("sqlite") and workers > 1:
        raise InputError(
            "storage: SQLite is not safe for parallel workers (Optuna advises against it); "
            "use the default journal file or PostgreSQL"
        )


def open_storage(url, heartbeat_interval, on_stale_trial):
    """The Optuna storage for `url` ('' is the default journal file)."""
    if not is_rdb(url):
        path = Path(url).expanduser() if url else DEFAULT_JOURNAL
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as error:
            raise InputError(f"storage: cannot use journal file {path}: {error.strerror or error}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # the heartbeat, stable since Optuna 2.x
            return RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=heartbeat_interval,
                heartbeat_stale_trial_callback=on_stale_trial,
            )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as error:
        raise InputError(f"storage: cannot open {describe(url)}: {_reason(error)}") from None


def _reason(error):
    """The first line of what the database driver said."""
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


def worker_id():
    return f"{socket.gethostname()}:{os.getpid()}"


def state_counts(study):
    """How many trials the study holds in each state (one read of the storage)."""
    return Counter(trial.state for trial in study.get_trials(deepcopy=False))


def trial_counts(study):
    """(finished, running): complete plus pruned trials, and trials in progress."""
    states = state_counts(study)
    return sum(states[state] for state in FINISHED), states[TrialState.RUNNING]


def fail_stale_trials(study, url, on_stale_trial):
    """Mark the trials of dead workers FAIL and pass each to `on_stale_trial` (which retries it).

    RDB storages use Optuna's heartbeat. A journal file serves one machine, where a
    worker's process id tells whether it is still alive.
    """
    if is_rdb(url):
        optuna.storages.fail_stale_trials(study)
        return
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            on_stale_trial(study, study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped by its parent) is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@contextlib.contextmanager
def study_lock(url, purpose, study_name=""):
    """Held by one process at a time across every worker of the storage, on many machines too.

    `study_lock(url, "slots", study)` covers "count the trials, then create one", so that together
    the workers start exactly n_trials trials (Optuna's MaxTrialsCallback counts only finished
    trials and overshoots by up to one per worker). `study_lock(url, "setup")` serializes opening
    a storage and a study: workers started at once would otherwise race to create Optuna's tables.
    A PostgreSQL advisory lock serves workers on many machines; a file lock serves one machine.
    """
    if not url.startswith("postgresql"):
        database = url.split("///", 1)[1] if url.startswith("sqlite") else (url or str(DEFAULT_JOURNAL))
        path = Path(f"{Path(database).expanduser()}.{purpose}.lock")  # not Optuna's own .lock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(path)
            lock.acquire()
        except OSError as error:
            raise InputError(f"storage: cannot use {path}: {error.strerror or error}") from None
        try:
            yield
        finally:
            lock.release()
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    digest = hashlib.sha256(f"keras-mlflow-sweep:{purpose}:{study_name}".encode()).digest()
    key = {"key": int.from_bytes(digest[:8], "big", signed=True)}
    try:
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except sqlalchemy.exc.SQLAlchemyError as error:
        raise InputError(f"storage: cannot open {describe(url)}: {_reason(error)}") from None
    with connection:  # closing the connection also releases the lock, should the unlock fail
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), key)
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)


def heartbeat(trial, storage):
    """Record the trial's heartbeat every heartbeat_interval while it runs (RDB storages only).

    Study.optimize does this around each trial; the workers ask and tell instead, so that
    counting and creating a trial happen under one lock. Optuna keeps the thread private.
    """
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial._trial_id, storage)
