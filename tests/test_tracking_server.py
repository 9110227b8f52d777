"""The same entry point, unchanged, against a real `mlflow server` instead of the embedded store."""

import shutil
import subprocess
import sys

import mlflow
import pytest

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
def test_training_against_a_tracking_server(server):
    url, artifacts = server
    completed = run_cli("train", "--task", "iris", "--epochs", "2")
    assert completed.returncode == 0, completed.stderr[-3000:]
    client = mlflow.MlflowClient(url)
    (run,) = client.search_runs([client.get_experiment_by_name("iris").experiment_id])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "loss")) == 2
    assert "figures/learning_curves.png" in {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert any(artifacts.rglob("learning_curves.png"))  # proxied to the server's artifact store
