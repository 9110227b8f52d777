"""The command line: `python -m pipelines train --task mnist_cnn_bn --epochs 3`, and sweep, promote, compare, workflow.

Every option and its --help line come from the declarations of the parameters and
settings. Bad input ends with one `error:` line naming the parameter or file and exit
code 2; a run that fails for another reason (a diverged training, a failed step) with one
`error:` line and exit code 1; Ctrl-C or SIGTERM with exit code 130. No MLflow run is left
RUNNING.
"""

import argparse
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from experiments import InputError, Param, RunFailed, entry_points, resolve
from pipelines import compare, liveness, registry, stopping, workflow
from pipelines.params import (
    DRY_RUN,
    ENTRY_POINT_SETTINGS,
    EXPERIMENT,
    RESUME,
    SYSTEM_METRICS_INTERVAL,
    declared_params,
    parse_params,
    recipe,
)
from pipelines.sweeps import settings as sweep_settings

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
TYPE_NAMES = {int: "INT", float: "FLOAT", str: "TEXT", bool: "BOOL"}


# --- the commands: each a thin adapter from parsed settings to the module that does the work -----


def train_command(settings, overrides):
    task, variant = resolve(settings["task"], settings["variant"])
    if settings["dry_run"]:
        plan = recipe(task, variant, overrides)
        return _print_dry_run({**plan, "resume": settings["resume"]} if settings["resume"] else plan)
    params = parse_params(task, variant, overrides)

    from pipelines.tracking import use_experiment
    from pipelines.train import train

    use_experiment(settings["experiment"], task.name)
    result = train(
        task,
        variant,
        params,
        system_metrics_interval=settings["system_metrics_interval"],
        resume_run_id=settings["resume"],
    )
    print(f"run {result.run_id} finished: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())))
    return 0


def sweep_command(settings, overrides):
    from pipelines.sweeps import coordinator

    task, variant = resolve(settings["task"], settings["variant"])
    params = parse_params(task, variant, overrides)
    run = coordinator.dry_run if settings["dry_run"] else coordinator.run_sweep
    return run(task, variant, settings, params, fixed_by_user=set(overrides))


def sweep_worker_command(settings, overrides):
    from pipelines.sweeps.worker import run_worker

    if sweep_settings.WORKER_SPEC_ENV not in os.environ:
        raise InputError("sweep-worker: started by `sweep` only; run `python -m pipelines sweep` instead")
    # Ctrl-C reaches the whole process group; the coordinator then stops its workers with
    # one SIGTERM each. A worker whose coordinator is gone (kill -9) stops too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopping.watch_launcher(stopping.parent_launcher("its sweep coordinator"))
    run_worker(sweep_settings.SweepSpec.from_env())
    return 0


def promote_command(settings, overrides):
    registry.run_promotion(**settings)
    return 0


def compare_command(settings, overrides):
    compare.run_comparison(settings["model"], settings["output"], settings["experiment"])
    return 0


def reap_command(settings, overrides):
    liveness.reap(**settings)
    return 0


def workflow_command(settings, overrides):
    task, variant = resolve(settings["task"], settings["variant"])
    parse_params(task, variant, overrides)  # they fix training parameters: checked before any step starts
    workflow.run_workflow(task, variant, settings, overrides)
    return 0


@dataclass(frozen=True)
class Command:
    run: Callable[[dict, dict], int]  # (settings, training parameter overrides as text) -> exit code
    help: str
    settings: dict[str, Param]
    training_params: str = ""  # how the entry point's training parameters apply; empty: not taken


TRAIN_SETTINGS = {
    **ENTRY_POINT_SETTINGS,
    "experiment": EXPERIMENT,
    "resume": RESUME,
    "system_metrics_interval": SYSTEM_METRICS_INTERVAL,
    "dry_run": DRY_RUN,
}
FIXED_FOR_EVERY_TRIAL = "each one given is fixed for every trial instead of tuned"
COMMANDS = {
    "train": Command(train_command, "train one entry point in a tracked MLflow run", TRAIN_SETTINGS, "its recipe"),
    "sweep": Command(
        sweep_command,
        "tune an entry point with an Optuna study (an MLflow parent run, a nested run per trial)",
        sweep_settings.SETTINGS,
        FIXED_FOR_EVERY_TRIAL,
    ),
    "promote": Command(
        promote_command,
        "register an entry point's best run (or --run_id, or the best of --study) and gate the champion alias",
        registry.SETTINGS,
    ),
    "compare": Command(
        compare_command,
        "report on registered model versions side by side (--model mnist_cnn, 'mnist_cnn*@champion')",
        compare.SETTINGS,
    ),
    "workflow": Command(
        workflow_command,
        "sweep, promote and compare an entry point in one go, each step its own MLflow run",
        workflow.SETTINGS,
        FIXED_FOR_EVERY_TRIAL,
    ),
    "reap": Command(
        reap_command,
        "end the RUNNING runs whose process is gone (no heartbeat for --stale_after seconds) as FAILED",
        liveness.SETTINGS,
    ),
    "sweep-worker": Command(sweep_worker_command, "(internal) a sweep's worker process", {}),
}


# --- parsing: argparse built from the declarations ----------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one `error:` line (InputError), not a usage text."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, exit_on_error=False, **kwargs)

    def error(self, message):
        raise InputError(message)


def _shown(value):
    if isinstance(value, bool):
        return str(value).lower()
    return "''" if value == "" else str(value)


def _add_options(group, declared):
    for name, param in declared.items():
        rule = "" if param.rule == "text" else f"; {param.rule}"
        group.add_argument(
            f"--{name}",
            metavar=TYPE_NAMES[param.type],
            default=argparse.SUPPRESS,  # only what is given is parsed: defaults come from the declarations
            help=f"{param.help} (default {_shown(param.default)}{rule})".replace("%", "%%"),
        )


def command_parser(name, command, entry_point=None):
    """The command's parser: its settings, and the training parameters of `entry_point` when it takes them."""
    parser = _Parser(prog=f"python -m pipelines {name}", description=command.help)
    _add_options(parser.add_argument_group("settings"), command.settings)
    if command.training_params and entry_point:
        task, variant = entry_point
        title = f"parameters of {task.qualified_name(variant)} ({command.training_params})"
        _add_options(parser.add_argument_group(title), declared_params(task, variant))
        parser.epilog = f"--task NAME --help lists another entry point's: {', '.join(entry_points())}"
    return parser


def parse_command_line(argv):
    """(command name, settings, training parameter overrides as text) from the words after `python -m pipelines`."""
    top = _Parser(prog="python -m pipelines", description=__doc__.split("\n")[0])
    names = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        names.add_parser(name, help=command.help, add_help=False)
    name = top.parse_args(argv[:1]).command
    command, words = COMMANDS[name], [_underscored(word) for word in argv[1:]]
    entry_point = None
    if command.training_params:
        chosen = _Parser(add_help=False)
        _add_options(chosen, ENTRY_POINT_SETTINGS)
        given, _ = chosen.parse_known_args(words)
        given = {**{n: p.default for n, p in ENTRY_POINT_SETTINGS.items()}, **vars(given)}
        entry_point = resolve(given["task"], given["variant"])
    given, unknown = command_parser(name, command, entry_point).parse_known_args(words)
    if unknown:
        raise InputError(_unknown_message(unknown[0], command, entry_point))
    given = vars(given)
    settings = {n: p.parse(n, given[n]) if n in given else p.default for n, p in command.settings.items()}
    return name, settings, {n: value for n, value in given.items() if n not in command.settings}


def _argparse_message(error):
    name = (error.argument_name or "").split("/")[0].lstrip("-")
    message = "missing value" if "expected one argument" in error.message else error.message
    return f"{name}: {message}" if name else message


def _underscored(word):
    """--learning-rate=x -> --learning_rate=x, as MLproject writes names."""
    if not word.startswith("--"):
        return word
    name, equals, value = word.partition("=")
    return name.replace("-", "_").replace("__", "--", 1) + equals + value


def _unknown_message(word, command, entry_point):
    if not word.startswith("--") or len(word) == 2:
        return f"unexpected argument '{word}': parameters are given as --name value"
    name = word[2:].partition("=")[0]
    if command.training_params:
        task, variant = entry_point
        known = sorted(declared_params(task, variant))
        return f"{name}: not a parameter of {task.qualified_name(variant)} (its parameters: {', '.join(known)})"
    return f"{name}: not a setting of this command (its settings: {', '.join(command.settings)})"


def _print_dry_run(plan):
    from pipelines.tracking import mark_pending_run_dry

    print(yaml.safe_dump(plan, sort_keys=False), end="")
    mark_pending_run_dry()
    return 0


# --- running -------------------------------------------------------------------------------------


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(word) for word in argv]
    handlers = {signum: signal.getsignal(signum) for signum in stopping.STOP_SIGNALS}
    unraisable_hook = sys.unraisablehook
    stopping.handle_stop_signals()
    launcher, launched_run_id = stopping.find_launcher(), os.environ.get("MLFLOW_RUN_ID")
    if launcher:
        stopping.watch_launcher(launcher)
    try:
        try:
            name, settings, overrides = parse_command_line(argv)
        except SystemExit as finished:  # --help
            return finished.code
        except argparse.ArgumentError as error:
            raise InputError(_argparse_message(error)) from None
        return COMMANDS[name].run(settings, overrides)
    except InputError as error:
        return _stop(f"error: {error}", "FAILED", EXIT_BAD_INPUT)
    except RunFailed as error:
        return _stop(f"error: {error}", "FAILED", EXIT_FAILED)
    except KeyboardInterrupt as stop:
        code = _stop(f"stopped ({stop or 'SIGINT'}): the run ended KILLED", "KILLED", EXIT_INTERRUPTED)
        # `mlflow run` will overwrite KILLED with FAILED once this process exits: put it back then.
        stopping.keep_status(launcher, launched_run_id, "KILLED")
        return code
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        sys.unraisablehook = unraisable_hook


def _stop(message, status, code):
    """One line on stderr, and the run `mlflow run` created for us ended with `status`."""
    print(message, file=sys.stderr, flush=True)
    if os.environ.get("MLFLOW_RUN_ID"):
        from pipelines.tracking import end_pending_run

        end_pending_run(status)
    return code
