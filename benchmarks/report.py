"""Write a benchmark's figures into its Markdown file, keeping the hand-written notes after them.

Every file starts with one table of figures: what is measured and its value, the target where
there is one, the command that produced it, the date and the machine.
"""

import datetime
import importlib.metadata
import os
import platform
from pathlib import Path

END_OF_RESULTS = "<!-- End of the generated results. The notes below are written by hand and kept. -->"
FIGURES_HEADER = ["| Figure | Value | Target | Command | Date | Machine |", "|---|---|---|---|---|---|"]


def cpu():
    """The machine as the figures name it: CPU model, its widest vector extension, cores. Machines
    of one model name differ by their vector units, which move these timings by 2x and more."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and not model:
                model = value
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    return f"{model or platform.machine()}{f' ({vector})' if vector else ''}, {os.cpu_count()} cores"


def stamp():
    """When and where a result was measured, kept with it: results from several runs share a file."""
    return {"date": datetime.date.today().isoformat(), "machine": cpu()}


def versions(packages=("tensorflow", "keras", "mlflow", "optuna")):
    """One line naming the software that produced the results."""
    named = ", ".join(f"{package} {importlib.metadata.version(package)}" for package in packages)
    return f"Python {platform.python_version()}; {named}"


def met(ok):
    return "met" if ok else "**missed**"


def figures_table(rows):
    """The table every results file starts with. Each row: (figure, value, target, command, date, machine)."""
    lines = list(FIGURES_HEADER)
    for figure, value, target, command, date, machine in rows:
        lines.append(f"| {figure} | {value} | {target} | {f'`{command}`' if command else ''} | {date} | {machine} |")
    return lines


def write_results(path: Path, results: str):
    """Replace the generated part of `path` (everything before the marker) with `results`."""
    old = path.read_text() if path.exists() else ""
    notes = old.split(END_OF_RESULTS, 1)[1].lstrip("\n") if END_OF_RESULTS in old else ""
    path.write_text(f"{results.rstrip()}\n\n{END_OF_RESULTS}\n\n{notes}".rstrip() + "\n")
