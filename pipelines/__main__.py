"""Entry points: `python -m pipelines train --task mnist_cnn_bn --epochs 3`, `sweep`, `promote`, `compare`, `pipeline`.

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

    # Imported only once the input is known good: TensorFlow takes seconds.
    from pipelines.tracking import use_experiment
    from pipelines.train import train

    use_experiment(args.experiment, task.name)
    result = train(task, variant, params)
    print(f"run {result.run_id} finished: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())))
    return 0


def sweep_command(args, extra):
    from pipelines.params import parse_params, parse_settings
    from pipelines.sweep import SWEEP_DEFAULTS, SWEEP_PARAMS, SWEEP_TRAINING_DEFAULTS

    task, variant = resolve(args.task, args.variant)
    overrides = parse_overrides(extra)
    sweep_overrides = {name: overrides.pop(name) for name in list(overrides) if name in SWEEP_PARAMS}
    settings = parse_settings(sweep_overrides, SWEEP_DEFAULTS, SWEEP_PARAMS)
    # MLproject always passes these; at their defaults (0 epochs: the variant's own) they fix nothing.
    for name, unset in SWEEP_TRAINING_DEFAULTS.items():
        if name in overrides and overrides[name] in (str(unset), unset):
            del overrides[name]
    params = parse_params(task, variant, overrides)

    from pipelines.sweep import run_sweep

    return run_sweep(task, variant, settings, params, fixed_by_user=set(overrides), experiment=args.experiment)


def sweep_worker_command(args, extra):
    from pipelines.sweep import load_worker_spec, run_worker

    # Ctrl-C reaches the whole process group; the coordinator then stops its workers with
    # one SIGTERM each, so a worker never gets a second signal while it ends its run.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_worker(load_worker_spec())
    return 0


def promote_command(args, extra):
    from pipelines.params import parse_settings
    from pipelines.registry import PROMOTE_DEFAULTS, PROMOTE_PARAMS, run_promotion

    settings = parse_settings(parse_overrides(extra), PROMOTE_DEFAULTS, PROMOTE_PARAMS)
    run_promotion(args.task, args.variant, experiment=args.experiment, **settings)
    return 0


def compare_command(args, extra):
    from pipelines.compare import COMPARE_DEFAULTS, COMPARE_PARAMS, run_comparison
    from pipelines.params import parse_settings

    settings = parse_settings(parse_overrides(extra), COMPARE_DEFAULTS, COMPARE_PARAMS)
    if not settings["model"]:
        raise InputError("model: give a registered model, e.g. --model mnist_cnn or --model 'mnist_cnn*@champion'")
    run_comparison(settings["model"], settings["output"], args.experiment)
    return 0


def pipeline_command(args, extra):
    from pipelines.params import parse_params, parse_settings
    from pipelines.workflow import PIPELINE_DEFAULTS, PIPELINE_PARAMS, run_pipeline

    task, variant = resolve(args.task, args.variant)
    overrides = parse_overrides(extra)
    settings = parse_settings(
        {name: overrides.pop(name) for name in list(overrides) if name in PIPELINE_PARAMS}, PIPELINE_DEFAULTS, PIPELINE_PARAMS
    )
    parse_params(task, variant, overrides)  # the rest fix training parameters: check them before any step starts
    margin = settings.pop("margin")
    run_pipeline(task, variant, {**settings, **overrides}, margin, args.experiment)
    return 0


COMMANDS = {
    "train": (train_command, "train one task variant in a tracked MLflow run; other --name value pairs set its parameters"),
    "sweep": (sweep_command, "tune a task variant with an Optuna study (an MLflow parent run, a nested run per trial)"),
    "promote": (promote_command, "register a task's best run (or --run_id, or the best of --study) and gate the champion alias"),
    "compare": (compare_command, "report on registered model versions side by side (--model mnist_cnn, 'mnist_cnn*@champion')"),
    "pipeline": (pipeline_command, "sweep, promote and compare a task in one go, each step its own MLflow run"),
    "sweep-worker": (sweep_worker_command, "(internal) a sweep's worker process"),
}
TASK_COMMANDS = ("train", "sweep", "promote", "pipeline")


def _settings_help(name):
    """The command's --name value settings with their defaults, for its --help."""
    from pipelines.compare import COMPARE_DEFAULTS, COMPARE_PARAMS
    from pipelines.registry import PROMOTE_DEFAULTS, PROMOTE_PARAMS
    from pipelines.sweep import SWEEP_DEFAULTS, SWEEP_PARAMS
    from pipelines.workflow import PIPELINE_DEFAULTS, PIPELINE_PARAMS

    defaults, specs = {
        "sweep": (SWEEP_DEFAULTS, SWEEP_PARAMS),
        "promote": (PROMOTE_DEFAULTS, PROMOTE_PARAMS),
        "compare": (COMPARE_DEFAULTS, COMPARE_PARAMS),
        "pipeline": (PIPELINE_DEFAULTS, PIPELINE_PARAMS),
    }.get(name, ({}, {}))
    lines = [f"  --{setting} ({defaults[setting]!r}): {spec.help}" for setting, spec in specs.items()]
    if name in ("sweep", "pipeline"):
        lines.append("  any other --name value fixes that training parameter for every trial")
    return "settings:\n" + "\n".join(lines) if lines else None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        command = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_settings_help(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name in TASK_COMMANDS:
            command.add_argument("--task", required=True, help="task (mnist) or entry point (mnist_cnn_bn)")
            command.add_argument("--variant", default="", help="the task's variant; empty for its default")
        if name != "sweep-worker":
            command.add_argument("--experiment", default="", help="MLflow experiment (default: the task's name)")
    args, extra = parser.parse_known_args(argv)

    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return COMMANDS[args.command][0](args, extra)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        _end_pending_run("FAILED")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as interrupt:
        print(f"interrupted ({interrupt or 'Ctrl-C'}): the run ended KILLED", file=sys.stderr)
        _end_pending_run("KILLED")
        return EXIT_INTERRUPTED


def _end_pending_run(status):
    if os.environ.get("MLFLOW_RUN_ID"):
        from pipelines.tracking import end_pending_run

        end_pending_run(status)


if __name__ == "__main__":
    sys.exit(main())
