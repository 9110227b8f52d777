"""What keeping run states true costs, and how fast a stop takes effect, on `mnist_cnn` over full MNIST.

    python benchmarks/run_states.py [--data-dir ../shared/data] [--repeats 3]

- Stop latency: a training stopped mid-epoch, from the signal to the moment its run ended
  (the run's end time in the store) and to its process's exit: SIGTERM to
  `python -m pipelines train`, SIGTERM to `mlflow run` (its child notices the launcher's
  exit), and Ctrl-C to `mlflow run` (the run is KILLED again once MLflow, which writes
  FAILED, has exited).
- System metrics: epoch times of runs sampling them every 10 s (the default) and every
  1 s, against runs with none, alternated.
- Heartbeat: the time one heartbeat takes (a tag written to the store), as a share of
  the interval between two.
- Checkpoints: the time each epoch's checkpoint takes (timed inside the training), against
  the epoch's; the disk a run's artifacts take; and the time from the resume command to
  its first new epoch, against a new run's time to its first epoch.

Results go to benchmarks/run_states.md.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import psutil

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
from report import figures_table, met, stamp, versions, write_results  # noqa: E402  (benchmarks/report.py)

from pipelines import checkpoints, liveness, schema, stopping  # noqa: E402

REPORT = PROJECT / "benchmarks" / "run_states.md"
DEFAULT_DATA = PROJECT.parent / "shared" / "data"
METRICS_EPOCHS = 4  # the first traces the model: the others are compared
HEARTBEATS = 50
STOP_TARGET_S = 10.0  # from the signal to the run's end and the process's exit
CHECKPOINT_SHARE_TARGET = 0.02  # of an epoch
WAYS = ("train SIGTERM", "train SIGTERM as an epoch starts", "mlflow run SIGTERM", "mlflow run Ctrl-C")


def new_experiment(client, name):
    """An experiment whose artifacts stay in the benchmark's temporary folder, beside its store."""
    folder = Path(client.tracking_uri.removeprefix("sqlite:///")).parent / "artifacts" / name
    return client.create_experiment(f"{name}-{time.time_ns()}", artifact_location=str(folder))


def train_command(data, epochs):
    return [sys.executable, "-m", "pipelines", "train", "--task", "mnist_cnn", "--data", data, "--epochs", str(epochs)]


def mlflow_run_command(data, epochs):
    return [
        *(sys.executable, "-m", "mlflow", "run", ".", "-e", "mnist_cnn", "--env-manager", "local"),
        *("-P", f"data={data}", "-P", f"epochs={epochs}"),
    ]


def start(command, env):
    return subprocess.Popen(
        command,
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_epoch(client, experiment_id, epochs=1, timeout=600):
    """The RUNNING run of the experiment once `epochs` epochs have ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
        if found and len(client.get_metric_history(found[0].info.run_id, "epoch_time_s")) >= epochs:
            return client.get_run(found[0].info.run_id)
        time.sleep(0.2)
    raise SystemExit("the training never got going")


def stop_latency(how, data, env, client):
    """(seconds to the run's end, seconds to the training process's exit, final status)."""
    experiment_id = new_experiment(client, f"stop-{how}")
    env = {**env, "MLFLOW_EXPERIMENT_ID": experiment_id}
    command = train_command(data, 100) if how.startswith("train") else mlflow_run_command(data, 100)
    launcher = start(command, env)
    run = wait_for_epoch(client, experiment_id)
    training = psutil.Process(int(run.data.tags[schema.PID_TAG]))
    if not how.endswith("as an epoch starts"):
        time.sleep(2.0)  # mid-epoch
    sent = time.time()
    if how == "mlflow run Ctrl-C":
        os.killpg(launcher.pid, signal.SIGINT)
    else:
        launcher.send_signal(signal.SIGTERM)
    training.wait(timeout=120)
    exited = time.time() - sent
    launcher.wait(timeout=120)
    status, deadline = None, time.monotonic() + 60
    while time.monotonic() < deadline:
        info = client.get_run(run.info.run_id).info
        status = info.status
        if status == "KILLED":
            break
        time.sleep(0.1)
    return info.end_time / 1000 - sent, exited, status


def epoch_seconds(data, env, client, interval):
    experiment_id = new_experiment(client, f"metrics-{interval}")
    env = {**env, "MLFLOW_EXPERIMENT_ID": experiment_id}
    command = [*train_command(data, METRICS_EPOCHS), "--system_metrics_interval", str(interval)]
    subprocess.run(command, cwd=PROJECT, env=env, check=True, capture_output=True)
    (run,) = client.search_runs([experiment_id])
    return [m.value for m in client.get_metric_history(run.info.run_id, "epoch_time_s")][1:]


def checkpoint_probe(data):
    """In this process: one 3-epoch run, timing each checkpoint write inside it."""
    from experiments import resolve
    from pipelines.params import parse_params
    from pipelines.train import train

    writes = []
    write = checkpoints.RunCheckpoint._save_model

    def timed_write(self):
        start = time.perf_counter()
        write(self)
        writes.append(time.perf_counter() - start)

    checkpoints.RunCheckpoint._save_model = timed_write
    task, variant = resolve("mnist_cnn")
    mlflow.set_experiment(experiment_id=os.environ["MLFLOW_EXPERIMENT_ID"])
    result = train(task, variant, parse_params(task, variant, {"data": data, "epochs": "3"}))
    epochs = [m.value for m in mlflow.MlflowClient().get_metric_history(result.run_id, "epoch_time_s")]
    artifacts = Path(mlflow.get_run(result.run_id).info.artifact_uri.removeprefix("file://"))
    print(
        json.dumps(
            {
                "run_id": result.run_id,
                "writes": writes,
                "epochs": epochs,
                "checkpoint_bytes": _bytes(artifacts / "checkpoints"),
                "run_bytes": _bytes(artifacts),
            }
        )
    )


def _bytes(folder):
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def first_epoch_seconds(command, env):
    """Seconds from starting `command` to Keras announcing its first epoch (verbose 2 prints it as it starts)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    for line in process.stdout:
        if line.startswith("Epoch "):
            seconds = time.perf_counter() - start
            break
    process.wait()
    return seconds


def heartbeat_seconds(client):
    run_id = client.create_run(new_experiment(client, "heartbeat")).info.run_id
    times = []
    for _ in range(HEARTBEATS):
        start = time.perf_counter()
        client.set_tag(run_id, schema.HEARTBEAT_TAG, liveness.timestamp(liveness.now()))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _write_share(probes):
    return statistics.median(statistics.median(p["writes"]) / statistics.median(p["epochs"]) for p in probes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe-checkpoints", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_checkpoints:
        return checkpoint_probe(args.probe_checkpoints)
    data = str((args.data_dir / "mnist.npz").resolve())
    folder = Path(tempfile.mkdtemp(prefix="run-states-"))
    uri = f"sqlite:///{folder}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)

    stops = {how: [] for how in WAYS}
    for _ in range(args.repeats):
        for how in stops:
            stops[how].append(stop_latency(how, data, env, client))
            print(how, stops[how][-1], flush=True)
    epochs = {interval: [] for interval in (0, 10, 1)}
    for _ in range(args.repeats):
        for interval in epochs:
            epochs[interval] += epoch_seconds(data, env, client, interval)
            print("system metrics", interval, epochs[interval][-3:], flush=True)
    beat = heartbeat_seconds(client)
    probes, env = [], {**env, "MLFLOW_EXPERIMENT_ID": new_experiment(client, "checkpoints")}
    for _ in range(args.repeats):
        completed = subprocess.run(
            [sys.executable, __file__, "--probe-checkpoints", data],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
        )
        probes.append(json.loads([line for line in completed.stdout.splitlines() if line.startswith("{")][-1]))
    resumed, fresh = [], []
    for probe in probes:
        fresh.append(first_epoch_seconds([*train_command(data, 4)], env))
        resumed.append(first_epoch_seconds([*train_command(data, 4), "--resume", probe["run_id"]], env))

    summary = {"stops": {}}
    for how, runs in stops.items():
        ended, gone, statuses = zip(*runs, strict=True)
        summary["stops"][how] = {
            "ended": [statistics.median(ended), max(ended)],
            "gone": [statistics.median(gone), max(gone)],
            "statuses": sorted(set(statuses)),
        }
    summary |= {
        "epoch_s": {interval: statistics.median(seconds) for interval, seconds in epochs.items()},
        "heartbeat_s": beat,
        "checkpoint": {
            "write_s": statistics.median(w for p in probes for w in p["writes"]),
            "epoch_s": statistics.median(e for p in probes for e in p["epochs"]),
            "share": _write_share(probes),
            "checkpoint_mib": probes[0]["checkpoint_bytes"] / 2**20,
            "run_mib": probes[0]["run_bytes"] / 2**20,
            "first_epoch_new_s": statistics.median(fresh),
            "first_epoch_resumed_s": statistics.median(resumed),
        },
    }
    command = "python benchmarks/run_states.py" + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
    write_report(summary, args.repeats, command, stamp())
    print(REPORT.read_text())


def write_report(summary, repeats, command, measured):
    """The figures table from `summary` (medians and maxima, as `main` computes them)."""

    def row(figure, value, target=""):
        return (figure, value, target, command, measured["date"], measured["machine"])

    rows = []
    for how, stop in summary["stops"].items():
        (ended, ended_max), (gone, gone_max) = stop["ended"], stop["gone"]
        rows.append(
            row(
                f"Stop, {how}: from the signal to the run's end, and to the training process's exit",
                f"{ended:.2f} s and {gone:.2f} s (max {ended_max:.2f} s and {gone_max:.2f} s); "
                f"the run ends {', '.join(stop['statuses'])}",
                f"≤ {STOP_TARGET_S:.0f} s, {met(max(ended_max, gone_max) <= STOP_TARGET_S)}",
            )
        )
    none = summary["epoch_s"][0]
    for interval, seconds in summary["epoch_s"].items():
        label = "off" if interval == 0 else f"sampled every {interval} s" + (" (the default)" if interval == 10 else "")
        rows.append(
            row(f"System metrics {label}: median epoch, and against off", f"{seconds:.2f} s, {seconds / none:.2f}")
        )
    beat = summary["heartbeat_s"]
    rows.append(
        row(
            f"Heartbeat: one tag written to the store, once every {liveness.HEARTBEAT_SECONDS} s from its own thread",
            f"{beat * 1000:.1f} ms (median of {HEARTBEATS}), {beat / liveness.HEARTBEAT_SECONDS:.4%} of the time",
        )
    )
    c = summary["checkpoint"]
    rows += [
        row("Checkpoint: one epoch's write (median)", f"{c['write_s']:.3f} s"),
        row("Checkpoint: an epoch (median)", f"{c['epoch_s']:.2f} s"),
        row(
            "Checkpoint: its write against its epoch (median of runs)",
            f"{c['share']:.2%}",
            f"≤ {CHECKPOINT_SHARE_TARGET:.0%}, {met(c['share'] <= CHECKPOINT_SHARE_TARGET)}",
        ),
        row(
            "Checkpoint: disk, the run's checkpoint / all its artifacts",
            f"{c['checkpoint_mib']:.2f} MiB / {c['run_mib']:.2f} MiB",
        ),
        row(
            "From the command to the first epoch: a new run / resuming (median)",
            f"{c['first_epoch_new_s']:.1f} s / {c['first_epoch_resumed_s']:.1f} s",
        ),
    ]
    lines = [
        "# Run states: stop latency, system metrics, heartbeat, checkpoints",
        "",
        *figures_table(rows),
        "",
        "## Method",
        "",
        f"- `mnist_cnn` (default recipe) on full MNIST, tracking store SQLite. {versions()}.",
        '- A stop is sent 2 s into the second epoch, or ("as an epoch starts") as soon as the first epoch\'s '
        "metrics are in the store, while TensorFlow starts the second epoch's input pipeline. The training "
        "raises it at the end of the steps under way; where TensorFlow runs no Python for longer, a watchdog "
        f"ends the run KILLED after {stopping.STOP_GRACE_SECONDS:.0f} s. The run's end is its end time in the "
        "store; for Ctrl-C on `mlflow run`, when KILLED replaces the FAILED that MLflow writes once it has exited.",
        f"- System metrics: epochs 2 to {METRICS_EPOCHS} (the first traces the model) of {repeats} "
        f"run{'s' if repeats != 1 else ''} per "
        "setting, alternated.",
        "- Checkpoints: every epoch's (weights and optimizer state, the generators' states, history), written "
        "to the run's artifacts and the one before deleted, timed inside 3-epoch runs. The first epoch is "
        "when Keras announces it.",
    ]
    write_results(REPORT, "\n".join(lines))


if __name__ == "__main__":
    main()
