"""How long the commands that train nothing take to answer: medians of repeated runs, here
and, with --before, in another checkout of the project (each with its own environment).

    python benchmarks/commands.py [--before /path/to/older/checkout] [--repeats 5]

Each command runs in the checkout's folder with a throwaway tracking store. Results go to
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
from report import machine, write_results  # noqa: E402  (benchmarks/report.py, beside this script)

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
# What an older checkout may not have: its answer is shown as such, not timed.
NEW_COMMANDS = ("reap",)


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, help="another checkout of the project, with its .venv")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    before = measure(args.before.resolve(), args.repeats) if args.before else {}
    after = measure(PROJECT, args.repeats)
    command = "python benchmarks/commands.py" + (" --before <older checkout>" if args.before else "")
    lines = [
        "# Commands that train nothing",
        "",
        f"{machine()}. Wall time from start to exit, median of {args.repeats} runs, each in a new process. "
        f"Target: at most {TARGET_SECONDS:.0f} s for every command of ours that trains nothing. Produced by:",
        "",
        f"    {command}",
        "",
        "| Command | Before | After | Target met |",
        "|---|---|---|---|",
    ]
    for label in COMMANDS:
        then = before.get(label)
        missing = then is not None and then[1] and set(NEW_COMMANDS) & set(label.split())
        shown_then = "" if then is None else "(no such command)" if missing else f"{then[0]:.2f} s"
        ours = label.startswith("python -m pipelines")
        met = ("yes" if after[label][0] <= TARGET_SECONDS else "**no**") if ours else ""
        lines.append(f"| `{label}` | {shown_then} | {after[label][0]:.2f} s | {met} |")
    write_results(REPORT, "\n".join(lines))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
