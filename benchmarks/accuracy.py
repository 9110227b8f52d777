"""Accuracy of each entry point on the real data, with its defaults, against the targets.

    python benchmarks/accuracy.py                      # all, data from ../shared/data
    python benchmarks/accuracy.py --only xor mnist_cnn --data-dir /path/to/data

Each entry point trains in its own process exactly as `python -m pipelines train` does,
into a throwaway store under benchmarks/out/. Results accumulate in benchmarks/out/results.json
and are written to benchmarks/accuracy.md.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from report import write_results  # benchmarks/report.py, beside this script

PROJECT = Path(__file__).resolve().parents[1]
OUT = PROJECT / "benchmarks" / "out"
REPORT = PROJECT / "benchmarks" / "accuracy.md"
MNIST, FER = "mnist.npz", "fer2013.tar.gz"

# entry point: (data file in --data-dir or None, target in words, check on the test metrics)
TARGETS = {
    "xor": (None, "100% accuracy", lambda m: m["test_accuracy"] == 1.0),
    "linear": (
        None,
        "weight and bias within 0.01 of 2 and 1",
        lambda m: abs(m["learned_weight"] - 2) <= 0.01 and abs(m["learned_bias"] - 1) <= 0.01,
    ),
    "iris": (None, "accuracy >= 0.95", lambda m: m["test_accuracy"] >= 0.95),
    "churn": (
        None,
        "accuracy >= 0.86 and ROC AUC >= 0.85",
        lambda m: m["test_accuracy"] >= 0.86 and m["test_roc_auc"] >= 0.85,
    ),
    "mnist_mlp": (MNIST, "accuracy >= 98.0%", lambda m: m["test_accuracy"] >= 0.98),
    "mnist_cnn": (MNIST, "accuracy >= 99.3% in its default epochs", lambda m: m["test_accuracy"] >= 0.993),
    "emotion_cnn": (FER, "PrivateTest accuracy >= 0.50 in its default epochs", lambda m: m["test_accuracy"] >= 0.50),
}
SHOWN = ("test_accuracy", "test_roc_auc", "learned_weight", "learned_bias", "test_mse")


def command_for(name, data_dir):
    data_file = TARGETS[name][0]
    command = [sys.executable, "-m", "pipelines", "train", "--task", name]
    return command + (["--data", str(data_dir / data_file)] if data_file else [])


def run_one(name, data_dir):
    import mlflow

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{OUT}/mlflow.db", "MLFLOW_EXPERIMENT_NAME": "benchmark"}
    command = command_for(name, data_dir)
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (OUT / f"{name}.log").write_text(completed.stdout + completed.stderr)
    match = re.search(r"^run (\w+) finished", completed.stdout, re.MULTILINE)
    if completed.returncode or not match:
        raise SystemExit(f"{name} failed (exit {completed.returncode}); see {OUT / f'{name}.log'}")
    run = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(match.group(1))
    metrics = run.data.metrics
    return {
        "command": "python -m pipelines train --task " + " ".join(command[5:]).replace(str(data_dir), "$DATA"),
        "metrics": {key: metrics[key] for key in SHOWN if key in metrics},
        "passed": TARGETS[name][2](metrics),
        "train_time_s": metrics["train_time_s"],
        "wall_time_s": wall,
        "epochs": run.data.params["epochs"],
        "run_id": run.info.run_id,
    }


def write_report(results):
    import keras
    import mlflow

    lines = [
        "# Accuracy on the real data",
        "",
        "Each entry point trained once with its defaults (seed 42) on this project's CI machine "
        f"({os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"Keras {keras.__version__} on {keras.backend.backend()}, MLflow {mlflow.__version__}).",
        "`$DATA` is the folder holding mnist.npz and fer2013.tar.gz (`../shared/data` here).",
        "Train time is `fit` alone; wall time is the whole process: imports, data loading, training, "
        "evaluation and logging.",
        "",
        "Reproduce: `python benchmarks/accuracy.py --data-dir $DATA` (all) or `--only NAME ...`.",
        "",
        "| Entry point | Target | Result | Met | Epochs | Train time | Wall time | Command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in TARGETS:
        if name not in results:
            continue
        result = results[name]
        shown = ", ".join(f"{key.removeprefix('test_')} {value:.4f}" for key, value in result["metrics"].items())
        lines.append(
            f"| `{name}` | {TARGETS[name][1]} | {shown} | {'yes' if result['passed'] else '**no**'} "
            f"| {result['epochs']} | {result['train_time_s']:.0f} s | {result['wall_time_s']:.0f} s "
            f"| `{result['command']}` |"
        )
    write_results(REPORT, "\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=PROJECT.parent / "shared" / "data")
    parser.add_argument("--only", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results_file = OUT / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{OUT}/mlflow.db")
    if client.get_experiment_by_name("benchmark") is None:
        client.create_experiment("benchmark", artifact_location=str(OUT / "artifacts"))
    for name in args.only:
        print(f"{name} ...", flush=True)
        results[name] = run_one(name, args.data_dir.resolve())
        print(f"  {results[name]['metrics']} in {results[name]['train_time_s']:.0f} s", flush=True)
        results_file.write_text(json.dumps(results, indent=2))
        write_report(results)


if __name__ == "__main__":
    main()
