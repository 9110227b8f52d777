"""The commands train, sweep, promote, compare, workflow and reap: `python -m pipelines train --task mnist_cnn`.

Every option and its --help line come from the declarations of the parameters and
settings. Bad input ends with one `error:` line naming the parameter or file and exit
code 2; a run that fails for another reason (a diverged training, a failed step) with one
`error:` line and exit code 1; Ctrl-C or SIGTERM with exit code 130. No MLflow run is left
RUNNING.
"""

import argparse
import dataclasses
import functools
import os
import signal
import sys
from collections.abc import Callable

import yaml

from experiments import InputError, Param, RunFailed, entry_points, resolve
from pipelines import compare, liveness, registry, schema, stopping, workflow
from pipelines.params import (
    DRY_RUN,
    ENTRY_POINT_SETTINGS,
    EXPERIMENT,
    REPEATS,
    RESUME,
    SYSTEM_METRICS_INTERVAL,
    declared_params,
    parse_params,
    recipe,
)
from pipelines.sweeps import settings as sweep_settings

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
# On the run `mlflow run` created, why the command refused or failed: the kind, and the `error:` line
# as the run's description (MLflow shows the tag mlflow.note.content as the description).
TYPE_NAMES = {int: "INT", float: "FLOAT", str: "TEXT", bool: "BOOL"}


# --- the commands: each a thin adapter from a parsed command line to the module that does the work ---


def train_command(line):
    if line.settings["repeats"] > 1 and line.settings["resume"]:
        raise InputError("repeats: resume continues one run; give repeats=1 with resume")
    if line.settings["resume"]:
        line = _with_resumed_recipe(line)
    task, variant = line.entry_point
    if line.settings["dry_run"]:
        from_run = [name for name in line.params if name not in line.given] if line.settings["resume"] else []
        merged = recipe(task, variant, line.params, line.given, from_run)
        extra = {name: line.settings[name] for name in ("resume",) if line.settings[name]}
        if line.settings["repeats"] > 1:  # the seeds it would train
            extra["repeats"] = [line.params["seed"] + offset for offset in range(line.settings["repeats"])]
        return _print_dry_run({**merged, **extra})

    from pipelines.data import prepare_data
    from pipelines.tracking import headline, use_experiment

    # Bad data is refused before the experiment is created.
    if line.settings["repeats"] > 1:
        from pipelines.repeats import prepare_repeats, run_repeats

        prepared = prepare_repeats(task, variant, line.params, line.settings["repeats"])
        use_experiment(line.settings["experiment"], task.name)
        run_repeats(task, variant, line.params, prepared, line.settings["system_metrics_interval"])
        return 0
    splits = prepare_data(task, variant, line.params)
    from pipelines.train import train  # TensorFlow, once the data is known to be good

    if line.settings["resume"]:
        from pipelines.resume import experiment_of

        experiment_of(line.settings["resume"], line.settings["experiment"])  # the run stays in its own
    else:
        use_experiment(line.settings["experiment"], task.name)
    result = train(
        task,
        variant,
        line.params,
        splits=splits,
        system_metrics_interval=line.settings["system_metrics_interval"],
        resume_run_id=line.settings["resume"],
    )
    print(f"run {result.run_id} finished: {headline(result.metrics, task.primary_metric)}")
    return 0


def _with_resumed_recipe(line):
    """`line` with the entry point and the parameters of the run it resumes: the run's own, those given applied."""
    from pipelines.resume import entry_point_of, own_params

    entry_point = line.entry_point or entry_point_of(line.settings["resume"])
    texts = own_params(line.settings["resume"], *entry_point, line.given)
    return dataclasses.replace(line, entry_point=entry_point, params=parse_params(*entry_point, texts))


def sweep_command(line):
    from pipelines.sweeps import plan

    task, variant = line.entry_point
    space, params = plan.checked_space(task, variant, line.settings, line.params, fixed_by_user=set(line.given))
    if line.settings["dry_run"]:
        return plan.print_plan(task, variant, line.settings, space, params)
    from pipelines.sweeps import coordinator

    return coordinator.run_sweep(task, variant, line.settings, space, params)


def sweep_worker_command(line):
    started_by_hand = "sweep-worker: started by `sweep` only; run `python -m pipelines sweep` instead"
    if not os.environ.get(sweep_settings.WORKER_SPEC_ENV):
        raise InputError(started_by_hand)
    try:
        spec = sweep_settings.SweepSpec.from_env()
    except (ValueError, TypeError):  # not the JSON spec a coordinator writes
        raise InputError(f"{started_by_hand} ({sweep_settings.WORKER_SPEC_ENV} holds no worker spec)") from None
    from pipelines.sweeps.worker import run_worker

    # Ctrl-C reaches the whole process group; the coordinator then stops its workers with
    # one SIGTERM each. A worker whose coordinator is gone (kill -9) stops too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopping.watch_launcher(stopping.parent_launcher("its sweep coordinator"))
    run_worker(spec)
    return 0


def promote_command(line):
    registry.run_promotion(**line.settings)
    return 0


def compare_command(line):
    compare.run_comparison(line.settings["model"], line.settings["output"], line.settings["experiment"])
    return 0


def reap_command(line):
    liveness.reap(**line.settings)
    return 0


def workflow_command(line):
    task, variant = line.entry_point
    workflow.run_workflow(task, variant, line.settings, line.given, line.params)  # all checked before any step
    return 0


@dataclasses.dataclass(frozen=True)
class Command:
    run: Callable  # (CommandLine) -> exit code
    help: str
    settings: dict[str, Param]
    training_params: str = ""  # how the entry point's training parameters apply; empty: not taken
    hidden: bool = False  # not listed in --help


TRAIN_SETTINGS = {
    **ENTRY_POINT_SETTINGS,
    "experiment": EXPERIMENT,
    "resume": RESUME,
    "repeats": REPEATS,
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
    "sweep-worker": Command(sweep_worker_command, "a sweep's worker process, started by sweep", {}, hidden=True),
}


# --- parsing: one pass, built from the declarations ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class CommandLine:
    """What the words after `python -m pipelines` ask for, every value checked."""

    command: str
    settings: dict  # every setting of the command: given, else its declared default
    entry_point: tuple | None = None  # (task, variant) for the commands that run one; a resume may leave it to its run
    params: dict = dataclasses.field(default_factory=dict)  # the entry point's training parameters, defaults included
    given: dict = dataclasses.field(default_factory=dict)  # those given on the command line, as given


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
    """An option per declaration, parsed and checked by it; a boolean given bare means true."""
    for name, param in declared.items():
        rule = "" if param.rule == "text" else f"; {param.rule}"
        bare = {"nargs": "?", "const": True} if param.type is bool else {}
        group.add_argument(
            f"--{name}",
            metavar=TYPE_NAMES[param.type],
            type=functools.partial(param.parse, name),
            default=argparse.SUPPRESS,  # what is not given takes its declared default
            help=f"{param.help} (default {_shown(param.default)}{rule})".replace("%", "%%"),
            **bare,
        )


def command_parser(name, command, entry_point=None):
    """The command's parser as --help shows it: its settings, and the training parameters of
    `entry_point` when it takes them."""
    parser = _Parser(prog=f"python -m pipelines {name}", description=command.help)
    _add_options(parser.add_argument_group("settings"), command.settings)
    if command.training_params and entry_point:
        task, variant = entry_point
        title = f"parameters of {task.qualified_name(variant)} ({command.training_params})"
        _add_options(parser.add_argument_group(title), declared_params(task, variant))
        parser.epilog = f"--task NAME --help lists another entry point's: {', '.join(entry_points())}"
    return parser


def parse_command_line(argv):
    """The CommandLine of the words after `python -m pipelines`; bad input raises InputError.

    argparse reads the command's settings; the rest are the entry point's training
    parameters (`--name value` or `--name=value`), checked by their declarations.
    """
    name = _command_name(argv[:1])
    command, words = COMMANDS[name], [_underscored(word) for word in argv[1:]]
    settings_parser = _Parser(add_help=False)
    _add_options(settings_parser, command.settings)
    given_settings, rest = settings_parser.parse_known_args(words)
    settings = {n: getattr(given_settings, n, param.default) for n, param in command.settings.items()}
    entry_point = None
    # A resumed run names its own entry point, once read from the store: a task given must be the run's.
    if command.training_params and not (settings.get("resume") and not {"task", "variant"} & set(vars(given_settings))):
        entry_point = resolve(settings["task"], settings["variant"])
    if {"-h", "--help"} & set(rest):
        command_parser(name, command, entry_point).print_help()
        raise SystemExit(0)
    if not command.training_params:
        if rest:
            raise InputError(_unknown_message(rest[0], command, entry_point))
        return CommandLine(name, settings)
    given = _training_params(rest, command, entry_point)
    return CommandLine(name, settings, entry_point, parse_params(*entry_point, given) if entry_point else {}, given)


def _command_name(words):
    if words and words[0] in COMMANDS and COMMANDS[words[0]].hidden:
        return words[0]  # not offered by --help, nor among the choices an unknown command is told of
    top = _Parser(prog="python -m pipelines", description=__doc__.split("\n")[0])
    names = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        if not command.hidden:
            names.add_parser(name, add_help=False, help=command.help)
    return top.parse_args(words).command


def _training_params(words, command, entry_point):
    """{name: text} from `--name value` and `--name=value` words; their names are checked against
    `entry_point`'s, or later once it is known (None)."""
    declared, given = declared_params(*entry_point) if entry_point else None, {}
    words = list(words)
    while words:
        word = words.pop(0)
        if not word.startswith("--") or len(word) == 2:
            raise InputError(f"unexpected argument '{word}': parameters are given as --name value")
        name, equals, value = word[2:].partition("=")
        if declared is not None and name not in declared:
            raise InputError(_unknown_message(word, command, entry_point))
        if not equals:
            if not words or words[0].startswith("--"):
                raise InputError(f"{name}: missing value")
            value = words.pop(0)
        given[name] = value
    return given


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


def _print_dry_run(merged_recipe):
    from pipelines.tracking import mark_pending_run_dry

    print(yaml.safe_dump(merged_recipe, sort_keys=False), end="")
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
            line = parse_command_line(argv)
        except SystemExit as finished:  # --help
            return finished.code
        except argparse.ArgumentError as error:
            raise InputError(_argparse_message(error)) from None

        def report_forced_stop(cause):  # the stop watchdog's, once the run ended KILLED from its thread
            print(f"stopped ({cause}): the run ended KILLED{_advice()}", file=sys.stderr, flush=True)
            stopping.keep_status(launcher, launched_run_id, "KILLED")

        with stopping.on_forced_stop(report_forced_stop):
            return COMMANDS[line.command].run(line)
    except InputError as error:
        return _stop(f"error: {error}", "FAILED", EXIT_BAD_INPUT, (launched_run_id, schema.BAD_INPUT_ERROR))
    except RunFailed as error:
        return _stop(f"error: {error}", "FAILED", EXIT_FAILED, (launched_run_id, schema.FAILURE_ERROR))
    except KeyboardInterrupt as stop:
        return _stopped(stop, launcher, launched_run_id)
    except Exception as error:
        # A stop that landed in a library's code, which reported it as its own failure (a database's
        # error) or swallowed it and failed later (a module left half imported), ends the command as a stop.
        stop = _stop_within(error) or stopping.stop_received()
        if stop is not None:
            return _stopped(stop, launcher, launched_run_id)
        if not isinstance(error, _store_failures()):
            raise  # a bug: its traceback is what fixes it
        return _stop(f"error: {_failure_line(error)}", "FAILED", EXIT_FAILED, (launched_run_id, schema.FAILURE_ERROR))
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        sys.unraisablehook = unraisable_hook
        if "pipelines.tracking" in sys.modules:  # imported by the commands that log
            sys.modules["pipelines.tracking"].forget_launch()


def _stopped(stop, launcher, launched_run_id):
    started = launched_run_id or stopping.any_run_started()
    outcome = f"the run ended KILLED{_advice()}" if started else "before any run started"
    code = _stop(f"stopped ({stop or 'SIGINT'}): {outcome}", "KILLED", EXIT_INTERRUPTED, (launched_run_id, None))
    # `mlflow run` will overwrite KILLED with FAILED once this process exits: put it back then.
    stopping.keep_status(launcher, launched_run_id, "KILLED")
    return code


def _advice():
    """'; <what the user can do next>' after a stop, or ''."""
    advice = stopping.advice_after_stop()
    return f"; {advice}" if advice else ""


def _stop_within(error):
    """The stop (a KeyboardInterrupt) among the exceptions that led to `error`, or None."""
    return next((cause for cause in _chain(error) if isinstance(cause, KeyboardInterrupt)), None)


def _chain(error):
    """`error`, then each exception that led to it, back to the first."""
    seen = set()
    while error is not None and id(error) not in seen:
        yield error
        seen.add(id(error))
        error = error.__cause__ or error.__context__


# Failures of the tracking store, the artifact store, a study's database or the disk: (module, class).
# Only modules already imported are looked at: an exception of one never imported cannot have been raised.
STORE_FAILURES = (
    ("mlflow.exceptions", "MlflowException"),
    ("sqlalchemy.exc", "SQLAlchemyError"),
    ("requests.exceptions", "RequestException"),
    ("optuna.exceptions", "StorageInternalError"),
)
MAX_FAILURE_CHARACTERS = 300


def _store_failures():
    loaded = (getattr(sys.modules.get(module), name, None) for module, name in STORE_FAILURES)
    return (OSError, *(kind for kind in loaded if isinstance(kind, type)))


def _failure_line(error):
    """What failed, in one line: the file and the system's word for a disk failure, else the
    store and the first line of what it said (a password in its URI masked)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f": {error.filename}" if error.filename else "")
    import mlflow

    from experiments.task import shown
    from pipelines.sweeps.storage import describe

    said = str(getattr(error, "message", None) or error).strip().splitlines() or [type(error).__name__]
    said = shown(said[0], limit=MAX_FAILURE_CHARACTERS)
    *_, root = _chain(error)
    if isinstance(root, OSError) and root.strerror and root.strerror not in said:  # what a long message cuts off
        said = f"{root.strerror} ({said})"
    return f"tracking store {describe(mlflow.get_tracking_uri())}: {said}"


def _stop(message, status, code, launched=(None, None)):
    """One line on stderr; given `launched` (the run `mlflow run` made, and the kind of error or
    None), that run ended with `status` unless it ended already, and an error's kind and line
    recorded on it (tag error.kind, and its description)."""
    print(message, file=sys.stderr, flush=True)
    run_id, kind = launched
    if run_id:
        import mlflow

        from pipelines.tracking import end_pending_run

        try:
            if kind:
                tags = {schema.ERROR_KIND_TAG: kind, schema.DESCRIPTION_TAG: message}
                mlflow.MlflowClient().log_batch(run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])
            end_pending_run(status)
        except mlflow.MlflowException:
            pass  # the store refused (what failed may be the store itself): `mlflow run` still ends the run FAILED
    return code
