"""Where a sweep's Optuna study lives, and how workers share it safely.

- The default is a journal file under mlruns/, which Optuna supports for several
  processes on one machine (a single SQLite file is not safe for parallel writers).
- `postgresql://...` shares a study across machines; a heartbeat marks the trials of
  dead workers failed so that they can be retried.
- `StudyLock` makes all workers together start exactly n_trials trials, and lets
  workers started at once open one study without racing to create it.
"""

import contextlib
import fcntl
import hashlib
import os
import socket
import warnings
from collections import Counter
from pathlib import Path

import optuna
import sqlalchemy
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
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise InputError(f"storage: cannot open {describe(url)}: {reason}") from None


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


class StudyLock:
    """A lock across workers on one storage, on many machines too.

    `StudyLock(url, study_name, "slots")` is held from the check "fewer than n_trials finished
    or running" until the new trial exists, so that together the workers start exactly
    n_trials trials. (Optuna's MaxTrialsCallback counts only finished trials and overshoots
    by up to one per worker.) `StudyLock(url, "", "setup")` serializes opening a storage and a
    study: workers started at once would otherwise race to create Optuna's tables.

    A PostgreSQL advisory lock serves workers on many machines; a file lock serves one machine.
    """

    def __init__(self, url, study_name, purpose):
        self._held = False
        if url.startswith("postgresql"):
            engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            try:
                self._connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            except sqlalchemy.exc.SQLAlchemyError as error:
                reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
                raise InputError(f"storage: cannot open {describe(url)}: {reason}") from None
            digest = hashlib.sha256(f"keras-mlflow-sweep:{purpose}:{study_name}".encode()).digest()
            self._key = int.from_bytes(digest[:8], "big", signed=True)
            self._file = None
        else:
            database = url.split("///", 1)[1] if url.startswith("sqlite") else (url or str(DEFAULT_JOURNAL))
            lock_file = Path(f"{Path(database).expanduser()}.{purpose}.lock")  # not Optuna's own .lock
            try:
                lock_file.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(lock_file, "a")
            except OSError as error:
                raise InputError(f"storage: cannot use {lock_file}: {error.strerror or error}") from None
            self._connection = None

    def __enter__(self):
        if self._file:
            fcntl.flock(self._file, fcntl.LOCK_EX)
        else:
            self._connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
        self._held = True
        return self

    def release(self):
        if not self._held:
            return
        self._held = False
        if self._file:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        else:
            self._connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})

    def __exit__(self, *exc_info):
        self.release()

    def close(self):
        with contextlib.suppress(Exception):
            self.release()
        if self._file:
            self._file.close()
        else:
            self._connection.close()
