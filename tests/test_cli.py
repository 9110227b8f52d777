"""The entry points as users call them: `python -m pipelines`, `mlflow run`, Ctrl-C and SIGTERM."""

import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest

from pipelines.__main__ import main
from tests.helpers import PROJECT, run_cli, runs


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "mnist_cnn", "--learning_rate", "abc"], "error: learning_rate: 'abc' is not a finite number"),
        (["--task", "mnist_cnn", "--epochs", "0"], "error: epochs: 0 is out of range"),
        (["--task", "mnist_cnn_dropout", "--dropout", "1.5"], "error: dropout: 1.5 is out of range"),
        (["--task", "mnist", "--variant", "cnn_xl"], "error: variant: unknown variant 'cnn_xl'"),
        (["--task", "cifar"], "error: task: unknown task 'cifar'"),
        (["--task", "xor", "--data", "x.csv"], "error: data: not a parameter of xor"),
        (["--task", "mnist_cnn", "--data", "/nonexistent/mnist.npz"], "error: MNIST file not found at /nonexistent/mnist.npz"),
        (["--task", "churn", "--epochs"], "error: epochs: missing value"),
    ],
)
def test_bad_input_is_one_error_line_and_no_run(argv, message, store, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert runs(store) == []


def test_bad_input_in_a_real_process_has_no_traceback(store):
    completed = run_cli("train", "--task", "mnist_cnn", "--learning_rate", "abc")
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1] == "error: learning_rate: 'abc' is not a finite number"
    assert "Traceback" not in completed.stderr


def mlflow_run(*args):
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "run", ".", "--env-manager", "local", *args],  # experiment: from env
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_mlflow_run_trains_and_the_store_has_the_whole_run(store):
    completed = mlflow_run("-e", "xor", "-P", "epochs=3")
    assert completed.returncode == 0, completed.stderr[-3000:]
    (run,) = runs(store)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3" and run.data.tags["mlflow.project.entryPoint"] == "xor"
    assert [m.step for m in store.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2]
    assert [m.step for m in store.get_metric_history(run.info.run_id, "epoch_time_s")] == [0, 1, 2]
    assert run.data.metrics["test_accuracy"] >= 0
    figures = {a.path for a in store.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/learning_curves.png", "figures/confusion_matrix.png"}
    (model_output,) = run.outputs.model_outputs
    model = mlflow.pyfunc.load_model(f"models:/{model_output.model_id}")
    assert model.metadata.saved_input_example_info is not None
    assert model.predict(np.array([[0, 1]], "float32")).shape == (1, 1)


@pytest.mark.slow
def test_mlflow_run_mnist_cnn_and_the_generic_train_entry_point(store, mnist_npz):
    completed = mlflow_run("-e", "mnist_cnn", "-P", "epochs=1", "-P", f"data={mnist_npz}")
    assert completed.returncode == 0, completed.stderr[-3000:]
    completed = mlflow_run(
        "-e", "train", "-P", "task=mnist", "-P", "variant=cnn_bn", "-P", "epochs=1", "-P", f"data={mnist_npz}", "-P", "filters=8"
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    by_variant = {run.data.tags["variant"]: run for run in runs(store)}
    assert set(by_variant) == {"cnn", "cnn_bn"}
    assert all(run.info.status == "FINISHED" for run in by_variant.values())
    assert by_variant["cnn_bn"].data.params["filters"] == "8"
    assert "test_accuracy" in by_variant["cnn"].data.metrics


@pytest.mark.slow
def test_mlflow_run_with_bad_input_fails_the_run_with_one_line(store):
    completed = mlflow_run("-e", "mnist_cnn", "-P", "learning_rate=abc")
    assert completed.returncode != 0
    assert "error: learning_rate: 'abc' is not a finite number" in completed.stderr
    (run,) = runs(store)
    assert run.info.status == "FAILED"


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "name"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")])
def test_interrupted_training_ends_the_run_killed(signum, name, store):
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "train", "--task", "xor", "--epochs", "100000"],
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the run is training
            started = runs(store)
            if started and store.get_metric_history(started[0].info.run_id, "epoch_time_s"):
                break
            time.sleep(0.5)
        else:
            pytest.fail("training never started")
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1].endswith("the run ended KILLED")
    (run,) = runs(store)
    assert run.info.status == "KILLED"
