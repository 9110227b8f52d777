"""How long the commands that train nothing take to answer: medians of repeated runs.

    python benchmarks/commands.py [--repeats 5]

Each command runs in the project's folder with a throwaway tracking store. Results go to
benchmarks/commands.md.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
from report import figures_table, met, stamp, versions, write_results  # noqa: E402  (benchmarks/report.py, beside this script)

REPORT = PROJECT / "benchmarks" / "commands.md"
TARGET_SECONDS = 2.0
COMMANDS = {
    "python -m pipelines --help": ["-m", "pipelines", "--help"],
    "python -m pipelines train --task mnist_cnn --help": ["-m", "pipelines", "train", "--task", "mnist_cnn", "--help"],
    "python -m pipelines train --task mnist_cnn --dry_run true": [
        *("-m", "pipelines", "train", "--task", "mnist_cnn", "--dry_run", "true"),
    ],
    "python -m pipelines sweep --task mnist_cnn --dry_run true": [
        *("-m", "pipelines", "sweep", "--task", "mnist_cnn", "--dry_run", "true"),
    ],
    "python -m pipelines train --task mnist_cnn --learning_rate abc (refused)": [
        *("-m", "pipelines", "train", "--task", "mnist_cnn", "--learning_rate", "abc"),
    ],
    "python -m pipelines.mlproject --check": ["-m", "pipelines.mlproject", "--check"],
    "python -m pipelines reap --dry_run true": ["-m", "pipelines", "reap", "--dry_run", "true"],
    'python -c "import experiments"': ["-c", "import experiments"],
    'python -c "import keras"': ["-c", "import keras"],
    'python -c "import mlflow"': ["-c", "import mlflow"],
    "mlflow --help": ["-m", "mlflow", "--help"],
}


def seconds(python, checkout, words, env):
    start = time.perf_counter()
    completed = subprocess.run([python, *words], cwd=checkout, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    return elapsed, completed.returncode


def measure(checkout, repeats):
    python = str(checkout / ".venv" / "bin" / "python")
    store = tempfile.mkdtemp(prefix="commands-")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "PYTHONPATH": str(checkout)}
    env.pop("MLFLOW_RUN_ID", None)
    subprocess.run([python, "-c", "import mlflow; mlflow.MlflowClient().search_experiments()"], env=env, check=True)
    results = {}
    for label, words in COMMANDS.items():
        times, codes = zip(*(seconds(python, checkout, words, env) for _ in range(repeats)), strict=True)
        results[label] = (statistics.median(times), codes[0])
        print(f"{checkout.name}: {label}: {results[label][0]:.2f} s (exit {codes[0]})", flush=True)
    return results


def write_report(times, repeats, command, measured):
    """`times`: {command: (median seconds, exit code)}; `measured`: the run's date and machine."""
    rows = []
    for label, (median_s, _) in times.items():
        ours = label.startswith("python -m pipelines")
        target = f"≤ {TARGET_SECONDS:.0f} s, {met(median_s <= TARGET_SECONDS)}" if ours else "for reference"
        row = (f"`{label}`: start to exit", f"{median_s:.2f} s", target, command, measured["date"], measured["machine"])
        rows.append(row)
    lines = [
        "# Commands that train nothing",
        "",
        *figures_table(rows),
        "",
        "## Method",
        "",
        f"Wall time from start to exit, the median of {repeats} runs, each in a new process in the project's "
        "folder, against a throwaway SQLite store created beforehand. Target: at most "
        f"{TARGET_SECONDS:.0f} s for every command of ours that trains nothing; the others show what the "
        f"libraries alone cost. {versions()}.",
    ]
    write_results(REPORT, "\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times = measure(PROJECT, args.repeats)
    command = "python benchmarks/commands.py" + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
    write_report(times, args.repeats, command, stamp())
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
