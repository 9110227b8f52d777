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
from report import figures_table, met, stamp, versions, write_results  # noqa: E402  (benchmarks/report.py)

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

    gates = {}
    for gate in ("paired", "margin"):
        for seed in (42, 43):
            run_id = trained[("mnist_cnn", seed)].info.run_id
            assert cli(["promote", "--task", "mnist_cnn", "--run_id", run_id, "--gate", gate]) == 0
        tags = client.get_model_version("mnist_cnn", "2").tags
        gates[gate] = (tags["promotion.decision"] == registry.CHAMPION, paired_test(tags) if gate == "paired" else None)

    mlp, cnn = trained[("mnist_mlp", 42)], trained[("mnist_cnn", 42)]
    champion, challenger = registry.logged_predictions(mlp), registry.logged_predictions(cnn)
    assert champion["test_digest"] == challenger["test_digest"]
    versus = significance.paired_classifiers(challenger["truth"], challenger["predicted"], champion["predicted"])

    accuracy = [
        (
            entry_point,
            seed,
            *(run.data.metrics[key] for key in ("test_accuracy", "test_accuracy_ci_low", "test_accuracy_ci_high")),
            seconds[(entry_point, seed)],
        )
        for (entry_point, seed), run in trained.items()
    ]
    command = "python benchmarks/significance.py" + (f" --epochs {args.epochs}" if args.epochs else "")
    write_report(accuracy, gates, versus, command, stamp())
    print(RESULTS.read_text())


def paired_test(tags):
    """The paired test a promotion recorded in its version's tags."""
    from pipelines.significance import PairedTest

    return PairedTest(
        test=tags["promotion.test"],
        examples=int(tags["promotion.test_examples"]),
        gain=float(tags["promotion.gain"]),
        p_value=float(tags["promotion.p_value"]),
        challenger_only=int(tags["promotion.challenger_only_right"]),
        champion_only=int(tags["promotion.champion_only_right"]),
    )


def write_report(accuracy, gates, versus, command, measured):
    """`accuracy`: (entry point, seed, test accuracy, interval low, high, seconds) per run; `gates`:
    {gate: (whether seed 43 was promoted over seed 42, the paired test or None)}; `versus`: the
    paired test of `mnist_cnn` (challenger) against `mnist_mlp` (champion)."""

    def row(figure, value, target=""):
        return (figure, value, target, command, measured["date"], measured["machine"])

    rows = [
        row(
            f"`{entry_point}`, seed {seed}: test_accuracy (95% Wilson interval)",
            f"{value:.4f} ({low:.4f} to {high:.4f}); {seconds:.0f} s for its train command",
        )
        for entry_point, seed, value, low, high, seconds in accuracy
    ]
    for gate, (promoted, test) in gates.items():
        decision = "promoted" if promoted else "kept the champion"
        if gate == "paired":
            rows.append(
                row(
                    "`mnist_cnn` seed 43 against seed 42 (the champion), gate=paired",
                    f"{decision}: {test.describe()}",
                    f"a reseeded twin keeps the champion, {met(not promoted)}",
                )
            )
        else:
            rows.append(row(f"The same, gate={gate} (margin 0)", decision))
    rows.append(
        row(
            "`mnist_cnn` (seed 42) against `mnist_mlp` (seed 42), on their logged test predictions",
            f"{'a significant win' if versus.significant(0.05) else 'not significant'}: {versus.describe()}",
            f"a significant win at alpha 0.05, {met(versus.significant(0.05))}",
        )
    )
    lines = [
        "# The paired promotion gate on real MNIST",
        "",
        *figures_table(rows),
        "",
        "## Method",
        "",
        "Each entry point trains with its default recipe on MNIST's 60,000 training images and is tested on its "
        "10,000 test images, in a throwaway MLflow store. The seed-43 `mnist_cnn` run is promoted over the "
        "seed-42 one with each gate; `mnist_cnn` and `mnist_mlp` are different registered models, so they are "
        "paired on their logged test predictions with the gate's own test (`significance.paired_classifiers`). "
        f"{versions()}.",
    ]
    write_results(RESULTS, "\n".join(lines))


if __name__ == "__main__":
    main()
