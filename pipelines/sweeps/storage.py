"""Where a study lives and how workers share it: storages, dead workers' trials, and the study lock.

- The default is a journal file under mlruns/, which Optuna supports for several
  processes on one machine (a single SQLite file is not safe for parallel writers).
- `postgresql://...` shares a study across machines; a heartbeat marks the trials of
  dead workers failed so that they can be retried.
- `study_lock` lets all workers together start exactly n_trials trials, and lets
  workers started at once open one study without racing to create it.
"""

import contextlib
import functools
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
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
from pipelines import schema

DEFAULT_JOURNAL = Path("mlruns") / "optuna.journal"
RDB_SCHEMES = ("sqlite", "postgresql")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
CONNECT_TIMEOUT_S = 10  # how long `check` waits for a database server to answer
RECONNECT_DELAYS_S = (0.5, 1, 2, 4, 8, 16)  # between tries of a call whose connection dropped: 31.5 s in all
_RECONNECTING = []  # the first dropped connection this process retried: it is reported once
_RETRYING = threading.local()  # set while a thread's outermost storage call is retried
# RDBStorage's calls that reach the database (the rest read settings or manage the schema), and
# the private ones Optuna's cache calls on it.
RECONNECTING_METHODS = (
    "_create_new_trial",
    "_get_best_trial_id",
    "_get_trials",
    "_set_trial_param",
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "get_best_trial",
    "record_heartbeat",
    "_get_stale_trial_ids",
)


def is_rdb(url):
    return url.split("+")[0].split(":")[0] in RDB_SCHEMES and "://" in url


def describe(url):
    """The storage as it may be printed and logged: the journal's path, or the URL without its password."""
    if not url:
        return str(DEFAULT_JOURNAL.resolve())
    if "://" not in url:
        return str(Path(url).expanduser().resolve())
    parsed = _well_formed(url)
    if parsed is not None:
        return parsed.difference_update_query(["password"]).render_as_string(hide_password=True)
    # Not parsable, or parsed wrongly (an '@' left unencoded in the password): mask all that may be
    # password, from the user name's ':' to the last '@', and any password= in the query.
    scheme, _, rest = url.partition("://")
    user = re.match(r"[^:/@?#]*", rest).group()
    if rest[len(user) : len(user) + 1] == ":" and "@" in rest[len(user) :]:
        rest = f"{user}:***{rest[rest.rindex('@') :]}"
    return f"{scheme}://" + re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", rest)


def split_password(url):
    """(`url` without its password, the password or ''): a password in the user part
    (`user:pw@host`) or in the query (`?password=pw`), as the database driver takes it."""
    parsed = _well_formed(url) if "://" in url else None
    if parsed is None:
        return url, ""
    password = parsed.password or parsed.query.get("password") or ""
    if not password:
        return url, ""
    without = parsed._replace(password=None).difference_update_query(["password"])
    return without.render_as_string(hide_password=False), str(password)


def has_password(url):
    return "://" in url and describe(url) != url


def _well_formed(url):
    """SQLAlchemy's reading of `url`, or None where it fails or misreads the URL (a host holding
    an '@': the password held one that is not percent-encoded)."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return None
    return None if "@" in (parsed.host or "") else parsed


def check(url, workers):
    """Refuse a storage the sweep cannot use, before anything is created: an unsupported or
    malformed URL, a database that does not answer, a path that is a directory or not a
    journal file. Nothing is written."""
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
    if not is_rdb(url):
        _check_journal(Path(url).expanduser() if url else DEFAULT_JOURNAL)
        return
    parsed = _parsed(url)
    if url.startswith("sqlite"):
        if not parsed.database or parsed.database == ":memory:":
            raise InputError(f"storage: {describe(url)} names no database file; give sqlite:///path/to/file.db")
        _check_sqlite(Path(parsed.database).expanduser())
        return
    _check_connects(url, parsed)


def _parsed(url):
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise InputError(f"storage: {describe(url)} is not a database URL such as postgresql://user@host/db") from None
    except ValueError as error:
        port = re.search(r"for int\(\) with base 10: (.*)$", str(error))
        reason = f"its port {port.group(1)} is not a number" if port else _reason(error, url)
        raise InputError(f"storage: {describe(url)} is not a valid database URL: {reason}") from None
    if "@" in (parsed.host or ""):
        raise InputError(
            f"storage: {describe(url)} is not a valid database URL: an '@' in the password must be written %40 "
            "(or pass the password in PGPASSWORD)"
        )
    return parsed


def _check_writable_file(path, what, example):
    """`path` can be created or written as a file: not a directory, under a directory we may write in."""
    try:
        if path.is_dir():
            raise InputError(f"storage: {path} is a directory, not {what}; give a file in it, e.g. {path / example}")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise InputError(f"storage: cannot use {path}: {folder} is not a directory")
        if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.R_OK | os.W_OK)):
            raise InputError(f"storage: cannot use {path}: permission denied")
    except (OSError, ValueError) as error:  # a name the file system refuses (too long, a NUL)
        raise InputError(f"storage: cannot use {path}: {getattr(error, 'strerror', None) or error}") from None


def _check_journal(path):
    _check_writable_file(path, "a journal file", "optuna.journal")
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with path.open("rb") as journal:
            first = json.loads(journal.readline(1 << 20))
        is_journal = isinstance(first, dict) and "op_code" in first
    except (OSError, ValueError):
        is_journal = False
    if not is_journal:
        raise InputError(f"storage: {path} is not an Optuna journal file; give a journal file's path or a new one")


def _check_sqlite(path):
    _check_writable_file(path, "a SQLite database", "optuna.db")
    if path.exists() and path.stat().st_size:
        with path.open("rb") as database:
            if database.read(16) != b"SQLite format 3\x00":
                raise InputError(f"storage: {path} is not a SQLite database")


def _check_connects(url, parsed):
    """The database answers: one connection, opened and closed (libpq reads PGPASSWORD and ~/.pgpass)."""
    driver = parsed.get_driver_name()
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if driver.startswith("psycopg") else {}
    try:
        engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args)
        with engine.connect():
            pass
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, TypeError) as error:
        raise InputError(f"storage: cannot open {describe(url)}: {_reason(error, url)}") from None


def _connection_lost(error):
    """True for what a dropped or refused database connection raises, directly or inside
    Optuna's StorageInternalError: a server restarting, a network blip, a failover."""
    if isinstance(error, optuna.exceptions.StorageInternalError):
        error = error.__cause__
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))


def _warn_reconnecting(error):
    """Say once per process why a worker pauses: its database dropped the connection."""
    if not _RECONNECTING:
        _RECONNECTING.append(error)
        reason = _reason(getattr(error, "__cause__", None) or error)
        print(f"warning: the study's database dropped the connection ({reason}); trying again", file=sys.stderr)


def _reconnecting(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if getattr(_RETRYING, "active", False):  # inside another retried call: that one retries
            return method(self, *args, **kwargs)
        _RETRYING.active = True
        try:
            for delay in (*RECONNECT_DELAYS_S, None):
                try:
                    return method(self, *args, **kwargs)
                except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
                    if delay is None or not _connection_lost(error):
                        raise
                    _warn_reconnecting(error)
                    time.sleep(delay)
        finally:
            _RETRYING.active = False

    return call


class ReconnectingRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose every database call outlasts a dropped connection: tried
    again with backoff for about half a minute (a database server's restart) before the error
    is raised. `pool_pre_ping` replaces the dead pooled connections; this retries the call a
    drop cut short, in the worker's thread and in Optuna's heartbeat thread alike.

    A write whose commit reached the database just before the drop is repeated: setting a
    value or an attribute again is harmless; finishing a trial twice raises Optuna's own
    error, as finishing a finished trial does."""


for _name in RECONNECTING_METHODS:
    setattr(ReconnectingRDBStorage, _name, _reconnecting(getattr(RDBStorage, _name)))


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
            return ReconnectingRDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=heartbeat_interval,
                heartbeat_stale_trial_callback=on_stale_trial,
            )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as error:
        raise InputError(f"storage: cannot open {describe(url)}: {_reason(error, url)}") from None


def _reason(error, url=""):
    """The first line of what the database driver said, without the password of `url`."""
    lines = str(getattr(error, "orig", None) or error).strip().splitlines() or [type(error).__name__]
    password = split_password(url)[1] if url else ""
    return lines[0].replace(password, "***") if password else lines[0]


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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # stable since Optuna 2.9
            optuna.storages.fail_stale_trials(study)
        return
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = trial.user_attrs.get(schema.TRIAL_WORKER_ATTR, "").rpartition(":")
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
def study_lock(url, purpose, study_name=None):
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
    digest = hashlib.sha256(f"keras-mlflow-sweep:{purpose}:{study_name or ''}".encode()).digest()
    key = {"key": int.from_bytes(digest[:8], "big", signed=True)}
    with _advisory_lock(engine, url, key) as connection:  # closing the connection also releases the lock
        try:
            yield
        finally:
            try:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)
            except sqlalchemy.exc.SQLAlchemyError as error:
                if not _connection_lost(error):
                    raise  # else the lock went with the connection


def _advisory_lock(engine, url, key):
    """A connection holding the advisory lock `key`, taken again on a new connection while a
    dropped one cuts the wait short (as `ReconnectingRDBStorage` does)."""
    for delay in (*RECONNECT_DELAYS_S, None):
        try:
            connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except sqlalchemy.exc.SQLAlchemyError as error:
            if delay is None or not _connection_lost(error):
                raise InputError(f"storage: cannot open {describe(url)}: {_reason(error, url)}") from None
            _warn_reconnecting(error)
            time.sleep(delay)
            continue
        try:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), key)
            return connection
        except sqlalchemy.exc.SQLAlchemyError as error:
            connection.close()
            if delay is None or not _connection_lost(error):
                raise
            _warn_reconnecting(error)
            time.sleep(delay)


def heartbeat(trial, storage):
    """Record the trial's heartbeat every heartbeat_interval while it runs (RDB storages only).

    Study.optimize does this around each trial; the workers ask and tell instead, so that
    counting and creating a trial happen under one lock. Optuna keeps the thread private.
    """
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial._trial_id, storage)
