"""What a user comparing runs in the MLflow UI meets first: names that tell runs apart, a
description on every run, the final metrics on the logged model, no duplicate metrics,
promote runs out of the training experiment."""

import io
import json
import tempfile
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest

from experiments import TASKS, resolve
from pipelines import schema, tracking
from pipelines.cli import main
from pipelines.registry import promotion_lock
from pipelines.sweeps.storage import open_storage
from pipelines.train import train
from tests.conftest import TinyRecipe, open_store
from tests.helpers import options, runs


@pytest.fixture(scope="module")
def two_seeds(migrated_store, tmp_path_factory):
    """Two runs of linear's tiny recipe that differ only by seed (3 epochs each), trained once
    for the tests that only read them: (their store's client, their TrainResults)."""
    folder = tmp_path_factory.mktemp("two_seeds")
    with pytest.MonkeyPatch.context() as monkeypatch:
        client = open_store(folder, migrated_store, monkeypatch)
        task, variant, params = TinyRecipe({}).params("linear", epochs=3)
        results = [train(task, variant, {**params, "seed": seed}) for seed in (1, 2)]
    mlflow.set_tracking_uri(None)
    return client, results


def test_runs_that_differ_by_seed_have_names_that_say_so(two_seeds):
    store, results = two_seeds
    names = [store.get_run(result.run_id).info.run_name for result in results]
    assert names[0] != names[1]
    assert names[0].startswith("linear-") and names[0].endswith("-seed1") and names[1].endswith("-seed2")
    assert all(len(name) <= tracking.MAX_RUN_NAME for name in names)


def test_a_run_is_named_after_its_variant_in_its_tasks_experiment():
    assert tracking.name_in_experiment(TASKS["mnist"], "cnn_bn") == "cnn_bn"
    assert tracking.name_in_experiment(TASKS["churn"], "mlp") == "churn"  # its only variant
    defaults = {"epochs": 6, "dropout": 0.5, "max_samples": 0}
    changed = {"epochs": 2, "dropout": 0.25, "max_samples": 2000}
    assert tracking.run_name("cnn", changed, defaults) == "cnn-ep2-drop0.25-n2000"
    assert tracking.run_name("cnn_l2", {"l2": 0.0005}, {"l2": 0.0001}) == "cnn_l2-l2_0.0005"


def test_a_run_at_its_entry_points_defaults_is_named_after_it():
    defaults = {"epochs": 10, "learning_rate": 0.001, "seed": 42, "optimizer": "adam", "data": ""}
    assert tracking.run_name("churn", dict(defaults), defaults) == "churn"
    changed = {**defaults, "seed": 2, "learning_rate": 0.0003, "optimizer": "sgd", "data": "/x/y.csv"}
    assert tracking.run_name("churn", changed, defaults) == "churn-lr0.0003-seed2-sgd"
    assert tracking.run_name("churn", changed, defaults, prefix="s-trial-3") == "s-trial-3-lr0.0003-seed2-sgd"


def test_a_training_run_describes_its_result_epochs_time_and_data(two_seeds):
    store, results = two_seeds
    run = store.get_run(results[0].run_id)
    description = run.data.tags[schema.DESCRIPTION_TAG]
    assert f"**test_mse {run.data.metrics['test_mse']:.4f}**" in description
    assert "after 3 epochs" in description and "s of training" in description
    assert run.data.tags["dataset_digest"] in description  # the training split's digest
    assert "\n" not in description  # one paragraph


def test_no_validation_copies_of_the_epoch_metrics_are_logged(two_seeds):
    store, results = two_seeds
    for result in results:
        metrics = store.get_run(result.run_id).data.metrics
        assert "val_mae" in metrics and "val_loss" in metrics  # the per-epoch ones
        assert not [name for name in metrics if name.startswith("validation_")]


def test_the_logged_model_is_named_after_its_entry_point_and_carries_the_final_metrics(two_seeds):
    store, results = two_seeds
    result = results[0]
    model = store.get_logged_model(result.model_id)
    assert model.name == "linear"
    by_name = {}
    for metric in model.metrics:
        by_name.setdefault(metric.key, []).append(metric)
    # The last epoch's values (step 2), not the first epoch's (step 0).
    (loss,) = by_name["loss"]
    assert loss.step == 2 and loss.value == pytest.approx(result.history["loss"][-1])
    (error,) = by_name["val_mae"]
    assert error.value == pytest.approx(result.history["val_mae"][-1])
    assert by_name["test_mse"][0].value == pytest.approx(result.metrics["test_mse"])


def test_promote_runs_live_in_an_experiment_of_their_own(store, tiny, tmp_path):
    task, variant, params = tiny.params("xor", epochs=2)
    result = train(task, variant, params)
    assert main(["promote", "--task", "xor"]) == 0
    assert [run.info.run_id for run in runs(store)] == [result.run_id]  # the training experiment: training only
    experiment = store.get_experiment_by_name("promotions")
    (promotion,) = store.search_runs([experiment.experiment_id])
    assert promotion.data.tags["step"] == "promote" and promotion.info.status == "FINISHED"
    assert mlflow.get_experiment(mlflow.tracking.fluent._get_experiment_id()).name == "tests"  # still current
    description = promotion.data.tags[schema.DESCRIPTION_TAG]
    assert "champion" in description and "no champion yet" in description
    assert f"(#/experiments/{store.get_run(result.run_id).info.experiment_id}/runs/{result.run_id})" in description
    assert "(#/models/xor/versions/1)" in description
    # Its lock is no stray file beside the store (the project folder, for the default `mlflow.db`).
    assert not list(tmp_path.glob("*promote*"))
    assert Path(promotion_lock("xor").lock_file).parent == Path(tempfile.gettempdir())


def test_a_sweep_names_its_trials_and_its_parent_describes_and_links_the_best(store, tiny, tmp_path):
    journal = str(tmp_path / "optuna.journal")
    # Trial 0 learns, trial 1 cannot (a tiny learning rate): the median pruner stops it.
    study = optuna.create_study(study_name="digits", storage=open_storage(journal, 10, None), direction="maximize")
    study.enqueue_trial({"learning_rate": 0.01})
    study.enqueue_trial({"learning_rate": 1e-6})
    space = '{"learning_rate": {"low": 1.0e-6, "high": 0.01, "log": true}, "dropout": null}'
    settings = options(storage=journal, study_name="digits", pruner_startup_trials=1, search_space=space, n_trials=3)
    assert main(["sweep", *tiny.argv("mnist_cnn", epochs=4), *settings]) == 0

    by_kind = {}
    for run in runs(store):
        by_kind.setdefault(run.data.tags.get("sweep"), []).append(run)
    (parent,), trials = by_kind["study"], by_kind["trial"]
    best = optuna.load_study(study_name="digits", storage=open_storage(journal, 10, None)).best_trial
    best_run_id = best.user_attrs["mlflow_run_id"]

    # The parent names its objective and the best trial's test metric, and links the best trial's run.
    metrics = parent.data.metrics
    assert metrics["best_trial_val_accuracy"] == metrics["best_value"] == best.value
    assert metrics["best_trial_test_accuracy"] == best.user_attrs["test_accuracy"]
    description = parent.data.tags[schema.DESCRIPTION_TAG]
    assert f"(#/experiments/{parent.info.experiment_id}/runs/{best_run_id})" in description
    assert "3 of 3 trials finished" in description and f"val_accuracy {best.value:.4f}" in description

    # Every trial's name says what it tried.
    by_number = {int(run.data.tags["optuna.trial_number"]): run for run in trials}
    assert by_number[0].info.run_name == "digits-trial-0-lr0.01"
    assert by_number[1].info.run_name == "digits-trial-1-lr1e-06"

    # The pruned trial says when, in epochs counted from 1 and in Optuna's steps.
    pruned = by_number[1]
    assert pruned.data.tags["optuna.trial_state"] == "PRUNED"
    epoch = int(pruned.data.tags["pruned_at_epoch"])
    assert f"pruned after epoch {epoch} of 4 (Optuna's step {epoch - 1})" in pruned.data.tags[schema.DESCRIPTION_TAG]

    # trials.csv holds every trial's run id, the pruned one's too.
    table = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep/trials.csv")))
    assert dict(zip(table["number"], table["user_attrs_mlflow_run_id"], strict=True)) == {
        number: run.info.run_id for number, run in by_number.items()
    }


def test_a_task_experiment_gets_its_comparison_view_and_the_run_prints_where_to_open_it(store, tiny, capsys):
    task, variant, params = tiny.params("churn", epochs=1)
    first = train(task, variant, params)
    out = capsys.readouterr().out
    experiment_id = store.get_run(first.run_id).info.experiment_id
    tag = store.get_experiment(experiment_id).tags["mlflow.sharedViewState.compare-churn"]
    envelope = json.loads(tag)  # the saved-view envelope MLflow 3.17's UI reads
    assert envelope["name"] == "Compare churn runs" and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state["orderByKey"] == "metrics.`test_accuracy`" and state["orderByAsc"] is False
    # Trainings only (none else logs the test metric), the metric first and its interval beside it.
    assert state["searchFilter"] == "metrics.test_accuracy >= 0"
    assert state["selectedColumns"] == ["metrics.`test_accuracy`", "tags.`interval`"]
    run = store.get_run(first.run_id)
    low, high = (run.data.metrics[f"test_accuracy_ci_{end}"] for end in ("low", "high"))
    assert run.data.tags["interval"] == f"{low:.4f}-{high:.4f}"
    # The chart view: the headline section first, then a chart for each other metric the run logged.
    sections = [section["name"] for section in state["compareRunSections"]]
    assert sections == ["Headline", "Model metrics"]  # no system metrics sampled
    charts = [(chart["metricKey"], chart["type"]) for chart in state["compareRunCharts"]]
    headline = [("test_accuracy", "BAR"), ("train_time_s", "BAR"), ("val_accuracy", "LINE"), ("loss", "LINE")]
    assert charts[:4] == headline and ("epoch_time_s", "LINE") in charts and ("test_loss", "BAR") in charts
    assert sorted(name for name, _ in charts) == sorted(run.data.metrics)

    view_link = f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=compare-churn"
    assert f"http://127.0.0.1:5000{view_link}" in out
    assert f"/#/experiments/{experiment_id}/runs/{first.run_id}?workflowType=machine_learning" in out
    assert f"{tracking.UI_COMMAND} --backend-store-uri {mlflow.get_tracking_uri()}" in out

    train(task, variant, {**params, "seed": 2})  # the view stands as written
    assert store.get_experiment(experiment_id).tags["mlflow.sharedViewState.compare-churn"] == tag


def test_a_regression_task_sorts_its_view_lowest_error_first():
    task, _ = resolve("linear")
    state = tracking.comparison_view(task)
    assert state["orderByKey"] == "metrics.`test_mse`" and state["orderByAsc"] is True


@pytest.mark.parametrize("lr_schedule", ["constant", "cosine"])
def test_the_optimizer_config_is_an_artifact_not_two_dozen_params(lr_schedule, store, tiny):
    task, variant, params = tiny.params("xor", epochs=2, lr_schedule=lr_schedule, learning_rate="0.01")
    result = train(task, variant, params)
    run = store.get_run(result.run_id)
    assert not [name for name in run.data.params if name.startswith("optimizer_")]
    assert run.data.params["optimizer"] == "adam" and run.data.params["learning_rate"] == "0.01"
    config = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/optimizer_config.json")
    assert config["name"] == "adam"
    if lr_schedule == "cosine":
        assert config["learning_rate"]["class_name"] == "CosineDecay"
    else:
        assert config["learning_rate"] == pytest.approx(0.01)
    assert "model_summary.txt" in {a.path for a in store.list_artifacts(result.run_id)}
