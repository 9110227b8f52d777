"""docker/ checked statically: no Docker engine runs here (tests/test_deploy_stack.py runs the stack)."""

import json
import re
import subprocess
import sys
import urllib.parse
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import yaml
from compose_spec import PyCompose
from mlflow.projects._project_spec import load_project

from tests.helpers import DOCKER, PROJECT, interpolate, load_compose

TOOLS = Path(sys.executable).parent  # hadolint and shellcheck come from the test extras
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
MIN_GRACE_SECONDS = 60  # the training's next step, its run's end and a last checkpoint
EXPOSE_VARIABLES = {
    "MLFLOW_PUBLIC_HOST": "mlflow.example.com",
    "MLFLOW_BIND": "192.0.2.10",
    "MLFLOW_TRACKING_USERNAME": "ci",
}


def lock():
    lines = (DOCKER / "requirements.lock").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def canonical(requirement):
    """'psycopg[binary]==3.3.9' -> ('psycopg', '3.3.9')."""
    name, version = requirement.split("==")
    return name.split("[")[0].lower(), version.strip()


@pytest.mark.slow
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_passes(dockerfile):
    completed = subprocess.run([TOOLS / "hadolint", str(dockerfile)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.slow
def test_shellcheck_passes_on_the_entrypoint():
    completed = subprocess.run([TOOLS / "shellcheck", str(DOCKER / "entrypoint.sh")], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_dockerfiles_install_the_lock_and_run_as_a_non_root_user():
    pins = dict(
        canonical(r) for r in tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["dependencies"]
    )
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert "pip install --no-cache-dir --no-deps -r docker/requirements.lock && pip check" in text, dockerfile.name
        assert "pip install --no-cache-dir --no-deps -e ." in text, dockerfile.name  # the project, nothing more
        users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("root", "0"), dockerfile.name
        assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in text, dockerfile.name
    # The GPU image's TensorFlow is the pinned one.
    assert f"FROM tensorflow/tensorflow:{pins['tensorflow']}-gpu" in (DOCKER / "Dockerfile.gpu").read_text()


def test_the_images_install_exactly_the_pinned_versions():
    locked = lock()
    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, version in map(canonical, pyproject):
        assert locked.get(name) == version, f"{name}: pyproject pins {version}, the lock has {locked.get(name)}"
    # The lock is what this suite runs with (.ci/run installs with it as constraints).
    installed = {name: metadata.version(name) for name in locked}
    assert installed == locked


def test_compose_files_parse_as_the_compose_spec():
    stack = PyCompose.from_yaml(interpolate((DOCKER / "compose.yaml").read_text(), {}))
    stack.validate()  # every secret, volume and network a service names is declared
    assert stack.service_names() == ["postgres", "mlflow", "trainer", "sweep-worker"]
    # The override parses too, and declares (or finds in compose.yaml) every secret it names.
    PyCompose.from_yaml(interpolate((DOCKER / "compose.expose.yaml").read_text(), EXPOSE_VARIABLES))
    expose = load_compose("compose.expose.yaml", EXPOSE_VARIABLES)
    declared = set(load_compose()["secrets"]) | set(expose["secrets"])
    assert set(expose["services"]) <= set(stack.service_names())
    assert {s for service in expose["services"].values() for s in service["secrets"]} <= declared


def test_the_stack_persists_its_data_and_publishes_only_on_loopback():
    compose = load_compose()
    services, volumes = compose["services"], compose["volumes"]
    postgres, server = services["postgres"], services["mlflow"]
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"] and "postgres-data" in volumes
    assert "ports" not in postgres  # the database is reached on the stack's network only
    assert server["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://mlflow@postgres:5432/")
    assert server["environment"]["MLFLOW_SERVE_ARTIFACTS"] == "true"
    assert server["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"  # no idle job workers
    destination = server["environment"]["MLFLOW_ARTIFACTS_DESTINATION"]
    assert f"mlflow-artifacts:{destination}" in server["volumes"] and "mlflow-artifacts" in volumes
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    allowed = server["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "*" not in allowed and "mlflow:5000" in allowed and "127.0.0.1:5000" in allowed


def test_trainer_and_sweep_workers_reserve_the_gpu_and_use_the_server():
    services = load_compose()["services"]
    for name in ("trainer", "sweep-worker"):
        service = services[name]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert service["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert service["depends_on"]["mlflow"]["condition"] == "service_healthy", name
        assert service["image"] == "keras-mlflow-experiments:gpu", name
    assert services["trainer"]["command"][:5] == ["mlflow", "run", ".", "-e", "mnist_cnn"]
    worker = services["sweep-worker"]
    assert "container_name" not in worker and "ports" not in worker  # either would stop --scale
    assert worker["command"][worker["command"].index("--storage") + 1].startswith("postgresql+psycopg://")


def test_trainer_and_sweep_workers_pass_a_stop_on_and_have_time_to_end():
    """`docker stop`: an init passes SIGTERM to the supervisor (the entrypoint's last word),
    which stops the whole command; the grace period covers a clean end."""
    services = load_compose()["services"]
    for name in ("trainer", "sweep-worker"):
        service = services[name]
        assert service["init"] is True, name
        grace = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", service["stop_grace_period"])
        assert grace and 60 * int(grace[1] or 0) + int(grace[2] or 0) >= MIN_GRACE_SECONDS, name
    last_line = (DOCKER / "entrypoint.sh").read_text().strip().splitlines()[-1]
    assert last_line == 'exec python "$(dirname "$0")/supervise.py" "$@"'


def test_no_secret_is_written_into_compose_or_the_images():
    for name, variables in (("compose.yaml", {}), ("compose.expose.yaml", EXPOSE_VARIABLES)):
        compose = load_compose(name, variables)
        for secret in compose["secrets"].values():
            assert set(secret) == {"file"} and secret["file"].startswith("./secrets/")
        for service_name, service in compose["services"].items():
            for key, value in (service.get("environment") or {}).items():
                if "PASSWORD" in key or "SECRET" in key:
                    assert key.endswith("_FILE") and value.startswith("/run/secrets/"), f"{service_name}: {key}"
                if "://" in str(value):
                    assert urllib.parse.urlsplit(value).password is None, f"{service_name}: {key} holds a password"
    ignored = (PROJECT / ".dockerignore").read_text().splitlines()
    assert "docker/secrets" in ignored and "docker/.env" in ignored  # never sent to a build
    assert {"docker/secrets/", "docker/.env"} <= set((PROJECT / ".gitignore").read_text().splitlines())


def test_exposing_the_server_takes_basic_auth_a_new_admin_password_and_named_hosts():
    with pytest.raises(KeyError, match="MLFLOW_PUBLIC_HOST"):
        load_compose("compose.expose.yaml", {**EXPOSE_VARIABLES, "MLFLOW_PUBLIC_HOST": ""})
    server = load_compose("compose.expose.yaml", EXPOSE_VARIABLES)["services"]["mlflow"]
    assert server["command"] == ["mlflow", "server", "--app-name", "basic-auth"]
    assert server["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD_FILE"] == "/run/secrets/mlflow_admin_password"
    assert server["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")[0] == "mlflow.example.com"
    assert server["ports"] == ["192.0.2.10:5000:5000"]
    config = (DOCKER / "basic_auth.ini").read_text()
    assert not [line for line in config.splitlines() if line.startswith("admin_password")]  # only from the secret


def test_the_docker_project_has_the_same_entry_points_in_the_gpu_image():
    main, docker = load_project(str(PROJECT)), load_project(str(DOCKER / "project"))
    assert docker.docker_env["image"] == "keras-mlflow-experiments:gpu"
    assert "MLFLOW_TRACKING_URI" in docker.docker_env["environment"]
    assert {name: (point.command, sorted(point.parameters)) for name, point in docker._entry_points.items()} == {
        name: (point.command, sorted(point.parameters)) for name, point in main._entry_points.items()
    }


def test_the_kubernetes_job_template_is_what_mlflow_fills_in():
    template = yaml.safe_load((DOCKER / "kubernetes" / "job-template.yaml").read_text())
    assert template["kind"] == "Job" and template["apiVersion"] == "batch/v1"
    assert template["metadata"]["name"] == "{replaced with MLflow Project name}"
    pod = template["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "{replaced with URI of Docker image created during Project execution}"
    assert container["command"] == ["{replaced with MLflow Project entry point command}"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    (password,) = [variable for variable in container["env"] if variable["name"] == "PGPASSWORD"]
    assert set(password) == {"name", "valueFrom"}  # from the Secret, never a literal
    config = json.loads((DOCKER / "kubernetes" / "backend-config.json").read_text())
    assert {"kube-job-template-path", "repository-uri"} <= set(config)
    assert (PROJECT / config["kube-job-template-path"]).is_file()


@pytest.mark.slow
def test_the_entrypoint_refuses_a_missing_secret_file_in_one_line(tmp_path):
    completed = subprocess.run(
        [DOCKER / "entrypoint.sh", "true"],
        env={"PATH": "/usr/bin:/bin", "POSTGRES_PASSWORD_FILE": str(tmp_path / "missing")},
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        f"error: POSTGRES_PASSWORD_FILE: cannot read the secret file {tmp_path / 'missing'}"
    ]


def test_deploy_guide_covers_every_file_in_docker():
    guide = (PROJECT / "docs" / "deploy.md").read_text()
    shipped = [
        p for p in DOCKER.rglob("*") if p.is_file() and "__pycache__" not in p.parts and "secrets" not in p.parts
    ]
    missing = [str(p.relative_to(PROJECT)) for p in shipped if str(p.relative_to(PROJECT)) not in guide]
    assert not missing, f"docs/deploy.md does not mention {missing}"
