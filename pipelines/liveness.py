"""Whether a run's process still lives: where it runs and a heartbeat on every run, and
`reap`, which ends the runs whose process is gone.

MLflow has no heartbeat: a run whose process was SIGKILLed (an OOM kill, a lost node)
stays RUNNING forever (mlflow/mlflow#3932). Every run this project starts records its
host, process id and process start time, and a heartbeat tag every HEARTBEAT_SECONDS
while the process lives. `reap` ends each RUNNING run whose heartbeat is older than
`stale_after`, or whose process on this host is gone, as FAILED with the reason in a tag.
It changes nothing else, so the run keeps all it logged.

    python -m pipelines reap [--stale_after 300] [--experiment NAME] [--dry_run]
"""

import datetime
import os
import socket
import sys
import threading
import time

import psutil

from experiments import InputError, Param
from pipelines import schema
from pipelines.params import MAX_EXPERIMENT_NAME
from pipelines.stopping import alive

HEARTBEAT_SECONDS = 30
SAME_PROCESS_SECONDS = 1.0  # process start times further apart than this: the pid was reused
SETTINGS = {
    "stale_after": Param(
        int,
        300,
        "seconds without a heartbeat after which a RUNNING run is stale (heartbeats come every "
        f"{HEARTBEAT_SECONDS} s); a run on this host whose process is gone is stale at once",
        ge=2 * HEARTBEAT_SECONDS,
    ),
    "experiment": Param(
        str, "", "reap only this MLflow experiment; empty: every experiment", max_length=MAX_EXPERIMENT_NAME
    ),
    "dry_run": Param(bool, False, "list the stale runs and change nothing"),
}


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def timestamp(moment):
    return moment.isoformat(timespec="seconds")


def this_process():
    """Where this process runs, and a first heartbeat."""
    started = f"{psutil.Process().create_time():.2f}"
    return schema.RunProcess(socket.gethostname(), str(os.getpid()), started, timestamp(now()))


def process_tags():
    """Tags for a run this process starts: where it runs, and a first heartbeat."""
    return schema.process_tags(this_process())


class Heartbeat:
    """One thread per process that tags each of the process's open runs every HEARTBEAT_SECONDS."""

    def __init__(self, seconds=HEARTBEAT_SECONDS):
        self.seconds = seconds
        self._runs = {}  # run id -> tracking URI
        self._lock = threading.Lock()
        self._thread = None
        self._warned = False

    def add(self, run_id, tracking_uri):
        with self._lock:
            self._runs[run_id] = tracking_uri
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat, name="run-heartbeat", daemon=True)
                self._thread.start()

    def remove(self, run_id):
        with self._lock:
            self._runs.pop(run_id, None)

    def _beat(self):
        import mlflow

        while True:
            time.sleep(self.seconds)
            with self._lock:
                runs = dict(self._runs)
            for run_id, uri in runs.items():
                try:
                    mlflow.MlflowClient(uri).set_tag(run_id, schema.HEARTBEAT_TAG, timestamp(now()))
                except Exception as error:  # a store that is briefly away must not stop the training
                    if not self._warned:
                        self._warned = True
                        print(f"warning: heartbeat of run {run_id} not recorded ({error})", file=sys.stderr)


HEARTBEAT = Heartbeat()


# --- reap ----------------------------------------------------------------------------------


def staleness(run, stale_after, moment, host=None):
    """Why the RUNNING `run` is stale, or None while its process may still live."""
    tags = run.data.tags
    host = host or socket.gethostname()
    process = schema.process_of(tags)
    if process is not None:
        if process.host == host and not same_process_alive(process.pid, process.started):
            return f"its process {process.pid} on {host} is gone"
        try:
            last = datetime.datetime.fromisoformat(process.heartbeat)
        except ValueError:
            return f"its heartbeat tag is unreadable ({process.heartbeat[:40]!r})"
        silent = (moment - last).total_seconds()
        if silent > stale_after:
            return f"no heartbeat for {_duration(silent)} (last {process.heartbeat}, from {process.host})"
        return None
    # A run `mlflow run` created whose command never started has no heartbeat, only MLflow's tags.
    if schema.PROJECT_ENTRY_POINT_TAG in tags:
        started = datetime.datetime.fromtimestamp(run.info.start_time / 1000, datetime.timezone.utc)
        silent = (moment - started).total_seconds()
        if silent > stale_after:
            return f"started by mlflow run {_duration(silent)} ago, its command never reported"
    return None  # not a run of this project: left alone


def same_process_alive(pid, started):
    """True while process `pid` of this host, started at `started` (as a RunProcess says), runs."""
    try:
        process = psutil.Process(int(pid))
        started = float(started)
    except (ValueError, psutil.NoSuchProcess):
        return False
    except psutil.Error:
        return True
    return alive(process) and abs(process.create_time() - started) < SAME_PROCESS_SECONDS


def _duration(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def reap(stale_after, experiment, dry_run):
    """End every stale RUNNING run FAILED, tagged with why; return [(run, reason)]."""
    import mlflow

    from pipelines import tracking

    tracking.open_store()
    client = mlflow.MlflowClient()
    experiment_ids = None
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise InputError(f"experiment: no experiment named '{experiment}'")
        experiment_ids = [found.experiment_id]
    running = mlflow.search_runs(
        experiment_ids=experiment_ids,
        search_all_experiments=experiment_ids is None,
        filter_string="attributes.status = 'RUNNING'",
        output_format="list",
    )
    moment, own = now(), os.environ.get("MLFLOW_RUN_ID")  # `mlflow run . -e reap` made a run for itself
    stale = [(run, why) for run in running if run.info.run_id != own and (why := staleness(run, stale_after, moment))]
    names = {}
    for run, reason in stale:
        if not dry_run:
            client.set_tag(run.info.run_id, schema.REAP_REASON_TAG, reason)
            client.set_tag(run.info.run_id, schema.REAPED_AT_TAG, timestamp(moment))
            client.set_terminated(run.info.run_id, "FAILED")
        experiment_id = run.info.experiment_id
        if experiment_id not in names:
            names[experiment_id] = client.get_experiment(experiment_id).name
        verb = "stale" if dry_run else "reaped, now FAILED"
        print(f"{verb}: run {run.info.run_id} ({run.info.run_name}, experiment {names[experiment_id]}): {reason}")
    if not stale:
        print(f"no stale runs ({len(running)} RUNNING, each with a live process or a heartbeat within {stale_after} s)")
    return stale
