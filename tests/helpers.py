"""Helpers the tests share."""

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"


def runs(client):
    experiment = client.get_experiment_by_name("tests")
    return client.search_runs([experiment.experiment_id])


def run_cli(*args, timeout=600, **popen):
    """`python -m pipelines ...` in a subprocess with the test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ},
        **popen,
    )
