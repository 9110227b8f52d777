"""What pruning saves: the same 20-trial mnist_cnn sweep on real MNIST, with and without it.

    python benchmarks/sweep_pruning.py [--data ../shared/data/mnist.npz] [--reuse]
        [--configs median hyperband "median --pruner_startup_trials 2 --pruner_warmup_epochs 0"]

Each sweep runs through `python -m pipelines sweep` with the same sampler seed, in its own
MLflow store and journal under benchmarks/out/. The pruned sweep must train at most 60% of
the unpruned sweep's epochs and reach a best validation accuracy within 0.2 points of it.
Results go to benchmarks/sweep_pruning.md.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from report import figures_table, met, stamp, versions, write_results  # benchmarks/report.py, beside this script

PROJECT = Path(__file__).resolve().parents[1]
OUT = PROJECT / "benchmarks" / "out" / "sweep_pruning"
RESULTS = PROJECT / "benchmarks" / "sweep_pruning.md"
N_TRIALS = 20
EPOCHS = 5
MAX_SAMPLES = 20_000  # a quick sweep: 18,000 training and 2,000 validation images
MAX_EPOCH_SHARE = 0.60
MAX_ACCURACY_GAP = 0.002  # 0.2 points


def run_sweep(config, data, reuse=False):
    """One sweep; `config` is a pruner name, optionally followed by more sweep options."""
    pruner, *options = config.split()
    folder = OUT / "_".join(word.lstrip("-") for word in config.split())
    if reuse and (folder / "result.json").exists():
        return json.loads((folder / "result.json").read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    journal = folder / "optuna.journal"
    command = [
        *(sys.executable, "-m", "pipelines", "sweep", "--task", "mnist_cnn", "--data", str(data)),
        *("--n_trials", str(N_TRIALS), "--epochs", str(EPOCHS), "--max_samples", str(MAX_SAMPLES)),
        *("--pruner", pruner, "--storage", str(journal), "--study_name", "bench", "--experiment", "sweep-benchmark"),
        *options,
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        subprocess.run(command, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    seconds = time.perf_counter() - start
    study = optuna.load_study(
        study_name="bench",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
    )
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    result = {
        "pruner": config,
        "epochs": sum(len(trial.intermediate_values) for trial in finished),
        "pruned": sum(trial.state == TrialState.PRUNED for trial in finished),
        "best": study.best_value,
        "best_params": study.best_params,
        "seconds": seconds,
    }
    (folder / "result.json").write_text(json.dumps(result))
    return result


def write_report(results, command, measured):
    baseline = results["none"]
    rows = []
    for result in results.values():
        took = f"{result['seconds'] / 60:.1f} min"
        if result is baseline:
            figure = "No pruning: epochs trained, best val_accuracy"
            value = f"{result['epochs']} epochs; best {result['best']:.4f}; {took}"
            target = ""
        else:
            share = result["epochs"] / baseline["epochs"]
            gap = (baseline["best"] - result["best"]) * 100
            same = ", the same best trial" if result["best_params"] == baseline["best_params"] else ""
            figure = f"Pruner `{result['pruner']}`: epochs trained against no pruning, best val_accuracy"
            value = (
                f"{share:.0%} ({result['epochs']} epochs, {result['pruned']} of {N_TRIALS} trials pruned); "
                f"best {result['best']:.4f}, {gap:+.2f} points{same}; {took}"
            )
            ok = share <= MAX_EPOCH_SHARE and gap <= MAX_ACCURACY_GAP * 100
            target = f"≤ {MAX_EPOCH_SHARE:.0%} of the epochs, within {MAX_ACCURACY_GAP * 100:.1f} points, {met(ok)}"
        rows.append((figure, value, target, command, measured["date"], measured["machine"]))
    lines = [
        f"# Pruning: a {N_TRIALS}-trial `mnist_cnn` sweep on real MNIST",
        "",
        *figures_table(rows),
        "",
        "## Method",
        "",
        f"Each sweep: {N_TRIALS} trials of {EPOCHS} epochs at most, on {MAX_SAMPLES:,} training images (10% held "
        "out to validate), TPE sampler with seed 42, one worker, through `python -m pipelines sweep`. Epochs "
        "are counted from the validation values each trial reported, so a pruned trial counts the epochs it "
        f"trained. The targets are on epochs and accuracy; wall times include model logging. {versions()}.",
        "",
        "Best parameters:",
        "",
    ]
    by_params = {}
    for result in results.values():
        by_params.setdefault(repr(result["best_params"]), []).append(result["pruner"])
    for params, pruners in by_params.items():
        lines.append("- " + ", ".join(f"`{pruner}`" for pruner in pruners) + f": `{params}`")
    write_results(RESULTS, "\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(PROJECT.parent / "shared" / "data" / "mnist.npz"))
    parser.add_argument(
        "--configs", nargs="+", default=["median", "hyperband"], help="pruned sweeps to compare with none"
    )
    parser.add_argument("--reuse", action="store_true", help="reuse sweeps an earlier run of this script finished")
    args = parser.parse_args()
    results = {"none": run_sweep("none", args.data, reuse=args.reuse)}
    for config in args.configs:
        results[config] = run_sweep(config, args.data, reuse=args.reuse)
        print(results[config], flush=True)
    write_report(results, shlex.join(["python", "benchmarks/sweep_pruning.py", *sys.argv[1:]]), stamp())
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
