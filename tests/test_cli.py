"""The entry points as users call them: `python -m pipelines`, `mlflow run`, Ctrl-C and SIGTERM."""

import os
import shlex
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.projects._project_spec import load_project

from experiments import entry_points
from experiments.mnist import load_mnist
from pipelines.cli import COMMANDS, main, parse_command_line
from pipelines.params import declared_params
from tests.helpers import PROJECT, mlflow_run, options, run_cli, runs


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
        assert "empty: comparisons (under mlflow run, the one it chose)" in shown


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
    assert plan["entry_point"] == "mnist_cnn_dropout" and plan["model"].startswith("mnist_cnn's net with dropout")
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
def test_mlflow_run_trains_an_entry_point_and_logs_a_model_that_predicts_its_metric(store, tiny, mnist_npz):
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
    splits = load_mnist(mnist_npz, seed=42)  # 0-255 pixels, as float32 as the signature says: the model scales them
    predicted = np.asarray(model.predict(splits.x_test.astype("float32"))).argmax(axis=1)  # the metric is the model's
    assert run.data.metrics["test_accuracy"] == pytest.approx(np.mean(predicted == splits.y_test))


def test_the_generic_train_entry_point_trains_any_variant_with_the_parameters_it_passes_on(store, tiny):
    """`mlflow run . -e train -P task=mnist -P variant=cnn_bn -P filters=4 ...`: the command MLflow
    builds from MLproject (-P values it does not list are passed on), run as the entry point runs it."""
    params = {"task": "mnist", "variant": "cnn_bn", **tiny.overrides("mnist_cnn_bn", filters=4)}
    command = load_project(str(PROJECT)).get_entry_point("train").compute_command(params, storage_dir=None)
    assert command.startswith("python -m pipelines train ") and "--filters 4" in command
    assert main(shlex.split(command)[3:]) == 0  # the words after `python -m pipelines`
    (run,) = runs(store)
    assert run.info.status == "FINISHED" and (run.data.tags["task"], run.data.tags["variant"]) == ("mnist", "cnn_bn")
    assert run.data.params["filters"] == "4" and "test_accuracy" in run.data.metrics


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


# --- bad input and secrets ---

PASSWORD = "secretpw"


def experiment_names(client):
    return sorted(e.name for e in client.search_experiments())


def every_run(client):
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def one_error_line(capsys, starts_with):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(starts_with), err
    return err[0]


def test_sweep_worker_is_hidden_and_refuses_to_run_by_hand(capsys, monkeypatch):
    assert main(["--help"]) == 0
    assert "sweep-worker" not in capsys.readouterr().out
    assert main(["bogus"]) == 2
    line = one_error_line(capsys, "error: COMMAND: invalid choice: 'bogus'")
    assert "'workflow'" in line and "sweep-worker" not in line
    monkeypatch.delenv("PIPELINES_SWEEP_WORKER", raising=False)
    assert main(["sweep-worker"]) == 2
    one_error_line(capsys, "error: sweep-worker: started by `sweep` only; run `python -m pipelines sweep` instead")
    monkeypatch.setenv("PIPELINES_SWEEP_WORKER", "not a spec")
    assert main(["sweep-worker"]) == 2
    one_error_line(capsys, "error: sweep-worker: started by `sweep` only")


def _bad_storages(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("not a journal\n")
    return {
        "unreachable": ("postgresql://postgres@127.0.0.1:1/x", "error: storage: cannot open postgresql://postgres@"),
        "password": (
            f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/x",
            "error: storage: cannot open postgresql://postgres:***@127.0.0.1:1/x",
        ),
        "directory": (str(tmp_path / "folder"), f"error: storage: {tmp_path / 'folder'} is a directory"),
        "sqlite directory": (
            f"sqlite:///{tmp_path / 'folder'}",
            f"error: storage: {tmp_path / 'folder'} is a directory, not a SQLite database",
        ),
        "port": (
            "postgresql://u@host:abc/db",
            "error: storage: postgresql://u@host:abc/db is not a valid database URL: its port 'abc' is not a number",
        ),
        "port and password": (
            f"postgresql://u:{PASSWORD}@host:abc/db",
            "error: storage: postgresql://u:***@host:abc/db is not a valid database URL",
        ),
        "unencoded @": (
            f"postgresql://u:{PASSWORD}@x@127.0.0.1:1/db",
            "error: storage: postgresql://u:***@127.0.0.1:1/db is not a valid database URL: an '@' in the password",
        ),
        "not a journal": (
            str(tmp_path / "notes.txt"),
            f"error: storage: {tmp_path / 'notes.txt'} is not an Optuna journal file",
        ),
        "in memory": ("sqlite://", "error: storage: sqlite:// names no database file"),
    }


@pytest.mark.parametrize("command", ["sweep", "workflow"])
@pytest.mark.parametrize(
    "case",
    [
        "unreachable",
        "password",
        "directory",
        "sqlite directory",
        "port",
        "port and password",
        "unencoded @",
        "not a journal",
        "in memory",
    ],
)
def test_a_bad_storage_is_one_line_before_any_experiment_run_or_file(
    command, case, store, tmp_path, capsys, monkeypatch
):
    """Checked up front: no experiment created (not even the task's), no run, no lock file, no traceback."""
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")  # the task's experiment, `xor`, would be created
    storage, message = _bad_storages(tmp_path)[case]
    before = sorted(path.name for path in tmp_path.iterdir())
    assert main([command, "--task", "xor", "--n_trials", "1", "--epochs", "1", "--storage", storage]) == 2
    line = one_error_line(capsys, message)
    assert PASSWORD not in line
    assert experiment_names(store) == ["Default", "tests"] and every_run(store) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == before  # no `folder.setup.lock`
    assert list((tmp_path / "folder").iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--task", "xor", "--search_space", "{tmp}"],
            "error: search_space: {tmp} is a directory, not a YAML or JSON file",
        ),
        (["--task", "mnist_cnn", "--data", "{tmp}/none.npz"], "error: MNIST file not found at {tmp}/none.npz"),
        (
            ["--task", "xor", "--search_space", '{{"units": [0]}}'],
            "error: search_space: inline: units: 0 is out of range",
        ),
    ],
    ids=["search-space-directory", "data", "search-space-range"],
)
@pytest.mark.parametrize("command", ["sweep", "workflow"])
def test_workflow_and_sweep_check_their_inputs_before_anything_starts(
    command, argv, message, store, tmp_path, capsys, monkeypatch
):
    """A refused workflow starts no step (the fast tier would refuse a step's process), run or experiment."""
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    argv = [word.format(tmp=tmp_path) for word in argv]
    journal = str(tmp_path / "optuna.journal")
    assert main([command, *argv, "--n_trials", "1", "--storage", journal]) == 2
    one_error_line(capsys, message.format(tmp=tmp_path))
    assert experiment_names(store) == ["Default", "tests"] and every_run(store) == []


@pytest.mark.parametrize("command", ["train", "sweep", "workflow", "promote", "compare"])
def test_an_experiment_name_longer_than_mlflow_takes_is_refused_by_the_parameter_check(
    command, store, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # compare's default report: reports/compare-<model>.html, here
    task = [] if command == "compare" else ["--task", "xor"]
    assert main([command, *task, "--experiment", "e" * 501]) == 2
    one_error_line(capsys, "error: experiment: ")
    assert experiment_names(store) == ["Default", "tests"] and every_run(store) == []
    assert not (tmp_path / "reports").exists()


def test_a_comparison_refused_after_its_report_is_built_writes_no_report(store, tmp_path, capsys):
    """compare builds the page before it opens its experiment: a refusal there leaves no file."""
    assert main(["train", "--task", "xor", "--epochs", "1", "--system_metrics_interval", "0"]) == 0
    assert main(["promote", "--task", "xor"]) == 0
    store.delete_experiment(store.create_experiment("gone", artifact_location=str(tmp_path / "gone")))
    capsys.readouterr()
    report = tmp_path / "reports" / "xor.html"
    assert main(["compare", "--model", "xor", "--experiment", "gone", "--output", str(report)]) == 2
    one_error_line(capsys, "error: experiment: Cannot set a deleted experiment 'gone'")
    assert list(report.parent.iterdir()) == []  # neither the report nor its draft
    assert not [run for run in every_run(store) if run.data.tags.get("step") == "compare"]

    assert main(["compare", "--model", "xor", "--output", str(report)]) == 0  # the same, in a live experiment
    assert [path.name for path in report.parent.iterdir()] == ["xor.html"]
    assert "<td>xor</td>" in report.read_text()


@pytest.mark.slow
def test_mlflow_run_records_why_its_run_failed(store):
    """Through `mlflow run` every failure exits 1 (MLflow's CLI): the run says which kind, and the line."""
    refused = mlflow_run("xor", epochs=0)
    line = "error: epochs: 0 is out of range; it must be an integer in [1, 1000000]"
    assert refused.returncode == 1 and line in refused.stderr.splitlines()
    assert "ERROR mlflow.cli: === Run" in refused.stderr and "Traceback" not in refused.stderr
    diverged = mlflow_run("linear", epochs=3, optimizer="sgd", learning_rate="1e12", system_metrics_interval=0)
    assert diverged.returncode == 1, diverged.stderr[-3000:]
    by_entry_point = {run.data.tags["mlflow.project.entryPoint"]: run for run in runs(store)}
    assert by_entry_point["xor"].info.status == "FAILED"
    assert by_entry_point["xor"].data.tags["error.kind"] == "bad_input"
    assert by_entry_point["xor"].data.tags["mlflow.note.content"] == line
    assert by_entry_point["linear"].info.status == "FAILED"
    assert by_entry_point["linear"].data.tags["error.kind"] == "failed"
    assert (
        by_entry_point["linear"].data.tags["mlflow.note.content"].startswith("error: learning_rate: training diverged")
    )


@pytest.mark.slow
def test_mlflow_run_puts_a_tasks_runs_in_its_experiment_and_a_dry_run_trains_nothing(store, monkeypatch, tmp_path):
    """`mlflow run` with no experiment named makes its run in Default before the command starts:
    the training and the sweep go to the task's experiment all the same, and that run points there."""
    tests_experiment = os.environ["MLFLOW_EXPERIMENT_ID"]
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    trained = mlflow_run("xor", epochs=1, system_metrics_interval=0)
    swept = mlflow_run("sweep", task="xor", n_trials=1, epochs=1, storage=tmp_path / "optuna.journal")
    assert trained.returncode == swept.returncode == 0, (trained.stderr[-3000:], swept.stderr[-3000:])
    xor = store.get_experiment_by_name("xor").experiment_id
    by_kind = {run.data.tags.get("sweep", "training"): run for run in store.search_runs([xor])}
    assert sorted(by_kind) == ["study", "training", "trial"]
    assert by_kind["trial"].data.tags["mlflow.parentRunId"] == by_kind["study"].info.run_id
    training = by_kind["training"].info
    assert f"run {training.run_id} started: {training.run_name}, in experiment 'xor'" in trained.stdout
    launches = {run.data.tags["mlflow.project.entryPoint"]: run for run in store.search_runs(["0"])}
    for entry_point, kind in (("xor", "training"), ("sweep", "study")):
        launch, run = launches[entry_point], by_kind[kind]
        assert launch.info.status == run.info.status == "FINISHED" and not launch.data.metrics
        assert launch.data.tags["launch.run_id"] == run.info.run_id
        assert f"(#/experiments/{xor}/runs/{run.info.run_id})" in launch.data.tags["mlflow.note.content"]

    # -P experiment names another: honoured the same way.
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", tests_experiment)
    moved = mlflow_run("xor", experiment="other", epochs=1, system_metrics_interval=0)
    assert moved.returncode == 0, moved.stderr[-3000:]
    (run,) = store.search_runs([store.get_experiment_by_name("other").experiment_id])
    (launch,) = runs(store)
    assert launch.data.tags["launch.run_id"] == run.info.run_id and run.data.metrics["test_accuracy"] >= 0

    # The run's own experiment: nothing to refuse. A dry run prints the recipe and trains nothing.
    same = mlflow_run("churn", experiment="tests", epochs=7, dry_run="true")
    assert same.returncode == 0, same.stderr[-3000:]
    assert yaml.safe_load(same.stdout)["params"]["epochs"] == 7
    (dry,) = [other for other in runs(store) if other.info.run_id != launch.info.run_id]
    # Made by `mlflow run` before the command started: marked, nothing in it.
    assert dry.data.tags["dry_run"] == "true" and dry.info.status == "FINISHED"
    assert not dry.data.metrics and not dry.outputs.model_outputs


@pytest.mark.slow
@pytest.mark.postgres
def test_a_storage_password_is_never_printed_or_stored(store, postgres_url, tmp_path):
    """The workflow passes the sweep step its storage without the password (in PGPASSWORD): no -P
    value, param, tag, artifact or output line holds it. Trust auth takes any password."""
    url = postgres_url.replace("postgres@", f"postgres:{PASSWORD}@")
    settings = options(task="linear", n_trials=1, epochs=1, study_name="secret", storage=url, system_metrics_interval=0)
    completed = run_cli("workflow", *settings, timeout=900)
    report = PROJECT / "reports" / "compare-linear.html"  # the compare step's default local file
    report.unlink(missing_ok=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert PASSWORD not in completed.stdout + completed.stderr
    assert "-P storage=postgresql://postgres@127.0.0.1:5432/" in completed.stdout  # the step line, as passed
    stored = [path for path in tmp_path.rglob("*") if path.is_file()]  # the database (and its WAL), artifacts
    assert any(path.name == "mlflow.db" for path in stored) and any("artifacts" in path.parts for path in stored)
    assert not [path for path in stored if PASSWORD.encode() in path.read_bytes()]
    (sweep,) = [run for run in runs(store) if run.data.tags.get("mlflow.project.entryPoint") == "sweep"]
    assert sweep.data.params["storage"] == postgres_url and sweep.info.status == "FINISHED"
