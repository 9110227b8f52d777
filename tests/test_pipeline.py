"""Every entry point trains through the one pipeline into a real MLflow store (1 epoch, tiny data)."""

import json

import mlflow
import numpy as np
import pytest

from experiments import entry_points, resolve
from pipelines.params import parse_params
from pipelines.train import train
from tests.helpers import runs

QUICK = {"epochs": "1", "batch_size": "16"}


def quick_params(name, data=None, **overrides):
    task, variant = resolve(name)
    values = {**QUICK, **overrides}
    if data is not None:
        values["data"] = str(data)
    return task, variant, parse_params(task, variant, values)


@pytest.fixture
def data_for(mnist_npz, churn_csv, fer_folder):
    return {"mnist": mnist_npz, "churn": churn_csv, "emotion": fer_folder}


@pytest.mark.parametrize("name", sorted(entry_points()))
def test_every_entry_point_trains_and_logs_a_complete_run(name, store, data_for):
    task, variant, params = quick_params(name, data_for.get(resolve(name)[0].name))
    result = train(task, variant, params)

    run = store.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["task"] == task.name and run.data.tags["variant"] == variant
    assert run.data.params["seed"] == "42" and run.data.params["epochs"] == "1"
    assert int(run.data.params["num_params"]) > 0
    assert task.primary_metric in run.data.metrics and "loss" in run.data.metrics  # autologged
    assert len(store.get_metric_history(run.info.run_id, "epoch_time_s")) == 1
    artifacts = {a.path for a in store.list_artifacts(run.info.run_id, "figures")}
    assert "figures/learning_curves.png" in artifacts
    assert ("figures/confusion_matrix.png" in artifacts) == (task.kind != "regression")
    assert "model_summary.txt" in {a.path for a in store.list_artifacts(run.info.run_id)}
    contexts = {inp.dataset.name: inp.dataset.digest for inp in run.inputs.dataset_inputs}
    assert f"{task.name}-train" in contexts and f"{task.name}-test" in contexts
    assert run.data.tags["dataset_digest"] == contexts[f"{task.name}-train"]

    model = mlflow.pyfunc.load_model(f"models:/{result.model_id}")
    assert model.metadata.signature is not None and model.metadata.saved_input_example_info is not None
    assert store.get_logged_model(result.model_id).source_run_id == result.run_id


def test_classifier_metrics_and_confusion_matrix(store, churn_csv):
    result = train(*quick_params("churn", churn_csv, epochs="3"))
    for metric in ("test_accuracy", "test_roc_auc", "test_precision", "test_recall", "test_f1"):
        assert 0 <= result.metrics[metric] <= 1
    matrix = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/evaluation/confusion_matrix.json"))
    assert np.array(matrix["matrix"]).sum() == 40 and matrix["labels"] == ["stays", "exits"]


def test_emotion_logs_per_class_recall(store, fer_folder):
    result = train(*quick_params("emotion_cnn", fer_folder))
    recalls = [key for key in result.metrics if key.startswith("test_recall_")]
    assert sorted(recalls) == sorted(f"test_recall_{n}" for n in ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"))
    datasets = {inp.dataset.name for inp in store.get_run(result.run_id).inputs.dataset_inputs}
    assert datasets == {"emotion-train", "emotion-validation", "emotion-test"}  # PublicTest validates


def test_augment_reports_accuracy_on_inverted_images(store, mnist_npz):
    result = train(*quick_params("mnist_cnn_augment", mnist_npz))
    assert 0 <= result.metrics["test_accuracy_inverted"] <= 1


def test_linear_logs_the_learned_line(store):
    result = train(*quick_params("linear", epochs="2"))
    assert {"learned_weight", "learned_bias", "test_mse"} <= set(result.metrics)


def test_same_seed_same_metrics_other_seed_other_metrics(store, mnist_npz):
    first = train(*quick_params("mnist_cnn", mnist_npz, epochs="2"))
    again = train(*quick_params("mnist_cnn", mnist_npz, epochs="2"))
    other = train(*quick_params("mnist_cnn", mnist_npz, epochs="2", seed="7"))
    assert first.metrics == again.metrics
    assert first.history == again.history
    assert first.history["loss"] != other.history["loss"]


def test_sweep_style_call_nests_under_an_active_run_and_takes_callbacks(store):
    import keras

    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(logs["loss"]))
    with mlflow.start_run(run_name="parent") as parent:
        result = train(*quick_params("xor", epochs="3"), callbacks=[callback], tags={"trial": "0"})
    child = store.get_run(result.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.data.tags["trial"] == "0"
    assert len(seen) == 3 and len(runs(store)) == 2


def test_diverging_training_fails_the_run_with_a_clear_error(store):
    from experiments import InputError

    with pytest.raises(InputError, match=r"learning_rate: training diverged \(loss (nan|inf) at epoch 1\)"):
        train(*quick_params("linear", epochs="5", optimizer="sgd", learning_rate="1e12"))
    (run,) = runs(store)
    assert run.info.status == "FAILED"
