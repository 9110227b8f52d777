"""docker/compose.yaml's stack, run here as plain processes (no Docker engine on these machines).

Each process is the compose service's own command and environment, started through the
image's entrypoint (docker/entrypoint.sh), with this machine's addresses in place of the
stack's: the local PostgreSQL for the `postgres` service, 127.0.0.1 and a free port for the
server, temporary folders for the volumes, a temporary file for the secret.
"""

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import mlflow
import numpy as np
import optuna
import psutil
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tests.conftest import POSTGRES_SERVER, write_mnist_npz
from tests.helpers import DOCKER, LOCAL, PROJECT, free_port, load_compose, wait_until_serving

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ENTRYPOINT = str(DOCKER / "entrypoint.sh")
DB_ROLE = "mlflow"  # the role compose's URIs name
SWEEP_TRIALS = 6
# This process's store and credentials, which a service must not inherit unless compose sets them.
NOT_INHERITED = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "PGPASSWORD")


@pytest.fixture(scope="module")
def databases():
    """make(purpose) -> a fresh database owned by compose's role; all dropped afterwards."""
    admin = sqlalchemy.create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    created = []
    with admin.connect() as connection, contextlib.suppress(sqlalchemy.exc.DBAPIError):
        # Tests run in parallel may create it at the same moment: one of them finds it there.
        if not connection.execute(sqlalchemy.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": DB_ROLE}).first():
            connection.execute(sqlalchemy.text(f"CREATE ROLE {DB_ROLE} LOGIN"))

    def make(purpose):
        name = f"deploy_{purpose}_{uuid.uuid4().hex[:10]}"
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {name} OWNER {DB_ROLE}"))
        created.append(name)
        return name

    yield make
    with admin.connect() as connection:
        for name in created:
            connection.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


def on_this_machine(uri, database):
    """A compose URI (`...@postgres:5432/mlflow`) pointed at the local server's `database`."""
    return sqlalchemy.engine.make_url(uri).set(host="127.0.0.1", port=5432, database=database).render_as_string(False)


def server_env(environment, port, folder, databases):
    """The mlflow service's environment as compose sets it, on 127.0.0.1 against this machine's PostgreSQL."""
    return {
        **environment,
        "MLFLOW_BACKEND_STORE_URI": on_this_machine(environment["MLFLOW_BACKEND_STORE_URI"], databases("mlflow")),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_ARTIFACTS_DESTINATION": str(folder / "mlartifacts"),
        "POSTGRES_PASSWORD_FILE": str(folder / "postgres_password"),
    }


def start(command, env, log_path, cwd):
    """`command` through the image's entrypoint, as the container runs it."""
    environment = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name in NOT_INHERITED:
        if name not in env:
            environment.pop(name, None)
    log = open(log_path, "w")
    return subprocess.Popen([ENTRYPOINT, *command], cwd=cwd, env=environment, stdout=log, stderr=subprocess.STDOUT)


def finish(process, log_path, timeout=600):
    process.wait(timeout=timeout)
    return process.returncode, Path(log_path).read_text()


@pytest.fixture(scope="module")
def stack(databases, tmp_path_factory):
    """The mlflow service on 127.0.0.1 against the local PostgreSQL, and what the others need."""
    folder = tmp_path_factory.mktemp("stack")
    secret = f"s3cret-{uuid.uuid4().hex}"  # PostgreSQL trusts local connections; this must never show
    (folder / "postgres_password").write_text(secret + "\n")
    port = free_port()
    service = load_compose(variables={"MLFLOW_PORT": str(port)})["services"]["mlflow"]
    env = server_env(service["environment"], port, folder, databases)
    server = start(service["command"], env, folder / "server.log", cwd=folder)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/health", server, timeout=120)
        yield {
            "url": url,
            "port": port,
            "folder": folder,
            "secret": secret,
            "optuna_db": databases("optuna"),
            "mnist": write_mnist_npz(folder / "mnist.npz"),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert secret not in (folder / "server.log").read_text()


def client_env(service, stack):
    """A compose client service's environment, pointed at the server on this machine."""
    return {
        **service["environment"],
        "MLFLOW_TRACKING_URI": stack["url"],
        "POSTGRES_PASSWORD_FILE": str(stack["folder"] / "postgres_password"),
    }


def assert_secret_never_shown(stack, *outputs):
    for output in outputs:
        assert stack["secret"] not in output
    assert stack["secret"] not in (stack["folder"] / "server.log").read_text()
    client = mlflow.MlflowClient(stack["url"])
    experiments = client.search_experiments()
    for run in client.search_runs([e.experiment_id for e in experiments]):
        logged = {**run.data.params, **run.data.tags}
        assert not [key for key, value in logged.items() if stack["secret"] in value]


def get(url, host, auth=None):
    """The status code of GET `url` sent with this Host header (and basic auth)."""
    request = urllib.request.Request(url, headers={"Host": host})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with LOCAL.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_server_refuses_a_foreign_host_header(stack):
    search = f"{stack['url']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert get(search, f"127.0.0.1:{stack['port']}") == 200
    assert get(search, f"localhost:{stack['port']}") == 200
    assert get(search, "attacker.example.com") == 403  # a DNS-rebinding page would send this
    assert get(search, "mlflow.attacker.example.com:5000") == 403


def test_the_trainer_runs_its_entry_point_against_the_server(stack):
    service = load_compose()["services"]["trainer"]
    assert service["command"][:3] == ["mlflow", "run", "."]
    log = stack["folder"] / "trainer.log"
    # The service's own command (mnist_cnn), shrunk to one epoch of tiny data.
    command = [*service["command"], "-P", f"data={stack['mnist']}", "-P", "epochs=1"]
    code, output = finish(start(command, client_env(service, stack), log, cwd=PROJECT), log)
    assert code == 0, output[-3000:]

    client = mlflow.MlflowClient(stack["url"])
    experiment = client.get_experiment_by_name(service["command"][service["command"].index("--experiment-name") + 1])
    (run,) = client.search_runs([experiment.experiment_id], "tags.`mlflow.project.entryPoint` = 'mnist_cnn'")
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 1 and "test_accuracy" in run.data.metrics
    (model,) = [
        m for m in client.search_logged_models([experiment.experiment_id]) if m.source_run_id == run.info.run_id
    ]
    assert model.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server...
    assert any((stack["folder"] / "mlartifacts").rglob("MLmodel"))  # ...to its artifact volume
    assert_secret_never_shown(stack, output)


def test_stopping_the_trainer_ends_its_run_killed_before_the_container_ends(stack):
    """`docker stop trainer`: tini passes SIGTERM to the entrypoint's process (the supervisor).
    The container ends when that process exits, and SIGKILLs whatever is left then; so the
    training must have ended its run by then."""
    service = load_compose()["services"]["trainer"]
    log = stack["folder"] / "trainer-stopped.log"
    command = [*service["command"], "-P", f"data={stack['mnist']}", "-P", "epochs=100000", "-P", "batch_size=120"]
    container = start(command, client_env(service, stack), log, cwd=PROJECT)
    client = mlflow.MlflowClient(stack["url"])
    run = _training_run_when_started(client, container, log)
    container.send_signal(signal.SIGTERM)
    code, output = finish(container, log, timeout=120)
    assert code == 128 + signal.SIGTERM, output[-3000:]  # `mlflow run`, stopped, as the container's exit code
    assert not psutil.pid_exists(int(run.data.tags["process.pid"]))  # ended before the container did
    stopped = client.get_run(run.info.run_id)
    assert stopped.info.status == "KILLED", output[-3000:]
    assert "Traceback" not in output and "the run ended KILLED" in output


def _training_run_when_started(client, container, log, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert container.poll() is None, Path(log).read_text()[-3000:]
        experiment = client.get_experiment_by_name("mnist")
        found = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
        if found and client.get_metric_history(found[0].info.run_id, "epoch_time_s"):
            return client.get_run(found[0].info.run_id)
        time.sleep(0.5)
    raise AssertionError("the trainer never started training")


def test_two_sweep_workers_share_one_study_and_the_champion_is_set_through_the_server(stack):
    service = load_compose(variables={"SWEEP_TRIALS": str(SWEEP_TRIALS)})["services"]["sweep-worker"]
    command = list(service["command"])
    storage_at = command.index("--storage") + 1
    command[storage_at] = on_this_machine(command[storage_at], stack["optuna_db"])
    command += ["--data", str(stack["mnist"]), "--epochs", "2"]  # shrunk: tiny data, 2 epochs per trial
    env = client_env(service, stack)
    logs = [stack["folder"] / f"worker-{index}.log" for index in range(2)]
    workers = [start(command, env, log, cwd=PROJECT) for log in logs]  # two replicas at once
    results = [finish(worker, log) for worker, log in zip(workers, logs, strict=True)]
    for code, output in results:
        assert code == 0, output[-3000:]

    study_name = command[command.index("--study_name") + 1]
    study = optuna.load_study(study_name=study_name, storage=command[storage_at])
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == SWEEP_TRIALS and len(trials) == SWEEP_TRIALS  # none lost, none extra
    assert sorted(t.number for t in trials) == list(range(SWEEP_TRIALS))
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers took trials
    assert len({tuple(sorted(t.params.items())) for t in trials}) == SWEEP_TRIALS  # no point sampled twice

    client = mlflow.MlflowClient(stack["url"])
    experiment = client.get_experiment_by_name("mnist")
    trial_runs = client.search_runs(
        [experiment.experiment_id], f"tags.sweep = 'trial' and tags.`optuna.study_name` = '{study_name}'"
    )
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in trial_runs) == list(range(SWEEP_TRIALS))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]  # a pruned trial's run is KILLED mid-fit
    assert {t.user_attrs["mlflow_run_id"] for t in complete} <= {r.info.run_id for r in trial_runs}
    assert all(r.info.status in ("FINISHED", "KILLED") for r in trial_runs)

    log = stack["folder"] / "promote.log"
    promote = ["python", "-m", "pipelines", "promote", "--task", "mnist_cnn", "--study", study_name]
    code, output = finish(start(promote, env, log, cwd=PROJECT), log)
    assert code == 0, output[-3000:]
    champion = client.get_model_version_by_alias("mnist_cnn", "champion")
    assert champion.tags["study"] == study_name and champion.run_id in {r.info.run_id for r in trial_runs}
    best = max(complete, key=lambda t: t.user_attrs["test_accuracy"])
    assert float(champion.tags["test_accuracy"]) == pytest.approx(best.user_attrs["test_accuracy"])

    mlflow.set_tracking_uri(stack["url"])  # load the champion back through the artifact proxy
    try:
        model = mlflow.pyfunc.load_model("models:/mnist_cnn@champion")
    finally:
        mlflow.set_tracking_uri(None)
    images = np.load(stack["mnist"])["x_test"][:4, :, :, None].astype("float32")  # 0-255, as the signature says
    assert np.asarray(model.predict(images)).shape == (4, 10)
    assert_secret_never_shown(stack, *(output for _, output in results), output)


def test_exposed_server_needs_basic_auth_with_the_changed_admin_password(databases, tmp_path):
    """compose.expose.yaml over compose.yaml: basic auth, our admin password, explicit hosts."""
    public_host = "mlflow.example.test"
    variables = {"MLFLOW_PUBLIC_HOST": public_host, "MLFLOW_BIND": "127.0.0.1", "MLFLOW_TRACKING_USERNAME": "trainer"}
    base = load_compose(variables=variables)["services"]["mlflow"]
    exposed = load_compose("compose.expose.yaml", variables)["services"]["mlflow"]
    admin_password = f"admin-{uuid.uuid4().hex}"
    (tmp_path / "mlflow_admin_password").write_text(admin_password)
    (tmp_path / "postgres_password").write_text("unused-with-trust-auth")
    (tmp_path / "mlflow_flask_secret_key").write_text(uuid.uuid4().hex)
    # basic_auth.ini as shipped, with its database on this machine.
    config = (DOCKER / "basic_auth.ini").read_text()
    shipped_uri = next(line.split("=", 1)[1].strip() for line in config.splitlines() if line.startswith("database_uri"))
    (tmp_path / "basic_auth.ini").write_text(
        config.replace(shipped_uri, on_this_machine(shipped_uri, databases("auth")))
    )
    port = free_port()
    env = {
        **server_env({**base["environment"], **exposed["environment"]}, port, tmp_path, databases),
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(tmp_path / "mlflow_admin_password"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE": str(tmp_path / "mlflow_flask_secret_key"),
    }
    log = tmp_path / "server.log"
    server = start(exposed["command"], env, log, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/health", server, timeout=120)
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert get(search, public_host) == 401
        assert get(search, public_host, ("admin", "password1234")) == 401  # MLflow's old public default
        assert get(search, public_host, ("admin", admin_password)) == 200
        assert get(search, "attacker.example.com", ("admin", admin_password)) == 403
        assert get(search, f"localhost:{port}", ("admin", admin_password)) == 403  # only the hosts named
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert admin_password not in log.read_text()
