"""Declarations: parameters, names, and the files generated from them."""

import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import tomllib
import yaml
from hypothesis import given
from hypothesis import strategies as st

from experiments import TASKS, InputError, Param, entry_points, resolve
from experiments.task import MAX_INT
from pipelines import mlproject
from pipelines.cli import COMMANDS
from pipelines.params import TRAINING_PARAMS, changes_from_default, declared_params, parse_params, recipe
from tests.helpers import PROJECT

REQUIRED_ENTRY_POINTS = {
    *("xor", "linear", "iris", "churn", "mnist_mlp", "mnist_mlp_deep", "mnist_mlp_dropout", "mnist_mlp_sgd"),
    *("mnist_cnn", "mnist_cnn_l1", "mnist_cnn_l2", "mnist_cnn_bn", "mnist_cnn_dropout", "mnist_cnn_augment"),
    *("emotion_cnn", "train", "main"),
}


def test_mlproject_files_are_generated_from_the_declarations():
    assert mlproject.main(["--check"]) == 0, "run `python -m pipelines.mlproject`"
    assert mlproject.MLPROJECT.read_text() == mlproject.render()


def test_mlproject_has_every_entry_point_with_typed_defaults():
    spec = yaml.safe_load(mlproject.MLPROJECT.read_text())
    assert REQUIRED_ENTRY_POINTS <= set(spec["entry_points"])
    cnn = spec["entry_points"]["mnist_cnn"]
    assert cnn["parameters"]["epochs"] == {
        "type": "int",
        "default": declared_params(*resolve("mnist_cnn"))["epochs"].default,
    }
    assert cnn["parameters"]["learning_rate"]["type"] == "float"
    assert spec["entry_points"]["main"]["command"] == cnn["command"]
    for name, entry in spec["entry_points"].items():
        placeholders = set(re.findall(r"{(\w+)}", entry["command"]))
        assert placeholders == set(entry["parameters"]), name
    for command in ("sweep", "promote", "compare", "workflow"):
        declared = {name for name in COMMANDS[command].settings if name != "experiment"}
        assert set(spec["entry_points"][command]["parameters"]) == declared, command


def test_mlproject_values_holding_quotes_and_colons_survive_yaml(monkeypatch):
    """The YAML comes from yaml.safe_dump, not f-strings: any default reads back as written."""
    task, variant = resolve("mnist_cnn")
    awkward = 'it\'s "quoted": {braces} # not a comment'
    monkeypatch.setitem(task.variants[variant].knobs, "note", Param(str, awkward, "a text knob"))
    spec = yaml.safe_load(mlproject.render())
    assert spec["entry_points"]["mnist_cnn"]["parameters"]["note"]["default"] == awkward


def test_conda_env_pins_the_same_versions_as_pyproject():
    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    conda = yaml.safe_load((PROJECT / "conda.yaml").read_text())
    pip_pins = next(item["pip"] for item in conda["dependencies"] if isinstance(item, dict))
    assert sorted(pip_pins) == sorted(pyproject["project"]["dependencies"])
    assert all("==" in pin for pin in pip_pins)


@pytest.mark.parametrize(
    ("name", "variant", "expected"),
    [
        ("mnist", "", ("mnist", "cnn")),
        ("mnist", "cnn_bn", ("mnist", "cnn_bn")),
        ("mnist_cnn_bn", "", ("mnist", "cnn_bn")),
        ("xor", "", ("xor", "mlp")),
        ("emotion_cnn", "", ("emotion", "cnn")),
    ],
)
def test_resolve_task_and_entry_point_names(name, variant, expected):
    task, resolved = resolve(name, variant)
    assert (task.name, resolved) == expected


@pytest.mark.parametrize(
    ("name", "variant", "message"),
    [
        ("mnst", "", "task: unknown task 'mnst'"),
        ("mnist", "cnn_xx", "variant: unknown variant 'cnn_xx'"),
        ("xor_mlp2", "", "task: unknown task"),
    ],
)
def test_unknown_task_or_variant_is_refused(name, variant, message):
    with pytest.raises(InputError, match=re.escape(message)):
        resolve(name, variant)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"learning_rate": "abc"}, "learning_rate: 'abc' is not a finite number"),
        ({"learning_rate": "nan"}, "learning_rate: 'nan' is not a finite number"),
        ({"learning_rate": "0"}, "learning_rate: 0.0 is out of range; it must be a number > 0"),
        ({"epochs": "0"}, "epochs: 0 is out of range; it must be an integer in [1, 1000000]"),
        ({"epochs": "2.5"}, "epochs: '2.5' is not an integer"),
        ({"dropout": "1.5"}, "dropout: 1.5 is out of range; it must be a number in [0, 1)"),
        ({"shift": "0.5"}, "shift: 0.5 is out of range; it must be a number in [0, 0.5)"),
        ({"optimizer": "adagrad"}, "optimizer: adagrad is out of range; it must be one of adam, adamw, nadam"),
        ({"l1": "0.1"}, "l1: not a parameter of mnist_cnn"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(overrides, message):
    task, variant = resolve("mnist_cnn")
    with pytest.raises(InputError, match=re.escape(message)):
        parse_params(task, variant, overrides)


def test_values_are_parsed_to_their_types():
    params = parse_params(*resolve("mnist_cnn_l2"), {"epochs": "3", "l2": "1e-3", "dropout": 0.25})
    assert params["epochs"] == 3 and params["l2"] == 0.001 and params["dropout"] == 0.25
    assert params["filters"] == 32  # untouched defaults stay


def test_defaults_layer_common_then_task_then_variant_then_the_user():
    task, variant = resolve("mnist_cnn_bn")
    merged = recipe(task, variant, parse_params(task, variant, {"learning_rate": "0.01"}), {"learning_rate": "0.01"})
    params, set_by = merged["params"], merged["set_by"]
    assert params["seed"] == TRAINING_PARAMS["seed"].default and "seed" in set_by["common"]
    assert params["epochs"] == 24 and "epochs" in set_by["variant"]  # cnn_bn's own, over the fast recipe's 6
    assert params["learning_rate"] == 0.01 and set_by["command line"] == ["learning_rate"]
    churn = recipe(*resolve("churn"), parse_params(*resolve("churn"), {}), {})
    assert churn["params"]["batch_size"] == 10 and "batch_size" in churn["set_by"]["task"]
    layers = [name for names in merged["set_by"].values() for name in names]
    assert sorted(layers) == sorted(params)  # each parameter comes from one place


@pytest.mark.parametrize("name", sorted(entry_points()))
def test_every_entry_point_declares_valid_defaults_and_search_bounds(name):
    task, variant = entry_points()[name]
    declared = declared_params(task, variant)
    assert set(TRAINING_PARAMS) - {"data"} <= set(declared)
    assert ("data" in declared) == bool(task.data_help)
    for param_name, param in declared.items():
        assert param.parse(param_name, param.default) == param.default, (param_name, param.default)
        assert param.help and "\n" not in param.help
    for param_name, dist in task.variants[variant].search_space.items():
        bounds = dist.choices if hasattr(dist, "choices") else (dist.low, dist.high)
        for bound in bounds:
            declared[param_name].parse(param_name, bound)  # raises if a bound is outside the valid range


def test_every_module_that_defines_a_task_is_registered():
    defining = {path.stem for path in (PROJECT / "experiments").glob("*.py") if "\nTASK = Task(" in path.read_text()}
    registered = {task.load.__module__.removeprefix("experiments.") for task in TASKS.values()}
    assert registered == defining and len(defining) == len(TASKS) >= 6


# --- Param, for any value ------------------------------------------------------------------------

FRACTION = Param(float, 0.0, "a fraction", ge=0, lt=1)
COUNT = Param(int, 1, "a count", ge=1)


@given(st.floats(min_value=0, max_value=1, exclude_max=True))
def test_a_value_in_range_reads_back_as_itself(value):
    assert FRACTION.parse("fraction", repr(value)) == value


@given(st.one_of(st.floats(max_value=0, exclude_max=True), st.floats(min_value=1), st.just(math.nan)))
def test_a_value_out_of_range_is_one_line_naming_the_parameter(value):
    with pytest.raises(InputError) as refused:
        FRACTION.parse("fraction", repr(value))
    message = str(refused.value)
    assert message.startswith("fraction: ") and "\n" not in message
    assert message.endswith("it must be a number in [0, 1)") or "is not a finite number" in message


@given(st.text())
def test_any_text_is_an_integer_or_refused_in_one_line(text):
    try:
        value = COUNT.parse("count", text)
    except InputError as refused:
        assert str(refused).startswith("count: ") and "\n" not in str(refused)
    else:
        assert isinstance(value, int) and value >= 1 and float(text) == value


@given(st.integers(min_value=1, max_value=MAX_INT))
def test_an_integer_of_any_size_reads_back_exactly(number):
    assert COUNT.parse("count", str(number)) == number  # not through float, which rounds past 2**53


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "epochs",
            "99999999999999999999999",
            "epochs: 99999999999999999999999 is out of range; it must be an integer in",
        ),
        ("seed", "4294967296", "seed: 4294967296 is out of range; it must be an integer in [0, 4294967295]"),
        ("epochs", "1e999999999", "epochs: 1e999999999 is out of range; it must be an integer in [1, 1000000]"),
        ("units", "1e30", "units: 1e30 is out of range; it must be an integer >= 1 of at most 64 bits"),
    ],
)
def test_a_huge_integer_is_quoted_as_given_and_refused(name, text, message):
    task, variant = resolve("mnist_cnn")
    with pytest.raises(InputError, match=re.escape(message)):
        parse_params(task, variant, {name: text})


# --- adding a task touches one file --------------------------------------------------------------

TOY_TASK = '''
"""A throwaway task: the test's proof that a new task and its knob need one file."""

import keras
import numpy as np

from experiments.task import Param, Splits, Task, Variant


def load(data_path, seed):
    x = np.random.default_rng(seed).normal(size=(64, 3)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("float32")
    return Splits(x[:48], y[:48], x[48:], y[48:], class_names=("no", "yes"))


def net(input_shape, num_outputs, depth):
    layers = [keras.Input(shape=input_shape)]
    layers += [keras.layers.Dense(4, activation="relu") for _ in range(depth)]
    return keras.Sequential([*layers, keras.layers.Dense(num_outputs, activation="sigmoid")])


TASK = Task(
    name="toy",
    kind="binary",
    load=load,
    variants={
        "net": Variant(
            build=net,
            description="a dense net as deep as its knob",
            knobs={"depth": Param(int, 2, "how many hidden layers the toy net stacks", ge=1, le=5)},
        )
    },
    default_variant="net",
    defaults={"epochs": 2, "batch_size": 8},
)
'''
TOY_CHECKS = """
import contextlib, io, json, sys, yaml
from pipelines import mlproject
from pipelines.cli import main

def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()

results = {
    "help": run("train", "--task", "toy_net", "--help"),
    "bad": run("train", "--task", "toy_net", "--depth", "9"),
    "dry_run": run("train", "--task", "toy_net", "--depth", "3", "--dry_run", "true"),
    "trained": run("train", "--task", "toy_net", "--depth", "3"),
    "mlproject": yaml.safe_load(mlproject.render())["entry_points"]["toy_net"],
}
print(json.dumps(results))
"""


@pytest.mark.slow
def test_a_new_task_module_with_a_new_knob_reaches_every_surface(tmp_path, store):
    """One file dropped into a copy of experiments/: its knob reaches the CLI, --help,
    validation, --dry_run, training and MLproject, with no other line changed."""
    shutil.copytree(PROJECT / "experiments", tmp_path / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "experiments" / "toy.py").write_text(textwrap.dedent(TOY_TASK))
    completed = subprocess.run(
        [sys.executable, "-c", TOY_CHECKS],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}:{PROJECT}"},  # the copy's experiments first
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    code, out, _ = results["help"]
    help_text = " ".join(out.split())  # argparse wraps lines at the terminal's width
    assert (
        code == 0
        and "--depth INT how many hidden layers the toy net stacks (default 2; an integer in [1, 5])" in help_text
    )
    code, _, err = results["bad"]
    assert code == 2 and err.strip() == "error: depth: 9 is out of range; it must be an integer in [1, 5]"
    code, out, _ = results["dry_run"]
    plan = yaml.safe_load(out)
    assert code == 0 and plan["params"]["depth"] == 3 and plan["set_by"]["command line"] == ["depth"]
    code, out, _ = results["trained"]
    assert code == 0
    (run,) = store.search_runs([store.get_experiment_by_name("tests").experiment_id])
    assert run.data.params["depth"] == "3" and run.data.tags["entry_point"] == "toy_net"
    entry = results["mlproject"]
    assert entry["parameters"]["depth"] == {"type": "int", "default": 2} and "--depth={depth}" in entry["command"]


@pytest.mark.parametrize("name", sorted(entry_points()))
def test_a_builder_takes_its_knobs_and_fixed_values_and_defaults_none_of_them(name):
    """Each value in one place: a builder's own default would be a second, silent one."""
    task, variant = entry_points()[name]
    chosen = task.variants[variant]
    _, _, *arguments = inspect.signature(chosen.build).parameters.values()  # after input_shape, num_outputs
    assert {argument.name for argument in arguments} == set(chosen.knobs) | set(chosen.fixed)
    assert not set(chosen.knobs) & set(chosen.fixed)
    assert [argument.name for argument in arguments if argument.default is not inspect.Parameter.empty] == []


@pytest.mark.parametrize("entry_point", sorted(entry_points()))
def test_a_variant_says_each_default_its_recipe_changes_against_its_task_default(entry_point):
    task, variant = resolve(entry_point)
    said = changes_from_default(task, variant)
    ours, theirs = declared_params(task, variant), declared_params(task, task.default_variant)
    if variant == task.default_variant:
        assert said == ""
        return
    for name in ours.keys() | theirs.keys():
        differs = name not in ours or name not in theirs or ours[name].default != theirs[name].default
        assert (f"`{name}`" in said) == differs, (name, said)
    (table_row,) = [row for row in mlproject.entry_point_table().splitlines() if row.startswith(f"| `{entry_point}`")]
    assert said in table_row  # README's table says it
    dry_run = recipe(task, variant, parse_params(task, variant, {}), {})
    assert dry_run[f"against {task.qualified_name(task.default_variant)}"] == said  # and --dry_run
