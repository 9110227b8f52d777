"""Helpers the tests share."""

import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"
DOCKER = PROJECT / "docker"


def runs(client):
    experiment = client.get_experiment_by_name("tests")
    return client.search_runs([experiment.experiment_id])


def options(**values):
    """`--name value` words, as the command line and MLproject pass them."""
    return [word for name, value in values.items() for word in (f"--{name}", str(value))]


def _signal_dispositions(sigint):
    """In the child before exec: SIGINT as a terminal gives it (default), or ignored, as a
    script's background job starts; SIGTERM default. The test process's own may be either."""
    signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == "ignored" else signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(args, sigint="default", **popen):
    """Start `args` in its own process group (so a test can signal all of it, as a terminal
    does) with the signal dispositions a test assumes, whatever this process inherited."""
    return subprocess.Popen(
        args,
        cwd=popen.pop("cwd", PROJECT),
        start_new_session=True,
        preexec_fn=functools.partial(_signal_dispositions, sigint),
        **popen,
    )


def mlflow_run_command(entry_point, **params):
    words = [word for name, value in params.items() for word in ("-P", f"{name}={value}")]
    return [sys.executable, "-m", "mlflow", "run", ".", "-e", entry_point, "--env-manager", "local", *words]


def mlflow_run(entry_point, timeout=600, **params):
    """`mlflow run . -e <entry_point> --env-manager local -P name=value ...`, in the test's store."""
    return subprocess.run(
        mlflow_run_command(entry_point, **params),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(*args, timeout=600, **popen):
    """`python -m pipelines ...` in a subprocess with the test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        cwd=popen.pop("cwd", PROJECT),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ},
        **popen,
    )


def no_traceback(output):
    """True when `output` holds no Python traceback; else an AssertionError quoting it."""
    at = output.find("Traceback")
    assert at < 0, output[max(0, at - 500) : at + 2500]
    return True


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Straight to 127.0.0.1, whatever proxy the environment names.
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_until_serving(url, process, timeout):
    """Poll `url` until it answers; fail if `process` (the server) exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            LOCAL.open(url, timeout=2)
            return
        except OSError:
            if process.poll() is not None:
                raise AssertionError(f"the server exited with code {process.returncode} before serving {url}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing served {url} within {timeout} s") from None
            time.sleep(0.5)


# docker compose, as far as the tests need it: its variable interpolation and merge tags.
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?)([-?])([^}]*))?\}")


def interpolate(text, variables):
    """Compose's ${NAME}, ${NAME:-default}, ${NAME-default} and ${NAME:?error} over `variables`."""

    def value(match):
        name, colon, operator, argument = match.groups()
        given = variables.get(name)
        if given is None or (colon and given == ""):
            if operator == "?":
                raise KeyError(f"{name}: {argument}")
            return argument if operator == "-" else ""
        return given

    return _VARIABLE.sub(value, text)


class _ComposeLoader(yaml.SafeLoader):
    """YAML with compose's `!override` and `!reset` merge tags (the value as written)."""


def _as_written(loader, node):
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(node)


for _tag in ("!override", "!reset"):
    _ComposeLoader.add_constructor(_tag, _as_written)


def load_compose(name="compose.yaml", variables=None):
    """A compose file of docker/, interpolated as `docker compose` would with `variables` as its .env."""
    return yaml.load(interpolate((DOCKER / name).read_text(), variables or {}), Loader=_ComposeLoader)


def churn_frame(rows, rng, exited=None):
    """A bank-customer table in Churn_Modelling.csv's columns. `exited` defaults to a rule
    a small MLP learns (age over 50)."""
    age = rng.integers(18, 80, rows)
    return pd.DataFrame(
        {
            "RowNumber": np.arange(1, rows + 1),
            "CustomerId": rng.integers(15_000_000, 16_000_000, rows),
            "Surname": rng.choice(["Hargrave", "Hill", "Onio", "Boni"], rows),
            "CreditScore": rng.integers(350, 850, rows),
            "Geography": rng.choice(["France", "Spain", "Germany"], rows),
            "Gender": rng.choice(["Female", "Male"], rows),
            "Age": age,
            "Tenure": rng.integers(0, 11, rows),
            "Balance": rng.uniform(0, 250_000, rows).round(2),
            "NumOfProducts": rng.integers(1, 5, rows),
            "HasCrCard": rng.integers(0, 2, rows),
            "IsActiveMember": rng.integers(0, 2, rows),
            "EstimatedSalary": rng.uniform(10, 200_000, rows).round(2),
            "Exited": (age > 50).astype(int) if exited is None else exited,
        }
    )
