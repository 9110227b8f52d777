"""How our processes stop: a stop signal becomes one exception, launchers are watched, and
a run's final status survives `mlflow run`.

- SIGTERM and SIGINT both raise `Stopped` in the main thread, whatever disposition the
  process inherited: a script's background job starts with SIGINT ignored, yet an explicit
  `kill -INT` means stop. A second signal while the run ends is noted and ignored, so the
  ending is never cut short (SIGKILL still forces it).
- While a model trains (`deferred`), the handler only records the stop, and the training
  raises it after the execution of steps under way (`raise_if_stopped`, from a Keras
  callback): TensorFlow's C++ code calls back into Python, where an exception raised by a
  signal handler can't pass cleanly. Elsewhere an exception raised by the handler can still
  land where Python discards it (a weakref callback, a `__del__`): the stop is remembered
  and raised again where the code checks for it, every wait loop included.
- TensorFlow can block the main thread in C++ for many seconds (starting an epoch's input
  pipeline on full MNIST, say), and no Python runs there, not even the signal handler.
  A watchdog thread, woken by the signal itself (`signal.set_wakeup_fd`), forces
  the stop once STOP_GRACE_SECONDS pass without the training raising it: the hooks the run
  and the sweep trial registered (`on_forced_stop`) end them KILLED and FAIL, and the
  process exits with code 130.
- A process started for a run by a launcher (`mlflow run`, a workflow step, a sweep's
  coordinator) stops when the launcher is gone: SIGTERM kills `mlflow run` at once and
  would leave its child training, orphaned.
- `mlflow run` sets the run's final status after its child exits, by exit code, and
  overwrites a KILLED the child set: MLflow 3.17's `_maybe_set_run_terminated` passes the
  status string to `RunStatus.is_terminated`, which compares integers. `keep_status` starts
  a small detached process that waits for the launcher to exit and puts the status back.
"""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
LAUNCHER_POLL_SECONDS = 0.5
KEEP_STATUS_TIMEOUT_SECONDS = 600  # the keeper gives up on a launcher that outlives this
SHELLS = ("sh", "bash", "dash", "zsh")
STOP_GRACE_SECONDS = 5.0  # a training that has not stopped by then is stopped from outside TensorFlow
EXIT_STOPPED = 130
# SQLAlchemy names a pool's logger after its class: the pools MLFLOW_SQLALCHEMYSTORE_POOLCLASS offers.
SQLALCHEMY_POOLS = (
    "QueuePool",
    "NullPool",
    "StaticPool",
    "SingletonThreadPool",
    "AssertionPool",
    "AsyncAdaptedQueuePool",
)
SQLALCHEMY_POOL_LOGGERS = tuple(f"sqlalchemy.pool.impl.{pool}" for pool in SQLALCHEMY_POOLS)


class Stopped(KeyboardInterrupt):
    """A stop signal, or the launcher's exit: the run ends KILLED. Its text says which."""


_state = {}


_forced_stop_hooks = []
_watchdog = {}


def _on_stop_signal(signum, frame):
    if _state.get("cause"):  # ending already: do not cut the ending short
        if signum == _state["signum"] and not _state.get("noted"):  # the same signal again: the user insists
            _state["noted"] = True
            _print_quietly(f"{signal.Signals(signum).name}: stopping already; SIGKILL forces it")
        return
    _state.update(signum=signum, cause=_stop_cause(signum))
    if not _state.get("deferred"):
        _state["raised"] = True
        raise Stopped(_state["cause"])


def _stop_cause(signum):
    return _state.get("launcher_cause") or signal.Signals(signum).name


def _print_quietly(line):
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def handle_stop_signals():
    """SIGTERM and SIGINT raise `Stopped`, even where the process started with them ignored."""
    _state.clear()
    _state["deferred"] = 0
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_stop_signal)
    sys.unraisablehook = _quiet_about_discarded_stops
    for name in SQLALCHEMY_POOL_LOGGERS:
        logging.getLogger(name).addFilter(_quiet_about_cursors_closed_by_a_stop)


def _quiet_about_cursors_closed_by_a_stop(record):
    """A stop that lands inside a query makes SQLAlchemy close the connection (it takes a
    KeyboardInterrupt for a lost one), then log, with a traceback, that the cursor could not be
    closed. The query is abandoned either way and the run still ends KILLED: drop that record."""
    error = record.exc_info[1] if record.exc_info else None
    return not (error is not None and isinstance(error.__context__, Stopped))


def _quiet_about_discarded_stops(unraisable):
    """Python reports an exception it had to discard (one raised in a weakref callback or a
    `__del__`) with a traceback. A discarded `Stopped` is raised again where the code checks
    for it (`raise_if_stopped`): say nothing of it. Anything else is reported as Python does."""
    if not isinstance(unraisable.exc_value, Stopped):
        sys.__unraisablehook__(unraisable)


@contextlib.contextmanager
def held():
    """Inside, a stop signal is only recorded, to be raised by the next `raise_if_stopped`.

    Blocking the signals (`pthread_sigmask`) would not do: the kernel hands a process's signal
    to any thread that lets it through (a heartbeat's, TensorFlow's), and Python then runs the
    handler in the main thread all the same, at whatever line it has reached.
    """
    _state["deferred"] = _state.get("deferred", 0) + 1
    try:
        yield
    finally:
        _state["deferred"] -= 1


@contextlib.contextmanager
def deferred():
    """Inside, a stop signal is only recorded, to be raised by `raise_if_stopped`; and at the end.
    A stop that is not raised within STOP_GRACE_SECONDS is forced (`arm_watchdog`)."""
    _state["training"] = _state.get("training", 0) + 1
    try:
        with held():
            yield
    finally:
        _state["training"] -= 1
    raise_if_stopped()


def run_started():
    """Note that this process started (or resumed) a run: a stop then ends it KILLED."""
    _state["runs"] = _state.get("runs", 0) + 1


def any_run_started():
    return bool(_state.get("runs"))


def advise_after_stop(advice):
    """What the user can do once a stop has ended the command (the command that resumes the
    stopped run): said in the line that reports the stop."""
    _state["advice"] = advice


def advice_after_stop():
    return _state.get("advice")


def stop_received():
    """The `Stopped` a stop signal raised, or None if none came. Code that swallowed it (an
    import half done under a stop, say) fails later in its own way: that failure is the stop's."""
    return Stopped(_state["cause"]) if _state.get("cause") else None


def raise_if_stopped():
    """Raise `Stopped` again if a stop signal came: its first exception may have been discarded."""
    if _state.get("cause"):
        _state["raised"] = True
        raise Stopped(_state["cause"])


@contextlib.contextmanager
def on_forced_stop(hook):
    """While inside, `hook(cause)` runs if the watchdog must force a stop: it ends what the
    main thread, stuck, cannot (a run, a trial). Hooks run innermost first."""
    _forced_stop_hooks.append(hook)
    try:
        yield
    finally:
        _forced_stop_hooks.remove(hook)


def arm_watchdog():
    """Force stops that a training cannot raise in time (see the module's docstring). For a
    command's own process: the watchdog ends the process. Call it from the main thread."""
    if "fd" not in _watchdog:
        read, write = os.pipe()
        os.set_blocking(write, False)
        threading.Thread(target=_watch, args=(read,), name="stop-watchdog", daemon=True).start()
        _watchdog["fd"] = write
    signal.set_wakeup_fd(_watchdog["fd"], warn_on_full_buffer=False)


def _watch(read):
    stop_signals = {int(signum) for signum in STOP_SIGNALS}
    while True:
        signums = [signum for signum in os.read(read, 64) if signum in stop_signals]
        if not signums:
            continue
        time.sleep(STOP_GRACE_SECONDS)
        if _state.get("training") and not _state.get("raised"):
            _force_stop(_state.get("cause") or _stop_cause(signums[0]))


def _force_stop(cause):
    _state["cause"] = cause
    for hook in reversed(list(_forced_stop_hooks)):
        try:
            hook(cause)
        except Exception as error:  # the others must still run, and the process end
            _print_quietly(f"warning: while forcing the stop: {error}")
    os._exit(EXIT_STOPPED)


# --- launchers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Launcher:
    """The process that started this one for a run, and what it is."""

    pid: int
    description: str  # 'mlflow run (pid 123)'
    is_mlflow_cli: bool  # True: `mlflow run`, which overwrites the final status


def find_launcher():
    """The launcher when `mlflow run` or `mlflow.projects.run` started this process for a
    run (MLFLOW_RUN_ID is set), skipping the `bash -c` that MLflow runs the command in."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        return None
    try:
        process = psutil.Process().parent()
        while process is not None and Path(process.name()).name in SHELLS and process.pid > 1:
            process = process.parent()
        if process is None or process.pid <= 1:
            return None
        words = process.cmdline()
    except psutil.Error:
        return None
    is_mlflow_cli = "run" in words and any(Path(word).name == "mlflow" for word in words[:3])
    what = "mlflow run" if is_mlflow_cli else Path(words[0]).name if words else "launcher"
    return Launcher(process.pid, f"{what} (pid {process.pid})", is_mlflow_cli)


def parent_launcher(what):
    """This process's parent as its launcher (a sweep worker's coordinator)."""
    pid = os.getppid()
    return Launcher(pid, f"{what} (pid {pid})", False)


def alive(process):
    """True while `process` (a pid or a psutil.Process) runs; a zombie, dead but not yet
    reaped, is not alive, nor is a process whose pid now belongs to another."""
    try:
        process = psutil.Process(process) if isinstance(process, int) else process
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def watch_launcher(launcher):
    """Stop this process (as SIGTERM does) once `launcher` is gone."""

    try:
        process = psutil.Process(launcher.pid)
    except psutil.NoSuchProcess:
        process = None

    def watch():
        while process is not None and alive(process):
            time.sleep(LAUNCHER_POLL_SECONDS)
        _state["launcher_cause"] = f"its launcher, {launcher.description}, exited"
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def keep_status(launcher, run_id, status):
    """After `mlflow run` (the launcher) exits, put the run's status back to `status`."""
    if launcher is None or not launcher.is_mlflow_cli or not alive(launcher.pid):
        return
    subprocess.Popen(
        [sys.executable, "-m", "pipelines.stopping", "keep", run_id, status, str(launcher.pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the terminal's process group must not stop it
        env={**os.environ, "MLFLOW_RUN_ID": ""},
    )


def _keep(run_id, status, launcher_pid):
    import mlflow  # first, so the status is put back as soon as the launcher is gone

    deadline = time.monotonic() + KEEP_STATUS_TIMEOUT_SECONDS
    while alive(launcher_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    client = mlflow.MlflowClient()
    if client.get_run(run_id).info.status != status:
        client.set_terminated(run_id, status)
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["keep"]:
    sys.exit(_keep(sys.argv[2], sys.argv[3], int(sys.argv[4])))
