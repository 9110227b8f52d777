"""Write a benchmark's results into its Markdown file, keeping the hand-written notes after them."""

import importlib.metadata
import os
import platform
from pathlib import Path

END_OF_RESULTS = "<!-- End of the generated results. The notes below are written by hand and kept. -->"


def machine(packages=("tensorflow", "keras", "mlflow", "optuna")):
    """One line naming the machine and the versions that produced the results."""
    versions = ", ".join(f"{package} {importlib.metadata.version(package)}" for package in packages)
    return f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; {versions}"


def write_results(path: Path, results: str):
    """Replace the generated part of `path` (everything before the marker) with `results`."""
    old = path.read_text() if path.exists() else ""
    notes = old.split(END_OF_RESULTS, 1)[1].lstrip("\n") if END_OF_RESULTS in old else ""
    path.write_text(f"{results.rstrip()}\n\n{END_OF_RESULTS}\n\n{notes}".rstrip() + "\n")
