"""Entry points: `python -m pipelines train --task mnist --variant cnn_bn --epochs 3`.

MLproject's entry points call this. Bad input ends with one `error:` line naming the
parameter or file, exit code 2, no traceback, and no MLflow run left RUNNING.
"""

import argparse
import os
import signal
import sys

from experiments import InputError, resolve

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so the run ends KILLED instead of staying RUNNING."""


def _raise_terminated(signum, frame):
    raise Terminated(f"signal {signum}")


def parse_overrides(words):
    """`--name value` and `--name=value` pairs, as passed by MLproject and the CLI."""
    overrides = {}
    words = list(words)
    while words:
        word = words.pop(0)
        if not word.startswith("--") or len(word) == 2:
            raise InputError(f"unexpected argument '{word}': parameters are given as --name value")
        name, has_value, value = word[2:].partition("=")
        if not has_value:
            if not words:
                raise InputError(f"{name}: missing value")
            value = words.pop(0)
        overrides[name.replace("-", "_")] = value
    return overrides


def train_command(args, extra):
    from pipelines.params import parse_params

    task, variant = resolve(args.task, args.variant)
    params = parse_params(task, variant, parse_overrides(extra))

    import mlflow  # imported only once the input is known good: TensorFlow takes seconds

    from pipelines.train import train

    if "MLFLOW_RUN_ID" not in os.environ and (args.experiment or not _experiment_from_env()):
        mlflow.set_experiment(args.experiment or task.name)
    result = train(task, variant, params)
    print(f"run {result.run_id} finished: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())))


def _experiment_from_env():
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or os.environ.get("MLFLOW_EXPERIMENT_ID")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser(
        "train", help="train one task variant in a tracked MLflow run; other --name value pairs set its parameters"
    )
    train_parser.add_argument("--task", required=True, help="task (mnist) or entry point (mnist_cnn_bn)")
    train_parser.add_argument("--variant", default="", help="the task's variant; empty for its default")
    train_parser.add_argument("--experiment", default="", help="MLflow experiment (default: the task's name)")
    args, extra = parser.parse_known_args(argv)

    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        train_command(args, extra)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        _end_pending_run("FAILED")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as interrupt:
        print(f"interrupted ({interrupt or 'Ctrl-C'}): the run ended KILLED", file=sys.stderr)
        _end_pending_run("KILLED")
        return EXIT_INTERRUPTED
    return 0


def _end_pending_run(status):
    if os.environ.get("MLFLOW_RUN_ID"):
        from pipelines.tracking import end_pending_run

        end_pending_run(status)


if __name__ == "__main__":
    sys.exit(main())
