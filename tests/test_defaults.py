"""Each default has one home: its declaration (a `Param` in a command's settings, the training
parameters or a task's knobs). A function that takes a declared setting by its name takes it
without a default of its own, so that a library call and the command give the same run; it may
only mark it "not given" (None, or the declaration's own empty text)."""

import ast
from pathlib import Path

from experiments import TASKS
from pipelines.cli import COMMANDS
from pipelines.params import TRAINING_PARAMS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("pipelines/**/*.py"), *ROOT.glob("experiments/**/*.py")])
NOT_GIVEN = (None, "")


def declared_names():
    declared = {*TRAINING_PARAMS}
    for command in COMMANDS.values():
        declared |= set(command.settings)
    for task in TASKS.values():
        for variant in task.variants.values():
            declared |= set(variant.knobs)
    return declared


def signature_defaults(path):
    """(line, function, parameter, default source) of every parameter with a default."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        arguments = node.args
        positional = [*arguments.posonlyargs, *arguments.args]
        with_defaults = zip(positional[len(positional) - len(arguments.defaults) :], arguments.defaults, strict=True)
        keyword_only = zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
        for argument, default in [*with_defaults, *keyword_only]:
            if default is not None:
                found.append((node.lineno, node.name, argument.arg, default))
    return found


def gives_a_value(default):
    return not (isinstance(default, ast.Constant) and default.value in NOT_GIVEN)


def test_no_signature_gives_a_declared_setting_a_default_of_its_own():
    declared = declared_names()
    assert {"epochs", "system_metrics_interval", "alpha", "stale_after", "filters"} <= declared
    doubled = [
        f"{path.relative_to(ROOT)}:{line}: {function}({name}={ast.unparse(default)})"
        for path in SOURCES
        for line, function, name, default in signature_defaults(path)
        if name in declared and gives_a_value(default)
    ]
    assert not doubled, "defaults that a declaration also gives:\n" + "\n".join(doubled)


def test_the_check_finds_a_doubled_default(tmp_path):
    source = tmp_path / "doubled.py"
    source.write_text("def promote(task, variant='', *, alpha=0.05, gate=None):\n    pass\n")
    found = {name: gives_a_value(default) for _, _, name, default in signature_defaults(source)}
    assert found == {"variant": False, "alpha": True, "gate": False}
