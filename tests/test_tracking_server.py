"""The same entry point, unchanged, against a real `mlflow server` instead of the embedded store;
and a run resumed through it on another machine, as far as one machine can show it."""

import shutil
import subprocess
import sys

import mlflow
import pytest

from pipelines import checkpoints
from tests.helpers import free_port, run_cli, wait_until_serving


@pytest.fixture
def server(tmp_path, monkeypatch, migrated_store):
    shutil.copy(migrated_store, tmp_path / "server.db")  # the schema is there: the server starts at once
    port = free_port()
    artifacts = tmp_path / "served-artifacts"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)),
            *("--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(artifacts)),
            *("--workers", "1"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/health", process, timeout=90)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        yield url, artifacts
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_training_through_the_server_resumes_from_another_folder_with_its_first_files_gone(server, tmp_path, mnist_npz):
    """The first machine trains 2 epochs, its files proxied to the server's artifact store, and
    is gone; another, with its own copy of the data, gives the finished run a third epoch from
    the checkpoint the server keeps."""
    url, artifacts = server
    recipe = ["--task", "mnist_cnn", "--batch_size", "16", "--filters", "4", "--units", "8"]
    first, second = tmp_path / "first-machine", tmp_path / "second-machine"
    for folder in (first, second):
        folder.mkdir()
        shutil.copy(mnist_npz, folder / "mnist.npz")
    completed = run_cli("train", *recipe, "--epochs", "2", "--data", first / "mnist.npz", cwd=first)
    assert completed.returncode == 0, completed.stderr[-3000:]
    client = mlflow.MlflowClient(url)
    (run,) = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])  # the task's experiment
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "loss")) == 2
    assert "figures/learning_curves.png" in {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert any(artifacts.rglob("learning_curves.png"))  # proxied to the server's artifact store
    shutil.rmtree(first)

    completed = run_cli(
        "train", *recipe, "--epochs", "3", "--data", second / "mnist.npz", "--resume", run.info.run_id, cwd=second
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    resumed = client.get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["resume.from_epoch"] == "2" and resumed.data.tags["resume.epochs"] == "3"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2]
    # The server deleted the superseded checkpoint through its artifact proxy.
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [checkpoints.folder(3)]
