"""The paired promotion gate on real MNIST: does a reseeded twin move the champion? does a better model?

    python benchmarks/significance.py [--data ../shared/data/mnist.npz] [--epochs N]

Trains, with their default recipes on the full MNIST, `mnist_cnn` with seeds 42 and 43 and
`mnist_mlp` with seed 42, in a throwaway MLflow store. Then:
- promotes the seed-42 `mnist_cnn` run, then the seed-43 run, with the paired gate (the
  default), and again with `gate=margin`: a reseeded twin should not move the champion;
- pairs `mnist_mlp` (as champion) against `mnist_cnn` (as challenger) on their logged test
  predictions with the same test: the better model should win significantly.
Results go to benchmarks/significance.md.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
from report import machine, write_results  # noqa: E402  benchmarks/report.py, beside this script

RESULTS = PROJECT / "benchmarks" / "significance.md"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(PROJECT.parent / "shared" / "data" / "mnist.npz"))
    parser.add_argument("--epochs", type=int, default=0, help="override every recipe's epochs (0: the defaults)")
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp(prefix="significance-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "significance"
    import mlflow

    from pipelines import registry, significance
    from pipelines.cli import main as cli

    mlflow.create_experiment("significance", artifact_location=str(store / "artifacts"))  # all of it thrown away
    mlflow.set_experiment("significance")
    client = mlflow.MlflowClient()
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    trained, seconds = {}, {}
    for entry_point, seed in (("mnist_cnn", 42), ("mnist_cnn", 43), ("mnist_mlp", 42)):
        start = time.perf_counter()
        assert cli(["train", "--task", entry_point, "--seed", str(seed), "--data", args.data, *epochs]) == 0
        seconds[(entry_point, seed)] = time.perf_counter() - start
        (run,) = mlflow.search_runs(output_format="list", order_by=["start_time DESC"], max_results=1)
        trained[(entry_point, seed)] = run

    rows = []
    for gate in ("paired", "margin"):
        for seed in (42, 43):
            run_id = trained[("mnist_cnn", seed)].info.run_id
            assert cli(["promote", "--task", "mnist_cnn", "--run_id", run_id, "--gate", gate]) == 0
        version = client.get_model_version("mnist_cnn", "2")
        rows.append((f"`mnist_cnn` seed 43 against seed 42, gate={gate}", version.tags["promotion.reason"]))

    mlp, cnn = trained[("mnist_mlp", 42)], trained[("mnist_cnn", 42)]
    champion, challenger = registry.logged_predictions(mlp), registry.logged_predictions(cnn)
    assert champion["test_digest"] == challenger["test_digest"]
    test = significance.paired_classifiers(challenger["truth"], challenger["predicted"], champion["predicted"])
    verdict = "a significant win" if test.significant(0.05) else "not significant"
    rows.append(("`mnist_cnn` (seed 42) against `mnist_mlp` (seed 42)", f"{verdict}: {test.describe()}"))

    accuracy = "\n".join(
        f"| `{entry_point}` | {seed} | {run.data.metrics['test_accuracy']:.4f} | "
        f"{run.data.metrics['test_accuracy_ci_low']:.4f} to {run.data.metrics['test_accuracy_ci_high']:.4f} | "
        f"{seconds[(entry_point, seed)]:.0f} |"
        for (entry_point, seed), run in trained.items()
    )
    decisions = "\n".join(f"| {what} | {reason} |" for what, reason in rows)
    command = "python benchmarks/significance.py" + (f" --epochs {args.epochs}" if args.epochs else "")
    write_results(
        RESULTS,
        f"""# The paired promotion gate on real MNIST

{machine()}. Command: `{command}`, on MNIST's 60,000 training and 10,000 test images.

| Entry point | Seed | test_accuracy | 95% interval (Wilson) | Seconds (train command) |
|---|---|---|---|---|
{accuracy}

| Pairing | Decision and reason |
|---|---|
{decisions}
""",
    )
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
