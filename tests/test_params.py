"""Parameters, names and the files generated from the task registry."""

import re
import tomllib

import pytest
import yaml

from experiments import TASKS, InputError, entry_points, resolve
from pipelines import mlproject
from pipelines.params import PARAMS, defaults_for, parse_params
from tests.helpers import PROJECT

ISSUE_ENTRY_POINTS = {
    "xor", "linear", "iris", "churn", "mnist_mlp", "mnist_mlp_deep", "mnist_mlp_dropout",
    "mnist_mlp_sgd", "mnist_cnn", "mnist_cnn_l1", "mnist_cnn_l2", "mnist_cnn_bn",
    "mnist_cnn_dropout", "mnist_cnn_augment", "emotion_cnn", "train", "main",
}  # fmt: skip


def test_mlproject_is_generated_from_the_tasks():
    assert mlproject.MLPROJECT.read_text() == mlproject.render(), "run `python -m pipelines.mlproject`"


def test_mlproject_has_every_entry_point_with_typed_defaults():
    spec = yaml.safe_load(mlproject.MLPROJECT.read_text())
    assert ISSUE_ENTRY_POINTS <= set(spec["entry_points"])
    cnn = spec["entry_points"]["mnist_cnn"]
    assert cnn["parameters"]["epochs"] == {"type": "int", "default": defaults_for(*resolve("mnist_cnn"))["epochs"]}
    assert cnn["parameters"]["learning_rate"]["type"] == "float"
    assert spec["entry_points"]["main"]["command"] == cnn["command"]
    for name, entry in spec["entry_points"].items():
        placeholders = set(re.findall(r"{(\w+)}", entry["command"]))
        assert placeholders == set(entry["parameters"]), name


def test_conda_env_pins_the_same_versions_as_pyproject():
    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    conda = yaml.safe_load((PROJECT / "conda.yaml").read_text())
    pip_pins = next(item["pip"] for item in conda["dependencies"] if isinstance(item, dict))
    assert sorted(pip_pins) == sorted(pyproject["project"]["dependencies"])
    assert all("==" in pin for pin in pip_pins)


@pytest.mark.parametrize(
    ("name", "variant", "expected"),
    [("mnist", "", ("mnist", "cnn")), ("mnist", "cnn_bn", ("mnist", "cnn_bn")),
     ("mnist_cnn_bn", "", ("mnist", "cnn_bn")), ("xor", "", ("xor", "mlp")),
     ("emotion_cnn", "", ("emotion", "cnn"))],
)  # fmt: skip
def test_resolve_task_and_entry_point_names(name, variant, expected):
    task, resolved = resolve(name, variant)
    assert (task.name, resolved) == expected


@pytest.mark.parametrize(
    ("name", "variant", "message"),
    [("mnst", "", "task: unknown task 'mnst'"), ("mnist", "cnn_xx", "variant: unknown variant 'cnn_xx'"),
     ("xor_mlp2", "", "task: unknown task")],
)  # fmt: skip
def test_unknown_task_or_variant_is_refused(name, variant, message):
    with pytest.raises(InputError, match=re.escape(message)):
        resolve(name, variant)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"learning_rate": "abc"}, "learning_rate: 'abc' is not a finite number"),
        ({"learning_rate": "nan"}, "learning_rate: 'nan' is not a finite number"),
        ({"learning_rate": "0"}, "learning_rate: 0.0 is out of range; it must be a number > 0"),
        ({"epochs": "0"}, "epochs: 0 is out of range; it must be an integer >= 1"),
        ({"epochs": "2.5"}, "epochs: '2.5' is not an integer"),
        ({"dropout": "1.5"}, "dropout: 1.5 is out of range; it must be a number in [0, 1)"),
        ({"optimizer": "adagrad"}, "optimizer: adagrad is out of range; it must be one of adam"),
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


def test_every_variant_declares_only_known_params_with_valid_defaults():
    for name, (task, variant) in entry_points().items():
        defaults = defaults_for(task, variant)
        assert {"epochs", "batch_size", "learning_rate", "seed"} <= set(defaults), name
        for param, value in defaults.items():
            assert PARAMS[param].valid(value), (name, param, value)
        assert ("data" in defaults) == bool(task.data_help), name


def test_every_task_module_is_registered():
    modules = {path.stem for path in (PROJECT / "experiments").glob("*.py")} - {"__init__", "task", "datafiles"}
    assert {task.name for task in TASKS.values()} == {"xor", "linear", "iris", "churn", "mnist", "emotion"}
    assert len(modules) == len(TASKS)
