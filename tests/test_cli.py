"""The entry points as users call them: `python -m pipelines`, `mlflow run`, Ctrl-C and SIGTERM."""

import subprocess
import sys

import mlflow
import numpy as np
import pytest
import yaml

from experiments import entry_points
from experiments.mnist import load_mnist
from pipelines.cli import COMMANDS, main, parse_command_line
from pipelines.params import declared_params
from tests.helpers import PROJECT, mlflow_run, run_cli, runs


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "mnist_cnn", "--learning_rate", "abc"], "error: learning_rate: 'abc' is not a finite number"),
        (["--task", "mnist_cnn", "--epochs", "0"], "error: epochs: 0 is out of range"),
        (["--task", "mnist_cnn_dropout", "--dropout", "1.5"], "error: dropout: 1.5 is out of range"),
        (["--task", "mnist", "--variant", "cnn_xl"], "error: variant: unknown variant 'cnn_xl'"),
        (["--task", "cifar"], "error: task: unknown task 'cifar'"),
        (["--task", "xor", "--data", "x.csv"], "error: data: not a parameter of xor"),
        (
            ["--task", "mnist_cnn", "--data", "/nonexistent/mnist.npz"],
            "error: MNIST file not found at /nonexistent/mnist.npz",
        ),
        (["--task", "churn", "--epochs"], "error: epochs: missing value"),
        (["--task", "churn", "stray"], "error: unexpected argument 'stray': parameters are given as --name value"),
        (["--task", "churn", "--dry_run", "perhaps"], "error: dry_run: 'perhaps' is not true or false"),
    ],
)
def test_bad_input_is_one_error_line_and_no_run(argv, message, store, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert runs(store) == []


def test_a_diverged_training_is_one_error_line_with_exit_code_1(store, capsys):
    """Not bad input but a failed run: exit code 1, the run FAILED."""
    argv = ["train", "--task", "linear", "--epochs", "3", "--optimizer", "sgd", "--learning_rate", "1e12"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: learning_rate: training diverged"), err
    (run,) = runs(store)
    assert run.info.status == "FAILED"


@pytest.mark.parametrize("name", sorted(entry_points()))
def test_train_help_lists_every_parameter_with_type_default_and_range(name, capsys):
    task, variant = entry_points()[name]
    assert main(["train", "--task", name, "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal's width
    for param_name, param in declared_params(task, variant).items():
        metavar = {int: "INT", float: "FLOAT", str: "TEXT", bool: "[BOOL]"}[param.type]
        default = "''" if param.default == "" else str(param.default)
        rule = "" if param.rule == "text" else f"; {param.rule}"
        assert f"--{param_name} {metavar} {param.help} (default {default}{rule})" in shown, param_name


@pytest.mark.parametrize("command", [name for name in COMMANDS if name != "sweep-worker"])
def test_every_command_help_lists_its_settings_with_defaults(command, capsys):
    assert main([command, "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    for name, param in COMMANDS[command].settings.items():
        assert f"--{name} " in shown and param.help in shown, name
    if command == "compare":
        assert "empty: $MLFLOW_EXPERIMENT_NAME (or _ID), else comparisons" in shown


@pytest.mark.parametrize(
    ("words", "dry_run"),
    [
        (["--dry_run"], True),
        (["--dry_run", "--epochs", "3"], True),
        (["--epochs", "3", "--dry_run"], True),
        (["--dry_run", "true"], True),
        (["--dry_run=yes"], True),
        (["--dry_run", "false"], False),
        ([], False),
    ],
)
def test_a_boolean_setting_given_bare_means_true(words, dry_run):
    line = parse_command_line(["train", "--task", "churn", *words])
    assert line.settings["dry_run"] is dry_run
    assert line.params["epochs"] == (3 if "--epochs" in words else 100)  # churn's default


def test_help_shows_booleans_in_their_bare_form(capsys):
    assert main(["sweep", "--help"]) == 0
    assert "--dry_run [BOOL]" in capsys.readouterr().out


@pytest.mark.parametrize("word", ["--learning_rate=-1e-3", "--learning-rate=-1e-3"])
def test_a_value_that_starts_with_a_minus_is_a_value(word, store, capsys):
    """MLproject passes --name={name}: -P learning_rate=-1e-3 reaches the range check."""
    assert main(["train", "--task", "xor", word]) == 2
    assert capsys.readouterr().err.strip() == "error: learning_rate: -0.001 is out of range; it must be a number > 0"


def test_one_parse_gives_the_command_its_checked_settings_and_parameters():
    line = parse_command_line(["sweep", "--task", "mnist_cnn_l2", "--epochs", "3", "--n_trials", "5", "--l2=1e-3"])
    assert (line.command, line.settings["n_trials"], line.settings["task"]) == ("sweep", 5, "mnist_cnn_l2")
    assert line.given == {"epochs": "3", "l2": "1e-3"}  # as given: what --dry_run shows as set on the command line
    assert line.params["epochs"] == 3 and line.params["l2"] == 1e-3 and line.params["batch_size"] == 128


def test_dry_run_prints_the_merged_recipe_and_starts_no_run(store, capsys):
    argv = ["train", "--task", "mnist_cnn_dropout", "--epochs", "3", "--conv_dropout", "0.3", "--dry_run", "true"]
    assert main(argv) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["entry_point"] == "mnist_cnn_dropout" and plan["model"].startswith("conv_net with dropout")
    assert plan["params"]["epochs"] == 3 and plan["params"]["conv_dropout"] == 0.3
    assert plan["params"]["dropout"] == 0.5 and plan["params"]["seed"] == 42  # the variant's and the common defaults
    assert plan["set_by"]["command line"] == ["epochs", "conv_dropout"]
    assert "dropout" in plan["set_by"]["variant"] and "seed" in plan["set_by"]["common"]
    assert runs(store) == []


@pytest.mark.slow
def test_bad_input_in_a_real_process_has_no_traceback(store):
    completed = run_cli("train", "--task", "mnist_cnn", "--learning_rate", "abc")
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1] == "error: learning_rate: 'abc' is not a finite number"
    assert "Traceback" not in completed.stderr


@pytest.mark.slow
def test_mlflow_run_trains_an_entry_point_and_the_generic_train_one(store, tiny, mnist_npz):
    completed = mlflow_run("mnist_cnn", **tiny.overrides("mnist_cnn", epochs=3))
    assert completed.returncode == 0, completed.stderr[-3000:]
    (run,) = runs(store)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3" and run.data.tags["mlflow.project.entryPoint"] == "mnist_cnn"
    assert [m.step for m in store.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2]
    assert [m.step for m in store.get_metric_history(run.info.run_id, "epoch_time_s")] == [0, 1, 2]
    figures = {a.path for a in store.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/learning_curves.png", "figures/confusion_matrix.png"}
    (model_output,) = run.outputs.model_outputs
    model = mlflow.pyfunc.load_model(f"models:/{model_output.model_id}")
    assert model.metadata.saved_input_example_info is not None
    splits = load_mnist(mnist_npz, seed=42)  # raw pixels in: the model scales them itself
    predicted = np.asarray(model.predict(splits.x_test)).argmax(axis=1)  # the logged metric is the model's
    assert run.data.metrics["test_accuracy"] == pytest.approx(np.mean(predicted == splits.y_test))

    completed = mlflow_run("train", task="mnist", variant="cnn_bn", **tiny.overrides("mnist_cnn_bn", filters=4))
    assert completed.returncode == 0, completed.stderr[-3000:]
    by_variant = {run.data.tags["variant"]: run for run in runs(store)}
    assert set(by_variant) == {"cnn", "cnn_bn"}
    assert by_variant["cnn_bn"].info.status == "FINISHED"
    assert by_variant["cnn_bn"].data.params["filters"] == "4" and "test_accuracy" in by_variant["cnn_bn"].data.metrics


@pytest.mark.slow
def test_mlflow_run_dry_run_prints_the_recipe_and_trains_nothing(store):
    completed = mlflow_run("churn", epochs=7, dry_run="true")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert yaml.safe_load(completed.stdout)["params"]["epochs"] == 7
    (run,) = runs(store)  # made by `mlflow run` before the command started: marked, nothing in it
    assert run.data.tags["dry_run"] == "true" and run.info.status == "FINISHED"
    assert not run.data.metrics and not run.outputs.model_outputs


@pytest.mark.slow
def test_mlflow_run_with_bad_input_fails_the_run_with_one_line(store):
    completed = mlflow_run("mnist_cnn", learning_rate="abc")
    assert completed.returncode != 0
    assert "error: learning_rate: 'abc' is not a finite number" in completed.stderr
    (run,) = runs(store)
    assert run.info.status == "FAILED"


# What a command imports: no TensorFlow where nothing trains, no MLflow where nothing is tracked.
IMPORTS_AFTER = """
import sys
from pipelines.cli import main
main(sys.argv[1:])
heavy = {"tensorflow", "keras", "mlflow", "sklearn", "pandas"}
loaded = {name.split(".")[0] for name, module in sys.modules.items() if type(module).__name__ != "_LazyModule"}
print("loaded:", *sorted(loaded & heavy), file=sys.stderr)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["--help"], set()),
        (["train", "--task", "emotion_cnn_deep", "--help"], set()),
        (["promote", "--help"], set()),
        (["train", "--task", "mnist_cnn", "--dry_run"], set()),
        (["sweep", "--task", "mnist_cnn", "--dry_run"], set()),
        (["train", "--task", "mnist_cnn", "--learning_rate", "abc"], set()),
        (["sweep", "--task", "xor", "--search_space", '{"dropout": [2]}'], set()),
        (["reap", "--dry_run"], {"mlflow", "pandas"}),  # it reads the store: MLflow imports pandas
    ],
    ids=["help", "train-help", "promote-help", "train-dry-run", "sweep-dry-run", "refusal", "sweep-refusal", "reap"],
)
def test_commands_that_train_nothing_import_no_tensorflow(argv, allowed, store):
    completed = subprocess.run(
        [sys.executable, "-c", IMPORTS_AFTER, *argv], cwd=PROJECT, capture_output=True, text=True, timeout=120
    )
    (line,) = [line for line in completed.stderr.splitlines() if line.startswith("loaded:")]
    assert set(line.split()[1:]) <= allowed, completed.stderr[-2000:]
