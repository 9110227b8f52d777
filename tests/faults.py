"""Fault injection for the crash-consistency tests, in the spirit of the fault-injection
suites of databases and file systems: a command of the platform runs with every call it
makes to the tracking store and to the artifact store counted, and one fault at call N.

    python -m tests.faults --record calls.json [--fault kill|term|error --at N] -- train --task churn ...

- `kill` sends the process SIGKILL just before call N: nothing of the process runs after it.
- `term` sends it SIGTERM just before call N, and lets the call go on: the stop lands
  wherever the signal handler runs next, as a `docker stop` or `kubectl delete` does.
- `error` fails call N as a full disk (artifact store) or a store gone away (tracking
  store) fails it, once; the calls after it succeed.

Only calls from the main thread count, and a call made inside another counted call is not
counted again: the sequence is the same in every run of the same command. Checkpoints are
written after every epoch (`checkpoints.MIN_SECONDS_BETWEEN` is 0), so that the sequence
does not depend on how fast the epochs run. `--record` receives the calls made, as JSON,
before a fault and at the end: the test reads there where each fault landed.

With `--store_creation`, the SQL statements that write while a new SQLite store is created
are counted instead (a fault before statement N), and so is the step that puts it in place.

`python -m tests.faults --serve` runs many cases, each in a child forked from one process
that imported TensorFlow once (see `serve`).
"""

import argparse
import errno
import functools
import json
import os
import signal
import sys
import threading

FAULTS = ("kill", "term", "error")
TRACKING_STORES = (
    ("mlflow.store.tracking.sqlalchemy_store", "SqlAlchemyStore"),
    ("mlflow.store.tracking.rest_store", "RestStore"),
    ("mlflow.store.model_registry.sqlalchemy_store", "SqlAlchemyStore"),
    ("mlflow.store.model_registry.rest_store", "RestStore"),
)
ARTIFACT_STORES = (
    ("mlflow.store.artifact.local_artifact_repo", "LocalArtifactRepository"),
    ("mlflow.store.artifact.http_artifact_repo", "HttpArtifactRepository"),
)
ARTIFACT_CALLS = ("log_artifact", "log_artifacts", "list_artifacts", "download_artifacts", "delete_artifacts")
# The statements that change a database: a stop before a read is a stop after the write before it.
WRITES = ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE")
# What a test's own helpers call on a store: not the command's doing.
NOT_COUNTED = ("get_host_creds",)


class Injector:
    """Counts the calls and injects the fault; writes what it saw to `record`."""

    def __init__(self, fault, at, record):
        self.fault, self.at, self.record = fault, at, record
        self.calls, self.seen = [], {}
        self.depth = threading.local()

    def write(self, **extra):
        if self.record:
            self.seen |= extra
            with open(self.record, "w") as file:
                json.dump({"calls": self.calls, **self.seen}, file)

    def counted(self, label, call, error):
        """Run `call()` as counted call `label`, with the fault if it is the one chosen."""
        if threading.current_thread() is not threading.main_thread() or getattr(self.depth, "value", 0):
            return call()
        self.calls.append(label)
        if len(self.calls) == self.at:
            self.write(fault=self.fault, at=self.at, label=label)
            if self.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.fault == "term":
                os.kill(os.getpid(), signal.SIGTERM)
            if self.fault == "error":
                raise error()
        self.depth.value = 1
        try:
            return call()
        finally:
            self.depth.value = 0


def _wrap(injector, cls, name, error, label_of):
    method = getattr(cls, name)

    @functools.wraps(method)
    def counted(self, *args, **kwargs):
        return injector.counted(label_of(cls, name, args, kwargs), lambda: method(self, *args, **kwargs), error)

    setattr(cls, name, counted)


def _store_error():
    from mlflow.exceptions import MlflowException

    return MlflowException("the tracking store went away (injected fault)", error_code="INTERNAL_ERROR")


def _disk_full():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "(injected fault)")


def _tracking_label(cls, name, args, kwargs):
    return f"{cls.__name__}.{name}"


def _artifact_label(cls, name, args, kwargs):
    path = kwargs.get("artifact_path") or next((a for a in args[1:] if isinstance(a, str)), None)
    path = path if name != "log_artifact" else f"{path}/{os.path.basename(str(args[0]))}"
    return f"{cls.__name__}.{name}({path or ''})"


def install_store_hooks(injector):
    import importlib

    for module, name in TRACKING_STORES:
        cls = getattr(importlib.import_module(module), name)
        for attribute in dir(cls):
            if attribute.startswith("_") or attribute in NOT_COUNTED:
                continue
            if callable(getattr(cls, attribute, None)) and not isinstance(getattr(cls, attribute), type):
                _wrap(injector, cls, attribute, _store_error, _tracking_label)
    for module, name in ARTIFACT_STORES:
        cls = getattr(importlib.import_module(module), name)
        for attribute in ARTIFACT_CALLS:
            _wrap(injector, cls, attribute, _disk_full, _artifact_label)


def install_creation_hooks(injector):
    """Count each SQL statement that writes while a new SQLite store is created, and its renaming."""
    import sqlalchemy

    from pipelines import tracking

    def before_statement(conn, cursor, statement, parameters, context, executemany):
        verb = statement.split(maxsplit=1)[0].upper() if statement.strip() else ""
        if verb in WRITES and tracking.CREATING_SUFFIX in str(conn.engine.url):
            injector.counted(f"sql: {' '.join(statement.split()[:3])}", lambda: None, _disk_full)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", before_statement)
    replace = os.replace

    def counted_replace(source, target):
        if str(source).endswith(tracking.CREATING_SUFFIX):
            return injector.counted("rename into place", lambda: replace(source, target), _disk_full)
        return replace(source, target)

    tracking.os.replace = counted_replace


def run_case(case):
    """Run one command as `case` asks ({argv, fault, at, record, env, cwd, output,
    store_creation}; all but argv optional) and exit with its code. Never returns."""
    code = 1
    try:
        os.environ.update(case.get("env", {}))
        os.chdir(case.get("cwd", os.getcwd()))
        if case.get("output"):
            output = os.open(case["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(output, 1)
            os.dup2(output, 2)
        injector = Injector(case.get("fault"), case.get("at", 0), case.get("record"))

        from pipelines import checkpoints, stopping
        from pipelines.cli import main as pipelines_main

        checkpoints.MIN_SECONDS_BETWEEN = 0
        if case.get("store_creation"):
            install_creation_hooks(injector)
        else:
            install_store_hooks(injector)
        stopping.arm_watchdog()
        code = pipelines_main(case["argv"])
        injector.write(exit=code)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve():
    """Answer cases read from stdin (one JSON object a line) with {"pid", "returncode"}, each
    run in a child forked from this process, which has imported TensorFlow, Keras and MLflow
    once (a few seconds saved per case) and has started no thread a fork would lose."""
    import keras  # noqa: F401
    import mlflow.keras  # noqa: F401
    import tensorflow  # noqa: F401

    import pipelines.cli
    import pipelines.resume
    import pipelines.train  # noqa: F401

    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_case(case)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}), flush=True)


def main():
    if sys.argv[1:] == ["--serve"]:
        serve()
        return
    parser = argparse.ArgumentParser(prog="python -m tests.faults")
    parser.add_argument("--fault", choices=FAULTS)
    parser.add_argument("--at", type=int, default=0, help="the call (from 1) before which the fault comes")
    parser.add_argument("--record", help="where to write the calls made, as JSON")
    parser.add_argument("--store_creation", action="store_true", help="count the new store's SQL statements")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the words after `python -m pipelines`")
    args = parser.parse_args()
    argv = [word for word in args.command if word != "--"]
    run_case({"argv": argv, "fault": args.fault, "at": args.at, "record": args.record, **vars(args)})


if __name__ == "__main__":
    main()
